//! Usage: the bytes and inodes of a snapshot's own directory, as
//! containerd's overlay snapshotter counts them (allocated blocks; a hard
//! link counted once).

use std::collections::HashSet;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, statat};

use crate::error::{Context, Result};

/// (bytes, inodes) under `dir`, `dir` itself included.
pub fn disk_usage(dir: &Path) -> Result<(i64, i64)> {
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let st = statat(CWD, &p, AtFlags::SYMLINK_NOFOLLOW).at(p.display())?;
        if !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        bytes += st.st_blocks * 512;
        inodes += 1;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            for e in std::fs::read_dir(&p).at(p.display())? {
                stack.push(e.at(p.display())?.path());
            }
        }
    }
    Ok((bytes, inodes))
}
