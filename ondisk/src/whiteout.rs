//! Whiteouts and opaque markers as names and file types.
//!
//! Two dialects: the OCI layer form (`.wh.NAME` hides NAME, `.wh..wh..opq`
//! makes its directory opaque) and the kernel overlay form (a character
//! device 0/0 in NAME's place; opaque directories by xattr, see
//! [`crate::xattr`]).

use rustix::fs::FileType;

/// OCI whiteout prefix: `.wh.NAME` hides NAME in the layers below.
pub const PREFIX: &[u8] = b".wh.";
/// OCI opaque marker inside a directory.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// The type of a kernel overlay whiteout ...
pub const KERNEL_KIND: FileType = FileType::CharacterDevice;
/// ... and its device number (0/0).
pub const KERNEL_RDEV: u64 = 0;

/// What a file name means in OCI layer terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker<'a> {
    /// An ordinary name.
    Name,
    /// `.wh..wh..opq`: the parent directory hides lower content.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(&'a [u8]),
    /// Other `.wh..wh.` names (aufs metadata), ignored.
    AufsMeta,
}

/// Classify a file name; refuse whiteouts that name nothing or `.`/`..`.
pub fn classify(name: &[u8]) -> Result<Marker<'_>, &'static str> {
    if name == OPAQUE {
        return Ok(Marker::Opaque);
    }
    let Some(target) = name.strip_prefix(PREFIX) else {
        return Ok(Marker::Name);
    };
    if target.starts_with(PREFIX) {
        return Ok(Marker::AufsMeta);
    }
    if target.is_empty() || target == b"." || target == b".." {
        return Err("whiteout of an empty name, '.' or '..'");
    }
    Ok(Marker::Whiteout(target))
}

/// `.wh.NAME` → Some(NAME) for OCI whiteout files (not the `.wh..wh.` meta
/// names, nor whiteouts of an empty name, `.` or `..`).
pub fn target(name: &[u8]) -> Option<&[u8]> {
    match classify(name) {
        Ok(Marker::Whiteout(t)) => Some(t),
        _ => None,
    }
}

/// Is `name` a marker or meta name that never shows as an entry?
pub fn is_meta_name(name: &[u8]) -> bool {
    name.starts_with(PREFIX)
}

/// The OCI whiteout name hiding `name`.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    [PREFIX, name].concat()
}

/// Is an object of type `kind` and device number `rdev` a kernel overlay
/// whiteout (a character device 0/0)?
pub fn is_kernel_whiteout(kind: FileType, rdev: u64) -> bool {
    kind == KERNEL_KIND && rdev == KERNEL_RDEV
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_oci_ones() {
        assert_eq!(PREFIX, b".wh.");
        assert_eq!(OPAQUE, b".wh..wh..opq");
        assert_eq!(whiteout_name(b"a"), b".wh.a");
        assert_eq!(whiteout_name(b".wh.x"), b".wh..wh.x");
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(classify(b"file"), Ok(Marker::Name));
        assert_eq!(classify(b".wh..wh..opq"), Ok(Marker::Opaque));
        assert_eq!(classify(b".wh.foo"), Ok(Marker::Whiteout(b"foo")));
        assert_eq!(classify(b".wh..wh.plnk"), Ok(Marker::AufsMeta));
        assert_eq!(classify(b".wh..hidden"), Ok(Marker::Whiteout(b".hidden")));
        assert_eq!(classify(b"a.wh.b"), Ok(Marker::Name));
        assert!(classify(b".wh.").is_err());
        assert!(classify(b".wh..").is_err());
        assert!(classify(b".wh...").is_err());
    }

    #[test]
    fn whiteout_targets() {
        assert_eq!(target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(target(OPAQUE), None);
        assert_eq!(target(b".wh."), None);
        assert_eq!(target(b".wh.."), None);
        assert_eq!(target(b".wh..wh.plnk"), None);
        assert_eq!(target(b"foo"), None);
        assert_eq!(target(&whiteout_name(b"x")), Some(&b"x"[..]));
    }

    #[test]
    fn meta_names_never_show() {
        assert!(is_meta_name(b".wh..wh.plnk"));
        assert!(is_meta_name(OPAQUE));
        assert!(is_meta_name(b".wh.foo"));
        assert!(!is_meta_name(b"foo.wh."));
        assert!(!is_meta_name(b".w"));
    }

    #[test]
    fn kernel_whiteouts_are_char_devices_0_0() {
        assert_eq!(KERNEL_KIND, FileType::CharacterDevice);
        assert_eq!(KERNEL_RDEV, rustix::fs::makedev(0, 0));
        assert!(is_kernel_whiteout(FileType::CharacterDevice, 0));
        let null = rustix::fs::makedev(1, 3);
        assert!(!is_kernel_whiteout(FileType::CharacterDevice, null));
        assert!(!is_kernel_whiteout(FileType::BlockDevice, 0));
        assert!(!is_kernel_whiteout(FileType::RegularFile, 0));
    }
}
