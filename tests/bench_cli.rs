//! `unionmount bench --quick`: every workload runs on every target and is
//! reported with a positive time and ratio; the Markdown carries the table;
//! nothing stays mounted and the temporary directory is gone. `--image`
//! stacks a store image's layers top first and leaves the store as it was.
//! No timing assertions.

mod support;

use std::path::Path;
use std::process::Command;

const TARGETS: &[&str] = &["unionmount", "overlay", "dir"];

/// Root, /dev/fuse and kernel overlayfs, or a skip (a failure under CI=true).
fn can_run() -> bool {
    support::require_mounts()
}

/// Is git installed? Under CI=true it must be (the git workload is part of
/// the bench); elsewhere its absence is reported as a skip.
fn git_installed() -> bool {
    let found = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !support::under_ci(),
            "git is not installed: the git workload cannot run under CI=true"
        );
        eprintln!("git is not installed: checking that the git workload is reported as skipped");
    }
    found
}

/// The per-workload result lines of the JSON (one object per line).
fn result_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("{\"workload\": "))
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// The number after `"key": ` in one JSON result line.
fn number(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &line[at..];
    let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

#[test]
fn quick_bench_reports_every_workload_on_every_target() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let json = tmp.path().join("out.json");
    let csv = tmp.path().join("out.csv");
    let svg = tmp.path().join("out.svg");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_unionmount"))
        .args(["bench", "--quick", "--runs", "1", "--targets"])
        .arg(TARGETS.join(","))
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--svg")
        .arg(&svg)
        .arg("--tmpdir")
        .arg(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    // The runs went to a fresh ext4 made inside --tmpdir, gone afterwards
    // with its loop device.
    assert!(stderr.contains("(a fresh ext4)"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "left in --tmpdir"
    );
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(work.to_str().unwrap()), "{loops}");

    assert!(
        stdout.contains(
            "| workload | target | median s | min–max s | × overlay | daemon CPU s | peak RSS MiB | upper MiB |"
        ),
        "no table header in:\n{stdout}"
    );
    assert!(
        stdout.contains("| workload | overlay (s) | unionmount | dir |"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&json).unwrap();
    let lines = result_lines(&text);
    let workloads: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("\"target\": \"overlay\""))
        .map(|l| l.split('"').nth(3).unwrap().to_string())
        .collect();
    assert!(workloads.len() >= 16, "workloads: {workloads:?}");
    if git_installed() {
        assert!(workloads.iter().any(|w| w == "git"), "{workloads:?}");
        assert!(text.contains("\"skipped_workloads\": [],"), "{text}");
    } else {
        assert!(!workloads.iter().any(|w| w == "git"), "{workloads:?}");
        assert!(
            text.contains("{\"workload\": \"git\", \"reason\": \"git is not installed"),
            "{text}"
        );
        assert!(stdout.contains("Skipped workloads: git: "), "{stdout}");
    }
    assert_eq!(lines.len(), workloads.len() * TARGETS.len(), "{text}");
    for w in &workloads {
        for t in TARGETS {
            let line = lines
                .iter()
                .find(|l| {
                    l.contains(&format!("\"workload\": \"{w}\","))
                        && l.contains(&format!("\"target\": \"{t}\","))
                })
                .unwrap_or_else(|| panic!("no result for {w} on {t}:\n{text}"));
            assert!(line.contains("\"ok\": true"), "{w} on {t} failed: {line}");
            let median = number(line, "median_s").unwrap_or(0.0);
            let ratio = number(line, "ratio").unwrap_or(0.0);
            assert!(median > 0.0, "{w} on {t}: no positive time: {line}");
            assert!(ratio > 0.0, "{w} on {t}: no positive ratio: {line}");
            if *t == "unionmount" {
                assert!(
                    number(line, "peak_rss_kib").is_some(),
                    "{w}: no daemon RSS: {line}"
                );
            }
        }
    }
    // The upper's growth is measured where a workload writes: chown -R on
    // unionmount (metadata-only copy-up) leaves the data below, the kernel
    // (metacopy off by default) copies it.
    let upper_of = |w: &str, t: &str| {
        let line = lines
            .iter()
            .find(|l| {
                l.contains(&format!("\"workload\": \"{w}\","))
                    && l.contains(&format!("\"target\": \"{t}\","))
            })
            .unwrap();
        number(line, "upper_kib")
    };
    assert_eq!(upper_of("find-cold", "unionmount"), None, "{text}");
    assert_eq!(upper_of("chown-R", "dir"), None, "{text}");
    let (ours, kernel) = (
        upper_of("chown-R", "unionmount").expect("unionmount's upper after chown -R"),
        upper_of("chown-R", "overlay").expect("overlay's upper after chown -R"),
    );
    assert!(
        ours < kernel,
        "chown -R: unionmount's upper ({ours} KiB) is not smaller than the kernel's ({kernel} KiB)"
    );
    // The layer-store rows: imports against tar -x, a commit, and pull and
    // push through a loopback registry against podman and skopeo (copy +
    // load for the pull too), containerd with the snapshotter against
    // its overlayfs snapshotter, a copy-up on XFS (FICLONE) against
    // kernel overlayfs's on the bench's filesystem, and a container's start
    // to exit against runc on a bundle made beforehand.
    let store: Vec<&str> = text.lines().filter(|l| l.contains("\"name\": ")).collect();
    let names: Vec<&str> = store.iter().map(|l| l.split('"').nth(3).unwrap()).collect();
    assert_eq!(
        names,
        [
            "import-tar",
            "import-zstd",
            "commit-1file",
            "pull",
            "pull-skopeo",
            "ctr-import",
            "ctr-run",
            "clone-copyup",
            "run-true",
            "push"
        ],
        "{text}"
    );
    for line in &store {
        assert!(line.contains("\"ok\": true"), "store row failed: {line}");
        assert!(
            number(line, "unionmount_median_s").unwrap_or(0.0) > 0.0,
            "{line}"
        );
        if !line.contains("commit-1file") {
            assert!(number(line, "ratio").unwrap_or(0.0) > 0.0, "{line}");
        }
    }
    assert!(
        stdout.contains("| image import of a layer tar | tar -x + syncfs |"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + lines.len(), "{csv}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_failing_target_is_reported_not_fatal() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_unionmount"))
        .args([
            "bench",
            "--quick",
            "--runs",
            "1",
            "--workloads",
            "find-warm,rm-rf",
            "--targets",
            "overlay,broken",
            "--target",
            "broken=false {mnt}",
            "--tmpdir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| find, warm | broken | failed |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("- rm-rf on broken: mount command"),
        "{stdout}"
    );
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A tree of `files` small files under `dir/tree`, and `big` bytes in `dir/data/NAME`.
fn write_tree(dir: &Path, files: usize, big: &[(&str, usize)]) {
    std::fs::create_dir_all(dir.join("tree/sub")).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("tree/sub/f{i:03}")), vec![b'x'; 100 + i]).unwrap();
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for (name, len) in big {
        std::fs::write(dir.join("data").join(name), vec![b'b'; *len]).unwrap();
    }
}

/// Every path under `dir` with its type, size and owner: what a write
/// through to the layers would change.
fn listing(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-printf", "%P %y %s %U:%G %m\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `unionmount`, which must succeed.
fn unionmount_ok(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let out = unionmount(args, paths);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unionmount(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unionmount"));
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

#[test]
fn image_layers_are_stacked_top_first_and_left_untouched() {
    if !can_run() {
        return;
    }
    const MIB: usize = 1 << 20;
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = tmp.path().join("store");
    // The base layer: a tree, a 2 MiB data/big.bin and a 5 MiB data/gone.bin.
    let rootfs = tmp.path().join("rootfs");
    write_tree(&rootfs, 60, &[("big.bin", 2 * MIB), ("gone.bin", 5 * MIB)]);
    unionmount_ok(
        &["image", "import", "--tag", "base", "--store"],
        &[&store, &rootfs],
    );
    // The top layer: big.bin grown to 3 MiB, gone.bin whited out, a file more.
    let upper = tmp.path().join("upper");
    write_tree(&upper, 1, &[("big.bin", 3 * MIB)]);
    let gone = upper.join("data/gone.bin");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &gone,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    unionmount_ok(
        &["commit", "--tag", "two", "--from", "base", "--store"],
        &[&store, &upper],
    );
    let layers_before = listing(&store.join("layers"));
    assert!(
        layers_before.iter().any(|l| l.contains("data/gone.bin c ")),
        "the top layer holds a whiteout: {layers_before:#?}"
    );

    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let json = tmp.path().join("out.json");
    let workloads =
        "stat-warm,seqread-cold,append-copyup,rm-rf,rename-dir,git,commit-1file,pull-skopeo";
    let out = unionmount_ok(
        &[
            "bench",
            "--quick",
            "--runs",
            "1",
            "--targets",
            "unionmount,overlay,dir",
            "--workloads",
            workloads,
            "--image",
            "two",
            "--store",
        ],
        &[
            &store,
            Path::new("--json"),
            &json,
            Path::new("--tmpdir"),
            &work,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).unwrap();

    // Both layers, merged top first: the top's 3 MiB big.bin is the biggest
    // file; bottom first, the whited-out 5 MiB gone.bin would be.
    let layers_line = text.lines().find(|l| l.contains("\"layers\": ")).unwrap();
    assert!(
        layers_line.contains("\"image two: ") && layers_line.contains("over 2 layer(s)"),
        "{layers_line}"
    );
    assert!(
        layers_line.contains("big file data/big.bin (3 MiB, "),
        "{layers_line}"
    );
    // The tree is the top-level directory with the most entries.
    assert!(layers_line.contains("; tree tree; "), "{layers_line}");
    let lines = result_lines(&text);
    let mut expect: Vec<&str> = workloads
        .split(',')
        .filter(|w| !w.starts_with("commit") && !w.starts_with("pull"))
        .collect();
    if !git_installed() {
        expect.retain(|w| *w != "git");
    }
    assert_eq!(lines.len(), expect.len() * 3, "{text}");
    for w in &expect {
        for t in ["unionmount", "overlay", "dir"] {
            let line = lines
                .iter()
                .find(|l| {
                    l.contains(&format!("\"workload\": \"{w}\","))
                        && l.contains(&format!("\"target\": \"{t}\","))
                })
                .unwrap_or_else(|| panic!("no result for {w} on {t}:\n{text}"));
            // seqread-cold reads data/big.bin to the end and fails on any
            // other length than the 3 MiB chosen.
            assert!(line.contains("\"ok\": true"), "{w} on {t} failed: {line}");
        }
    }
    let store_row = text
        .lines()
        .find(|l| l.contains("\"name\": \"commit-1file\""))
        .unwrap_or_else(|| panic!("no commit row:\n{text}"));
    assert!(store_row.contains("\"ok\": true"), "{store_row}");
    // The registry rows move the image given, not the generated layer.
    let pull_row = text
        .lines()
        .find(|l| l.contains("\"name\": \"pull-skopeo\""))
        .unwrap_or_else(|| panic!("no pull-skopeo row:\n{text}"));
    assert!(pull_row.contains("\"ok\": true"), "{pull_row}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the registry rows on image two"),
        "{stdout}"
    );

    // rm -rf, rename, append and git went to fresh uppers, never to the store.
    assert_eq!(listing(&store.join("layers")), layers_before);
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_missing_image_or_store_fails_in_one_line() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = tmp.path().join("store");
    let rootfs = tmp.path().join("rootfs");
    write_tree(&rootfs, 3, &[("big.bin", 1000)]);
    unionmount_ok(
        &["image", "import", "--tag", "base", "--store"],
        &[&store, &rootfs],
    );
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let out = unionmount(
        &["bench", "--quick", "--image", "nosuch", "--store"],
        &[&store, Path::new("--tmpdir"), &work],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("image nosuch"), "{stderr}");

    let not_a_store = tmp.path().join("empty");
    std::fs::create_dir(&not_a_store).unwrap();
    let out = unionmount(
        &["bench", "--quick", "--image", "base", "--store"],
        &[&not_a_store, Path::new("--tmpdir"), &work],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no layer store there"), "{stderr}");
    // Not turned into an empty store on the way.
    assert_eq!(std::fs::read_dir(&not_a_store).unwrap().count(), 0);

    let out = unionmount(
        &["bench", "--quick", "--image", "base", "--lower"],
        &[&rootfs],
    );
    assert!(!out.status.success(), "--image and --lower together");

    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}
