//! Every name of a lower hard-link group, so that a group copied up through
//! one name gets all its names linked into the upper.
//!
//! The kernel shows the other names the group's index entry, but leaves them
//! out of the upper until each is opened for writing. An upper is also what
//! a commit, `podman commit` or kernel overlayfs mounting it as a lower
//! reads: a name left out there keeps showing the old data. So once a
//! group's copy may change, the upper has to hold every visible name of it.
//!
//! Layers are read-only for the mount's life, so their groups are found
//! once, at the first copy-up of a group member: one walk of the lowers
//! that keeps only files with more than one link (memory grows with the
//! groups, not with the tree), each under its index name.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use ondisk::whiteout;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::{Branch, Result, Union};

/// The lower names of each hard-link group, by the group's index name.
#[derive(Default)]
pub(crate) struct LowerGroups(HashMap<OsString, Vec<(usize, PathBuf)>>);

impl LowerGroups {
    /// The (layer, path) names of the group with index name `key`.
    pub(crate) fn names(&self, key: &std::ffi::OsStr) -> &[(usize, PathBuf)] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }
}

impl Union {
    /// The lower hard-link groups, found on the first call.
    pub(crate) fn lower_groups(&self) -> &LowerGroups {
        self.lower_groups.get_or_init(|| {
            let mut groups = LowerGroups::default();
            for li in usize::from(self.has_upper())..self.layers.len() {
                self.find_groups(li, &mut groups);
            }
            groups
        })
    }

    /// Walk layer `li` for files with more than one link. A directory that
    /// cannot be read is skipped: its names stay in the lower only, as before.
    fn find_groups(&self, li: usize, groups: &mut LowerGroups) {
        let Ok(layer) = self.branch(Branch::Layer(li)) else {
            return;
        };
        let mut todo = vec![PathBuf::new()];
        while let Some(dir) = todo.pop() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let Ok(fd) = layer.open_beneath(&dir, flags) else {
                continue;
            };
            let mut linked = Vec::new();
            let _ = scan(fd.as_fd(), &dir, &mut todo, &mut linked);
            for path in linked {
                if let Some(key) = self.index_key(li, &path) {
                    groups.0.entry(key).or_default().push((li, path));
                }
            }
        }
    }
}

/// Push the subdirectories of `dir` (at `path`) onto `todo` and its files
/// with more than one link onto `linked`.
fn scan(
    dir: BorrowedFd<'_>,
    path: &Path,
    todo: &mut Vec<PathBuf>,
    linked: &mut Vec<PathBuf>,
) -> Result<()> {
    let own = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in rustix::fs::Dir::new(own)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || whiteout::is_meta_name(name) {
            continue;
        }
        let name = OsString::from_vec(name.to_vec());
        let Ok(st) = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => todo.push(path.join(&name)),
            _ if st.st_nlink > 1 => linked.push(path.join(&name)),
            _ => {}
        }
    }
    Ok(())
}
