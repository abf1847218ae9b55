//! kill -9 of the filesystem daemon in the middle of: directory renames that
//! need a redirect (populated lower directories), hard-link copy-ups (index
//! entries), metadata changes of big lower files (each copies the file up
//! first), metadata-only copy-ups (`metacopy=on`) followed by the data's
//! copy-up at an append, and whiteout creation (unlink, rmdir, rm -r of
//! lower names). Each round runs a loop of such operations and kills the
//! daemon at another point: from outside after a number of them plus a short
//! spin, or (with strace's fault injection) with SIGKILL on entering its Nth
//! call of a syscall that changes the upper (rename, link, mknod, setxattr,
//! …), so that crashes land between any two changes an operation makes.
//! After each kill it mounts again and checks: every operation that returned
//! is there (and what was written and fsync'ed), every operation not begun
//! is not, the one in flight is wholly done or not at all (never a partial
//! file, never a name missing or doubled, never a half-linked group), `work/`
//! is empty after the mount (a leftover planted before it is gone too), and
//! kernel overlayfs mounted over the same layers, upper and workdir shows the
//! same tree. The loop itself is `support::crash`.
//!
//! Environment (for the long form): `UNIONMOUNT_FAULT_ROUNDS`, kill -9 rounds
//! per test (default 12; each round kills at another point of its loop).
//!
//! The tests need root, /dev/fuse and overlayfs, and `strace` (./test
//! installs it); under `CI=true` a missing one is a failure. No test here
//! asserts anything about time.

mod support;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use support::crash::*;
use support::{LAYER_MTIME, Layer, Meta, sys};

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
    support::pattern(BIG_SIZE, (r * BIG_FILES + k) as u8)
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

/// The same, with the requests coming through io_uring queues: a daemon
/// killed with commands in flight on its rings lets go of the connection,
/// and the next mount finds what the last one left.
#[test]
fn kill_9_during_whiteout_creation_over_io_uring() {
    if !can_run() {
        return;
    }
    let Some(_on) = support::io_uring_on() else {
        return;
    };
    let mut rig = Rig::new(&wh_layers(rounds()), ",index=on");
    rig.io_uring = true;
    crash_loop(
        "whiteouts over io_uring",
        &rig,
        usize::MAX,
        &["renameat2", "unlinkat", "mknodat"],
        wh_plan,
        wh_check,
    );
}
