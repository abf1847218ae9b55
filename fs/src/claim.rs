//! One mount per upper and workdir. Two mounts writing one upper corrupt it
//! (each keeps its own idea of what is copied up, and each empties the
//! workdir's `work/` when it starts), so kernel overlayfs refuses a second
//! mount of either. Here the daemon holds an exclusive `flock` on both
//! directories for its life: a crashed daemon's locks go with it, and
//! nothing stale is left to clean.
//!
//! Who holds them is recorded in an xattr of the workdir (the holder's pid
//! and mountpoint), so that a refusal can name the mount; the workdir's
//! entries stay the kernel's.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

/// The workdir's record of the mount holding it: "PID MOUNTPOINT".
const HOLDER: &str = "user.unionmount.mount";

/// The locks of one mount; released when dropped (or when the daemon dies).
pub(crate) struct Claim {
    _upper: OwnedFd,
    work: OwnedFd,
}

impl Claim {
    /// Lock the upper `upper` (shown as `upper_path`) and the workdir base
    /// `work` (shown as `work_path`), or say which mount holds them.
    pub(crate) fn take(
        upper: BorrowedFd<'_>,
        upper_path: &Path,
        work: BorrowedFd<'_>,
        work_path: &Path,
    ) -> std::io::Result<Claim> {
        let upper_fd = lock(upper, "upper", upper_path, work)?;
        let work_fd = lock(work, "workdir", work_path, work)?;
        Ok(Claim {
            _upper: upper_fd,
            work: work_fd,
        })
    }

    /// Record the mountpoint this mount serves, for a later refusal's message.
    pub(crate) fn record_holder(&self, mountpoint: &Path) -> std::io::Result<()> {
        let mut value = format!("{} ", std::process::id()).into_bytes();
        value.extend_from_slice(mountpoint.as_os_str().as_bytes());
        rustix::fs::fsetxattr(&self.work, HOLDER, &value, XattrFlags::empty())?;
        Ok(())
    }
}

/// An exclusive lock on the directory `dir`, or one line naming its holder.
fn lock(
    dir: BorrowedFd<'_>,
    what: &str,
    shown: &Path,
    work: BorrowedFd<'_>,
) -> std::io::Result<OwnedFd> {
    // flock needs a descriptor opened for reading, not an O_PATH one.
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match try_lock(fd.as_fd(), work) {
        Ok(()) => Ok(fd),
        Err(Errno::WOULDBLOCK) => {
            let holder = holder_of(fd.as_fd(), work);
            Err(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!("{what} {} is in use by {holder}", shown.display()),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// How long a daemon whose mount is gone may take to exit and let go.
const UNMOUNTED_HOLDER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Lock `fd` at once, or, when its holder's mount is gone (an unmount
/// returns before its daemon has read that and exited), once that daemon
/// exits. A holder still mounted here is refused at once.
fn try_lock(fd: BorrowedFd<'_>, work: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::WOULDBLOCK)
                if start.elapsed() < UNMOUNTED_HOLDER_GRACE && holder_unmounted(fd, work) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Is the lock's holder going: gone from `/proc/locks` already, or named by
/// the workdir's record at a mountpoint where its own mount namespace has
/// no FUSE mount any more? (Its mount may live in a namespace of its own,
/// as a container's does.)
fn holder_unmounted(fd: BorrowedFd<'_>, work: BorrowedFd<'_>) -> bool {
    let Some(pid) = lock_holder_pid(fd) else {
        // Not listed: let go between our try and this look (or held from
        // a pid namespace this one cannot see, which the bound ends).
        return true;
    };
    let Some((recorded, mnt)) = recorded_holder(work) else {
        return false;
    };
    let Ok(table) = std::fs::read(format!("/proc/{pid}/mountinfo")) else {
        // Gone meanwhile: its lock is going too.
        return true;
    };
    pid == recorded
        && !crate::mountinfo::parse(&table)
            .iter()
            .any(|m| m.mount_point == mnt && m.fs_type.starts_with("fuse"))
}

/// "the mount at MNT (pid N)" when the workdir's record names the process
/// holding the lock on `fd`, else "another mount (pid N)".
fn holder_of(fd: BorrowedFd<'_>, work: BorrowedFd<'_>) -> String {
    let Some(pid) = lock_holder_pid(fd) else {
        return "another mount".to_string();
    };
    match recorded_holder(work) {
        Some((p, mnt)) if p == pid => format!("the mount at {} (pid {pid})", mnt.display()),
        _ => format!("another mount (pid {pid})"),
    }
}

fn recorded_holder(work: BorrowedFd<'_>) -> Option<(u32, std::path::PathBuf)> {
    let value = crate::layer::get_xattr(work, HOLDER).ok()??;
    let space = value.iter().position(|b| *b == b' ')?;
    let pid = std::str::from_utf8(&value[..space]).ok()?.parse().ok()?;
    Some((pid, OsStr::from_bytes(&value[space + 1..]).into()))
}

/// The pid `/proc/locks` gives for the flock on the file of `fd`.
fn lock_holder_pid(fd: BorrowedFd<'_>) -> Option<u32> {
    let st = rustix::fs::fstat(fd).ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}
