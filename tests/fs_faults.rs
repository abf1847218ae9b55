//! Crashes and faults of the filesystem daemon.
//!
//! - kill -9 of the daemon in the middle of: directory renames that need a
//!   redirect (populated lower directories), hard-link copy-ups (index
//!   entries), metadata changes of big lower files (each copies the file up
//!   first), metadata-only copy-ups (`metacopy=on`) followed by the data's
//!   copy-up at an append, and whiteout creation (unlink, rmdir, rm -r of lower names). Each
//!   round runs a loop of such operations and kills the daemon at another
//!   point: from outside after a number of them plus a short spin, or (with
//!   strace's fault injection) with SIGKILL on entering its Nth call of a
//!   syscall that changes the upper (rename, link, mknod, setxattr, …), so
//!   that crashes land between any two changes an operation makes. After
//!   each kill it mounts again and checks:
//!   every operation that returned is there (and what was written and
//!   fsync'ed), every operation not begun is not, the one in flight is
//!   wholly done or not at all (never a partial file, never a name missing or
//!   doubled, never a half-linked group), `work/` is empty after the mount
//!   (a leftover planted before it is gone too), and kernel overlayfs mounted
//!   over the same layers, upper and workdir shows the same tree.
//! - ENOSPC on a small tmpfs upper: writes and a copy-up larger than the free
//!   space fail with ENOSPC, as on kernel overlayfs, leave nothing behind, and
//!   the same copy-up works once space is freed.
//! - EMFILE: the daemon under `prlimit --nofile=256:256` serves stat, read,
//!   create and copy-up of many more files than that without a failure.
//! - volatile: a volatile mount marks `WORKDIR/work/incompat/volatile` (the
//!   kernel's marker); after a crash, the next mount (volatile or not) is
//!   refused with a one-line message, and so does kernel overlayfs; removing
//!   the marker lets it mount; a clean unmount removes the marker.
//!
//! Environment (for the long forms):
//! - `UNIONMOUNT_FAULT_ROUNDS`: kill -9 rounds per crash test (default 12; each
//!   round kills at another point of its operation loop).
//! - `UNIONMOUNT_FAULT_FILES`: files the EMFILE test stats, reads and creates
//!   (a quarter of them it copies up; default 20000, 100000 is the long form).
//!
//! The tests need root, /dev/fuse and overlayfs, and `strace` and `prlimit`
//! (./test installs them); under `CI=true` a missing one is a failure. No test
//! here asserts anything about time.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::snapshot::{Tree, assert_raw_unchanged};
use common::{
    Dialect, LAYER_MTIME, Layer, Meta, Mount, Scratch, assert_trees_eq, is_mounted, kernel_opts,
    raw_checksum, snapshot, subject_is_kernel, sys, union_opts,
};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rounds() -> usize {
    env_num("UNIONMOUNT_FAULT_ROUNDS", 12).max(1)
}

/// Whether this test can run here (root, /dev/fuse, overlayfs; a daemon to kill).
fn can_run() -> bool {
    if !common::require_mounts() {
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
struct Rig {
    _s: Scratch,
    lowers: Vec<PathBuf>,
    up: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    kmnt: PathBuf,
    /// appended to the kernel's mount options (",index=on" for hard links)
    kernel_extra: &'static str,
    /// appended to unionmount's mount options
    union_extra: &'static str,
    lower_sums: Vec<std::collections::BTreeMap<PathBuf, String>>,
}

impl Rig {
    fn new(layers: &[Layer], kernel_extra: &'static str) -> Rig {
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
            lower_sums,
            _s: s,
        }
    }

    fn args(&self) -> Vec<OsString> {
        vec![
            "-o".into(),
            (union_opts(&self.lowers, Some((&self.up, &self.work))) + self.union_extra).into(),
        ]
    }

    fn mount(&self) -> Mount {
        Mount::union_foreground(&self.mnt, &self.args()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Entries under the workdir's `work/`.
    fn work_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.work.join("work"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Leave something in `work/` as a crash would (a half-built temporary
    /// directory with a file inside), to prove the next mount empties it.
    fn plant_leftover(&self) {
        let d = self.work.join("work").join("#dead.1");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub").join("half"), "half a copy").unwrap();
        fs::write(self.work.join("work").join("#dead.2"), "partial").unwrap();
    }

    /// The tree kernel overlayfs shows over the same layers, upper and workdir.
    fn kernel_tree(&self) -> Tree {
        let opts = kernel_opts(&self.lowers, Some((&self.up, &self.work))) + self.kernel_extra;
        let mut k = Mount::kernel(&self.kmnt, &opts)
            .unwrap_or_else(|e| panic!("kernel overlayfs over the crashed upper: {e} (dmesg)"));
        let t = snapshot(&self.kmnt);
        k.unmount().unwrap();
        t
    }

    fn check_lowers_unchanged(&self) {
        for (l, before) in self.lowers.iter().zip(&self.lower_sums) {
            assert_raw_unchanged(l, before, &raw_checksum(l));
        }
    }
}

/// How far one step of an operation loop got when the daemon was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Done,
    InFlight,
    NotBegun,
}

/// Steps [0, done) returned; step `done` was in flight if `interrupted`.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    done: usize,
    interrupted: bool,
}

impl Outcome {
    fn state(&self, i: usize) -> State {
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
trait Step: Send + Sync + 'static {
    fn run(&self, mnt: &Path) -> io::Result<()>;
}

/// Where the daemon dies.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// kill -9 from outside once this many steps returned, after a short spin
    AfterSteps(usize, Duration),
    /// SIGKILL on entering the daemon's Nth call of this syscall (counted per
    /// thread), which is not made: strace's fault injection, to stop between
    /// any two changes an operation makes to the upper
    AtSyscall(&'static str, usize),
}

/// Is a command on PATH? Under CI=true a missing one is a failure.
fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is needed by this test under CI=true (./test installs it)");
        }
        eprintln!("{tool} is missing: its part of the test is skipped");
    }
    found
}

/// The daemon under a wrapper (strace): the wrapper's child.
fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Run `steps` on a fresh mount in a thread and kill the daemon as `kill`
/// says. The dead mount is detached.
fn run_and_kill<S: Step>(rig: &Rig, steps: Arc<Vec<S>>, kill: Kill) -> Outcome {
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
            assert!(
                errno == libc::ENOTCONN || errno == libc::ECONNABORTED,
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
fn crash_loop<S: Step>(
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

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn exists(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) if errno(&e) == libc::ENOENT => false,
        Err(e) => panic!("lstat {}: {e}", p.display()),
    }
}

/// Write and fsync a new file.
fn write_synced(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A file created by a step in `state` is absent, whole, or (in flight)
/// possibly created but not yet written.
fn check_created(p: &Path, data: &[u8], state: State) {
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

// ---------------------------------------------------------------------------
// kill -9 during directory renames with redirects

const REN_DIRS: usize = 8;

/// What the destination of directory k's rename is: 0 a free name (the source
/// merged with a new upper file first), 1 a lower directory whose one file was
/// removed (an upper directory of whiteouts, replaced), 2 a lower directory
/// removed (an upper whiteout, replaced), 3 a free name (the source only in
/// the lowers).
fn ren_kind(k: usize) -> usize {
    k % 4
}

enum RenStep {
    /// write and fsync a new file in a lower directory (copying it up)
    Write(PathBuf, String),
    Unlink(PathBuf),
    Rmdir(PathBuf),
    /// rename a lower (or merged) directory into another lower directory
    Rename(PathBuf, PathBuf),
}

impl Step for RenStep {
    fn run(&self, mnt: &Path) -> io::Result<()> {
        match self {
            RenStep::Write(p, data) => write_synced(&mnt.join(p), data.as_bytes()),
            RenStep::Unlink(p) => fs::remove_file(mnt.join(p)),
            RenStep::Rmdir(p) => fs::remove_dir(mnt.join(p)),
            RenStep::Rename(a, b) => fs::rename(mnt.join(a), mnt.join(b)),
        }
    }
}

fn ren_layers(rounds: usize) -> Vec<Layer> {
    let (mut l0, mut l1) = (Layer::new(), Layer::new());
    for r in 0..rounds {
        l0 = l0.file(&format!("g{r}/dst/keep"), "keep");
        for k in 0..REN_DIRS {
            for i in 0..4 {
                l0 = l0.file(&format!("g{r}/src/d{k}/f{i}"), format!("l0 {r} {k} {i}"));
            }
            l0 = l0.file(&format!("g{r}/src/d{k}/sub/deep"), "deep");
            l1 = l1.file(&format!("g{r}/src/d{k}/low"), format!("l1 {r} {k}"));
            l1 = l1.file(&format!("g{r}/src/d{k}/sub/lowdeep"), "lowdeep");
            match ren_kind(k) {
                1 => l1 = l1.file(&format!("g{r}/dst/d{k}/x"), "x"),
                2 => l1 = l1.dir(&format!("g{r}/dst/d{k}")),
                _ => {}
            }
        }
    }
    vec![l0, l1]
}

fn ren_plan(r: usize) -> Vec<RenStep> {
    let mut steps = Vec::new();
    for k in 0..REN_DIRS {
        match ren_kind(k) {
            0 => steps.push(RenStep::Write(
                format!("g{r}/src/d{k}/new").into(),
                format!("new {r} {k}"),
            )),
            1 => steps.push(RenStep::Unlink(format!("g{r}/dst/d{k}/x").into())),
            2 => steps.push(RenStep::Rmdir(format!("g{r}/dst/d{k}").into())),
            _ => {}
        }
        steps.push(RenStep::Rename(
            format!("g{r}/src/d{k}").into(),
            format!("g{r}/dst/d{k}").into(),
        ));
    }
    steps
}

/// Names of a directory, sorted; None if it is not there.
fn listing(p: &Path) -> Option<Vec<String>> {
    if !exists(p) {
        return None;
    }
    let mut names = sys::names(p).unwrap_or_else(|e| panic!("list {}: {e}", p.display()));
    names.sort();
    Some(names)
}

fn ren_check(mnt: &Path, r: usize, steps: &[RenStep], o: Outcome) {
    for k in 0..REN_DIRS {
        let src = mnt.join(format!("g{r}/src/d{k}"));
        let dst = mnt.join(format!("g{r}/dst/d{k}"));
        // The steps of directory k: the one before its rename (if any), the rename.
        let mine: Vec<(usize, &RenStep)> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| match s {
                RenStep::Write(p, _) => p.starts_with(format!("g{r}/src/d{k}")),
                RenStep::Unlink(p) | RenStep::Rmdir(p) => p.starts_with(format!("g{r}/dst/d{k}")),
                RenStep::Rename(a, _) => a.ends_with(format!("d{k}")),
            })
            .collect();
        let rename_state = o.state(mine.last().unwrap().0);
        let before = (mine.len() == 2).then(|| (o.state(mine[0].0), mine[0].1));
        let (at_src, at_dst) = (listing(&src), listing(&dst));
        let is_d =
            |l: &Option<Vec<String>>| l.as_ref().is_some_and(|n| n.iter().any(|x| x == "f0"));
        let at = match (is_d(&at_src), is_d(&at_dst), rename_state) {
            (true, true, _) => panic!("round {r}: d{k} shows at both names after the crash"),
            (false, false, _) => {
                panic!("round {r}: d{k} is gone after the crash (src {at_src:?}, dst {at_dst:?})")
            }
            (true, false, State::NotBegun | State::InFlight) => {
                // Not moved: the destination is as the step before left it.
                let empty: Vec<String> = Vec::new();
                let x = vec!["x".to_string()];
                let (old, new) = match ren_kind(k) {
                    1 => (Some(x), Some(empty)),
                    2 => (Some(empty), None),
                    _ => (None, None),
                };
                let ok = match before.map(|(s, _)| s) {
                    Some(State::Done) => at_dst == new,
                    Some(State::InFlight) => at_dst == old || at_dst == new,
                    _ => at_dst == old,
                };
                assert!(
                    ok,
                    "round {r}: d{k} not moved ({rename_state:?}); its destination shows {at_dst:?}"
                );
                src
            }
            (false, true, State::Done | State::InFlight) => {
                assert!(
                    at_src.is_none(),
                    "round {r}: d{k} moved, its old name shows {at_src:?}"
                );
                dst
            }
            (_, _, s) => panic!("round {r}: d{k}: rename {s:?} but src/dst is the other way"),
        };
        let mut want: Vec<String> = ["f0", "f1", "f2", "f3", "low", "sub"]
            .map(String::from)
            .to_vec();
        let new = at.join("new");
        if let Some((ws, RenStep::Write(..))) = before {
            check_created(&new, format!("new {r} {k}").as_bytes(), ws);
            if exists(&new) {
                want.push("new".into());
            }
        }
        want.sort();
        assert_eq!(
            listing(&at).unwrap(),
            want,
            "round {r}: {} lists",
            at.display()
        );
        for i in 0..4 {
            assert_eq!(
                fs::read_to_string(at.join(format!("f{i}"))).unwrap(),
                format!("l0 {r} {k} {i}")
            );
        }
        assert_eq!(
            fs::read_to_string(at.join("low")).unwrap(),
            format!("l1 {r} {k}")
        );
        assert_eq!(
            listing(&at.join("sub")).unwrap(),
            ["deep", "lowdeep"],
            "round {r}: {}/sub",
            at.display()
        );
    }
    assert_eq!(
        fs::read_to_string(mnt.join(format!("g{r}/dst/keep"))).unwrap(),
        "keep"
    );
}

#[test]
fn kill_9_during_directory_renames_with_redirect() {
    if !can_run() {
        return;
    }
    let rig = Rig::new(&ren_layers(rounds()), "");
    crash_loop(
        "dir renames",
        &rig,
        usize::MAX,
        &[
            "renameat2",
            "setxattr",
            "mkdirat",
            "mknodat",
            "utimensat",
            "unlinkat",
        ],
        ren_plan,
        ren_check,
    );
}

// ---------------------------------------------------------------------------
// kill -9 during hard-link copy-ups

const HL_GROUPS: usize = 12;

/// The three names of lower hard-link group k of round r.
fn hl_names(r: usize, k: usize) -> [PathBuf; 3] {
    [
        format!("g{r}/h{k}/a").into(),
        format!("g{r}/h{k}/b").into(),
        format!("g{r}/other/c{k}").into(),
    ]
}

fn hl_old(r: usize, k: usize) -> Vec<u8> {
    format!("old hard-linked data of group {r}.{k}").into_bytes()
}

fn hl_new(r: usize, k: usize) -> Vec<u8> {
    let mut d = hl_old(r, k);
    d[..4].copy_from_slice(b"NEW!");
    d
}

fn hl_layers(rounds: usize) -> Vec<Layer> {
    let mut l0 = Layer::new();
    for r in 0..rounds {
        for k in 0..HL_GROUPS {
            let [a, b, c] = hl_names(r, k).map(|p| p.display().to_string());
            l0 = l0.file(&a, hl_old(r, k)).hardlink(&b, &a).hardlink(&c, &a);
        }
    }
    vec![l0, Layer::new().file("other-layer", "x")]
}

/// Write into one name of a lower group (copying the group up), fsync.
struct HlStep(PathBuf);

impl Step for HlStep {
    fn run(&self, mnt: &Path) -> io::Result<()> {
        let f = fs::OpenOptions::new().write(true).open(mnt.join(&self.0))?;
        f.write_all_at(b"NEW!", 0)?;
        f.sync_all()
    }
}

fn hl_plan(r: usize) -> Vec<HlStep> {
    (0..HL_GROUPS)
        .map(|k| HlStep(hl_names(r, k)[k % 3].clone()))
        .collect()
}

fn hl_check(mnt: &Path, r: usize, _steps: &[HlStep], o: Outcome) {
    for k in 0..HL_GROUPS {
        let names = hl_names(r, k);
        let stats: Vec<_> = names
            .iter()
            .map(|p| {
                sys::lstat(&mnt.join(p))
                    .unwrap_or_else(|e| panic!("round {r}: {} after the crash: {e}", p.display()))
            })
            .collect();
        let datas: Vec<Vec<u8>> = names
            .iter()
            .map(|p| fs::read(mnt.join(p)).unwrap())
            .collect();
        for (p, st) in names.iter().zip(&stats) {
            assert_eq!(
                st.st_nlink,
                3,
                "round {r}: {} shows {} links, its group has 3",
                p.display(),
                st.st_nlink
            );
            assert_eq!(
                st.st_ino,
                stats[0].st_ino,
                "round {r}: {} left its group",
                p.display()
            );
        }
        assert!(
            datas.iter().all(|d| *d == datas[0]),
            "round {r}: names of group {k} show different data: {datas:?}"
        );
        let (old, new) = (hl_old(r, k), hl_new(r, k));
        match (o.state(k), &datas[0]) {
            (State::Done, d) if *d == new => {}
            (State::NotBegun, d) if *d == old => {}
            (State::InFlight, d) if *d == new || *d == old => {}
            (s, d) => panic!(
                "round {r}: group {k} ({s:?}) shows {:?}",
                String::from_utf8_lossy(d)
            ),
        }
    }
}

#[test]
fn kill_9_during_hard_link_copy_ups() {
    if !can_run() {
        return;
    }
    // Kernel overlayfs keeps lower hard-link groups together only with index=on.
    let rig = Rig::new(&hl_layers(rounds()), ",index=on");
    crash_loop(
        "hard-link copy-ups",
        &rig,
        usize::MAX,
        &["linkat", "renameat2", "setxattr", "fsync"],
        hl_plan,
        hl_check,
    );
    let index: Vec<_> = fs::read_dir(rig.work.join("index")).unwrap().collect();
    assert!(!index.is_empty(), "no index entries were made");
}

// ---------------------------------------------------------------------------
// kill -9 during metadata changes of big lower files

const BIG_FILES: usize = 3;
const BIG_SIZE: usize = 4 << 20;

fn big_data(r: usize, k: usize) -> Vec<u8> {
    common::pattern(BIG_SIZE, (r * BIG_FILES + k) as u8)
}

fn big_path(r: usize, k: usize) -> PathBuf {
    format!("g{r}/big{k}").into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaChange {
    Chown,
    Chmod,
    Xattr,
    Utimes,
}

const META_CHANGES: [MetaChange; 4] = [
    MetaChange::Chown,
    MetaChange::Chmod,
    MetaChange::Xattr,
    MetaChange::Utimes,
];

struct MetaStep {
    path: PathBuf,
    k: usize,
    r: usize,
    change: MetaChange,
}

fn meta_new_mtime(k: usize) -> i64 {
    1_234_567_000 + k as i64
}

impl Step for MetaStep {
    fn run(&self, mnt: &Path) -> io::Result<()> {
        let p = mnt.join(&self.path);
        let k = self.k as u32;
        match self.change {
            MetaChange::Chown => sys::lchown(&p, 1000 + k, 2000 + k),
            MetaChange::Chmod => sys::chmod(&p, 0o600),
            MetaChange::Xattr => {
                sys::lsetxattr(&p, "user.tag", format!("tag {} {k}", self.r).as_bytes())
            }
            MetaChange::Utimes => {
                sys::lutimes(&p, (meta_new_mtime(self.k), 0), (meta_new_mtime(self.k), 0))
            }
        }
    }
}

fn meta_layers(rounds: usize) -> Vec<Layer> {
    let mut l1 = Layer::new();
    for r in 0..rounds {
        for k in 0..BIG_FILES {
            l1 = l1.file_with(
                &big_path(r, k).display().to_string(),
                big_data(r, k),
                Meta::mode(0o644),
            );
        }
    }
    vec![Layer::new().file("top", "t"), l1]
}

fn meta_plan(r: usize) -> Vec<MetaStep> {
    let mut steps = Vec::new();
    for k in 0..BIG_FILES {
        for change in META_CHANGES {
            steps.push(MetaStep {
                path: big_path(r, k),
                k,
                r,
                change,
            });
        }
    }
    steps
}

fn meta_check(mnt: &Path, r: usize, steps: &[MetaStep], o: Outcome) {
    for k in 0..BIG_FILES {
        let p = mnt.join(big_path(r, k));
        let data = fs::read(&p).unwrap_or_else(|e| panic!("round {r}: read {}: {e}", p.display()));
        assert!(
            data == big_data(r, k),
            "round {r}: {} is not the lower's data after the crash ({} bytes; a partial copy?)",
            p.display(),
            data.len()
        );
        let st = sys::lstat(&p).unwrap();
        let tag = sys::lgetxattr(&p, "user.tag").ok();
        for (i, s) in steps.iter().enumerate().filter(|(_, s)| s.k == k) {
            let k32 = k as u32;
            let (is_old, is_new) = match s.change {
                MetaChange::Chown => (
                    (st.st_uid, st.st_gid) == (0, 0),
                    (st.st_uid, st.st_gid) == (1000 + k32, 2000 + k32),
                ),
                MetaChange::Chmod => (st.st_mode & 0o7777 == 0o644, st.st_mode & 0o7777 == 0o600),
                MetaChange::Xattr => (
                    tag.is_none(),
                    tag.as_deref() == Some(format!("tag {r} {k}").as_bytes()),
                ),
                MetaChange::Utimes => {
                    (st.st_mtime == LAYER_MTIME, st.st_mtime == meta_new_mtime(k))
                }
            };
            let ok = match o.state(i) {
                State::Done => is_new,
                State::NotBegun => is_old,
                State::InFlight => is_old || is_new,
            };
            assert!(
                ok,
                "round {r}: {} {:?} was {:?} but shows uid {} gid {} mode {:o} tag {tag:?} mtime {}",
                p.display(),
                s.change,
                o.state(i),
                st.st_uid,
                st.st_gid,
                st.st_mode,
                st.st_mtime
            );
        }
    }
}

#[test]
fn kill_9_during_metadata_copy_ups() {
    if !can_run() {
        return;
    }
    let rig = Rig::new(&meta_layers(rounds()), "");
    crash_loop(
        "metadata copy-ups",
        &rig,
        2,
        &[
            "renameat2",
            "fchownat",
            "setxattr",
            "utimensat",
            "copy_file_range",
        ],
        meta_plan,
        meta_check,
    );
}

// ---------------------------------------------------------------------------
// kill -9 during metadata-only copy-ups and the data's copy-up after them

const APPENDED: &[u8] = b"appended and synced";

enum McStep {
    Chown(PathBuf, usize),
    Append(PathBuf),
}

impl Step for McStep {
    fn run(&self, mnt: &Path) -> io::Result<()> {
        match self {
            McStep::Chown(p, k) => sys::lchown(&mnt.join(p), 1000 + *k as u32, 7),
            McStep::Append(p) => {
                let mut f = fs::OpenOptions::new().append(true).open(mnt.join(p))?;
                f.write_all(APPENDED)?;
                f.sync_all()
            }
        }
    }
}

/// Each big file is chowned (its metadata copied up, its data left below),
/// then appended to (its data copied into the upper file, the mark dropped).
fn mc_plan(r: usize) -> Vec<McStep> {
    let mut steps = Vec::new();
    for k in 0..BIG_FILES {
        steps.push(McStep::Chown(big_path(r, k), k));
        steps.push(McStep::Append(big_path(r, k)));
    }
    steps
}

fn mc_check(mnt: &Path, r: usize, steps: &[McStep], o: Outcome) {
    for (i, s) in steps.iter().enumerate() {
        let state = o.state(i);
        match s {
            McStep::Chown(p, k) => {
                let st = sys::lstat(&mnt.join(p)).unwrap();
                let new = st.st_uid == 1000 + *k as u32;
                let ok = match state {
                    State::Done => new,
                    State::NotBegun => st.st_uid == 0,
                    State::InFlight => new || st.st_uid == 0,
                };
                assert!(
                    ok,
                    "round {r}: {} chown {state:?}, uid {}",
                    p.display(),
                    st.st_uid
                );
            }
            McStep::Append(p) => {
                let k = steps[..i]
                    .iter()
                    .filter(|s| matches!(s, McStep::Append(_)))
                    .count();
                let data = fs::read(mnt.join(p)).unwrap();
                let old = big_data(r, k);
                let whole = data.len() == old.len() + APPENDED.len()
                    && data[..old.len()] == old[..]
                    && &data[old.len()..] == APPENDED;
                let ok = match state {
                    State::Done => whole,
                    State::NotBegun => data == old,
                    State::InFlight => whole || data == old,
                };
                assert!(
                    ok,
                    "round {r}: {} append {state:?}: {} bytes that are neither the lower's \
                     data nor it with the append (a half-copied upper shown?)",
                    p.display(),
                    data.len()
                );
            }
        }
    }
}

#[test]
fn kill_9_during_metacopy_and_data_copy_ups() {
    if !can_run() {
        return;
    }
    let mut rig = Rig::new(&meta_layers(rounds()), ",metacopy=on,redirect_dir=on");
    rig.union_extra = ",metacopy=on";
    crash_loop(
        "metacopy copy-ups",
        &rig,
        2,
        &[
            "renameat2",
            "setxattr",
            "copy_file_range",
            "fsync",
            "removexattr",
            "utimensat",
        ],
        mc_plan,
        mc_check,
    );
}

// ---------------------------------------------------------------------------
// kill -9 during whiteout creation

const WH_FILES: usize = 24;

enum WhStep {
    Unlink(PathBuf),
    Rmdir(PathBuf),
    Create(PathBuf, String),
}

impl Step for WhStep {
    fn run(&self, mnt: &Path) -> io::Result<()> {
        match self {
            WhStep::Unlink(p) => fs::remove_file(mnt.join(p)),
            WhStep::Rmdir(p) => fs::remove_dir(mnt.join(p)),
            WhStep::Create(p, d) => write_synced(&mnt.join(p), d.as_bytes()),
        }
    }
}

fn wh_layers(rounds: usize) -> Vec<Layer> {
    let (mut l0, mut l1) = (Layer::new(), Layer::new());
    for r in 0..rounds {
        for k in 0..WH_FILES {
            l0 = l0.file(&format!("g{r}/w/f{k}"), format!("f {r} {k}"));
        }
        for k in 0..WH_FILES / 4 {
            l0 = l0.dir(&format!("g{r}/e/d{k}"));
            // the same directory in both lowers: a merged one
            l1 = l1.dir(&format!("g{r}/e/d{k}"));
        }
        for k in 0..WH_FILES / 8 {
            for i in 0..3 {
                l1 = l1.file(&format!("g{r}/n/d{k}/x{i}"), format!("x {r} {k} {i}"));
            }
            let a = format!("g{r}/hl/a{k}");
            l0 = l0
                .file(&a, format!("hl {r} {k}"))
                .hardlink(&format!("g{r}/hl/b{k}"), &a)
                .hardlink(&format!("g{r}/hl/c{k}"), &a);
        }
    }
    vec![l0, l1]
}

fn wh_plan(r: usize) -> Vec<WhStep> {
    let mut steps = Vec::new();
    for k in 0..WH_FILES {
        steps.push(WhStep::Unlink(format!("g{r}/w/f{k}").into()));
        if k % 4 == 1 {
            steps.push(WhStep::Rmdir(format!("g{r}/e/d{}", k / 4).into()));
        }
        if k % 8 == 2 {
            // rm -r of a lower directory: whiteouts inside, then the directory
            for i in 0..3 {
                steps.push(WhStep::Unlink(format!("g{r}/n/d{}/x{i}", k / 8).into()));
            }
            steps.push(WhStep::Rmdir(format!("g{r}/n/d{}", k / 8).into()));
        }
        if k % 8 == 5 {
            // one name of a lower hard-link group
            steps.push(WhStep::Unlink(format!("g{r}/hl/b{}", k / 8).into()));
        }
        if k % 6 == 3 {
            steps.push(WhStep::Create(
                format!("g{r}/w/new{k}").into(),
                format!("new {r} {k}"),
            ));
        }
    }
    steps
}

fn wh_check(mnt: &Path, r: usize, steps: &[WhStep], o: Outcome) {
    for (i, s) in steps.iter().enumerate() {
        let state = o.state(i);
        match s {
            WhStep::Unlink(p) | WhStep::Rmdir(p) => {
                let there = exists(&mnt.join(p));
                let ok = match state {
                    State::Done => !there,
                    State::NotBegun => there,
                    State::InFlight => true,
                };
                assert!(
                    ok,
                    "round {r}: {} is there: {there}, step {state:?}",
                    p.display()
                );
                if there && let WhStep::Unlink(p) = s {
                    // a name still there shows its whole lower file
                    let d = fs::read_to_string(mnt.join(p)).unwrap();
                    assert!(
                        d.starts_with("f ") || d.starts_with("x ") || d.starts_with("hl "),
                        "round {r}: {}: {d:?}",
                        p.display()
                    );
                }
            }
            WhStep::Create(p, d) => check_created(&mnt.join(p), d.as_bytes(), state),
        }
    }
    // What is left of a hard-link group counts its names right.
    for k in 0..WH_FILES / 8 {
        let names: Vec<PathBuf> = ["a", "b", "c"]
            .iter()
            .map(|n| mnt.join(format!("g{r}/hl/{n}{k}")))
            .filter(|p| exists(p))
            .collect();
        for p in &names {
            let st = sys::lstat(p).unwrap();
            assert_eq!(
                st.st_nlink as usize,
                names.len(),
                "round {r}: {} shows {} links; {} names are left",
                p.display(),
                st.st_nlink,
                names.len()
            );
            assert_eq!(fs::read_to_string(p).unwrap(), format!("hl {r} {k}"));
        }
    }
}

#[test]
fn kill_9_during_whiteout_creation() {
    if !can_run() {
        return;
    }
    // Removing one name of a lower hard-link group keeps the others' count in
    // the index, which kernel overlayfs reads with index=on.
    let rig = Rig::new(&wh_layers(rounds()), ",index=on");
    crash_loop(
        "whiteouts",
        &rig,
        usize::MAX,
        &[
            "mknodat",
            "renameat2",
            "linkat",
            "setxattr",
            "unlinkat",
            "renameat",
        ],
        wh_plan,
        wh_check,
    );
}

// ---------------------------------------------------------------------------
// ENOSPC on a small upper

const TMPFS_SIZE: u64 = 8 << 20;

/// Free bytes of the filesystem at `p`.
fn free_bytes(p: &Path) -> u64 {
    let st = sys::statfs(p).unwrap();
    st.f_bfree * st.f_bsize as u64
}

/// Write 1 MiB chunks to a new file until it fails; the error (if any).
fn fill(p: &Path) -> io::Result<u64> {
    let mut f = fs::File::create(p)?;
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    for _ in 0..64 {
        f.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

/// Open for writing without truncating (a copy-up with data), append a byte.
fn append_one(p: &Path) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(p)?;
    f.write_all(b"+")
}

/// One side of the ENOSPC comparison: lowers on disk, a small tmpfs holding
/// the upper and the workdir.
struct SmallUpper {
    name: &'static str,
    tmp: PathBuf,
    up: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    // Dropped in this order: the union mount, then the tmpfs under it.
    mount: Option<Mount>,
    _tmpfs: Mount,
}

impl SmallUpper {
    fn new(s: &Scratch, name: &'static str, layers: &[Layer], kernel: bool) -> SmallUpper {
        let base = s.dir(name);
        let lowers: Vec<PathBuf> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = base.join(format!("l{i}"));
                l.build(&d, Dialect::Kernel);
                d
            })
            .collect();
        let tmp = s.dir(&format!("{name}/tmpfs"));
        let tmpfs = Mount::tmpfs(&tmp, &format!("size={TMPFS_SIZE},mode=0755"))
            .unwrap_or_else(|e| panic!("mount tmpfs: {e}"));
        let (up, work, mnt) = (
            tmp.join("up"),
            tmp.join("work"),
            s.dir(&format!("{name}/mnt")),
        );
        fs::create_dir(&up).unwrap();
        fs::create_dir(&work).unwrap();
        let mount = if kernel {
            Mount::kernel(&mnt, &kernel_opts(&lowers, Some((&up, &work)))).unwrap()
        } else {
            let args: Vec<OsString> =
                vec!["-o".into(), union_opts(&lowers, Some((&up, &work))).into()];
            Mount::union_foreground(&mnt, &args).unwrap()
        };
        SmallUpper {
            name,
            tmp,
            up,
            work,
            mnt,
            mount: Some(mount),
            _tmpfs: tmpfs,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for SmallUpper {
    fn drop(&mut self) {
        drop(self.mount.take());
    }
}

#[test]
fn enospc_on_a_small_upper() {
    if !can_run() {
        return;
    }
    let big = common::pattern(12 << 20, 1);
    let medium = common::pattern(3 << 20, 2);
    let layers = vec![
        Layer::new().file("small", "small").file("d/x", "x"),
        Layer::new().file("big", &big).file("medium", &medium),
    ];
    let s = Scratch::new();
    let k = SmallUpper::new(&s, "kernel", &layers, true);
    let u = SmallUpper::new(&s, "unionmount", &layers, false);
    let both = [&k, &u];
    let same = |what: &str, f: &dyn Fn(&SmallUpper) -> io::Result<()>| {
        let a = common::outcome(f(&k));
        let b = common::outcome(f(&u));
        assert_eq!(
            a, b,
            "{what}: kernel (left) and unionmount (right) disagree"
        );
        b
    };
    let enospc = Err(common::Errno(libc::ENOSPC));

    // A write that does not fit fails with ENOSPC; what did fit is kept.
    assert_eq!(
        same("fill the upper", &|x| fill(&x.p("fill")).map(|_| ())),
        enospc
    );
    for x in both {
        let len = fs::metadata(x.p("fill")).unwrap().len();
        assert!(len > TMPFS_SIZE / 2, "{}: only {len} bytes fit", x.name);
        assert_eq!(
            fs::read(x.p("small")).unwrap(),
            b"small",
            "{}: reads",
            x.name
        );
    }
    assert_eq!(
        same("create while full", &|x| fs::write(
            x.p("more"),
            vec![1u8; 1 << 20]
        )),
        enospc
    );
    same("remove the filler", &|x| fs::remove_file(x.p("fill"))).unwrap();
    let _ = same("remove the partial file", &|x| fs::remove_file(x.p("more")));

    // A copy-up larger than the whole upper fails and leaves nothing.
    let free_before: Vec<u64> = both.iter().map(|x| free_bytes(&x.tmp)).collect();
    assert_eq!(
        same("copy-up of a 12 MiB file", &|x| append_one(&x.p("big"))),
        enospc
    );
    for (x, before) in both.iter().zip(&free_before) {
        assert!(
            !x.up.join("big").exists(),
            "{}: a partial copy in the upper",
            x.name
        );
        assert!(
            fs::read(x.p("big")).unwrap() == big,
            "{}: big is not the lower's",
            x.name
        );
        let after = free_bytes(&x.tmp);
        assert!(
            after + (64 << 10) >= *before,
            "{}: the failed copy-up still holds {} KiB",
            x.name,
            (before - after) >> 10
        );
    }
    let left: Vec<_> = fs::read_dir(u.work.join("work"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "unionmount: work/ keeps {left:?}");

    // A copy-up larger than what is left fails; the mount works on; once
    // space is freed the same copy-up succeeds.
    same("a 6 MiB upper file", &|x| {
        fs::write(x.p("hog"), vec![7u8; 6 << 20])
    })
    .unwrap();
    assert_eq!(
        same("copy-up of a 3 MiB file into 2 MiB", &|x| append_one(
            &x.p("medium")
        )),
        enospc
    );
    for x in both {
        assert!(
            !x.up.join("medium").exists(),
            "{}: a partial copy in the upper",
            x.name
        );
        assert!(
            fs::read(x.p("medium")).unwrap() == medium,
            "{}: medium",
            x.name
        );
    }
    same("a small copy-up still fits", &|x| append_one(&x.p("small"))).unwrap();
    same("mkdir", &|x| fs::create_dir(x.p("d/newdir"))).unwrap();
    same("unlink of a lower file", &|x| fs::remove_file(x.p("d/x"))).unwrap();
    same("free the space", &|x| fs::remove_file(x.p("hog"))).unwrap();
    same("the same copy-up again", &|x| append_one(&x.p("medium"))).unwrap();
    for x in both {
        let mut want = medium.clone();
        want.push(b'+');
        assert!(
            fs::read(x.p("medium")).unwrap() == want,
            "{}: medium after copy-up",
            x.name
        );
    }
    // Kernel overlayfs over layers on two filesystems (without xino) shows each
    // layer's st_dev and raw d_ino: compare what the trees hold, and ours must
    // be sound.
    let mut theirs = snapshot(&k.mnt);
    theirs.problems.clear();
    assert_trees_eq(
        "after ENOSPC and recovery",
        "kernel",
        &theirs,
        "unionmount",
        &snapshot(&u.mnt),
    );
}

// ---------------------------------------------------------------------------
// EMFILE: many files, few descriptors

const FD_LIMIT: usize = 256;

/// Descriptors a process holds now.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn many_files_under_a_low_fd_limit() {
    if !can_run() || !have_tool("prlimit") {
        return;
    }
    let n = env_num("UNIONMOUNT_FAULT_FILES", 20_000).max(FD_LIMIT * 4);
    let per_dir = 500;
    let s = Scratch::new();
    let [l0, l1, up, work, mnt] = s.dirs(["l0", "l1", "up", "work", "mnt"]);
    let rel = |i: usize| format!("d{}/f{i}", i / per_dir);
    for i in 0..n {
        // Half the files in each lower: every directory is merged.
        let root = if i % 2 == 0 { &l0 } else { &l1 };
        let p = root.join(rel(i));
        if i % per_dir < 2 {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        fs::write(&p, format!("lower {i}")).unwrap();
    }
    let lowers = vec![l0, l1];
    let args: Vec<OsString> = vec!["-o".into(), union_opts(&lowers, Some((&up, &work))).into()];
    let limit = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let mut m = Mount::union_foreground_wrapped(&mnt, &["prlimit", &limit], &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = m.pid().unwrap();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        line.split_whitespace()
            .filter(|w| *w == FD_LIMIT.to_string())
            .count()
            == 2,
        "the daemon does not run under the limit: {line}"
    );
    let mut failures: Vec<String> = Vec::new();
    let most_fds = std::cell::Cell::new(0);
    let note = |what: &str, i: usize, r: io::Result<()>, failures: &mut Vec<String>| {
        if let Err(e) = r {
            failures.push(format!("{what} {}: {e}", rel(i)));
        }
        if i.is_multiple_of(1000) {
            most_fds.set(most_fds.get().max(open_fds(pid)));
        }
    };
    // stat and read every file, one at a time, as `find | xargs cat` does.
    for i in 0..n {
        let p = mnt.join(rel(i));
        note(
            "stat",
            i,
            fs::symlink_metadata(&p).map(|_| ()),
            &mut failures,
        );
        let r = fs::read(&p).and_then(|d| {
            if d == format!("lower {i}").as_bytes() {
                Ok(())
            } else {
                Err(io::Error::other("wrong data"))
            }
        });
        note("read", i, r, &mut failures);
    }
    // Many files open at once (an open file is a descriptor of the daemon's,
    // as with fuse-overlayfs; half the limit must do).
    let held: Vec<fs::File> = (0..FD_LIMIT / 2)
        .filter_map(|i| match fs::File::open(mnt.join(rel(i * 7 % n))) {
            Ok(f) => Some(f),
            Err(e) => {
                failures.push(format!("open {} with others open: {e}", rel(i * 7 % n)));
                None
            }
        })
        .collect();
    for f in &held {
        let mut b = [0u8; 6];
        if let Err(e) = f.read_exact_at(&mut b, 0) {
            failures.push(format!("read with others open: {e}"));
        }
    }
    most_fds.set(most_fds.get().max(open_fds(pid)));
    drop(held);
    // A listing of every directory.
    let listed: usize = (0..n.div_ceil(per_dir))
        .map(|d| sys::names(&mnt.join(format!("d{d}"))).map_or(0, |v| v.len()))
        .sum();
    assert_eq!(listed, n, "listings of the merged directories");
    // Create as many new files, then copy every fourth lower file up (a write
    // each; a copy-up is fsync'ed, which is what takes the time).
    for i in 0..n {
        let p = mnt.join(format!("d{}/new{i}", i / per_dir));
        note(
            "create",
            i,
            fs::write(&p, format!("new {i}")),
            &mut failures,
        );
    }
    for i in (0..n).step_by(4) {
        note("copy-up", i, append_one(&mnt.join(rel(i))), &mut failures);
    }
    let settled = open_fds(pid);
    eprintln!(
        "EMFILE: under a {FD_LIMIT}-descriptor limit, {n} files stat'ed and read, {n} created, \
         {} copied up: {} failures; the daemon held at most {} descriptors (sampled), \
         {settled} at the end",
        n.div_ceil(4),
        failures.len(),
        most_fds.get()
    );
    assert!(
        failures.is_empty(),
        "{} operations failed under the fd limit (kernel overlayfs has none), e.g. {:?}; daemon stderr: {}",
        failures.len(),
        &failures[..failures.len().min(5)],
        m.daemon_stderr()
    );
    // No descriptor per inode: what the daemon holds does not grow with the files.
    assert!(
        settled < FD_LIMIT / 2,
        "the daemon holds {settled} descriptors after touching {n} files"
    );
    // Everything is there, in the upper too (spot checks).
    for i in (0..n).step_by(97) {
        let suffix = if i % 4 == 0 { "+" } else { "" };
        assert_eq!(
            fs::read_to_string(mnt.join(rel(i))).unwrap(),
            format!("lower {i}{suffix}")
        );
        assert_eq!(
            fs::read_to_string(up.join(format!("d{}/new{i}", i / per_dir))).unwrap(),
            format!("new {i}")
        );
    }
    m.unmount().unwrap();
}

// ---------------------------------------------------------------------------
// volatile

/// `unionmount ARGS MNT` must fail: one line on stderr, nothing mounted.
fn refused(args: &[OsString], mnt: &Path) -> String {
    let mut cmd = Command::new(common::bin());
    cmd.args(args).arg(mnt);
    let (code, _out, err) = common::mount::run_with_timeout(&mut cmd, Duration::from_secs(20));
    if is_mounted(mnt) {
        drop(Mount::union_guard(mnt, None, None));
        panic!("mounted although it had to be refused (stderr {err:?})");
    }
    assert!(code != 0 && code != -1, "exit {code}, stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    err
}

#[test]
fn volatile_mount_marks_its_workdir_until_a_clean_unmount() {
    if !can_run() {
        return;
    }
    let rig = Rig::new(&[Layer::new().file("a", "lower a")], "");
    let marker = rig.work.join("work").join("incompat").join("volatile");
    let mut vargs = rig.args();
    vargs[1].push(",volatile");
    let kopts = kernel_opts(&rig.lowers, Some((&rig.up, &rig.work)));

    // A volatile mount marks the workdir as kernel overlayfs does.
    let mut m = Mount::union_foreground(&rig.mnt, &vargs).unwrap();
    assert!(
        marker.join("dirty").is_file(),
        "no {}/dirty",
        marker.display()
    );
    write_synced(&rig.mnt.join("kept"), b"kept").unwrap();
    append_one(&rig.mnt.join("a")).unwrap();
    m.kill_daemon();
    drop(m);

    // After the crash the next mount is refused, volatile or not, with a line
    // that says what to remove; the marker stays; the kernel refuses too.
    for args in [rig.args(), vargs.clone()] {
        let err = refused(&args, &rig.mnt);
        assert!(
            err.contains(&marker.display().to_string()) && err.contains("remove"),
            "the message names the marker and what to do: {err}"
        );
        let e = Mount::union_foreground(&rig.mnt, &args).err();
        assert!(e.is_some(), "a foreground mount is refused too");
    }
    assert!(
        marker.join("dirty").is_file(),
        "the refusal removed the marker"
    );
    match Mount::kernel(&rig.kmnt, &kopts) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "kernel: {e}"),
        Ok(_) => panic!("kernel overlayfs mounted a workdir our volatile mount left marked"),
    }

    // Removing the marker, as the message says, lets it mount, with what the
    // volatile mount wrote; a mount that is not volatile leaves no marker.
    fs::remove_dir_all(&marker).unwrap();
    let mut m = rig.mount();
    assert_eq!(fs::read(rig.mnt.join("kept")).unwrap(), b"kept");
    assert_eq!(fs::read(rig.mnt.join("a")).unwrap(), b"lower a+");
    m.unmount().unwrap();
    assert!(
        !marker.exists(),
        "a mount that is not volatile made the marker"
    );

    // A clean unmount of a volatile mount removes its marker (after syncfs):
    // both unionmount and the kernel then mount the workdir again.
    let mut m = Mount::union_foreground(&rig.mnt, &vargs).unwrap();
    assert!(marker.exists());
    fs::write(rig.mnt.join("second"), "second").unwrap();
    m.unmount().unwrap();
    assert!(
        !rig.work.join("work").join("incompat").exists(),
        "a clean volatile unmount left {}",
        marker.display()
    );
    let mut k = Mount::kernel(&rig.kmnt, &kopts).unwrap();
    assert_eq!(fs::read(rig.kmnt.join("second")).unwrap(), b"second");
    k.unmount().unwrap();
    let mut m = rig.mount();
    assert_eq!(fs::read(rig.mnt.join("second")).unwrap(), b"second");
    m.unmount().unwrap();

    // The kernel's own marker (it keeps it even after a clean unmount) is
    // refused the same way.
    let mut k = Mount::kernel(&rig.kmnt, &(kopts.clone() + ",volatile")).unwrap();
    k.unmount().unwrap();
    assert!(
        marker.join("dirty").is_file(),
        "kernel overlayfs left no marker"
    );
    let err = refused(&rig.args(), &rig.mnt);
    assert!(err.contains("volatile"), "{err}");
    fs::remove_dir_all(&marker).unwrap();
    let mut m = rig.mount();
    m.unmount().unwrap();
    rig.check_lowers_unchanged();
}
