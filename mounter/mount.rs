//! Start the FUSE session for a mount request, daemonize, report readiness, unmount.
//!
//! Daemonizing re-runs this binary with `-f` as a child in its own process group
//! (no fork in a threaded program); the child reports "ready" or its error on a
//! pipe, so the command returns only once the mount is live, and the daemon keeps
//! none of the caller's output streams open (a caller reading our output to EOF,
//! as containers-storage does, must not hang).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use unionfs::fuse::{RequestCounts, Session, SessionOptions, Transport};
use unionfs::{Atime, BranchConfig, Config, IdMap, IdRange, Union, XattrNs};

use crate::options::{IdMapping, MountRequest, parse_mount_args, validate};

/// Set for a daemon child: its stdout is the pipe it reports readiness on.
const READY_FD_ENV: &str = "UNIONMOUNT_READY_FD";

pub fn run_mount_command(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let req = parse_mount_args(args).map_err(anyhow::Error::msg)?;
    validate(&req).map_err(anyhow::Error::msg)?;
    warn_ignored(&req);
    let ready = ready_fd_from_env();
    if req.foreground || ready.is_some() {
        serve(&req, ready)?;
        return Ok(ExitCode::SUCCESS);
    }
    spawn_daemon(args)
}

/// One line for every unknown option ignored (fuse-overlayfs ignores them
/// silently; a word here saves hunting for a misspelt one).
fn warn_ignored(req: &MountRequest) {
    if req.ignored_options.is_empty() || std::env::var_os(READY_FD_ENV).is_some() {
        return;
    }
    let list: Vec<String> = req
        .ignored_options
        .iter()
        .map(|o| format!("'{}'", o.escape_debug()))
        .collect();
    eprintln!(
        "unionmount: warning: ignoring unknown option{} {}",
        if list.len() == 1 { "" } else { "s" },
        list.join(", ")
    );
}

/// Are we a daemon child whose stdout is the readiness pipe of the parent?
fn ready_fd_from_env() -> Option<std::fs::File> {
    std::env::var_os(READY_FD_ENV)?;
    let out = rustix::io::dup(rustix::stdio::stdout()).ok()?;
    // From now on stdout goes nowhere: only the pipe copy reports.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok()?;
    rustix::stdio::dup2_stdout(&null).ok()?;
    Some(std::fs::File::from(out))
}

/// Run ourselves again as the daemon and wait until it says the mount is live.
fn spawn_daemon(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let (read_end, write_end) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .env(READY_FD_ENV, "stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the filesystem daemon")?;
    let mut report = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut report);
    if report.trim_end() == "ready" {
        return Ok(ExitCode::SUCCESS);
    }
    let _ = child.wait();
    if report.trim().is_empty() {
        bail!("the filesystem daemon exited before the mount was live");
    }
    bail!("{}", report.trim_end())
}

/// Mount and serve until unmounted or told to stop.
fn serve(req: &MountRequest, ready: Option<std::fs::File>) -> anyhow::Result<()> {
    let result = start_session(req);
    let (session, union, counts) = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(fd) = ready {
                let _ = { fd }.write_all(format!("{e:#}\n").as_bytes());
            }
            return Err(e);
        }
    };
    let unmounter = session.kernel_mount();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ])
    .context("installing signal handlers")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGUSR1 {
                counts.write_if_asked();
                continue;
            }
            // Unmounting ends the session: every worker then sees ENODEV and returns.
            match unmounter.unmount() {
                Ok(true) => {}
                // Our mount is not here to unmount (a copy of it serves
                // another mount namespace): stopping means going.
                Ok(false) => std::process::exit(0),
                Err(e) => log::warn!("unmounting: {e}"),
            }
            return;
        }
    });
    if let Some(fd) = ready {
        let _ = { fd }.write_all(b"ready\n");
    }
    session.run().context("serving the filesystem")?;
    // Unmounted with every request answered: a volatile mount drops its marker.
    union
        .unmounted_cleanly()
        .context("making the volatile mount's upper durable")
}

fn start_session(req: &MountRequest) -> anyhow::Result<(Session, Arc<Union>, RequestCounts)> {
    // Created objects get exactly the mode the kernel passes (it applied the umask).
    rustix::process::umask(rustix::fs::Mode::empty());
    raise_fd_limit();
    let union = Arc::new(Union::new(union_config(req)).context("opening branches")?);
    let ids_as_stored = req.uid_mapping.is_empty()
        && req.gid_mapping.is_empty()
        && !req.squash_to_root
        && req.squash_to_uid.is_none()
        && req.squash_to_gid.is_none();
    let kernel_checks = rustix::process::geteuid().is_root() || req.default_permissions;
    let fs = unionfs::fuse::UnionFuse::new(union.clone())
        .with_kernel_acls(kernel_checks && ids_as_stored)
        .with_lower_passthrough(req.lower_passthrough);
    let counts = fs.request_counts();
    let session = Session::mount(fs, &req.mountpoint, &session_options(req))
        .with_context(|| format!("mounting {}", req.mountpoint.display()))?;
    // Only for messages: a failure here costs the name in a later refusal.
    if let Err(e) = union.record_mountpoint(&req.mountpoint) {
        log::warn!("recording the mountpoint in the workdir: {e}");
    }
    Ok((session, union, counts))
}

/// Open handles are descriptors: allow as many as the hard limit.
fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let new = rustix::process::Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, new);
}

fn id_map(ranges: &[IdMapping], squash: Option<u32>) -> IdMap {
    IdMap {
        ranges: ranges
            .iter()
            .map(|m| IdRange {
                inside: m.inside,
                outside: m.outside,
                count: m.count,
            })
            .collect(),
        squash,
    }
}

pub fn union_config(req: &MountRequest) -> Config {
    let root_squash = req.squash_to_root.then_some(0);
    Config {
        branches: req
            .branches
            .iter()
            .map(|b| BranchConfig {
                path: b.path.clone(),
                writable: b.writable && !req.read_only,
            })
            .collect(),
        workdir: req.workdir.clone(),
        cow: req.cow && !req.read_only,
        // Without privilege trusted.* xattrs cannot be written: markers go in
        // user.overlay.*, as kernel overlayfs writes them with `userxattr`.
        xattr_ns: if req.userxattr || !rustix::process::geteuid().is_root() {
            XattrNs::User
        } else {
            XattrNs::Trusted
        },
        uids: id_map(&req.uid_mapping, req.squash_to_uid.or(root_squash)),
        gids: id_map(&req.gid_mapping, req.squash_to_gid.or(root_squash)),
        volatile: req.volatile,
        metacopy: req.metacopy,
        atime: if req.noatime {
            Atime::Never
        } else if req.strictatime {
            Atime::Strict
        } else {
            Atime::Relative
        },
        nodiratime: req.nodiratime,
    }
}

/// As root the kernel checks permissions, anyone may use the mount, and
/// device files and set-id bits work unless the options say otherwise.
fn session_options(req: &MountRequest) -> SessionOptions {
    let root = rustix::process::geteuid().is_root();
    SessionOptions {
        fsname: req.fsname.clone(),
        read_only: req.read_only || !req.branches.iter().any(|b| b.writable),
        default_permissions: root || req.default_permissions,
        allow_other: root || req.allow_other,
        nodev: req.nodev,
        nosuid: req.nosuid,
        noexec: req.noexec,
        noatime: req.noatime,
        nodiratime: req.nodiratime,
        strictatime: req.strictatime,
        lazytime: req.lazytime,
        sync: req.sync,
        dirsync: req.dirsync,
        nosymfollow: req.nosymfollow,
        devices_and_setid: root,
        transport: match req.io_uring {
            None => Transport::Auto,
            Some(true) => Transport::IoUring,
            Some(false) => Transport::Device,
        },
    }
}

/// The mount type of unionmount's own mounts (subtype `unionmount`).
const OUR_TYPE: &str = "fuse.unionmount";

/// `unionmount umount`: only a mount of ours, unless `force`; a path with
/// nothing mounted on it is an error of its own, not EINVAL.
pub fn unmount(mountpoint: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let shown = mountpoint.display();
    let target = absolute(mountpoint).with_context(|| shown.to_string())?;
    // The last entry for a path is the mount on top, the one umount(2) takes.
    let Some(entry) = unionfs::mountinfo::read()
        .into_iter()
        .rev()
        .find(|e| e.mount_point == target)
    else {
        bail!("{shown}: not mounted");
    };
    if entry.fs_type != OUR_TYPE && !force {
        bail!(
            "{shown}: a {} mount, not unionmount's (--force unmounts it anyway)",
            entry.fs_type
        );
    }
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty())
        .map_err(std::io::Error::from)
        .with_context(|| shown.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The path as the mount table spells it. The last component is not
/// looked at: the root of a FUSE mount whose daemon died cannot be stat'ed.
fn absolute(p: &Path) -> std::io::Result<std::path::PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Ok(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match p.file_name() {
        Some(name) => Ok(std::fs::canonicalize(parent)?.join(name)),
        None => std::fs::canonicalize(p),
    }
}
