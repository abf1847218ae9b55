//! A container's life after `create`: start (in the foreground), stop,
//! remove, and the cleanup after a runner that was killed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::create::{CreateRequest, create};
use super::procs::{alive, start_time};
use super::record::{Container, ContainersLock, RunState, State, Status, find, read_state};
use crate::cgroup::{self, Limits};
use crate::runner::{self, RunReport};
use crate::store_dir::StoreDir;

/// Containers need CAP_SYS_ADMIN (namespaces, mounts), or, rootless, a user
/// namespace of their own and /dev/fuse: say so before anything is created.
fn check_privilege(limits: Limits) -> anyhow::Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0);
    if caps & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        bail!("run: no permission to create namespaces and mounts (needs root or CAP_SYS_ADMIN)");
    }
    // Rootless.
    if limits.memory.is_some() || limits.pids.is_some() {
        bail!("run: --memory and --pids-limit need root (cgroups are not delegated to this user)");
    }
    let userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    if userns == Some(0) {
        bail!(
            "run: no permission to create namespaces (user namespaces are disabled; run as root)"
        );
    }
    if rustix::fs::access(
        "/dev/fuse",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        bail!(
            "run: /dev/fuse: permission denied (a rootless container needs to open it; or run as root)"
        );
    }
    Ok(())
}

/// The exit status of `run`, `create` and `start` when the runner itself
/// failed (podman's and Docker's): 126 and 127 are the command's (it cannot
/// be run, it is not there), everything else the command's own status.
pub const RUNNER_FAILED: u8 = 125;

/// A runner's error as `run`, `create` and `start` end with it: one line,
/// status 125.
fn runner_status(res: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    Ok(res.unwrap_or_else(|e| {
        eprintln!("unionmount: {e:#}");
        ExitCode::from(RUNNER_FAILED)
    }))
}

/// `unionmount run`.
pub fn run(args: CreateRequest) -> anyhow::Result<ExitCode> {
    runner_status(check_privilege(args.limits).and_then(|()| {
        let c = create(&args)?;
        start_created(&c, c.spec.interactive)
    }))
}

/// `unionmount create`: print the id.
pub fn create_cmd(args: CreateRequest) -> anyhow::Result<ExitCode> {
    runner_status(create(&args).map(|c| {
        say!("{}", c.id);
        ExitCode::SUCCESS
    }))
}

/// `unionmount start [-i] NAME`: run a created (or ended) container in the
/// foreground; its stdin attached with `-i` or when it was created with `-i`.
pub fn start_cmd(store: &StoreDir, key: &str, interactive: bool) -> anyhow::Result<ExitCode> {
    runner_status(start_found(store, key, interactive))
}

fn start_found(store: &StoreDir, key: &str, interactive: bool) -> anyhow::Result<ExitCode> {
    let root = store.canonical_root()?;
    let c = find(&root, key)?;
    check_privilege(c.spec.limits)?;
    let lock = ContainersLock::take(&root)?;
    let st = read_state(&c.dir);
    if st.is_running() {
        bail!("container {}: already running", c.name);
    }
    if st.status == Status::Running {
        cleanup_stale(&c, &st);
    }
    // Recorded as running before the lock goes, so that a second start
    // sees this one and refuses.
    let state = RunState::running(&c)?;
    drop(lock);
    finish_start(&c, state, interactive || c.spec.interactive)
}

fn start_created(c: &Container, stdin: bool) -> anyhow::Result<ExitCode> {
    match RunState::running(c) {
        Ok(state) => finish_start(c, state, stdin),
        Err(e) => {
            if c.spec.auto_remove {
                remove_dir(c)?;
            }
            Err(e)
        }
    }
}

/// Run a container recorded as running; remove it after if it asks.
fn finish_start(c: &Container, state: RunState<'_>, stdin: bool) -> anyhow::Result<ExitCode> {
    let code = run_recorded(c, state, stdin);
    if c.spec.auto_remove {
        remove_dir(c)?;
    }
    let code = code?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// Run the container in the foreground, its state recorded as the runner
/// reports: running, cgroups, pid 1, exited (125 when the runner failed).
fn run_recorded(c: &Container, mut state: RunState<'_>, stdin: bool) -> anyhow::Result<i32> {
    let res = runner::start(c, stdin, &mut Recorder(&mut state));
    let code = res.as_ref().map_or(125, |o| o.exit_code);
    state.exited(code);
    res.map(|o| o.exit_code)
}

/// The runner's reports, written to the container's state.
struct Recorder<'a, 'b>(&'a mut RunState<'b>);

impl RunReport for Recorder<'_, '_> {
    fn cgroups_made(&mut self, dirs: &[PathBuf]) -> anyhow::Result<()> {
        self.0.cgroups(dirs)
    }

    fn pid1_started(&mut self, pid: i32) {
        self.0.pid1(pid);
    }
}

/// `unionmount stop NAME`: SIGTERM to the container's pid 1, SIGKILL after `timeout`.
pub fn stop_cmd(store: &StoreDir, key: &str, timeout: u64) -> anyhow::Result<ExitCode> {
    let c = find(&store.canonical_root()?, key)?;
    let st = read_state(&c.dir);
    if !st.is_running() {
        bail!("container {}: not running", c.name);
    }
    let signal = |sig: rustix::process::Signal| {
        if let Some((pid, t)) = st.pid1
            && start_time(pid) == Some(t)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    signal(rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while read_state(&c.dir).is_running() {
        if Instant::now() > deadline {
            signal(rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say!("{}", c.name);
    Ok(ExitCode::SUCCESS)
}

/// `unionmount rm [-f] NAME...`: remove containers, cleaning after runners
/// that were killed (their union daemon, cgroups and directories).
pub fn rm(store: &StoreDir, keys: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let root = store.canonical_root()?;
    let mut failed = false;
    for key in keys {
        match rm_one(&root, key, force) {
            Ok(name) => say!("{name}"),
            Err(e) => {
                eprintln!("unionmount: rm: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn rm_one(root: &Path, key: &str, force: bool) -> anyhow::Result<String> {
    let c = find(root, key)?;
    let st = read_state(&c.dir);
    if st.is_running() {
        if !force {
            bail!("container {}: running (stop it first, or rm -f)", c.name);
        }
        kill_running(&c, &st);
    }
    cleanup_stale(&c, &st);
    remove_dir(&c)?;
    Ok(c.name)
}

/// End a running container the way its runner cleans up after: SIGKILL to
/// its pid 1; the runner reaps it, unmounts the union, reaps the union's
/// daemon and removes the cgroups. Killing the runner instead would leave
/// both processes to the host's init (zombies until it reaps them) and the
/// cleanup to `cleanup_stale`; that is only the last resort, for a runner
/// that does not finish.
fn kill_running(c: &Container, st: &State) {
    let signal = |p: Option<(i32, u64)>, sig: rustix::process::Signal| {
        if alive(p)
            && let Some((pid, _)) = p
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(st.runner) && Instant::now() < deadline {
        // Read again: a runner still setting up records its pid 1 soon.
        signal(read_state(&c.dir).pid1, rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(st.runner) {
        signal(st.runner, rustix::process::Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(st.runner) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// After a runner that did not finish its work: end the container's processes
/// and its union daemon (which unmounts the union as it goes), remove cgroups.
fn cleanup_stale(c: &Container, st: &State) {
    if alive(st.pid1)
        && let Some((pid, _)) = st.pid1
        && let Some(p) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    for pid in daemons_of(c) {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = daemons_of(c);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unmount_leftovers(&c.dir);
    cgroup::remove(&st.cgroups);
}

/// Live union daemons serving this container: their command line names its upper.
fn daemons_of(c: &Container) -> Vec<i32> {
    let needle = format!("upperdir={}", c.upper().display());
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let r = &s[s.rfind(')')? + 1..];
                    r.split_whitespace().next().map(|st| st == "Z")
                })
                .unwrap_or(true);
            !zombie
                && cmd
                    .split(|b| *b == 0)
                    .any(|a| a.split(|b| *b == b',').any(|o| o == needle.as_bytes()))
        })
        .collect()
}

/// Mounts under the container's directory in this mount namespace (none,
/// normally: the union lives in the container's own namespace).
fn unmount_leftovers(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Remove the container's directory, unless something is still mounted on
/// its merged directory (then removing would reach into the union).
pub fn remove_dir(c: &Container) -> anyhow::Result<()> {
    let merged = c.merged();
    if let (Ok(a), Ok(b)) = (fs::metadata(&merged), fs::metadata(&c.dir)) {
        use std::os::unix::fs::MetadataExt as _;
        if a.dev() != b.dev() {
            bail!(
                "container {}: {} is still mounted; not removed",
                c.name,
                merged.display()
            );
        }
    }
    match fs::remove_dir_all(&c.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", c.dir.display())),
    }
}
