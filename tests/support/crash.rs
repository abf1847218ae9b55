//! The crash-loop framework of the kill -9 tests (tests/fs_crash.rs), and the
//! rig the fault tests share: a fresh mount per round, the daemon killed
//! from outside after N steps or by strace's fault injection on its Nth call
//! of a syscall that changes the upper, then a remount that checks every
//! round so far and compares the tree with kernel overlayfs over the same
//! upper.
//!
//! Environment: `UNIONMOUNT_FAULT_ROUNDS`, kill -9 rounds per crash test
//! (default 12).

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::snapshot::{Tree, assert_raw_unchanged};
use super::{
    Dialect, Layer, Mount, Scratch, assert_trees_eq, is_mounted, kernel_opts, raw_checksum,
    snapshot, subject_is_kernel, union_opts,
};

pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn rounds() -> usize {
    env_num("UNIONMOUNT_FAULT_ROUNDS", 12).max(1)
}

/// Whether this test can run here (root, /dev/fuse, overlayfs; a daemon to kill).
pub fn can_run() -> bool {
    if !super::require_mounts() {
        return false;
    }
    if subject_is_kernel() {
        eprintln!("subject is kernel overlayfs: there is no daemon to fault; skipping");
        return false;
    }
    true
}

/// Layers, an upper, a workdir, a mountpoint for unionmount and one for the
/// kernel overlayfs that reads the same upper after each crash.
pub struct Rig {
    pub _s: Scratch,
    pub lowers: Vec<PathBuf>,
    pub up: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub kmnt: PathBuf,
    /// appended to the kernel's mount options (",index=on" for hard links)
    pub kernel_extra: &'static str,
    /// appended to unionmount's mount options
    pub union_extra: &'static str,
    /// FUSE over io_uring rather than /dev/fuse: chosen per rig, never left
    /// to the kernel's switch (another test of the binary may turn it on)
    pub io_uring: bool,
    pub lower_sums: Vec<std::collections::BTreeMap<PathBuf, String>>,
}

impl Rig {
    pub fn new(layers: &[Layer], kernel_extra: &'static str) -> Rig {
        let s = Scratch::new();
        let lowers: Vec<PathBuf> = (0..layers.len()).map(|i| s.dir(&format!("l{i}"))).collect();
        for (l, dir) in layers.iter().zip(&lowers) {
            l.build(dir, Dialect::Kernel);
        }
        let lower_sums = lowers.iter().map(|l| raw_checksum(l)).collect();
        Rig {
            up: s.dir("up"),
            work: s.dir("work"),
            mnt: s.dir("mnt"),
            kmnt: s.dir("kmnt"),
            lowers,
            kernel_extra,
            union_extra: "",
            io_uring: false,
            lower_sums,
            _s: s,
        }
    }

    pub fn args(&self) -> Vec<OsString> {
        vec![
            "-o".into(),
            (union_opts(&self.lowers, Some((&self.up, &self.work)))
                + self.union_extra
                + if self.io_uring {
                    ",io_uring"
                } else {
                    ",noio_uring"
                })
            .into(),
        ]
    }

    pub fn mount(&self) -> Mount {
        Mount::union_foreground(&self.mnt, &self.args()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Entries under the workdir's `work/`.
    pub fn work_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.work.join("work"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Leave something in `work/` as a crash would (a half-built temporary
    /// directory with a file inside), to prove the next mount empties it.
    pub fn plant_leftover(&self) {
        let d = self.work.join("work").join("#dead.1");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub").join("half"), "half a copy").unwrap();
        fs::write(self.work.join("work").join("#dead.2"), "partial").unwrap();
    }

    /// The tree kernel overlayfs shows over the same layers, upper and workdir.
    pub fn kernel_tree(&self) -> Tree {
        let opts = kernel_opts(&self.lowers, Some((&self.up, &self.work))) + self.kernel_extra;
        let mut k = Mount::kernel(&self.kmnt, &opts)
            .unwrap_or_else(|e| panic!("kernel overlayfs over the crashed upper: {e} (dmesg)"));
        let t = snapshot(&self.kmnt);
        k.unmount().unwrap();
        t
    }

    pub fn check_lowers_unchanged(&self) {
        for (l, before) in self.lowers.iter().zip(&self.lower_sums) {
            assert_raw_unchanged(l, before, &raw_checksum(l));
        }
    }
}

/// How far one step of an operation loop got when the daemon was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Done,
    InFlight,
    NotBegun,
}

/// Steps [0, done) returned; step `done` was in flight if `interrupted`.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub done: usize,
    pub interrupted: bool,
}

impl Outcome {
    pub fn state(&self, i: usize) -> State {
        if i < self.done {
            State::Done
        } else if i == self.done && self.interrupted {
            State::InFlight
        } else {
            State::NotBegun
        }
    }
}

/// One operation on the mount, part of a loop the daemon is killed in.
pub trait Step: Send + Sync + 'static {
    fn run(&self, mnt: &Path) -> io::Result<()>;
}

/// Where the daemon dies.
#[derive(Debug, Clone, Copy)]
pub enum Kill {
    /// kill -9 from outside once this many steps returned, after a short spin
    AfterSteps(usize, Duration),
    /// SIGKILL on entering the daemon's Nth call of this syscall (counted per
    /// thread), which is not made: strace's fault injection, to stop between
    /// any two changes an operation makes to the upper
    AtSyscall(&'static str, usize),
}

/// Is a command on PATH? Under CI=true a missing one is a failure.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    found || super::can_run("this part of the test", &[format!("{tool} is missing")])
}

/// The daemon under a wrapper (strace): the wrapper's child.
pub fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Run `steps` on a fresh mount in a thread and kill the daemon as `kill`
/// says. The dead mount is detached.
pub fn run_and_kill<S: Step>(rig: &Rig, steps: Arc<Vec<S>>, kill: Kill) -> Outcome {
    let injected;
    let mut m = match kill {
        Kill::AfterSteps(..) => rig.mount(),
        Kill::AtSyscall(call, nth) => {
            let inject = format!("inject={call}:signal=KILL:when={nth}");
            let trace = format!("trace={call}");
            injected = [
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                &trace,
                "-e",
                &inject,
            ];
            match Mount::union_foreground_wrapped(&rig.mnt, &injected, &rig.args()) {
                Ok(m) => m,
                // The Nth call came while the daemon prepared the workdir: a
                // crash at mount time, which the next mount must survive too.
                Err(e) if e.contains("signal: 9") => {
                    eprintln!("killed while mounting");
                    assert!(!is_mounted(&rig.mnt));
                    return Outcome {
                        done: 0,
                        interrupted: false,
                    };
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let done = Arc::new(AtomicUsize::new(0));
    let (mnt, done2, steps2) = (rig.mnt.clone(), done.clone(), steps.clone());
    let worker = std::thread::spawn(move || {
        for (i, s) in steps2.iter().enumerate() {
            if let Err(e) = s.run(&mnt) {
                return Some((i, e));
            }
            done2.store(i + 1, Ordering::SeqCst);
        }
        None
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let kill_after = match kill {
        Kill::AfterSteps(n, _) => n,
        Kill::AtSyscall(..) => usize::MAX,
    };
    while done.load(Ordering::SeqCst) < kill_after && !worker.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the operation loop made no progress (hung daemon?); daemon stderr: {}",
            m.daemon_stderr()
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    if let Kill::AfterSteps(_, jitter) = kill {
        let until = Instant::now() + jitter;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let stderr = m.daemon_stderr();
    if let Kill::AtSyscall(..) = kill
        && let Some(daemon) = m.pid().and_then(child_of)
    {
        // The loop ended before the injection: kill the daemon itself.
        let _ = Command::new("kill")
            .arg("-9")
            .arg(daemon.to_string())
            .status();
    }
    m.kill_daemon();
    let result = worker.join().unwrap();
    drop(m);
    assert!(!is_mounted(&rig.mnt), "the dead mount is still there");
    match result {
        None => Outcome {
            done: steps.len(),
            interrupted: false,
        },
        Some((i, e)) => {
            let errno = e.raw_os_error().unwrap_or(0);
            // A request the kernel was handing to a ring whose daemon had
            // died ends with ECANCELED (io_uring's cancel, in the kernel's
            // fuse/dev_uring.c); on /dev/fuse the connection's abort ends
            // it with ENOTCONN or ECONNABORTED.
            let from_the_kill = errno == libc::ENOTCONN
                || errno == libc::ECONNABORTED
                || (rig.io_uring && errno == libc::ECANCELED);
            assert!(
                from_the_kill,
                "step {i} failed with {e} (not from the kill); daemon stderr: {stderr}"
            );
            Outcome {
                done: i,
                interrupted: true,
            }
        }
    }
}

/// The crash loop shared by the kill -9 tests. Round r runs `plan(r)` (its
/// own group of objects) and kills the daemon: even rounds from outside after
/// a number of steps that moves through the loop from round to round, odd
/// rounds (with strace) on entering one of `syscalls`, the Nth call of it,
/// with N moving too. Then it remounts and runs `check(mnt, r', steps of r',
/// outcome of r')` for every round so far (a later crash must not undo an
/// earlier round). Then the tree must be sound and the same under kernel
/// overlayfs. With `keep` rounds checked, the group of the round before them
/// is removed (rm -r through the mount), so long runs stay linear in time.
pub fn crash_loop<S: Step>(
    what: &str,
    rig: &Rig,
    keep: usize,
    syscalls: &[&'static str],
    plan: impl Fn(usize) -> Vec<S>,
    check: impl Fn(&Path, usize, &[S], Outcome),
) {
    let n_rounds = rounds();
    let strace = have_tool("strace");
    let jitters = [0u64, 150, 600, 40, 1500, 300, 3000, 80];
    let mut history: Vec<(Arc<Vec<S>>, Outcome)> = Vec::new();
    for r in 0..n_rounds {
        let steps = Arc::new(plan(r));
        let n = steps.len();
        assert!(n >= 2);
        let j = r / 2;
        let kill = if r % 2 == 1 && strace {
            let call = syscalls[j % syscalls.len()];
            Kill::AtSyscall(call, 1 + (j / syscalls.len()) * 2 + j % 3)
        } else {
            // From the first step to the last but one, spread over the rounds.
            let after = 1 + (r * (n - 1) / n_rounds) % (n - 1);
            Kill::AfterSteps(after, Duration::from_micros(jitters[j % jitters.len()]))
        };
        let o = run_and_kill(rig, steps.clone(), kill);
        eprintln!(
            "{what}: round {r}: {kill:?}: {} of {n} steps returned{}",
            o.done,
            if o.interrupted { ", one in flight" } else { "" }
        );
        history.push((steps, o));
        let left_by_crash = rig.work_entries().len();
        if left_by_crash > 0 {
            eprintln!("{what}: round {r}: the crash left {left_by_crash} entries in work/");
        }
        rig.plant_leftover();
        let mut m = rig.mount();
        let left = rig.work_entries();
        assert!(
            left.is_empty(),
            "{what}: round {r}: work/ not emptied at mount: {left:?}"
        );
        for (g, (steps, o)) in history.iter().enumerate() {
            if r - g < keep {
                check(&rig.mnt, g, steps, *o);
            }
        }
        if let Some(old) = (r + 1).checked_sub(keep) {
            fs::remove_dir_all(rig.mnt.join(format!("g{old}")))
                .unwrap_or_else(|e| panic!("{what}: rm -r g{old}: {e}"));
        }
        let ours = snapshot(&rig.mnt);
        assert!(
            ours.problems.is_empty(),
            "{what}: round {r}: {:?}",
            ours.problems
        );
        if let Err(e) = m.unmount() {
            panic!("{what}: round {r}: unmount: {e}");
        }
        let theirs = rig.kernel_tree();
        assert_trees_eq(
            &format!("{what}: round {r}: after kill -9, kernel overlayfs over the same upper"),
            "unionmount",
            &ours,
            "kernel",
            &theirs,
        );
    }
    rig.check_lowers_unchanged();
    let interrupted = history.iter().filter(|(_, o)| o.interrupted).count();
    eprintln!("{what}: {n_rounds} rounds, {interrupted} killed with a step in flight");
    assert!(
        interrupted > 0,
        "{what}: no round was killed in the middle of its loop: the test proved nothing"
    );
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

pub fn exists(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) if errno(&e) == libc::ENOENT => false,
        Err(e) => panic!("lstat {}: {e}", p.display()),
    }
}

/// Write and fsync a new file.
pub fn write_synced(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A file created by a step in `state` is absent, whole, or (in flight)
/// possibly created but not yet written.
pub fn check_created(p: &Path, data: &[u8], state: State) {
    let got = match fs::read(p) {
        Ok(d) => Some(d),
        Err(e) if errno(&e) == libc::ENOENT => None,
        Err(e) => panic!("read {}: {e}", p.display()),
    };
    match (state, got) {
        (State::Done, Some(d)) if d == data => {}
        (State::NotBegun, None) | (State::InFlight, None) => {}
        (State::InFlight, Some(d)) if d == data || d.is_empty() => {}
        (s, d) => panic!(
            "{}: step {s:?} but the file is {:?}",
            p.display(),
            d.map(|d| String::from_utf8_lossy(&d).into_owned())
        ),
    }
}
