//! `unionmount push`, `login` and `logout` against Debian's docker-registry
//! on loopback: a pushed image reads back identically with skopeo and
//! umoci, and podman pulls it; a second push sends nothing and a push to
//! another repository mounts the blobs; the manifest goes last; layers are
//! gzip unless asked otherwise; credentials are checked, kept in the
//! podman auth file and forgotten.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;

use support::registry::images::{NONDISTRIBUTABLE_GZIP, layer_digests, with_foreign_base};
use support::registry::{Registry, multi_layer_oci, require};
use support::{Scratch, assert_trees_eq, bin, snapshot};

const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A store in `dir` holding the multi-layer test image as `img`; the
/// umoci reference rootfs of that image.
fn store_with_image(dir: &Path) -> (PathBuf, PathBuf) {
    let (layout, tag, reference) = multi_layer_oci(dir);
    let store = dir.join("store");
    let out = um(&store, &["image", "load", layout.to_str().unwrap()]);
    assert!(out.status.success(), "load: {}", text(&out));
    let out = um(&store, &["image", "tag", &tag, "img"]);
    assert!(out.status.success(), "tag: {}", text(&out));
    (store, reference)
}

/// `unionmount ARGS --store STORE` with the auth file in `STORE/../auth.json`.
fn um(store: &Path, args: &[&str]) -> Output {
    um_in(store, args, None)
}

fn um_in(store: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let words = if args[0] == "image" { 2 } else { 1 };
    let mut cmd = Command::new(bin());
    cmd.args(&args[..words]);
    if !matches!(args[0], "login" | "logout") {
        cmd.arg("--store").arg(store);
    }
    cmd.args(&args[words..])
        .env("REGISTRY_AUTH_FILE", auth_file(store))
        .env_remove("DOCKER_CONFIG")
        .env("HOME", store.parent().unwrap())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("unionmount runs");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn auth_file(store: &Path) -> PathBuf {
    store.parent().unwrap().join("auth.json")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pushed(store: &Path, image: &str, dest: &str, extra: &[&str]) -> String {
    let mut args = vec!["push", image, dest];
    args.extend_from_slice(extra);
    let out = um(store, &args);
    assert!(out.status.success(), "push {dest}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo copies `reference` of `reg` into an OCI layout, umoci unpacks it:
/// the rootfs.
fn pulled_back(reg: &Registry, repo_tag: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("back");
    let out = Command::new("skopeo")
        .arg("copy")
        .args(reg.skopeo_src_args())
        .arg(format!("docker://{}", reg.reference(repo_tag)))
        .arg(format!("oci:{}:t", layout.display()))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "skopeo copy back: {}", text(&out));
    let bundle = dir.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(out.status.success(), "umoci unpack: {}", text(&out));
    bundle.join("rootfs")
}

fn manifest(reg: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    let m = reg.get(&format!("/v2/{repo}/manifests/{tag}"), &[OCI_MANIFEST]);
    assert_eq!(m.status, 200, "{}", m.text());
    serde_json::from_slice(&m.body).unwrap()
}

fn layer_types(m: &serde_json::Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_pushed_image_reads_back_identically_with_skopeo_umoci_and_podman() {
    if !require(&["podman"]) {
        return;
    }
    let s = Scratch::new();
    let (store, reference) = store_with_image(s.path());
    let reg = Registry::plain();
    let out = pushed(&store, "img", &reg.reference("app:v1"), &[]);
    assert!(
        out.starts_with(&format!("Pushed {}", reg.reference("app:v1"))),
        "{out}"
    );
    // gzip layers by default, whatever the store keeps.
    let m = manifest(&reg, "app", "v1");
    assert!(layer_types(&m).iter().all(|t| t == OCI_GZIP), "{m}");
    let rootfs = pulled_back(&reg, "app:v1", s.path());
    assert_trees_eq(
        "skopeo + umoci of the pushed image",
        "umoci's reference",
        &snapshot(&reference),
        "pushed",
        &snapshot(&rootfs),
    );
    // The manifest was the last thing written: no tag ever named a blob
    // that was not there yet.
    let writes: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| matches!(r.method.as_str(), "PUT" | "POST" | "PATCH"))
        .collect();
    let last = writes.last().expect("writes");
    assert!(
        last.method == "PUT" && last.path.contains("/manifests/"),
        "{writes:?}"
    );
    assert_eq!(
        writes
            .iter()
            .filter(|r| r.path.contains("/manifests/"))
            .count(),
        1
    );
    // podman pulls it.
    let pm = s.path().join("podman");
    fs::create_dir_all(&pm).unwrap();
    let conf = pm.join("containers.conf");
    fs::write(
        &conf,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}/events.log\"\n",
            pm.display()
        ),
    )
    .unwrap();
    let pulled = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(pm.join("root"))
        .arg("--runroot")
        .arg(pm.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "pull",
            "--tls-verify=false",
            "-q",
        ])
        .arg(reg.reference("app:v1"))
        .output()
        .expect("podman");
    assert!(pulled.status.success(), "podman pull: {}", text(&pulled));
}

#[test]
fn blobs_the_registry_has_are_not_sent_again() {
    if !require(&[]) {
        return;
    }
    let s = Scratch::new();
    let (store, _) = store_with_image(s.path());
    let reg = Registry::plain();
    let first = pushed(&store, "img", &reg.reference("app:v1"), &[]);
    assert!(!first.contains(" 0 blobs sent"), "{first}");
    let uploads = |reg: &Registry| {
        reg.requests()
            .iter()
            .filter(|r| r.method == "PATCH" || (r.method == "PUT" && r.path.contains("/blobs/")))
            .count()
    };
    let before = uploads(&reg);
    // The same repository again: every blob is there.
    let again = pushed(&store, "img", &reg.reference("app:v2"), &[]);
    assert!(again.contains(" 0 blobs sent"), "{again}");
    assert!(again.contains(" 0 mounted"), "{again}");
    assert_eq!(uploads(&reg), before, "a blob was uploaded again");
    // Another repository of the registry, the image named after the first:
    // the blobs are mounted from it, not uploaded.
    let named = reg.reference("app:v1");
    let tagged = um(&store, &["image", "tag", "img", &named]);
    assert!(tagged.status.success(), "{}", text(&tagged));
    let other = pushed(&store, &named, &reg.reference("other:v1"), &[]);
    assert!(other.contains(" 0 blobs sent"), "{other}");
    assert!(!other.contains(" 0 mounted"), "{other}");
    assert_eq!(
        uploads(&reg),
        before,
        "a blob was uploaded instead of mounted"
    );
    let m = manifest(&reg, "other", "v1");
    assert_eq!(m, manifest(&reg, "app", "v1"));
}

#[test]
fn compression_is_chosen_and_the_image_id_stays() {
    if !require(&[]) {
        return;
    }
    let s = Scratch::new();
    let (store, _) = store_with_image(s.path());
    let reg = Registry::plain();
    pushed(
        &store,
        "img",
        &reg.reference("z:v1"),
        &["--compression", "zstd"],
    );
    let m = manifest(&reg, "z", "v1");
    assert!(layer_types(&m).iter().all(|t| t == OCI_ZSTD), "{m}");
    pushed(&store, "img", &reg.reference("g:v1"), &[]);
    let g = manifest(&reg, "g", "v1");
    // The same config (so the same image id), other layer blobs.
    assert_eq!(m["config"]["digest"], g["config"]["digest"]);
    assert_ne!(m["layers"], g["layers"]);
    let out = um(
        &store,
        &[
            "push",
            "img",
            &reg.reference("x:v1"),
            "--compression",
            "lz4",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out)
    );
}

#[test]
fn login_keeps_checked_credentials_and_logout_forgets_them() {
    if !require(&[]) {
        return;
    }
    let s = Scratch::new();
    let (store, _) = store_with_image(s.path());
    let reg = Registry::tls_with_auth("alice", "s3cret");
    let dest = reg.reference("app:v1");
    // No credentials: one line that says so.
    let out = um(&store, &["push", "img", &dest]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.lines().count() == 1,
        "{}",
        text(&out)
    );
    assert!(err.contains(&reg.addr()), "names the registry: {err}");
    // A wrong password is refused and not kept.
    let out = um_in(
        &store,
        &["login", &reg.addr(), "-u", "alice", "--password-stdin"],
        Some("nope\n"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!auth_file(&store).exists(), "a refused login was kept");
    let out = um_in(
        &store,
        &["login", &reg.addr(), "-u", "alice", "--password-stdin"],
        Some("s3cret\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let auth: serde_json::Value =
        serde_json::from_slice(&fs::read(auth_file(&store)).unwrap()).unwrap();
    assert!(auth["auths"][reg.addr()]["auth"].is_string(), "{auth}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(auth_file(&store)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the credential file is private");
    pushed(&store, "img", &dest, &[]);
    let out = um(&store, &["logout", &reg.addr()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = um(&store, &["push", "img", &reg.reference("app:v2")]);
    assert!(!out.status.success(), "pushed after logout: {}", text(&out));
    let out = um(&store, &["logout", &reg.addr()]);
    assert!(!out.status.success(), "a second logout: {}", text(&out));
}

/// The id and layer blobs `image inspect` gives for `name`.
fn id_and_layers(store: &Path, name: &str) -> (String, serde_json::Value) {
    let out = um(store, &["image", "inspect", name]);
    assert!(out.status.success(), "inspect {name}: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    (v["id"].to_string(), v["manifest"]["layers"].clone())
}

#[test]
fn a_pull_takes_the_layers_the_store_has_by_diff_id() {
    if !require(&[]) {
        return;
    }
    let s = Scratch::new();
    let (store, reference) = store_with_image(s.path());
    let reg = Registry::plain();
    // In the registry as zstd: other blobs, the same diff ids.
    let name = reg.reference("z:v1");
    pushed(&store, "img", &name, &["--compression", "zstd"]);
    let before = reg.requests().len();
    let out = um(&store, &["pull", "-q", &name]);
    assert!(out.status.success(), "pull: {}", text(&out));
    let asked: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(asked.is_empty(), "blobs fetched: {asked:#?}");
    // The same image (id), on the store's own blobs.
    let (id, layers) = id_and_layers(&store, &name);
    assert_eq!((id, layers), id_and_layers(&store, "img"));
    let fsck = um(&store, &["image", "fsck"]);
    assert!(fsck.status.success(), "fsck: {}", text(&fsck));
    // Removing the first image keeps what the pulled one uses.
    let rm = um(&store, &["image", "rm", "img"]);
    assert!(rm.status.success(), "rm: {}", text(&rm));
    let gc = um(&store, &["image", "prune"]);
    assert!(gc.status.success(), "prune: {}", text(&gc));
    let fsck = um(&store, &["image", "fsck"]);
    assert!(fsck.status.success(), "fsck after rm: {}", text(&fsck));
    let mine = s.path().join("mine");
    fs::create_dir_all(&mine).unwrap();
    let out = um(&store, &["image", "mount", &name, mine.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}", text(&out));
    let _mounted = support::store::UnionMount(mine.clone());
    support::store::assert_same_tree(&mine, &reference);
}

#[test]
fn foreign_layers_are_not_pushed_and_are_pulled_from_the_registry() {
    if !require(&[]) {
        return;
    }
    let s = Scratch::new();
    let (layout, tag, reference) = multi_layer_oci(s.path());
    let url = "https://foreign.invalid/base.tar.gz";
    with_foreign_base(&layout, &tag, "foreign", url);
    let store = s.path().join("store");
    let out = um(&store, &["image", "load", layout.to_str().unwrap()]);
    assert!(out.status.success(), "load: {}", text(&out));
    let base = layer_digests(&layout, &tag)[0].clone();
    let reg = Registry::plain();
    // As Docker: the foreign layer is not sent (its urls serve it), even
    // with another compression asked, and the manifest keeps it as it is.
    let name = reg.reference("f:v1");
    let out = pushed(&store, "foreign", &name, &["--compression", "zstd"]);
    assert!(out.contains("1 foreign skipped"), "{out}");
    let asked: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&base[7..]))
        .collect();
    assert!(asked.is_empty(), "{asked:#?}");
    let m = manifest(&reg, "f", "v1");
    assert_eq!(m["layers"][0]["digest"], base.as_str());
    assert_eq!(m["layers"][0]["mediaType"], NONDISTRIBUTABLE_GZIP);
    assert_eq!(m["layers"][0]["urls"][0], url);
    // A pull takes it from the registry only, never from its urls: one line
    // while the registry lacks it.
    let other = s.path().join("other");
    let out = um(&other, &["pull", "-q", &name]);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && err.lines().count() == 1,
        "{}",
        text(&out)
    );
    assert!(
        err.contains(&base) && err.contains("foreign layer"),
        "{err}"
    );
    // Once the registry has it (the plain image pushed to the repository),
    // the pull completes, and the tree is umoci's.
    pushed(&store, &tag, &reg.reference("f:plain"), &[]);
    let out = um(&other, &["pull", "-q", &name]);
    assert!(out.status.success(), "pull: {}", text(&out));
    let mnt = s.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = um(&other, &["image", "mount", &name, mnt.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}", text(&out));
    let _mounted = support::store::UnionMount(mnt.clone());
    support::store::assert_same_tree(&mnt, &reference);
}
