//! The daemon counts the requests it answers by kind and, with
//! `UNIONMOUNT_REQUEST_COUNTS=FILE`, writes the counts so far on SIGUSR1
//! and when its mount ends: the bench's round-trip counts come from there.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Mount, Scratch, bin, is_mounted, require_mounts, wait_until};

fn counts_on_signal(pid: u32, file: &Path) -> serde_json::Value {
    let _ = fs::remove_file(file);
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || file.exists()),
        "no counts after SIGUSR1"
    );
    serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap()
}

/// A union over `lower` (with a fresh upper and workdir in `s`) mounted at
/// `s/mnt` by a daemon writing its counts to `s/counts.json`; `extra` is
/// added to the options. (guard, daemon pid, counts file, mountpoint)
fn mount_counting(s: &Scratch, lower: &Path, extra: &str) -> (Mount, u32, PathBuf, PathBuf) {
    let [upper, work, mnt] = s.dirs(["upper", "work", "mnt"]);
    let file = s.path().join("counts.json");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let child = Command::new(bin())
        .args(["-f", "-o", &opts])
        .arg(&mnt)
        .env("UNIONMOUNT_REQUEST_COUNTS", &file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = Mount::union_guard(&mnt, Some(child), None);
    assert!(wait_until(Duration::from_secs(20), || is_mounted(&mnt)));
    (guard, pid, file, mnt)
}

fn count(v: &serde_json::Value, kind: &str) -> u64 {
    v[kind].as_u64().unwrap_or(0)
}

#[test]
fn the_daemon_writes_its_request_counts_when_asked_and_at_unmount() {
    if !require_mounts() {
        return;
    }
    let s = Scratch::new();
    let lower = s.dir("lower");
    fs::write(lower.join("f"), "lower\n").unwrap();
    let (mut guard, pid, file, mnt) = mount_counting(&s, &lower, "");

    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower\n");
    fs::write(mnt.join("new"), "x").unwrap();
    fs::remove_file(mnt.join("new")).unwrap();
    let first = counts_on_signal(pid, &file);
    for kind in ["lookup", "open", "read", "create", "unlink"] {
        assert!(count(&first, kind) >= 1, "{kind} in {first}");
    }
    assert_eq!(count(&first, "rename"), 0, "never asked: {first}");

    // The daemon goes on serving, and the counts go on from where they were.
    fs::write(mnt.join("a"), "a").unwrap();
    fs::rename(mnt.join("a"), mnt.join("b")).unwrap();
    let second = counts_on_signal(pid, &file);
    assert_eq!(count(&second, "rename"), 1, "{second}");
    assert_eq!(count(&second, "create"), count(&first, "create") + 1);

    let _ = fs::remove_file(&file);
    guard.unmount().unwrap();
    let last: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).expect("counts at unmount")).unwrap();
    assert_eq!(count(&last, "rename"), 1, "{last}");
}

/// Over io_uring every request but forgets (which the kernel still sends on
/// /dev/fuse) comes through a queue; with `noio_uring` none does.
#[test]
fn requests_come_through_io_uring_queues_unless_told_not_to() {
    if !require_mounts() {
        return;
    }
    let Some(_on) = support::io_uring_on() else {
        return;
    };
    for (option, via_rings) in [("io_uring", true), ("noio_uring", false)] {
        let s = Scratch::new();
        let lower = s.dir("lower");
        // Bigger than one request's payload: reads of it take several.
        let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        fs::write(lower.join("big"), &big).unwrap();
        let (mut guard, _, file, mnt) = mount_counting(&s, &lower, &format!(",{option}"));

        assert!(
            fs::read(mnt.join("big")).unwrap() == big,
            "{option}: big read back"
        );
        fs::write(mnt.join("new"), "x").unwrap();
        fs::rename(mnt.join("new"), mnt.join("renamed")).unwrap();
        assert_eq!(fs::read_to_string(mnt.join("renamed")).unwrap(), "x");
        guard.unmount().unwrap();

        let last: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&file).expect("counts at unmount")).unwrap();
        let all: u64 = last
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "via_io_uring" && *k != "forget")
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert!(count(&last, "read") >= 3, "{option}: {last}");
        // The ring's count also has the requests fuser answers itself
        // (STATX, left at ENOSYS), which no kind counts.
        let via = count(&last, "via_io_uring");
        if via_rings {
            assert!(via >= all, "{option}: {last}");
        } else {
            assert_eq!(via, 0, "{option}: {last}");
        }
    }
}

/// `lower_passthrough`: read-only opens of lower files pass through to the
/// lower file, so reading one costs the daemon no READ; the price,
/// documented, is that while one is open the file cannot be opened for
/// writing (the kernel will not mix backing files: EIO), so no descriptor
/// ever reads stale data, and once it is closed the write goes ahead at
/// once. Without the option, reads go through the daemon and an open
/// descriptor follows the copy-up, as kernel overlayfs's.
#[test]
fn lower_passthrough_reads_skip_the_daemon_and_hold_off_writers() {
    use std::os::unix::fs::FileExt;
    if !require_mounts() {
        return;
    }
    for (option, passes_through) in [("lower_passthrough", true), ("nolower_passthrough", false)] {
        let s = Scratch::new();
        let lower = s.dir("lower");
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        fs::write(lower.join("f"), &data).unwrap();
        let (mut guard, pid, file, mnt) = mount_counting(&s, &lower, &format!(",{option}"));
        let f = mnt.join("f");
        let write = || fs::OpenOptions::new().write(true).open(&f);

        let reader = fs::File::open(&f).unwrap();
        assert!(fs::read(&f).unwrap() == data, "{option}");
        let reads = count(&counts_on_signal(pid, &file), "read");
        assert_eq!(reads == 0, passes_through, "{option}: {reads} reads");
        if passes_through {
            let e = write().expect_err("a write open beside a lower passthrough reader");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            let mut head = [0u8; 4];
            reader.read_exact_at(&mut head, 0).unwrap();
            assert_eq!(&head, &data[..4]);
            drop(reader);
            // Closed: the next write open goes ahead, RELEASE in flight or not.
            write().unwrap().write_all_at(b"NEW!", 0).unwrap();
        } else {
            write().unwrap().write_all_at(b"NEW!", 0).unwrap();
            let mut head = [0u8; 4];
            reader.read_exact_at(&mut head, 0).unwrap();
            assert_eq!(&head, b"NEW!", "{option}: the descriptor opened before");
            drop(reader);
        }
        assert_eq!(&fs::read(&f).unwrap()[..4], b"NEW!", "{option}: a new open");
        guard.unmount().unwrap();
        assert_eq!(&fs::read(s.dir("upper").join("f")).unwrap()[..4], b"NEW!");
        assert!(
            fs::read(lower.join("f")).unwrap() == data,
            "{option}: the lower changed"
        );
    }
}

/// READDIRPLUS gives a listing's files no attributes while the walk stats
/// none of them (find, ls): reading them would read every inode. The first
/// file the walk looks up in such a directory turns attributes back on, so
/// a stat walk (ls -l, du) gets them without a LOOKUP each. Either way a
/// file shows the inode number it is listed with and its own attributes.
#[test]
fn listings_carry_attributes_only_while_the_walk_stats_what_it_lists() {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    if !require_mounts() {
        return;
    }
    let s = Scratch::new();
    let lower = s.dir("lower");
    for d in 0..12 {
        let dir = lower.join(format!("d{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..10 {
            fs::write(dir.join(format!("f{f}")), vec![b'x'; d * 10 + f]).unwrap();
        }
    }
    let (_guard, pid, file, mnt) = mount_counting(&s, &lower, "");
    let list = |d: usize| -> Vec<(PathBuf, u64)> {
        let mut v: Vec<_> = fs::read_dir(mnt.join(format!("d{d:02}")))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.path(), e.ino()))
            .collect();
        v.sort();
        v
    };
    let lookups = || count(&counts_on_signal(pid, &file), "lookup");

    // A walk that only lists: by its tenth directory it has been noticed.
    for d in 0..10 {
        assert_eq!(list(d).len(), 10);
    }
    let listed = list(10);
    let before = lookups();
    let (path, ino) = &listed[3];
    let meta = fs::symlink_metadata(path).unwrap();
    assert_eq!(lookups(), before + 1, "a file listed without attributes");
    assert_eq!((meta.ino(), meta.len()), (*ino, 103), "{}", path.display());

    // That lookup showed a walk that stats: the next listing carries them.
    let listed = list(11);
    let before = lookups();
    for (i, (path, ino)) in listed.iter().enumerate() {
        let meta = fs::symlink_metadata(path).unwrap();
        assert_eq!((meta.ino(), meta.len()), (*ino, 110 + i as u64));
    }
    assert_eq!(lookups(), before, "files listed with their attributes");
}

/// Every page of a listing is a READDIRPLUS, not only the first: a walk
/// into the directories of a long listing finds each one already known to
/// the kernel, with no LOOKUP of its own.
#[test]
fn every_page_of_a_listing_carries_its_directories() {
    if !require_mounts() {
        return;
    }
    let s = Scratch::new();
    let lower = s.dir("lower");
    let top = lower.join("top");
    for d in 0..300 {
        fs::create_dir_all(top.join(format!("directory-with-a-long-name-{d:03}"))).unwrap();
    }
    let (_guard, pid, file, mnt) = mount_counting(&s, &lower, "");
    let before = count(&counts_on_signal(pid, &file), "lookup");
    let walked: usize = fs::read_dir(mnt.join("top"))
        .unwrap()
        .map(|e| fs::read_dir(e.unwrap().path()).unwrap().count() + 1)
        .sum();
    assert_eq!(walked, 300);
    let counts = counts_on_signal(pid, &file);
    // The one LOOKUP is `top` itself.
    assert_eq!(count(&counts, "lookup"), before + 1, "{counts}");
    assert_eq!(count(&counts, "readdir"), 0, "{counts}");
}
