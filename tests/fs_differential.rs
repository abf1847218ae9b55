//! Differential tests: the same operation sequences, scripted and randomized
//! (proptest), applied to kernel overlayfs and unionmount over identical
//! layers; every result and errno must agree, then the trees, and then the two
//! uppers re-mounted by kernel overlayfs must agree too.

mod support;

use std::fs;
use std::io;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, symlink};
use std::path::Path;

use proptest::prelude::*;

use support::sys::{self, RENAME_EXCHANGE, RENAME_NOREPLACE};
use support::{Both, Layer, Meta};

const DIRS: &[&str] = &["", "low", "low/sub", "merged", "merged/deep", "new"];
const NAMES: &[&str] = &["a", "b", "f", "sub", "deep", "x"];

fn lowers() -> Vec<Layer> {
    vec![
        Layer::new()
            .file("a", "l0 a")
            .file("merged/a", "l0 merged a")
            .file("merged/deep/f", "l0 deep f")
            .file_with("low/b", "l0 low b", Meta::mode(0o600).owner(10, 20))
            .symlink("merged/x", "a")
            .xattr("a", "user.l0", "yes"),
        Layer::new()
            .file("b", "l1 b")
            .file("merged/b", "l1 merged b")
            .file("merged/deep/a", "l1 deep a")
            .file("low/sub/f", "l1 low sub f")
            .file("low/a", support::pattern(10_000, 4))
            // no lower hard links: kernel overlayfs with index=off breaks them
            // on copy-up, unionmount deliberately keeps them (fs_dir_ops tests that)
            .file("low/sub/x", "l1 low sub x")
            .dir("merged/sub")
            .file("merged/sub/deep/a", "l1 merged sub deep a")
            .file("new/x/f", "l1 new x f"),
        Layer::new()
            .file("merged/deep/b", "l2 deep b")
            .file("merged/sub/f", "l2 sub f")
            .file("low/sub/deep/x", "l2 low sub deep x")
            .file("a", "l2 a, hidden"),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Create(String, u8),
    Write(String, u64, usize, u8),
    Truncate(String, u64),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Rename(String, String, u32),
    Link(String, String),
    Symlink(String, String),
    Chmod(String, u32),
    SetXattr(String, u8),
    RemoveXattr(String),
    Read(String),
    List(String),
    Stat(String),
    RmTree(String),
    Append(String, u8),
    Mkfifo(String),
    /// an xattr in the overlay namespace, stored escaped
    OverlayXattr(String, u8),
}

fn path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Open for writing without blocking on a fifo (ENXIO without a reader).
fn open_w(p: &Path, append: bool) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .append(append)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
}

/// Apply one op under `root`; the result is a string both mounts must agree on.
fn apply(root: &Path, op: &Op) -> io::Result<String> {
    let p = |s: &str| root.join(s);
    match op {
        Op::Create(f, seed) => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(f))?;
            file.write_all(&support::pattern(100 + *seed as usize * 37, *seed))?;
            Ok(String::new())
        }
        Op::Write(f, off, len, seed) => {
            let file = open_w(&p(f), false)?;
            file.write_all_at(&support::pattern(*len, *seed), *off)?;
            Ok(String::new())
        }
        Op::Truncate(f, len) => {
            open_w(&p(f), false)?.set_len(*len)?;
            Ok(String::new())
        }
        Op::Unlink(f) => fs::remove_file(p(f)).map(|_| String::new()),
        Op::Mkdir(d) => fs::create_dir(p(d)).map(|_| String::new()),
        Op::Rmdir(d) => fs::remove_dir(p(d)).map(|_| String::new()),
        Op::Rename(a, b, flags) => sys::renameat2(&p(a), &p(b), *flags).map(|_| String::new()),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)).map(|_| String::new()),
        Op::Symlink(t, l) => symlink(t, p(l)).map(|_| String::new()),
        Op::Chmod(f, mode) => sys::chmod(&p(f), *mode).map(|_| String::new()),
        Op::SetXattr(f, v) => sys::lsetxattr(&p(f), "user.t", &[*v]).map(|_| String::new()),
        Op::RemoveXattr(f) => sys::lremovexattr(&p(f), "user.l0").map(|_| String::new()),
        Op::Read(f) => {
            let mut data = Vec::new();
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(f))?
                .read_to_end(&mut data)?;
            Ok(format!(
                "{} bytes, {:?}",
                data.len(),
                &data[..data.len().min(32)]
            ))
        }
        Op::List(d) => Ok(sys::names(&p(d))?.join(",")),
        Op::RmTree(d) => fs::remove_dir_all(p(d)).map(|_| String::new()),
        Op::Append(f, v) => {
            open_w(&p(f), true)?.write_all(&[*v; 7])?;
            Ok(String::new())
        }
        Op::Mkfifo(f) => sys::mkfifo(&p(f), 0o640).map(|_| String::new()),
        Op::OverlayXattr(f, v) => {
            sys::lsetxattr(&p(f), "trusted.overlay.user", &[*v]).map(|_| String::new())
        }
        Op::Stat(f) => {
            let st = sys::lstat(&p(f))?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            // merged directories' nlink and sizes are compared by the tree check
            Ok(format!(
                "mode={:o} uid={} size={} nlink={}",
                st.st_mode,
                st.st_uid,
                if is_dir { 0 } else { st.st_size },
                if is_dir { 0 } else { st.st_nlink }
            ))
        }
    }
}

fn run(ops: &[Op]) {
    run_on(support::Setup::new(lowers()), ops)
}

fn run_on(setup: support::Setup, ops: &[Op]) {
    run_checked(setup, ops, true)
}

/// `kernel_remount`: also compare both uppers re-mounted by kernel overlayfs
/// (only where the subject's lowers are in kernel format).
fn run_checked(setup: support::Setup, ops: &[Op], kernel_remount: bool) {
    let Some(mut b) = Both::setup(setup) else {
        return;
    };
    for (i, op) in ops.iter().enumerate() {
        b.same(&format!("op {i}: {op:?}"), |m| apply(m, op)).ok();
    }
    b.check_trees("after the sequence");
    if kernel_remount {
        b.check_trees_after_kernel_remount("after the sequence");
    }
    let _ = &mut b;
}

#[test]
fn scripted_sequence() {
    run(&scripted_ops());
}

/// The same sequence with requests and replies going through io_uring
/// queues instead of /dev/fuse.
#[test]
fn scripted_sequence_over_io_uring() {
    if !support::require_mounts() {
        return;
    }
    let Some(_on) = support::io_uring_on() else {
        return;
    };
    run_on(over_io_uring(lowers()), &scripted_ops());
}

fn over_io_uring(lowers: Vec<Layer>) -> support::Setup {
    let mut setup = support::Setup::new(lowers);
    setup.union_extra = ",io_uring".into();
    setup
}

fn scripted_ops() -> Vec<Op> {
    use Op::*;
    let s = |x: &str| x.to_string();
    vec![
        List(s("")),
        List(s("merged")),
        Write(s("a"), 2, 5, 1),
        Read(s("a")),
        Stat(s("a")),
        RemoveXattr(s("a")),
        Unlink(s("b")),
        Create(s("b"), 3),
        Rename(s("merged/a"), s("merged/b"), 0),
        Rename(s("merged/b"), s("a"), RENAME_NOREPLACE),
        Rename(s("merged/x"), s("low/b"), RENAME_EXCHANGE),
        Read(s("low/b")),
        Mkdir(s("new")),
        Rename(s("low"), s("new/low"), 0),
        Rmdir(s("new/low/sub")),
        Unlink(s("new/low/sub/f")),
        Unlink(s("new/low/sub/x")),
        Rmdir(s("new/low/sub")),
        Mkdir(s("new/low/sub")),
        List(s("new/low/sub")),
        Link(s("new/low/a"), s("merged/deep/x")),
        Stat(s("merged/deep/x")),
        Truncate(s("merged/deep/x"), 3),
        Read(s("new/low/a")),
        Symlink(s("../a"), s("merged/deep/sub")),
        Rmdir(s("merged")),
        Rename(s("merged/deep"), s("deep"), 0),
        Rename(s("deep"), s("merged/sub"), 0),
        Chmod(s("merged/sub"), 0o700),
        SetXattr(s("merged"), 9),
        Rename(s("merged"), s("new/merged"), RENAME_NOREPLACE),
        List(s("new")),
        List(s("new/merged/sub")),
        Unlink(s("new/merged/sub/f")),
        Rename(s("new"), s("x"), 0),
        List(s("")),
    ]
}

fn any_path() -> impl Strategy<Value = String> {
    (0..DIRS.len(), 0..NAMES.len()).prop_map(|(d, n)| path(DIRS[d], NAMES[n]))
}

fn any_dir() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..DIRS.len()).prop_map(|d| DIRS[d].to_string()),
        any_path(),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any_path(), any::<u8>()).prop_map(|(p, s)| Op::Create(p, s)),
        (any_path(), 0..5000u64, 0..3000usize, any::<u8>())
            .prop_map(|(p, o, l, s)| Op::Write(p, o, l, s)),
        (any_path(), 0..20_000u64).prop_map(|(p, l)| Op::Truncate(p, l)),
        any_path().prop_map(Op::Unlink),
        any_dir().prop_map(Op::Mkdir),
        any_dir().prop_map(Op::Rmdir),
        (
            any_dir(),
            any_dir(),
            prop_oneof![Just(0), Just(RENAME_NOREPLACE), Just(RENAME_EXCHANGE)]
        )
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        (any_path(), any_path()).prop_map(|(a, b)| Op::Link(a, b)),
        (any_path(), any_path()).prop_map(|(t, l)| Op::Symlink(t, l)),
        (
            any_dir(),
            prop_oneof![Just(0o755u32), Just(0o600), Just(0o4711)]
        )
            .prop_map(|(p, m)| Op::Chmod(p, m)),
        (any_dir(), any::<u8>()).prop_map(|(p, v)| Op::SetXattr(p, v)),
        any_path().prop_map(Op::RemoveXattr),
        any_path().prop_map(Op::Read),
        any_dir().prop_map(Op::List),
        any_dir().prop_map(Op::Stat),
        any_dir().prop_map(Op::RmTree),
        (any_path(), any::<u8>()).prop_map(|(p, v)| Op::Append(p, v)),
        any_path().prop_map(Op::Mkfifo),
        (any_dir(), any::<u8>()).prop_map(|(p, v)| Op::OverlayXattr(p, v)),
    ]
}

/// Lowers with hard-link groups; the reference is kernel overlayfs with
/// index=on, which keeps groups across copy-up as unionmount does.
fn linked_lowers() -> support::Setup {
    let mut l = lowers();
    l[1] = l[1]
        .clone()
        .hardlink("merged/deep/x", "low/a")
        .hardlink("b2", "b")
        .hardlink("merged/sub/b", "b");
    support::Setup::new(l).kernel_extra(",index=on")
}

#[test]
fn scripted_sequence_over_lower_hard_links() {
    // Minimal cases the randomized test below found.
    use Op::*;
    let s = |x: &str| x.to_string();
    run_on(linked_lowers(), &[RmTree(s("merged"))]);
    run_on(linked_lowers(), &[Unlink(s("b")), Stat(s("b2"))]);
    run_on(
        linked_lowers(),
        &[
            Write(s("merged/deep/x"), 0, 0, 1),
            Rename(s("low/sub"), s("low/a"), RENAME_EXCHANGE),
        ],
    );
}

#[test]
fn randomized_sequences_over_lower_hard_links() {
    if !support::require_mounts() {
        return;
    }
    let config = ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(any_op(), 1..40))| {
        run_on(linked_lowers(), &ops);
    });
}

/// Lowers with whiteouts and opaque dirs on the paths the ops use, written in
/// a non-kernel dialect for unionmount (kernel format for the reference).
fn marked_lowers(d: support::Dialect) -> support::Setup {
    let mut l = lowers();
    l[0] = l[0]
        .clone()
        .whiteout("b")
        .whiteout("low/sub/f")
        .opaque("merged/sub")
        .file("merged/sub/a", "l0 opaque sub a")
        .whiteout("new/x");
    support::Setup::new(l).dialect(d)
}

#[test]
fn randomized_sequences_over_oci_and_xattr_whiteouts() {
    if !support::require_mounts() {
        return;
    }
    let config = ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    for d in [support::Dialect::Oci, support::Dialect::XattrWhiteout] {
        proptest!(config.clone(), |(ops in proptest::collection::vec(any_op(), 1..40))| {
            run_checked(marked_lowers(d), &ops, false);
        });
    }
}

#[test]
fn randomized_sequences() {
    if !support::require_mounts() {
        return;
    }
    let config = ProptestConfig {
        cases: 32,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(any_op(), 1..40))| {
        run(&ops);
    });
}

#[test]
fn randomized_sequences_over_io_uring() {
    if !support::require_mounts() {
        return;
    }
    let Some(_on) = support::io_uring_on() else {
        return;
    };
    let config = ProptestConfig {
        cases: 16,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(any_op(), 1..40))| {
        run_on(over_io_uring(lowers()), &ops);
    });
}
