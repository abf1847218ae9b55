//! containerd on the snapshotter: Debian's containerd, private to the
//! test, with `unionmount snapshotter` as its proxy plugin. An image made
//! by umoci (three layers: a whiteout, an opaque directory, hard links) is
//! imported with `ctr images import --snapshotter unionmount` and run with
//! `ctr run`; what the container sees is what `umoci unpack` shows, its
//! writes land in its own upper and the image's layers stay as they were.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::containerd::Containerd;
use support::registry::images::multi_layer_oci;
use support::snapshotter::{NAME, Snapshotter};
use support::{Scratch, snapshot};

const IMAGE: &str = "localhost/img:v3";

/// The files of `/data` as a container lists them: `path:content` for
/// each file, then each directory, sorted.
const LIST: &str = "cd / && for f in $(find data -type f | sort); do echo \"$f:$(cat $f)\"; done; \
                    find data -type d | sort; stat -c 'links %h' data/links/one";

/// The same listing of the reference rootfs.
fn listing(root: &Path) -> String {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut stack = vec![root.join("data")];
    while let Some(p) = stack.pop() {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if p.is_dir() {
            dirs.push(rel);
            stack.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else {
            let text = fs::read_to_string(&p).unwrap();
            files.push(format!("{rel}:{}", text.trim_end_matches('\n')));
        }
    }
    files.sort();
    dirs.sort();
    let links = fs::metadata(root.join("data/links/one")).unwrap();
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}\n{}\nlinks {}\n",
        files.join("\n"),
        dirs.join("\n"),
        links.nlink()
    )
}

/// Dropped in this order: containerd (its tasks and mounts), the
/// snapshotter, then the scratch directory.
struct Setup {
    cd: Containerd,
    sn: Snapshotter,
    s: Scratch,
    archive: PathBuf,
    reference: PathBuf,
}

fn setup() -> Option<Setup> {
    if !support::tools::require(&["containerd", "ctr", "runc", "umoci", "skopeo", "busybox"]) {
        return None;
    }
    let s = Scratch::new();
    let (layout, tag, reference) = multi_layer_oci(s.path());
    let archive = s.path().join("img.tar");
    support::tools::ok(
        "skopeo copy to a docker-archive",
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker-archive:{}:{IMAGE}", archive.display()))
            .output()
            .unwrap(),
    );
    let sn = Snapshotter::start(&s.path().join("sn.sock"), &s.path().join("store"));
    let cd = Containerd::start(&s.path().join("cd"), &sn.socket);
    Some(Setup {
        s,
        sn,
        cd,
        archive,
        reference,
    })
}

impl Setup {
    fn import(&self) {
        let a = self.archive.display().to_string();
        self.cd.ok(&["images", "import", "--snapshotter", NAME, &a]);
    }

    /// A container of the image lists `/data` as umoci's rootfs has it.
    fn assert_runs_as_umoci_unpacks(&self) {
        let run = [
            "run",
            "--snapshotter",
            NAME,
            "--rm",
            IMAGE,
            "c1",
            "sh",
            "-c",
            LIST,
        ];
        assert_eq!(self.cd.ok(&run), listing(&self.reference));
    }

    /// The directory of the snapshot whose key ends in `/key` (containerd
    /// prefixes keys with its namespace and a number).
    fn snapshot_dir(&self, key: &str) -> PathBuf {
        let recs = self.records();
        let r = recs
            .iter()
            .find(|r| r.0.ends_with(&format!("/{key}")))
            .unwrap_or_else(|| panic!("no snapshot {key}: {recs:?}"));
        self.sn
            .store
            .join("snapshots")
            .join(r.1.to_string())
            .join("fs")
    }

    /// The records: (key, id, kind).
    fn records(&self) -> Vec<(String, u64, String)> {
        let meta: serde_json::Value = serde_json::from_slice(
            &fs::read(self.sn.store.join("snapshots/metadata.json")).unwrap(),
        )
        .unwrap();
        let mut out: Vec<(String, u64, String)> = meta["snapshots"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, r)| {
                let kind = r["kind"].as_str().unwrap().to_string();
                (k.clone(), r["id"].as_u64().unwrap(), kind)
            })
            .collect();
        out.sort_by_key(|r| r.1);
        out
    }

    /// The committed snapshots' trees (the image's layers), oldest first.
    fn layers(&self) -> Vec<support::Tree> {
        let root = self.sn.store.join("snapshots");
        self.records()
            .iter()
            .filter(|r| r.2 == "Committed")
            .map(|r| snapshot(&root.join(r.1.to_string()).join("fs")))
            .collect()
    }

    /// containerd removes a deleted container's snapshot in its garbage
    /// collector, after the command returned: wait for that.
    fn wait_gone(&self, dir: &Path) {
        let gone = support::wait_until(Duration::from_secs(30), || !dir.exists());
        assert!(gone, "{} still there", dir.display());
    }
}

#[test]
fn an_imported_image_runs_as_umoci_unpacks_it_and_writes_go_to_its_upper() {
    let Some(t) = setup() else { return };
    t.import();
    // The chain as containerd shows it: three committed layers, each the
    // parent of the next.
    let ls = t.cd.ok(&["snapshots", "--snapshotter", NAME, "ls"]);
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{ls}");
    assert!(rows.iter().all(|r| r.last() == Some(&"Committed")), "{ls}");
    let with_parent = rows.iter().filter(|r| r.len() == 3).count();
    assert_eq!(with_parent, 2, "two layers have parents: {ls}");
    let before = t.layers();

    let out = t.cd.ok(&[
        "run",
        "--snapshotter",
        NAME,
        "--rm",
        IMAGE,
        "c1",
        "sh",
        "-c",
        &format!("{LIST}; echo written > /written"),
    ]);
    assert_eq!(out, listing(&t.reference), "the container's /data");
    // The image's layers are untouched.
    assert_eq!(t.layers(), before);

    // A container kept: its write is in its own upper, and nowhere else.
    t.cd.ok(&[
        "run",
        "--snapshotter",
        NAME,
        IMAGE,
        "c2",
        "sh",
        "-c",
        "echo mine > /mine; rm /data/keep",
    ]);
    let upper = t.snapshot_dir("c2");
    assert_eq!(fs::read_to_string(upper.join("mine")).unwrap(), "mine\n");
    assert!(
        upper.join("data/keep").exists(),
        "the deletion is a whiteout in the upper"
    );
    assert_eq!(t.layers(), before, "the image's layers are untouched");
    t.cd.ok(&["containers", "rm", "c2"]);
    t.wait_gone(&upper);
    assert_eq!(t.layers(), before);
    let _ = &t.s;
}

#[test]
fn two_containers_of_one_image_and_one_removed_while_the_other_runs() {
    let Some(t) = setup() else { return };
    t.import();
    for c in ["a", "b"] {
        t.cd.ok(&[
            "run",
            "-d",
            "--snapshotter",
            NAME,
            IMAGE,
            c,
            "sh",
            "-c",
            &format!("echo {c} > /who; sleep 600"),
        ]);
    }
    let (ua, ub) = (t.snapshot_dir("a"), t.snapshot_dir("b"));
    // The shell creates the file before it writes: wait for the content.
    let wrote = |u: &Path, who: &str| {
        support::wait_until(Duration::from_secs(30), || {
            fs::read_to_string(u.join("who")).is_ok_and(|t| t == format!("{who}\n"))
        })
    };
    assert!(wrote(&ua, "a"), "a's write is not in its upper");
    assert!(wrote(&ub, "b"), "b's write is not in its upper");
    // a goes while b runs.
    t.cd.ok(&["tasks", "kill", "-s", "KILL", "a"]);
    let stopped = support::wait_until(Duration::from_secs(30), || {
        !t.cd
            .ok(&["tasks", "ls"])
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("RUNNING"))
    });
    assert!(stopped, "{}", t.cd.ok(&["tasks", "ls"]));
    t.cd.ok(&["tasks", "rm", "a"]);
    t.cd.ok(&["containers", "rm", "a"]);
    t.wait_gone(&ua);
    let out = t.cd.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "b",
        "cat",
        "/who",
        "/data/keep",
    ]);
    assert_eq!(out, "b\nkeep v2\n");
    t.cd.ok(&["tasks", "kill", "-s", "KILL", "b"]);
}

#[test]
fn ctr_snapshots_shows_the_chain_and_usage_and_refuses_to_remove_a_parent() {
    let Some(t) = setup() else { return };
    t.import();
    let sn = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", NAME];
        all.extend_from_slice(args);
        t.cd.ctr(&all)
    };
    let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    // The chain, bottom to top, as containerd names the layers.
    let ls = text(sn(&["ls"]));
    let rows: Vec<Vec<String>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let bottom = rows
        .iter()
        .find(|r| r.len() == 2)
        .expect("a layer without parent");
    let middle = rows
        .iter()
        .find(|r| r.len() == 3 && r[1] == bottom[0])
        .expect("its child");
    let top = rows
        .iter()
        .find(|r| r.len() == 3 && r[1] == middle[0])
        .expect("the top");
    // info, through containerd (which asks the snapshotter for Stat).
    let info: serde_json::Value = serde_json::from_str(&text(sn(&["info", &top[0]]))).unwrap();
    assert_eq!(info["Parent"], middle[0].as_str(), "{info}");
    assert_eq!(info["Kind"], "Committed", "{info}");
    // A container's snapshot: usage counts its own bytes and inodes.
    t.cd.ok(&[
        "snapshots",
        "--snapshotter",
        NAME,
        "prepare",
        "mine",
        &top[0],
    ]);
    let upper = t.snapshot_dir("mine");
    fs::write(upper.join("big"), vec![7u8; 1 << 20]).unwrap();
    let usage = text(sn(&["usage", "mine"]));
    let row: Vec<&str> = usage.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["mine", "1.0", "MiB", "2"], "{usage}");
    // A parent is not removed; a leaf is.
    let out = sn(&["rm", &bottom[0]]);
    assert!(!out.status.success(), "{}", text(out));
    assert!(t.snapshot_dir(&bottom[0]).exists());
    t.cd.ok(&["snapshots", "--snapshotter", NAME, "rm", "mine"]);
    t.wait_gone(&upper);
}

#[test]
fn a_snapshotter_killed_during_an_import_restarts_and_the_next_import_completes() {
    let Some(mut t) = setup() else { return };
    let a = t.archive.display().to_string();
    let mut import =
        t.cd.command(&["images", "import", "--snapshotter", NAME, &a])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    // Kill it once the first layer is being unpacked (a record is made).
    let meta = t.sn.store.join("snapshots/metadata.json");
    let started = support::wait_until(Duration::from_secs(30), || meta.exists());
    assert!(started, "no Prepare reached the snapshotter");
    t.sn.kill9();
    let _ = import.wait();
    t.sn.restart();
    // containerd's connection to the plugin backs off after the kill: the
    // import is retried while it answers "unavailable", as a client would.
    let done = support::wait_until(Duration::from_secs(60), || {
        let out = t.cd.ctr(&["images", "import", "--snapshotter", NAME, &a]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() || err.contains("unavailable"),
            "import: {err}"
        );
        out.status.success()
    });
    assert!(done, "the import did not complete after the restart");
    t.assert_runs_as_umoci_unpacks();
    // Cleanup (containerd's garbage collector calls it; ctr 1.6 cannot):
    // every directory is named by a record.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = t.sn.client(&rt);
    let req = snapshotter::api::snapshots::v1::CleanupRequest {
        snapshotter: NAME.into(),
    };
    rt.block_on(client.cleanup(req)).expect("Cleanup");
    let ids: Vec<String> = t.records().iter().map(|r| r.1.to_string()).collect();
    // Directories only: the records' own file is rewritten (through
    // metadata.tmp) whenever containerd changes a record meanwhile, as its
    // collector does when it drops the killed import's snapshot.
    let dirs: Vec<String> = fs::read_dir(t.sn.store.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for d in &dirs {
        assert!(ids.contains(d), "orphan {d}: records {:?}", t.records());
    }
}

#[test]
fn the_stores_own_commands_leave_containerds_snapshots_alone() {
    let Some(t) = setup() else { return };
    t.import();
    let before = t.layers();
    let store = t.sn.store.clone();
    let um = |args: &[&str]| {
        let out = Command::new(support::bin())
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        support::tools::ok(&format!("unionmount {}", args.join(" ")), out)
    };
    // An image of the store's own, removed again, and its content pruned.
    let tar = t.s.path().join("rootfs.tar");
    support::tools::ok(
        "tar",
        Command::new("tar")
            .arg("-C")
            .arg(&t.reference)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap(),
    );
    um(&["image", "import", tar.to_str().unwrap(), "--tag", "mine"]);
    assert!(um(&["image", "ls"]).contains("mine"));
    um(&["image", "rm", "mine"]);
    um(&["image", "prune"]);
    um(&["image", "fsck"]);
    assert_eq!(t.layers(), before, "prune and fsck leave the snapshots");
    t.assert_runs_as_umoci_unpacks();
}
