//! getattr, setattr, readlink, xattrs, statfs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ondisk::override_stat::{self, OverrideStat};
use ondisk::xattr;
use rustix::fs::{AtFlags, Mode, OFlags, Stat, StatVfs, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::Branch;
use crate::inode::{Node, NodeState, XattrNames};
use crate::layer::{self, Layer, split, stat_at};
use crate::lookup;
use crate::sync;
use crate::{Result, Union, sys};

/// No xattr names: most objects of a layer, all sharing one allocation.
static NO_XATTRS: std::sync::LazyLock<XattrNames> =
    std::sync::LazyLock::new(|| Arc::new(Vec::new()));

fn shared_if_empty(names: Vec<u8>) -> XattrNames {
    if names.is_empty() {
        NO_XATTRS.clone()
    } else {
        Arc::new(names)
    }
}

/// A time to set: a value or "now".
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// What a setattr asks to change.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// An open handle of the file, when the kernel names one.
    pub fh: Option<u64>,
}

impl SetAttr {
    /// Nothing to change: a chown(-1, -1), which the kernel still counts as a
    /// change of the inode (its ctime), as the real filesystem under kernel
    /// overlayfs does.
    fn changes_nothing(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// Move an object's ctime and nothing else: a chmod to the mode it has (a
/// chown(-1, -1) would also clear set-id bits); a symlink has none to lose.
fn touch_ctime(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let st = stat_at(dir, name)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
        return rustix::fs::chownat(dir, name, None, None, AtFlags::SYMLINK_NOFOLLOW);
    }
    let fd = layer::open_path_at(dir, name)?;
    let path = sys::proc_fd_path(fd.as_fd());
    rustix::fs::chmod(path.as_c_str(), Mode::from_raw_mode(st.st_mode & 0o7777))
}

const UTIME_OMIT: i64 = (1 << 30) - 2;
const UTIME_NOW: i64 = (1 << 30) - 1;

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT as _,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW as _,
        },
        Some(SetTime::At(ts)) => ts,
    }
}

impl Union {
    /// The branch and path of the object a node shows.
    pub(crate) fn top_entry(&self, node: &Node, st: &NodeState) -> Result<(Branch, PathBuf)> {
        // Every name of a copied-up hard-link group shares the index entry.
        if let Some(key) = &st.index {
            return Ok((Branch::Index, PathBuf::from(key)));
        }
        if st.upper {
            return Ok((Branch::TOP, self.path_of(node)?));
        }
        self.inodes
            .top_lower(st)
            .map(|(n, p)| (Branch::Layer(n), p))
            .ok_or(Errno::STALE)
    }

    /// The branch and path of a node's data: the top entry's, but the lower's
    /// for an upper holding metadata only (EIO when no lower has it).
    pub(crate) fn data_entry(&self, node: &Node, st: &NodeState) -> Result<(Branch, PathBuf)> {
        if st.metacopy && st.index.is_none() {
            return self
                .inodes
                .top_lower(st)
                .map(|(n, p)| (Branch::Layer(n), p))
                .ok_or(Errno::IO);
        }
        self.top_entry(node, st)
    }

    /// An O_PATH descriptor of the object a node shows (symlinks not followed).
    pub(crate) fn open_top(&self, node: &Node) -> Result<OwnedFd> {
        let _ns = sync::read(&self.namespace);
        let st = node.snapshot();
        let (li, path) = self.top_entry(node, &st)?;
        self.branch(li)?
            .open_beneath(&path, OFlags::PATH | OFlags::NOFOLLOW)
    }

    /// stat as the mount shows it: merged identity, mapped owners.
    pub fn getattr(&self, node: &Node) -> Result<Stat> {
        let st = node.snapshot();
        // A removed directory still open somewhere: what it last showed (a
        // lower one's directory is still there below its whiteout).
        if st.is_dir
            && st.names.is_empty()
            && node.id != crate::ROOT_ID
            && let Some(removed) = self.inodes.removed_dir(node.id)
        {
            return Ok(removed);
        }
        let raw = self.raw_stat(node, &st)?;
        Ok(self.present_stat(node, &st, raw))
    }

    /// The stat of the object a node shows, as its branch has it now (with
    /// the link count of a hard-link group); `present_stat` makes it merged.
    pub(crate) fn raw_stat(&self, node: &Node, st: &NodeState) -> Result<Stat> {
        let _ns = sync::read(&self.namespace);
        let (li, path) = self.top_entry(node, st)?;
        let layer = self.branch(li)?;
        let mut raw = layer.stat(&path)?;
        if (raw.st_nlink > 1 || st.index.is_some()) && layer.writable && !st.is_dir {
            let fd = layer.open_beneath(&path, OFlags::PATH | OFlags::NOFOLLOW)?;
            raw.st_nlink = self.shown_nlink(fd.as_fd(), raw.st_nlink);
        }
        if st.metacopy {
            // The blocks its data takes, as kernel overlayfs shows them (du).
            if let Some((li, lpath)) = self.inodes.top_lower(st) {
                raw.st_blocks = self.branch(Branch::Layer(li))?.stat(&lpath)?.st_blocks;
            }
        }
        Ok(raw)
    }

    /// Turn a branch's stat into the merged one.
    pub fn present_stat(&self, node: &Node, st: &NodeState, mut raw: Stat) -> Stat {
        if self.rootless {
            self.apply_override(node, st, &mut raw);
        }
        raw.st_ino = node.st_ino;
        raw.st_uid = self.cfg.uids.to_inside(raw.st_uid);
        raw.st_gid = self.cfg.gids.to_inside(raw.st_gid);
        let layer_dirs = usize::from(st.upper) + st.lowers.len();
        if st.is_dir && layer_dirs > 1 {
            // Kernel overlayfs reports 1 for merged directories: their link count
            // cannot be known without reading every layer.
            raw.st_nlink = 1;
        }
        raw
    }

    /// chown; where the daemon may not (rootless), record the owner in
    /// `override_stat` instead, as containers-storage does.
    pub(crate) fn chown_or_record(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        uid: Option<rustix::fs::Uid>,
        gid: Option<rustix::fs::Gid>,
    ) -> Result<()> {
        match rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::PERM) | Err(Errno::INVAL) if self.rootless => {}
            other => return other,
        }
        let fd = layer::open_path_at(dir, name)?;
        let mut o = self.current_override(dir, name, fd.as_fd())?;
        o.uid = uid.map_or(o.uid, |u| u.as_raw());
        o.gid = gid.map_or(o.gid, |g| g.as_raw());
        layer::set_xattr(
            fd.as_fd(),
            override_stat::XATTR,
            o.format().as_bytes(),
            XattrFlags::empty(),
        )
    }

    /// chmod; with an owner recorded in `override_stat`, the mode goes there too
    /// and the file itself stays usable by the daemon that owns it.
    pub(crate) fn chmod_or_record(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> Result<()> {
        if !self.rootless {
            return layer::chmod_at(dir, name, mode & 0o7777);
        }
        let fd = layer::open_path_at(dir, name)?;
        let path = sys::proc_fd_path(fd.as_fd());
        let Some(mut o) = crate::names::override_of(fd.as_fd())? else {
            return rustix::fs::chmod(path.as_c_str(), Mode::from_raw_mode(mode & 0o7777));
        };
        o.mode = mode & 0o7777;
        let st = stat_at(dir, name)?;
        let keep = if lookup::is_dir(&st) { 0o700 } else { 0o600 };
        rustix::fs::chmod(path.as_c_str(), Mode::from_raw_mode((mode & 0o777) | keep))?;
        layer::set_xattr(
            fd.as_fd(),
            override_stat::XATTR,
            o.format().as_bytes(),
            XattrFlags::empty(),
        )
    }

    /// The override recorded on an object, or one describing it as it is.
    fn current_override(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<OverrideStat> {
        if let Some(o) = crate::names::override_of(fd)? {
            return Ok(o);
        }
        let st = stat_at(dir, name)?;
        Ok(OverrideStat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: None,
        })
    }

    /// Without privilege, owners, modes and devices the branch could not take
    /// are recorded in `user.containers.override_stat`; show those.
    fn apply_override(&self, node: &Node, st: &NodeState, raw: &mut Stat) {
        let Ok((li, path)) = self.top_entry(node, st) else {
            return;
        };
        let Ok(layer) = self.branch(li) else { return };
        let Ok(fd) = layer.open_beneath(&path, OFlags::PATH | OFlags::NOFOLLOW) else {
            return;
        };
        if let Ok(Some(o)) = crate::names::override_of(fd.as_fd()) {
            o.apply(raw);
        }
    }

    pub fn setattr(&self, node: &Node, req: &SetAttr) -> Result<Stat> {
        if node.state().names.is_empty()
            && let Some(st) = self.set_removed_dir_attrs(node, req)
        {
            return Ok(st);
        }
        if req.size.is_some() {
            self.prepare_write(node)?;
        } else {
            self.prepare_meta_write(node)?;
        }
        {
            let _ns = sync::read(&self.namespace);
            self.change_attrs(node, req)?;
        }
        self.getattr(node)
    }

    /// A setattr of a removed directory: nothing holds it any more but what
    /// it shows, so that is what changes (the kernel's inode changes alone
    /// too). None for a node that is no removed directory.
    fn set_removed_dir_attrs(&self, node: &Node, req: &SetAttr) -> Option<Stat> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = |t: Option<SetTime>, sec: &mut i64, nsec: &mut u64| match t {
            Some(SetTime::Now) => (*sec, *nsec) = (now.as_secs() as i64, now.subsec_nanos().into()),
            Some(SetTime::At(at)) => (*sec, *nsec) = (at.tv_sec, at.tv_nsec as u64),
            None => {}
        };
        self.inodes.update_removed_dir(node.id, |st| {
            if let Some(mode) = req.mode {
                st.st_mode = (st.st_mode & !0o7777) | (mode & 0o7777);
            }
            if let Some(uid) = req.uid {
                st.st_uid = uid;
            }
            if let Some(gid) = req.gid {
                st.st_gid = gid;
            }
            stamp(req.atime, &mut st.st_atime, &mut st.st_atime_nsec);
            stamp(req.mtime, &mut st.st_mtime, &mut st.st_mtime_nsec);
            (st.st_ctime, st.st_ctime_nsec) = (now.as_secs() as _, now.subsec_nanos() as _);
        })
    }

    /// The changes of a setattr, on a prepared node, namespace lock held.
    fn change_attrs(&self, node: &Node, req: &SetAttr) -> Result<()> {
        let (li, path) = self.write_location(node)?;
        let layer = self.branch(li)?;
        if let Some(size) = req.size {
            match req.fh.and_then(|fh| self.handles.fd(fh)) {
                Some(fd) => rustix::fs::ftruncate(&*fd, size)?,
                None => {
                    let fd = layer.open_beneath(&path, OFlags::WRONLY | OFlags::NOFOLLOW)?;
                    rustix::fs::ftruncate(&fd, size)?;
                }
            }
        }
        let (parent, name) = split(&path);
        let dir = layer.dir(parent)?;
        let name = name.unwrap_or(OsStr::new("."));
        if req.changes_nothing() {
            touch_ctime(dir.as_fd(), name)?;
        }
        if req.uid.is_some() || req.gid.is_some() {
            let uid = req
                .uid
                .map(|u| rustix::fs::Uid::from_raw(self.cfg.uids.to_outside(u)));
            let gid = req
                .gid
                .map(|g| rustix::fs::Gid::from_raw(self.cfg.gids.to_outside(g)));
            self.chown_or_record(dir.as_fd(), name, uid, gid)?;
        }
        if let Some(mode) = req.mode {
            self.chmod_or_record(dir.as_fd(), name, mode)?;
        }
        if req.atime.is_some() || req.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(req.atime),
                last_modification: timespec(req.mtime),
            };
            rustix::fs::utimensat(dir.as_fd(), name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    pub fn readlink(&self, node: &Node) -> Result<Vec<u8>> {
        let fd = self.open_top(node)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(target.into_bytes())
    }

    pub fn getxattr(&self, node: &Node, name: &str) -> Result<Vec<u8>> {
        // `ls -l` asks every file for security.selinux and ACLs it rarely has.
        // (Only names filesystems list: some virtual xattrs go unlisted.)
        let listed_kind = name.starts_with("security.") || name.starts_with("system.posix_acl_");
        if listed_kind
            && let Some(names) = self.read_only_xattr_names(node)?
            && !names.split(|b| *b == 0).any(|n| n == name.as_bytes())
        {
            return Err(Errno::NODATA);
        }
        let stored = xattr::escape(self.cfg.xattr_ns, name);
        let _ns = sync::read(&self.namespace);
        let (li, path) = self.top_entry(node, &node.snapshot())?;
        self.branch(li)?
            .get_xattr(&path, &stored)?
            .ok_or(Errno::NODATA)
    }

    /// The xattr names a user sees, NUL-separated as listxattr returns them.
    pub fn listxattr(&self, node: &Node) -> Result<Vec<u8>> {
        if let Some(names) = self.read_only_xattr_names(node)? {
            return Ok(names.to_vec());
        }
        let _ns = sync::read(&self.namespace);
        let (li, path) = self.top_entry(node, &node.snapshot())?;
        self.shown_xattr_names(self.branch(li)?, &path)
    }

    fn shown_xattr_names(&self, layer: &Layer, path: &Path) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for stored in layer.list_xattrs(path)? {
            let Ok(stored) = std::str::from_utf8(&stored) else {
                continue;
            };
            if let Some(shown) = xattr::unescape(self.cfg.xattr_ns, stored) {
                out.extend_from_slice(shown.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// For an object in a read-only layer, the xattr names it shows, read
    /// once and kept with its state; None for objects that may change.
    fn read_only_xattr_names(&self, node: &Node) -> Result<Option<XattrNames>> {
        let st = node.snapshot();
        if st.upper || st.index.is_some() {
            return Ok(None);
        }
        if let Some(names) = &st.xattr_names {
            return Ok(Some(names.clone()));
        }
        let Some(place) = self.inodes.top_lower(&st) else {
            return Ok(None);
        };
        let layer = self.branch(Branch::Layer(place.0))?;
        if layer.writable {
            return Ok(None);
        }
        let names = shared_if_empty(self.shown_xattr_names(layer, &place.1)?);
        // Kept only if the node still shows that object.
        let mut now = node.state();
        if !now.upper && now.index.is_none() && now.lowers.first() == st.lowers.first() {
            now.xattr_names = Some(names.clone());
        }
        Ok(Some(names))
    }

    pub fn setxattr(&self, node: &Node, name: &str, value: &[u8], flags: i32) -> Result<()> {
        let fd = self.open_for_change(node)?;
        let stored = xattr::escape(self.cfg.xattr_ns, name);
        let flags = XattrFlags::from_bits_truncate(flags as _);
        layer::set_xattr(fd.as_fd(), &stored, value, flags)
    }

    pub fn removexattr(&self, node: &Node, name: &str) -> Result<()> {
        // Removing what is not there needs no copy-up.
        self.getxattr(node, name)?;
        let fd = self.open_for_change(node)?;
        layer::remove_xattr(fd.as_fd(), &xattr::escape(self.cfg.xattr_ns, name))
    }

    /// An O_PATH descriptor of the writable copy of `node` (copied up first,
    /// its data too unless the mount copies up metadata only).
    fn open_for_change(&self, node: &Node) -> Result<OwnedFd> {
        self.prepare_meta_write(node)?;
        let _ns = sync::read(&self.namespace);
        let (li, path) = self.write_location(node)?;
        self.branch(li)?
            .open_beneath(&path, OFlags::PATH | OFlags::NOFOLLOW)
    }

    /// statfs of the upper (of the top branch for a read-only union).
    pub fn statfs(&self) -> Result<StatVfs> {
        rustix::fs::fstatvfs(&self.upper().root)
    }
}
