//! Run a container: namespaces, the union mount, `pivot_root`, `/proc` `/dev`
//! `/sys`, host name, user, environment, signals and the exit status.
//!
//! ```text
//! unionmount run (the runner)      host pid namespace; unshares mount, uts, ipc
//!  │                               (and net): its mount namespace holds the union
//!  ├─ unionmount -o … merged       the union's daemon (reparented to the runner,
//!  │                               a child subreaper, which reaps it at the end)
//!  └─ pid 1 of a new pid namespace forked after unshare(NEWPID); unshares the mount
//!       namespace again (so pivot_root moves no one else), pivots into the union,
//!       mounts /proc /dev /sys and the bind mounts, drops to the user, execs —
//!       or, with --init, forks the command and stays as a reaper.
//! ```
//!
//! Setup errors of pid 1 come back on a close-on-exec pipe as `CODE\tMESSAGE`;
//! a pipe closed with nothing on it means the command was exec'd. Signals sent
//! to the runner go to pid 1; the runner's exit status is the command's
//! (128+N when a signal N ended it), or podman's 125 (the runner failed),
//! 126 (the command cannot be run), 127 (it is not there). With `-t` pid 1
//! sends the runner a terminal's master, which the runner relays (`console`);
//! without `-i` the command's stdin is /dev/null. When pid 1 ends the kernel
//! ends the rest of its pid namespace, the runner unmounts the union, its
//! daemon exits, and the cgroups go.

use std::convert::Infallible;
use std::ffi::CStr;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::mount::{
    MountFlags, MountPropagationFlags, UnmountFlags, mount, mount_bind, mount_bind_recursive,
    mount_change, unmount,
};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus, kill_process, wait};
use rustix::thread::UnshareFlags;
use signal_hook::consts::signal as sig;
use signal_hook::iterator::Signals;

use crate::cgroup;
use crate::confine;
use crate::container::record::{Container, Network};
use crate::options::{OverlayOptions, UpperDirs};
use crate::sys::{self, Forked};

mod console;

/// Signals the runner (and `--init`) pass on to the command.
const FORWARDED: [i32; 7] = [
    sig::SIGTERM,
    sig::SIGINT,
    sig::SIGHUP,
    sig::SIGQUIT,
    sig::SIGUSR1,
    sig::SIGUSR2,
    sig::SIGWINCH,
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a run came to.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The command's exit status (128+N when a signal N ended it; 125 when
    /// the container could not be set up).
    pub exit_code: i32,
}

/// What the runner tells the keeper of the container's record as the run
/// goes, so that `stop`, `rm` and `ps` see it while it runs.
pub trait RunReport {
    /// The container's cgroups were made (nothing runs in them yet).
    fn cgroups_made(&mut self, dirs: &[PathBuf]) -> anyhow::Result<()>;
    /// The container's pid 1 was forked.
    fn pid1_started(&mut self, pid: i32);
}

/// Run the container in the foreground, its stdin attached when `stdin`
/// (else it reads /dev/null, as Docker's without `-i`); what came of it.
pub fn start(c: &Container, stdin: bool, report: &mut dyn RunReport) -> anyhow::Result<Outcome> {
    let res = match cgroup::create(&c.id, c.spec.limits) {
        Ok(dirs) => {
            report.cgroups_made(&dirs)?;
            let r = run_namespaced(c, stdin, &dirs, report);
            let killed = cgroup::oom_kills(&dirs);
            if killed > 0 {
                eprintln!(
                    "unionmount: run {}: out of memory (--memory {}): the kernel killed {killed} process(es)",
                    c.name,
                    c.spec.limits.memory.unwrap_or(0)
                );
            }
            cgroup::remove(&dirs);
            r
        }
        Err(e) => Err(e),
    };
    res.map(|exit_code| Outcome { exit_code })
}

fn run_namespaced(
    c: &Container,
    stdin: bool,
    cgroups: &[PathBuf],
    report: &mut dyn RunReport,
) -> anyhow::Result<i32> {
    // Signals wait (pending) from here until our handlers exist after the
    // fork: one that came in between would otherwise end the runner with the
    // union mounted. (Spawned programs start with an empty mask.)
    let watched: Vec<i32> = FORWARDED.iter().chain(&[sig::SIGCHLD]).copied().collect();
    let mask = sys::block_signals(&watched).context("run: blocking signals")?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(std::io::Error::from)
        .context("run: becoming a child subreaper")?;
    if !rustix::process::geteuid().is_root() {
        // Rootless: root in a user namespace of our own, for the namespaces below.
        confine::enter_user_namespace().map_err(|e| anyhow!("run: {e}"))?;
    }
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if c.spec.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    sys::unshare(flags).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("run: creating namespaces: permission denied (run as root)")
        }
        _ => anyhow!("run: creating namespaces: {e}"),
    })?;
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(std::io::Error::from)
    .context("run: making mounts private")?;
    crate::ns_mounts::drop_unneeded_copies(&paths_in_use(c));
    if c.spec.network == Network::None
        && let Err(e) = sys::loopback_up()
    {
        log::warn!("run {}: loopback device: {e}", c.name);
    }
    mount_union(c)?;
    let res = run_mounted(c, stdin, cgroups, report, &mask, &watched);
    unmount_union(c);
    res
}

/// What the runner, its union daemon and the container's pid 1 reach in the
/// host's tree: the layers, the container's directories and our binary.
fn paths_in_use(c: &Container) -> Vec<std::path::PathBuf> {
    let mut paths = c.spec.lowers.clone();
    paths.extend([c.init(), c.upper(), c.work(), c.merged()]);
    paths.extend(std::env::current_exe());
    paths
}

/// Mount the image and the container's upper at `merged` with our own binary.
fn mount_union(c: &Container) -> anyhow::Result<()> {
    mount_union_at(c, &c.merged())
}

/// Mount a container's union (its image, init layer and upper) at `target`.
pub fn mount_union_at(c: &Container, target: &Path) -> anyhow::Result<()> {
    let init = c.init();
    let opts = OverlayOptions {
        lowers: init
            .is_dir()
            .then(|| init.clone())
            .into_iter()
            .chain(c.spec.lowers.iter().rev().cloned())
            .collect(),
        upper: Some(UpperDirs {
            upper: c.upper(),
            work: c.work(),
        }),
        // trusted.* xattrs need the host's CAP_SYS_ADMIN: overlay markers go
        // in user.overlay.*, as kernel overlayfs writes them with userxattr.
        userxattr: confine::in_user_namespace(),
        ..OverlayOptions::default()
    }
    .encode()
    .with_context(|| format!("run {}", c.name))?;
    let exe = std::env::current_exe().context("finding the unionmount binary")?;
    let status = Command::new(exe)
        .arg("-o")
        .arg(&opts)
        .arg(target)
        .stdin(Stdio::null())
        .status()
        .context("run: starting the union mount")?;
    if !status.success() {
        bail!("run {}: mounting the image failed ({status})", c.name);
    }
    Ok(())
}

/// Unmount the union (its daemon then exits) and reap every child left.
/// Any child, not only those of our process group (`waitpid(None)`): the
/// daemon runs in a session of its own.
fn unmount_union(c: &Container) {
    let merged = c.merged();
    if unmount(&merged, UnmountFlags::empty()).is_err() {
        let _ = unmount(&merged, UnmountFlags::DETACH);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break,
        }
    }
}

fn run_mounted(
    c: &Container,
    stdin: bool,
    cgroups: &[PathBuf],
    report: &mut dyn RunReport,
    mask: &sys::SignalMask,
    watched: &[i32],
) -> anyhow::Result<i32> {
    rustix::system::sethostname(c.spec.hostname.as_bytes())
        .map_err(std::io::Error::from)
        .context("run: setting the host name")?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .context("pipe")?;
    let (console_r, console_w) = match c.spec.tty {
        true => console::channel()
            .map(|(r, w)| (Some(r), Some(w)))
            .context("run: socket for the terminal")?,
        false => (None, None),
    };
    sys::unshare(UnshareFlags::NEWPID).context("run: creating the pid namespace")?;
    let forked = sys::fork();
    if matches!(forked, Ok(Forked::Child)) {
        let _ = sys::restore_signals(mask);
    }
    let pid = match forked.context("run: fork")? {
        Forked::Child => {
            drop((err_r, console_r));
            let mut err = Some(fs::File::from(err_w));
            let streams = Streams {
                console: console_w,
                stdin,
            };
            let Err(f) = container_init(c, cgroups, streams, &mut err);
            if let Some(mut e) = err {
                let _ = writeln!(e, "{}\t{}", f.code, f.msg.replace('\n', " "));
            }
            sys::exit_now(f.code);
        }
        Forked::Parent(pid) => pid,
    };
    drop((err_w, console_w));
    report.pid1_started(pid.as_raw_nonzero().get());
    let signals = Signals::new(watched);
    let _ = sys::restore_signals(mask);
    let mut signals = signals.context("run: installing signal handlers")?;
    // The terminal's master comes first (pid 1 makes it before it can fail
    // at the exec); then the error pipe closes at the exec, or brings why not.
    let master = console_r.and_then(|s| console::receive(&s).ok().flatten());
    let mut report = String::new();
    let _ = fs::File::from(err_r).read_to_string(&mut report);
    let failed = report.trim_end().split_once('\t');
    let mut tty = match master.filter(|_| failed.is_none()) {
        Some(m) => Some(console::Attached::start(m, stdin, watched).context("run: terminal")?),
        None => None,
    };
    let status = wait_forwarding(pid, &mut signals, tty.as_mut());
    if let Some(t) = tty {
        t.finish();
    }
    if let Some((code, msg)) = failed {
        eprintln!("unionmount: {msg}");
        return Ok(code.parse().unwrap_or(125));
    }
    Ok(status.map_or(125, exit_code))
}

/// What pid 1 makes its stdin, stdout and stderr of: the terminal whose
/// master it sends on `console` (`-t`), or the runner's, with stdin
/// replaced by /dev/null unless `stdin` (`-i`).
struct Streams {
    console: Option<rustix::fd::OwnedFd>,
    stdin: bool,
}

/// Wait for `child`, passing signals on to it, and reap every other child
/// that ends meanwhile (as the container's init: orphans of any session).
/// With a terminal, a change of size is passed to it instead (the kernel
/// tells its foreground process group).
fn wait_forwarding(
    child: Pid,
    signals: &mut Signals,
    mut tty: Option<&mut console::Attached>,
) -> Option<WaitStatus> {
    loop {
        loop {
            match wait(WaitOptions::NOHANG) {
                Ok(Some((p, s))) if p == child => return Some(s),
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        let came = match tty.as_deref_mut() {
            Some(t) => {
                t.relay_until_signal();
                signals.pending()
            }
            None => signals.wait(),
        };
        for s in came {
            if let Some(t) = tty.as_deref_mut() {
                match s {
                    sig::SIGWINCH => {
                        t.resize();
                        continue;
                    }
                    sig::SIGHUP => t.hang_up_if_gone(),
                    _ => {}
                }
            }
            if s != sig::SIGCHLD
                && let Some(s) = Signal::from_named_raw(s)
            {
                let _ = kill_process(child, s);
            }
        }
    }
}

/// A shell's view of how a process ended.
fn exit_code(s: WaitStatus) -> i32 {
    match (s.exit_status(), s.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(n)) => 128 + n,
        _ => 125,
    }
}

/// Why pid 1 could not start the command, and the runner's exit status for it.
struct Failure {
    code: i32,
    msg: String,
}

trait OrFail<T> {
    fn or_fail(self, code: i32, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, code: i32, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            msg: format!("run: {}: {e}", what()),
        })
    }
}

fn io<T>(r: rustix::io::Result<T>) -> std::io::Result<T> {
    r.map_err(std::io::Error::from)
}

/// Pid 1 of the container, between fork and exec.
fn container_init(
    c: &Container,
    cgroups: &[PathBuf],
    stdio: Streams,
    err: &mut Option<fs::File>,
) -> Result<Infallible, Failure> {
    io(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    )))
    .or_fail(125, || "parent death signal".into())?;
    cgroup::join(cgroups).or_fail(125, || "joining cgroups".into())?;
    // A mount namespace of our own: pivot_root must not move the runner or the daemon.
    sys::unshare(UnshareFlags::NEWNS).or_fail(125, || "mount namespace".into())?;
    io(mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    ))
    .or_fail(125, || "making mounts private".into())?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let last_cap = confine::last_capability();
    let rootless = confine::in_user_namespace();
    let (old, switch) =
        confine::enter_root(&c.merged()).or_fail(125, || "entering the root".into())?;
    setup_mounts(c, &old)?;
    let proc_flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if rootless {
        // In a user namespace proc may be mounted only while a full proc is
        // visible in the mount namespace: the host's, below the old root. So
        // the old root moves aside (into the container's /dev tmpfs) while
        // the new proc is mounted, and goes after.
        let aside = Path::new("/dev/.host-root");
        mkdirs(aside)?;
        io(rustix::mount::mount_move(&old, aside))
            .or_fail(125, || "moving the host root aside".into())?;
        mount_fs("proc", "/proc", "proc", proc_flags, None)?;
        io(unmount(aside, UnmountFlags::DETACH))
            .or_fail(125, || "detaching the host root".into())?;
        fs::remove_dir(aside).or_fail(125, || aside.display().to_string())?;
    } else {
        io(unmount(&old, UnmountFlags::DETACH))
            .or_fail(125, || "detaching the host root".into())?;
        mount_fs("proc", "/proc", "proc", proc_flags, None)?;
    }
    confine::protect_proc_and_sys().or_fail(125, || "protecting /proc and /sys".into())?;
    if c.spec.read_only {
        confine::remount_read_only(Path::new("/"), MountFlags::empty())
            .or_fail(125, || "making / read-only".into())?;
    }
    let user = resolve_user(&c.spec.user)?;
    set_stdio(stdio, &user)?;
    let env = environment(c, &user);
    let workdir = Path::new(&c.spec.workdir);
    if !workdir.is_dir() && !c.spec.read_only {
        let _ = fs::create_dir_all(workdir);
    }
    let keep = confine::kept_capabilities(switch);
    confine::limit_bounding_set(keep, last_cap).or_fail(125, || "capabilities".into())?;
    io(rustix::thread::set_no_new_privs(true)).or_fail(125, || "no_new_privs".into())?;
    switch_user(&user, rootless)?;
    // A change of user clears the parent death signal: set it again, so that
    // the container still ends with a runner that was killed.
    io(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    )))
    .or_fail(125, || "parent death signal".into())?;
    confine::limit_own_capabilities(keep).or_fail(125, || "capabilities".into())?;
    std::env::set_current_dir(workdir)
        .or_fail(125, || format!("working directory {}", c.spec.workdir))?;
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let Some(argv0) = c.spec.argv.first() else {
        return Err(Failure {
            code: 125,
            msg: format!("run {}: the container has no command", c.name),
        });
    };
    let program = find_program(argv0, path)?;
    if !c.spec.init {
        return exec(&program, &c.spec.argv, &env);
    }
    // Handlers first: a signal that comes before they exist would be ignored
    // (the kernel shields a namespace's init from signals it does not handle).
    let mut signals = Signals::new(FORWARDED.iter().chain(&[sig::SIGCHLD]))
        .or_fail(125, || "init: signal handlers".into())?;
    match sys::fork().or_fail(125, || "fork".into())? {
        Forked::Child => {
            if c.spec.tty {
                console::take_foreground().or_fail(125, || "terminal".into())?;
            }
            exec(&program, &c.spec.argv, &env)
        }
        Forked::Parent(child) => {
            // The command's exec closes its copy of the pipe; ours goes now.
            err.take();
            let status = wait_forwarding(child, &mut signals, None);
            sys::exit_now(status.map_or(125, exit_code))
        }
    }
}

/// Pid 1's stdin, stdout and stderr (see `Streams`), in the container's
/// root with its /dev made.
fn set_stdio(stdio: Streams, user: &User) -> Result<(), Failure> {
    if let Some(sock) = stdio.console {
        let slave = console::open(sock, user.uid, user.gid).or_fail(125, || "terminal".into())?;
        return console::attach(slave).or_fail(125, || "terminal".into());
    }
    if !stdio.stdin {
        let null = fs::File::open("/dev/null").or_fail(125, || "/dev/null".into())?;
        io(rustix::stdio::dup2_stdin(&null)).or_fail(125, || "stdin".into())?;
    }
    Ok(())
}

fn mkdirs(p: &Path) -> Result<(), Failure> {
    fs::create_dir_all(p).or_fail(125, || format!("creating {}", p.display()))
}

/// An empty file to mount a file on, unless something is there already.
fn touch(p: &Path) -> Result<(), Failure> {
    if fs::symlink_metadata(p).is_ok() {
        return Ok(());
    }
    if let Some(parent) = p.parent() {
        mkdirs(parent)?;
    }
    fs::File::create(p)
        .map(drop)
        .or_fail(125, || format!("creating {}", p.display()))
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: Option<&CStr>,
) -> Result<(), Failure> {
    mkdirs(Path::new(target))?;
    io(mount(src, target, fstype, flags, data)).or_fail(125, || format!("mounting {target}"))
}

/// The host path `p` as seen below the old root.
fn host(old: &Path, p: &Path) -> PathBuf {
    old.join(p.strip_prefix("/").unwrap_or(p))
}

fn setup_mounts(c: &Container, old: &Path) -> Result<(), Failure> {
    let hard = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs(
        "tmpfs",
        "/dev",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        Some(c"mode=755,size=65536k"),
    )?;
    for n in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = Path::new("/dev").join(n);
        touch(&target)?;
        io(mount_bind(host(old, &Path::new("/dev").join(n)), &target))
            .or_fail(125, || format!("binding {}", target.display()))?;
    }
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        hard,
        Some(c"mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, Path::new("/dev").join(link)).or_fail(125, || format!("/dev/{link}"))?;
    }
    if mount_fs("sysfs", "/sys", "sysfs", hard | MountFlags::RDONLY, None).is_err() {
        io(mount_bind_recursive(host(old, Path::new("/sys")), "/sys"))
            .or_fail(125, || "binding /sys".into())?;
        confine::remount_read_only(Path::new("/sys"), hard)
            .or_fail(125, || "making /sys read-only".into())?;
    }
    for name in ["hostname", "hosts", "resolv.conf"] {
        let target = Path::new("/etc").join(name);
        if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = fs::remove_file(&target);
        }
        touch(&target)?;
        io(mount_bind(host(old, &c.dir.join(name)), &target))
            .or_fail(125, || format!("binding {}", target.display()))?;
    }
    for v in &c.spec.volumes {
        let src = host(old, &v.host);
        if src.is_dir() {
            mkdirs(&v.ctr)?;
        } else {
            touch(&v.ctr)?;
        }
        let what = || format!("volume {}:{}", v.host.display(), v.ctr.display());
        io(mount_bind_recursive(&src, &v.ctr)).or_fail(125, what)?;
        if v.read_only {
            confine::remount_read_only(&v.ctr, MountFlags::empty()).or_fail(125, what)?;
        }
    }
    Ok(())
}

struct User {
    uid: u32,
    gid: u32,
    home: Option<String>,
}

/// (name, id, gid, home) of each `/etc/passwd` line; (name, gid) of `/etc/group`.
fn passwd() -> Vec<(String, u32, u32, String)> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5)?.to_string(),
            ))
        })
        .collect()
}

fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
        })
}

/// `UID[:GID]` or `NAME[:GROUP]`, names from the image's own files.
fn resolve_user(spec: &str) -> Result<User, Failure> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = passwd();
    let entry = entries
        .iter()
        .find(|e| u.parse::<u32>().map_or(e.0 == u, |n| e.1 == n));
    let uid = match (u.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some(e)) => e.1,
        (Err(_), None) => {
            return Err(Failure {
                code: 125,
                msg: format!("run: user {u}: not in the image's /etc/passwd"),
            });
        }
    };
    let gid = match g {
        Some(g) => group_id(g).ok_or_else(|| Failure {
            code: 125,
            msg: format!("run: group {g}: not in the image's /etc/group"),
        })?,
        None => entry.map_or(0, |e| e.2),
    };
    Ok(User {
        uid,
        gid,
        home: entry.map(|e| e.3.clone()),
    })
}

/// Become the container's user. Rootless, only root is mapped (and
/// setgroups is denied): any other user is refused.
fn switch_user(u: &User, rootless: bool) -> Result<(), Failure> {
    let gid = rustix::process::Gid::from_raw(u.gid);
    let uid = rustix::process::Uid::from_raw(u.uid);
    if rootless {
        if u.uid != 0 || u.gid != 0 {
            return Err(Failure {
                code: 125,
                msg: format!(
                    "run: user {}:{}: a rootless container runs as root (the only id mapped)",
                    u.uid, u.gid
                ),
            });
        }
        return Ok(());
    }
    io(rustix::thread::set_thread_groups(&[gid])).or_fail(125, || "setgroups".into())?;
    io(rustix::thread::set_thread_res_gid(gid, gid, gid))
        .or_fail(125, || format!("setgid {}", u.gid))?;
    io(rustix::thread::set_thread_res_uid(uid, uid, uid))
        .or_fail(125, || format!("setuid {}", u.uid))
}

/// The container's environment (the image's and `-e` values) with PATH set
/// to Docker's default if neither sets it: what `run` and `bundle` give.
pub fn with_default_path(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.split('=').next() == Some("PATH")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env
}

/// The image's environment, `-e` values, and PATH, HOSTNAME, HOME if unset.
fn environment(c: &Container, u: &User) -> Vec<String> {
    let mut env = with_default_path(&c.spec.env);
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", c.spec.hostname));
    }
    if !has(&env, "HOME") {
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| if u.uid == 0 { "/root" } else { "/" }.into());
        env.push(format!("HOME={home}"));
    }
    env
}

/// The command's file, looked up in PATH as a shell would. Not there is
/// 127, a directory 126 (the statuses of a shell, podman and Docker).
fn find_program(argv0: &str, path: &str) -> Result<PathBuf, Failure> {
    let fail = |code, why: &str| Failure {
        code,
        msg: format!("run: {argv0}: {why}"),
    };
    if argv0.contains('/') {
        return match fs::metadata(argv0) {
            Ok(m) if m.is_dir() => Err(fail(126, "is a directory")),
            Ok(_) => Ok(PathBuf::from(argv0)),
            Err(e) => Err(fail(127, &exec_error(&e))),
        };
    }
    let runnable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(argv0))
        .find(|p| runnable(p))
        .ok_or_else(|| fail(127, "executable file not found in $PATH"))
}

/// Why a file could not be run, in a shell's words.
fn exec_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn exec(program: &Path, argv: &[String], env: &[String]) -> Result<Infallible, Failure> {
    let (argv0, args) = argv
        .split_first()
        .map_or(("", &[][..]), |(a, r)| (a.as_str(), r));
    // Nothing the runner had open (or was given by whoever started it)
    // reaches the command: only 0, 1 and 2 stay open across the exec.
    if let Err(e) = sys::cloexec_from(3) {
        return Err(Failure {
            code: 125,
            msg: format!("run: closing descriptors: {e}"),
        });
    }
    let e = Command::new(program)
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(
            env.iter()
                .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), ""))),
        )
        .exec();
    // Not found here is a missing interpreter (`#!`): still the command's fault.
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    Err(Failure {
        code,
        msg: format!("run: {}: {}", program.display(), exec_error(&e)),
    })
}
