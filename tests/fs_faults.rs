//! Faults of the filesystem daemon other than a crash (kill -9 is
//! tests/fs_crash.rs):
//!
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
//! Environment (for the long form): `UNIONMOUNT_FAULT_FILES`, files the
//! EMFILE test stats, reads and creates (a quarter of them it copies up;
//! default 20000, 100000 is the long form).
//!
//! The tests need root, /dev/fuse and overlayfs, and `prlimit` (./test
//! installs it); under `CI=true` a missing one is a failure. No test here
//! asserts anything about time.

mod support;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::crash::*;
use support::{
    Dialect, Layer, Mount, Scratch, assert_trees_eq, is_mounted, kernel_opts, snapshot, sys,
    union_opts,
};

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
    let big = support::pattern(12 << 20, 1);
    let medium = support::pattern(3 << 20, 2);
    let layers = vec![
        Layer::new().file("small", "small").file("d/x", "x"),
        Layer::new().file("big", &big).file("medium", &medium),
    ];
    let s = Scratch::new();
    let k = SmallUpper::new(&s, "kernel", &layers, true);
    let u = SmallUpper::new(&s, "unionmount", &layers, false);
    let both = [&k, &u];
    let same = |what: &str, f: &dyn Fn(&SmallUpper) -> io::Result<()>| {
        let a = support::outcome(f(&k));
        let b = support::outcome(f(&u));
        assert_eq!(
            a, b,
            "{what}: kernel (left) and unionmount (right) disagree"
        );
        b
    };
    let enospc = Err(support::Errno(libc::ENOSPC));

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
    let mut cmd = Command::new(support::bin());
    cmd.args(args).arg(mnt);
    let (code, _out, err) = support::mount::run_with_timeout(&mut cmd, Duration::from_secs(20));
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
