//! FUSE passthrough bookkeeping: which backing files each open inode uses.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use fuser::{BackingId, Errno as FuseErrno};

use super::err;
use crate::sync;

/// FUSE passthrough: the kernel reads and writes an open file's backing file
/// itself. While an inode has open files they must all be opened the same way:
/// through one backing file, or all through the page cache (the kernel refuses
/// a mix with EIO).
///
/// A lower file of a copy-on-write union is a backing file only with
/// `lower_passthrough`, since a copy-up would leave its open passthrough files
/// on the old data. There, the write open that copies a file up asks for the
/// upper file as its backing, and the kernel decides: it refuses (EIO) while
/// a descriptor still reads the lower file, and accepts once the last has
/// closed, even if its RELEASE (sent after close returns) has not reached us.
/// So a node may have several backing files here for a moment.
#[derive(Default)]
pub(super) struct Passthrough {
    pub(super) enabled: bool,
    /// Read-only opens of lower files may pass through too (the mount
    /// option `lower_passthrough`).
    pub(super) lower_files: bool,
    by_node: Mutex<HashMap<u64, NodeIo>>,
    /// Each open handle's node and, if it passes through, its backing file.
    of_fh: Mutex<HashMap<u64, (u64, Option<FileId>)>>,
}

/// A file by device and inode number.
type FileId = (u64, u64);

enum NodeIo {
    Cached { users: usize },
    Backing(Vec<Backed>),
}

struct Backed {
    id: Arc<BackingId>,
    file: FileId,
    users: usize,
}

/// How an open is answered.
pub(super) enum OpenMode {
    Passthrough(Arc<BackingId>),
    Cached,
}

impl Passthrough {
    /// May this open pass through: a file that stays put, or a read-only
    /// open of a lower file when the mount allows that.
    pub(super) fn may(&self, opened: &crate::file::Opened, flags: rustix::fs::OFlags) -> bool {
        opened.stays_put || (self.lower_files && !crate::file::wants_write(flags))
    }

    pub(super) fn mode(
        &self,
        node: u64,
        fh: u64,
        fd: &OwnedFd,
        may_passthrough: bool,
        open_backing: impl FnOnce(&OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<OpenMode, FuseErrno> {
        let file = rustix::fs::fstat(fd)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(err)?;
        let mut by_node = sync::lock(&self.by_node);
        let (mode, backed) = match by_node.get_mut(&node) {
            Some(NodeIo::Cached { users }) => {
                *users += 1;
                (OpenMode::Cached, None)
            }
            Some(NodeIo::Backing(list)) => {
                if let Some(b) = list.iter_mut().find(|b| b.file == file) {
                    b.users += 1;
                    (OpenMode::Passthrough(b.id.clone()), Some(file))
                } else if may_passthrough {
                    // Another file than the open ones (a copy-up of the lower
                    // file they read): the kernel takes it only once they are
                    // closed.
                    let id = open_backing(fd)
                        .map_err(|e| FuseErrno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)))?;
                    let id = Arc::new(id);
                    list.push(Backed::new(id.clone(), file));
                    (OpenMode::Passthrough(id), Some(file))
                } else {
                    return Err(FuseErrno::EBUSY);
                }
            }
            None => match may_passthrough.then(|| open_backing(fd)) {
                Some(Ok(id)) => {
                    let id = Arc::new(id);
                    let list = vec![Backed::new(id.clone(), file)];
                    by_node.insert(node, NodeIo::Backing(list));
                    (OpenMode::Passthrough(id), Some(file))
                }
                other => {
                    if let Some(Err(e)) = other {
                        log::debug!("no passthrough for node {node:#x}: {e}");
                    }
                    by_node.insert(node, NodeIo::Cached { users: 1 });
                    (OpenMode::Cached, None)
                }
            },
        };
        drop(by_node);
        sync::lock(&self.of_fh).insert(fh, (node, backed));
        Ok(mode)
    }

    pub(super) fn released(&self, fh: u64) {
        let Some((node, backed)) = sync::lock(&self.of_fh).remove(&fh) else {
            return;
        };
        let mut by_node = sync::lock(&self.by_node);
        let empty = match by_node.get_mut(&node) {
            Some(NodeIo::Cached { users }) => {
                *users -= 1;
                *users == 0
            }
            Some(NodeIo::Backing(list)) => {
                if let Some(i) = list.iter().position(|b| Some(b.file) == backed) {
                    list[i].users -= 1;
                    if list[i].users == 0 {
                        list.swap_remove(i);
                    }
                }
                list.is_empty()
            }
            None => false,
        };
        if empty {
            by_node.remove(&node);
        }
    }
}

impl Backed {
    fn new(id: Arc<BackingId>, file: FileId) -> Backed {
        Backed { id, file, users: 1 }
    }
}
