//! The registry fixtures of `support::registry`, each proved against the
//! real tools: the plain registry serves what skopeo pushes to skopeo and
//! podman; the TLS registry wants its CA and the password (401 without);
//! a stopped registry comes back with its storage; the access log shows
//! every request and nothing more; the tamper proxy passes images through
//! untouched until told otherwise, each fault it injects is seen by a
//! client, and a held blob waits for the test's word; the multi-layer image has its whiteout, opaque directory and
//! hard links; the multi-arch index is served as an index.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::registry::images::{blob, layer_digests, manifest_digest};
use support::registry::{
    Fault, Registry, TamperProxy, http_request, multi_arch_index, multi_layer_oci,
    push_with_skopeo, push_with_skopeo_as, require,
};
use support::{Scratch, assert_trees_eq, snapshot, tools::ok};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn skopeo(args: &[String]) -> Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs")
}

fn s(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// `skopeo copy` from a registry (or proxy) at `addr` into an OCI layout.
fn copy_out(src_args: &[String], addr: &str, repo_tag: &str, layout: &Path, tag: &str) -> Output {
    let mut args = vec![s("copy")];
    args.extend_from_slice(src_args);
    args.push(format!("docker://{addr}/{repo_tag}"));
    args.push(format!("oci:{}:{tag}", layout.display()));
    skopeo(&args)
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) {
    ok(
        "umoci unpack",
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle)
            .output()
            .expect("umoci runs"),
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every entry of every layer: (layer index, path, is a hard link).
fn layer_entries(layout: &Path, tag: &str) -> Vec<(usize, String, bool)> {
    let mut all = Vec::new();
    for (i, d) in layer_digests(layout, tag).iter().enumerate() {
        let bytes = blob(layout, d);
        let mut tar_bytes = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut tar_bytes)
                .expect("gunzip layer");
        } else {
            tar_bytes = bytes;
        }
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        for e in ar.entries().expect("tar entries") {
            let e = e.expect("tar entry");
            let path = e.path().expect("path").display().to_string();
            let link = e.header().entry_type() == tar::EntryType::Link;
            all.push((i, path.trim_start_matches("./").to_string(), link));
        }
    }
    all
}

#[test]
fn multi_layer_image_has_whiteout_opaque_dir_and_hard_links() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, reference) = multi_layer_oci(scratch.path());
    let entries = layer_entries(&layout, &tag);
    let has = |layer: usize, path: &str| entries.iter().any(|(l, p, _)| *l == layer && p == path);
    assert_eq!(layer_digests(&layout, &tag).len(), 3, "three layers");
    assert!(has(0, "bin/busybox"), "layer 1 holds busybox: {entries:?}");
    assert!(
        has(1, "data/.wh.gone"),
        "layer 2 has the whiteout: {entries:?}"
    );
    assert!(
        has(2, "data/dir/.wh..wh..opq"),
        "layer 3 is opaque: {entries:?}"
    );
    let links = entries
        .iter()
        .filter(|(l, _, link)| *l == 1 && *link)
        .count();
    assert_eq!(links, 2, "layer 2 has two hard-link entries: {entries:?}");
    // umoci's own result of applying the layers.
    assert!(!reference.join("data/gone").exists());
    assert!(!reference.join("data/dir/old").exists());
    assert!(!reference.join("data/dir/sub").exists());
    assert_eq!(
        fs::read_to_string(reference.join("data/dir/new")).unwrap(),
        "only this is left in dir\n"
    );
    assert_eq!(
        fs::read_to_string(reference.join("data/keep")).unwrap(),
        "keep v2\n"
    );
    use std::os::unix::fs::MetadataExt;
    let one = fs::metadata(reference.join("data/links/one")).unwrap();
    let three = fs::metadata(reference.join("data/other/three")).unwrap();
    assert_eq!(
        (one.ino(), one.nlink()),
        (three.ino(), 3),
        "one hard-link group"
    );
}

/// A private podman (vfs storage, its own root and config) that pulls.
fn podman(dir: &Path, args: &[String]) -> Output {
    let conf = dir.join("containers.conf");
    if !conf.exists() {
        let text = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{}/events.log\"\n",
            dir.display()
        );
        fs::write(&conf, text).unwrap();
    }
    Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman runs")
}

#[test]
fn plain_registry_serves_skopeo_and_podman_what_skopeo_pushed() {
    if !require(&["podman"]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, reference) = multi_layer_oci(scratch.path());
    let reg = Registry::plain();
    let digest = push_with_skopeo(&layout, &tag, &reg, "img:v3");
    assert_eq!(digest, manifest_digest(&layout, &tag), "pushed digest");

    // The registry's API gives back the same manifest.
    let m = reg.get("/v2/img/manifests/v3", &[OCI_MANIFEST]);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(m.body, blob(&layout, &digest), "manifest bytes");

    // skopeo copies it back and umoci unpacks what it unpacked before.
    let back = scratch.path().join("back");
    let out = copy_out(&reg.skopeo_src_args(), &reg.addr(), "img:v3", &back, "v3");
    ok("skopeo copy back", out);
    assert_eq!(layer_digests(&back, "v3"), layer_digests(&layout, &tag));
    let bundle = scratch.path().join("back-bundle");
    umoci_unpack(&back, "v3", &bundle);
    assert_trees_eq(
        "image pulled back from the registry",
        "umoci reference",
        &snapshot(&reference),
        "pulled back",
        &snapshot(&bundle.join("rootfs")),
    );

    // podman pulls it with the registry's options, same digest.
    let pdir = scratch.dir("podman");
    let image = reg.reference("img:v3");
    let mut args = vec![s("pull"), s("-q")];
    args.extend(reg.client_args());
    args.push(image.clone());
    ok("podman pull", podman(&pdir, &args));
    let got = ok(
        "podman image inspect",
        podman(
            &pdir,
            &[
                s("image"),
                s("inspect"),
                s("--format"),
                s("{{.Digest}}"),
                image,
            ],
        ),
    );
    assert_eq!(got.trim(), digest, "podman's digest of the pulled image");
    let seen = reg.requests();
    assert!(
        seen.iter()
            .any(|r| r.method == "PUT" && r.path == "/v2/img/manifests/v3" && r.status == 201),
        "skopeo's manifest PUT is in the access log: {seen:?}"
    );
}

#[test]
fn images_go_up_as_docker_schema2_and_with_zstd_layers() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, reference) = multi_layer_oci(scratch.path());
    let cases = [
        (
            "docker:1",
            "--format",
            "v2s2",
            DOCKER_MANIFEST,
            DOCKER_GZIP_LAYER,
        ),
        (
            "zstd:1",
            "--dest-compress-format",
            "zstd",
            OCI_MANIFEST,
            OCI_ZSTD_LAYER,
        ),
    ];
    for (repo_tag, opt, val, manifest_type, layer_type) in cases {
        // A registry each: skopeo would mount the blobs the other push left.
        let reg = Registry::plain();
        let digest = push_with_skopeo_as(&layout, &tag, &reg, repo_tag, &[opt, val]);
        let path = format!(
            "/v2/{}/manifests/{digest}",
            repo_tag.split(':').next().unwrap()
        );
        let m = reg.get(&path, &[manifest_type]);
        assert_eq!(m.status, 200, "{repo_tag}: {}", m.text());
        assert_eq!(m.header("content-type"), Some(manifest_type), "{repo_tag}");
        let json: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let types: Vec<&str> = json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(types, [layer_type; 3], "{repo_tag}");
        // Still the same files once unpacked (umoci reads only gzip).
        let back = scratch.path().join(format!("back-{val}"));
        let mut args = reg.skopeo_src_args();
        args.push(s("--dest-compress-format=gzip"));
        let out = copy_out(&args, &reg.addr(), repo_tag, &back, "x");
        ok("skopeo copy back", out);
        let bundle = scratch.path().join(format!("bundle-{val}"));
        umoci_unpack(&back, "x", &bundle);
        assert_trees_eq(
            repo_tag,
            "umoci reference",
            &snapshot(&reference),
            "pushed and pulled back",
            &snapshot(&bundle.join("rootfs")),
        );
    }
}

#[test]
fn requests_lists_each_request_and_nothing_when_idle() {
    if !require(&[]) {
        return;
    }
    let reg = Registry::plain();
    assert_eq!(reg.requests(), [], "a fresh registry has answered nobody");
    assert_eq!(reg.requests(), [], "asking again is not a request");
    let r = reg.get("/v2/_catalog", &[]);
    assert_eq!((r.status, r.text().trim()), (200, r#"{"repositories":[]}"#));
    let seen = reg.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (
            seen[0].method.as_str(),
            seen[0].path.as_str(),
            seen[0].status
        ),
        ("GET", "/v2/_catalog", 200)
    );
    // One answered by hand over std::net shows up too, right away.
    let r = http_request(&reg.addr(), "GET", "/v2/nothing/tags/list", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(reg.requests().len(), 2);
}

#[test]
fn tls_registry_wants_its_ca_and_the_password() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, _) = multi_layer_oci(scratch.path());
    let reg = Registry::tls_with_auth("alice", "s3cret pass");
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    assert!(reg.ca_cert_path().is_file());

    let anon = reg.get_without_creds("/v2/");
    assert_eq!(anon.status, 401, "{}", anon.text());
    assert!(
        anon.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        anon.headers
    );
    assert_eq!(reg.get("/v2/", &[]).status, 200, "with the password");
    let mark = reg.requests().len();

    // skopeo without credentials: refused with 401, and nothing stored.
    let dest = format!("docker://{}/img:v3", reg.addr());
    let src = format!("oci:{}:{tag}", layout.display());
    let cert_dir = format!("--dest-cert-dir={}", reg.cert_dir().display());
    let out = skopeo(&[s("copy"), cert_dir.clone(), src.clone(), dest.clone()]);
    assert!(!out.status.success(), "pushed without credentials");
    let err = stderr(&out);
    assert!(
        err.contains("401") || err.contains("unauthorized"),
        "skopeo's error names the refusal: {err}"
    );
    // Nor with the right password and no CA: the certificate is not trusted.
    let creds = s("--dest-creds=alice:s3cret pass");
    let out = skopeo(&[s("copy"), creds.clone(), src.clone(), dest.clone()]);
    assert!(!out.status.success(), "pushed trusting an unknown CA");
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    let refused = reg.requests().split_off(mark);
    assert!(
        !refused.is_empty() && refused.iter().all(|r| r.status == 401),
        "skopeo got nothing but 401: {refused:?}"
    );

    // With both it works, by the fixture's helper and by hand.
    let digest = push_with_skopeo(&layout, &tag, &reg, "img:v3");
    assert_eq!(digest, manifest_digest(&layout, &tag));
    let out = skopeo(&[s("copy"), creds, cert_dir, src, dest.replace("v3", "again")]);
    ok("skopeo copy with creds and cert dir", out);
    let m = reg.head("/v2/img/manifests/again", &[OCI_MANIFEST]);
    assert_eq!(m.status, 200);
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    let back = scratch.path().join("back");
    let out = copy_out(&reg.skopeo_src_args(), &reg.addr(), "img:v3", &back, "v3");
    ok("skopeo copy from the TLS registry", out);
    assert_eq!(layer_digests(&back, "v3"), layer_digests(&layout, &tag));
}

#[test]
fn registry_and_proxy_are_gone_after_a_panicking_test() {
    if !require(&[]) {
        return;
    }
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let reg = Registry::plain();
        let proxy = TamperProxy::start(&reg.addr());
        *seen.lock().unwrap() = Some((reg.pid().unwrap(), proxy.addr()));
        panic!("a test failing with a registry and a proxy up");
    });
    assert!(result.is_err());
    let (pid, proxy_addr) = seen.into_inner().unwrap().expect("started");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} outlived its test"
    );
    assert!(
        std::net::TcpStream::connect(&proxy_addr).is_err(),
        "the proxy still listens on {proxy_addr}"
    );
}

#[test]
fn deleting_a_blob_leaves_a_manifest_that_cannot_be_pulled() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, _) = multi_layer_oci(scratch.path());
    let reg = Registry::plain();
    push_with_skopeo(&layout, &tag, &reg, "img:v3");
    let gone = layer_digests(&layout, &tag)[1].clone();
    assert_eq!(reg.delete(&format!("/v2/img/blobs/{gone}")).status, 202);
    assert_eq!(reg.head(&format!("/v2/img/blobs/{gone}"), &[]).status, 404);
    let m = reg.get("/v2/img/manifests/v3", &[OCI_MANIFEST]);
    assert_eq!(m.status, 200, "the manifest stays");
    let out = copy_out(
        &reg.skopeo_src_args(),
        &reg.addr(),
        "img:v3",
        &scratch.dir("out"),
        "x",
    );
    assert!(
        !out.status.success(),
        "skopeo copied an image missing a blob"
    );
    assert!(stderr(&out).contains(&gone[7..]), "{}", stderr(&out));
}

#[test]
fn stopped_registry_refuses_then_restarts_on_its_storage() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, _) = multi_layer_oci(scratch.path());
    let mut reg = Registry::plain();
    let digest = push_with_skopeo(&layout, &tag, &reg, "img:v3");
    let before = reg.requests().len();
    let pid = reg.pid().expect("running");
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the registry was reaped"
    );
    let inspect = |reg: &Registry| {
        let mut args = vec![s("inspect"), s("--raw")];
        args.extend(reg.client_args());
        args.push(format!("docker://{}/img:v3", reg.addr()));
        skopeo(&args)
    };
    let out = inspect(&reg);
    assert!(!out.status.success(), "a stopped registry answered");
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );

    let addr = reg.addr();
    reg.start();
    assert_eq!(reg.addr(), addr, "same port after a restart");
    let raw = ok("skopeo inspect after restart", inspect(&reg));
    assert_eq!(raw.as_bytes(), blob(&layout, &digest), "same manifest");
    let after = reg.requests();
    assert!(after.len() > before, "the log goes on across the restart");
}

/// The body of blob `digest` of repository `img` fetched through `addr`.
fn blob_path(digest: &str) -> String {
    format!("/v2/img/blobs/{digest}")
}

#[test]
fn tamper_proxy_passes_images_and_injects_each_fault() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, _) = multi_layer_oci(scratch.path());
    let reg = Registry::plain();
    push_with_skopeo(&layout, &tag, &reg, "img:v3");
    let proxy = TamperProxy::start(&reg.addr());
    let src = [s("--src-tls-verify=false")];
    let layers = layer_digests(&layout, &tag);
    let big = layers[0].clone();
    let size = blob(&layout, &big).len();

    // Untouched: skopeo copies through it, and the blobs arrive whole.
    let out_dir = scratch.path().join("through");
    ok(
        "skopeo copy through the proxy",
        copy_out(&src, &proxy.addr(), "img:v3", &out_dir, "ok"),
    );
    assert_eq!(layer_digests(&out_dir, "ok"), layers);
    assert_eq!(blob(&out_dir, &big), blob(&layout, &big));
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&big)),
        "{:?}",
        proxy.requests()
    );

    // Pushes go through it too (upload bodies, Location of the session).
    let mut args = vec![s("copy"), s("--dest-tls-verify=false")];
    args.push(format!("oci:{}:{tag}", layout.display()));
    args.push(format!("docker://{}/pushed:1", proxy.addr()));
    ok("skopeo copy to the proxy", skopeo(&args));
    let m = reg.head("/v2/pushed/manifests/1", &[OCI_MANIFEST]);
    assert_eq!(m.status, 200, "pushed through the proxy");
    assert!(
        proxy.requests().iter().any(|r| r.method == "PUT"),
        "{:?}",
        proxy.requests()
    );

    // A flipped byte: skopeo notices and fails.
    proxy.fault(&big, Fault::FlipByte);
    let out = copy_out(&src, &proxy.addr(), "img:v3", &scratch.dir("flip"), "x");
    assert!(!out.status.success(), "skopeo took a tampered blob");
    assert!(stderr(&out).contains(&big[7..]), "{}", stderr(&out));
    let r = http_request(&proxy.addr(), "GET", &blob_path(&big), &[]);
    let orig = blob(&layout, &big);
    let differ: Vec<usize> = (0..size).filter(|i| r.body[*i] != orig[*i]).collect();
    assert_eq!(differ, [size / 2], "exactly the middle byte differs");
    proxy.clear();

    // Cut after 1000 bytes: the head promises all, 1000 come, then EOF.
    proxy.fault(&big, Fault::CutAfter(1000));
    let r = http_request(&proxy.addr(), "GET", &blob_path(&big), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(r.body, orig[..1000], "the first 1000 bytes, then the cut");
    let out = copy_out(&src, &proxy.addr(), "img:v3", &scratch.dir("cut"), "x");
    assert!(!out.status.success(), "skopeo took a cut blob");
    proxy.clear();

    // Range: passed on by default, dropped when told.
    let range = [("Range", "bytes=10-19")];
    let r = http_request(&proxy.addr(), "GET", &blob_path(&big), &range);
    assert_eq!((r.status, &r.body[..]), (206, &orig[10..20]));
    proxy.ignore_ranges(true);
    let r = http_request(&proxy.addr(), "GET", &blob_path(&big), &range);
    assert_eq!((r.status, r.body.len()), (200, size), "whole blob");
    let last = proxy.requests().pop().unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=10-19"), "recorded");
    proxy.clear();

    // 404 for one blob, HEAD and GET, without asking the registry.
    proxy.fault(&big, Fault::NotFound);
    let logged = reg.requests().len();
    assert_eq!(
        http_request(&proxy.addr(), "HEAD", &blob_path(&big), &[]).status,
        404
    );
    let r = http_request(&proxy.addr(), "GET", &blob_path(&big), &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("BLOB_UNKNOWN"), "{}", r.text());
    assert_eq!(reg.requests().len(), logged, "the registry never saw them");
    let out = copy_out(&src, &proxy.addr(), "img:v3", &scratch.dir("gone"), "x");
    assert!(!out.status.success(), "skopeo copied a missing blob");
    proxy.clear();

    // A fault for the next request only: one copy fails, the next works.
    proxy.fault_times(&big, Fault::FlipByte, 1);
    let once = scratch.dir("once");
    let out = copy_out(&src, &proxy.addr(), "img:v3", &once, "x");
    assert!(!out.status.success(), "skopeo took a tampered blob");
    ok(
        "skopeo copy after the one fault",
        copy_out(&src, &proxy.addr(), "img:v3", &once, "x"),
    );
    assert_eq!(layer_digests(&once, "x"), layers);
}

/// `skopeo copy` from `addr` in the background (stdout and stderr kept).
fn spawn_copy_out(addr: &str, layout: &Path) -> std::process::Child {
    Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/img:v3"))
        .arg(format!("oci:{}:x", layout.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skopeo runs")
}

#[test]
fn tamper_proxy_holds_a_blob_until_released_or_cut() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let (layout, tag, _) = multi_layer_oci(scratch.path());
    let mut reg = Registry::plain();
    push_with_skopeo(&layout, &tag, &reg, "img:v3");
    let proxy = TamperProxy::start(&reg.addr());
    let layers = layer_digests(&layout, &tag);
    proxy.fault(&layers[0], Fault::StallAfter(1000));

    // Held, then released: skopeo waits, then gets the whole blob.
    let released = scratch.dir("released");
    let mut child = spawn_copy_out(&proxy.addr(), &released);
    assert!(
        proxy.wait_stalled(1),
        "the blob's GET never reached the stall"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "skopeo finished while its blob was held"
    );
    proxy.release();
    ok(
        "skopeo copy after release",
        child.wait_with_output().unwrap(),
    );
    assert_eq!(layer_digests(&released, "x"), layers);

    // Held, the registry stopped, then cut: the copy fails mid-blob.
    let cut = scratch.dir("cut");
    let child = spawn_copy_out(&proxy.addr(), &cut);
    assert!(
        proxy.wait_stalled(2),
        "the second GET never reached the stall"
    );
    reg.stop();
    proxy.cut_stalled();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "skopeo finished a cut blob");
    let held = proxy
        .requests()
        .iter()
        .filter(|r| r.fault == Some(Fault::StallAfter(1000)))
        .count();
    assert_eq!(held, 2, "{:?}", proxy.requests());

    // The registry back and the fault gone: the copy completes.
    reg.start();
    proxy.clear();
    ok(
        "skopeo copy after restart",
        copy_out(
            &[s("--src-tls-verify=false")],
            &proxy.addr(),
            "img:v3",
            &cut,
            "x",
        ),
    );
    assert_eq!(layer_digests(&cut, "x"), layers);
}

#[test]
fn multi_arch_index_is_served_as_an_index() {
    if !require(&[]) {
        return;
    }
    let scratch = Scratch::new();
    let multi = multi_arch_index(scratch.path());
    let reg = Registry::plain();
    let digest = push_with_skopeo(&multi.layout, &multi.tag, &reg, "multi:1");
    assert_eq!(digest, multi.index_digest, "the index went up as it was");

    let r = reg.get("/v2/multi/manifests/1", &[OCI_INDEX, OCI_MANIFEST]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let served: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(served, multi.platforms);

    // Each platform's image is there, and skopeo picks by architecture.
    for (platform, digest) in &multi.platforms {
        let arch = platform.strip_prefix("linux/").unwrap();
        let m = reg.head(&format!("/v2/multi/manifests/{digest}"), &[OCI_MANIFEST]);
        assert_eq!(m.status, 200, "{platform} manifest");
        let out_dir = scratch.path().join(format!("pulled-{arch}"));
        let mut args = vec![s("--override-arch"), s(arch)];
        args.extend(reg.skopeo_src_args());
        ok(
            "skopeo copy one platform",
            copy_out(&args, &reg.addr(), "multi:1", &out_dir, arch),
        );
        assert_eq!(&manifest_digest(&out_dir, arch), digest);
        let bundle = scratch.path().join(format!("bundle-{arch}"));
        umoci_unpack(&out_dir, arch, &bundle);
        assert_eq!(
            fs::read_to_string(bundle.join("rootfs/arch")).unwrap(),
            format!("{arch}\n")
        );
    }
}
