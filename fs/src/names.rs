//! Name and attribute translation between the merged view and each branch.
//!
//! The one place that knows the marker formats (kernel overlayfs, OCI `.wh.`,
//! fuse-overlayfs), which xattrs are private to the overlay, how a user's own
//! overlay xattrs are escaped, and how owners are mapped.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};

use crate::Result;
use crate::layer::{get_xattr, list_xattrs, open_path_at};

/// OCI whiteout prefix: `.wh.NAME` hides NAME in the layers below.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker inside a directory.
pub const WH_OPAQUE: &str = ".wh..wh..opq";
/// The hidden directory unionmount keeps in the upper when no workdir was given.
pub const COW_WORKDIR: &str = ".unionmount";

/// Which xattr namespace the overlay's own markers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*`, as kernel overlayfs mounted by root.
    Trusted,
    /// `user.overlay.*`, as kernel overlayfs with `userxattr`.
    User,
}

impl XattrNs {
    pub fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        }
    }

    pub fn name(self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }
}

/// Every name an opaque marker may have in the wild.
const OPAQUE_XATTRS: &[&str] = &[
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
const REDIRECT_XATTRS: &[&str] = &["trusted.overlay.redirect", "user.overlay.redirect"];
const WHITEOUT_XATTRS: &[&str] = &["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Is `st` a kernel overlay whiteout (a character device 0/0)?
pub fn is_chardev_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Is `name` in `dir` (whose lstat is `st`) a whiteout in any dialect the kernel writes?
/// (OCI `.wh.` files are handled by the caller: they whiteout a *different* name.)
pub fn is_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<bool> {
    if is_chardev_whiteout(st) {
        return Ok(true);
    }
    // Kernel 6.7+ xattr whiteouts are empty regular files carrying overlay.whiteout.
    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0 {
        let fd = open_path_at(dir, name)?;
        for x in WHITEOUT_XATTRS {
            if get_xattr(std::os::fd::AsFd::as_fd(&fd), x)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The overlay markers of a directory.
#[derive(Debug, Default)]
pub struct DirMarks {
    /// Opaque by xattr (value "y"; "x" only announces xattr whiteouts inside).
    pub opaque: bool,
    pub redirect: Option<Vec<u8>>,
}

/// Read a directory's markers: one listxattr, and a read only of markers present
/// (most directories carry none, and lookups read every directory they pass).
pub fn dir_marks(fd: BorrowedFd<'_>) -> Result<DirMarks> {
    let mut marks = DirMarks::default();
    for name in list_xattrs(fd)? {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        if OPAQUE_XATTRS.contains(&name) {
            marks.opaque |= get_xattr(fd, name)?.as_deref() == Some(b"y");
        } else if REDIRECT_XATTRS.contains(&name) && marks.redirect.is_none() {
            marks.redirect = get_xattr(fd, name)?;
        }
    }
    Ok(marks)
}

/// Is the directory behind `fd` opaque by xattr?
pub fn has_opaque_xattr(fd: BorrowedFd<'_>) -> Result<bool> {
    Ok(dir_marks(fd)?.opaque)
}

/// `.wh.NAME` → Some(NAME) for OCI whiteout files (not the `.wh..wh.` meta names).
pub fn oci_whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    let rest = b.strip_prefix(WH_PREFIX)?;
    if rest.starts_with(WH_PREFIX) || rest.is_empty() {
        None
    } else {
        Some(OsStr::from_bytes(rest))
    }
}

/// Is `name` a marker or meta name that never shows as an entry?
pub fn is_meta_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// The OCI whiteout name hiding `name`.
pub fn oci_whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::ffi::OsString::from_vec_compat(v)
}

trait FromVecCompat {
    fn from_vec_compat(v: Vec<u8>) -> Self;
}

impl FromVecCompat for std::ffi::OsString {
    fn from_vec_compat(v: Vec<u8>) -> Self {
        std::os::unix::ffi::OsStringExt::from_vec(v)
    }
}

/// How a user xattr name is stored in a branch: the overlay's own prefix is escaped
/// the way the kernel does (`trusted.overlay.X` → `trusted.overlay.overlay.X`).
pub fn escape_xattr(ns: XattrNs, name: &str) -> String {
    match name.strip_prefix(ns.prefix()) {
        Some(rest) => format!("{}overlay.{rest}", ns.prefix()),
        None => name.to_string(),
    }
}

/// The name a stored xattr shows as, or None for the overlay's private ones.
pub fn unescape_xattr(ns: XattrNs, stored: &str) -> Option<String> {
    if let Some(rest) = stored.strip_prefix(ns.prefix()) {
        // Our own namespace: only the escaped names of users show.
        return rest
            .strip_prefix("overlay.")
            .map(|r| format!("{}{r}", ns.prefix()));
    }
    if stored.starts_with("user.fuseoverlayfs.")
        || stored == "user.containers.override_stat"
        || stored.starts_with("trusted.overlay.")
    {
        return None;
    }
    match stored.strip_prefix("user.overlay.") {
        Some(key) if is_marker_key(key) => None,
        _ => Some(stored.to_string()),
    }
}

/// Keys under `user.overlay.` that are markers even when markers are written in
/// `trusted.` (layers made by rootless tools).
fn is_marker_key(key: &str) -> bool {
    matches!(
        key,
        "opaque"
            | "redirect"
            | "whiteout"
            | "whiteouts"
            | "origin"
            | "metacopy"
            | "impure"
            | "nlink"
    )
}

/// Where owner, mode and device type live when the branch's filesystem could
/// not take them (rootless), as containers-storage and fuse-overlayfs write them.
pub const OVERRIDE_STAT: &str = "user.containers.override_stat";

/// `uid:gid:0mode[:char-MAJ-MIN|block-MAJ-MIN|pipe|socket|dir|file|symlink]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// The object's real type and device number, when its stand-in differs.
    pub kind: Option<(FileType, u64)>,
}

impl OverrideStat {
    pub fn parse(v: &[u8]) -> Option<OverrideStat> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()? & 0o7777;
        let kind = match it.next() {
            None => None,
            Some(k) => Some(parse_kind(k)?),
        };
        Some(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }

    pub fn format(&self) -> String {
        let base = format!("{}:{}:0{:o}", self.uid, self.gid, self.mode & 0o7777);
        let (major, minor) = (
            rustix::fs::major(self.kind.map_or(0, |k| k.1)),
            rustix::fs::minor(self.kind.map_or(0, |k| k.1)),
        );
        match self.kind.map(|k| k.0) {
            Some(FileType::CharacterDevice) => format!("{base}:char-{major}-{minor}"),
            Some(FileType::BlockDevice) => format!("{base}:block-{major}-{minor}"),
            Some(FileType::Fifo) => format!("{base}:pipe"),
            Some(FileType::Socket) => format!("{base}:socket"),
            _ => base,
        }
    }

    /// Show `st` with the owner, mode and type recorded here.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let kind = self
            .kind
            .map_or(st.st_mode & libc::S_IFMT, |(k, _)| k.as_raw_mode());
        st.st_mode = kind | self.mode;
        if let Some((_, rdev)) = self.kind {
            st.st_rdev = rdev;
        }
    }
}

fn parse_kind(k: &str) -> Option<(FileType, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (ma, mi) = rest.split_once('-')?;
        Some(rustix::fs::makedev(ma.parse().ok()?, mi.parse().ok()?))
    };
    match k {
        "pipe" => Some((FileType::Fifo, 0)),
        "socket" => Some((FileType::Socket, 0)),
        "dir" => Some((FileType::Directory, 0)),
        "file" => Some((FileType::RegularFile, 0)),
        "symlink" => Some((FileType::Symlink, 0)),
        _ => {
            if let Some(rest) = k.strip_prefix("char-") {
                Some((FileType::CharacterDevice, dev(rest)?))
            } else if let Some(rest) = k.strip_prefix("block-") {
                Some((FileType::BlockDevice, dev(rest)?))
            } else {
                None
            }
        }
    }
}

/// The override recorded on the object behind `fd`, if any.
pub fn override_of(fd: BorrowedFd<'_>) -> Result<Option<OverrideStat>> {
    Ok(get_xattr(fd, OVERRIDE_STAT)?.and_then(|v| OverrideStat::parse(&v)))
}

/// One range of an owner mapping: ids `inside..inside+count` in the mount are
/// `outside..outside+count` on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Owner translation between the mount and the branches (uidmapping=, squash_to_*).
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    pub ranges: Vec<IdRange>,
    /// Every owner shows as this id (squash_to_root / squash_to_uid).
    pub squash: Option<u32>,
}

/// The id shown for disk ids that no range maps (as the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// Disk id → id shown in the mount.
    pub fn to_inside(&self, disk: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk >= r.outside && disk - r.outside < r.count)
            .map_or(OVERFLOW_ID, |r| r.inside + (disk - r.outside))
    }

    /// Id given by a caller → id stored on disk.
    pub fn to_outside(&self, inside: u32) -> u32 {
        if self.ranges.is_empty() {
            return inside;
        }
        self.ranges
            .iter()
            .find(|r| inside >= r.inside && inside - r.inside < r.count)
            .map_or(OVERFLOW_ID, |r| r.outside + (inside - r.inside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_xattrs_escape_both_ways() {
        let ns = XattrNs::Trusted;
        assert_eq!(
            escape_xattr(ns, "trusted.overlay.foo"),
            "trusted.overlay.overlay.foo"
        );
        assert_eq!(escape_xattr(ns, "user.foo"), "user.foo");
        assert_eq!(
            unescape_xattr(ns, "trusted.overlay.overlay.foo").as_deref(),
            Some("trusted.overlay.foo")
        );
        assert_eq!(unescape_xattr(ns, "trusted.overlay.opaque"), None);
        assert_eq!(unescape_xattr(ns, "user.overlay.redirect"), None);
        assert_eq!(
            unescape_xattr(ns, "user.overlay.mine").as_deref(),
            Some("user.overlay.mine")
        );
        assert_eq!(unescape_xattr(ns, "user.fuseoverlayfs.opaque"), None);
        assert_eq!(
            unescape_xattr(ns, "security.capability").as_deref(),
            Some("security.capability")
        );
        let user = XattrNs::User;
        assert_eq!(
            escape_xattr(user, "user.overlay.x"),
            "user.overlay.overlay.x"
        );
        assert_eq!(unescape_xattr(user, "user.overlay.opaque"), None);
        assert_eq!(unescape_xattr(user, "trusted.overlay.opaque"), None);
    }

    #[test]
    fn oci_names() {
        assert_eq!(
            oci_whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(oci_whiteout_target(OsStr::new(WH_OPAQUE)), None);
        assert_eq!(oci_whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(oci_whiteout_target(OsStr::new("foo")), None);
        assert!(is_meta_name(OsStr::new(".wh..wh.plnk")));
        assert_eq!(oci_whiteout_name(OsStr::new("a")), ".wh.a");
    }

    #[test]
    fn override_stat_round_trips_in_the_containers_format() {
        let o = OverrideStat::parse(b"0:0:0755").expect("plain");
        assert_eq!((o.uid, o.gid, o.mode, o.kind), (0, 0, 0o755, None));
        let dev = OverrideStat::parse(b"5:6:0620:char-4-1").expect("device");
        assert_eq!(
            dev.kind,
            Some((FileType::CharacterDevice, rustix::fs::makedev(4, 1)))
        );
        assert_eq!(dev.format(), "5:6:0620:char-4-1");
        assert_eq!(
            OverrideStat::parse(b"0:0:0644:pipe")
                .and_then(|o| o.kind)
                .map(|k| k.0),
            Some(FileType::Fifo)
        );
        assert_eq!(OverrideStat::parse(b"x:0:0644"), None);
        assert_eq!(OverrideStat::parse(b"0:0:0644:bogus"), None);
    }

    #[test]
    fn id_maps_translate_and_overflow() {
        let m = IdMap {
            ranges: vec![IdRange {
                inside: 0,
                outside: 1000,
                count: 10,
            }],
            squash: None,
        };
        assert_eq!(m.to_inside(1000), 0);
        assert_eq!(m.to_inside(1009), 9);
        assert_eq!(m.to_inside(1010), OVERFLOW_ID);
        assert_eq!(m.to_outside(5), 1005);
        assert_eq!(m.to_outside(50), OVERFLOW_ID);
        let squash = IdMap {
            ranges: vec![],
            squash: Some(0),
        };
        assert_eq!(squash.to_inside(1234), 0);
        assert_eq!(IdMap::default().to_inside(7), 7);
    }
}
