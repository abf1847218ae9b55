//! open, read, write, flush, fsync, release, fallocate, lseek; directory handles.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{FallocateFlags, OFlags, SeekFrom, Stat};
use rustix::io::Errno;

use crate::Branch;
use crate::copy_up::CopyUp;
use crate::inode::Node;
use crate::layer::Atime;
use crate::sync;
use crate::{Result, Union};

/// An open file. Directories have no handles: see `readdir::Listings`.
pub struct Handle {
    node: u64,
    fd: Arc<OwnedFd>,
    /// Opened read-only on a lower file of a copy-on-write union, with
    /// these flags: once the node is copied up, the handle moves to the copy.
    lower: Option<OFlags>,
}

/// An open file handle and how the kernel may cache it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// From an immutable lower branch: its page cache stays valid across opens.
    pub keep_cache: bool,
    /// The file behind the node cannot change while it is open (no copy-up can
    /// come), so the kernel may read and write it directly (passthrough).
    pub stays_put: bool,
}

/// Open handles by id.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Handle>>,
}

impl Handles {
    fn insert(&self, h: Handle) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        sync::lock(&self.map).insert(id, h);
        id
    }

    pub fn fd(&self, fh: u64) -> Option<Arc<OwnedFd>> {
        let map = sync::lock(&self.map);
        map.get(&fh).map(|h| h.fd.clone())
    }

    /// A file handle's descriptor, its node, and its open flags if it was
    /// opened on a lower file that may have been copied up since.
    fn file(&self, fh: u64) -> Option<(Arc<OwnedFd>, u64, Option<OFlags>)> {
        let map = sync::lock(&self.map);
        map.get(&fh).map(|h| (h.fd.clone(), h.node, h.lower))
    }

    /// The handle now reads `fd` (the copy-up of the file it was opened on).
    fn moved(&self, fh: u64, new: Arc<OwnedFd>) {
        let mut map = sync::lock(&self.map);
        if let Some(h) = map.get_mut(&fh) {
            h.fd = new;
            h.lower = None;
        }
    }

    fn remove(&self, fh: u64) {
        sync::lock(&self.map).remove(&fh);
    }

    /// Any open descriptor of a node (an unlinked file is reached through it).
    fn any_fd_of(&self, node: u64) -> Option<Arc<OwnedFd>> {
        let map = sync::lock(&self.map);
        map.values().find(|h| h.node == node).map(|h| h.fd.clone())
    }
}

/// The open flags that mean something for the file in the branch.
const OPEN_FLAGS_PASSED: OFlags = OFlags::RWMODE
    .union(OFlags::APPEND)
    .union(OFlags::NONBLOCK)
    .union(OFlags::DSYNC)
    .union(OFlags::SYNC)
    .union(OFlags::DIRECT)
    .union(OFlags::NOATIME)
    .union(OFlags::TRUNC)
    .union(OFlags::LARGEFILE);

/// Does an open with these flags change the file?
pub fn wants_write(flags: OFlags) -> bool {
    flags.intersects(OFlags::WRONLY | OFlags::RDWR | OFlags::TRUNC)
}

impl Union {
    /// Open a file: a write open copies it up first (without its data when the
    /// open truncates anyway).
    pub fn open(&self, node: &Node, flags: OFlags) -> Result<Opened> {
        // The kernel passes internal bits (e.g. FMODE_EXEC) that openat2 rejects.
        let flags = flags & OPEN_FLAGS_PASSED;
        let write = wants_write(flags);
        if write {
            let how = if flags.contains(OFlags::TRUNC) {
                CopyUp::Truncated
            } else {
                CopyUp::Data
            };
            self.prepare(node, how)?;
        }
        let (li, fd) = {
            // Held until the file is open: the path must still name this node.
            let _ns = sync::read(&self.namespace);
            let (li, path) = if write {
                self.write_location(node)?
            } else {
                self.data_entry(node, &node.snapshot())?
            };
            let fd = match self.open_data(li, &path, flags | OFlags::NOFOLLOW) {
                // A whiteout (device 0/0): the node's name went away meanwhile.
                Err(Errno::NXIO) => {
                    log::debug!(
                        "open {:#x}: {path:?} in branch {li} is a whiteout; names {:?}",
                        node.id,
                        node.snapshot().names
                    );
                    return Err(Errno::STALE);
                }
                other => other?,
            };
            (li, fd)
        };
        let layer = self.branch(li)?;
        // A lower file of a copy-on-write union becomes another file when it is
        // copied up; upper files (and every file without an upper) stay put.
        let stays_put = li == Branch::TOP || li == Branch::Index || !self.has_upper();
        let fh = self.handles.insert(Handle {
            node: node.id,
            fd: Arc::new(fd),
            lower: (!stays_put).then_some(flags),
        });
        Ok(Opened {
            fh,
            keep_cache: !layer.writable,
            stays_put,
        })
    }

    /// Open a branch's file or directory to read or write it. Kernel
    /// overlayfs opens its real files O_NOATIME: a lower object's atime never
    /// moves, an upper one's only as the mount's atime options allow. That
    /// needs the owner or CAP_FOWNER; without, the object is opened as asked.
    pub(crate) fn open_data(&self, li: Branch, path: &Path, flags: OFlags) -> Result<OwnedFd> {
        let layer = self.branch(li)?;
        if layer.atime_by_mount() {
            return layer.open_io(path, flags);
        }
        let dir = flags.contains(OFlags::DIRECTORY);
        let spare =
            !layer.writable || self.cfg.atime == Atime::Never || (dir && self.cfg.nodiratime);
        if !spare || flags.contains(OFlags::PATH) {
            return layer.open_beneath(path, flags);
        }
        match layer.open_beneath(path, flags | OFlags::NOATIME) {
            Err(Errno::PERM) => layer.open_beneath(path, flags),
            other => other,
        }
    }

    /// Must the daemon itself read upper files so that the mount's atime
    /// options hold (a noatime mount whose upper has no clone to read through)?
    pub(crate) fn reads_for_atime(&self) -> bool {
        self.cfg.atime == Atime::Never && !self.upper().atime_by_mount()
    }

    /// Register a descriptor made by create().
    pub fn adopt(&self, node: &Node, fd: OwnedFd) -> u64 {
        if self.reads_for_atime()
            && let Ok(flags) = rustix::fs::fcntl_getfl(&fd)
        {
            // As open_data opens: reads through this handle leave atime alone.
            let _ = rustix::fs::fcntl_setfl(&fd, flags | OFlags::NOATIME);
        }
        self.handles.insert(Handle {
            node: node.id,
            fd: Arc::new(fd),
            lower: None,
        })
    }

    pub fn handle_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        self.handles.fd(fh).ok_or(Errno::BADF)
    }

    /// The descriptor to read a handle's data and attributes through. A file
    /// opened read-only before a write elsewhere copied it up goes on with the
    /// copy, as with kernel overlayfs: reads and fstat through a descriptor
    /// opened earlier see every change made since.
    pub fn current_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        let (fd, node_id, lower) = self.handles.file(fh).ok_or(Errno::BADF)?;
        let Some(flags) = lower else {
            return Ok(fd);
        };
        let Ok(node) = self.node(node_id) else {
            return Ok(fd);
        };
        {
            let st = node.state();
            // Not copied up, or the upper has no data yet: the lower is right.
            if (!st.upper && st.index.is_none()) || st.metacopy {
                return Ok(fd);
            }
        }
        let new = {
            let _ns = sync::read(&self.namespace);
            let (li, path) = self.data_entry(&node, &node.snapshot())?;
            self.open_data(li, &path, flags | OFlags::NOFOLLOW)?
        };
        let new = Arc::new(new);
        self.handles.moved(fh, new.clone());
        Ok(new)
    }

    pub fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let fd = self.current_fd(fh)?;
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let n = rustix::io::pread(&*fd, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let fd = self.handle_fd(fh)?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&*fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                // What was written stays written: a short count, as write(2)
                // gives it (ENOSPC comes with the next write).
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.cfg.volatile {
            return Ok(());
        }
        let fd = self.handle_fd(fh)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        }
    }

    /// fsync of a directory: its copy in a writable branch (a directory only in
    /// read-only layers has nothing to make durable).
    pub fn fsync_dir(&self, node: &Node, datasync: bool) -> Result<()> {
        if self.cfg.volatile {
            return Ok(());
        }
        let (li, path) = {
            let _ns = sync::read(&self.namespace);
            self.top_entry(node, &node.snapshot())?
        };
        let layer = self.branch(li)?;
        if !layer.writable {
            return Ok(());
        }
        let fd = layer.open_beneath(&path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        if datasync {
            rustix::fs::fdatasync(&fd)
        } else {
            rustix::fs::fsync(&fd)
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let fd = self.handle_fd(fh)?;
        let flags = FallocateFlags::from_bits(mode as u32).ok_or(Errno::OPNOTSUPP)?;
        rustix::fs::fallocate(&*fd, flags, offset, len)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let fd = self.current_fd(fh)?;
        let pos = match whence {
            libc::SEEK_SET => SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
            _ => return Err(Errno::INVAL),
        };
        Ok(rustix::fs::seek(&*fd, pos)? as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: usize,
    ) -> Result<usize> {
        let src = self.current_fd(fh_in)?;
        let dst = self.handle_fd(fh_out)?;
        let (mut i, mut o) = (off_in, off_out);
        rustix::fs::copy_file_range(&*src, Some(&mut i), &*dst, Some(&mut o), len)
    }

    /// stat through an open handle (works for unlinked files: nlink 0).
    pub fn getattr_open(&self, node: &Node, fh: Option<u64>) -> Result<Stat> {
        let fd = match fh.and_then(|f| self.current_fd(f).ok()) {
            Some(fd) => Some(fd),
            None if node.snapshot().names.is_empty() => self.handles.any_fd_of(node.id),
            None => None,
        };
        let st = node.snapshot();
        match fd {
            // A descriptor of the data of an upper holding metadata only
            // tells the lower's metadata, not the upper's.
            Some(_) if st.metacopy && !st.names.is_empty() => self.getattr(node),
            Some(fd) => {
                let mut raw = rustix::fs::fstat(fd.as_fd())?;
                if st.names.is_empty() {
                    // Unlinked: a lower file behind a whiteout still has its link.
                    raw.st_nlink = 0;
                } else if raw.st_nlink > 1 || st.index.is_some() {
                    raw.st_nlink = self.shown_nlink(fd.as_fd(), raw.st_nlink);
                }
                Ok(self.present_stat(node, &st, raw))
            }
            None => self.getattr(node),
        }
    }
}
