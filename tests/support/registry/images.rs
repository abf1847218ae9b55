//! Images for the registry tests, made by umoci (the independent tool) in an
//! OCI layout, and pushed with skopeo.
//!
//! - `multi_layer_oci`: busybox and files in three layers with a whiteout,
//!   an opaque directory and a hard-link group; `umoci unpack`'s result is
//!   the reference a pull must reproduce.
//! - `multi_arch_index`: an OCI index of two images, linux/amd64 and
//!   linux/arm64, each with `/arch` naming its architecture.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::super::tools::{busybox_rootfs, ok};
use super::Registry;

/// What each layer of `multi_layer_oci` holds, so tests can name it.
/// Layer 1: busybox, `/etc/hostname`, `/data/keep`, `/data/gone`,
/// `/data/dir/old`, `/data/dir/sub/deep`.
/// Layer 2: `/data/gone` deleted (a `.wh.gone` whiteout), `/data/keep`
/// changed, the hard links `/data/links/one`, `/data/links/two` and
/// `/data/other/three` (one inode).
/// Layer 3: `/data/dir` opaque (`.wh..wh..opq`) with only `/data/dir/new`.
pub const MULTI_LAYER_TAG: &str = "v3";

fn run(what: &str, cmd: &mut Command) -> String {
    ok(what, cmd.output().unwrap_or_else(|e| panic!("{what}: {e}")))
}

fn umoci(args: &[&str]) -> String {
    run(
        &format!("umoci {}", args.join(" ")),
        Command::new("umoci").args(args),
    )
}

fn image_ref(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}

/// Unpack `layout:from` into `work` (emptied first), let `change` edit its
/// rootfs, repack as `layout:to`.
fn layer(layout: &Path, from: &str, to: &str, work: &Path, change: impl FnOnce(&Path)) {
    if work.exists() {
        fs::remove_dir_all(work).expect("remove old bundle");
    }
    let w = work.display().to_string();
    umoci(&["unpack", "--image", &image_ref(layout, from), &w]);
    change(&work.join("rootfs"));
    umoci(&["repack", "--image", &image_ref(layout, to), &w]);
}

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).expect("mkdir");
    fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// An OCI layout under `dir` with a three-layer image (see
/// `MULTI_LAYER_TAG`), and `umoci unpack`'s rootfs of it as the reference:
/// (layout, tag, reference rootfs). The image's command is `/bin/sh`.
pub fn multi_layer_oci(dir: &Path) -> (PathBuf, String, PathBuf) {
    let layout = dir.join("oci");
    let work = dir.join("oci-work");
    fs::create_dir_all(&work).expect("mkdir work");
    let l = layout.display().to_string();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &image_ref(&layout, "empty")]);
    layer(&layout, "empty", "v1", &work.join("b"), |root| {
        busybox_rootfs(root);
        write(root, "etc/hostname", "fixture\n");
        write(root, "data/keep", "keep v1\n");
        write(root, "data/gone", "deleted in layer 2\n");
        write(root, "data/dir/old", "hidden by the opaque dir\n");
        write(root, "data/dir/sub/deep", "hidden too\n");
    });
    layer(&layout, "v1", "v2", &work.join("b"), |root| {
        fs::remove_file(root.join("data/gone")).expect("rm data/gone");
        write(root, "data/keep", "keep v2\n");
        write(root, "data/links/one", "one inode, three names\n");
        fs::create_dir_all(root.join("data/other")).expect("mkdir");
        fs::hard_link(root.join("data/links/one"), root.join("data/links/two")).expect("link");
        fs::hard_link(root.join("data/links/one"), root.join("data/other/three")).expect("link");
    });
    // umoci repack never writes an opaque marker: a hand-made layer does.
    let l3 = work.join("l3");
    write(&l3, "data/dir/.wh..wh..opq", "");
    write(&l3, "data/dir/new", "only this is left in dir\n");
    let l3_tar = work.join("l3.tar");
    run(
        "tar the opaque layer",
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&l3)
            .arg("-cf")
            .arg(&l3_tar)
            .arg("data"),
    );
    let t = l3_tar.display().to_string();
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image_ref(&layout, "v2"),
        "--tag",
        "v3",
        &t,
    ]);
    umoci(&[
        "config",
        "--image",
        &image_ref(&layout, "v3"),
        "--config.cmd",
        "/bin/sh",
    ]);
    let reference = dir.join("oci-ref");
    umoci(&[
        "unpack",
        "--image",
        &image_ref(&layout, "v3"),
        &reference.display().to_string(),
    ]);
    (
        layout,
        MULTI_LAYER_TAG.to_string(),
        reference.join("rootfs"),
    )
}

/// An image of a layout pushed with `skopeo copy --all --preserve-digests`
/// to `registry` as `repo_tag` ("repo:tag"); the pushed manifest's (or
/// index's) digest, which equals `manifest_digest(layout, tag)`.
pub fn push_with_skopeo(layout: &Path, tag: &str, registry: &Registry, repo_tag: &str) -> String {
    push_with_skopeo_as(layout, tag, registry, repo_tag, &["--preserve-digests"])
}

/// Like `push_with_skopeo`, converted on the way by skopeo options in
/// `extra`: `--format v2s2` (a Docker schema2 manifest), or
/// `--dest-compress-format zstd` (zstd layers). The pushed digest. skopeo
/// reuses blobs the registry has already: convert into a fresh registry.
pub fn push_with_skopeo_as(
    layout: &Path,
    tag: &str,
    registry: &Registry,
    repo_tag: &str,
    extra: &[&str],
) -> String {
    let digestfile = layout.with_extension(format!("pushed-{}", repo_tag.replace([':', '/'], "-")));
    run(
        &format!("skopeo copy to {}", registry.reference(repo_tag)),
        Command::new("skopeo")
            .args(["copy", "--all", "--digestfile"])
            .arg(&digestfile)
            .args(extra)
            .args(registry.skopeo_dest_args())
            .arg(format!("oci:{}", image_ref(layout, tag)))
            .arg(format!("docker://{}", registry.reference(repo_tag))),
    );
    fs::read_to_string(&digestfile)
        .expect("skopeo's digest file")
        .trim()
        .to_string()
}

/// The descriptor of `tag` in a layout's index.json.
pub fn descriptor(layout: &Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("{}: no tag {tag}", layout.display()))
}

/// "sha256:…" of the manifest (or index) tagged `tag` in a layout.
pub fn manifest_digest(layout: &Path, tag: &str) -> String {
    descriptor(layout, tag)["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// A blob of a layout, by "sha256:…".
pub fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
}

/// The layer digests, bottom first, of the image manifest tagged `tag`.
pub fn layer_digests(layout: &Path, tag: &str) -> Vec<String> {
    let manifest: Value =
        serde_json::from_slice(&blob(layout, &manifest_digest(layout, tag))).expect("manifest");
    manifest["layers"]
        .as_array()
        .expect("an image manifest has layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_string())
        .collect()
}

/// `multi_arch_index`'s result.
#[derive(Debug, Clone)]
pub struct MultiArch {
    pub layout: PathBuf,
    /// the index's tag in the layout
    pub tag: String,
    pub index_digest: String,
    /// ("linux/amd64", manifest digest), ("linux/arm64", manifest digest);
    /// each is also tagged "amd64" / "arm64" in the layout
    pub platforms: Vec<(String, String)>,
}

/// An OCI layout under `dir` whose tag "multi" is an index of two images:
/// linux/amd64 (busybox and `/arch` = "amd64\n") and linux/arm64 (only
/// `/arch` = "arm64\n"). Push it with `push_with_skopeo`.
pub fn multi_arch_index(dir: &Path) -> MultiArch {
    let layout = dir.join("multi");
    let work = dir.join("multi-work");
    fs::create_dir_all(&work).expect("mkdir work");
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &image_ref(&layout, "empty")]);
    layer(&layout, "empty", "amd64", &work.join("amd64"), |root| {
        busybox_rootfs(root);
        write(root, "arch", "amd64\n");
    });
    layer(&layout, "empty", "arm64", &work.join("arm64"), |root| {
        write(root, "arch", "arm64\n");
    });
    let arm = image_ref(&layout, "arm64");
    umoci(&["config", "--image", &arm, "--architecture", "arm64"]);
    umoci(&["config", "--image", &arm, "--os", "linux"]);
    let mut manifests = Vec::new();
    let mut platforms = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut d = descriptor(&layout, arch);
        d.as_object_mut().expect("descriptor").remove("annotations");
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        platforms.push((
            format!("linux/{arch}"),
            d["digest"].as_str().unwrap().to_string(),
        ));
        manifests.push(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let tag = "multi";
    let index_digest = add_to_layout(
        &layout,
        &index,
        "application/vnd.oci.image.index.v1+json",
        tag,
    );
    MultiArch {
        layout,
        tag: tag.to_string(),
        index_digest,
        platforms,
    }
}

/// Store `index` (or a manifest, as `media_type` says) as a blob of
/// `layout` and tag it; its digest.
fn add_to_layout(layout: &Path, index: &Value, media_type: &str, tag: &str) -> String {
    let bytes = serde_json::to_vec(index).expect("serialize index");
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(layout.join("blobs/sha256").join(&hex), &bytes).expect("write index blob");
    let digest = format!("sha256:{hex}");
    let top_path = layout.join("index.json");
    let mut top: Value =
        serde_json::from_slice(&fs::read(&top_path).expect("read index.json")).expect("JSON");
    top["manifests"]
        .as_array_mut()
        .expect("index.json manifests")
        .push(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs::write(&top_path, serde_json::to_vec(&top).expect("JSON")).expect("write index.json");
    digest
}

/// OCI's non-distributable gzip layer type.
pub const NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// Tag `to` in `layout`: the image `from` with its bottom layer made a
/// foreign layer (OCI's non-distributable type, served at `url`), as
/// Windows base images are. Same blobs and config; a new manifest.
pub fn with_foreign_base(layout: &Path, from: &str, to: &str, url: &str) {
    let mut m: Value =
        serde_json::from_slice(&blob(layout, &manifest_digest(layout, from))).expect("manifest");
    m["layers"][0]["mediaType"] = json!(NONDISTRIBUTABLE_GZIP);
    m["layers"][0]["urls"] = json!([url]);
    add_to_layout(layout, &m, "application/vnd.oci.image.manifest.v1+json", to);
}
