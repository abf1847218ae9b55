//! The only module that imports `fuser`: FUSE requests in, union operations out.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno as FuseErrno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{FileType as RawType, OFlags, Stat, Timespec};

use crate::attr::{SetAttr, SetTime};
use crate::dir::{Caller, NewObject};
use crate::inode::Node;
use crate::{Errno, FlagsIoctl, Union};

mod errors;
pub mod kernel_mount;
mod listing;
mod passthrough;
mod requests;
mod session;
pub mod uring;

pub use session::{Session, SessionOptions, Transport};

use passthrough::{OpenMode, Passthrough};
pub use requests::{COUNTS_ENV, RequestCounts};
use requests::{Kind, Requests};

/// Layers are immutable and the mount is the only writer of its upper, so the
/// kernel may keep names and attributes for as long as it likes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The largest write (and read-ahead) the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

pub struct UnionFuse {
    union: Arc<Union>,
    passthrough: Passthrough,
    kernel_acls: bool,
    requests: Arc<Requests>,
    io_uring: uring::Choice,
}

impl UnionFuse {
    pub fn new(union: Arc<Union>) -> UnionFuse {
        UnionFuse {
            union,
            passthrough: Passthrough::default(),
            kernel_acls: false,
            requests: Arc::default(),
            io_uring: uring::Choice::default(),
        }
    }

    /// A handle on this mount's request counts, kept after the session
    /// takes the filesystem.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts(Arc::clone(&self.requests))
    }

    /// Let the kernel check and cache POSIX ACLs (FUSE_POSIX_ACL), as kernel
    /// overlayfs does: for mounts whose permissions the kernel checks anyway
    /// (default_permissions) and whose owners are shown as stored (the ids in
    /// an ACL's xattr are not translated). Besides honouring ACLs, it saves
    /// `ls -l` a round trip per file: the kernel remembers that a file has none.
    pub fn with_kernel_acls(mut self, on: bool) -> UnionFuse {
        self.kernel_acls = on;
        self
    }

    /// Read-only opens of lower files pass through to the lower file: kernel
    /// speed, but such a descriptor keeps reading the lower file after a
    /// copy-up (`-o lower_passthrough`, docs/design.md).
    pub fn with_lower_passthrough(mut self, on: bool) -> UnionFuse {
        self.passthrough.lower_files = on;
        self
    }
}

/// The union's errno as FUSE's; the reply that sends it logs it.
fn err(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.raw_os_error())
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match RawType::from_raw_mode(mode) {
        RawType::Directory => FileType::Directory,
        RawType::Symlink => FileType::Symlink,
        RawType::Fifo => FileType::NamedPipe,
        RawType::Socket => FileType::Socket,
        RawType::CharacterDevice => FileType::CharDevice,
        RawType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The kernel's attribute record for a node; `ino` is the node id it knows.
fn attr(id: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
            SetTime::At(Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            })
        }
    })
}

fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

impl UnionFuse {
    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, FuseErrno> {
        self.union.node(ino.0).map_err(err)
    }

    fn reply_entry(&self, node: &Node, st: &Stat, reply: ReplyEntry) {
        reply.entry(&TTL, &attr(node.id, st), Generation(node.generation()));
    }

    /// Open the existing file (parent, name) for a create without O_EXCL:
    /// (node, stat, handle, whether it stays put).
    fn open_existing(
        &self,
        parent: INodeNo,
        name: &OsStr,
        flags: OFlags,
    ) -> Result<(Arc<Node>, Stat, u64, bool), FuseErrno> {
        let (node, _) = self.union.lookup(parent.0, name).map_err(err)?;
        let opened = match self.union.open(&node, flags) {
            Ok(o) => o,
            Err(e) => {
                self.union.inodes.forget(node.id, 1);
                return Err(err(e));
            }
        };
        let raw = self
            .union
            .getattr_open(&node, Some(opened.fh))
            .map_err(err)?;
        Ok((node, raw, opened.fh, opened.stays_put))
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        obj: NewObject<'_>,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let op = match obj {
            NewObject::Dir { .. } => "mkdir",
            NewObject::Symlink { .. } => "symlink",
            NewObject::File { .. } | NewObject::Node { .. } => "mknod",
        };
        match self.union.create(parent.0, name, obj, caller(req, umask)) {
            Ok(c) => self.reply_entry(&c.node, &c.stat, reply),
            Err(e) => reply.error(errors::noted(op, parent.0, err(e))),
        }
    }
}

impl Filesystem for UnionFuse {
    fn destroy(&mut self) {
        self.requests.write_if_asked();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Passthrough needs CAP_SYS_ADMIN; backing files may be one level deep
        // (layers on an ordinary filesystem), so the mount itself stays stackable.
        // The kernel reads a backing file with the opener's flags and the
        // backing file's mount: without a clone of the upper's mount carrying
        // noatime, noatime reads go through the daemon (files opened O_NOATIME).
        if rustix::process::geteuid().is_root()
            && !self.union.reads_for_atime()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enabled = true;
        }
        // Every listing page a READDIRPLUS (no FUSE_READDIRPLUS_AUTO, which
        // makes the pages after the first plain READDIRs): a page of files
        // the walk will not stat costs nothing extra, as it lists them bare
        // (`stat_walk`), and its directories come known to the kernel.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            // With ACLs the umask is ours to apply: not where a default ACL is
            // inherited (FUSE_DONT_MASK passes it to us instead of applying it).
            | if self.kernel_acls {
                InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK
            } else {
                InitFlags::empty()
            };
        let _ = config.add_capabilities(wanted & config.capabilities());
        self.io_uring.ask(config);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.requests.note(Kind::Lookup);
        match self.union.lookup(parent.0, name) {
            Ok((node, st)) => {
                let st = self.union.present_stat(&node, &node.snapshot(), st);
                self.reply_entry(&node, &st, reply)
            }
            Err(e) => reply.error(errors::noted("lookup", parent.0, err(e))),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.requests.note(Kind::Forget);
        self.union.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.requests.note(Kind::Getattr);
        let result = self.node(ino).and_then(|n| {
            let st = self.union.getattr_open(&n, fh.map(|f| f.0)).map_err(err)?;
            Ok((n, st))
        });
        match result {
            Ok((n, st)) => {
                let mut a = attr(n.id, &st);
                a.ino = INodeNo(if n.id == 1 { st.st_ino } else { n.id });
                reply.attr(&TTL, &a)
            }
            Err(e) => reply.error(errors::noted("getattr", ino.0, e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.requests.note(Kind::Setattr);
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        match self
            .node(ino)
            .and_then(|n| self.union.setattr(&n, &req).map(|st| (n, st)).map_err(err))
        {
            Ok((n, st)) => reply.attr(&TTL, &attr(n.id, &st)),
            Err(e) => reply.error(errors::noted("setattr", ino.0, e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.requests.note(Kind::Readlink);
        match self
            .node(ino)
            .and_then(|n| self.union.readlink(&n).map_err(err))
        {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errors::noted("readlink", ino.0, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.requests.note(Kind::Mknod);
        let obj = NewObject::Node {
            mode,
            rdev: u64::from(rdev),
        };
        self.make(req, parent, name, obj, umask, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.requests.note(Kind::Mkdir);
        self.make(req, parent, name, NewObject::Dir { mode }, umask, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.requests.note(Kind::Unlink);
        match self.union.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("unlink", parent.0, err(e))),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.requests.note(Kind::Rmdir);
        match self.union.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("rmdir", parent.0, err(e))),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.requests.note(Kind::Symlink);
        self.make(
            req,
            parent,
            link_name,
            NewObject::Symlink { target },
            0,
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Rename);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(errors::noted("rename", parent.0, FuseErrno::EINVAL));
        }
        let flags = rustix::fs::RenameFlags::from_bits_truncate(flags.bits());
        match self
            .union
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("rename", parent.0, err(e))),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.requests.note(Kind::Link);
        match self.union.link(ino.0, newparent.0, newname) {
            Ok((node, st)) => self.reply_entry(&node, &st, reply),
            Err(e) => reply.error(errors::noted("link", ino.0, err(e))),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.requests.note(Kind::Open);
        let flags = OFlags::from_bits_retain(flags.0 as u32);
        let opened = match self
            .node(ino)
            .and_then(|n| self.union.open(&n, flags).map_err(err))
        {
            Ok(opened) => opened,
            Err(e) => return reply.error(errors::noted("open", ino.0, e)),
        };
        let fh = opened.fh;
        let mode = self.union.handle_fd(fh).map_err(err).and_then(|fd| {
            let may = self.passthrough.may(&opened, flags);
            self.passthrough
                .mode(ino.0, fh, &fd, may, |fd| reply.open_backing(fd))
        });
        match mode {
            Ok(OpenMode::Passthrough(id)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok(OpenMode::Cached) if opened.keep_cache => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(OpenMode::Cached) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                self.union.release(fh);
                reply.error(errors::noted("open", ino.0, e))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.requests.note(Kind::Read);
        match self.union.read(fh.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errors::noted("read", ino.0, err(e))),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.requests.note(Kind::Write);
        match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errors::noted("write", ino.0, err(e))),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Flush);
        // Nothing to do at close: writes are not cached here and locks are the
        // kernel's (no getlk/setlk). ENOSYS makes the kernel stop sending
        // FLUSH, a round trip every close(2) waits for.
        reply.error(errors::noted("flush", ino.0, FuseErrno::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Release);
        self.passthrough.released(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Fsync);
        match self.union.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("fsync", ino.0, err(e))),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.requests.note(Kind::Opendir);
        // ENOSYS: the kernel sends no more OPENDIR or RELEASEDIR (two round
        // trips a directory saved) and keeps each directory's listing in its
        // cache (as if FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE). That is safe: a
        // merged directory's names change only by operations on that
        // directory through this mount (layers are immutable, the upper is
        // ours), and each of them makes the kernel drop its cached listing.
        // Under strictatime each opendir moves the upper's atime as a listing
        // would, and the listing still comes from the cache.
        if !self.union.opendir_moves_atime() {
            return reply.error(errors::noted("opendir", ino.0, FuseErrno::ENOSYS));
        }
        match self
            .node(ino)
            .and_then(|n| self.union.touch_dir_atime(&n).map_err(err))
        {
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errors::noted("opendir", ino.0, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.reply_listing(ino, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.reply_listing_plus(ino, offset, reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Fsyncdir);
        match self
            .node(ino)
            .and_then(|n| self.union.fsync_dir(&n, datasync).map_err(err))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("fsyncdir", ino.0, e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.requests.note(Kind::Statfs);
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errors::noted("statfs", ino.0, err(e))),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Setxattr);
        let Some(name) = name.to_str() else {
            return reply.error(errors::noted("setxattr", ino.0, FuseErrno::EINVAL));
        };
        match self
            .node(ino)
            .and_then(|n| self.union.setxattr(&n, name, value, flags).map_err(err))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("setxattr", ino.0, e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.requests.note(Kind::Getxattr);
        let Some(name) = name.to_str() else {
            return reply.error(errors::noted("getxattr", ino.0, FuseErrno::NO_XATTR));
        };
        match self
            .node(ino)
            .and_then(|n| self.union.getxattr(&n, name).map_err(err))
        {
            Ok(v) => reply_xattr("getxattr", ino, v, size, reply),
            Err(e) => reply.error(errors::noted("getxattr", ino.0, e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.requests.note(Kind::Listxattr);
        match self
            .node(ino)
            .and_then(|n| self.union.listxattr(&n).map_err(err))
        {
            Ok(v) => reply_xattr("listxattr", ino, v, size, reply),
            Err(e) => reply.error(errors::noted("listxattr", ino.0, e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.requests.note(Kind::Removexattr);
        let Some(name) = name.to_str() else {
            return reply.error(errors::noted("removexattr", ino.0, FuseErrno::NO_XATTR));
        };
        match self
            .node(ino)
            .and_then(|n| self.union.removexattr(&n, name).map_err(err))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("removexattr", ino.0, e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.requests.note(Kind::Access);
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.requests.note(Kind::Create);
        let flags = OFlags::from_bits_retain(flags as u32);
        let obj = NewObject::File { mode, flags };
        let made = self.union.create(parent.0, name, obj, caller(req, umask));
        let (node, stat, fh, stays_put) = match made {
            Ok(c) => {
                let Some(fd) = c.fd else {
                    return reply.error(errors::noted("create", parent.0, FuseErrno::EIO));
                };
                // A new file lives in the upper (or a writable branch): it stays put.
                (c.node.clone(), c.stat, self.union.adopt(&c.node, fd), true)
            }
            // Created meanwhile by someone else: without O_EXCL, open(2) opens it.
            Err(Errno::EXIST) if !flags.contains(OFlags::EXCL) => {
                match self.open_existing(parent, name, flags) {
                    Ok(found) => found,
                    Err(e) => return reply.error(errors::noted("create", parent.0, e)),
                }
            }
            Err(e) => return reply.error(errors::noted("create", parent.0, err(e))),
        };
        let a = attr(node.id, &stat);
        let g = Generation(node.generation());
        let mode = self.union.handle_fd(fh).map_err(err).and_then(|fd| {
            self.passthrough
                .mode(node.id, fh, &fd, stays_put, |fd| reply.open_backing(fd))
        });
        match mode {
            Ok(OpenMode::Passthrough(id)) => {
                reply.created_passthrough(&TTL, &a, g, FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok(OpenMode::Cached) => reply.created(&TTL, &a, g, FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                self.union.release(fh);
                reply.error(errors::noted("create", parent.0, e))
            }
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.requests.note(Kind::Ioctl);
        // Only the inode-flag requests (chattr, lsattr): the kernel sends
        // them with a handle of its own, so the node says which object.
        let Some(op) = FlagsIoctl::from_cmd(cmd) else {
            return reply.error(errors::noted("ioctl", ino.0, FuseErrno::ENOTTY));
        };
        match self
            .node(ino)
            .and_then(|n| self.union.flags_ioctl(&n, op, in_data).map_err(err))
        {
            Ok(out) => reply.ioctl(0, &out[..out.len().min(out_size as usize)]),
            Err(e) => reply.error(errors::noted("ioctl", ino.0, e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.requests.note(Kind::Fallocate);
        match self.union.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errors::noted("fallocate", ino.0, err(e))),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.requests.note(Kind::Lseek);
        match self.union.lseek(fh.0, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(errors::noted("lseek", ino.0, err(e))),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.requests.note(Kind::CopyFileRange);
        let len = len.min(u64::from(u32::MAX) & !0xfff) as usize;
        match self
            .union
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errors::noted("copy_file_range", ino_in.0, err(e))),
        }
    }
}

fn reply_xattr(op: &'static str, ino: INodeNo, v: Vec<u8>, size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(errors::noted(op, ino.0, FuseErrno::ERANGE));
    } else {
        reply.data(&v);
    }
}
