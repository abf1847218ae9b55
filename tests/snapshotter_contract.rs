//! The snapshot contract, through the real binary and its socket: the
//! behaviours containerd's own snapshotter test suite checks (existing
//! keys, commits of views, removes of parents, usage, label filters,
//! read-only views), the mounts it is handed (a union through the real
//! daemon; committed layers that kernel overlayfs reads as well), and a
//! snapshotter killed with -9 restarting into its records.

mod support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use snapshotter::api::snapshots::v1::snapshots_client::SnapshotsClient;
use snapshotter::api::snapshots::v1::*;
use snapshotter::api::types::Mount as SnapMount;
use snapshotter::tonic::{Code, transport::Channel};
use support::snapshotter::{NAME, Snapshotter};

/// containerd's label naming the snapshot a Prepare unpacks to.
const TARGET: &str = "containerd.io/snapshot.ref";
use support::{Mount, Scratch};

const VIEW: i32 = 1;
const ACTIVE: i32 = 2;
const COMMITTED: i32 = 3;

/// A client and the runtime it runs on, with short names for each call.
struct Api {
    rt: tokio::runtime::Runtime,
    c: SnapshotsClient<Channel>,
}

/// A call's result: containerd acts on the code alone.
type R<T> = Result<T, Code>;

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Api {
    fn new(s: &Snapshotter) -> Api {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = s.client(&rt);
        Api { rt, c }
    }
    fn prepare(&mut self, key: &str, parent: &str) -> R<Vec<SnapMount>> {
        self.prepare_labelled(key, parent, &[])
    }
    fn prepare_labelled(
        &mut self,
        key: &str,
        parent: &str,
        l: &[(&str, &str)],
    ) -> R<Vec<SnapMount>> {
        let req = PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
        };
        Ok(self
            .rt
            .block_on(self.c.prepare(req))
            .map_err(|s| s.code())?
            .into_inner()
            .mounts)
    }
    fn view(&mut self, key: &str, parent: &str) -> R<Vec<SnapMount>> {
        let req = ViewSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        Ok(self
            .rt
            .block_on(self.c.view(req))
            .map_err(|s| s.code())?
            .into_inner()
            .mounts)
    }
    fn mounts(&mut self, key: &str) -> R<Vec<SnapMount>> {
        let req = MountsRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        Ok(self
            .rt
            .block_on(self.c.mounts(req))
            .map_err(|s| s.code())?
            .into_inner()
            .mounts)
    }
    fn commit(&mut self, name: &str, key: &str, l: &[(&str, &str)]) -> R<()> {
        let req = CommitSnapshotRequest {
            snapshotter: NAME.into(),
            name: name.into(),
            key: key.into(),
            labels: labels(l),
        };
        self.rt
            .block_on(self.c.commit(req))
            .map(|_| ())
            .map_err(|s| s.code())
    }
    fn remove(&mut self, key: &str) -> R<()> {
        let req = RemoveSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        self.rt
            .block_on(self.c.remove(req))
            .map(|_| ())
            .map_err(|s| s.code())
    }
    fn stat(&mut self, key: &str) -> R<Info> {
        let req = StatSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        Ok(self
            .rt
            .block_on(self.c.stat(req))
            .map_err(|s| s.code())?
            .into_inner()
            .info
            .unwrap())
    }
    fn update(&mut self, key: &str, l: &[(&str, &str)], paths: &[&str]) -> R<Info> {
        let info = Info {
            name: key.into(),
            labels: labels(l),
            ..Info::default()
        };
        let mask = (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        });
        let req = UpdateSnapshotRequest {
            snapshotter: NAME.into(),
            info: Some(info),
            update_mask: mask,
        };
        Ok(self
            .rt
            .block_on(self.c.update(req))
            .map_err(|s| s.code())?
            .into_inner()
            .info
            .unwrap())
    }
    fn usage(&mut self, key: &str) -> R<(i64, i64)> {
        let req = UsageRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        let u = self
            .rt
            .block_on(self.c.usage(req))
            .map_err(|s| s.code())?
            .into_inner();
        Ok((u.size, u.inodes))
    }
    fn walk(&mut self, filters: &[&str]) -> R<Vec<String>> {
        let req = ListSnapshotsRequest {
            snapshotter: NAME.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        self.rt.block_on(async {
            let mut stream = self.c.list(req).await.map_err(|s| s.code())?.into_inner();
            let mut names = Vec::new();
            while let Some(page) = stream.message().await.map_err(|s| s.code())? {
                names.extend(page.info.into_iter().map(|i| i.name));
            }
            names.sort();
            Ok(names)
        })
    }
    fn cleanup(&mut self) -> R<()> {
        let req = CleanupRequest {
            snapshotter: NAME.into(),
        };
        self.rt
            .block_on(self.c.cleanup(req))
            .map(|_| ())
            .map_err(|s| s.code())
    }
}

fn code<T: std::fmt::Debug>(r: R<T>) -> Code {
    r.expect_err("an error")
}

/// The one mount of a snapshot; its option `name=`'s value.
fn opt<'a>(m: &'a SnapMount, name: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(&format!("{name}=")))
}

/// Mount what containerd would, through the real binary (the form
/// `mount.fuse3` gives it: source, target, -o options).
fn mount_union(m: &SnapMount, at: &Path) -> Mount {
    assert_eq!(m.r#type, "fuse3.unionmount");
    fs::create_dir_all(at).unwrap();
    let args: Vec<OsString> = vec![
        m.source.clone().into(),
        "-o".into(),
        m.options.join(",").into(),
    ];
    Mount::union_foreground(at, &args).expect("unionmount mounts the snapshot")
}

fn write(dir: &Path, rel: &str, data: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn setup(s: &Scratch) -> Option<(Snapshotter, PathBuf)> {
    if !support::require_mounts() {
        return None;
    }
    let store = s.path().join("store");
    let sn = Snapshotter::start(&s.path().join("sn.sock"), &store);
    Some((sn, store))
}

#[test]
fn the_snapshot_contract_holds() {
    let s = Scratch::new();
    let Some((sn, _)) = setup(&s) else { return };
    let mut api = Api::new(&sn);
    // A first layer: no parent, so its own directory, bound read-write.
    let m = api.prepare("l1-active", "").unwrap();
    assert_eq!((m.len(), m[0].r#type.as_str()), (1, "bind"));
    assert!(m[0].options.contains(&"rw".into()), "{m:?}");
    let l1 = PathBuf::from(&m[0].source);
    write(&l1, "etc/motd", "layer one\n");
    write(&l1, "data/gone", "deleted above\n");
    write(&l1, "data/dir/old", "hidden by an opaque dir\n");
    assert_eq!(code(api.prepare("l1-active", "")), Code::AlreadyExists);
    assert_eq!(api.stat("l1-active").unwrap().kind, ACTIVE);
    api.commit("l1", "l1-active", &[("layer", "1")]).unwrap();
    assert_eq!(code(api.stat("l1-active")), Code::NotFound);
    let st = api.stat("l1").unwrap();
    assert_eq!((st.kind, st.parent.as_str()), (COMMITTED, ""));
    assert_eq!(st.labels.get("layer").map(String::as_str), Some("1"));
    assert_eq!(code(api.mounts("l1")), Code::FailedPrecondition);
    assert_eq!(code(api.commit("l1", "l1", &[])), Code::FailedPrecondition);

    // A second layer over it: a union through the real daemon, whose
    // upper records a whiteout and an opaque directory.
    let m = api.prepare("l2-active", "l1").unwrap();
    assert_eq!(opt(&m[0], "lowerdir"), Some(l1.to_str().unwrap()));
    let mnt = s.path().join("l2");
    {
        let _u = mount_union(&m[0], &mnt);
        assert_eq!(
            fs::read_to_string(mnt.join("etc/motd")).unwrap(),
            "layer one\n"
        );
        fs::remove_file(mnt.join("data/gone")).unwrap();
        fs::remove_dir_all(mnt.join("data/dir")).unwrap();
        write(&mnt, "data/dir/new", "only this\n");
        write(&mnt, "etc/motd", "layer two\n");
    }
    assert_eq!(
        code(api.commit("l1", "l2-active", &[])),
        Code::AlreadyExists
    );
    api.commit("l2", "l2-active", &[]).unwrap();
    let l2 = PathBuf::from(opt(&m[0], "upperdir").unwrap());

    // Committed layers are kernel overlayfs layers.
    let k = s.path().join("kernel");
    fs::create_dir_all(&k).unwrap();
    let opts = support::kernel_opts(&[l2.clone(), l1.clone()], None);
    {
        let _k = Mount::kernel(&k, &opts).expect("kernel overlayfs on the committed layers");
        assert_eq!(
            fs::read_to_string(k.join("etc/motd")).unwrap(),
            "layer two\n"
        );
        assert!(!k.join("data/gone").exists());
        let dir: Vec<_> = fs::read_dir(k.join("data/dir"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(
            dir.len(),
            1,
            "the opaque directory shows only its own entry"
        );
    }

    // Views: of one layer a read-only bind, of a chain a read-only union.
    let v1 = api.view("v1", "l1").unwrap();
    assert_eq!(
        (v1[0].r#type.as_str(), v1[0].source.as_str()),
        ("bind", l1.to_str().unwrap())
    );
    assert!(v1[0].options.contains(&"ro".into()), "{v1:?}");
    let v2 = api.view("v2", "l2").unwrap();
    assert_eq!(api.stat("v2").unwrap().kind, VIEW);
    assert_eq!(api.mounts("v2").unwrap(), v2, "Mounts gives what View gave");
    let vm = s.path().join("v2");
    {
        let _u = mount_union(&v2[0], &vm);
        assert_eq!(
            fs::read_to_string(vm.join("etc/motd")).unwrap(),
            "layer two\n"
        );
        let e = fs::write(vm.join("etc/new"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "a view is read-only");
    }
    assert_eq!(code(api.commit("v2c", "v2", &[])), Code::FailedPrecondition);

    // A parent is not removed before its children; Prepare needs a
    // committed parent.
    assert_eq!(code(api.remove("l1")), Code::FailedPrecondition);
    assert_eq!(code(api.prepare("x", "nosuch")), Code::NotFound);
    api.prepare("a", "l2").unwrap();
    assert_eq!(code(api.prepare("y", "a")), Code::FailedPrecondition);
    assert_eq!(code(api.remove("nosuch")), Code::NotFound);

    // Usage counts the snapshot's own tree: l1 holds 3 files in 4 dirs.
    let (bytes, inodes) = api.usage("l1").unwrap();
    assert_eq!(
        inodes,
        1 + 3 + 3,
        "the root, etc data data/dir, three files"
    );
    assert!(bytes >= 3 * 4096, "{bytes}");

    // Labels: updated one by one or all at once; Walk filters by them.
    let i = api.update("l2", &[("gc", "keep")], &["labels.gc"]).unwrap();
    assert_eq!(i.labels, labels(&[("gc", "keep")]));
    api.update("l1", &[("gc", "keep"), ("layer", "1")], &[])
        .unwrap();
    assert_eq!(api.walk(&["labels.gc==keep"]).unwrap(), ["l1", "l2"]);
    assert_eq!(api.walk(&["labels.layer==1"]).unwrap(), ["l1"]);
    assert_eq!(
        api.walk(&[r#"labels."gc""#, "kind==view"]).unwrap().len(),
        4
    );
    assert_eq!(api.walk(&[]).unwrap(), ["a", "l1", "l2", "v1", "v2"]);
    assert_eq!(
        code(api.update("l1", &[], &["parent"])),
        Code::InvalidArgument
    );
    assert_eq!(code(api.walk(&["labels.gc~=k.*"])), Code::InvalidArgument);

    // Removing children first, then the parents, leaves nothing.
    for k in ["a", "v1", "v2", "l2", "l1"] {
        api.remove(k).unwrap();
    }
    assert!(api.walk(&[]).unwrap().is_empty());
    assert!(!l1.exists() && !l2.exists());
}

#[test]
fn a_killed_snapshotter_restarts_into_its_records_and_cleanup_removes_orphans() {
    let s = Scratch::new();
    let Some((mut sn, store)) = setup(&s) else {
        return;
    };
    let mut api = Api::new(&sn);
    let m = api.prepare("base-active", "").unwrap();
    write(Path::new(&m[0].source), "f", "kept\n");
    api.commit("base", "base-active", &[]).unwrap();
    api.prepare("work", "base").unwrap();
    sn.kill9();
    // What a crash between making a directory and recording it leaves.
    let orphan = store.join("snapshots/999");
    fs::create_dir_all(orphan.join("fs")).unwrap();
    sn.restart();
    let mut api = Api::new(&sn);
    assert_eq!(api.walk(&[]).unwrap(), ["base", "work"]);
    assert_eq!(api.stat("work").unwrap().parent, "base");
    assert!(!orphan.exists(), "a start cleans up what a crash left");
    fs::create_dir_all(orphan.join("fs")).unwrap();
    api.cleanup().unwrap();
    assert!(!orphan.exists(), "Cleanup removes an orphan");
    let m = api.mounts("work").unwrap();
    assert_eq!(
        opt(&m[0], "lowerdir")
            .map(|l| Path::new(l).join("f"))
            .map(|f| fs::read_to_string(f).unwrap()),
        Some("kept\n".into())
    );
    // SIGTERM: a clean exit, the socket gone.
    assert!(sn.stop().success(), "{}", sn.log_text());
    assert!(!sn.socket.exists());
}

#[test]
fn parallel_calls_see_each_other_whole() {
    let s = Scratch::new();
    let Some((mut sn, _)) = setup(&s) else { return };
    // Eight clients at once: each prepares and commits a chain of its own,
    // and all race to prepare one shared key.
    let results: Vec<(usize, Code)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let sn = &sn;
                sc.spawn(move || {
                    let mut api = Api::new(sn);
                    let mut parent = String::new();
                    for n in 0..5 {
                        let key = format!("c{i}-{n}-active");
                        api.prepare(&key, &parent).unwrap();
                        let name = format!("c{i}-{n}");
                        api.commit(&name, &key, &[]).unwrap();
                        parent = name;
                    }
                    let won = match api.prepare("shared", "") {
                        Ok(_) => Code::Ok,
                        Err(c) => c,
                    };
                    (i, won)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = results.iter().filter(|r| r.1 == Code::Ok).count();
    let lost = results
        .iter()
        .filter(|r| r.1 == Code::AlreadyExists)
        .count();
    assert_eq!((won, lost), (1, 7), "{results:?}");
    // Every chain whole, each snapshot its own directory, after a restart.
    sn.kill9();
    sn.restart();
    let mut api = Api::new(&sn);
    assert_eq!(api.walk(&[]).unwrap().len(), 8 * 5 + 1);
    let mut dirs = std::collections::BTreeSet::new();
    for i in 0..8 {
        for n in 0..5 {
            let st = api.stat(&format!("c{i}-{n}")).unwrap();
            let want = if n == 0 {
                String::new()
            } else {
                format!("c{i}-{}", n - 1)
            };
            assert_eq!((st.kind, st.parent), (COMMITTED, want));
        }
        let m = api.prepare(&format!("top{i}"), &format!("c{i}-4")).unwrap();
        let lowers = opt(&m[0], "lowerdir").unwrap().split(':').count();
        assert_eq!(lowers, 5);
        assert!(dirs.insert(opt(&m[0], "upperdir").unwrap().to_string()));
    }
}

/// `unionmount ARGS --store STORE`, which must succeed: its stdout.
fn um(store: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(support::bin())
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unionmount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OCI's chain id of `parent` (a chain id, or none) and `diff`.
fn chain(parent: Option<&str>, diff: &str) -> String {
    match parent {
        None => diff.to_string(),
        Some(p) => layerstore::Digest::of_bytes(format!("{p} {diff}").as_bytes()).to_string(),
    }
}

#[test]
fn a_target_the_store_has_is_its_own_layer_kept_through_prune() {
    let s = Scratch::new();
    if !support::require_mounts() {
        return;
    }
    // A two-layer image of the store's own: a rootfs, then a commit.
    let store = s.path().join("store");
    let root = s.path().join("root");
    write(&root, "etc/motd", "base\n");
    let tar = s.path().join("root.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    um(
        &store,
        &["image", "import", tar.to_str().unwrap(), "--tag", "base"],
    );
    let upper = s.path().join("upper");
    write(&upper, "etc/motd", "two\n");
    um(
        &store,
        &["commit", upper.to_str().unwrap(), "two", "--from", "base"],
    );
    let info: serde_json::Value =
        serde_json::from_str(&um(&store, &["image", "inspect", "two"])).unwrap();
    let info = if info.is_array() {
        info[0].clone()
    } else {
        info
    };
    let diffs: Vec<String> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diffId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(diffs.len(), 2);
    let c1 = chain(None, &diffs[0]);
    let c2 = chain(Some(&c1), &diffs[1]);
    let layer = |d: &str| store.join("layers").join(&d["sha256:".len()..]);

    let sn = Snapshotter::start(&s.path().join("sn.sock"), &store);
    let mut api = Api::new(&sn);
    // What containerd's CRI sends for each layer: the target's name ends
    // in its chain id. The store has both: AlreadyExists, nothing unpacked.
    let (t1, t2) = (format!("k8s/2/{c1}"), format!("k8s/4/{c2}"));
    let got = api.prepare_labelled(&format!("k8s/1/extract-1 {c1}"), "", &[(TARGET, &t1)]);
    assert_eq!(code(got), Code::AlreadyExists);
    let got = api.prepare_labelled(&format!("k8s/3/extract-2 {c2}"), &t1, &[(TARGET, &t2)]);
    assert_eq!(code(got), Code::AlreadyExists);
    let st = api.stat(&t2).unwrap();
    assert_eq!((st.kind, st.parent.as_str()), (COMMITTED, t1.as_str()));
    // A chain the store lacks is unpacked as usual.
    let none = format!("sha256:{}", "0".repeat(64));
    let other = format!("k8s/6/{none}");
    api.prepare_labelled(&format!("k8s/5/extract-3 {none}"), "", &[(TARGET, &other)])
        .unwrap();
    // A container over the shared layers stacks the store's trees.
    let m = api.prepare("k8s/7/c", &t2).unwrap();
    let want = format!(
        "{}:{}",
        layer(&diffs[1]).display(),
        layer(&diffs[0]).display()
    );
    assert_eq!(opt(&m[0], "lowerdir"), Some(want.as_str()));
    {
        let mnt = s.path().join("c");
        let _u = mount_union(&m[0], &mnt);
        assert_eq!(fs::read_to_string(mnt.join("etc/motd")).unwrap(), "two\n");
    }
    // The images go and prune runs: the layers the snapshots use stay.
    um(&store, &["image", "rm", "two", "base"]);
    um(&store, &["image", "prune"]);
    assert!(layer(&diffs[0]).is_dir() && layer(&diffs[1]).is_dir());
    // Removing the snapshots leaves the store's trees to the store.
    let third = format!("k8s/5/extract-3 {none}");
    for k in ["k8s/7/c", &third, &t2, &t1] {
        api.remove(k).unwrap();
    }
    assert!(layer(&diffs[0]).is_dir() && layer(&diffs[1]).is_dir());
    um(&store, &["image", "prune"]);
    assert!(!layer(&diffs[0]).exists() && !layer(&diffs[1]).exists());
}
