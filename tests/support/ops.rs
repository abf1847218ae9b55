//! Helpers for load tests: a small deterministic random generator, what a
//! daemon holds (resident memory, open descriptors), making the kernel forget
//! cached names and inodes, and worker processes that are the test binary
//! itself running one of its ignored entry points.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// splitmix64: tiny, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True `pct` times out of a hundred.
    pub fn percent(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen with the given weights.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// A seed from `var`, or `default`; printed so a failing run can be repeated.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("{var}={seed}");
    seed
}

/// Whether the long form was asked for (`var` set to anything but "" or "0").
pub fn long_form(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The load tests' long form (`UNIONMOUNT_LOAD_LONG`) and seed
/// (`UNIONMOUNT_LOAD_SEED`), shared by fs_load, fs_exerciser and fs_memory.
pub const LOAD_LONG: &str = "UNIONMOUNT_LOAD_LONG";
pub const LOAD_SEED: &str = "UNIONMOUNT_LOAD_SEED";

/// Whether the load tests run their long form; it refuses to start unless the
/// mount watchdog (`UNIONMOUNT_TEST_TIMEOUT`) outlasts it.
pub fn load_long() -> bool {
    let long = long_form(LOAD_LONG);
    if long {
        let t: u64 = std::env::var("UNIONMOUNT_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        assert!(
            t >= 1800,
            "the long form ({LOAD_LONG}) runs for many minutes: set UNIONMOUNT_TEST_TIMEOUT=3600 \
             so the mount watchdog does not abort it"
        );
    }
    long
}

/// Bytes for a create or a write, from a seed.
pub fn gen_data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The `Key:   value kB` fields of /proc/PID/status.
fn proc_status(pid: u32) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), n))
        })
        .collect()
}

/// Resident memory of a process, KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid)["VmRSS"]
}

/// Peak resident memory of a process so far, KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status(pid)["VmHWM"]
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Make the kernel drop unused dentries and inodes (`vm/drop_caches` = 2): a
/// FUSE daemon then gets FORGETs for every inode the kernel let go.
pub fn drop_dentries_and_inodes() {
    std::fs::write("/proc/sys/vm/drop_caches", "2")
        .unwrap_or_else(|e| panic!("write 2 to /proc/sys/vm/drop_caches (needs root): {e}"));
}

/// Start this test binary again as a worker process running only its ignored
/// test `entry`, with `envs` telling it what to do. Its test-harness output
/// goes to `out`.
pub fn spawn_worker(entry: &str, envs: &[(&str, String)], out: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let log = std::fs::File::create(out).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::from(log.try_clone().unwrap()))
    .stderr(Stdio::from(log));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn worker process")
}

/// A tree with the link counts of its directories left out. Kernel
/// overlayfs copies a directory up before it finds that a rename of it fails
/// (ENOTEMPTY, EISDIR…), and a merged directory reports one link; unionmount
/// finds the error first and copies nothing up. Everything else about
/// directories, and every other link count, is still compared.
pub fn without_dir_links(mut t: super::Tree) -> super::Tree {
    for e in t.entries.values_mut() {
        if e.kind == 'd' {
            e.nlink = 0;
        }
    }
    t
}

/// `Both::check_trees` with the link counts of directories left out (see
/// `without_dir_links`).
#[track_caller]
pub fn assert_same_trees(b: &super::Both, what: &str) {
    let ours = without_dir_links(b.k.snapshot());
    let theirs = without_dir_links(b.u.snapshot());
    super::assert_trees_eq(what, b.k.name, &ours, b.u.name, &theirs);
}

/// The subject's upper as kernel overlayfs reads it, compared with the
/// reference mount: `b.u`'s upper stacked read-only over its lowers by a
/// kernel overlayfs mount beside the live one (at a quiescent point), so the
/// on-disk format is checked without unmounting anything.
#[track_caller]
pub fn assert_upper_reads_the_same(b: &super::Both, what: &str) {
    let mnt = b.scratch.dir("upper-as-lower");
    let mut layers = vec![b.u.upper.clone()];
    layers.extend(b.u.lowers.iter().cloned());
    let names: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    let opts = format!("lowerdir={},redirect_dir=follow", names.join(":"));
    let m = super::Mount::kernel(&mnt, &opts)
        .unwrap_or_else(|e| panic!("{what}: kernel overlayfs over {}'s upper: {e}", b.u.name));
    let theirs = without_dir_links(super::snapshot(&mnt));
    drop(m);
    let ours = without_dir_links(b.k.snapshot());
    super::assert_trees_eq(
        &format!("{what} ({}'s upper read by kernel overlayfs)", b.u.name),
        "kernel",
        &ours,
        &format!("{}'s upper", b.u.name),
        &theirs,
    );
}
