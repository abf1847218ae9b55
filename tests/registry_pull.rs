//! `unionmount pull` against Debian's docker-registry (the distribution
//! registry) on loopback: images pushed by skopeo (made with umoci) come
//! out as `umoci unpack` shows them; multi-platform indexes; resumed and
//! killed pulls; missing and corrupt blobs; `run --pull`.

mod pull_support;
mod support;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use layerstore::serde_json::{self, Value};
use pull_support::*;
use support::store::*;

#[test]
fn pulled_gzip_zstd_and_plain_images_match_umoci() {
    let test = "pulled_gzip_zstd_and_plain_images_match_umoci";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start(t);
    sh(&format!(
        "cd {} && skopeo copy -q --dest-compress-format zstd oci:oci:v3 oci:oci-zstd:v3 \
         && skopeo copy -q --dest-decompress oci:oci:v3 dir:plain \
         && skopeo copy -q --dest-oci-accept-uncompressed-layers dir:plain oci:oci-plain:v3",
        t.display()
    ));
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "img:v3", false);
    reg.push(
        &format!("oci:{}/oci-zstd:v3", t.display()),
        "img:zstd",
        false,
    );
    reg.push(
        &format!("oci:{}/oci-plain:v3", t.display()),
        "img:plain",
        false,
    );
    let name = format!("{}/img:v3", reg.addr());
    let id = env.um(&["pull", "-q", &name]);
    assert_eq!(
        id.trim(),
        env.short_id(&name),
        "pull prints the id image ls shows"
    );
    assert_mounted_tree(&env, &name, &fx.reference, "gzip");
    // Where it came from: the reference and the digest the registry gave.
    let want_digest = layout_manifest(&fx.oci, "v3")["digest"].clone();
    let e = listed(&env, &name);
    assert_eq!(e["source"], Value::String(name.clone()));
    assert_eq!(e["sourceDigest"], want_digest);
    assert_eq!(e["digest"], want_digest);
    // The same layers compressed otherwise: other blobs, the same diff ids
    // (so the trees unpacked for v3 serve them).
    for tag in ["zstd", "plain"] {
        let n = format!("{}/img:{tag}", reg.addr());
        env.um(&["pull", "-q", &n]);
        assert_mounted_tree(&env, &n, &fx.reference, tag);
        let kind = layout_manifest(&t.join(format!("oci-{tag}")), "v3")["manifest"]["layers"][0]
            ["mediaType"]
            .clone();
        let got: Value = serde_json::from_str(&env.um(&["image", "inspect", &n])).unwrap();
        assert!(
            got.to_string().contains(kind.as_str().unwrap()),
            "{tag}: {kind} in {got}"
        );
    }
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
    // Pulling again fetches no blob: the store has them all.
    let before = reg.requests().len();
    env.um(&["pull", "-q", &name]);
    let new: Vec<String> = reg.requests()[before..].to_vec();
    assert!(
        new.iter().all(|l| !l.contains("/blobs/")),
        "blobs fetched again: {new:#?}"
    );
    assert!(partial_files(&env).is_empty(), "{:?}", partial_files(&env));
    // Docker's schema 2 (skopeo converts): the same image id.
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:v3", fx.oci.display()),
        &format!("docker://{}/img:v2s2", reg.addr()),
    ]));
    let n = format!("{}/img:v2s2", reg.addr());
    assert_eq!(env.um(&["pull", "-q", &n]), id);
    let got: Value = serde_json::from_str(&env.um(&["image", "inspect", &n])).unwrap();
    assert!(
        got.to_string()
            .contains("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{got}"
    );
    assert_mounted_tree(&env, &n, &fx.reference, "v2s2");
    // Every tag of the repository: one id each (all the same image here).
    env.um(&["image", "rm", &format!("{}/img:zstd", reg.addr())]);
    let ids = env.um(&["pull", "-q", "--all-tags", &format!("{}/img", reg.addr())]);
    assert_eq!(ids.lines().count(), 4, "{ids}");
    listed(&env, &format!("{}/img:zstd", reg.addr()));
    let err = env.um_fail(&[
        "pull",
        "-a",
        &format!("{name}@{}", want_digest.as_str().unwrap()),
    ]);
    assert!(err.contains("--all-tags"), "{err}");
}

#[test]
fn a_multi_platform_index_gives_the_platform_asked() {
    let test = "a_multi_platform_index_gives_the_platform_asked";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    // A second platform: the same layers, another config.
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:v3", fx.oci.display()),
        "--tag",
        "arm",
        "--architecture",
        "arm64",
    ]));
    let host = layerstore::image::host_arch();
    let entry = |tag: &str, arch: &str| {
        let m = layout_manifest(&fx.oci, tag);
        let bytes = fs::read(
            fx.oci
                .join("blobs/sha256")
                .join(&m["digest"].as_str().unwrap()[7..]),
        )
        .unwrap();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m["digest"],
            "size": bytes.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let (host_tag, other_tag) = if host == "arm64" {
        ("arm", "v3")
    } else {
        ("v3", "arm")
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(host_tag, host), entry(other_tag, other)],
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let d = layerstore::Digest::of_bytes(&bytes);
    fs::write(fx.oci.join("blobs/sha256").join(d.hex()), &bytes).unwrap();
    let mut idx: Value =
        serde_json::from_slice(&fs::read(fx.oci.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(fx.oci.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:multi", fx.oci.display()), "multi:1", true);
    let name = format!("{}/multi:1", reg.addr());
    let config_of =
        |tag: &str| layout_manifest(&fx.oci, tag)["manifest"]["config"]["digest"].clone();

    // The host's platform by default; the index's digest is recorded.
    env.um(&["pull", "-q", &name]);
    let e = listed(&env, &name);
    assert_eq!(e["id"], config_of(host_tag));
    assert_eq!(e["sourceDigest"], Value::String(d.to_string()));
    // Another platform when asked (the tag now names that one).
    env.um(&["pull", "-q", "--platform", &format!("linux/{other}"), &name]);
    assert_eq!(listed(&env, &name)["id"], config_of(other_tag));
    let err = env.um_fail(&["pull", "--platform", "linux/s390x", &name]);
    assert!(
        err.contains("linux/s390x")
            && err.contains(&format!("linux/{host}"))
            && err.contains(&format!("linux/{other}")),
        "{err}"
    );
    // The same as Docker's manifest list.
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", fx.oci.display()),
        &format!("docker://{}/multi:list", reg.addr()),
    ]));
    let list = format!("{}/multi:list", reg.addr());
    env.um(&["pull", "-q", "--platform", &format!("linux/{other}"), &list]);
    assert_eq!(listed(&env, &list)["id"], config_of(other_tag));
    let err = env.um_fail(&["pull", "--platform", "linux/s390x", &list]);
    assert!(err.contains(&format!("linux/{other}")), "{err}");
    // A single-platform image is what it is: asked for another, one line.
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "single:1", false);
    let single = format!("{}/single:1", reg.addr());
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
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn a_partial_blob_resumes_with_a_range_and_a_bad_one_is_refused() {
    let test = "a_partial_blob_resumes_with_a_range_and_a_bad_one_is_refused";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "img:v3", false);
    let name = format!("{}/img:v3", reg.addr());
    let m = layout_manifest(&fx.oci, "v3");
    let big = m["manifest"]["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let blob = fs::read(reg.blob_file(&big)).unwrap();
    env.init_store();
    let partial = env.store().join("partial").join(&big);

    // A wrong first half: the whole is refused, and nothing of it is kept.
    let mut bad = blob[..blob.len() / 2].to_vec();
    bad[100] ^= 0xff;
    fs::write(&partial, &bad).unwrap();
    let err = env.um_fail(&["pull", "-q", &name]);
    assert!(
        err.contains("digest mismatch") && err.contains(&big),
        "{err}"
    );
    assert_eq!(env.contents(), (vec![], vec![]), "nothing stored");
    assert!(!partial.exists(), "the refused download was removed");

    // The right first half (a pull killed there): continued with a Range.
    fs::write(&partial, &blob[..blob.len() / 2]).unwrap();
    let before = reg.requests().len();
    env.um(&["pull", "-q", &name]);
    let fetched: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|l| l.contains(&big))
        .cloned()
        .collect();
    assert!(
        fetched.len() == 1 && fetched[0].contains("\" 206 "),
        "one ranged GET of the rest: {fetched:#?}"
    );
    assert_mounted_tree(&env, &name, &fx.reference, "resumed");
    assert!(!partial.exists());
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn killed_pulls_leave_nothing_half_made_and_a_retry_completes() {
    let test = "killed_pulls_leave_nothing_half_made_and_a_retry_completes";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    // A big incompressible layer, so kills land inside downloads too.
    sh(&format!(
        "cd {t} && rm -rf b && umoci unpack --image oci:v3 b >/dev/null \
         && head -c 48M /dev/urandom > b/rootfs/big && umoci repack --image oci:big b",
        t = t.display()
    ));
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:big", fx.oci.display()), "img:big", false);
    let name = format!("{}/img:big", reg.addr());
    env.init_store();
    for (round, ms) in [0u64, 5, 20, 50, 80, 100, 120, 150, 200, 250, 300, 400, 700]
        .into_iter()
        .enumerate()
    {
        let mut child = Command::new(bin())
            .args(["pull", "-q", &name])
            .env("UNIONMOUNT_STORE", env.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the point: the image is whole or absent, and fsck is clean.
        let ls = env.um(&["image", "ls", "--format", "json"]);
        let v: Value = serde_json::from_str(&ls).unwrap();
        assert!(v.as_array().unwrap().len() <= 1, "round {round}: {ls}");
        let out = env.um(&["image", "fsck"]);
        assert!(out.contains("clean"), "round {round} ({ms} ms): {out}");
        if !v.as_array().unwrap().is_empty() {
            // Finished before the kill: start again from an empty store.
            env.um(&["image", "rm", &name]);
            env.um(&["image", "prune"]);
        }
    }
    env.um(&["pull", "-q", &name]);
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
    let want = t.join("big-ref");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:big", fx.oci.display()),
        &want.display().to_string(),
    ]));
    assert_mounted_tree(&env, &name, &want.join("rootfs"), "big");
    // Two pulls of one image at once: one downloads each blob, the other
    // waits for it; both succeed.
    env.um(&["image", "rm", &name]);
    env.um(&["image", "prune"]);
    let two: Vec<_> = (0..2)
        .map(|_| {
            Command::new(bin())
                .args(["pull", "-q", &name])
                .env("UNIONMOUNT_STORE", env.store())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in two {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
    // fsck knows partial/: anything there not named by a digest is a problem.
    fs::create_dir(env.store().join("partial/stray")).unwrap();
    let out = env.um_out(&["image", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stray"));
    env.um(&["image", "fsck", "--repair"]);
    assert!(partial_files(&env).is_empty());
    // prune takes what downloads left behind.
    fs::write(env.store().join("partial").join("0".repeat(64)), "x").unwrap();
    let out = env.um(&["image", "prune"]);
    assert!(out.contains("1 partial downloads"), "{out}");
    assert!(partial_files(&env).is_empty());
}

#[test]
fn a_missing_blob_is_one_line_and_stores_nothing() {
    let test = "a_missing_blob_is_one_line_and_stores_nothing";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "img:v3", false);
    let m = layout_manifest(&fx.oci, "v3");
    let gone = m["manifest"]["layers"][1]["digest"].as_str().unwrap()[7..].to_string();
    // (Put before a blob goes: the registry checks a manifest's blobs.)
    let mut short = m["manifest"].clone();
    let n = short["layers"][2]["size"].as_u64().unwrap();
    short["layers"][2]["size"] = Value::from(n - 10);
    reg.put_manifest("img:short", &serde_json::to_vec(&short).unwrap());
    env.init_store();
    let third = m["manifest"]["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let err = env.um_fail(&["pull", &format!("{}/img:short", reg.addr())]);
    assert!(
        err.contains(&third) && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(!partial_files(&env).contains(&third[7..].to_string()));
    assert_eq!(env.contents(), (vec![], vec![]), "nothing stored");
    // The other layers' downloads were kept (whole): prune them, so the
    // next pull needs the registry for each blob.
    env.um(&["image", "prune"]);
    // The blob the manifest names is gone from the registry.
    fs::remove_file(reg.blob_file(&gone)).unwrap();
    let err = env.um_fail(&["pull", &format!("{}/img:v3", reg.addr())]);
    assert!(err.contains(&gone) && err.contains("not found"), "{err}");
    assert!(!err.contains("times"), "not retried: {err}");
    assert_eq!(env.contents(), (vec![], vec![]), "nothing stored");
    // The other layers' downloads are kept for the next pull, each whole;
    // of the missing one there is nothing.
    let kept = partial_files(&env);
    assert!(!kept.contains(&gone), "{kept:?}");
    for k in &kept {
        let bytes = fs::read(env.store().join("partial").join(k)).unwrap();
        assert_eq!(&layerstore::Digest::of_bytes(&bytes).hex(), k);
    }
    let out = env.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");
    // A manifest whose descriptor says a blob is shorter than it is (the
    // registry takes it): refused by the digest check, not a crash.
    // A tag the registry does not have, and a registry nobody runs.
    let err = env.um_fail(&["pull", &format!("{}/img:nope", reg.addr())]);
    assert!(err.contains("not found"), "{err}");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = env.um_fail(&["pull", &format!("127.0.0.1:{port}/img:v3")]);
    assert!(err.contains("cannot connect"), "{err}");
    let err = env.um_fail(&["pull", "Bad/Name"]);
    assert!(err.contains("lowercase"), "{err}");
}

#[test]
fn run_pulls_what_it_lacks_once() {
    let test = "run_pulls_what_it_lacks_once";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "img:v3", false);
    let name = format!("{}/img:v3", reg.addr());
    env.init_store();
    // never: the store lacks it, and nothing is asked of the registry.
    let err = env.um_fail(&["run", "--rm", "--pull", "never", &name, "/bin/true"]);
    assert!(err.contains("img"), "{err}");
    assert!(reg.requests().is_empty(), "{:#?}", reg.requests());
    // missing (the default): pulled, then run.
    let out = env.um(&["run", "--rm", &name, "/bin/cat", "/some/dir/y"]);
    assert_eq!(out, "new\n");
    let after_first = reg.requests().len();
    assert!(after_first > 0);
    // Present now: a second run sends no request at all.
    env.um(&["run", "--rm", &name, "/bin/true"]);
    assert_eq!(reg.requests().len(), after_first, "{:#?}", reg.requests());
    // A local name that exists is never pulled, even if it could be a reference.
    env.um(&["image", "tag", &name, "local:1"]);
    env.um(&["run", "--rm", "local:1", "/bin/true"]);
    assert_eq!(reg.requests().len(), after_first);
    // Pinned by digest: pulled once, then found by that digest.
    let m = layout_manifest(&fx.oci, "v3");
    let pinned = format!("{}/img@{}", reg.addr(), m["digest"].as_str().unwrap());
    env.um(&["image", "rm", &name, "local:1"]);
    let before = reg.requests().len();
    env.um(&["run", "--rm", &pinned, "/bin/true"]);
    let after_first = reg.requests().len();
    assert!(after_first > before, "pulled");
    env.um(&["run", "--rm", &pinned, "/bin/true"]);
    assert_eq!(reg.requests().len(), after_first, "{:#?}", reg.requests());
    // A short name is never pulled (it may be a local name or an id prefix;
    // podman without search registries does not pull it either).
    let out = env.um_out(&["run", "--rm", "img:v3", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(reg.requests().len(), after_first);
    // A pull that fails: one line, status 125, as Docker's.
    let out = env.um_out(&[
        "run",
        "--rm",
        &format!("{}/img:nope", reg.addr()),
        "/bin/true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.trim_end().lines().count() == 1
            && err.contains("img:nope")
            && err.contains("not found"),
        "{err}"
    );
    let after_first = reg.requests().len();
    // always: asks the registry again (the manifest; the blobs are here).
    env.um(&["run", "--rm", "--pull", "always", &name, "/bin/true"]);
    let new: Vec<String> = reg.requests()[after_first..].to_vec();
    assert!(
        new.iter().any(|l| l.contains("/manifests/")) && new.iter().all(|l| !l.contains("/blobs/")),
        "{new:#?}"
    );
}

#[test]
fn a_connection_cut_mid_blob_resumes_and_gives_up_after_bounded_retries() {
    let test = "a_connection_cut_mid_blob_resumes_and_gives_up_after_bounded_retries";
    if !ready(test) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start(t);
    reg.push(&format!("oci:{}:v3", fx.oci.display()), "img:v3", false);
    let big = layout_manifest(&fx.oci, "v3")["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()[7..]
        .to_string();

    // Cut once, mid-blob: the pull reconnects and asks for the rest.
    let once = CuttingProxy::start(reg.port, 256 << 10, 1, false);
    let name = format!("{}/img:v3", once.addr());
    env.um(&["pull", "-q", &name]);
    let ranged = reg
        .requests()
        .iter()
        .filter(|l| l.contains(&big) && l.contains("\" 206 "))
        .count();
    assert_eq!(ranged, 1, "{:#?}", reg.requests());
    assert_mounted_tree(&env, &name, &fx.reference, "cut-once");

    // Cut every time: one line after a bounded number of tries, nothing
    // stored, what came kept for the next pull, which completes.
    let env2 = Env::new();
    env2.init_store();
    let always = CuttingProxy::start(reg.port, 64 << 10, usize::MAX, false);
    let err = env2.um_fail(&["pull", "-q", &format!("{}/img:v3", always.addr())]);
    assert!(err.contains(&big) && err.contains("4 times"), "{err}");
    assert_eq!(env2.contents(), (vec![], vec![]), "nothing stored");
    let kept = env2.store().join("partial").join(&big);
    assert!(kept.is_file(), "the part received is kept");
    let direct = format!("{}/img:v3", reg.addr());
    env2.um(&["pull", "-q", &direct]);
    assert_mounted_tree(&env2, &direct, &fx.reference, "after-cuts");
    let out = env2.um(&["image", "fsck"]);
    assert!(out.contains("clean"), "{out}");

    // A registry that ignores Range answers with the whole blob: the part
    // already held is skipped, not doubled.
    let env3 = Env::new();
    env3.init_store();
    let blob = fs::read(reg.blob_file(&big)).unwrap();
    fs::write(
        env3.store().join("partial").join(&big),
        &blob[..blob.len() / 3],
    )
    .unwrap();
    let plain = CuttingProxy::start(reg.port, u64::MAX, 0, true);
    let n = format!("{}/img:v3", plain.addr());
    let before = reg.requests().len();
    env3.um(&["pull", "-q", &n]);
    let got: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|l| l.contains(&big))
        .cloned()
        .collect();
    assert!(got.len() == 1 && got[0].contains("\" 200 "), "{got:#?}");
    assert_mounted_tree(&env3, &n, &fx.reference, "no-range");
}

#[test]
fn basic_auth_over_tls_uses_podman_and_docker_credentials() {
    let test = "basic_auth_over_tls_uses_podman_and_docker_credentials";
    if !ready(test) || !need_tools(test, &["openssl"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    let reg = Registry::start_tls_auth(t);
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "tester:secret",
        &format!("oci:{}:v3", fx.oci.display()),
        &format!("docker://{}/img:v3", reg.addr()),
    ]));
    let name = format!("{}/img:v3", reg.addr());
    let pull = |auth: Option<&Path>, home: &Path, extra: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("pull").arg("-q").args(extra).arg(&name);
        c.env("UNIONMOUNT_STORE", env.store())
            .env("HOME", home)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("DOCKER_CONFIG");
        match auth {
            Some(a) => c.env("REGISTRY_AUTH_FILE", a),
            None => c.env("REGISTRY_AUTH_FILE", t.join("no-such-auth.json")),
        };
        c.output().unwrap()
    };
    let one_line = |o: &std::process::Output| {
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "expected a failure");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        e
    };
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    // No credentials: one line saying so.
    let e = one_line(&pull(None, &home, &[]));
    assert!(e.contains("unauthorized"), "{e}");
    // podman's auth.json (what `podman login` writes).
    let b64 = |s: &str| {
        use std::io::Write;
        let mut c = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    };
    let auth = t.join("auth.json");
    let entry = |pw: &str| {
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr(),
            b64(&format!("tester:{pw}"))
        )
    };
    fs::write(&auth, entry("wrong")).unwrap();
    let e = one_line(&pull(Some(&auth), &home, &[]));
    assert!(
        e.contains("unauthorized") || e.contains("authentication"),
        "{e}"
    );
    fs::write(&auth, entry("secret")).unwrap();
    let o = pull(Some(&auth), &home, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_mounted_tree(&env, &name, &fx.reference, "tls");
    // Docker's config.json when podman's file has nothing.
    env.um(&["image", "rm", &name]);
    env.um(&["image", "prune"]);
    fs::create_dir_all(home.join(".docker")).unwrap();
    fs::write(home.join(".docker/config.json"), entry("secret")).unwrap();
    let o = pull(None, &home, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A certificate nobody vouches for is refused when verification is asked.
    let e = one_line(&pull(Some(&auth), &home, &["--tls-verify=true"]));
    assert!(e.contains("certificate"), "{e}");

    // login checks the password with the registry, then writes podman's file.
    let written = t.join("run/containers/auth.json");
    let login = |pw: &str| {
        use std::io::Write;
        let mut c = Command::new(bin())
            .args(["login", &reg.addr(), "-u", "tester", "--password-stdin"])
            .env("REGISTRY_AUTH_FILE", &written)
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let e = one_line(&login("wrong"));
    assert!(e.contains("refused") && e.contains("tester"), "{e}");
    assert!(!written.exists(), "a refused login writes nothing");
    let o = login("secret");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
    let o = pull(Some(&written), &empty_home, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // logout removes it: pulls are unauthorized again.
    let o = Command::new(bin())
        .args(["logout", &reg.addr()])
        .env("REGISTRY_AUTH_FILE", &written)
        .env("HOME", &empty_home)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.um(&["image", "rm", &name]);
    let e = one_line(&pull(Some(&written), &empty_home, &[]));
    assert!(e.contains("unauthorized"), "{e}");
}
