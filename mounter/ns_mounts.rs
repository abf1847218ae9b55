//! A new mount namespace starts with a copy of every mount of the one it was
//! made from. A copy of a FUSE mount keeps its daemon serving, and a copy of
//! an overlay mount keeps its upper in use, after their owner unmounts them
//! where they were mounted, for as long as the copy lives. The runner's
//! namespace lives as long as its container, so it drops the copies it has no
//! use for at once: a container must not keep other mounts' daemons alive
//! (as `unshare -m sleep` would) or another mount of the same upper refused.

use std::path::{Path, PathBuf};

use rustix::mount::{UnmountFlags, unmount};

use unionfs::mountinfo::{self, MountEntry};

/// Detach, in this mount namespace, every FUSE and overlay mount that is not
/// on the way to one of `needed` (the paths the container and its daemon use).
/// Each one that cannot be detached (in a user namespace, mounts inherited
/// together are locked to each other) stays, with a debug line.
pub fn drop_unneeded_copies(needed: &[PathBuf]) {
    let needed: Vec<PathBuf> = needed.iter().map(|p| canonical(p)).collect();
    let mut foreign: Vec<MountEntry> = mountinfo::read()
        .into_iter()
        .filter(|m| m.holds_a_daemon_or_upper() && !leads_to_any(&m.mount_point, &needed))
        .collect();
    // Deepest first, so a mount stacked on another goes before it.
    foreign.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in foreign {
        if let Err(e) = unmount(&m.mount_point, UnmountFlags::DETACH) {
            log::debug!("keeping the copy of {}: {e}", m.mount_point.display());
        }
    }
}

/// Is `mount_point` the path, or a directory above it, of one of `paths`?
fn leads_to_any(mount_point: &Path, paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| p.starts_with(mount_point))
}

/// Mountinfo shows resolved paths; a path not there yet is kept as given.
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_above_a_needed_path_is_kept() {
        let needed = [PathBuf::from("/store/layers/abc")];
        assert!(leads_to_any(Path::new("/store"), &needed));
        assert!(leads_to_any(Path::new("/store/layers/abc"), &needed));
        assert!(!leads_to_any(Path::new("/store/layers/abcd"), &needed));
        assert!(!leads_to_any(Path::new("/tmp/other/mnt"), &needed));
    }
}
