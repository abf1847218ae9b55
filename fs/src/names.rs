//! Reading a branch's markers and mapping owners between the merged view and
//! each branch.
//!
//! The marker formats themselves (kernel overlayfs, OCI `.wh.`,
//! fuse-overlayfs, override_stat) are the `ondisk` crate's; this module reads
//! them from open files.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use ondisk::override_stat::{self, OverrideStat};
use ondisk::whiteout;
use ondisk::xattr::{self, Key};
use rustix::fs::{FileType, Stat};

use crate::Result;
use crate::layer::{get_xattr, list_xattrs, open_path_at};

/// The hidden directory unionmount keeps in the upper when no workdir was given.
pub const COW_WORKDIR: &str = ".unionmount";

/// Is `st` a kernel overlay whiteout (a character device 0/0)?
pub fn is_chardev_whiteout(st: &Stat) -> bool {
    whiteout::is_kernel_whiteout(FileType::from_raw_mode(st.st_mode), st.st_rdev)
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
        for x in Key::Whiteout.names() {
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
        if xattr::OPAQUE_NAMES.contains(&name) {
            marks.opaque |= get_xattr(fd, name)?.as_deref() == Some(xattr::OPAQUE);
        } else if Key::Redirect.names().contains(&name) && marks.redirect.is_none() {
            marks.redirect = get_xattr(fd, name)?;
        }
    }
    Ok(marks)
}

/// Is the directory behind `fd` opaque by xattr?
pub fn has_opaque_xattr(fd: BorrowedFd<'_>) -> Result<bool> {
    Ok(dir_marks(fd)?.opaque)
}

/// The override recorded on the object behind `fd`, if any.
pub fn override_of(fd: BorrowedFd<'_>) -> Result<Option<OverrideStat>> {
    Ok(get_xattr(fd, override_stat::XATTR)?.and_then(|v| OverrideStat::parse(&v)))
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
