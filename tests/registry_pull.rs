//! `unionmount pull` against Debian's docker-registry (the distribution
//! registry) on loopback: images pushed by skopeo (made with umoci) come
//! out as `umoci unpack` shows them; multi-platform indexes; resumed and
//! killed pulls; missing, cut and tampered blobs; a registry stopped
//! mid-pull; `run --pull`.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use layerstore::serde_json::{self, Value};
use support::registry::images::{blob, layer_digests, manifest_digest};
use support::registry::{
    Fault, ProxyRequest, Registry, Request, TamperProxy, multi_arch_index, push_with_skopeo,
    push_with_skopeo_as,
};
use support::store::*;
use support::wait_until;

/// A store, the CLIENTS.md image (three layers) in an OCI layout, and a
/// plain registry that holds it as `img:v3`, digests as they are.
struct Case {
    env: Env,
    fx: Fixture,
    reg: Registry,
}

impl Case {
    /// None when the test cannot run here (skipped, or failed under CI).
    fn new() -> Option<Case> {
        Case::with(Registry::plain)
    }

    /// With the registry `start` gives (TLS, auth); skopeo pushes with
    /// its credentials.
    fn with(start: impl FnOnce() -> Registry) -> Option<Case> {
        if !support::registry::require(&[]) {
            return None;
        }
        let env = Env::new();
        let fx = umoci_fixture(env.path());
        let reg = start();
        push_with_skopeo(&fx.oci, "v3", &reg, "img:v3");
        Some(Case { env, fx, reg })
    }

    /// "127.0.0.1:PORT/img:TAG" on the registry.
    fn name(&self, tag: &str) -> String {
        self.reg.reference(&format!("img:{tag}"))
    }

    /// The v3 manifest as the layout (and so the registry) has it.
    fn manifest(&self, tag: &str) -> Value {
        serde_json::from_slice(&blob(&self.fx.oci, &manifest_digest(&self.fx.oci, tag)))
            .expect("manifest JSON")
    }

    /// Layer `i` of `tag`: ("sha256:…", its hex, its size).
    fn layer(&self, tag: &str, i: usize) -> (String, String, u64) {
        let l = &self.manifest(tag)["layers"][i];
        let digest = l["digest"].as_str().expect("digest").to_string();
        let hex = digest["sha256:".len()..].to_string();
        (digest, hex, l["size"].as_u64().expect("size"))
    }

    /// A tamper proxy in front of the registry.
    fn proxy(&self) -> TamperProxy {
        TamperProxy::start(&self.reg.addr())
    }

    /// `env` holds `image`, the same tree as umoci's v3.
    fn assert_v3(&self, env: &Env, image: &str, label: &str) {
        env.assert_mounted_tree(image, &self.fx.reference, label);
    }

    /// The registry's requests since `before` of them, on blob `hex` (all
    /// blobs when empty).
    fn blob_requests(&self, before: usize, hex: &str) -> Vec<Request> {
        self.reg.requests()[before..]
            .iter()
            .filter(|r| r.path.contains("/blobs/") && r.path.contains(hex))
            .cloned()
            .collect()
    }
}

/// `unionmount pull -q REF` with `env`'s store, run in the background.
fn spawn_pull(env: &Env, reference: &str) -> Child {
    Command::new(bin())
        .args(["pull", "-q", reference])
        .env("UNIONMOUNT_STORE", env.store())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unionmount pull")
}

/// SIGKILL a background pull and reap it.
fn kill9(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The size of `env`'s partial download of blob `hex` (0 if none).
fn partial_len(env: &Env, hex: &str) -> u64 {
    fs::metadata(env.store().join("partial").join(hex)).map_or(0, |m| m.len())
}

/// Wait until the pull has written `len` bytes of blob `hex` to partial/.
fn wait_partial(env: &Env, hex: &str, len: u64) {
    let got = wait_until(Duration::from_secs(30), || partial_len(env, hex) >= len);
    assert!(
        got,
        "partial/{hex}: {} of {len} bytes",
        partial_len(env, hex)
    );
}

/// A failed command's stderr, which must be one line.
fn one_line(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    e
}

/// `unionmount pull -q REF` through `proxy`, which must succeed; the
/// requests the pull made for blob `digest`.
fn pull_through(
    env: &Env,
    proxy: &TamperProxy,
    reference: &str,
    digest: &str,
) -> Vec<ProxyRequest> {
    let before = proxy.requests().len();
    env.um(&["pull", "-q", reference]);
    proxy.requests()[before..]
        .iter()
        .filter(|r| r.path.contains(digest))
        .cloned()
        .collect()
}

/// The blob was asked for once, for the rest from `offset` (a resume).
fn assert_resumed_at(asked: &[ProxyRequest], offset: u64) {
    let want = format!("bytes={offset}-");
    assert!(
        asked.len() == 1 && asked[0].range.as_deref() == Some(want.as_str()),
        "{asked:#?}"
    );
}

/// `image inspect` of `image` names layers of media type `kind`.
fn assert_layer_type(env: &Env, image: &str, kind: &str) {
    let got: Value = serde_json::from_str(&env.um(&["image", "inspect", image])).unwrap();
    assert!(got.to_string().contains(kind), "{image}: {kind} in {got}");
}

#[test]
fn pulled_gzip_zstd_and_plain_images_match_umoci() {
    let Some(c) = Case::new() else { return };
    let (env, t) = (&c.env, c.env.path());
    sh(&format!(
        "cd {} && skopeo copy -q --dest-compress-format zstd oci:oci:v3 oci:oci-zstd:v3 \
         && skopeo copy -q --dest-decompress oci:oci:v3 dir:plain \
         && skopeo copy -q --dest-oci-accept-uncompressed-layers dir:plain oci:oci-plain:v3",
        t.display()
    ));
    for tag in ["zstd", "plain"] {
        push_with_skopeo(
            &t.join(format!("oci-{tag}")),
            "v3",
            &c.reg,
            &format!("img:{tag}"),
        );
    }
    let name = c.name("v3");
    let id = env.um(&["pull", "-q", &name]);
    assert_eq!(
        id.trim(),
        env.short_id(&name),
        "pull prints the id image ls shows"
    );
    c.assert_v3(env, &name, "gzip");
    // Where it came from: the reference and the digest the registry gave.
    let want_digest = manifest_digest(&c.fx.oci, "v3");
    let e = env.listed(&name);
    assert_eq!(e["source"], Value::String(name.clone()));
    assert_eq!(e["sourceDigest"], Value::String(want_digest.clone()));
    assert_eq!(e["digest"], Value::String(want_digest.clone()));
    // The same layers compressed otherwise, each into a store of its own:
    // downloaded and unpacked from that compression.
    for tag in ["zstd", "plain"] {
        let own = Env::new();
        let n = c.name(tag);
        own.um(&["pull", "-q", &n]);
        c.assert_v3(&own, &n, tag);
        let layout = t.join(format!("oci-{tag}"));
        let m: Value =
            serde_json::from_slice(&blob(&layout, &manifest_digest(&layout, "v3"))).unwrap();
        assert_layer_type(&own, &n, m["layers"][0]["mediaType"].as_str().unwrap());
        own.assert_fsck_clean(tag);
        // Into the store that has v3: nothing but the manifest is fetched
        // (the same diff ids), and the image names the gzip blobs it has.
        let before = c.reg.requests().len();
        env.um(&["pull", "-q", &n]);
        let fetched = c.blob_requests(before, "");
        assert!(fetched.is_empty(), "{tag}: blobs fetched: {fetched:#?}");
        c.assert_v3(env, &n, tag);
        assert_layer_type(env, &n, "application/vnd.oci.image.layer.v1.tar+gzip");
    }
    env.assert_fsck_clean("after three pulls");
    // Pulling again fetches no blob: the store has them all.
    let before = c.reg.requests().len();
    env.um(&["pull", "-q", &name]);
    let again = c.blob_requests(before, "");
    assert!(again.is_empty(), "blobs fetched again: {again:#?}");
    assert!(env.partial_files().is_empty(), "{:?}", env.partial_files());
    // Docker's schema 2 (skopeo converts): the same image id.
    push_with_skopeo_as(&c.fx.oci, "v3", &c.reg, "img:v2s2", &["--format", "v2s2"]);
    let n = c.name("v2s2");
    assert_eq!(env.um(&["pull", "-q", &n]), id);
    assert_layer_type(env, &n, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    c.assert_v3(env, &n, "v2s2");
    // Every tag of the repository: one id each (all the same image here).
    env.um(&["image", "rm", &c.name("zstd")]);
    let ids = env.um(&["pull", "-q", "--all-tags", &c.reg.reference("img")]);
    assert_eq!(ids.lines().count(), 4, "{ids}");
    env.listed(&c.name("zstd"));
    let err = env.um_fail(&["pull", "-a", &format!("{name}@{want_digest}")]);
    assert!(err.contains("--all-tags"), "{err}");
}

#[test]
fn a_multi_platform_index_gives_the_platform_asked() {
    let Some(c) = Case::new() else { return };
    let env = &c.env;
    let ma = multi_arch_index(&env.path().join("multi"));
    let host = layerstore::image::host_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    // The config digest (the image id) of the index's image for `arch`.
    let config_of = |arch: &str| {
        let p = format!("linux/{arch}");
        let (_, d) = ma
            .platforms
            .iter()
            .find(|(q, _)| *q == p)
            .expect("platform");
        let m: Value = serde_json::from_slice(&blob(&ma.layout, d)).unwrap();
        m["config"]["digest"].clone()
    };
    push_with_skopeo(&ma.layout, &ma.tag, &c.reg, "multi:1");
    let name = c.reg.reference("multi:1");
    let no_such = |reference: &str, both: bool| {
        let err = env.um_fail(&["pull", "--platform", "linux/s390x", reference]);
        assert!(err.contains(&format!("linux/{other}")), "{err}");
        let named = err.contains("linux/s390x") && err.contains(&format!("linux/{host}"));
        assert!(!both || named, "{err}");
    };

    // The host's platform by default; the index's digest is recorded.
    env.um(&["pull", "-q", &name]);
    let e = env.listed(&name);
    assert_eq!(e["id"], config_of(host));
    assert_eq!(e["sourceDigest"], Value::String(ma.index_digest.clone()));
    // Another platform when asked (the tag now names that one).
    env.um(&["pull", "-q", "--platform", &format!("linux/{other}"), &name]);
    assert_eq!(env.listed(&name)["id"], config_of(other));
    no_such(&name, true);
    // The same as Docker's manifest list.
    push_with_skopeo_as(
        &ma.layout,
        &ma.tag,
        &c.reg,
        "multi:list",
        &["--format", "v2s2"],
    );
    let list = c.reg.reference("multi:list");
    env.um(&["pull", "-q", "--platform", &format!("linux/{other}"), &list]);
    assert_eq!(env.listed(&list)["id"], config_of(other));
    no_such(&list, false);
    // A single-platform image is what it is: asked for another, one line.
    let single = c.name("v3");
    let err = env.um_fail(&["pull", "--platform", &format!("linux/{other}"), &single]);
    assert!(
        err.contains(&format!("linux/{other}")) && err.contains(&format!("linux/{host}")),
        "{err}"
    );
    env.um(&[
        "pull",
        "-q",
        "--platform",
        &format!("linux/{host}"),
        &single,
    ]);
    let err = env.um_fail(&["pull", "--platform", "linux", &name]);
    assert!(err.contains("OS/ARCH"), "{err}");
    env.assert_fsck_clean("after the platform pulls");
}

#[test]
fn a_partial_blob_resumes_with_a_range_and_a_bad_one_is_refused() {
    let Some(c) = Case::new() else { return };
    let env = &c.env;
    let name = c.name("v3");
    let (digest, big, _) = c.layer("v3", 0);
    let whole = blob(&c.fx.oci, &digest);
    env.init_store();
    let partial = env.store().join("partial").join(&big);

    // A wrong first half: the whole is refused, and nothing of it is kept.
    let mut bad = whole[..whole.len() / 2].to_vec();
    bad[100] ^= 0xff;
    fs::write(&partial, &bad).unwrap();
    let err = env.um_fail(&["pull", "-q", &name]);
    assert!(
        err.contains("digest mismatch") && err.contains(&big),
        "{err}"
    );
    env.assert_nothing_stored("a refused partial");
    assert!(!partial.exists(), "the refused download was removed");

    // The right first half (a pull killed there): continued with a Range.
    fs::write(&partial, &whole[..whole.len() / 2]).unwrap();
    let before = c.reg.requests().len();
    env.um(&["pull", "-q", &name]);
    let fetched = c.blob_requests(before, &big);
    assert!(
        fetched.len() == 1 && fetched[0].status == 206,
        "one ranged GET of the rest: {fetched:#?}"
    );
    c.assert_v3(env, &name, "resumed");
    assert!(!partial.exists());
    env.assert_fsck_clean("after the resumed pull");
}

/// A kill point: the pull is held by the proxy `at` bytes into a blob.
struct KillPoint<'a> {
    env: &'a Env,
    proxy: &'a TamperProxy,
    reference: &'a str,
    /// connections held so far
    held: usize,
}

impl KillPoint<'_> {
    /// Hold blob `digest` after `at` bytes, kill -9 the pull there, let the
    /// held connection go; the image must be absent and fsck clean.
    fn kill_at(&mut self, digest: &str, at: u64) {
        self.proxy.fault_times(digest, Fault::StallAfter(at), 1);
        let child = spawn_pull(self.env, self.reference);
        self.held += 1;
        assert!(
            self.proxy.wait_stalled(self.held),
            "{digest} never held at {at}"
        );
        let hex = &digest["sha256:".len()..];
        wait_partial(self.env, hex, at);
        kill9(child);
        self.proxy.cut_stalled();
        let what = format!("killed at {at} bytes of {digest}");
        assert!(
            self.env.images().is_empty(),
            "{what}: {:?}",
            self.env.images()
        );
        self.env.assert_fsck_clean(&what);
    }
}

#[test]
fn killed_pulls_leave_nothing_half_made_and_a_retry_completes() {
    let Some(c) = Case::new() else { return };
    let (env, t) = (&c.env, c.env.path());
    // A fourth, incompressible layer, so a kill lands inside a long download.
    sh(&format!(
        "cd {t} && rm -rf b && umoci unpack --image oci:v3 b >/dev/null \
         && head -c 16M /dev/urandom > b/rootfs/big && umoci repack --image oci:big b",
        t = t.display()
    ));
    push_with_skopeo(&c.fx.oci, "big", &c.reg, "img:big");
    let proxy = c.proxy();
    let name = proxy.reference("img:big");
    env.init_store();
    // Killed before it has asked for anything.
    kill9(spawn_pull(env, &name));
    assert!(env.images().is_empty(), "{:?}", env.images());
    env.assert_fsck_clean("killed at once");
    // Each layer held at its start, its middle and its last byte while the
    // others go on (downloads and unpacking run in parallel); each round
    // from an empty store, so the held blob is asked for again.
    let mut point = KillPoint {
        env,
        proxy: &proxy,
        reference: &name,
        held: 0,
    };
    let layers = layer_digests(&c.fx.oci, "big");
    for i in 0..layers.len() {
        let (digest, _, size) = c.layer("big", i);
        for at in [0, size / 2, size - 1] {
            point.kill_at(&digest, at);
            env.um(&["image", "prune"]);
        }
    }
    // Killed halfway through the big layer: the retry asks for the rest.
    let (big, big_hex, size) = c.layer("big", layers.len() - 1);
    point.kill_at(&big, size / 2);
    assert_eq!(partial_len(env, &big_hex), size / 2, "what came is kept");
    assert_resumed_at(&pull_through(env, &proxy, &name, &big), size / 2);
    env.assert_fsck_clean("after the retry");
    let want = t.join("big-ref");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:big", c.fx.oci.display()),
        &want.display().to_string(),
    ]));
    env.assert_mounted_tree(&name, &want.join("rootfs"), "big");
    env.um(&["image", "rm", &name]);
    two_pulls_at_once_and_partial_housekeeping(env, &c.name("big"));
}

/// Two pulls of one image at once: one downloads each blob, the other
/// waits for it; both succeed. Then fsck and prune on partial/.
fn two_pulls_at_once_and_partial_housekeeping(env: &Env, name: &str) {
    env.um(&["image", "prune"]);
    assert_eq!(env.contents(), (vec![], vec![]), "an empty store to start");
    let two: Vec<_> = (0..2).map(|_| spawn_pull(env, name)).collect();
    for c in two {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    env.assert_fsck_clean("after two pulls at once");
    // fsck knows partial/: anything there not named by a digest is a problem.
    fs::create_dir(env.store().join("partial/stray")).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stray"));
    env.um(&["image", "fsck", "--repair"]);
    assert!(env.partial_files().is_empty());
    // prune takes what downloads left behind.
    fs::write(env.store().join("partial").join("0".repeat(64)), "x").unwrap();
    let out = env.um(&["image", "prune"]);
    assert!(out.contains("1 partial downloads"), "{out}");
    assert!(env.partial_files().is_empty());
}

#[test]
fn a_missing_blob_is_one_line_and_stores_nothing() {
    let Some(c) = Case::new() else { return };
    let env = &c.env;
    let (gone_digest, gone, _) = c.layer("v3", 1);
    let (third, third_hex, _) = c.layer("v3", 2);
    // A manifest whose descriptor says a blob is shorter than it is (the
    // registry takes it): refused by the digest check, not a crash.
    // (Put before a blob goes: the registry checks a manifest's blobs.)
    let mut short = c.manifest("v3");
    let n = short["layers"][2]["size"].as_u64().unwrap();
    short["layers"][2]["size"] = Value::from(n - 10);
    let put = c.reg.put(
        "/v2/img/manifests/short",
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&short).unwrap(),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    env.init_store();
    let err = env.um_fail(&["pull", &c.name("short")]);
    assert!(
        err.contains(&third) && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(!env.partial_files().contains(&third_hex));
    env.assert_nothing_stored("a short descriptor");
    // The other layers' downloads were kept (whole): prune them, so the
    // next pull needs the registry for each blob.
    env.um(&["image", "prune"]);
    // The blob the manifest names is gone from the registry.
    let del = c.reg.delete(&format!("/v2/img/blobs/{gone_digest}"));
    assert_eq!(del.status, 202, "{}", del.text());
    let err = env.um_fail(&["pull", &c.name("v3")]);
    assert!(err.contains(&gone) && err.contains("not found"), "{err}");
    assert!(!err.contains("times"), "not retried: {err}");
    env.assert_nothing_stored("a missing blob");
    // The other layers' downloads are kept for the next pull, each whole;
    // of the missing one there is nothing.
    let kept = env.partial_files();
    assert!(!kept.contains(&gone), "{kept:?}");
    for k in &kept {
        let bytes = fs::read(env.store().join("partial").join(k)).unwrap();
        assert_eq!(&layerstore::Digest::of_bytes(&bytes).hex(), k);
    }
    env.assert_fsck_clean("after a missing blob");
    // A tag the registry does not have, and a registry nobody runs.
    let err = env.um_fail(&["pull", &c.name("nope")]);
    assert!(err.contains("not found"), "{err}");
    let port = support::registry::free_port();
    let err = env.um_fail(&["pull", &format!("127.0.0.1:{port}/img:v3")]);
    assert!(err.contains("cannot connect"), "{err}");
    let err = env.um_fail(&["pull", "Bad/Name"]);
    assert!(err.contains("lowercase"), "{err}");
}

#[test]
fn a_tampered_blob_is_refused_in_one_line_and_nothing_of_it_is_kept() {
    let Some(c) = Case::new() else { return };
    let env = &c.env;
    let proxy = c.proxy();
    let name = proxy.reference("img:v3");
    let (digest, hex, _) = c.layer("v3", 1);
    proxy.fault(&digest, Fault::FlipByte);
    env.init_store();
    let err = env.um_fail(&["pull", "-q", &name]);
    assert!(
        err.contains(&digest) && err.contains("digest mismatch"),
        "{err}"
    );
    // No image, no layer (dir or blob), and no download of it to resume.
    env.assert_nothing_stored("a tampered blob");
    assert!(
        !env.partial_files().contains(&hex),
        "{:?}",
        env.partial_files()
    );
    env.assert_fsck_clean("after a tampered blob");
    // Served honestly, the blob is fetched whole again and the pull works.
    proxy.clear();
    let asked = pull_through(env, &proxy, &name, &digest);
    assert!(asked.len() == 1 && asked[0].range.is_none(), "{asked:#?}");
    c.assert_v3(env, &name, "untampered");
    env.assert_fsck_clean("after the honest pull");
}

#[test]
fn a_registry_stopped_mid_pull_is_one_line_and_a_restart_resumes() {
    let Some(mut c) = Case::new() else { return };
    let proxy = c.proxy();
    let name = proxy.reference("img:v3");
    let (digest, hex, size) = c.layer("v3", 0);
    c.env.init_store();
    // Held halfway through the first layer; the registry goes away there.
    proxy.fault_times(&digest, Fault::StallAfter(size / 2), 1);
    let child = spawn_pull(&c.env, &name);
    assert!(proxy.wait_stalled(1), "{digest} never held");
    wait_partial(&c.env, &hex, size / 2);
    c.reg.stop();
    proxy.cut_stalled();
    let e = one_line(&child.wait_with_output().unwrap());
    assert!(e.contains(&digest) && e.contains("4 times"), "{e}");
    c.env.assert_nothing_stored("a stopped registry");
    assert_eq!(partial_len(&c.env, &hex), size / 2, "what came is kept");
    // Back on the same storage: the pull asks only for the rest.
    c.reg.start();
    assert_resumed_at(&pull_through(&c.env, &proxy, &name, &digest), size / 2);
    c.assert_v3(&c.env, &name, "restarted");
    c.env.assert_fsck_clean("after the restart");
}

#[test]
fn run_pulls_what_it_lacks_once() {
    let Some(c) = Case::new() else { return };
    let env = &c.env;
    let name = c.name("v3");
    let count = || c.reg.requests().len();
    env.init_store();
    // never: the store lacks it, and nothing is asked of the registry.
    let pushed = count();
    let err = env.um_fail(&["run", "--rm", "--pull", "never", &name, "/bin/true"]);
    assert!(err.contains("img"), "{err}");
    assert_eq!(count(), pushed, "{:#?}", &c.reg.requests()[pushed..]);
    // missing (the default): pulled, then run.
    let out = env.um(&["run", "--rm", &name, "/bin/cat", "/some/dir/y"]);
    assert_eq!(out, "new\n");
    let after_first = count();
    assert!(after_first > pushed);
    // Present now: a second run sends no request at all.
    env.um(&["run", "--rm", &name, "/bin/true"]);
    assert_eq!(
        count(),
        after_first,
        "{:#?}",
        &c.reg.requests()[after_first..]
    );
    // A local name that exists is never pulled, even if it could be a reference.
    env.um(&["image", "tag", &name, "local:1"]);
    env.um(&["run", "--rm", "local:1", "/bin/true"]);
    assert_eq!(count(), after_first);
    // Pinned by digest: pulled once, then found by that digest.
    let pinned = c
        .reg
        .reference(&format!("img@{}", manifest_digest(&c.fx.oci, "v3")));
    env.um(&["image", "rm", &name, "local:1"]);
    let before = count();
    env.um(&["run", "--rm", &pinned, "/bin/true"]);
    let after_first = count();
    assert!(after_first > before, "pulled");
    env.um(&["run", "--rm", &pinned, "/bin/true"]);
    assert_eq!(
        count(),
        after_first,
        "{:#?}",
        &c.reg.requests()[after_first..]
    );
    // A short name the store lacks is pulled from Docker Hub, as Docker
    // pulls it (here Docker Hub is out of reach: one line, status 125),
    // and nothing is asked of this registry.
    let out = env.um_out(&["run", "--rm", "img:v3", "/bin/true"]);
    let err = one_line(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("not found in the store") && err.contains("docker.io/library/img:v3"),
        "{err}"
    );
    assert_eq!(count(), after_first);
    // A pull that fails: one line, status 125, as Docker's.
    let out = env.um_out(&["run", "--rm", &c.name("nope"), "/bin/true"]);
    let err = one_line(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("img:nope") && err.contains("not found"),
        "{err}"
    );
    let after_first = count();
    // always: asks the registry again (the manifest; the blobs are here).
    env.um(&["run", "--rm", "--pull", "always", &name, "/bin/true"]);
    let new = c.reg.requests()[after_first..].to_vec();
    assert!(
        new.iter().any(|r| r.path.contains("/manifests/"))
            && new.iter().all(|r| !r.path.contains("/blobs/")),
        "{new:#?}"
    );
}

#[test]
fn a_connection_cut_mid_blob_resumes_and_gives_up_after_bounded_retries() {
    let Some(c) = Case::new() else { return };
    let (digest, big, size) = c.layer("v3", 0);
    let proxy = c.proxy();
    let name = proxy.reference("img:v3");

    // Cut once, mid-blob: the pull reconnects and asks for the rest.
    proxy.fault_times(&digest, Fault::CutAfter(size / 4), 1);
    let before = c.reg.requests().len();
    c.env.um(&["pull", "-q", &name]);
    let ranged = c.blob_requests(before, &big);
    let ranged = ranged.iter().filter(|r| r.status == 206).count();
    assert_eq!(ranged, 1, "{:#?}", c.reg.requests());
    c.assert_v3(&c.env, &name, "cut-once");

    // Cut every time: one line after a bounded number of tries, nothing
    // stored, what came kept for the next pull, which completes.
    let env2 = Env::new();
    env2.init_store();
    proxy.fault(&digest, Fault::CutAfter(64 << 10));
    let err = env2.um_fail(&["pull", "-q", &name]);
    assert!(err.contains(&big) && err.contains("4 times"), "{err}");
    env2.assert_nothing_stored("cut every time");
    assert!(partial_len(&env2, &big) > 0, "the part received is kept");
    let direct = c.name("v3");
    env2.um(&["pull", "-q", &direct]);
    c.assert_v3(&env2, &direct, "after-cuts");
    env2.assert_fsck_clean("after the cuts");

    // A registry that ignores Range answers with the whole blob: the part
    // already held is skipped, not doubled.
    let env3 = Env::new();
    env3.init_store();
    let whole = blob(&c.fx.oci, &digest);
    fs::write(
        env3.store().join("partial").join(&big),
        &whole[..whole.len() / 3],
    )
    .unwrap();
    proxy.clear();
    proxy.ignore_ranges(true);
    let before = c.reg.requests().len();
    let asked = pull_through(&env3, &proxy, &name, &digest);
    let got = c.blob_requests(before, &big);
    assert!(got.len() == 1 && got[0].status == 200, "{got:#?}");
    assert!(
        asked.len() == 1 && asked[0].range.is_some(),
        "the client asked for a range: {asked:#?}"
    );
    c.assert_v3(&env3, &name, "no-range");
}

/// `unionmount ARGS` with `env`'s store and only the credential files
/// given: podman's auth file `auth` (or none), Docker's under `home`.
fn um_with_auth(env: &Env, auth: Option<&Path>, home: &Path, args: &[&str]) -> Output {
    let none = env.path().join("no-such-auth.json");
    Command::new(bin())
        .args(args)
        .env("UNIONMOUNT_STORE", env.store())
        .env("HOME", home)
        .env("REGISTRY_AUTH_FILE", auth.unwrap_or(&none))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap()
}

/// `unionmount pull -q [extra] REF` as `um_with_auth` runs it.
fn pull_with_auth(env: &Env, auth: Option<&Path>, home: &Path, extra: &[&str], r: &str) -> Output {
    let mut args = vec!["pull", "-q"];
    args.extend_from_slice(extra);
    args.push(r);
    um_with_auth(env, auth, home, &args)
}

/// `unionmount ARGS` with `stdin` as input and REGISTRY_AUTH_FILE, HOME set.
fn um_with_stdin(args: &[&str], stdin: &str, auth: &Path, home: &Path) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin())
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

/// `s` in base64, as auth files hold credentials.
fn b64(s: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
}

/// podman's auth.json (what `podman login` writes) with one entry.
fn auth_json(addr: &str, user: &str, pw: &str) -> String {
    let auth = b64(&format!("{user}:{pw}"));
    format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#)
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn basic_auth_over_tls_uses_podman_and_docker_credentials() {
    let Some(c) = Case::with(|| Registry::tls_with_auth("tester", "secret")) else {
        return;
    };
    let (env, fx, reg, t) = (&c.env, &c.fx, &c.reg, c.env.path());
    let name = c.name("v3");
    let pull = |auth: Option<&Path>, home: &Path, extra: &[&str]| {
        pull_with_auth(env, auth, home, extra, &name)
    };
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    // No credentials: one line saying so.
    let e = one_line(&pull(None, &home, &[]));
    assert!(e.contains("unauthorized"), "{e}");
    // podman's auth.json (what `podman login` writes).
    let auth = t.join("auth.json");
    let entry = |pw: &str| auth_json(&reg.addr(), "tester", pw);
    fs::write(&auth, entry("wrong")).unwrap();
    let e = one_line(&pull(Some(&auth), &home, &[]));
    assert!(
        e.contains("unauthorized") || e.contains("authentication"),
        "{e}"
    );
    fs::write(&auth, entry("secret")).unwrap();
    assert_ok(&pull(Some(&auth), &home, &[]));
    env.assert_mounted_tree(&name, &fx.reference, "tls");
    // Docker's config.json when podman's file has nothing.
    env.um(&["image", "rm", &name]);
    env.um(&["image", "prune"]);
    fs::create_dir_all(home.join(".docker")).unwrap();
    fs::write(home.join(".docker/config.json"), entry("secret")).unwrap();
    assert_ok(&pull(None, &home, &[]));
    // A certificate nobody vouches for is refused when verification is asked.
    let e = one_line(&pull(Some(&auth), &home, &["--tls-verify=true"]));
    assert!(e.contains("certificate"), "{e}");
    // And by `run`, which pulls on the same terms.
    env.um(&["image", "rm", &name]);
    let run = |extra: &str| {
        let args = ["run", "--rm", extra, name.as_str(), "/bin/true"];
        um_with_auth(env, Some(&auth), &home, &args)
    };
    let e = one_line(&run("--tls-verify=true"));
    assert!(e.contains("certificate"), "{e}");
    assert_ok(&run("--tls-verify=false"));

    // login checks the password with the registry, then writes podman's file.
    let written = t.join("run/containers/auth.json");
    let addr = reg.addr();
    let login = |pw: &str| {
        let args = ["login", addr.as_str(), "-u", "tester", "--password-stdin"];
        um_with_stdin(&args, &format!("{pw}\n"), &written, &home)
    };
    let e = one_line(&login("wrong"));
    assert!(e.contains("refused") && e.contains("tester"), "{e}");
    assert!(!written.exists(), "a refused login writes nothing");
    assert_ok(&login("secret"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&written).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: Value = serde_json::from_slice(&fs::read(&written).unwrap()).unwrap();
    assert_eq!(
        v["auths"][reg.addr()]["auth"],
        Value::String(b64("tester:secret"))
    );
    env.um(&["image", "rm", &name]);
    env.um(&["image", "prune"]);
    let empty_home = t.join("empty-home");
    fs::create_dir_all(&empty_home).unwrap();
    assert_ok(&pull(Some(&written), &empty_home, &[]));
    // logout removes it: pulls are unauthorized again.
    assert_ok(&um_with_stdin(
        &["logout", addr.as_str()],
        "",
        &written,
        &empty_home,
    ));
    env.um(&["image", "rm", &name]);
    let e = one_line(&pull(Some(&written), &empty_home, &[]));
    assert!(e.contains("unauthorized"), "{e}");
}

#[test]
fn bearer_token_auth_pulls_and_pushes_with_podman_credentials() {
    // skopeo (the independent client) gets its tokens from the same server.
    let Some(c) = Case::with(|| Registry::token_auth("tester", "secret")) else {
        return;
    };
    let (env, fx, reg, t) = (&c.env, &c.fx, &c.reg, c.env.path());
    let name = c.name("v3");
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    let auth = t.join("auth.json");
    // No credentials, or wrong ones: one line saying so; nothing stored.
    let e = one_line(&pull_with_auth(env, None, &home, &[], &name));
    assert!(e.contains("unauthorized") || e.contains("denied"), "{e}");
    fs::write(&auth, auth_json(&reg.addr(), "tester", "wrong")).unwrap();
    let e = one_line(&pull_with_auth(env, Some(&auth), &home, &[], &name));
    assert!(
        e.contains("unauthorized") || e.contains("authentication"),
        "{e}"
    );
    assert!(env.images().is_empty(), "{:?}", env.images());
    // podman's auth file: the pull gets a token and the image.
    fs::write(&auth, auth_json(&reg.addr(), "tester", "secret")).unwrap();
    assert_ok(&pull_with_auth(env, Some(&auth), &home, &[], &name));
    env.assert_mounted_tree(&name, &fx.reference, "bearer");
    // push: to another repository of the registry, with and without them.
    let copy = reg.reference("copy:1");
    let push = |auth: Option<&Path>| um_with_auth(env, auth, &home, &["push", &name, &copy]);
    let e = one_line(&push(None));
    assert!(
        e.contains(&copy) && e.contains("unauthorized") && e.contains("login"),
        "{e}"
    );
    assert_ok(&push(Some(&auth)));
    // What was pushed reads back whole, through another store.
    let env2 = Env::new();
    assert_ok(&pull_with_auth(&env2, Some(&auth), &home, &[], &copy));
    env2.assert_mounted_tree(&copy, &fx.reference, "bearer-pushed");
    env2.assert_fsck_clean("after the Bearer pull");
}

#[test]
fn a_terminal_gets_a_bar_per_layer_and_a_pipe_only_the_id() {
    let Some(c) = Case::new() else { return };
    if !need_tools("a_terminal_gets_a_bar_per_layer", &["script"]) {
        return;
    }
    let name = c.name("v3");
    // Piped: the image id alone, nothing on stderr.
    let out = c.env.um_out(&["pull", &name]);
    assert!(out.status.success(), "{}", one_line(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let id = c.env.short_id(&name);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{id}\n"));
    // On a terminal (`script` gives one and keeps what is drawn), into a
    // fresh store: a bar for every layer, named by its digest.
    let env = Env::new();
    let typescript = env.path().join("typescript");
    let cmd = format!("{} pull {name}", bin());
    run(Command::new("script")
        .args(["-q", "-e", "-c", &cmd])
        .arg(&typescript)
        .env("UNIONMOUNT_STORE", env.store())
        .stdin(Stdio::null()));
    let seen = String::from_utf8_lossy(&fs::read(&typescript).expect("typescript")).into_owned();
    assert!(seen.contains(&id), "{seen}");
    let layers = c.manifest("v3")["layers"].as_array().unwrap().len();
    for i in 0..layers {
        let (_, hex, _) = c.layer("v3", i);
        assert!(
            seen.contains(&hex[..12]),
            "no bar for layer {i} ({hex}):\n{seen}"
        );
    }
}
