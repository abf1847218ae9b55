//! Every digest is checked and a bad one stores nothing; truncated and missing
//! blobs; concurrent imports sharing layers; fsck and its repairs (kill -9
//! during an import is in store_crash.rs).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use layerstore::Digest;
use layerstore::serde_json::{self, json};
use support::store::rawtar::RawTar;
use support::store::*;

/// An OCI layout written by hand: each layer an uncompressed tar.
struct Layout {
    dir: PathBuf,
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

fn put(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

fn layout(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    diff_ids: Option<Vec<Digest>>,
    layer_type: &str,
) -> Layout {
    layout_typed(
        dir,
        tag,
        layers,
        diff_ids,
        &[layer_type],
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.config.v1+json",
    )
}

/// The same with any media types (`layer_types` cycled over the layers).
fn layout_typed(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    diff_ids: Option<Vec<Digest>>,
    layer_types: &[&str],
    manifest_type: &str,
    config_type: &str,
) -> Layout {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let digests: Vec<Digest> = layers.iter().map(|l| put(dir, l)).collect();
    let ids = diff_ids.unwrap_or_else(|| digests.clone());
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap();
    let cd = put(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": cd, "size": config.len()},
        "layers": layers.iter().zip(&digests).zip(layer_types.iter().cycle()).map(|((l, d), t)| json!({
            "mediaType": t, "digest": d, "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let md = put(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": manifest_type,
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout {
        dir: dir.to_path_buf(),
        manifest: md,
        config: cd,
        layers: digests,
    }
}

const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        RawTar::default().dir("etc").file("etc/a", b"a").finish(),
        RawTar::default()
            .file("etc/b", b"b")
            .file("etc/.wh.a", b"")
            .finish(),
    ]
}

fn blob(l: &Layout, d: &Digest) -> PathBuf {
    l.dir.join("blobs/sha256").join(d.hex())
}

fn load_fails(env: &Env, dir: &Path, want: &[&str]) {
    let before = env.contents();
    let err = env.um_fail(&["image", "load", &dir.display().to_string()]);
    for w in want {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
    assert_eq!(env.contents(), before, "a failed load stored something");
    let ls = env.um(&["image", "ls"]);
    assert_eq!(ls.lines().count(), 1 + before.0.len().min(1), "{ls}");
}

#[test]
fn a_good_hand_made_layout_loads() {
    let env = Env::new();
    let l = layout(
        &env.path().join("good"),
        "good",
        &two_layers(),
        None,
        OCI_TAR,
    );
    env.um(&["image", "load", &l.dir.display().to_string()]);
    let dirs = env.layer_dirs("good");
    assert_eq!(fs::read_to_string(dirs[0].join("etc/a")).unwrap(), "a");
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

#[test]
fn corrupt_layer_config_and_manifest_blobs_store_nothing() {
    let env = Env::new();
    env.init_store();
    // A layer blob whose content changed.
    let l = layout(
        &env.path().join("bad-layer"),
        "x",
        &two_layers(),
        None,
        OCI_TAR,
    );
    let p = blob(&l, &l.layers[1]);
    let mut b = fs::read(&p).unwrap();
    b[600] ^= 1;
    fs::write(&p, b).unwrap();
    load_fails(&env, &l.dir, &["digest mismatch", l.layers[1].hex()]);
    // A config that changed.
    let l = layout(
        &env.path().join("bad-config"),
        "x",
        &two_layers(),
        None,
        OCI_TAR,
    );
    fs::write(
        blob(&l, &l.config),
        br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    load_fails(&env, &l.dir, &["digest mismatch", "config", l.config.hex()]);
    // A manifest that changed.
    let l = layout(
        &env.path().join("bad-manifest"),
        "x",
        &two_layers(),
        None,
        OCI_TAR,
    );
    let p = blob(&l, &l.manifest);
    let m = fs::read_to_string(&p)
        .unwrap()
        .replace("schemaVersion\":2", "schemaVersion\":2 ");
    fs::write(&p, m).unwrap();
    load_fails(
        &env,
        &l.dir,
        &["digest mismatch", "manifest", l.manifest.hex()],
    );
}

#[test]
fn diff_id_mismatch_names_the_blob() {
    let env = Env::new();
    env.init_store();
    let layers = two_layers();
    let wrong = vec![
        Digest::of_bytes(&layers[0]),
        Digest::of_bytes(b"not the tar"),
    ];
    let l = layout(
        &env.path().join("bad-diffid"),
        "x",
        &layers,
        Some(wrong),
        OCI_TAR,
    );
    load_fails(
        &env,
        &l.dir,
        &["digest mismatch", "uncompressed", l.layers[1].hex()],
    );
    // The good first layer was not kept either.
    assert!(env.contents().1.is_empty());
}

#[test]
fn truncated_missing_and_unsupported_blobs() {
    let env = Env::new();
    env.init_store();
    let l = layout(&env.path().join("trunc"), "x", &two_layers(), None, OCI_TAR);
    let p = blob(&l, &l.layers[0]);
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..700]).unwrap();
    load_fails(&env, &l.dir, &[l.layers[0].hex()]);
    let l = layout(
        &env.path().join("missing"),
        "x",
        &two_layers(),
        None,
        OCI_TAR,
    );
    fs::remove_file(blob(&l, &l.layers[1])).unwrap();
    load_fails(&env, &l.dir, &["not found", l.layers[1].hex()]);
    let l = layout(
        &env.path().join("mt"),
        "x",
        &two_layers(),
        None,
        "application/x-rar",
    );
    load_fails(
        &env,
        &l.dir,
        &["unsupported layer media type", "application/x-rar"],
    );
    let l = layout(&env.path().join("noidx"), "x", &two_layers(), None, OCI_TAR);
    fs::write(l.dir.join("index.json"), b"{").unwrap();
    load_fails(&env, &l.dir, &["index.json", "JSON"]);
}

#[test]
fn compressed_layers_are_detected_by_magic_not_media_type() {
    if !need_tools("compressed…", &["zstd", "gzip"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let plain = RawTar::default().file("f", b"content").finish();
    fs::write(t.join("l.tar"), &plain).unwrap();
    sh(&format!(
        "cd {} && gzip -k l.tar && zstd -q l.tar -o l.tar.zst",
        t.display()
    ));
    for (i, f) in ["l.tar.gz", "l.tar.zst"].iter().enumerate() {
        let bytes = fs::read(t.join(f)).unwrap();
        // Labelled as plain tar: still read right, diff id of the plain tar.
        let l = layout(
            &t.join(format!("lay{i}")),
            &format!("c{i}"),
            &[bytes],
            Some(vec![Digest::of_bytes(&plain)]),
            OCI_TAR,
        );
        env.um(&["image", "load", &l.dir.display().to_string()]);
        let dirs = env.layer_dirs(&format!("c{i}"));
        assert_eq!(fs::read_to_string(dirs[0].join("f")).unwrap(), "content");
    }
}

#[test]
fn concurrent_loads_sharing_layers_all_succeed() {
    let env = Env::new();
    env.init_store();
    // A shared base layer big enough that the loads overlap.
    let big: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let base = RawTar::default().file("big", &big).dir("etc").finish();
    let dirs: Vec<PathBuf> = (0..4)
        .map(|i| {
            let top = RawTar::default()
                .file(&format!("etc/img{i}"), b"x")
                .finish();
            layout(
                &env.path().join(format!("img{i}")),
                &format!("img{i}"),
                &[base.clone(), top],
                None,
                OCI_TAR,
            )
            .dir
        })
        .collect();
    for _round in 0..2 {
        let children: Vec<_> = dirs
            .iter()
            .map(|d| {
                Command::new(bin())
                    .args(["image", "load"])
                    .arg(d)
                    .env("UNIONMOUNT_STORE", env.store())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // One base layer and four tops, each unpacked once.
    assert_eq!(env.contents().1.len(), 5);
    assert_eq!(env.um(&["image", "ls"]).lines().count(), 5);
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

#[test]
fn fsck_finds_damage_and_repair_fixes_layers() {
    let env = Env::new();
    let l = layout(
        &env.path().join("good"),
        "good",
        &two_layers(),
        None,
        OCI_TAR,
    );
    env.um(&["image", "load", &l.dir.display().to_string()]);
    let dirs = env.layer_dirs("good");
    // A missing layer directory: found, and re-unpacked by --repair.
    fs::remove_dir_all(&dirs[1]).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not unpacked"));
    let out = env.um(&["image", "fsck", "--repair"]);
    assert!(out.contains("repaired"), "{out}");
    assert!(dirs[1].join("etc/b").exists());
    assert!(env.um(&["image", "fsck"]).contains("clean"));
    // A changed file, a removed file and a removed whiteout inside layers.
    fs::write(dirs[0].join("etc/a"), "A").unwrap();
    fs::remove_file(dirs[1].join("etc/b")).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("etc/a") && text.contains("etc/b"), "{text}");
    assert!(env.um(&["image", "fsck", "--repair"]).contains("repaired"));
    assert_eq!(fs::read_to_string(dirs[0].join("etc/a")).unwrap(), "a");
    // A changed mode.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dirs[0].join("etc/a"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("mode 600"), "{text}");
    assert!(env.um(&["image", "fsck", "--repair"]).contains("repaired"));
    assert!(env.um(&["image", "fsck"]).contains("clean"));
    // A damaged blob: found; --repair removes it, and says what is still broken.
    let p = env.store().join("blobs/sha256").join(l.layers[0].hex());
    let mut b = fs::read(&p).unwrap();
    b[600] ^= 1;
    fs::write(&p, b).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(l.layers[0].hex()));
    let err = env.um_fail(&["image", "fsck", "--repair"]);
    assert!(err.contains("remain"), "{err}");
    // Loading the image again restores the blob.
    env.um(&["image", "load", &l.dir.display().to_string()]);
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

#[test]
fn docker_archive_config_name_is_checked() {
    let env = Env::new();
    env.init_store();
    let t = env.path();
    let layer = RawTar::default().file("f", b"x").finish();
    let ld = Digest::of_bytes(&layer);
    let config =
        serde_json::to_vec(&json!({"rootfs": {"type": "layers", "diff_ids": [ld]}})).unwrap();
    let wrong = Digest::of_bytes(b"other");
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{}.json", wrong.hex()),
        "RepoTags": ["localhost/d:1"],
        "Layers": [format!("{}/layer.tar", ld.hex())],
    }]))
    .unwrap();
    let mut tar = RawTar::default();
    for (name, data) in [
        ("manifest.json".to_string(), manifest),
        (format!("{}.json", wrong.hex()), config),
        (format!("{}/layer.tar", ld.hex()), layer),
    ] {
        tar = tar.file(&name, &data);
    }
    let p = t.join("d.tar");
    fs::write(&p, tar.finish()).unwrap();
    let err = env.um_fail(&["image", "load", &p.display().to_string()]);
    assert!(
        err.contains("digest mismatch") && err.contains(".json"),
        "{err}"
    );
    assert_eq!(env.contents(), (vec![], vec![]));
}

#[test]
fn every_blob_of_a_shared_layer_is_checked() {
    let env = Env::new();
    env.init_store();
    let good = RawTar::default().file("f", b"good").finish();
    let evil = RawTar::default().file("f", b"evil").finish();
    let d = Digest::of_bytes(&good);
    // One layout, two images: the second claims another blob is the same layer.
    let dir = env.path().join("two");
    layout(&dir, "a", std::slice::from_ref(&good), None, OCI_TAR);
    let first: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let l = layout(&dir, "b", &[evil], Some(vec![d.clone()]), OCI_TAR);
    let mut second: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut all = first["manifests"].as_array().unwrap().clone();
    all.extend(second["manifests"].as_array().unwrap().iter().cloned());
    second["manifests"] = serde_json::Value::Array(all);
    fs::write(dir.join("index.json"), serde_json::to_vec(&second).unwrap()).unwrap();
    load_fails(&env, &dir, &["uncompressed", l.layers[0].hex()]);
    // And across loads: the layer is in the store, the new blob still must match it.
    let a = layout(&env.path().join("a"), "a", &[good], None, OCI_TAR);
    env.um(&["image", "load", &a.dir.display().to_string()]);
    let evil2 = RawTar::default().file("f", b"evil2").finish();
    let b = layout(&env.path().join("b"), "b", &[evil2], Some(vec![d]), OCI_TAR);
    let before = env.contents();
    let err = env.um_fail(&["image", "load", &b.dir.display().to_string()]);
    assert!(
        err.contains("uncompressed") && err.contains(b.layers[0].hex()),
        "{err}"
    );
    assert_eq!(env.contents(), before);
}

#[test]
fn docker_archive_with_symlinked_layers_loads() {
    // The older `docker save` layout: one directory per layer, a repeated
    // layer as a symlink to the first copy.
    let env = Env::new();
    let layer = RawTar::default()
        .dir("etc")
        .file("etc/f", b"shared")
        .finish();
    let ld = Digest::of_bytes(&layer);
    let config =
        serde_json::to_vec(&json!({"rootfs": {"type": "layers", "diff_ids": [ld, ld]}})).unwrap();
    let cd = Digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{}.json", cd.hex()),
        "RepoTags": ["localhost/old:1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]))
    .unwrap();
    let tar = RawTar::default()
        .file("manifest.json", &manifest)
        .file(&format!("{}.json", cd.hex()), &config)
        .dir("aaa")
        .file("aaa/layer.tar", &layer)
        .dir("bbb")
        .symlink("bbb/layer.tar", "../aaa/layer.tar")
        .finish();
    let p = env.path().join("old.tar");
    fs::write(&p, tar).unwrap();
    // Through standard input, as `docker save | unionmount image load -`.
    let out = Command::new(bin())
        .args(["image", "load", "-"])
        .env("UNIONMOUNT_STORE", env.store())
        .stdin(fs::File::open(&p).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_dir(env.store().join("tmp")).unwrap().count(), 0);
    let dirs = env.layer_dirs("localhost/old:1");
    assert_eq!(dirs.len(), 2);
    assert_eq!(fs::read_to_string(dirs[1].join("etc/f")).unwrap(), "shared");
}

#[test]
fn docker_save_oci_names_come_from_the_containerd_annotation() {
    // Newer `docker save` writes an OCI layout whose ref.name is only the tag.
    let env = Env::new();
    let l = layout(
        &env.path().join("ds"),
        "latest",
        &two_layers(),
        None,
        OCI_TAR,
    );
    let mut idx: serde_json::Value =
        serde_json::from_slice(&fs::read(l.dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["annotations"]["io.containerd.image.name"] =
        json!("docker.io/library/busybox:latest");
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let out = env.um(&["image", "load", &l.dir.display().to_string()]);
    assert!(out.contains("docker.io/library/busybox:latest"), "{out}");
    env.um(&["image", "inspect", "docker.io/library/busybox"]);
}

#[test]
fn multi_platform_indexes_pick_this_machine() {
    let env = Env::new();
    let l = layout(&env.path().join("multi"), "x", &two_layers(), None, OCI_TAR);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let msize = fs::metadata(blob(&l, &l.manifest)).unwrap().len();
    let other = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Digest::of_bytes(b"elsewhere"), "size": 1,
        "platform": {"architecture": "s390x", "os": "linux"}});
    let mine = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": l.manifest, "size": msize,
        "platform": {"architecture": arch, "os": "linux"}});
    let inner = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [other, mine]}))
    .unwrap();
    let id = put(&l.dir, &inner);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": inner.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(
        l.dir.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    env.um(&["image", "load", &l.dir.display().to_string()]);
    let v: serde_json::Value =
        serde_json::from_str(&env.um(&["image", "inspect", "multi"])).unwrap();
    assert_eq!(v["digest"], json!(l.manifest.to_string()));
}

#[test]
fn commit_reads_every_whiteout_form() {
    // Character devices (kernel), regular files marked overlay.whiteout
    // (kernel 6.7+ nested/unprivileged), and `.wh.` files (OCI-style uppers).
    if !need_root("commit_reads_every_whiteout_form") {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let base = RawTar::default()
        .dir("etc")
        .file("etc/a", b"a")
        .file("etc/b", b"b")
        .file("etc/c", b"c")
        .file("etc/d", b"d")
        .dir("opq")
        .file("opq/old", b"o")
        .finish();
    fs::write(t.join("base.tar"), base).unwrap();
    env.um(&[
        "image",
        "import",
        &t.join("base.tar").display().to_string(),
        "--tag",
        "base",
    ]);
    let up = t.join("up");
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::create_dir_all(up.join("opq")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("etc/a"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
    fs::write(up.join("etc/b"), b"").unwrap();
    rustix::fs::setxattr(
        up.join("etc/b"),
        "trusted.overlay.whiteout",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(up.join("etc/c"), b"").unwrap();
    rustix::fs::setxattr(
        up.join("etc/c"),
        "user.overlay.whiteout",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(up.join("etc/.wh.d"), b"").unwrap();
    rustix::fs::setxattr(
        up.join("opq"),
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(up.join("opq/new"), b"n").unwrap();
    env.um(&[
        "commit",
        &up.display().to_string(),
        "--tag",
        "wh",
        "--from",
        "base",
    ]);
    let dirs = env.layer_dirs("wh");
    let m = OverlayMount::new(&dirs, None, &t.join("m"));
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(m.path.join(d))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("etc"), Vec::<String>::new());
    assert_eq!(names("opq"), vec!["new".to_string()]);
}

#[test]
fn ls_shows_damaged_images_and_fsck_names_them() {
    let env = Env::new();
    let l = layout(
        &env.path().join("good"),
        "good",
        &two_layers(),
        None,
        OCI_TAR,
    );
    env.um(&["image", "load", &l.dir.display().to_string()]);
    fs::remove_file(env.store().join("blobs/sha256").join(l.config.hex())).unwrap();
    let ls = env.um(&["image", "ls"]);
    assert!(
        ls.contains("good") && ls.contains("damaged") && ls.contains(l.config.hex()),
        "{ls}"
    );
    let out = env.um_out(&["image", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("image good"));
    let e = env.um_fail(&[
        "image",
        "mount",
        "good",
        &env.path().join("m").display().to_string(),
    ]);
    assert!(e.contains(l.config.hex()), "{e}");
}

#[test]
fn commit_and_import_keep_any_file_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let up = env.path().join("up");
    let odd = OsStr::from_bytes(b"caf\xe9 \x01name");
    let long = "l".repeat(200);
    let deep = up.join("a".repeat(90)).join("b".repeat(90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(up.join(odd), b"latin-1").unwrap();
    fs::write(deep.join(&long), b"long").unwrap();
    std::os::unix::fs::symlink(odd, up.join("to-odd")).unwrap();
    fs::hard_link(up.join(odd), up.join("odd-link")).unwrap();
    env.um(&["commit", &up.display().to_string(), "--tag", "names"]);
    env.um(&[
        "image",
        "import",
        &up.display().to_string(),
        "--tag",
        "names2",
    ]);
    for tag in ["names", "names2"] {
        let l = &env.layer_dirs(tag)[0];
        assert_eq!(fs::read(l.join(odd)).unwrap(), b"latin-1");
        assert_eq!(
            fs::read(l.join(deep.strip_prefix(&up).unwrap()).join(&long)).unwrap(),
            b"long"
        );
        assert_eq!(fs::read_link(l.join("to-odd")).unwrap().as_os_str(), odd);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(l.join(odd)).unwrap().ino(),
            fs::metadata(l.join("odd-link")).unwrap().ino()
        );
    }
}

#[test]
fn concurrent_imports_of_one_rootfs_both_succeed() {
    // Two `image import`s of the same tar under two names, at once: both
    // succeed, one blob and one layer directory hold the content.
    let env = Env::new();
    env.init_store();
    let big: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let p = env.path().join("rootfs.tar");
    fs::write(&p, RawTar::default().file("big", &big).dir("etc").finish()).unwrap();
    for round in 0..3 {
        let children: Vec<_> = ["a", "b"]
            .iter()
            .map(|t| {
                Command::new(bin())
                    .args(["image", "import"])
                    .arg(&p)
                    .args(["--tag", &format!("{t}{round}")])
                    .env("UNIONMOUNT_STORE", env.store())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(env.contents().1.len(), 1, "one layer");
    assert_eq!(env.um(&["image", "ls"]).lines().count(), 7);
    assert_eq!(env.layer_dirs("a0"), env.layer_dirs("b2"));
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

#[test]
fn docker_media_types_load_and_unknown_manifest_types_are_refused() {
    if !need_tools("docker_media_types…", &["gzip"]) {
        return;
    }
    let env = Env::new();
    env.init_store();
    let t = env.path();
    let [l0, l1] = <[Vec<u8>; 2]>::try_from(two_layers()).unwrap();
    fs::write(t.join("l1.tar"), &l1).unwrap();
    sh(&format!("cd {} && gzip -n l1.tar", t.display()));
    let l1_gz = fs::read(t.join("l1.tar.gz")).unwrap();
    // A Docker schema 2 manifest: Docker config and layer types, plain and gzip.
    let l = layout_typed(
        &t.join("docker"),
        "d",
        &[l0.clone(), l1_gz.clone()],
        Some(vec![Digest::of_bytes(&l0), Digest::of_bytes(&l1)]),
        &[
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ],
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.container.image.v1+json",
    );
    env.um(&["image", "load", &l.dir.display().to_string()]);
    let dirs = env.layer_dirs("d");
    assert_eq!(fs::read_to_string(dirs[1].join("etc/b")).unwrap(), "b");
    // A manifest type nobody knows: one line naming it, nothing stored.
    let env2 = Env::new();
    env2.init_store();
    let l = layout_typed(
        &t.join("unknown"),
        "u",
        &[l0],
        None,
        &[OCI_TAR],
        "application/vnd.example.manifest+json",
        "application/vnd.oci.image.config.v1+json",
    );
    load_fails(&env2, &l.dir, &["application/vnd.example.manifest+json"]);
}

#[test]
fn containers_keep_their_image_through_prune_and_commit_by_id() {
    // A container record (`containers/<id>/upper`, `containers/<id>/image`
    // holding the manifest digest) keeps its image from prune even untagged,
    // and `commit <id>` builds on that image.
    let env = Env::new();
    let root = env.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/a"), "a").unwrap();
    env.um(&[
        "image",
        "import",
        &root.display().to_string(),
        "--tag",
        "base",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&env.um(&["image", "inspect", "base"])).unwrap();
    let manifest = v["digest"].as_str().unwrap().to_string();
    let c = env.store().join("containers/c1");
    fs::create_dir_all(c.join("upper/etc")).unwrap();
    fs::write(c.join("upper/etc/b"), "b").unwrap();
    fs::write(c.join("image"), format!("{manifest}\n")).unwrap();
    env.um(&["image", "rm", "base"]);
    env.um(&["image", "prune"]);
    assert_eq!(env.contents().1.len(), 1, "the container's layer stays");
    let out = env.um(&["commit", "c1", "--tag", "next"]);
    assert_eq!(out.trim_end(), env.short_id("next"));
    let dirs = env.layer_dirs("next");
    assert_eq!(dirs.len(), 2);
    assert_eq!(fs::read_to_string(dirs[0].join("etc/a")).unwrap(), "a");
    assert_eq!(fs::read_to_string(dirs[1].join("etc/b")).unwrap(), "b");
    // Neither a directory nor a container: one line.
    for bad in ["nosuch", "../c1"] {
        let err = env.um_fail(&["commit", bad, "--tag", "x"]);
        assert!(err.contains("not a directory or a container"), "{err}");
    }
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}
