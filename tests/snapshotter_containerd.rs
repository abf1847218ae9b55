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

struct Setup {
    s: Scratch,
    sn: Snapshotter,
    cd: Containerd,
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
