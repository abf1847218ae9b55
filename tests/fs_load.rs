//! Load: many processes changing one merged tree at once (the file exerciser
//! is fs_exerciser.rs, the daemon's memory fs_memory.rs).
//!
//! - `concurrent_processes_agree_with_the_kernel_then_rm_rf`: 4 processes make
//!   random changes (create, write, truncate, rename, link, symlink, unlink,
//!   mkdir, rmdir, rm -r, chmod, user.* xattrs, readdir, read, stat) in the
//!   same directories of a merged tree whose lowers hold files, merged and
//!   opaque directories and whiteouts, in 4 phases of 600 operations each
//!   (9,600 per mount); every result and errno must be the kernel's for the
//!   same processes (see the comment above `PROCS` for why that comparison is
//!   exact), then the trees and the uppers at the end of each phase; finally
//!   `rm -rf` of everything succeeds and leaves only whiteouts.
//! - Regression tests for what the concurrent test found, in their smallest
//!   form.
//!
//! The CI form takes about a minute on 2 cores (debug build).
//!
//! Long form: `UNIONMOUNT_LOAD_LONG=1 UNIONMOUNT_TEST_TIMEOUT=7200 cargo test
//! --test fs_load -- --nocapture --test-threads=1` (a test mount's watchdog
//! must outlast the run; the long form refuses to start without it): 10
//! phases of 5,000 operations per process (200,000 per mount), 100,000
//! exerciser operations per file and mount, a 100,000-file tree with
//! 1,000,000 stats in 10 rounds and 1,000,000 open/close.
//!
//! `UNIONMOUNT_LOAD_SEED=N` runs with another seed (every run prints its
//! seed); `FS_LOAD_TRACE=1` prints each exerciser operation as it goes.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use support::ops::{self, Rng};
use support::sys::{self, RENAME_EXCHANGE, RENAME_NOREPLACE};
use support::{Both, Errno, Layer, Side, outcome};

// 1. Concurrent processes, compared with the kernel.
//
// How the comparison stays exact: every process owns its own names (p0_*,
// p1_*, …) in directories all processes share (the root and s0..s3), and
// everything below a directory it owns. A process's operations only ever name
// its own objects, and a listing of a shared directory is reduced to the
// process's own names. So the result of each operation depends only on that
// process's earlier operations, never on how the processes interleave —
// while the daemon sees them interleaved for real: the same parent
// directories copied up, listed, changed and renamed into by all processes at
// once, one inode table, one namespace lock. The operations come from a
// seeded generator that does not look at results, so the same processes run
// on kernel overlayfs (also concurrently) produce the reference log; the two
// logs must agree line by line; then, at the end of each phase (a quiescent
// point), the trees (without directory link counts: see
// `ops::without_dir_links`) and unionmount's upper as read by
// kernel overlayfs; after `rm -rf` of it all, the uppers themselves.
// ---------------------------------------------------------------------------

const PROCS: usize = 4;
const SHARED: [&str; 5] = ["", "s0", "s1", "s2", "s3"];
const OWN_NAMES: u64 = 6;
const WORKER_ENV: &str = "FS_LOAD_WORKER";

fn own(p: usize, i: u64) -> String {
    format!("p{p}_{i}")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Per shared directory and process: a lower file with a user xattr (name 0),
/// a merged directory with a deeper subtree (1), a file whited out (2, where
/// both layers have the directory), an opaque directory over lower content
/// (3), a top-layer file (4); name 5 is free. The root and s0 are in both layers, s1 only in the bottom one, s2 is
/// opaque in the top layer, s3 only in the top layer.
fn concurrent_lowers() -> Vec<Layer> {
    let mut top = Layer::new();
    let mut bottom = Layer::new();
    for s in SHARED {
        let in_top = s != "s1";
        let in_bottom = s != "s3";
        if s == "s2" {
            top = top.opaque(s);
        }
        for p in 0..PROCS {
            let n = |i: u64| join(s, &own(p, i));
            let sub = |i: u64, rest: &str| format!("{}/{rest}", n(i));
            if in_bottom {
                bottom = bottom
                    .file(&n(0), format!("bottom {s} {p}"))
                    .xattr(&n(0), "user.l", "low")
                    .file(&sub(1, &own(p, 0)), "bottom merged")
                    .file(&sub(1, &format!("{}/{}", own(p, 1), own(p, 2))), "deep")
                    .file(&n(2), "whited out")
                    .file(&sub(3, &own(p, 4)), "hidden by the opaque dir");
            }
            if in_top && in_bottom && s != "s2" {
                // Only over something: the kernel lists a whiteout in a
                // directory with nothing below it.
                top = top.whiteout(&n(2));
            }
            if in_top {
                top = top
                    .opaque(&n(3))
                    .file(&sub(3, &own(p, 5)), "in the opaque dir")
                    .file(&n(4), support::pattern(3000 + 500 * p, p as u8))
                    .file(&sub(1, &own(p, 3)), "top merged");
            }
        }
    }
    vec![top, bottom]
}

#[derive(Debug, Clone)]
enum Op {
    Create(String, u64),
    Write(String, u64, usize),
    Truncate(String, u64),
    Rename(String, String, u32),
    Link(String, String),
    Symlink(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    RmTree(String),
    Chmod(String, u32),
    SetXattr(String, &'static str, u8),
    RemoveXattr(String, &'static str),
    Readdir(String),
    Read(String),
    Stat(String),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Create(..) => "create",
            Op::Write(..) => "write",
            Op::Truncate(..) => "truncate",
            Op::Rename(..) => "rename",
            Op::Link(..) => "link",
            Op::Symlink(..) => "symlink",
            Op::Unlink(..) => "unlink",
            Op::Mkdir(..) => "mkdir",
            Op::Rmdir(..) => "rmdir",
            Op::RmTree(..) => "rm -r",
            Op::Chmod(..) => "chmod",
            Op::SetXattr(..) => "setxattr",
            Op::RemoveXattr(..) => "removexattr",
            Op::Readdir(..) => "readdir",
            Op::Read(..) => "read",
            Op::Stat(..) => "stat",
        }
    }
}

/// A directory process `p` may work in: a shared one, or one or two levels of
/// its own names below a shared one (which may or may not be directories).
fn gen_dir(rng: &mut Rng, p: usize) -> String {
    let mut d = rng.pick(&SHARED).to_string();
    let depth = rng.weighted(&[55, 30, 15]);
    for _ in 0..depth {
        d = join(&d, &own(p, rng.below(OWN_NAMES)));
    }
    d
}

fn gen_path(rng: &mut Rng, p: usize) -> String {
    let d = gen_dir(rng, p);
    join(&d, &own(p, rng.below(OWN_NAMES)))
}

fn gen_op(rng: &mut Rng, p: usize) -> Op {
    const XATTRS: [&str; 3] = ["user.a", "user.b", "user.l"];
    let w = [12, 10, 6, 10, 6, 2, 8, 8, 5, 2, 4, 6, 3, 8, 6, 6];
    match rng.weighted(&w) {
        0 => Op::Create(gen_path(rng, p), rng.next_u64()),
        1 => Op::Write(
            gen_path(rng, p),
            rng.below(6000),
            rng.range(1, 5000) as usize,
        ),
        2 => Op::Truncate(gen_path(rng, p), rng.below(8000)),
        3 => {
            let flags = *rng.pick(&[0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]);
            Op::Rename(gen_path(rng, p), gen_path(rng, p), flags)
        }
        4 => Op::Link(gen_path(rng, p), gen_path(rng, p)),
        5 => Op::Symlink(own(p, rng.below(OWN_NAMES)), gen_path(rng, p)),
        6 => Op::Unlink(gen_path(rng, p)),
        7 => Op::Mkdir(gen_path(rng, p)),
        8 => Op::Rmdir(gen_path(rng, p)),
        9 => Op::RmTree(gen_path(rng, p)),
        10 => Op::Chmod(gen_path(rng, p), *rng.pick(&[0o644, 0o600, 0o755, 0o700])),
        11 => Op::SetXattr(
            gen_path(rng, p),
            XATTRS[rng.below(2) as usize],
            rng.below(256) as u8,
        ),
        12 => Op::RemoveXattr(gen_path(rng, p), XATTRS[rng.below(3) as usize]),
        13 => Op::Readdir(gen_dir(rng, p)),
        14 => Op::Read(gen_path(rng, p)),
        _ => Op::Stat(gen_path(rng, p)),
    }
}

/// user.* xattrs and their values.
fn user_xattrs(p: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    Ok(sys::xattrs(p)?
        .into_iter()
        .filter(|(n, _)| n.starts_with("user."))
        .collect())
}

/// Apply one op of process `p` under `root`: what it returns is what the two
/// implementations must agree on.
fn apply(root: &Path, p: usize, op: &Op) -> io::Result<String> {
    let at = |s: &str| root.join(s);
    let none = |r: io::Result<()>| r.map(|()| String::new());
    match op {
        Op::Create(f, seed) => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(at(f))?;
            file.write_all(&ops::gen_data(*seed, (*seed % 3000) as usize))?;
            Ok(String::new())
        }
        Op::Write(f, off, len) => {
            let file = fs::OpenOptions::new().write(true).open(at(f))?;
            file.write_all_at(&ops::gen_data(*off ^ *len as u64, *len), *off)?;
            Ok(String::new())
        }
        Op::Truncate(f, len) => none(
            fs::OpenOptions::new()
                .write(true)
                .open(at(f))?
                .set_len(*len),
        ),
        Op::Rename(a, b, flags) => none(sys::renameat2(&at(a), &at(b), *flags)),
        Op::Link(a, b) => none(fs::hard_link(at(a), at(b))),
        Op::Symlink(target, l) => none(symlink(target, at(l))),
        Op::Unlink(f) => none(fs::remove_file(at(f))),
        Op::Mkdir(d) => none(fs::create_dir(at(d))),
        Op::Rmdir(d) => none(fs::remove_dir(at(d))),
        Op::RmTree(d) => none(fs::remove_dir_all(at(d))),
        Op::Chmod(f, mode) => none(sys::chmod(&at(f), *mode)),
        Op::SetXattr(f, name, v) => none(sys::lsetxattr(&at(f), name, &[*v])),
        Op::RemoveXattr(f, name) => none(sys::lremovexattr(&at(f), name)),
        Op::Readdir(d) => {
            // Other processes' names come and go meanwhile; ours must be listed
            // exactly once each (a duplicate shows in the result).
            let prefix = format!("p{p}_");
            let mine: Vec<String> = sys::names(&at(d))?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            Ok(mine.join(","))
        }
        Op::Read(f) => {
            let mut data = Vec::new();
            fs::File::open(at(f))?.read_to_end(&mut data)?;
            Ok(format!(
                "{} bytes {:016x}",
                data.len(),
                ops::hash_bytes(&data)
            ))
        }
        Op::Stat(f) => {
            let path = at(f);
            let st = sys::lstat(&path)?;
            let fmt = st.st_mode & libc::S_IFMT;
            let mut s = format!("mode={:o}", st.st_mode);
            // A directory's size and link count belong to the upper filesystem.
            if fmt != libc::S_IFDIR {
                s += &format!(" size={} nlink={}", st.st_size, st.st_nlink);
            }
            if fmt == libc::S_IFLNK {
                s += &format!(" target={:?}", fs::read_link(&path)?);
            }
            Ok(format!("{s} xattrs={:?}", user_xattrs(&path)?))
        }
    }
}

fn show(r: &Result<String, Errno>) -> String {
    match r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("{e:?}"),
    }
}

/// Worker process entry: run one process's operations and log every result.
#[test]
#[ignore = "a worker process of concurrent_processes_agree_with_the_kernel_then_rm_rf, which starts it"]
fn load_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        eprintln!("load_worker only runs as a worker process started by another test");
        return;
    };
    let f: Vec<&str> = spec.split('\t').collect();
    let (root, p, seed, n, log) = (
        Path::new(f[0]),
        f[1].parse::<usize>().unwrap(),
        f[2].parse::<u64>().unwrap(),
        f[3].parse::<u64>().unwrap(),
        Path::new(f[4]),
    );
    let mut out = fs::File::create(log).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let op = gen_op(&mut rng, p);
        let r = outcome(apply(root, p, &op));
        // One write per line: if the daemon hangs, the log shows where.
        writeln!(out, "{i} {op:?} => {}", show(&r)).unwrap();
    }
}

/// Run the processes of one phase on one side; their logs, one per process.
fn run_phase(side: &Side, phase: usize, seed: u64, n: u64) -> Vec<Vec<String>> {
    let log = |p: usize| side.base.join(format!("phase{phase}.p{p}.log"));
    let out = |p: usize| side.base.join(format!("phase{phase}.p{p}.out"));
    let mut children: Vec<_> = (0..PROCS)
        .map(|p| {
            let spec = format!(
                "{}\t{p}\t{}\t{n}\t{}",
                side.mnt.display(),
                process_seed(seed, phase, p),
                log(p).display()
            );
            ops::spawn_worker("load_worker", &[(WORKER_ENV, spec)], &out(p))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    for (p, c) in children.iter_mut().enumerate() {
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "{} phase {phase}: process {p} failed ({st}):\n{}",
                    side.name,
                    fs::read_to_string(out(p)).unwrap_or_default()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                let last = fs::read_to_string(log(p)).unwrap_or_default();
                panic!(
                    "{} phase {phase}: process {p} hung; its last operations:\n{}",
                    side.name,
                    tail(&last, 5)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (0..PROCS)
        .map(|p| {
            fs::read_to_string(log(p))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .collect()
}

fn process_seed(seed: u64, phase: usize, p: usize) -> u64 {
    seed.wrapping_mul(1_000_003) ^ ((phase as u64) << 32) ^ p as u64
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panic at the first line where the two logs of a process differ.
fn compare_logs(phase: usize, p: usize, k: &[String], u: &[String], u_name: &str) {
    for (i, (a, b)) in k.iter().zip(u).enumerate() {
        if a != b {
            let before = k[i.saturating_sub(8)..i].join("\n");
            panic!(
                "phase {phase}, process {p}, operation {i} differs:\n  kernel: {a}\n  {u_name}: {b}\n\
                 the process's operations before it (kernel's log):\n{before}"
            );
        }
    }
    assert_eq!(
        k.len(),
        u.len(),
        "phase {phase}, process {p}: {} operations on the kernel, {} on {u_name}",
        k.len(),
        u.len()
    );
}

/// `rm -rf` of everything in a mount's root, with the real tool.
fn rm_rf_contents(side: &Side) {
    let mut cmd = std::process::Command::new("rm");
    cmd.arg("-rf");
    for e in fs::read_dir(&side.mnt).unwrap() {
        cmd.arg(e.unwrap().path());
    }
    let (code, _, err) = support::mount::run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert_eq!(code, 0, "{}: rm -rf failed: {err}", side.name);
    let left: Vec<_> = fs::read_dir(&side.mnt).unwrap().collect();
    assert!(left.is_empty(), "{}: rm -rf left {left:?}", side.name);
}

#[test]
fn concurrent_processes_agree_with_the_kernel_then_rm_rf() {
    let long = ops::load_long();
    let Some(mut b) = Both::new(concurrent_lowers()) else {
        return;
    };
    let seed = ops::seed_from_env(ops::LOAD_SEED, 20_250_601);
    let (phases, per_phase) = if long { (10, 5000) } else { (4, 600) };
    let mut by_kind: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut per_process = [0u64; PROCS];
    for phase in 0..phases {
        let u_logs = run_phase(&b.u, phase, seed, per_phase);
        let k_logs = run_phase(&b.k, phase, seed, per_phase);
        for p in 0..PROCS {
            compare_logs(phase, p, &k_logs[p], &u_logs[p], b.u.name);
            // Count what ran, by kind, with how many succeeded.
            let mut rng = Rng::new(process_seed(seed, phase, p));
            for line in &u_logs[p] {
                let op = gen_op(&mut rng, p);
                let e = by_kind.entry(op.kind()).or_default();
                e.0 += 1;
                e.1 += u64::from(line.contains(" => ok"));
                per_process[p] += 1;
            }
        }
        ops::assert_same_trees(&b, &format!("after phase {phase}"));
        ops::assert_upper_reads_the_same(&b, &format!("after phase {phase}"));
    }
    let total: u64 = per_process.iter().sum();
    let ok: u64 = by_kind.values().map(|v| v.1).sum();
    eprintln!(
        "concurrent load: {PROCS} processes x {phases} phases x {per_phase} operations = {total} \
         operations per mount ({ok} succeeded), by kind (run, succeeded): {by_kind:?}"
    );
    // A generator that only produced errors would compare little (about a
    // third succeed: the others compare errno values).
    assert!(ok * 4 >= total, "only {ok} of {total} operations succeeded");
    for (kind, (n, good)) in &by_kind {
        assert!(*good > 0, "no {kind} ever succeeded ({n} tried)");
    }

    for side in b.sides() {
        rm_rf_contents(side);
    }
    b.check_trees("after rm -rf");
    b.check_uppers("after rm -rf");
    // What is left in the upper: whiteouts over the lowers' names and
    // directories (none after rm -rf of everything), nothing with data.
    let view = support::snapshot::upper_view(&b.u.upper, &b.k.lowers);
    let kept: Vec<_> = view
        .iter()
        .filter(|(p, line)| !p.as_os_str().is_empty() && !line.starts_with('w'))
        .collect();
    assert!(
        kept.is_empty(),
        "after rm -rf the upper holds more than whiteouts: {kept:?}"
    );
    assert!(
        view.len() > 1,
        "after rm -rf the upper holds no whiteouts over the lowers"
    );
    // Nothing half-made is left in work/; the shared whiteout every whiteout
    // links to stays there while mounted (kernel overlayfs keeps one too).
    let shared = b.u.work.join("work").join(unionfs::SHARED_WHITEOUT);
    let left: Vec<_> = sys::files_under(&b.u.work.join("work"))
        .into_iter()
        .filter(|p| *p != shared)
        .collect();
    assert!(left.is_empty(), "workdir leftovers: {left:?}");
    if let Ok(md) = fs::symlink_metadata(&shared) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(
            md.file_type().is_char_device() && md.rdev() == 0,
            "{shared:?} is no whiteout"
        );
    }
    b.check_trees_after_kernel_remount("after rm -rf");
}

#[test]
fn redirect_below_an_opaque_lower_directory() {
    // Found by the concurrent test: a directory renamed inside a directory
    // that is opaque in a lower layer must not show what the layers below
    // that one hold under its old name.
    let lowers = vec![
        Layer::new().opaque("s").file("s/a/x", "top"),
        Layer::new().file("s/a/y", "hidden").file("s/b", "hidden"),
    ];
    let Some(mut b) = Both::new(lowers) else {
        return;
    };
    b.ok("rename s/a s/c", |m| {
        fs::rename(m.join("s/a"), m.join("s/c"))
    });
    b.ok("list s/c", |m| sys::names(&m.join("s/c")));
    b.ok("mkdir s/d", |m| fs::create_dir(m.join("s/d")));
    b.ok("exchange s/c s/d", |m| {
        sys::renameat2(&m.join("s/c"), &m.join("s/d"), RENAME_EXCHANGE)
    });
    b.ok("list s/d", |m| sys::names(&m.join("s/d")));
    b.check_trees("after renames below an opaque lower dir");
    b.check_trees_after_kernel_remount("after renames below an opaque lower dir");
}

#[test]
fn a_listing_opened_before_a_rename_does_not_bring_back_the_old_name() {
    // Found by the concurrent test: a rename did not count as a change of
    // names, so readdirplus from a listing read before it gave the kernel
    // the old name for the moved object.
    let Some(b) = Both::new(vec![Layer::new().file("d/f", "lower").dir("e")]) else {
        return;
    };
    b.ok("create", |m| fs::write(m.join("d/g"), b"upper"));
    for name in ["f", "g"] {
        let old = b.ok(&format!("list d, rename d/{name}, list on"), |m| {
            let mut rd = sys::DirStream::open(&m.join("d"))?;
            fs::rename(m.join("d").join(name), m.join("e").join(name))?;
            rd.rest()?;
            // The old name must be gone whatever the listing showed.
            Ok(outcome(
                fs::symlink_metadata(m.join("d").join(name)).map(|_| ()),
            ))
        });
        assert_eq!(old, Err(Errno(libc::ENOENT)), "d/{name} after its rename");
    }
    b.check_trees("after renames during listings");
}

#[test]
fn a_new_directory_on_a_reused_inode_number_is_a_new_inode() {
    // Found by the concurrent test: a directory removed while the kernel
    // still holds its inode (an open descriptor here), and a new one that
    // the upper's filesystem gives the same inode number, came to the kernel
    // as the same FUSE node: mkdir failed with EEXIST or ESTALE, or the new
    // directory could not be used.
    let Some(b) = Both::new(vec![Layer::new().file("d/f", "lower")]) else {
        return;
    };
    let results = b.ok("rmdir an open directory, mkdir again, use it", |m| {
        let mut out = Vec::new();
        for i in 0..40 {
            let old = m.join(format!("d/old{i}"));
            fs::create_dir(&old)?;
            let held = fs::File::open(&old)?;
            fs::remove_dir(&old)?;
            let new = m.join(format!("d/new{i}"));
            fs::create_dir(&new)?;
            fs::write(new.join("f"), format!("{i}"))?;
            out.push(fs::read_to_string(new.join("f"))?);
            drop(held);
            fs::remove_dir_all(&new)?;
        }
        Ok(out)
    });
    assert_eq!(results.len(), 40);
    b.check_trees("after reusing directories");
}

#[test]
fn a_listing_opened_before_a_chmod_does_not_bring_back_the_old_mode() {
    // Found by the concurrent test: readdirplus handed the kernel the
    // attributes read when the directory was opened, and the kernel took
    // them over a chmod made since (they answer a request made after it).
    let Some(b) = Both::new(vec![Layer::new().file("d/f", "lower").dir("d/e")]) else {
        return;
    };
    // Copied up (or created) before the listing: nothing but the mode
    // changes after it.
    b.ok("create, copy up", |m| {
        fs::write(m.join("d/g"), b"upper")?;
        sys::chmod(&m.join("d/f"), 0o640)?;
        sys::chmod(&m.join("d/e"), 0o750)
    });
    let modes = b.ok("list d, chmod, list on, stat", |m| {
        let mut rd = sys::DirStream::open(&m.join("d"))?;
        for name in ["f", "e", "g"] {
            sys::chmod(&m.join("d").join(name), 0o600)?;
        }
        rd.rest()?;
        ["f", "e", "g"]
            .iter()
            .map(|n| Ok(sys::lstat(&m.join("d").join(n))?.st_mode & 0o7777))
            .collect::<io::Result<Vec<_>>>()
    });
    assert_eq!(modes, vec![0o600; 3]);
}
