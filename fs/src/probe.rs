//! What a writable branch's filesystem can hold, found out at mount time by
//! making, checking and removing objects in its workdir. A filesystem's name
//! says too little (exFAT and FAT through FUSE, a FAT mounted with options, a
//! network share), so each ability is tried, not looked up.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::Result;
use crate::layer;

/// Bytes some filesystems refuse in a name (FAT, exFAT, NTFS, SMB): the
/// controls, DEL and `"*:<>?\|`. Only these are tried.
const SUSPECT_BYTES: &[u8] = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f\"*:<>?\\|";

/// A uid and gid no one has, to see whether an owner sticks.
const PROBE_ID: u32 = 54321;

/// What a branch's filesystem was found to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abilities {
    /// Extended attributes in the namespace the union writes its markers in.
    pub xattrs: bool,
    /// Character devices 0/0: the kernel's whiteouts.
    pub whiteout_devices: bool,
    pub fifos: bool,
    pub symlinks: bool,
    pub hard_links: bool,
    /// Owners other than the daemon's stick (chown).
    pub owners: bool,
    /// Every mode bit sticks, setuid included (chmod).
    pub modes: bool,
    /// `Probe` and `probe` are two names.
    pub case_sensitive: bool,
    /// Names keep a trailing dot or space as given.
    pub trailing_dots: bool,
    /// Times keep their nanoseconds.
    pub nanosecond_times: bool,
    /// Bytes the filesystem refuses in a name.
    pub refused_bytes: Vec<u8>,
    /// The longest name it takes, in bytes.
    pub name_max: usize,
}

impl Abilities {
    /// What a filesystem with every ability answers (an ext4, say).
    pub fn posix() -> Abilities {
        Abilities {
            xattrs: true,
            whiteout_devices: true,
            fifos: true,
            symlinks: true,
            hard_links: true,
            owners: true,
            modes: true,
            case_sensitive: true,
            trailing_dots: true,
            nanosecond_times: true,
            refused_bytes: Vec::new(),
            name_max: 255,
        }
    }

    /// Try each ability in a fresh directory `dir`, which is left as empty
    /// as it was found; `xattr` is a name in the namespace the union writes.
    pub fn probe(dir: BorrowedFd<'_>, xattr: &str) -> Result<Abilities> {
        let file = OsStr::new("probe-file");
        drop(make_file(dir, file)?);
        let refused_bytes = refused_bytes(dir);
        let found = Abilities {
            xattrs: holds_xattr(dir, file, xattr),
            whiteout_devices: makes_node(dir, "probe-wh", FileType::CharacterDevice),
            fifos: makes_node(dir, "probe-fifo", FileType::Fifo),
            symlinks: makes_symlink(dir),
            hard_links: makes_hard_link(dir, file),
            owners: keeps_owner(dir, file),
            modes: keeps_mode(dir, file),
            case_sensitive: is_case_sensitive(dir)?,
            trailing_dots: takes_name(dir, b"dot.") && takes_name(dir, b"space "),
            nanosecond_times: keeps_nanoseconds(dir, file),
            refused_bytes,
            name_max: longest_name(dir),
        };
        remove(dir, file);
        Ok(found)
    }

    /// What the filesystem lacks, in words, in the order of the fields.
    pub fn lacking(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            (self.xattrs, "xattrs"),
            (self.whiteout_devices, "device nodes"),
            (self.fifos, "fifos"),
            (self.symlinks, "symlinks"),
            (self.hard_links, "hard links"),
            (self.owners, "owners"),
            (self.modes, "modes"),
            (self.case_sensitive, "case-sensitive names"),
            (self.trailing_dots, "trailing dots"),
            (self.nanosecond_times, "nanosecond times"),
        ]
        .into_iter()
        .filter(|(has, _)| !has)
        .map(|(_, what)| what.to_string())
        .collect();
        if !self.refused_bytes.is_empty() {
            out.push(format!("names with {}", shown_bytes(&self.refused_bytes)));
        }
        if self.name_max < 255 {
            out.push(format!("names over {} bytes", self.name_max));
        }
        out
    }
}

/// Bytes as a user reads them: printable ones as they are, controls as one
/// range when they are all there.
fn shown_bytes(bytes: &[u8]) -> String {
    let controls = bytes.iter().filter(|b| b.is_ascii_control()).count();
    let suspect_controls = SUSPECT_BYTES
        .iter()
        .filter(|b| b.is_ascii_control())
        .count();
    let mut out: String = bytes
        .iter()
        .filter(|b| !b.is_ascii_control())
        .map(|b| *b as char)
        .collect();
    match controls {
        0 => {}
        n if n == suspect_controls => out.push_str(" and control characters"),
        _ => out.push_str(" and some control characters"),
    }
    out
}

/// The suspect bytes a name may not hold: all tried in one name first, as
/// most filesystems take every one.
fn refused_bytes(dir: BorrowedFd<'_>) -> Vec<u8> {
    let all = [b"n", SUSPECT_BYTES, b"n"].concat();
    if takes_name(dir, &all) {
        return Vec::new();
    }
    SUSPECT_BYTES
        .iter()
        .copied()
        .filter(|b| !takes_name(dir, &[b'n', *b, b'n']))
        .collect()
}

fn make_file(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
}

/// Remove `name` from `dir`, whatever it turned out to be.
fn remove(dir: BorrowedFd<'_>, name: &OsStr) {
    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
}

/// Whether a file named `name` can be made, is found by that name and is
/// listed under it (some filesystems store another name than the one given).
fn takes_name(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    let name = OsStr::from_bytes(name);
    if make_file(dir, name).is_err() {
        return false;
    }
    let listed = list(dir).iter().any(|n| n.as_bytes() == name.as_bytes());
    remove(dir, name);
    listed
}

fn list(dir: BorrowedFd<'_>) -> Vec<std::ffi::OsString> {
    crate::list_names(dir).unwrap_or_default()
}

fn holds_xattr(dir: BorrowedFd<'_>, file: &OsStr, key: &str) -> bool {
    let Ok(fd) = layer::open_path_at(dir, file) else {
        return false;
    };
    layer::set_xattr(fd.as_fd(), key, b"y", XattrFlags::empty()).is_ok()
        && layer::get_xattr(fd.as_fd(), key).ok().flatten().as_deref() == Some(b"y")
}

/// Whether a node of `kind` (0/0 for a device) is made and stays that kind:
/// exFAT through FUSE answers EIO and leaves an empty regular file behind.
fn makes_node(dir: BorrowedFd<'_>, name: &str, kind: FileType) -> bool {
    let name = OsStr::new(name);
    let made = rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), 0);
    let kept = made.is_ok()
        && layer::stat_at(dir, name).is_ok_and(|st| {
            FileType::from_raw_mode(st.st_mode) == kind
                && (kind != FileType::CharacterDevice || st.st_rdev == 0)
        });
    remove(dir, name);
    kept
}

fn makes_symlink(dir: BorrowedFd<'_>) -> bool {
    let name = OsStr::new("probe-link");
    let made = rustix::fs::symlinkat("probe-target", dir, name).is_ok();
    let kept = made
        && rustix::fs::readlinkat(dir, name, Vec::new())
            .is_ok_and(|t| t.as_bytes() == b"probe-target");
    remove(dir, name);
    kept
}

fn makes_hard_link(dir: BorrowedFd<'_>, file: &OsStr) -> bool {
    let name = OsStr::new("probe-hard");
    let made = rustix::fs::linkat(dir, file, dir, name, AtFlags::empty()).is_ok();
    let kept = made
        && layer::stat_at(dir, file).is_ok_and(|st| st.st_nlink == 2)
        && layer::stat_at(dir, name).is_ok();
    remove(dir, name);
    kept
}

fn keeps_owner(dir: BorrowedFd<'_>, file: &OsStr) -> bool {
    let map = |kind: &str| std::fs::read_to_string(format!("/proc/self/{kind}_map"));
    let uid = other_id(
        &map("uid").unwrap_or_default(),
        rustix::process::geteuid().as_raw(),
    );
    let gid = other_id(
        &map("gid").unwrap_or_default(),
        rustix::process::getegid().as_raw(),
    );
    let (uid, gid) = (
        uid.unwrap_or(rustix::process::geteuid().as_raw()),
        gid.unwrap_or(rustix::process::getegid().as_raw()),
    );
    let owner = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    rustix::fs::chownat(dir, file, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW).is_ok()
        && layer::stat_at(dir, file).is_ok_and(|st| st.st_uid == uid && st.st_gid == gid)
}

/// An id other than `own` that the user namespace maps (`map` is its
/// `/proc/self/uid_map` or `gid_map`): `PROBE_ID` where it is mapped, else
/// the first mapped one; None where only `own` is mapped (a chown then can
/// only keep the owner, and that is what is tried).
fn other_id(map: &str, own: u32) -> Option<u32> {
    let ranges: Vec<(u32, u32)> = map
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().map(str::parse::<u32>);
            let inside = words.next()?.ok()?;
            let count = words.nth(1)?.ok()?;
            Some((inside, count))
        })
        .collect();
    let mapped = |id: u32| {
        ranges
            .iter()
            .any(|(start, n)| id >= *start && id - start < *n)
    };
    if mapped(PROBE_ID) && PROBE_ID != own {
        return Some(PROBE_ID);
    }
    ranges
        .iter()
        .flat_map(|(start, n)| {
            [*start, start.saturating_add(1)]
                .into_iter()
                .filter(move |id| id - start < *n)
        })
        .find(|id| *id != own)
}

fn keeps_mode(dir: BorrowedFd<'_>, file: &OsStr) -> bool {
    let mode = 0o4751;
    layer::chmod_at(dir, file, mode).is_ok()
        && layer::stat_at(dir, file).is_ok_and(|st| st.st_mode & 0o7777 == mode)
}

fn is_case_sensitive(dir: BorrowedFd<'_>) -> Result<bool> {
    let name = OsStr::new("Probe-Case");
    drop(make_file(dir, name)?);
    let other = layer::stat_at(dir, OsStr::new("probe-case"));
    remove(dir, name);
    Ok(matches!(other, Err(Errno::NOENT)))
}

fn keeps_nanoseconds(dir: BorrowedFd<'_>, file: &OsStr) -> bool {
    let t = Timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 123_456_789,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(dir, file, &times, AtFlags::SYMLINK_NOFOLLOW).is_ok()
        && layer::stat_at(dir, file).is_ok_and(|st| st.st_mtime_nsec as i64 == t.tv_nsec)
}

/// The longest name of ASCII letters the filesystem takes, up to 255 bytes.
fn longest_name(dir: BorrowedFd<'_>) -> usize {
    let fits = |n: usize| takes_name(dir, &vec![b'n'; n]);
    if fits(255) {
        return 255;
    }
    // Names of 1 byte always fit; halve the distance to the limit.
    let (mut ok, mut bad) = (1, 255);
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        if fits(mid) { ok = mid } else { bad = mid }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_mapped_id_is_found_for_the_owner_probe() {
        let init = "         0          0 4294967295\n";
        assert_eq!(other_id(init, 0), Some(PROBE_ID));
        // A rootless container's map: root is the user, 1.. come from subuids.
        let userns = "0 1000 1\n1 100000 65536\n";
        assert_eq!(other_id(userns, 0), Some(PROBE_ID));
        assert_eq!(other_id("0 1000 1\n1 100000 100\n", 0), Some(1));
        assert_eq!(other_id("0 1000 1\n", 0), None);
        assert_eq!(other_id("0 1000 2\n", 0), Some(1));
        assert_eq!(other_id("", 0), None);
    }
}
