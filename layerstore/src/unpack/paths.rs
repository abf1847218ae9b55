//! What tar paths and names mean in a layer: confinement of paths, OCI
//! whiteout markers, and the xattr names a layer may carry. Pure logic.

/// What an entry's last path component means in OCI layer terms.
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

pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_NAME: &[u8] = b".wh..wh..opq";

/// Classify a file name; refuse whiteouts that name nothing or `.`/`..`.
pub fn classify(name: &[u8]) -> std::result::Result<Marker<'_>, &'static str> {
    if name == OPAQUE_NAME {
        return Ok(Marker::Opaque);
    }
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Marker::Name);
    };
    if target.starts_with(WHITEOUT_PREFIX) {
        return Ok(Marker::AufsMeta);
    }
    if target.is_empty() || target == b"." || target == b".." {
        return Err("whiteout of an empty name, '.' or '..'");
    }
    Ok(Marker::Whiteout(target))
}

/// Split a tar path into components, confined to the layer: a leading `/` is
/// dropped (the path is taken relative to the layer root), `.` and empty
/// components are skipped, `..` and NUL bytes are refused. An empty result is
/// the layer root itself.
pub fn split_path(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c if c.len() > 255 => return Err("name longer than 255 bytes"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Map an xattr name from a tar to the name stored in the layer: overlay's
/// own names are escaped as the kernel does, so a tar cannot forge opaque
/// directories or redirects; the rootless override is ours alone.
pub fn stored_xattr_name(name: &str) -> Option<String> {
    if name == "user.containers.override_stat" {
        return None;
    }
    for prefix in ["trusted.overlay.", "user.overlay."] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Some(format!("{prefix}overlay.{rest}"));
        }
    }
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_confines_paths() {
        assert_eq!(split_path(b"./a/b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            split_path(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert_eq!(split_path(b"a//./b").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(split_path(b"./").unwrap().is_empty());
        assert!(split_path(b"").unwrap().is_empty());
        assert!(split_path(b"../x").is_err());
        assert!(split_path(b"a/../../x").is_err());
        assert!(split_path(b"a/..").is_err());
        assert!(split_path(b"a\0b").is_err());
        assert!(split_path(&[b'x'; 256]).is_err());
        assert!(split_path(b"..a/b..").is_ok());
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(classify(b"file"), Ok(Marker::Name));
        assert_eq!(classify(b".wh..wh..opq"), Ok(Marker::Opaque));
        assert_eq!(classify(b".wh.foo"), Ok(Marker::Whiteout(b"foo")));
        assert_eq!(classify(b".wh..wh.plnk"), Ok(Marker::AufsMeta));
        assert_eq!(classify(b".wh..hidden"), Ok(Marker::Whiteout(b".hidden")));
        assert!(classify(b".wh.").is_err());
        assert!(classify(b".wh..").is_err());
        assert!(classify(b".wh...").is_err());
    }

    #[test]
    fn escapes_overlay_xattrs() {
        assert_eq!(stored_xattr_name("user.foo").as_deref(), Some("user.foo"));
        assert_eq!(
            stored_xattr_name("trusted.overlay.opaque").as_deref(),
            Some("trusted.overlay.overlay.opaque")
        );
        assert_eq!(
            stored_xattr_name("user.overlay.redirect").as_deref(),
            Some("user.overlay.overlay.redirect")
        );
        assert_eq!(stored_xattr_name("user.containers.override_stat"), None);
    }
}
