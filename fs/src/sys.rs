//! The few syscalls rustix does not wrap, and path helpers for O_PATH descriptors.
//! All `unsafe` of the crate lives in this module.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

/// A kernel file handle as `name_to_handle_at` returns it (the origin xattr's
/// payload, hence the format crate's type).
pub use ondisk::origin::FileHandle as KernelHandle;

const MAX_HANDLE_SZ: usize = 128;

fn cstring(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::INVAL)
}

/// Give the allocator's free memory back to the system: glibc keeps what was
/// freed in its arenas otherwise. Does nothing with other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `name_to_handle_at(dir, name, 0)` (a trailing symlink is not followed).
pub fn name_to_handle(dir: BorrowedFd<'_>, name: &OsStr) -> Result<KernelHandle, Errno> {
    let name = cstring(name)?;
    let header = std::mem::size_of::<libc::file_handle>();
    // u32-aligned storage for `struct file_handle` followed by its payload.
    let mut storage = vec![0u32; (header + MAX_HANDLE_SZ).div_ceil(4)];
    let fh = storage.as_mut_ptr().cast::<libc::file_handle>();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `storage` is large enough for the header plus MAX_HANDLE_SZ bytes and
    // aligned for `file_handle`; `name` is NUL-terminated; the kernel writes at most
    // `handle_bytes` bytes of payload.
    let rc = unsafe {
        (*fh).handle_bytes = MAX_HANDLE_SZ as u32;
        libc::name_to_handle_at(dir.as_raw_fd(), name.as_ptr(), fh, &mut mount_id, 0)
    };
    if rc != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    // SAFETY: the kernel filled the header; the payload follows it in `storage`.
    let (handle_type, len) = unsafe { ((*fh).handle_type, (*fh).handle_bytes as usize) };
    let len = len.min(MAX_HANDLE_SZ);
    // SAFETY: `header + len` bytes of `storage` are initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(storage.as_ptr().cast::<u8>().add(header), len).to_vec()
    };
    Ok(KernelHandle { handle_type, bytes })
}

/// `open_by_handle_at(mount_fd, handle, O_PATH)`: the object a handle names, on the
/// filesystem of `mount_fd`.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, handle: &KernelHandle) -> Result<OwnedFd, Errno> {
    if handle.bytes.len() > MAX_HANDLE_SZ {
        return Err(Errno::INVAL);
    }
    let header = std::mem::size_of::<libc::file_handle>();
    let mut storage = vec![0u32; (header + MAX_HANDLE_SZ).div_ceil(4)];
    let fh = storage.as_mut_ptr().cast::<libc::file_handle>();
    // SAFETY: the payload fits (checked above) and the storage is aligned.
    let fd = unsafe {
        (*fh).handle_bytes = handle.bytes.len() as u32;
        (*fh).handle_type = handle.handle_type;
        std::ptr::copy_nonoverlapping(
            handle.bytes.as_ptr(),
            storage.as_mut_ptr().cast::<u8>().add(header),
            handle.bytes.len(),
        );
        libc::open_by_handle_at(mount_fd.as_raw_fd(), fh, libc::O_PATH | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

/// The filesystem's UUID (`FS_IOC_GETFSUUID`), or all zeros where it has none.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> [u8; 16] {
    // _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    let Ok(file) = rustix::fs::openat(
        fd,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return [0; 16];
    };
    // SAFETY: FS_IOC_GETFSUUID writes one `struct fsuuid2` into `out`.
    let rc = unsafe { libc::ioctl(file.as_fd().as_raw_fd(), FS_IOC_GETFSUUID as _, &mut out) };
    if rc == 0 && out.len == 16 {
        out.uuid
    } else {
        [0; 16]
    }
}

/// The path through which the object behind an O_PATH descriptor can be named by
/// path-only calls (xattrs of symlinks and special files).
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A formatted integer never holds a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `mount_setattr(2)` of the mount `fd` (from `open_tree`) alone: set the
/// attributes `set` after clearing `clear` (`MOUNT_ATTR_*`).
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, clear: u64) -> Result<(), Errno> {
    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is an empty NUL-terminated string, `attr` lives across
    // the call and its size is passed with it; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL))
    } else {
        Ok(())
    }
}

/// `ioctl(fd, cmd, arg)` for a request whose argument is a buffer the kernel
/// reads and writes, at most `arg.len()` bytes of it (the caller sizes it to
/// the request).
pub fn ioctl_arg(fd: BorrowedFd<'_>, cmd: u32, arg: &mut [u8]) -> Result<(), Errno> {
    // SAFETY: `arg` is valid for reads and writes of its length, which the
    // caller made the size of the request's argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg.as_mut_ptr()) };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL))
    } else {
        Ok(())
    }
}

/// Numbers of the calls libc does not name yet on every architecture (the
/// same on all that share the generic table since Linux 5.1). Elsewhere -1,
/// which the kernel answers ENOSYS, so callers take their fallbacks.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
mod nr {
    pub const FCHMODAT2: libc::c_long = 452;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
}
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
mod nr {
    pub const FCHMODAT2: libc::c_long = -1;
    pub const GETXATTRAT: libc::c_long = -1;
    pub const LISTXATTRAT: libc::c_long = -1;
}

/// Whether the kernel answered ENOSYS to a call of that family once: then
/// the callers' fallbacks are taken at once.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);
static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of linux/xattr.h.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Make a raw syscall unless its family is known `missing`: its value, or
/// the errno it set. ENOSYS is remembered in `missing`.
fn call_unless_missing(
    missing: &AtomicBool,
    call: impl FnOnce() -> libc::c_long,
) -> Result<usize, Errno> {
    if missing.load(Ordering::Relaxed) {
        return Err(Errno::NOSYS);
    }
    let rc = call();
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let errno = Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO);
    if errno == Errno::NOSYS {
        missing.store(true, Ordering::Relaxed);
    }
    Err(errno)
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, key)` (Linux 6.13): an xattr
/// of `name` in `dir` read without opening it, which an O_PATH descriptor of
/// the object itself cannot do. ENOSYS on older kernels.
pub fn get_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &str,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let (name, key) = (cstring(name)?, cstring(OsStr::new(key))?);
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len().min(u32::MAX as usize) as u32,
        flags: 0,
    };
    // SAFETY: both strings are NUL-terminated; `args` points the kernel at
    // `buf`, valid for writes of `args.size` bytes, and is passed with its size.
    call_unless_missing(&NO_XATTRAT, || unsafe {
        libc::syscall(
            nr::GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            key.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
}

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW)` (Linux 6.13): the xattr names
/// of `name` in `dir`, NUL-separated, without opening it. ENOSYS on older kernels.
pub fn list_xattrs_at(dir: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated and `buf` valid for writes of its length.
    call_unless_missing(&NO_XATTRAT, || unsafe {
        libc::syscall(
            nr::LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    })
}

/// `fchmodat2(dir, name, mode, AT_SYMLINK_NOFOLLOW)` (Linux 6.6): a chmod that
/// never follows a symlink (EOPNOTSUPP on one). ENOSYS on older kernels.
pub fn chmod_at_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), Errno> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated; the other arguments are plain integers.
    call_unless_missing(&NO_FCHMODAT2, || unsafe {
        libc::syscall(
            nr::FCHMODAT2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::c_uint,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// While alive, the calling thread makes new objects owned by another user
/// and group (its filesystem ids), with its capabilities kept; dropped, the
/// thread is itself again.
pub struct ActingAs {
    uid: u32,
    gid: u32,
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        set_fs_ids(self.uid, self.gid);
    }
}

thread_local! {
    /// Whether this thread keeps its capabilities across a change of its
    /// filesystem ids (SECBIT_NO_SETUID_FIXUP, set on its first switch).
    static KEEPS_CAPS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Make the calling thread create as `uid`/`gid`, the way kernel overlayfs
/// overrides the creds of its own creates: objects are born with their owner,
/// no chown follows. None where the thread cannot (no CAP_SETPCAP to keep its
/// capabilities, or ids its user namespace does not map).
pub fn act_as(uid: u32, gid: u32) -> Option<ActingAs> {
    use rustix::thread::{
        CapabilitiesSecureBits as Bits, capabilities_secure_bits, set_capabilities_secure_bits,
    };
    let keeps = KEEPS_CAPS.with(|keeps| {
        keeps.get().unwrap_or_else(|| {
            // Without this, a switch from fsuid 0 drops CAP_DAC_OVERRIDE and
            // friends, and the caller's supplementary groups are not ours.
            let kept = capabilities_secure_bits()
                .and_then(|bits| set_capabilities_secure_bits(bits | Bits::NO_SETUID_FIXUP))
                .is_ok();
            keeps.set(Some(kept));
            kept
        })
    });
    if !keeps {
        return None;
    }
    let (old_uid, old_gid) = set_fs_ids(uid, gid);
    let acting = ActingAs {
        uid: old_uid,
        gid: old_gid,
    };
    // The calls do not fail; they leave the ids as they were instead.
    (fs_ids() == (uid, gid)).then_some(acting)
}

/// Set the thread's fsuid and fsgid; their values before.
fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsuid/setfsgid take plain integers and change only the calling
    // thread's credentials (glibc passes them straight to the kernel).
    unsafe { (libc::setfsuid(uid) as u32, libc::setfsgid(gid) as u32) }
}

/// The thread's fsuid and fsgid (an invalid id, -1, changes nothing and
/// returns the current one).
fn fs_ids() -> (u32, u32) {
    // SAFETY: as in `set_fs_ids`; -1 is refused by the kernel, which then
    // only reports the current value.
    unsafe {
        (
            libc::setfsuid(u32::MAX) as u32,
            libc::setfsgid(u32::MAX) as u32,
        )
    }
}
