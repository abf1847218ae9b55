//! Merged directory listings. A listing is read once when the directory is
//! opened and kept with the handle, so offsets stay stable for seekdir/telldir
//! while it is open.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use crate::inode::{Node, NodeState};
use crate::layer::{get_xattr, stat_at};
use crate::names::{self, is_chardev_whiteout, oci_whiteout_target};
use crate::{Result, Union};

/// One merged entry, as readdir shows it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: FileType,
    pub ino: u64,
    /// What the name resolved to when the listing was read, and the union's
    /// change count then (None for "." and ".."), so readdirplus needs no second
    /// lookup while nothing changed.
    pub found: Option<(NodeState, rustix::fs::Stat, u64)>,
}

impl Union {
    /// The merged listing of a directory node, with "." and "..".
    pub fn list_dir(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let _ns = self.namespace.read().unwrap_or_else(|e| e.into_inner());
        let st = node.snapshot();
        if !st.is_dir {
            return Err(Errno::NOTDIR);
        }
        let path = self.path_of(node)?;
        let seen_changes = self.change_count();
        let parent_ino = match st.names.first() {
            Some((p, _)) => self.node(*p).map(|n| n.st_ino).unwrap_or(node.st_ino),
            None => node.st_ino,
        };
        let mut out = vec![
            DirEntry {
                name: ".".into(),
                kind: FileType::Directory,
                ino: node.st_ino,
                found: None,
            },
            DirEntry {
                name: "..".into(),
                kind: FileType::Directory,
                ino: parent_ino,
                found: None,
            },
        ];
        let cache = crate::lookup::DirCache::default();
        for (name, _) in self.merged_names(&st, &path)? {
            // Resolving each entry gives the same st_ino stat would (d_ino == st_ino).
            if let Some(found) = self.resolve_child_in(&st, &path, &name, &cache)? {
                let kind = FileType::from_raw_mode(found.stat.st_mode);
                out.push(DirEntry {
                    name,
                    kind,
                    ino: found.st_ino,
                    found: Some((found.state, found.stat, seen_changes)),
                });
            }
        }
        Ok(out)
    }

    /// A listed entry handed to the kernel with its attributes (readdirplus):
    /// counts as a lookup of it.
    pub fn remember_listed(
        &self,
        parent: u64,
        e: &DirEntry,
    ) -> Result<(std::sync::Arc<Node>, rustix::fs::Stat)> {
        // Held from the check to the remember, so no rename slips in between.
        let ns = self.namespace.read().unwrap_or_else(|e| e.into_inner());
        match &e.found {
            // Names may have moved since the listing was read: then look again,
            // or a stale name would be given back to a node.
            Some((state, _, seen)) if *seen == self.change_count() => {
                let node = self
                    .inodes
                    .remember(e.ino, false, parent, &e.name, state.clone(), true);
                drop(ns);
                // Attributes as they are now, not as when the listing was read:
                // a write or a truncate since changes no name, and the kernel
                // would take the old size from this reply (attributes it asked
                // for after the change).
                match self.raw_stat(&node, &node.snapshot()) {
                    Ok(stat) => Ok((node, stat)),
                    Err(err) => {
                        self.inodes.forget(node.id, 1);
                        Err(err)
                    }
                }
            }
            _ => {
                drop(ns);
                self.lookup(parent, &e.name)
            }
        }
    }

    /// The names a merged directory shows (no markers, no whiteouts, no duplicates).
    pub(crate) fn merged_names(
        &self,
        st: &NodeState,
        path: &Path,
    ) -> Result<Vec<(OsString, FileType)>> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        let mut dirs: Vec<(usize, &Path)> = Vec::new();
        if st.upper {
            dirs.push((0, path));
        }
        dirs.extend(st.lowers.iter().map(|(l, p)| (*l, p.as_path())));
        for (li, dpath) in dirs {
            let is_upper = li == 0 && self.has_upper();
            let layer = &self.layers[li];
            let fd = match layer.open_beneath(dpath, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let xattr_whiteouts = has_xattr_whiteouts(fd.as_fd())?;
            let mut layer_whiteouts = Vec::new();
            let mut d = rustix::fs::Dir::read_from(&fd)?;
            while let Some(entry) = d.read() {
                let entry = entry?;
                let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
                if name == "." || name == ".." {
                    continue;
                }
                if is_upper && self.is_hidden_upper_name(dpath, &name) {
                    continue;
                }
                if !is_upper && names::is_meta_name(&name) {
                    if let Some(target) = oci_whiteout_target(&name) {
                        layer_whiteouts.push(target.to_os_string());
                    }
                    continue;
                }
                if seen.contains(&name) || hidden.contains(&name) {
                    continue;
                }
                let mut kind = entry.file_type();
                if kind == FileType::CharacterDevice
                    || kind == FileType::Unknown
                    || (xattr_whiteouts && kind == FileType::RegularFile)
                {
                    let st = stat_at(fd.as_fd(), &name)?;
                    kind = FileType::from_raw_mode(st.st_mode);
                    if is_chardev_whiteout(&st)
                        || (xattr_whiteouts && names::is_whiteout(fd.as_fd(), &name, &st)?)
                    {
                        layer_whiteouts.push(name);
                        continue;
                    }
                }
                seen.insert(name.clone());
                out.push((name, kind));
            }
            hidden.extend(layer_whiteouts);
        }
        Ok(out)
    }
}

/// Kernel 6.7+ marks a directory holding xattr whiteouts (`opaque=x` or `whiteouts`).
fn has_xattr_whiteouts(dir: std::os::fd::BorrowedFd<'_>) -> Result<bool> {
    for key in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if get_xattr(dir, key)?.as_deref() == Some(b"x") {
            return Ok(true);
        }
    }
    for key in ["trusted.overlay.whiteouts", "user.overlay.whiteouts"] {
        if get_xattr(dir, key)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
