//! One branch of the union: a directory held open as an O_PATH descriptor.
//!
//! Every access to a branch goes through `*at` calls relative to its root, and no
//! symlink inside a layer is ever followed by the daemon itself (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::Result;
use crate::sync;
use crate::sys;

pub struct Layer {
    /// The directory as given, for messages only.
    pub path: PathBuf,
    pub root: OwnedFd,
    /// The root opened for reading: `open_by_handle_at` refuses O_PATH descriptors.
    pub handle_fd: OwnedFd,
    pub writable: bool,
    pub dev: u64,
    /// Added to every `st_ino` from this layer so inode numbers stay unique when
    /// layers live on different filesystems (zero for the upper's filesystem).
    pub ino_prefix: u64,
    pub uuid: [u8; 16],
    /// Its filesystem lists each entry with the inode number stat gives it.
    pub dino_is_ino: bool,
    /// Directories opened before, by path, so resolving a name costs no
    /// path walk from the root. A read-only layer never changes, so a path
    /// names the same directory for the mount's life; in a writable one only
    /// a rename or a rmdir makes it name another, and those drop them all
    /// (`dirs_moved`).
    dirs: Mutex<DirFds>,
    /// The root in a private clone of the layer's mount that carries the
    /// union mount's atime options, to open files to read and write through:
    /// their atime then moves as it would under kernel overlayfs.
    io_root: Option<OwnedFd>,
}

/// How reading through the mount moves atimes: its atime options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Atime {
    /// `relatime`, the default: only while atime is not newer than mtime or
    /// ctime, or is a day old.
    #[default]
    Relative,
    /// `strictatime`: on every access.
    Strict,
    /// `noatime`: never.
    Never,
}

/// `MOUNT_ATTR_*` of linux/mount.h.
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// A layer's open directories, and how many times they were dropped.
struct DirFds {
    fds: LruCache<PathBuf, Arc<OwnedFd>>,
    moves: u64,
}

/// Directory descriptors a layer keeps: a share of the descriptor limit, so
/// open files never run short for them.
fn dirs_kept() -> std::num::NonZeroUsize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024);
    let n = (limit / 64).clamp(4, 256) as usize;
    std::num::NonZeroUsize::new(n).expect("at least 4")
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `rel` as a path argument: the layer root is ".".
pub fn rel_arg(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Filesystems whose directory entries carry the inode number stat gives
/// (for non-directories: a mount point's lists the covered directory's).
/// Others, FUSE and overlayfs among them, may list another number.
fn lists_stat_inos(root: BorrowedFd<'_>) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    const F2FS: i64 = 0xF2F5_2010;
    rustix::fs::fstatfs(root).is_ok_and(|s| [EXT4, XFS, BTRFS, TMPFS, F2FS].contains(&s.f_type))
}

impl Layer {
    pub fn open(path: &Path, writable: bool) -> std::io::Result<Layer> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&root)?;
        let handle_fd = rustix::fs::openat(
            &root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let uuid = sys::fs_uuid(root.as_fd());
        let dino_is_ino = lists_stat_inos(root.as_fd());
        Ok(Layer {
            path: path.to_path_buf(),
            root,
            handle_fd,
            writable,
            dev: st.st_dev,
            ino_prefix: 0,
            uuid,
            dino_is_ino,
            dirs: Mutex::new(DirFds {
                fds: LruCache::new(dirs_kept()),
                moves: 0,
            }),
            io_root: None,
        })
    }

    /// Open files through a private clone of the layer's mount with these
    /// atime options. Cloning a mount takes CAP_SYS_ADMIN: false when it
    /// could not be made (the files are then opened through the layer's own
    /// mount).
    pub fn atime_through_clone(&mut self, atime: Atime, nodiratime: bool) -> bool {
        use rustix::mount::{OpenTreeFlags, open_tree};
        let set = match atime {
            Atime::Relative => 0,
            Atime::Strict => MOUNT_ATTR_STRICTATIME,
            Atime::Never => MOUNT_ATTR_NOATIME,
        } | if nodiratime { MOUNT_ATTR_NODIRATIME } else { 0 };
        let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        let made =
            open_tree(&self.root, "", flags | OpenTreeFlags::AT_EMPTY_PATH).and_then(|tree| {
                sys::mount_setattr(tree.as_fd(), set, MOUNT_ATTR_ATIME_MASK)?;
                Ok(tree)
            });
        match made {
            Ok(tree) => {
                self.io_root = Some(tree);
                true
            }
            Err(e) => {
                log::debug!(
                    "{}: no mount clone for atime options: {e}",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Does this layer's descriptor open files under the mount's atime options?
    pub fn atime_by_mount(&self) -> bool {
        self.io_root.is_some()
    }

    /// `open_beneath`, through the clone with the mount's atime options when
    /// there is one: for descriptors that only read, write and stat (never
    /// used as the directory of a rename or link, which cannot cross mounts).
    pub fn open_io(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        let Some(root) = &self.io_root else {
            return self.open_beneath(rel, flags);
        };
        rustix::fs::openat2(
            root,
            rel_arg(rel),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// Open `rel` (relative to the layer root) with `flags`, never leaving the layer
    /// and never following a symlink. A trailing symlink is opened itself when
    /// `flags` has `O_PATH | O_NOFOLLOW`.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        rustix::fs::openat2(
            &self.root,
            rel_arg(rel),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// An O_PATH descriptor of the directory `rel`, usable as a dirfd.
    pub fn dir(&self, rel: &Path) -> Result<Arc<OwnedFd>> {
        let moves = {
            let mut dirs = sync::lock(&self.dirs);
            if let Some(fd) = dirs.fds.get(rel) {
                return Ok(fd.clone());
            }
            dirs.moves
        };
        let fd = Arc::new(self.open_beneath(rel, OFlags::PATH | OFlags::DIRECTORY)?);
        let mut dirs = sync::lock(&self.dirs);
        // Opened before a move finished: the path may name another now.
        if dirs.moves == moves {
            dirs.fds.put(rel.to_path_buf(), fd.clone());
        }
        Ok(fd)
    }

    /// Directories of this writable layer were renamed or removed: paths
    /// may name other directories now.
    pub fn dirs_moved(&self) {
        if self.writable {
            let mut dirs = sync::lock(&self.dirs);
            dirs.fds.clear();
            dirs.moves += 1;
        }
    }

    /// Xattr `key` of `rel` (None if absent), read by name from its
    /// directory's kept descriptor.
    pub fn get_xattr(&self, rel: &Path, key: &str) -> Result<Option<Vec<u8>>> {
        let (dir, name) = self.dir_and_name(rel)?;
        get_xattr_at(dir.as_fd(), name, key)
    }

    /// The xattr names of `rel`.
    pub fn list_xattrs(&self, rel: &Path) -> Result<Vec<Vec<u8>>> {
        let (dir, name) = self.dir_and_name(rel)?;
        list_xattrs_at(dir.as_fd(), name)
    }

    /// The kept descriptor of the directory holding `rel` and its name there
    /// (the root is "." in itself).
    fn dir_and_name<'a>(&self, rel: &'a Path) -> Result<(Arc<OwnedFd>, &'a OsStr)> {
        match split(rel) {
            (parent, Some(name)) => Ok((self.dir(parent)?, name)),
            (_, None) => Ok((self.dir(Path::new(""))?, OsStr::new("."))),
        }
    }

    /// lstat of `rel`.
    pub fn stat(&self, rel: &Path) -> Result<Stat> {
        let (parent, name) = split(rel);
        match name {
            None => rustix::fs::fstat(&self.root),
            Some(name) => {
                let dir = self.dir(parent)?;
                stat_at(dir.as_fd(), name)
            }
        }
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// lstat of `name` in `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Split a layer-relative path into its parent and last component (None for the root).
pub fn split(rel: &Path) -> (&Path, Option<&OsStr>) {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => (parent, Some(name)),
        _ => (Path::new(""), None),
    }
}

/// Open `name` in `dir` as O_PATH without following it.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// chmod of `name` in `dir` that never follows a symlink in the layer
/// (EOPNOTSUPP on one): by name where the kernel can, else through an O_PATH
/// descriptor and /proc.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<()> {
    match sys::chmod_at_nofollow(dir, name, mode) {
        Err(Errno::NOSYS) => {
            let fd = open_path_at(dir, name)?;
            rustix::fs::chmod(
                sys::proc_fd_path(fd.as_fd()).as_c_str(),
                Mode::from_raw_mode(mode),
            )
        }
        done => done,
    }
}

/// Does the object behind `fd` carry xattr `name`? Reads its value (None if absent).
pub fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> Result<Option<Vec<u8>>> {
    // An ordinary descriptor answers directly; an O_PATH one (EBADF) through /proc.
    let mut via_proc = None;
    read_xattr(|buf| match &via_proc {
        None => match rustix::fs::fgetxattr(fd, name, &mut *buf) {
            Err(Errno::BADF) => {
                let path = via_proc.insert(sys::proc_fd_path(fd));
                rustix::fs::getxattr(path.as_c_str(), name, buf)
            }
            got => got,
        },
        Some(path) => rustix::fs::getxattr(path.as_c_str(), name, buf),
    })
}

/// Xattr `key` of `name` in `dir` (not following a symlink), None if absent:
/// read by name where the kernel can, which spares an open and a walk of /proc.
pub fn get_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, key: &str) -> Result<Option<Vec<u8>>> {
    match read_xattr(|buf| sys::get_xattr_at(dir, name, key, buf)) {
        Err(Errno::NOSYS) => get_xattr(open_path_at(dir, name)?.as_fd(), key),
        got => got,
    }
}

/// Run an xattr read with a buffer grown until the value fits: its value,
/// or None where the object has none or its filesystem holds no xattrs.
fn read_xattr(mut read: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match read(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < 65536 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Set xattr `name` on the object behind `fd` (O_PATH descriptors work too).
pub fn set_xattr(
    fd: BorrowedFd<'_>,
    name: &str,
    value: &[u8],
    flags: rustix::fs::XattrFlags,
) -> Result<()> {
    rustix::fs::setxattr(sys::proc_fd_path(fd).as_c_str(), name, value, flags)
}

pub fn remove_xattr(fd: BorrowedFd<'_>, name: &str) -> Result<()> {
    rustix::fs::removexattr(sys::proc_fd_path(fd).as_c_str(), name)
}

/// The xattr names of the object behind `fd`.
pub fn list_xattrs(fd: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    let mut via_proc = None;
    list_names(|buf| match &via_proc {
        None => match rustix::fs::flistxattr(fd, &mut *buf) {
            Err(Errno::BADF) => {
                let path = via_proc.insert(sys::proc_fd_path(fd));
                rustix::fs::listxattr(path.as_c_str(), buf)
            }
            got => got,
        },
        Some(path) => rustix::fs::listxattr(path.as_c_str(), buf),
    })
}

/// The xattr names of `name` in `dir` (not following a symlink).
pub fn list_xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<Vec<u8>>> {
    match list_names(|buf| sys::list_xattrs_at(dir, name, buf)) {
        Err(Errno::NOSYS) => list_xattrs(open_path_at(dir, name)?.as_fd()),
        got => got,
    }
}

/// Run an xattr listing with a buffer grown until the names fit.
fn list_names(mut list: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match list(&mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}
