//! kill -9 of `unionmount` in the middle of `image load` (OCI and
//! docker-archive), `image import` (a big layer killed at a few moments,
//! and in each phase of its transaction), `commit` and `image prune`. After
//! each kill: `image fsck` finds nothing to repair, the next command empties
//! tmp/, a tag is either absent or whole, and the same command run again
//! succeeds and gives the full result.
//!
//! The kill points are spread evenly over the command's own duration,
//! measured once undisturbed, so every phase (staging blobs, unpacking,
//! writing the index, deleting) gets hit on any machine speed. The rounds
//! per command default to 5; `UNIONMOUNT_CRASH_ROUNDS=50` is the long form.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::store::rawtar::RawTar;
use support::store::*;

fn rounds() -> u32 {
    std::env::var("UNIONMOUNT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A root filesystem tar: `files` small files over 20 directories and one
/// incompressible file of `big` bytes, all tagged with `seed`.
fn rootfs_tar(seed: u32, files: u32, big: u32) -> Vec<u8> {
    let mut tar = RawTar::default();
    for i in 0..files {
        tar = tar.file(
            &format!("d{}/s{seed}-f{i}", i % 20),
            format!("{seed}:{i}").as_bytes(),
        );
    }
    let data: Vec<u8> = (0..big)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    tar.file(&format!("big{seed}"), &data).finish()
}

/// What one kill round found.
#[derive(Default, Debug)]
struct Tally {
    killed: u32,
    finished_first: u32,
}

/// Run `args` once to time it (then `undo`), then `rounds()` times killed
/// with SIGKILL at evenly spread points of that time. After each kill:
/// fsck clean, tmp/ emptied, `whole` holds for what is there, the command
/// succeeds when run again, `done` holds, and `undo` restores the start.
fn kill_at_spread_points(
    env: &Env,
    args: &[&str],
    whole: impl Fn(),
    done: impl Fn(),
    undo: impl Fn(),
) -> Tally {
    let t0 = Instant::now();
    env.um(args);
    let took = t0.elapsed();
    done();
    undo();
    let n = rounds();
    let mut tally = Tally::default();
    for i in 1..=n {
        let mut child = Command::new(bin())
            .args(args)
            .env("UNIONMOUNT_STORE", env.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting unionmount");
        std::thread::sleep(took.mul_f64(f64::from(i) / f64::from(n + 1)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            tally.finished_first += 1;
        } else {
            tally.killed += 1;
        }
        let fsck = env.um(&["image", "fsck"]);
        assert!(
            fsck.contains("clean"),
            "{args:?} killed (round {i}): {fsck}"
        );
        assert_eq!(
            fs::read_dir(env.store().join("tmp")).unwrap().count(),
            0,
            "{args:?} killed (round {i}): tmp/ not emptied by the next command"
        );
        whole();
        env.um(args);
        done();
        assert!(env.um(&["image", "fsck"]).contains("clean"));
        undo();
    }
    assert!(
        tally.killed > 0,
        "{args:?}: no round was killed before it finished: {tally:?}"
    );
    eprintln!("{args:?}: {tally:?}");
    tally
}

/// Every tagged image is whole: its layers are there (fsck checked them)
/// and `inspect` reads it.
fn tags_are_whole(env: &Env) {
    let ls = env.um(&["image", "ls", "--format", "json"]);
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&ls).unwrap();
    for img in v.as_array().unwrap() {
        let name = img["name"].as_str().unwrap_or_default();
        if !name.is_empty() {
            for dir in env.layer_dirs(name) {
                assert!(
                    dir.is_dir(),
                    "image {name}: layer {} missing",
                    dir.display()
                );
            }
        }
    }
}

fn has_tag(env: &Env, tag: &str) -> bool {
    env.um(&["image", "ls"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(tag))
}

/// An image of three layers (import, then two commits), saved in both
/// archive formats; the store is emptied afterwards.
fn three_layer_archives(env: &Env) -> (String, String) {
    let t = env.path();
    let tar = t.join("base.tar");
    fs::write(&tar, rootfs_tar(1, 1000, 12_000_000)).unwrap();
    env.um(&["image", "import", &tar.display().to_string(), "--tag", "l1"]);
    let mut from = "l1".to_string();
    for n in 2..=3 {
        let upper = t.join(format!("upper{n}"));
        fs::create_dir_all(upper.join("d1")).unwrap();
        fs::write(
            upper.join(format!("d1/added{n}")),
            vec![b'0' + n as u8; 200_000],
        )
        .unwrap();
        fs::write(upper.join(format!("big{n}")), rootfs_tar(n, 0, 6_000_000)).unwrap();
        let tag = format!("l{n}");
        env.um(&[
            "commit",
            &upper.display().to_string(),
            "--tag",
            &tag,
            "--from",
            &from,
        ]);
        from = tag;
    }
    let oci = t.join("img.oci.tar").display().to_string();
    let docker = t.join("img.docker.tar").display().to_string();
    env.um(&["image", "save", "l3", "--format", "oci", &oci]);
    env.um(&["image", "save", "l3", "--format", "docker-archive", &docker]);
    for tag in ["l1", "l2", "l3"] {
        env.um(&["image", "rm", tag]);
    }
    env.um(&["image", "prune"]);
    assert_eq!(env.contents(), (vec![], vec![]));
    (oci, docker)
}

/// The loaded image's top file and its bottom layer's files are all there.
fn loaded_image_is_complete(env: &Env) {
    let ls = env.um(&["image", "ls", "--format", "json"]);
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&ls).unwrap();
    let name = v.as_array().unwrap()[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let dirs = env.layer_dirs(&name);
    assert_eq!(dirs.len(), 3, "{name}: {dirs:?}");
    assert_eq!(fs::read(dirs[0].join("d7/s1-f987")).unwrap(), b"1:987");
    assert_eq!(fs::read(dirs[0].join("big1")).unwrap().len(), 12_000_000);
    assert_eq!(fs::read(dirs[2].join("d1/added3")).unwrap().len(), 200_000);
}

fn empty_store(env: &Env) {
    let ls = env.um(&["image", "ls", "--format", "json"]);
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&ls).unwrap();
    for img in v.as_array().unwrap() {
        if let Some(name) = img["name"].as_str().filter(|n| !n.is_empty()) {
            env.um(&["image", "rm", name]);
        }
    }
    env.um(&["image", "prune"]);
    assert_eq!(env.contents(), (vec![], vec![]), "the store is not empty");
}

#[test]
fn kill_9_during_image_load_of_both_archive_formats() {
    let env = Env::new();
    let (oci, docker) = three_layer_archives(&env);
    for archive in [&oci, &docker] {
        kill_at_spread_points(
            &env,
            &["image", "load", archive],
            || tags_are_whole(&env),
            || loaded_image_is_complete(&env),
            || empty_store(&env),
        );
    }
}

#[test]
fn kill_9_during_commit() {
    let env = Env::new();
    let t = env.path();
    let tar = t.join("base.tar");
    fs::write(&tar, rootfs_tar(1, 500, 1_000_000)).unwrap();
    env.um(&[
        "image",
        "import",
        &tar.display().to_string(),
        "--tag",
        "base",
    ]);
    // Many changes: new files, a big one, whiteouts and an opaque directory.
    let upper = t.join("upper");
    for i in 0..3000 {
        let d = upper.join(format!("new{}", i % 30));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("new {i}")).unwrap();
    }
    fs::write(upper.join("big-new"), rootfs_tar(9, 0, 20_000_000)).unwrap();
    fs::create_dir_all(upper.join("d3")).unwrap();
    sh(&format!(
        "mknod {0}/d3/s1-f3 c 0 0 && mkdir -p {0}/d4 && setfattr -n trusted.overlay.opaque -v y {0}/d4",
        upper.display()
    ));
    let up = upper.display().to_string();
    let args = ["commit", up.as_str(), "--tag", "c", "--from", "base"];
    let tally = kill_at_spread_points(
        &env,
        &args,
        || {
            tags_are_whole(&env);
            assert!(has_tag(&env, "base"), "the base image is gone");
        },
        || {
            let dirs = env.layer_dirs("c");
            assert_eq!(dirs.len(), 2);
            assert_eq!(fs::read(dirs[1].join("new7/f2977")).unwrap(), b"new 2977");
            assert_eq!(
                fs::read(dirs[1].join("big-new")).unwrap().len(),
                rootfs_tar(9, 0, 20_000_000).len()
            );
        },
        || {
            env.um(&["image", "rm", "c"]);
            env.um(&["image", "prune"]);
        },
    );
    assert!(tally.killed + tally.finished_first == rounds());
    // The upper was only read.
    assert_eq!(fs::read(upper.join("new7/f2977")).unwrap(), b"new 2977");
}

#[test]
fn kill_9_during_prune() {
    let env = Env::new();
    let t = env.path();
    let tars: Vec<_> = (1..=4)
        .map(|seed| {
            let p = t.join(format!("r{seed}.tar"));
            fs::write(&p, rootfs_tar(seed, 1500, 4_000_000)).unwrap();
            p.display().to_string()
        })
        .collect();
    env.um(&["image", "import", &tars[3], "--tag", "keep"]);
    let keep_dirs = env.layer_dirs("keep");
    // Three images to collect, made again after each round.
    let make_garbage = || {
        for (i, tar) in tars[..3].iter().enumerate() {
            let tag = format!("gone{i}");
            env.um(&["image", "import", tar, "--tag", &tag]);
            env.um(&["image", "rm", &tag]);
        }
    };
    make_garbage();
    kill_at_spread_points(
        &env,
        &["image", "prune"],
        || {
            tags_are_whole(&env);
            assert_eq!(env.layer_dirs("keep"), keep_dirs);
            assert_eq!(
                fs::read(keep_dirs[0].join("d7/s4-f1487")).unwrap(),
                b"4:1487"
            );
        },
        || {
            // Only the kept image's blobs (layer, config, manifest) and layer remain.
            let (blobs, layers) = env.contents();
            assert_eq!(layers.len(), 1, "{layers:?}");
            assert_eq!(blobs.len(), 3, "{blobs:?}");
        },
        make_garbage,
    );
    assert!(keep_dirs[0].join("big4").is_file());
}

/// A partial tree under a layer's name (a prune killed while deleting it,
/// in the old way) must not be taken for the unpacked layer: prune moves a
/// layer out of `layers/` in one rename before deleting it.
#[test]
fn prune_never_leaves_a_partial_layer_under_its_name() {
    let env = Env::new();
    let t = env.path();
    let tar = t.join("r.tar");
    fs::write(&tar, rootfs_tar(5, 3000, 1_000_000)).unwrap();
    let tar = tar.display().to_string();
    env.um(&["image", "import", &tar, "--tag", "x"]);
    let dir = env.layer_dirs("x").remove(0);
    env.um(&["image", "rm", "x"]);
    // Stop prune at its first unlink inside the layer directory: strace's
    // fault injection kills it there (the layer is already renamed away).
    if !need_tools(
        "prune_never_leaves_a_partial_layer_under_its_name",
        &["strace"],
    ) {
        return;
    }
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=unlinkat",
            "-e",
            "inject=unlinkat:signal=KILL:when=2",
        ])
        .arg(bin())
        .args(["image", "prune"])
        .env("UNIONMOUNT_STORE", env.store())
        .output()
        .unwrap();
    assert!(!out.status.success(), "prune was not killed");
    assert!(
        !dir.exists(),
        "a half-deleted layer is still under its name: {}",
        dir.display()
    );
    env.um(&["image", "import", &tar, "--tag", "x"]);
    let again = env.layer_dirs("x").remove(0);
    assert_eq!(fs::read(again.join("d7/s5-f2987")).unwrap(), b"5:2987");
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

#[test]
fn kill_9_during_import_leaves_a_clean_store() {
    let env = Env::new();
    env.init_store();
    let big: Vec<u8> = (0..40_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let tar = RawTar::default()
        .file("big", &big)
        .file("small", b"s")
        .finish();
    let p = env.path().join("big.tar");
    fs::write(&p, tar).unwrap();
    for delay_ms in [5u64, 50, 200] {
        let mut child = Command::new(bin())
            .args(["image", "import"])
            .arg(&p)
            .args(["--tag", "big"])
            .env("UNIONMOUNT_STORE", env.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the moment, the store is consistent and the import can be retried.
        let out = env.um(&["image", "fsck"]);
        assert!(out.contains("clean"), "{out}");
        assert_eq!(fs::read_dir(env.store().join("tmp")).unwrap().count(), 0);
        let _ = env.um_out(&["image", "rm", "big"]);
        env.um(&["image", "prune"]);
    }
    env.um(&["image", "import", &p.display().to_string(), "--tag", "big"]);
    let dirs = env.layer_dirs("big");
    assert_eq!(fs::read(dirs[0].join("big")).unwrap().len(), big.len());
}

/// What a running import has staged: names in `tmp/txn-*/`.
fn staged(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for t in fs::read_dir(store.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in fs::read_dir(t.path()).into_iter().flatten().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn kill_9_in_each_phase_of_import_then_fsck_is_clean_and_a_retry_succeeds() {
    // Killed while the blob is staged (fed through a fifo, so the moment is
    // certain), and while the layer is being unpacked (seen in tmp/): each
    // time fsck is clean, tmp/ is emptied by the next command, and the same
    // import run again succeeds with no prune in between.
    let env = Env::new();
    env.init_store();
    let mut tar = RawTar::default();
    for i in 0..3000 {
        tar = tar.file(&format!("d{}/f{i}", i % 30), format!("{i}").as_bytes());
    }
    let big: Vec<u8> = (0..24_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    let tar = tar.file("big", &big).finish();
    let p = env.path().join("rootfs.tar");
    fs::write(&p, &tar).unwrap();
    let check_then_retry = |tag: &str| {
        let out = env.um(&["image", "fsck"]);
        assert!(out.contains("clean"), "{out}");
        assert_eq!(fs::read_dir(env.store().join("tmp")).unwrap().count(), 0);
        assert!(
            !env.um(&["image", "ls"]).contains(tag),
            "no tag after a kill"
        );
        env.um(&["image", "import", &p.display().to_string(), "--tag", tag]);
        let dirs = env.layer_dirs(tag);
        assert_eq!(fs::read(dirs[0].join("big")).unwrap(), big);
        assert_eq!(fs::read(dirs[0].join("d7/f2977")).unwrap(), b"2977");
        assert!(env.um(&["image", "fsck"]).contains("clean"));
        env.um(&["image", "rm", tag]);
        env.um(&["image", "prune"]);
        assert_eq!(env.contents(), (vec![], vec![]), "prune removes it all");
    };

    // 1. Half the tar written into a fifo: the import is staging its blob.
    let fifo = env.path().join("fifo.tar");
    run(Command::new("mkfifo").arg(&fifo));
    let mut child = Command::new(bin())
        .args(["image", "import"])
        .arg(&fifo)
        .args(["--tag", "staged"])
        .env("UNIONMOUNT_STORE", env.store())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(&tar[..tar.len() / 2]).unwrap();
        w.flush().unwrap();
        let t0 = std::time::Instant::now();
        while !staged(&env.store()).iter().any(|n| n.starts_with("blob")) {
            assert!(t0.elapsed().as_secs() < 30, "no blob staged");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    check_then_retry("staged");

    // 2. While unpacking: a layer directory is in tmp/.
    let mut caught = false;
    for _ in 0..5 {
        let mut child = Command::new(bin())
            .args(["image", "import"])
            .arg(&p)
            .args(["--tag", "unpacking"])
            .env("UNIONMOUNT_STORE", env.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if staged(&env.store()).iter().any(|n| n.starts_with("layer")) {
                child.kill().unwrap();
                caught = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().unwrap();
        if caught {
            break;
        }
        // Finished before it was seen unpacking: undo and try again.
        env.um(&["image", "rm", "unpacking"]);
        env.um(&["image", "prune"]);
    }
    assert!(caught, "never saw the import unpacking");
    check_then_retry("unpacking");
}
