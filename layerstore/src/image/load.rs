//! Images into the store: `load` (OCI layout, OCI archive, docker-archive)
//! and `import` (a root filesystem tar or directory as a one-layer image).
//! Everything is staged and checked in a transaction first: a bad digest
//! anywhere stores nothing.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

use super::{
    ConfigView, Descriptor, DockerEntry, Index, Manifest, OCI_CONFIG, OCI_MANIFEST, REF_NAME,
    Source, blob_path, check_layer_type, host_arch, is_index, is_manifest, layer_type, parse_json,
    pick_platform, to_json,
};
use crate::digest::Digest;
use crate::store::{Store, Txn, check_tag};
use crate::unpack::Compression;
use crate::util::now_rfc3339;
use crate::{Context, Error, Result};

/// An image that was loaded.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub name: Option<String>,
    pub manifest: Digest,
}

/// Load every image of an OCI layout directory, OCI archive or docker-archive.
/// `tag` names the image instead of the source's own names (only when the
/// source holds one image).
pub fn load(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<Loaded>> {
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let mut txn = Txn::new(store)?;
    let src = Source::open(path, txn.dir(), store.progress())?;
    let mut images: Vec<(Option<String>, Descriptor)> = Vec::new();
    let mut pairs = Vec::new();
    if src.exists("index.json") {
        let what = format!("{}: index.json", src.name());
        let idx: Index = parse_json(&src.read_small("index.json")?, &what)?;
        if idx.manifests.is_empty() {
            return Err(Error::invalid(what, "no images"));
        }
        for entry in &idx.manifests {
            let mut desc = entry.clone();
            if is_index(&desc.media_type) {
                fetch(&mut txn, &src, &desc, "image index")?;
                let inner: Index =
                    parse_json(&txn.read_blob(&desc.digest, "image index")?, "image index")?;
                desc = pick_platform(&inner.manifests, &format!("image index {}", desc.digest))?
                    .clone();
            } else if !is_manifest(&desc.media_type) {
                return Err(Error::invalid(
                    format!("{what}: {}", desc.digest),
                    format!("unsupported media type {:?}", desc.media_type),
                ));
            }
            pairs.extend(oci_manifest(&mut txn, &src, &desc)?);
            // `docker save` (OCI form) puts the full name in containerd's
            // annotation and only the tag in ref.name.
            let name = entry
                .annotations
                .get("io.containerd.image.name")
                .map(String::as_str)
                .or(entry.ref_name())
                .map(str::to_string);
            desc.annotations.clear();
            desc.platform = None;
            images.push((name, desc));
        }
    } else if src.exists("manifest.json") {
        let what = format!("{}: manifest.json", src.name());
        let entries: Vec<DockerEntry> = parse_json(&src.read_small("manifest.json")?, &what)?;
        if entries.is_empty() {
            return Err(Error::invalid(what, "no images"));
        }
        for e in &entries {
            let (desc, p) = docker_entry(&mut txn, &src, e)?;
            pairs.extend(p);
            let tags = e.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                images.push((None, desc.clone()));
            }
            for t in tags {
                images.push((Some(t), desc.clone()));
            }
        }
    } else {
        return Err(Error::invalid(
            src.name(),
            "not an OCI layout, OCI archive or docker-archive (no index.json or manifest.json)",
        ));
    }
    if let Some(t) = tag {
        let distinct: std::collections::BTreeSet<_> =
            images.iter().map(|(_, d)| d.digest.clone()).collect();
        if distinct.len() != 1 {
            return Err(Error::invalid(
                src.name(),
                format!("--tag needs one image, found {}", distinct.len()),
            ));
        }
        images.truncate(1);
        images[0].0 = Some(t.to_string());
    }
    for (name, _) in &images {
        if let Some(n) = name {
            check_tag(n)?;
        }
    }
    txn.unpack_layers(&pairs)?;
    let mut out = Vec::new();
    for (name, mut desc) in images {
        if let Some(n) = &name {
            desc.annotations.insert(REF_NAME.to_string(), n.clone());
        }
        out.push(Loaded {
            name,
            manifest: desc.digest.clone(),
        });
        txn.add_ref(desc);
    }
    txn.commit()?;
    Ok(out)
}

/// Stage one blob of an OCI layout, checking digest and size.
fn fetch(txn: &mut Txn<'_>, src: &Source, desc: &Descriptor, kind: &str) -> Result<()> {
    let what = format!("{kind} {}", desc.digest);
    if txn.has_blob(&desc.digest) {
        return Ok(());
    }
    let rel = blob_path(&desc.digest);
    if let Some((d, size)) = src.staged_digest(&rel) {
        if d != desc.digest {
            return Err(Error::DigestMismatch {
                what,
                expected: desc.digest.clone(),
                actual: d,
            });
        }
        if size != desc.size {
            return Err(Error::invalid(
                what,
                format!("size {size}, descriptor says {}", desc.size),
            ));
        }
        if let Some(p) = src.take_staged(&rel, &d) {
            txn.add_staged(p, d);
            return Ok(());
        }
    }
    let mut f = src.open_file(&rel).map_err(|e| match e {
        Error::NotFound { .. } => Error::not_found(format!("{what} in {}", src.name())),
        e => e,
    })?;
    txn.add_blob(&mut f, &desc.digest, Some(desc.size), &what)
}

/// Stage a manifest, its config and layers; return (blob, diff id) pairs.
fn oci_manifest(
    txn: &mut Txn<'_>,
    src: &Source,
    desc: &Descriptor,
) -> Result<Vec<(Digest, Digest)>> {
    fetch(txn, src, desc, "manifest")?;
    let what = format!("manifest {}", desc.digest);
    let m: Manifest = parse_json(&txn.read_blob(&desc.digest, &what)?, &what)?;
    fetch(txn, src, &m.config, "config")?;
    let cwhat = format!("config {}", m.config.digest);
    let cfg: ConfigView = parse_json(&txn.read_blob(&m.config.digest, &cwhat)?, &cwhat)?;
    for l in &m.layers {
        check_layer_type(&l.media_type, &format!("layer {}", l.digest))?;
        fetch(txn, src, l, "layer blob")?;
    }
    pairs(&m, &cfg)
}

fn pairs(m: &Manifest, cfg: &ConfigView) -> Result<Vec<(Digest, Digest)>> {
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(Error::invalid(
            format!("config {}", m.config.digest),
            format!(
                "{} diff_ids for {} layers",
                cfg.rootfs.diff_ids.len(),
                m.layers.len()
            ),
        ));
    }
    Ok(m.layers
        .iter()
        .zip(&cfg.rootfs.diff_ids)
        .map(|(l, d)| (l.digest.clone(), d.clone()))
        .collect())
}

/// Stage one image of a docker-archive and write an OCI manifest for it.
fn docker_entry(
    txn: &mut Txn<'_>,
    src: &Source,
    e: &DockerEntry,
) -> Result<(Descriptor, Vec<(Digest, Digest)>)> {
    let cfg_bytes = src.read_small(&e.config)?;
    let cwhat = format!("{}: {}", src.name(), e.config);
    let cfg: ConfigView = parse_json(&cfg_bytes, &cwhat)?;
    // Docker names the config file by its digest: check it when it does.
    let cfg_digest = Digest::of_bytes(&cfg_bytes);
    if let Some(stem) = e
        .config
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".json"))
        && let Ok(named) = Digest::from_hex(stem)
        && named != cfg_digest
    {
        return Err(Error::DigestMismatch {
            what: cwhat,
            expected: named,
            actual: cfg_digest,
        });
    }
    txn.add_bytes(&cfg_bytes)?;
    let mut layers = Vec::new();
    for rel in &e.layers {
        let what = format!("{}: {rel}", src.name());
        let (d, size) = match src.staged_digest(rel) {
            Some((d, size)) => {
                if let Some(p) = src.take_staged(rel, &d) {
                    txn.add_staged(p, d.clone());
                }
                (d, size)
            }
            None => {
                let mut f = src.open_file(rel)?;
                let total = crate::progress::file_len(&f);
                let mut f = txn.progress().reader(&what, total, &mut f);
                let (d, size, p) = crate::blobs::stage_hashed(txn.dir(), &mut f, &what)?;
                txn.add_staged(p, d.clone());
                (d, size)
            }
        };
        let comp = compression_of(txn.open_blob(&d)?).ctx(|| what.clone())?;
        layers.push(Descriptor::new(layer_type(comp), d, size));
    }
    let m = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor::new(OCI_CONFIG, cfg_digest, cfg_bytes.len() as u64),
        layers,
        other: Default::default(),
    };
    let p = pairs(&m, &cfg)?;
    let bytes = to_json(&m);
    let md = txn.add_bytes(&bytes)?;
    Ok((Descriptor::new(OCI_MANIFEST, md, bytes.len() as u64), p))
}

fn compression_of(mut f: File) -> std::io::Result<Compression> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(Compression::detect(&head[..n]))
}

/// A new image config: this machine's platform, the given layers and history.
pub fn new_config(diff_ids: &[Digest], created_by: &str) -> Value {
    let now = now_rfc3339();
    json!({
        "created": now,
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": now, "created_by": created_by}],
    })
}

/// Stage config and manifest for `layers` (already staged and unpacked) and
/// tag the result (or add it untagged); the caller commits the transaction.
pub fn store_image(
    txn: &mut Txn<'_>,
    config: &Value,
    layers: Vec<Descriptor>,
    tag: Option<&str>,
) -> Result<Digest> {
    let cfg_bytes =
        serde_json::to_vec(config).map_err(|e| Error::invalid("config", e.to_string()))?;
    let cd = txn.add_bytes(&cfg_bytes)?;
    let m = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor::new(OCI_CONFIG, cd, cfg_bytes.len() as u64),
        layers,
        other: Default::default(),
    };
    let bytes = to_json(&m);
    let md = txn.add_bytes(&bytes)?;
    let mut desc = Descriptor::new(OCI_MANIFEST, md.clone(), bytes.len() as u64);
    if let Some(t) = tag {
        desc.annotations.insert(REF_NAME.to_string(), t.to_string());
    }
    txn.add_ref(desc);
    Ok(md)
}

/// Import a root filesystem (a tar, gzip or zstd tar, or a directory) as a
/// one-layer image, tagged `tag` if given (as `docker import` does).
pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Digest> {
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let mut txn = Txn::new(store)?;
    let meta = std::fs::metadata(path).at(path)?;
    let (blob, size, diff_id, comp) = if meta.is_dir() {
        let opts = crate::diff::DiffOptions {
            progress: store.progress().clone(),
            ..crate::diff::DiffOptions::plain()
        };
        let l = crate::diff::tree_to_layer(path, txn.dir(), &opts)?;
        txn.add_staged(l.path, l.digest.clone());
        txn.unpack_layers(&[(l.digest.clone(), l.diff_id.clone())])
            .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
        (l.digest, l.size, l.diff_id, Compression::Zstd)
    } else {
        let mut f = File::open(path).at(path)?;
        let what = path.display().to_string();
        let total = crate::progress::file_len(&f);
        let mut f = store
            .progress()
            .reader(&format!("importing {what}"), total, &mut f);
        let (d, size, diff_id) = txn.add_layer_stream(&mut f, &what)?;
        let comp = compression_of(txn.open_blob(&d)?).ctx(|| what.clone())?;
        (d, size, diff_id, comp)
    };
    let cfg = new_config(
        std::slice::from_ref(&diff_id),
        &format!("unionmount image import {}", display_name(path)),
    );
    let md = store_image(
        &mut txn,
        &cfg,
        vec![Descriptor::new(layer_type(comp), blob, size)],
        tag,
    )?;
    txn.commit()?;
    Ok(md)
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
