//! A FUSE session over a union: the kernel mount, the worker threads, the
//! access rule, and the unmount. The binary fills a plain [`SessionOptions`]
//! from its command line; no fuser type leaves this crate.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{MountOption, SessionACL};

use super::kernel_mount::{self, KernelMount};
use super::requests::Requests;
use super::{MAX_WRITE, UnionFuse, uring};

/// How requests travel between the kernel and the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// io_uring queues when the kernel offers them, else /dev/fuse.
    #[default]
    Auto,
    /// io_uring queues, or no mount.
    IoUring,
    /// A read and a write of /dev/fuse per request.
    Device,
}

/// How the mount is made, as the command line asked.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The mount's source as mountinfo shows it (`unionmount` if unset).
    pub fsname: Option<String>,
    pub read_only: bool,
    /// Let the kernel check permissions from the modes it is shown.
    pub default_permissions: bool,
    /// Other users (and root) may use the mount, not only its owner.
    pub allow_other: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub strictatime: bool,
    pub lazytime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub nosymfollow: bool,
    /// Device files and set-id bits work unless `nodev`/`nosuid` (root only:
    /// the kernel refuses them to a mount without privilege).
    pub devices_and_setid: bool,
    pub transport: Transport,
}

/// A mounted session, served by `run`.
pub struct Session {
    fuse: fuser::Session<UnionFuse>,
    mount: Arc<KernelMount>,
    /// The kernel agreed to FUSE over io_uring: requests wait for the queues.
    io_uring: Arc<AtomicBool>,
    requests: Arc<Requests>,
}

impl Session {
    /// Mount `fs` at `mountpoint` and do the FUSE handshake.
    pub fn mount(
        mut fs: UnionFuse,
        mountpoint: &Path,
        opts: &SessionOptions,
    ) -> io::Result<Session> {
        let usable = opts.transport != Transport::Device && uring::usable();
        if opts.transport == Transport::IoUring && !usable {
            let why = if uring::enabled_in_kernel() {
                "this process may not use io_uring"
            } else {
                "the fuse module's enable_uring is not on"
            };
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring: no FUSE over io_uring here ({why})"),
            ));
        }
        fs.io_uring.wanted = usable;
        let io_uring = fs.io_uring.granted.clone();
        let requests = fs.requests.clone();
        let config = fuser_config(opts);
        let allow_other = !matches!(config.acl, SessionACL::Owner);
        let (device, mount) = kernel_mount::mount(mountpoint, &config.mount_options, allow_other)?;
        let acl = config.acl;
        match fuser::Session::from_fd(fs, device, acl, config) {
            Ok(_) if opts.transport == Transport::IoUring && !io_uring.load(Ordering::Acquire) => {
                let _ = mount.unmount();
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring: the kernel did not offer FUSE over io_uring at INIT",
                ))
            }
            Ok(fuse) => Ok(Session {
                fuse,
                mount: Arc::new(mount),
                io_uring,
                requests,
            }),
            Err(e) => {
                let _ = mount.unmount();
                Err(e)
            }
        }
    }

    /// The mount, to unmount it from another thread (a signal handler's).
    pub fn kernel_mount(&self) -> Arc<KernelMount> {
        self.mount.clone()
    }

    /// Serve until the mount goes. A session that ends on an error while
    /// still mounted takes its mount with it, if the mount is still its own.
    pub fn run(self) -> io::Result<()> {
        let served = if self.io_uring.load(Ordering::Acquire) {
            // One /dev/fuse loop is left with forgets and interrupts.
            let (mount, requests) = (self.mount.clone(), self.requests);
            self.fuse.run_with(1, move |dispatcher| {
                let abort: uring::Abort = Arc::new(move || mount.abort_connection());
                uring::start(dispatcher, requests, MAX_WRITE as usize, abort)
            })
        } else {
            self.fuse.run()
        };
        self.mount.unmount_if_connected();
        served
    }
}

/// fuser's options for the kernel mount and the workers.
fn fuser_config(opts: &SessionOptions) -> fuser::Config {
    let mut list = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| "unionmount".into())),
        MountOption::Subtype("unionmount".into()),
    ];
    if opts.default_permissions {
        list.push(MountOption::DefaultPermissions);
    }
    list.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    for (flag, opt) in [
        (opts.nodev, MountOption::NoDev),
        (opts.nosuid, MountOption::NoSuid),
        (opts.noexec, MountOption::NoExec),
        (opts.noatime, MountOption::NoAtime),
        (opts.sync, MountOption::Sync),
        (opts.dirsync, MountOption::DirSync),
        (opts.nodiratime, MountOption::CUSTOM("nodiratime".into())),
        (opts.strictatime, MountOption::CUSTOM("strictatime".into())),
        (opts.lazytime, MountOption::CUSTOM("lazytime".into())),
        (opts.nosymfollow, MountOption::CUSTOM("nosymfollow".into())),
    ] {
        if flag {
            list.push(opt);
        }
    }
    if opts.devices_and_setid {
        if !opts.nodev {
            list.push(MountOption::Dev);
        }
        if !opts.nosuid {
            list.push(MountOption::Suid);
        }
    }
    let mut config = fuser::Config::default();
    config.mount_options = list;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // One worker per core, each reading its own clone of the device: the
    // kernel spreads requests over them.
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2),
    );
    config.clone_fd = true;
    config
}
