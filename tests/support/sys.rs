//! Thin syscall wrappers used by the tests: every one returns `io::Result` so a
//! test can compare errno values between two mounts.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

fn cname(s: &str) -> CString {
    CString::new(s).expect("name with NUL")
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// The errno of an error, or -1 for errors that carry none.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A result reduced to something two mounts can be compared on.
pub fn outcome<T>(r: io::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| Errno(errno_of(&e)))
}

/// An errno that prints its symbolic name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Debug for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", errno_name(self.0), self.0)
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ERANGE => "ERANGE",
        libc::ENXIO => "ENXIO",
        libc::ETXTBSY => "ETXTBSY",
        _ => "E?",
    }
}

pub fn lstat(p: &Path) -> io::Result<libc::stat> {
    let c = cstr(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub fn statfs(p: &Path) -> io::Result<libc::statfs> {
    let c = cstr(p);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(p);
    check(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })?;
    Ok(())
}

pub fn mkfifo(p: &Path, perm: u32) -> io::Result<()> {
    mknod(p, libc::S_IFIFO | perm, 0)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(p);
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })?;
    Ok(())
}

pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cstr(p);
    check(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Set atime and mtime (seconds, nanoseconds) without following a final symlink.
pub fn lutimes(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cstr(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cstr(p);
    let n = cname(name);
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

pub fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c = cstr(p);
    let n = cname(name);
    loop {
        let size = check_size(unsafe {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0)
        })?;
        let mut buf = vec![0u8; size.max(1)];
        match check_size(unsafe {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn lremovexattr(p: &Path, name: &str) -> io::Result<()> {
    let c = cstr(p);
    let n = cname(name);
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })?;
    Ok(())
}

/// xattr names as `llistxattr` gives them, sorted (their order carries no meaning).
pub fn llistxattr(p: &Path) -> io::Result<Vec<String>> {
    let c = cstr(p);
    loop {
        let size = check_size(unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) })?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match check_size(unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), size) }) {
            Ok(len) => {
                buf.truncate(len);
                let mut names: Vec<String> = buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// All xattrs of a path with their values, sorted by name.
pub fn xattrs(p: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = llistxattr(p)?;
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let v = lgetxattr(p, &n)?;
        out.push((n, v));
    }
    Ok(out)
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let a = cstr(from);
    let b = cstr(to);
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags as libc::c_uint,
        )
    })?;
    Ok(())
}

pub fn umount2(p: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(p);
    check(unsafe { libc::umount2(c.as_ptr(), flags) })?;
    Ok(())
}

/// Kernel overlayfs with mount(8)'s options: the VFS ones (nosuid, noatime,
/// …) become mount flags as mount(8) makes them, the rest is overlayfs's data.
pub fn mount_overlay(mnt: &Path, options: &str) -> io::Result<()> {
    let c = cstr(mnt);
    let src = cname("overlay");
    let (flags, data) = vfs_flags(options);
    let d = cname(&data);
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            c.as_ptr(),
            src.as_ptr(),
            flags,
            d.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// mount(8)'s split of an option list into mount flags and the data left
/// for the filesystem.
pub fn vfs_flags(options: &str) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options.split(',') {
        let (set, clear) = match o {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            "nosymfollow" => (libc::MS_NOSYMFOLLOW, 0),
            "symfollow" => (0, libc::MS_NOSYMFOLLOW),
            "" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// Mount a tmpfs at `mnt` with `data` (e.g. "size=8m,mode=0755").
pub fn mount_tmpfs(mnt: &Path, data: &str) -> io::Result<()> {
    let c = cstr(mnt);
    let src = cname("tmpfs");
    let d = cname(data);
    check(unsafe { libc::mount(src.as_ptr(), c.as_ptr(), src.as_ptr(), 0, d.as_ptr().cast()) })?;
    Ok(())
}

pub fn lseek(fd: libc::c_int, off: i64, whence: libc::c_int) -> io::Result<i64> {
    let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

pub fn fallocate(fd: libc::c_int, mode: libc::c_int, off: i64, len: i64) -> io::Result<()> {
    check(unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) })?;
    Ok(())
}

pub fn flock(fd: libc::c_int, op: libc::c_int) -> io::Result<()> {
    check(unsafe { libc::flock(fd, op) })?;
    Ok(())
}

pub fn geteuid() -> u32 {
    unsafe { libc::geteuid() }
}

/// One entry as `readdir(3)` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEnt {
    pub name: OsString,
    pub ino: u64,
    pub d_type: u8,
}

/// An open directory stream (`opendir`/`readdir`/`telldir`/`seekdir`).
pub struct DirStream(*mut libc::DIR);

impl DirStream {
    pub fn open(p: &Path) -> io::Result<DirStream> {
        let c = cstr(p);
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(DirStream(d))
        }
    }

    /// The next entry, `None` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<DirEnt>> {
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir(self.0) };
        if e.is_null() {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(0) {
                Ok(None)
            } else {
                Err(err)
            };
        }
        let e = unsafe { &*e };
        let name = unsafe { CStr::from_ptr(e.d_name.as_ptr()) };
        Ok(Some(DirEnt {
            name: OsStr::from_bytes(name.to_bytes()).to_os_string(),
            ino: e.d_ino,
            d_type: e.d_type,
        }))
    }

    pub fn tell(&mut self) -> i64 {
        unsafe { libc::telldir(self.0) as i64 }
    }

    pub fn seek(&mut self, pos: i64) {
        unsafe { libc::seekdir(self.0, pos as libc::c_long) }
    }

    pub fn rewind(&mut self) {
        unsafe { libc::rewinddir(self.0) }
    }

    /// All remaining entries, "." and ".." excluded.
    pub fn rest(&mut self) -> io::Result<Vec<DirEnt>> {
        let mut out = Vec::new();
        while let Some(e) = self.next_entry()? {
            if e.name != "." && e.name != ".." {
                out.push(e);
            }
        }
        Ok(out)
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

/// Every entry of a directory via readdir(3), "." and ".." excluded.
pub fn read_dir_raw(p: &Path) -> io::Result<Vec<DirEnt>> {
    DirStream::open(p)?.rest()
}

/// Sorted entry names of a directory.
pub fn names(p: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = read_dir_raw(p)?
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

pub fn d_type_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}

pub fn path_from_bytes(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(b))
}

/// Everything but directories anywhere under `dir` (nothing if it is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Run `f` in a forked child; its return value (0..=255) is the exit code.
/// `f` may only use async-signal-safe calls (open, fcntl, close).
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died: {status}");
    libc::WEXITSTATUS(status)
}
