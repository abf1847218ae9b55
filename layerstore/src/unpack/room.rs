//! The disk bound of unpacking: a layer tar (or a compressed one, a "bomb")
//! may claim or hold far more than its blob's size. Before each entry is
//! written, the layer's filesystem must keep [`keep_free`] bytes (and inodes)
//! available after it; an entry that would take more is refused before
//! anything of it is written, so unpacking never fills the disk.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::StatVfs;

use crate::{Context, Error, Result};

/// Bytes kept available: 1/20 of the filesystem, at most this (1 GiB).
pub const KEEP_FREE_MAX: u64 = 1 << 30;
/// Inodes kept available: 1/20 of the filesystem's, at most this.
pub const KEEP_FREE_INODES_MAX: u64 = 1 << 16;

/// What an entry is charged beyond its data: an inode's block.
const ENTRY_COST: u64 = 4096;
/// The filesystem is asked again after this many entries even when the
/// estimate says there is room (others write to it too).
const RESTAT_EVERY: u32 = 1024;

/// Bytes and inodes that must stay available on a filesystem.
pub fn keep_free(st: &StatVfs) -> (u64, u64) {
    let size = st.f_blocks.saturating_mul(st.f_frsize);
    (
        (size / 20).min(KEEP_FREE_MAX),
        (st.f_files / 20).min(KEEP_FREE_INODES_MAX),
    )
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuse `bytes` more on the filesystem of `dir` unless it keeps its reserve.
pub fn check_room(dir: BorrowedFd<'_>, bytes: u64, what: &str) -> Result<()> {
    let st = rustix::fs::fstatvfs(dir).ctx(|| what.to_string())?;
    let (keep, keep_inodes) = keep_free(&st);
    let avail = st.f_bavail.saturating_mul(st.f_frsize);
    if avail.saturating_sub(keep) < bytes {
        return Err(no_room(what, bytes, avail, keep));
    }
    if st.f_files != 0 && st.f_favail <= keep_inodes {
        return Err(no_inode(what, st.f_favail, keep_inodes));
    }
    Ok(())
}

fn no_inode(what: &str, avail: u64, keep: u64) -> Error {
    Error::invalid(
        what,
        format!(
            "one more file would not fit: the filesystem has {avail} inodes available and keeps {keep} free"
        ),
    )
}

fn no_room(what: &str, bytes: u64, avail: u64, keep: u64) -> Error {
    Error::invalid(
        what,
        format!(
            "{} would not fit: the filesystem has {} available and keeps {} free",
            human(bytes),
            human(avail),
            human(keep)
        ),
    )
}

/// A running estimate of the room left, checked against the filesystem
/// whenever the estimate runs out.
pub(crate) struct Room {
    fd: OwnedFd,
    bytes_left: u64,
    inodes_left: u64,
    since_stat: u32,
}

impl Room {
    pub(crate) fn new(fd: OwnedFd) -> Room {
        Room {
            fd,
            bytes_left: 0,
            inodes_left: 0,
            since_stat: RESTAT_EVERY,
        }
    }

    /// Charge one entry holding `data` bytes, or refuse it.
    pub(crate) fn take(&mut self, data: u64, entry: &str) -> Result<()> {
        let need = data.div_ceil(ENTRY_COST).saturating_add(1) * ENTRY_COST;
        if need > self.bytes_left || self.inodes_left == 0 || self.since_stat >= RESTAT_EVERY {
            self.refresh(data, need, entry)?;
        }
        self.bytes_left -= need;
        self.inodes_left -= 1;
        self.since_stat += 1;
        Ok(())
    }

    fn refresh(&mut self, data: u64, need: u64, entry: &str) -> Result<()> {
        let what = || format!("layer entry {entry:?}");
        let st = rustix::fs::fstatvfs(self.fd.as_fd()).ctx(what)?;
        let (keep, keep_inodes) = keep_free(&st);
        let avail = st.f_bavail.saturating_mul(st.f_frsize);
        self.bytes_left = avail.saturating_sub(keep);
        // Filesystems without an inode count (btrfs) report 0 files.
        self.inodes_left = if st.f_files == 0 {
            u64::MAX
        } else {
            st.f_favail.saturating_sub(keep_inodes)
        };
        self.since_stat = 0;
        if need > self.bytes_left {
            return Err(no_room(&what(), data, avail, keep));
        }
        if self.inodes_left == 0 {
            return Err(no_inode(&what(), st.f_favail, keep_inodes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_twentieth_at_most_a_gib() {
        let mut st = rustix::fs::statvfs("/").unwrap();
        st.f_frsize = 4096;
        st.f_blocks = 16 * 1024;
        st.f_files = 1000;
        assert_eq!(keep_free(&st), ((64 << 20) / 20, 50));
        st.f_blocks = 1 << 40;
        st.f_files = 1 << 40;
        assert_eq!(keep_free(&st), (KEEP_FREE_MAX, KEEP_FREE_INODES_MAX));
        assert_eq!(human(100), "100 bytes");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
