//! FUSE passthrough bookkeeping: which backing file each open inode uses.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use fuser::{BackingId, Errno as FuseErrno};

use super::err;
use crate::sync;

/// FUSE passthrough: the kernel reads and writes an open file's backing file
/// itself. While an inode has open files they must all be opened the same way:
/// through one backing file, or all through the page cache (the kernel refuses
/// a mix with EIO). A lower file of a copy-on-write union is never a backing
/// file, since a copy-up would leave its open passthrough files on the old data.
#[derive(Default)]
pub(super) struct Passthrough {
    pub(super) enabled: bool,
    by_node: Mutex<HashMap<u64, NodeIo>>,
    node_of_fh: Mutex<HashMap<u64, u64>>,
}

enum NodeIo {
    Cached {
        users: usize,
    },
    Backing {
        id: Arc<BackingId>,
        file: (u64, u64),
        users: usize,
    },
}

/// How an open is answered.
pub(super) enum OpenMode {
    Passthrough(Arc<BackingId>),
    Cached,
}

impl Passthrough {
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
        let mode = match by_node.get_mut(&node) {
            Some(NodeIo::Cached { users }) => {
                *users += 1;
                OpenMode::Cached
            }
            Some(NodeIo::Backing { id, file: f, users }) => {
                if *f != file {
                    // Cannot happen for files that stay put; refuse rather than
                    // serve another file's data.
                    return Err(FuseErrno::EBUSY);
                }
                *users += 1;
                OpenMode::Passthrough(id.clone())
            }
            None => {
                let backing = (self.enabled && may_passthrough).then(|| open_backing(fd));
                match backing {
                    Some(Ok(id)) => {
                        let id = Arc::new(id);
                        by_node.insert(
                            node,
                            NodeIo::Backing {
                                id: id.clone(),
                                file,
                                users: 1,
                            },
                        );
                        OpenMode::Passthrough(id)
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            log::debug!("no passthrough for node {node:#x}: {e}");
                        }
                        by_node.insert(node, NodeIo::Cached { users: 1 });
                        OpenMode::Cached
                    }
                }
            }
        };
        drop(by_node);
        sync::lock(&self.node_of_fh).insert(fh, node);
        Ok(mode)
    }

    pub(super) fn released(&self, fh: u64) {
        let Some(node) = sync::lock(&self.node_of_fh).remove(&fh) else {
            return;
        };
        let mut by_node = sync::lock(&self.by_node);
        let last = match by_node.get_mut(&node) {
            Some(NodeIo::Cached { users }) | Some(NodeIo::Backing { users, .. }) => {
                *users -= 1;
                *users == 0
            }
            None => false,
        };
        if last {
            by_node.remove(&node);
        }
    }
}
