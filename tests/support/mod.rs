//! The one library of the integration tests; every test file has `mod support;`.
//!
//! - `bin()`, and the one rule for a test this machine cannot run: `can_run`
//!   fails under `CI=true` with one line, and elsewhere skips with one line.
//! - `store`, `run`, `tools`: helpers of the layer store, runner and real-tool
//!   tests; `crash`: the kill -9 loop of the daemon's crash tests.
//! - `registry`: `docker-registry` on loopback (plain, or TLS with Basic
//!   auth), a tampering proxy in front of it, and images to push to it.
//!
//! - `Scratch`, `Mount`: guards that always clean up (see `mount`).
//! - `Layer`, `Dialect`: describe a layer and write it in any whiteout dialect.
//! - `Both`: the same layers under kernel overlayfs (the reference) and under
//!   unionmount (the subject), each with its own copies, upper and workdir;
//!   apply an operation to both and compare results and errno; compare trees.
//!
//! `UNIONMOUNT_TEST_SUBJECT=kernel` makes the subject kernel overlayfs as well,
//! which checks the harness and the expectations of each test against the
//! kernel itself. `UNIONMOUNT_TEST_SUBJECT=kernel-raw` also hands the kernel
//! the non-kernel whiteout dialects, which it must fail on (a check that the
//! dialect tests can fail at all).
//!
//! Other knobs: `UNIONMOUNT_TEST_TIMEOUT` (seconds, default 180) after which a
//! unionmount mount still in use is aborted so a hung daemon fails the test
//! instead of hanging it. Without root, /dev/fuse or overlayfs the tests say
//! why and pass, except under `CI=true`, where they fail.
#![allow(dead_code, unused_imports)]

pub mod containerd;
pub mod crash;
pub mod layer;
pub mod mount;
pub mod ops;
pub mod registry;
pub mod run;
pub mod snapshot;
pub mod snapshotter;
pub mod store;
pub mod sys;
pub mod tools;
pub mod uring;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

pub use layer::{Dialect, LAYER_MTIME, Layer, Meta};
pub use mount::{
    Mount, Scratch, is_mounted, kernel_opts, mount_at, require_mounts, subject_is_kernel,
    union_opts, wait_until,
};
pub use snapshot::{Tree, assert_trees_eq, raw_checksum, snapshot};
pub use sys::{Errno, errno_name, outcome};
pub use uring::{IoUringOff, IoUringOn, io_uring_off, io_uring_on};

/// Which implementation mounts a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Union,
}

/// One side of a comparison: its own lowers, upper, workdir and mountpoint.
pub struct Side {
    pub name: &'static str,
    pub imp: Impl,
    pub base: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub readonly: bool,
    /// appended to unionmount's options when this side is mounted by unionmount
    pub union_extra: String,
    /// appended to kernel overlayfs options when this side is mounted by the kernel
    pub kernel_extra: String,
    pub mount: Option<Mount>,
}

impl Side {
    fn new(name: &'static str, imp: Impl, base: PathBuf, n_lowers: usize, readonly: bool) -> Side {
        let lowers = (0..n_lowers).map(|i| base.join(format!("l{i}"))).collect();
        let side = Side {
            name,
            imp,
            upper: base.join("upper"),
            work: base.join("work"),
            mnt: base.join("mnt"),
            base,
            lowers,
            readonly,
            union_extra: String::new(),
            kernel_extra: String::new(),
            mount: None,
        };
        for d in [&side.upper, &side.work, &side.mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        side
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    fn upper_pair(&self) -> Option<(&Path, &Path)> {
        if self.readonly {
            None
        } else {
            Some((&self.upper, &self.work))
        }
    }

    /// Mount with this side's own implementation.
    pub fn mount(&mut self) {
        self.mount_as(self.imp);
    }

    /// Mount this side's directories with `imp` (e.g. kernel overlayfs over
    /// the upper unionmount wrote).
    pub fn mount_as(&mut self, imp: Impl) {
        assert!(self.mount.is_none(), "{} is mounted already", self.name);
        let m = match imp {
            Impl::Kernel => Mount::kernel(
                &self.mnt,
                &(kernel_opts(&self.lowers, self.upper_pair()) + &self.kernel_extra),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{}: kernel overlayfs mount of {} failed: {e} (see dmesg)",
                    self.name,
                    self.base.display()
                )
            }),
            Impl::Union => {
                // The transport is the fixture's choice, never the kernel
                // switch's, which an io_uring test of the binary may turn on.
                let transport = if self.union_extra.contains("io_uring") {
                    ""
                } else {
                    ",noio_uring"
                };
                let opts = union_opts(&self.lowers, self.upper_pair()) + &self.union_extra;
                let args: Vec<OsString> = vec!["-o".into(), (opts + transport).into()];
                Mount::union_foreground(&self.mnt, &args)
                    .unwrap_or_else(|e| panic!("{}: {e}", self.name))
            }
        };
        self.mount = Some(m);
    }

    /// Mount with kernel overlayfs and extra options appended (e.g. ",index=on").
    pub fn mount_kernel_with(&mut self, extra: &str) {
        assert!(self.mount.is_none(), "{} is mounted already", self.name);
        let opts = kernel_opts(&self.lowers, self.upper_pair()) + extra;
        self.mount = Some(
            Mount::kernel(&self.mnt, &opts)
                .unwrap_or_else(|e| panic!("{}: kernel mount -o {opts}: {e}", self.name)),
        );
    }

    /// Unmount; panics if unmounting or the daemon's exit went wrong.
    pub fn unmount(&mut self) {
        if let Some(mut m) = self.mount.take() {
            let stderr = m.daemon_stderr();
            if let Err(e) = m.unmount() {
                panic!("{}: {e}\ndaemon stderr: {stderr}", self.name);
            }
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    pub fn snapshot(&self) -> Tree {
        snapshot(&self.mnt)
    }
}

/// What a `Both` fixture is made of.
#[derive(Clone)]
pub struct Setup {
    /// lower layers, topmost first (`lowerdir=l0:l1:…`)
    pub lowers: Vec<Layer>,
    /// an upper that exists before mounting (kernel format)
    pub upper: Option<Layer>,
    /// dialect of the subject's lowers (the reference always gets kernel format)
    pub dialect: Dialect,
    /// no upper: a read-only merged view
    pub readonly: bool,
    /// extra kernel overlayfs options for every kernel mount of the fixture,
    /// e.g. ",index=on" where hard-link groups must survive copy-up
    pub kernel_extra: String,
    /// extra unionmount options for every unionmount mount of the fixture,
    /// e.g. ",metacopy=on"
    pub union_extra: String,
}

impl Setup {
    pub fn new(lowers: Vec<Layer>) -> Setup {
        Setup {
            lowers,
            upper: None,
            dialect: Dialect::Kernel,
            readonly: false,
            kernel_extra: String::new(),
            union_extra: String::new(),
        }
    }
    pub fn kernel_extra(mut self, opts: &str) -> Setup {
        self.kernel_extra = opts.to_string();
        self
    }
    pub fn union_extra(mut self, opts: &str) -> Setup {
        self.union_extra = opts.to_string();
        self
    }
    pub fn upper(mut self, upper: Layer) -> Setup {
        self.upper = Some(upper);
        self
    }
    pub fn dialect(mut self, d: Dialect) -> Setup {
        self.dialect = d;
        self
    }
    pub fn readonly(mut self) -> Setup {
        self.readonly = true;
        self
    }
}

/// The same layers mounted twice: `k` by kernel overlayfs, `u` by the subject.
/// Drop unmounts both and checks that no lower layer was modified.
pub struct Both {
    pub k: Side,
    pub u: Side,
    lower_sums: Vec<(PathBuf, BTreeMap<PathBuf, String>)>,
    setup: Setup,
    pub scratch: Scratch,
}

impl Both {
    /// Kernel-format lowers, mounted both ways. `None` (after saying why) when
    /// the machine cannot mount and this is not CI.
    pub fn new(lowers: Vec<Layer>) -> Option<Both> {
        Both::setup(Setup::new(lowers))
    }

    pub fn setup(setup: Setup) -> Option<Both> {
        if !require_mounts() {
            return None;
        }
        let scratch = Scratch::new();
        let sub_imp = if subject_is_kernel() {
            Impl::Kernel
        } else {
            Impl::Union
        };
        let n = setup.lowers.len();
        let mut k = Side::new(
            "kernel",
            Impl::Kernel,
            scratch.dir("ref"),
            n,
            setup.readonly,
        );
        let mut u = Side::new(
            if sub_imp == Impl::Kernel {
                "subject(kernel)"
            } else {
                "unionmount"
            },
            sub_imp,
            scratch.dir("sub"),
            n,
            setup.readonly,
        );
        k.kernel_extra = setup.kernel_extra.clone();
        u.kernel_extra = setup.kernel_extra.clone();
        u.union_extra = setup.union_extra.clone();
        let sub_dialect = if sub_imp == Impl::Kernel && !mount::subject_keeps_dialect() {
            Dialect::Kernel
        } else {
            setup.dialect
        };
        for (i, l) in setup.lowers.iter().enumerate() {
            l.build(&k.lowers[i], Dialect::Kernel);
            l.build(&u.lowers[i], sub_dialect);
        }
        if let Some(up) = &setup.upper {
            for side in [&k, &u] {
                up.build(&side.upper, Dialect::Kernel);
                mark_impure(&side.upper);
            }
        }
        let lower_sums = k
            .lowers
            .iter()
            .chain(u.lowers.iter())
            .map(|l| (l.clone(), raw_checksum(l)))
            .collect();
        k.mount();
        u.mount();
        Some(Both {
            k,
            u,
            lower_sums,
            setup,
            scratch,
        })
    }

    /// A third, unmounted side with fresh kernel-format copies of the same
    /// layers (e.g. for a kernel mount with other options). Drop it before `self`.
    pub fn extra_side(&self, dir: &str) -> Side {
        let side = Side::new(
            "extra",
            Impl::Kernel,
            self.scratch.dir(dir),
            self.setup.lowers.len(),
            self.setup.readonly,
        );
        for (i, l) in self.setup.lowers.iter().enumerate() {
            l.build(&side.lowers[i], Dialect::Kernel);
        }
        if let Some(up) = &self.setup.upper {
            up.build(&side.upper, Dialect::Kernel);
            mark_impure(&side.upper);
        }
        side
    }

    pub fn sides(&self) -> [&Side; 2] {
        [&self.k, &self.u]
    }

    /// Apply `f` to both mount roots; the results (value or errno) must agree.
    #[track_caller]
    pub fn same<T: PartialEq + Debug>(
        &self,
        what: &str,
        f: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<T, Errno> {
        let a = outcome(f(&self.k.mnt));
        let b = outcome(f(&self.u.mnt));
        assert_eq!(
            a, b,
            "{what}: kernel (left) and {} (right) disagree",
            self.u.name
        );
        b
    }

    /// Like `same`, and it must succeed.
    #[track_caller]
    pub fn ok<T: PartialEq + Debug>(&self, what: &str, f: impl Fn(&Path) -> io::Result<T>) -> T {
        match self.same(what, f) {
            Ok(v) => v,
            Err(e) => panic!("{what}: failed on both mounts with {e:?}"),
        }
    }

    /// Like `same`, and it must fail with `errno`.
    #[track_caller]
    pub fn err<T: PartialEq + Debug>(
        &self,
        what: &str,
        errno: i32,
        f: impl Fn(&Path) -> io::Result<T>,
    ) {
        match self.same(what, f) {
            Err(e) if e.0 == errno => {}
            other => panic!(
                "{what}: expected {:?} on both mounts, got {other:?}",
                Errno(errno)
            ),
        }
    }

    /// Both mounts show the same tree.
    #[track_caller]
    pub fn check_trees(&self, what: &str) {
        let a = self.k.snapshot();
        let b = self.u.snapshot();
        assert_trees_eq(what, self.k.name, &a, self.u.name, &b);
    }

    /// Both upper directories hold the same things on disk (see `upper_view`):
    /// copy-up and whiteouts happened exactly where the kernel made them.
    #[track_caller]
    pub fn check_uppers(&self, what: &str) {
        let a = snapshot::upper_view(&self.k.upper, &self.k.lowers);
        let b = snapshot::upper_view(&self.u.upper, &self.k.lowers);
        snapshot::assert_uppers_eq(
            what,
            "kernel's upper",
            &a,
            &format!("{}'s upper", self.u.name),
            &b,
        );
    }

    /// Unmount both, then mount both sides' layers and uppers with kernel
    /// overlayfs and compare: the on-disk formats agree. Leaves both sides
    /// mounted by kernel overlayfs.
    #[track_caller]
    pub fn check_trees_after_kernel_remount(&mut self, what: &str) {
        self.k.unmount();
        self.u.unmount();
        self.k.mount_as(Impl::Kernel);
        self.u.mount_as(Impl::Kernel);
        let a = self.k.snapshot();
        let b = self.u.snapshot();
        assert_trees_eq(
            &format!("{what} (both uppers re-mounted by kernel overlayfs)"),
            "kernel's upper",
            &a,
            &format!("{}'s upper", self.u.name),
            &b,
        );
    }

    /// Unmount both and check no lower layer was written.
    pub fn check_lowers_unchanged(&self) {
        for (l, before) in &self.lower_sums {
            let after = raw_checksum(l);
            snapshot::assert_raw_unchanged(l, before, &after);
        }
    }
}

impl Drop for Both {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut errors = Vec::new();
        for side in [&mut self.k, &mut self.u] {
            if let Some(mut m) = side.mount.take()
                && let Err(e) = m.unmount()
            {
                errors.push(format!("{}: {e}", side.name));
            }
        }
        if panicking {
            return;
        }
        self.check_lowers_unchanged();
        assert!(errors.is_empty(), "unmounting: {}", errors.join("; "));
    }
}

/// Mark every directory of a hand-built upper `trusted.overlay.impure=y`, as
/// kernel overlayfs marks the dirs it copies into: without it the kernel
/// reports readdir d_ino != st_ino for merged subdirectories of such an upper.
pub fn mark_impure(upper: &Path) {
    let mut stack = vec![upper.to_path_buf()];
    while let Some(d) = stack.pop() {
        sys::lsetxattr(&d, "trusted.overlay.impure", b"y").unwrap();
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// Bytes of a file, or its errno.
pub fn read(p: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(p)
}

/// Write via open(O_WRONLY|O_CREAT|O_TRUNC).
pub fn write(p: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::write(p, data)
}

/// Append bytes to an existing file.
pub fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
    f.write_all(data)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

/// The `unionmount` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionmount")
}

/// Is this CI's run (`CI=true`)? There a test never skips.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The one rule: a test that needs what is `missing` here fails under
/// CI=true with one line naming `what` and the missing parts; elsewhere it
/// prints a skip line and the caller returns. True when nothing is missing.
#[must_use]
pub fn can_run(what: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if under_ci() {
        panic!("{what} cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPING {what} (set CI=true to make this a failure): {why}");
    false
}
