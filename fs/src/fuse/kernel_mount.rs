//! The kernel mount of a FUSE session, made and unmade here rather than by
//! fuser. fuser 0.18 unmounts by path when its session ends, and takes the
//! device's POLLERR (a dead connection) for "still mounted" (fixed upstream
//! after 0.18, cberner/fuser#703): a daemon ending after an outside unmount
//! unmounted whatever had been mounted at its path since, so a fresh mount
//! vanished. Here a daemon only ever unmounts the mount that is its own,
//! told apart from others at the same path by its device number.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fuser::MountOption;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::mountinfo::{self, MountEntry};

/// Where fusermount finds the socket to send the device over.
const FUSERMOUNT_COMM_ENV: &str = "_FUSE_COMMFD";

/// A FUSE mount this process made.
#[derive(Debug)]
pub struct KernelMount {
    mountpoint: PathBuf,
    /// `major:minor` of the connection, as mountinfo shows it (None without /proc).
    dev: Option<String>,
    /// Made by fusermount (no privilege): unmade by it too.
    by_fusermount: bool,
    /// A copy of the device descriptor: it reports POLLERR once the
    /// connection is gone, whoever ended it.
    device: OwnedFd,
}

/// Mount a FUSE filesystem at `mountpoint` with fuser's option list; returns
/// the device descriptor the session reads, and the mount.
pub fn mount(
    mountpoint: &Path,
    options: &[MountOption],
    allow_other: bool,
) -> io::Result<(OwnedFd, KernelMount)> {
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    let (fd, by_fusermount) = match mount_directly(&mountpoint, options, allow_other) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => (
            mount_with_fusermount(&mountpoint, options, allow_other)?,
            true,
        ),
        other => (other?, false),
    };
    let mount = KernelMount {
        dev: newest_fuse_mount_at(&mountpoint).map(|m| m.dev),
        device: fd.try_clone()?,
        mountpoint,
        by_fusermount,
    };
    Ok((fd, mount))
}

impl KernelMount {
    /// Is the connection still there (not ended by an unmount or an abort)?
    pub fn connected(&self) -> bool {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            self.device.as_fd(),
            rustix::event::PollFlags::empty(),
        )];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => true,
            Ok(_) => !fds[0].revents().contains(rustix::event::PollFlags::ERR),
            Err(_) => true,
        }
    }

    /// Is the mount on top at our path ours? Without /proc it is taken to be.
    fn ours_on_top(&self) -> bool {
        match &self.dev {
            Some(dev) => newest_fuse_mount_at(&self.mountpoint).is_some_and(|m| &m.dev == dev),
            None => true,
        }
    }

    /// Unmount our mount (detached if busy), never another one at the same
    /// path. Ok(false) when ours is not there to unmount: unmounted here
    /// while a copy lives on in another mount namespace, or covered by
    /// another mount; the caller then ends the session by other means.
    pub fn unmount(&self) -> io::Result<bool> {
        if !self.ours_on_top() {
            return Ok(false);
        }
        if self.by_fusermount {
            return fusermount_unmount(&self.mountpoint).map(|()| true);
        }
        match rustix::mount::unmount(&self.mountpoint, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH)
            }
            other => other,
        }
        .map(|()| true)
        .map_err(io::Error::from)
    }

    /// End the connection at once, as `/sys/fs/fuse/connections/N/abort`
    /// does: every waiting request fails with ENOTCONN. For a connection
    /// that cannot be served (its io_uring queues failed to start).
    pub fn abort_connection(&self) {
        let minor = self
            .dev
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .map(|d| d.1);
        let Some(minor) = minor else {
            log::warn!("aborting the connection: its number is not known");
            return;
        };
        let path = format!("/sys/fs/fuse/connections/{minor}/abort");
        if let Err(e) = std::fs::write(&path, "1") {
            log::warn!("aborting the connection: {path}: {e}");
        }
    }

    /// After the session ended on its own (not by an unmount): unmount our
    /// mount if its connection still lives, as libfuse does.
    pub fn unmount_if_connected(&self) {
        if self.connected()
            && let Err(e) = self.unmount()
        {
            log::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// The newest FUSE mount at `path` in this mount namespace.
fn newest_fuse_mount_at(path: &Path) -> Option<MountEntry> {
    mountinfo::read()
        .into_iter()
        .filter(|m| m.mount_point == path && m.fs_type.starts_with("fuse"))
        .max_by_key(|m| m.id)
}

/// `mount(2)` with a /dev/fuse descriptor, as root does it.
fn mount_directly(
    mountpoint: &Path,
    options: &[MountOption],
    allow_other: bool,
) -> io::Result<OwnedFd> {
    let mode = std::fs::metadata(mountpoint)?.permissions().mode();
    let fd = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut data = format!(
        "fd={},rootmode={mode:o},user_id={},group_id={}",
        fd.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    if options.contains(&MountOption::DefaultPermissions) {
        data.push_str(",default_permissions");
    }
    if allow_other {
        data.push_str(",allow_other");
    }
    let (source, fs_type) = names(options);
    let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(source, mountpoint, fs_type, flags(options), data.as_c_str())?;
    Ok(fd)
}

/// The mount's source (its fsname) and type (`fuse.SUBTYPE`).
fn names(options: &[MountOption]) -> (String, String) {
    let mut source = "/dev/fuse".to_string();
    let mut fs_type = "fuse".to_string();
    for o in options {
        match o {
            MountOption::FSName(n) => source = n.clone(),
            MountOption::Subtype(s) => fs_type = format!("fuse.{s}"),
            _ => {}
        }
    }
    (source, fs_type)
}

/// Mount flags; nodev and nosuid unless `dev` and `suid` are asked for, as
/// fusermount and fuser do.
fn flags(options: &[MountOption]) -> MountFlags {
    let mut flags = MountFlags::empty();
    if !options.contains(&MountOption::Dev) {
        flags |= MountFlags::NODEV;
    }
    if !options.contains(&MountOption::Suid) {
        flags |= MountFlags::NOSUID;
    }
    for o in options {
        flags |= match o {
            MountOption::RO => MountFlags::RDONLY,
            MountOption::NoDev => MountFlags::NODEV,
            MountOption::NoSuid => MountFlags::NOSUID,
            MountOption::NoExec => MountFlags::NOEXEC,
            MountOption::NoAtime => MountFlags::NOATIME,
            MountOption::Sync => MountFlags::SYNCHRONOUS,
            MountOption::DirSync => MountFlags::DIRSYNC,
            MountOption::CUSTOM(word) => vfs_flag(word),
            _ => MountFlags::empty(),
        };
    }
    flags
}

/// The mount flags fuser has no option for, by their mount(8) names.
fn vfs_flag(word: &str) -> MountFlags {
    match word {
        "nodiratime" => MountFlags::NODIRATIME,
        "strictatime" => MountFlags::STRICTATIME,
        "lazytime" => MountFlags::LAZYTIME,
        "nosymfollow" => MountFlags::NOSYMFOLLOW,
        _ => MountFlags::empty(),
    }
}

/// fusermount's `-o` list for the same options.
fn fusermount_options(options: &[MountOption], allow_other: bool) -> String {
    let mut list: Vec<String> = options.iter().filter_map(fusermount_word).collect();
    if allow_other {
        list.push("allow_other".into());
    }
    list.join(",")
}

fn fusermount_word(o: &MountOption) -> Option<String> {
    Some(match o {
        MountOption::FSName(n) => format!("fsname={n}"),
        MountOption::Subtype(s) => format!("subtype={s}"),
        MountOption::DefaultPermissions => "default_permissions".into(),
        MountOption::RO => "ro".into(),
        MountOption::RW => "rw".into(),
        MountOption::Dev => "dev".into(),
        MountOption::NoDev => "nodev".into(),
        MountOption::Suid => "suid".into(),
        MountOption::NoSuid => "nosuid".into(),
        MountOption::NoExec => "noexec".into(),
        MountOption::NoAtime => "noatime".into(),
        MountOption::Sync => "sync".into(),
        MountOption::DirSync => "dirsync".into(),
        MountOption::CUSTOM(word) if !vfs_flag(word).is_empty() => word.clone(),
        _ => return None,
    })
}

/// The set-uid helper mounts for us and sends the device back over a socket.
fn mount_with_fusermount(
    mountpoint: &Path,
    options: &[MountOption],
    allow_other: bool,
) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::empty(),
        None,
    )?;
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::CLOEXEC)?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = Command::new(fusermount_binary());
    cmd.arg("-o")
        .arg(fusermount_options(options, allow_other))
        .arg("--")
        .arg(mountpoint)
        .env(FUSERMOUNT_COMM_ENV, theirs_raw.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn()?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let output = child.wait_with_output()?;
    received.ok_or_else(|| {
        let why = String::from_utf8_lossy(&output.stderr).trim().to_string();
        io::Error::other(if why.is_empty() {
            format!("fusermount failed ({})", output.status)
        } else {
            why
        })
    })
}

/// The descriptor fusermount sends, if it sent one.
fn receive_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).ok()?;
    control.drain().find_map(|msg| match msg {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    })
}

fn fusermount_binary() -> OsString {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if on_path("fusermount3") || !on_path("fusermount") {
        "fusermount3".into()
    } else {
        "fusermount".into()
    }
}

fn fusermount_unmount(mountpoint: &Path) -> io::Result<()> {
    let status = Command::new(fusermount_binary())
        .args(["-u", "-q", "-z", "--"])
        .arg(mountpoint)
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("fusermount -u: {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_and_source_follow_subtype_and_fsname() {
        let opts = [
            MountOption::FSName("store".into()),
            MountOption::Subtype("unionmount".into()),
        ];
        assert_eq!(names(&opts), ("store".into(), "fuse.unionmount".into()));
        assert_eq!(names(&[]), ("/dev/fuse".into(), "fuse".into()));
    }

    #[test]
    fn nodev_and_nosuid_unless_asked_otherwise() {
        assert_eq!(flags(&[]), MountFlags::NODEV | MountFlags::NOSUID);
        assert_eq!(
            flags(&[MountOption::Dev, MountOption::Suid, MountOption::RO]),
            MountFlags::RDONLY
        );
        assert_eq!(
            fusermount_options(&[MountOption::RO, MountOption::NoExec], true),
            "ro,noexec,allow_other"
        );
        let atime = [
            MountOption::CUSTOM("strictatime".into()),
            MountOption::CUSTOM("nodiratime".into()),
            MountOption::CUSTOM("lazytime".into()),
            MountOption::Sync,
            MountOption::DirSync,
        ];
        assert_eq!(
            flags(&atime),
            MountFlags::NODEV
                | MountFlags::NOSUID
                | MountFlags::STRICTATIME
                | MountFlags::NODIRATIME
                | MountFlags::LAZYTIME
                | MountFlags::SYNCHRONOUS
                | MountFlags::DIRSYNC
        );
        assert_eq!(
            fusermount_options(&atime, false),
            "strictatime,nodiratime,lazytime,sync,dirsync"
        );
    }
}
