//! Concurrency and crashes: several processes creating, renaming and deleting
//! in the same directories at once, then `rm -rf` leaves nothing; and kill -9
//! of the daemon in the middle of a large copy-up: after remount the file is
//! the old or the new content, never partial, and the workdir is clean.

mod support;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::mount::run_with_timeout;
use support::{Both, Layer, Mount, Scratch, Side, subject_is_kernel, sys, union_opts};

fn lowers() -> Vec<Layer> {
    let mut l0 = Layer::new();
    let mut l1 = Layer::new();
    for d in 0..3 {
        for i in 0..20 {
            l0 = l0.file(&format!("d{d}/f{i}"), format!("l0 {d} {i}"));
            l1 = l1.file(&format!("d{d}/g{i}"), format!("l1 {d} {i}"));
            l1 = l1.file(&format!("d{d}/s{i}/t/deep"), "deep");
        }
    }
    vec![l0, l1]
}

/// One worker's shell loop: create, write, rename across dirs, link, delete,
/// mkdir/rmdir, all on names other workers use too.
fn worker_script(mnt: &Path, seed: u32) -> String {
    format!(
        r#"M='{m}'; s={seed}
for i in $(seq 1 150); do
  a=$(( (i + s) % 3 )); b=$(( (i + s + 1) % 3 )); n=$(( (i * 7 + s) % 20 ))
  echo "w$s $i" > "$M/d$a/f$n" 2>/dev/null
  echo more >> "$M/d$a/g$n" 2>/dev/null
  mv "$M/d$a/f$n" "$M/d$b/g$n" 2>/dev/null
  ln "$M/d$b/g$n" "$M/d$a/h$n.$s" 2>/dev/null
  rm -f "$M/d$a/g$(( (n + 1) % 20 ))" "$M/d$a/h$n.$s" 2>/dev/null
  mkdir -p "$M/d$a/s$n/t/u$s" 2>/dev/null
  mv "$M/d$a/s$n" "$M/d$b/moved$s.$n" 2>/dev/null
  rm -rf "$M/d$b/moved$s.$n" 2>/dev/null
  ls "$M/d$a" > /dev/null 2>&1
done
exit 0
"#,
        m = mnt.display()
    )
}

fn hammer(side: &Side) {
    let err_file = |seed: u32| side.base.join(format!("worker{seed}.stderr"));
    let children: Vec<_> = (0..4)
        .map(|seed| {
            Command::new("sh")
                .arg("-c")
                .arg(worker_script(&side.mnt, seed))
                .stdin(std::process::Stdio::null())
                .stderr(fs::File::create(err_file(seed)).unwrap())
                .spawn()
                .expect("spawn sh")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for mut c in children {
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(st.success(), "{}: worker failed: {st}", side.name);
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{}: workers hung (deadlock?)", side.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Every command that may fail in a race has its stderr silenced; what is
    // left (creating a file in d0..d2, which always exist) must never fail.
    let errors: Vec<String> = (0..4)
        .flat_map(|seed| {
            fs::read_to_string(err_file(seed))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        errors.is_empty(),
        "{}: {} errors creating files in directories that always exist, e.g.:\n{}",
        side.name,
        errors.len(),
        errors
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn concurrent_create_rename_delete_then_rm_rf() {
    let Some(mut b) = Both::new(lowers()) else {
        return;
    };
    for side in [&b.k, &b.u] {
        hammer(side);
        let t = support::snapshot(&side.mnt);
        assert!(t.problems.is_empty(), "{}: {:?}", side.name, t.problems);
        let mut cmd = Command::new("rm");
        cmd.arg("-rf");
        for e in fs::read_dir(&side.mnt).unwrap() {
            cmd.arg(e.unwrap().path());
        }
        let (code, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(60));
        if code != 0 {
            // Say what is left, through the mount and in the upper.
            let mut find = Command::new("find");
            find.arg(&side.mnt)
                .arg(&side.upper)
                .arg("-mindepth")
                .arg("1");
            let (_, left, _) = run_with_timeout(&mut find, Duration::from_secs(20));
            let left: Vec<&str> = left.lines().take(60).collect();
            panic!(
                "{}: rm -rf failed: {err}\nleft behind (mount, then upper):\n{}",
                side.name,
                left.join("\n")
            );
        }
        let left: Vec<_> = fs::read_dir(&side.mnt).unwrap().collect();
        assert!(left.is_empty(), "{}: rm -rf left {left:?}", side.name);
    }
    b.check_trees("after rm -rf");
    // The uppers say the same after a remount by kernel overlayfs.
    b.check_trees_after_kernel_remount("after rm -rf");
    assert!(fs::read_dir(&b.u.mnt).unwrap().next().is_none());
}

#[test]
fn concurrent_renames_of_lower_directories() {
    let Some(b) = Both::new(lowers()) else { return };
    for side in b.sides() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = side.mnt.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let a = m.join(format!("d{}/s{}", (i + t) % 3, i % 20));
                        let c = m.join(format!("d{}/s{}", (i + t + 1) % 3, (i + 3) % 20));
                        let _ = fs::rename(&a, &c);
                        let _ = fs::read_dir(m.join(format!("d{}", i % 3))).map(|r| r.count());
                        let _ = fs::metadata(c.join("t/deep"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = support::snapshot(&side.mnt);
        assert!(t.problems.is_empty(), "{}: {:?}", side.name, t.problems);
        // Every directory that survived still holds its content.
        for (p, e) in &t.entries {
            if e.kind == 'd'
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('s'))
            {
                assert!(
                    side.mnt.join(p).join("t/deep").exists(),
                    "{}: {} lost its content",
                    side.name,
                    p.display()
                );
            }
        }
    }
}

#[test]
fn daemon_does_not_keep_an_fd_per_inode() {
    // 5000 lower files, all looked up and read through the mount: the kernel
    // keeps their inodes cached, the daemon must not keep 5000 fds open.
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        eprintln!("no daemon to look at when the subject is kernel overlayfs");
        return;
    }
    let s = Scratch::new();
    let [l0, l1, up, work, mnt] = s.dirs(["l0", "l1", "up", "work", "mnt"]);
    for d in 0..50 {
        let dir = l1.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..100 {
            fs::write(dir.join(format!("f{i}")), "x").unwrap();
        }
    }
    let lowers = vec![l0, l1];
    let args = vec!["-o".into(), union_opts(&lowers, Some((&up, &work))).into()];
    let m = Mount::union_foreground(&mnt, &args).unwrap();
    let mut files = Vec::new();
    for d in 0..50 {
        for i in 0..100 {
            let p = mnt.join(format!("d{d}/f{i}"));
            assert_eq!(fs::read(&p).unwrap(), b"x");
            if i % 10 == 0 {
                // some stay open, as a busy container's would
                files.push(fs::File::open(&p).unwrap());
            }
        }
    }
    let pid = m.pid().unwrap();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(
        fds < 1500,
        "daemon holds {fds} fds after 5000 lookups (500 files open)"
    );
    drop(files);
    drop(m);
}

const BIG: u64 = 512 << 20;
const CHUNK: u64 = 1 << 20;

/// The lower's big file: 1 MiB chunks of data at every other MiB, holes between.
/// Each chunk is one random-looking MiB that starts with its own index.
fn chunk_data(i: u64) -> Vec<u8> {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let mut v = BASE
        .get_or_init(|| support::pattern(CHUNK as usize, 77))
        .clone();
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn write_big(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(BIG).unwrap();
    // dd writes real data chunk by chunk, as a user's tool would.
    let chunk_file = path.with_extension("chunk");
    for i in (0..BIG / CHUNK).step_by(2) {
        fs::write(&chunk_file, chunk_data(i)).unwrap();
        let st = Command::new("dd")
            .arg(format!("if={}", chunk_file.display()))
            .arg(format!("of={}", path.display()))
            .arg("bs=1M")
            .arg(format!("seek={i}"))
            .arg("count=1")
            .arg("conv=notrunc")
            .arg("status=none")
            .status()
            .expect("dd");
        assert!(st.success());
    }
    fs::remove_file(chunk_file).unwrap();
    f.sync_all().unwrap();
}

/// Old content, new content (old plus our marker), or a broken file.
fn classify(path: &Path) -> Result<&'static str, String> {
    let f = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let size = f.metadata().unwrap().len();
    if size != BIG {
        return Err(format!("size {size}"));
    }
    let mut buf = vec![0u8; CHUNK as usize];
    let zeros = vec![0u8; CHUNK as usize];
    let mut marked = false;
    for i in 0..BIG / CHUNK {
        f.read_exact_at(&mut buf, i * CHUNK)
            .map_err(|e| format!("read chunk {i}: {e}"))?;
        let want = if i % 2 == 0 {
            chunk_data(i)
        } else {
            zeros.clone()
        };
        if i == 0 && buf[..8] == *b"NEWDATA!" {
            marked = true;
            if buf[8..] != want[8..] {
                return Err("chunk 0 differs after the marker".into());
            }
            continue;
        }
        if buf != want {
            return Err(format!("chunk {i} differs (partial copy?)"));
        }
    }
    Ok(if marked { "new" } else { "old" })
}

#[test]
fn kill_9_during_a_large_copy_up() {
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        eprintln!("subject is kernel overlayfs: no daemon to kill; skipping the crash test");
        return;
    }
    let s = Scratch::new();
    let [l0, l1, up, work, mnt] = s.dirs(["l0", "l1", "up", "work", "mnt"]);
    write_big(&l1.join("big"));
    fs::write(l0.join("small"), "s").unwrap();
    let lowers = vec![l0, l1.clone()];
    let args = vec!["-o".into(), union_opts(&lowers, Some((&up, &work))).into()];
    let mut m = Mount::union_foreground(&mnt, &args).unwrap();
    assert_eq!(classify(&mnt.join("big")), Ok("old"));
    // A writer triggers the copy-up; kill -9 the daemon as soon as the copy is
    // seen in progress in the workdir (or the upper).
    let target = mnt.join("big");
    let writer = std::thread::spawn(move || {
        let f = fs::OpenOptions::new().write(true).open(&target)?;
        f.write_all_at(b"NEWDATA!", 0)?;
        f.sync_all()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_in_progress = false;
    while Instant::now() < deadline && !writer.is_finished() {
        let partial = sys::files_under(&work)
            .into_iter()
            .chain(sys::files_under(&up))
            .any(|p| fs::metadata(&p).is_ok_and(|md| md.len() > 0 || md.blocks() > 0));
        if partial {
            seen_in_progress = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    m.kill_daemon();
    let _ = writer.join();
    eprintln!("crash test: copy-up seen in progress when killed: {seen_in_progress}");
    // Drop the dead mount (the guard detaches it), then mount again.
    drop(m);
    assert!(!support::is_mounted(&mnt));
    let m2 = Mount::union_foreground(&mnt, &args).unwrap();
    match classify(&mnt.join("big")) {
        Ok(v) => eprintln!("crash test: file is the {v} content"),
        Err(e) => panic!("after kill -9 and remount the file is broken: {e}"),
    }
    if up.join("big").exists() {
        assert!(
            classify(&up.join("big")).is_ok(),
            "a partial copy is visible in the upper"
        );
    }
    // An index of hard-linked copies (as the kernel's work/index) may stay.
    let left: Vec<_> = sys::files_under(&work)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "index"))
        .collect();
    assert!(left.is_empty(), "workdir leftovers after remount: {left:?}");
    // The lower is untouched.
    assert_eq!(classify(&l1.join("big")), Ok("old"));
    // And a copy-up now completes.
    fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("big"))
        .unwrap()
        .write_all_at(b"NEWDATA!", 0)
        .unwrap();
    assert_eq!(classify(&mnt.join("big")), Ok("new"));
    drop(m2);
}

#[test]
fn other_operations_proceed_during_a_large_copy_up() {
    // No lock is held across a copy-up: while a big file is being copied, the
    // rest of the mount answers. Proof: other operations complete while the
    // copying open(2) has not returned yet. A copy too quick to be seen is
    // inconclusive and retried with another file.
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        // Kernel overlayfs copies into an O_TMPFILE, which cannot be watched.
        eprintln!("subject is kernel overlayfs: its copy-up cannot be observed; skipping");
        return;
    }
    let s = Scratch::new();
    let [l0, l1, up, work, mnt] = s.dirs(["l0", "l1", "up", "work", "mnt"]);
    fs::write(l0.join("small"), "small").unwrap();
    fs::create_dir(l0.join("dir")).unwrap();
    let lowers = vec![l0, l1.clone()];
    let tries = 3;
    for k in 0..tries {
        write_big(&l1.join(format!("big{k}")));
    }
    let args = vec!["-o".into(), union_opts(&lowers, Some((&up, &work))).into()];
    let m = Mount::union_foreground(&mnt, &args).unwrap();
    let mut proven = false;
    for k in 0..tries {
        let target = mnt.join(format!("big{k}"));
        let writer = std::thread::spawn(move || {
            fs::OpenOptions::new().write(true).open(&target).map(|_| ())
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut in_progress = false;
        while Instant::now() < deadline && !writer.is_finished() {
            in_progress = sys::files_under(&work)
                .into_iter()
                .chain(
                    sys::files_under(&up)
                        .into_iter()
                        .filter(|p| p.ends_with(format!("big{k}"))),
                )
                .any(|p| fs::metadata(&p).is_ok_and(|md| md.blocks() > 0));
            if in_progress {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if in_progress {
            assert_eq!(fs::read(mnt.join("small")).unwrap(), b"small");
            assert!(fs::metadata(mnt.join("dir")).unwrap().is_dir());
            assert!(fs::read_dir(&mnt).unwrap().count() >= 3);
            fs::write(mnt.join(format!("new{k}")), "n").unwrap();
            fs::write(mnt.join("dir").join(format!("new{k}")), "n").unwrap();
            if !writer.is_finished() {
                proven = true;
            }
        }
        writer.join().unwrap().unwrap();
        assert_eq!(classify(&mnt.join(format!("big{k}"))), Ok("old"));
        if proven {
            break;
        }
        eprintln!("try {k}: copy-up seen in progress: {in_progress}; inconclusive");
    }
    assert!(
        proven,
        "in {tries} tries, no operation completed while a large copy-up was running (a lock held across the copy?)"
    );
    drop(m);
}

#[test]
fn rm_r_of_a_renamed_merged_dir() {
    // What each stress worker does, one step at a time: a lower dir gets an
    // upper subdir, is renamed to another dir, then removed with rm -r.
    let Some(b) = Both::new(lowers()) else { return };
    for round in 0..3 {
        b.ok(&format!("round {round}"), |m| {
            fs::create_dir_all(m.join(format!("d0/s{round}/t/u{round}")))?;
            fs::rename(
                m.join(format!("d0/s{round}")),
                m.join(format!("d1/moved{round}")),
            )?;
            let listed = support::sys::names(&m.join(format!("d1/moved{round}/t")))?;
            fs::remove_dir_all(m.join(format!("d1/moved{round}")))?;
            Ok(listed)
        });
    }
    b.check_trees("rm -r of renamed merged dirs");
}

#[test]
fn create_never_fails_while_the_name_is_renamed_away() {
    // A smaller form of the stress test: one thread creates (O_CREAT|O_TRUNC)
    // a name while another renames it away and a third unlinks the target.
    let Some(b) = Both::new(lowers()) else { return };
    for side in b.sides() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let m = side.mnt.clone();
        let creator = std::thread::spawn(move || {
            let mut errors = Vec::new();
            for i in 0..2000 {
                let name = format!("d0/f{}", i % 4);
                if let Err(e) = fs::write(m.join(&name), format!("{i}")) {
                    errors.push(format!("create {name}: {e}"));
                }
            }
            errors
        });
        let movers: Vec<_> = (0..2)
            .map(|t| {
                let (m, stop) = (side.mnt.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let from = m.join(format!("d0/f{}", i % 4));
                        let to = m.join(format!("d{}/g{}", 1 + t, i % 4));
                        let _ = fs::rename(&from, &to);
                        let _ = fs::remove_file(&to);
                        i += 1;
                    }
                })
            })
            .collect();
        let errors = creator.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in movers {
            t.join().unwrap();
        }
        assert!(
            errors.is_empty(),
            "{}: {} creates failed, e.g. {:?}",
            side.name,
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        // The end state is a race; it only has to be consistent.
        let t = support::snapshot(&side.mnt);
        assert!(t.problems.is_empty(), "{}: {:?}", side.name, t.problems);
    }
}
