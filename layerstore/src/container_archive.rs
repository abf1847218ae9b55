//! A container moved between stores as one OCI archive.
//!
//! ```text
//! OUT.tar (an OCI image layout in a tar: skopeo, umoci and `image load` read it)
//!   oci-layout, index.json       one manifest, ref.name = the container's name
//!   blobs/sha256/…               the base image's manifest, config and layers,
//!                                byte for byte when the store keeps its layers
//!                                in the chosen compression (else recompressed,
//!                                under a new manifest of the same config: the
//!                                same image id), one more layer with the
//!                                container's changes (OCI form: .wh. whiteouts,
//!                                .wh..wh..opq) and the config of base + changes
//! manifest annotations
//!   org.opencontainers.image.base.digest   the base image's manifest digest
//!   org.opencontainers.image.base.name     its tag in the source store, if any
//!   io.unionmount.container                the container's settings (JSON)
//! ```
//!
//! The settings are the caller's: this module stores and returns them as they
//! are. `import` puts the base image into the store (its own manifest, so the
//! same image id) and unpacks the changes layer into a directory in overlay
//! form, ready to be a container's upper.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::diff::{DiffOptions, tree_to_layer};
use crate::digest::{Digest, HashingReader};
use crate::image::{
    self, Descriptor, Index, Manifest, OCI_MANIFEST, REF_NAME, Sink, Source, blob_path, parse_json,
    recompress, to_json,
};
use crate::store::{Store, Txn, check_tag, layer_pairs};
use crate::unpack::{self, Compression};
use crate::util::{now_rfc3339, remove_all, unique_name};
use crate::{Context, Error, Result};

/// The manifest annotation holding a container's settings.
pub const SETTINGS_ANNOTATION: &str = "io.unionmount.container";
/// OCI's annotation for the digest of the image a manifest builds on.
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// OCI's annotation for the name of that image.
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";

/// What `export` wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The manifest of base + changes.
    pub manifest: Digest,
    /// The changes layer (compressed) and the whole archive, in bytes.
    pub changes_size: u64,
    pub archive_size: u64,
}

/// What `import` found and stored.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The base image's manifest digest (now in the store).
    pub base: Digest,
    /// The base image's name in the archive, and whether it now names the
    /// base image in this store (a tag another image holds is left alone).
    pub base_name: Option<String>,
    pub tagged: bool,
    /// The container's settings, as given to `export`.
    pub settings: Value,
    /// Entries of the changes layer.
    pub changes: u64,
}

/// Write the container made of image `base` (a name or digest) and the
/// overlay upper `upper` to `out` (which must not exist) as an OCI archive,
/// with `settings` in its manifest and every layer in `compression`.
/// `name` becomes the archive's ref name and the new layer's `created_by`.
/// The upper is read as it is now: a snapshot if the container runs.
pub fn export(
    store: &Store,
    base: &str,
    upper: &Path,
    settings: &Value,
    name: &str,
    out: &Path,
    compression: Compression,
) -> Result<Exported> {
    let info = store.resolve(base)?;
    if out.symlink_metadata().is_ok() {
        return Err(Error::invalid(out.display().to_string(), "already exists"));
    }
    let file_name = out
        .file_name()
        .ok_or_else(|| Error::invalid(out.display().to_string(), "not a file name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut lowers = store.layer_dirs(&info)?;
    lowers.reverse();
    let opts = DiffOptions {
        progress: store.progress().clone(),
        ..DiffOptions::overlay(lowers)
    };
    let txn = Txn::new(store)?;
    let mut layer = tree_to_layer(upper, txn.dir(), &opts)?;
    if compression != Compression::Zstd {
        let what = format!("changes of {name}");
        let (digest, size, path) = recompress(store, &layer.path, &what, compression)?;
        let _ = fs::remove_file(&layer.path);
        layer = crate::diff::LayerFile {
            path,
            digest,
            size,
            diff_id: layer.diff_id,
        };
    }
    let staging = parent.join(format!(".{}", unique_name(&file_name)));
    let mut tmps = vec![layer.path.clone()];
    let res = (|| {
        let mut sink = Sink::Tar(tar::Builder::new(File::create(&staging).at(out)?));
        let base = write_base(store, &info, compression, &mut sink, &mut tmps)?;
        let manifest = write_archive(store, &info, &base, &layer, settings, name, sink)?;
        fs::rename(&staging, out).at(out)?;
        Ok(manifest)
    })();
    for t in &tmps {
        let _ = fs::remove_file(t);
    }
    if res.is_err() {
        let _ = remove_all(&staging);
    }
    let archive_size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Exported {
        manifest: res?,
        changes_size: layer.size,
        archive_size,
    })
}

/// The base image as the archive holds it: its manifest's digest and layers.
struct Base {
    manifest: Digest,
    layers: Vec<Descriptor>,
    /// Of every layer, the changes too.
    compression: Compression,
}

/// Write the base image's config and layers, and its manifest: the stored
/// one when every layer is already in `compression`, else a new one for
/// the recompressed layers (their files are added to `tmps`).
fn write_base(
    store: &Store,
    info: &crate::store::ImageInfo,
    compression: Compression,
    sink: &mut Sink,
    tmps: &mut Vec<PathBuf>,
) -> Result<Base> {
    let blobs = store.blobs();
    sink.add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let cfg = &info.manifest.config.digest;
    sink.add_file(&blob_path(cfg), &blobs.path(cfg))?;
    let mut written = std::collections::BTreeSet::from([cfg.clone()]);
    let mut layers = info.manifest.layers.clone();
    for l in &mut layers {
        let src = blobs.path(&l.digest);
        let (comp, _) = unpack::decompress(File::open(&src).at(&src)?).at(&src)?;
        let path = if comp == compression {
            src
        } else {
            let what = format!("layer blob {}", l.digest);
            let (d, size, tmp) = recompress(store, &src, &what, compression)?;
            tmps.push(tmp.clone());
            *l = Descriptor::new(image::layer_type(compression), d, size);
            tmp
        };
        if written.insert(l.digest.clone()) {
            sink.add_file(&blob_path(&l.digest), &path)?;
        }
    }
    let stored = &info.manifest_desc.digest;
    if layers == info.manifest.layers {
        sink.add_file(&blob_path(stored), &blobs.path(stored))?;
        return Ok(Base {
            manifest: stored.clone(),
            layers,
            compression,
        });
    }
    let mut m = info.manifest.clone();
    m.media_type = Some(OCI_MANIFEST.to_string());
    m.layers = layers.clone();
    let bytes = to_json(&m);
    let manifest = Digest::of_bytes(&bytes);
    sink.add_bytes(&blob_path(&manifest), &bytes)?;
    Ok(Base {
        manifest,
        layers,
        compression,
    })
}

fn write_archive(
    store: &Store,
    info: &crate::store::ImageInfo,
    base_out: &Base,
    layer: &crate::diff::LayerFile,
    settings: &Value,
    name: &str,
    mut sink: Sink,
) -> Result<Digest> {
    let blobs = store.blobs();
    let base = &base_out.manifest;
    let cfg = &info.manifest.config.digest;
    if !base_out.layers.iter().any(|l| l.digest == layer.digest) {
        sink.add_file(&blob_path(&layer.digest), &layer.path)?;
    }
    // Base config + the changes layer; the image's own run settings become
    // the container's, so that other tools run it the same way.
    let what = format!("config {cfg}");
    let mut config: Value = parse_json(&blobs.read_verified(cfg)?, &what)?;
    let bad = || Error::invalid(&what, "not a JSON object with rootfs.diff_ids");
    let now = now_rfc3339();
    let obj = config.as_object_mut().ok_or_else(bad)?;
    obj.insert("created".into(), json!(now));
    obj.entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}))
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(bad)?
        .push(json!(layer.diff_id));
    if let Some(h) = obj
        .entry("history")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        h.push(json!({"created": now, "created_by": format!("unionmount container save {name}")}));
    }
    let run = obj.entry("config").or_insert_with(|| json!({}));
    if let Some(run) = run.as_object_mut() {
        for (key, from) in [
            ("Cmd", "argv"),
            ("Env", "env"),
            ("WorkingDir", "workdir"),
            ("User", "user"),
        ] {
            if let Some(v) = settings.get(from).filter(|v| !v.is_null()) {
                run.insert(key.into(), v.clone());
            }
        }
        run.remove("Entrypoint");
    }
    let cfg_bytes =
        serde_json::to_vec(&config).map_err(|e| Error::invalid(&what, e.to_string()))?;
    let cfg_digest = Digest::of_bytes(&cfg_bytes);
    sink.add_bytes(&blob_path(&cfg_digest), &cfg_bytes)?;
    let mut layers = base_out.layers.clone();
    layers.push(Descriptor::new(
        image::layer_type(base_out.compression),
        layer.digest.clone(),
        layer.size,
    ));
    let mut annotations = serde_json::Map::new();
    annotations.insert(BASE_DIGEST.into(), json!(base.to_string()));
    if let Some(n) = &info.name {
        annotations.insert(BASE_NAME.into(), json!(n));
    }
    annotations.insert(SETTINGS_ANNOTATION.into(), json!(settings.to_string()));
    let mut other = serde_json::Map::new();
    other.insert("annotations".into(), Value::Object(annotations));
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor::new(image::OCI_CONFIG, cfg_digest, cfg_bytes.len() as u64),
        layers,
        other,
    };
    let m_bytes = to_json(&manifest);
    let m_digest = Digest::of_bytes(&m_bytes);
    sink.add_bytes(&blob_path(&m_digest), &m_bytes)?;
    let mut desc = Descriptor::new(OCI_MANIFEST, m_digest.clone(), m_bytes.len() as u64);
    desc.annotations
        .insert(REF_NAME.to_string(), name.to_string());
    let idx = Index {
        manifests: vec![desc],
        ..Index::default()
    };
    sink.add_bytes("index.json", &to_json(&idx))?;
    sink.finish()?;
    Ok(m_digest)
}

/// The manifest digest of an image of this store with config `config` (the
/// same image id: the same layers, uncompressed), if there is one: an
/// archive's copy of it, perhaps compressed another way, is then not stored.
fn same_image_here(store: &Store, config: &Digest) -> Result<Option<Digest>> {
    Ok(store
        .entries()?
        .into_iter()
        .filter_map(|(_, info)| info.ok())
        .find(|i| i.id() == config)
        .map(|i| i.manifest_desc.digest))
}

/// Stage the base image: its layer blobs (unpacked), then its manifest and
/// config as they are in the archive (same bytes, same digests).
fn store_base(
    txn: &mut Txn<'_>,
    src: &Source,
    base: &Digest,
    base_m: &Manifest,
    base_bytes: &[u8],
    cfg_bytes: &[u8],
    base_cfg: image::ConfigView,
) -> Result<()> {
    let name = src.name();
    for l in &base_m.layers {
        image::check_layer_type(&l.media_type, &format!("{name}: layer {}", l.digest))?;
        let rel = blob_path(&l.digest);
        match src.take_staged(&rel, &l.digest) {
            Some(p) => txn.add_staged(p, l.digest.clone()),
            None => txn.add_blob(
                &mut src.open_file(&rel)?,
                &l.digest,
                Some(l.size),
                &format!("{name}: layer {}", l.digest),
            )?,
        }
    }
    txn.add_bytes(cfg_bytes)?;
    txn.add_bytes(base_bytes)?;
    let info = crate::store::ImageInfo {
        name: None,
        manifest_desc: Descriptor::new(OCI_MANIFEST, base.clone(), base_bytes.len() as u64),
        manifest: base_m.clone(),
        config: base_cfg,
        size: 0,
    };
    txn.unpack_layers(&layer_pairs(&info)?)
}

/// A small JSON file of the archive, checked against its digest.
fn read_blob(src: &Source, d: &Digest, what: &str) -> Result<Vec<u8>> {
    let bytes = src.read_small(&blob_path(d))?;
    let actual = Digest::of_bytes(&bytes);
    if &actual != d {
        return Err(Error::DigestMismatch {
            what: format!("{}: {what}", src.name()),
            expected: d.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Read an archive written by `export`: store its base image (tagged with
/// its name from the archive when `tag_base` and the name is free or names
/// the same image here) and unpack the container's changes into `upper`, an
/// empty directory, in the store's layer form (overlay whiteouts and opaque
/// directories as root). On error the store gains nothing visible; `upper`
/// may hold a partial tree that the caller removes.
pub fn import(store: &Store, archive: &Path, upper: &Path, tag_base: bool) -> Result<Imported> {
    let mut txn = Txn::new(store)?;
    let src = Source::open(archive, txn.dir(), store.progress())?;
    let name = src.name();
    let not_export = |why: &str| {
        Error::invalid(
            &name,
            format!("not a container export of unionmount ({why})"),
        )
    };
    if !src.exists("index.json") {
        return Err(not_export("no index.json"));
    }
    let idx: Index = parse_json(
        &src.read_small("index.json")?,
        &format!("{name}: index.json"),
    )?;
    let [desc] = idx.manifests.as_slice() else {
        return Err(not_export(&format!(
            "{} images in index.json, expected 1",
            idx.manifests.len()
        )));
    };
    if !image::is_manifest(&desc.media_type) {
        return Err(not_export(&format!("media type {:?}", desc.media_type)));
    }
    let top: Manifest = parse_json(&read_blob(&src, &desc.digest, "manifest")?, "manifest")?;
    let note = |key: &str| {
        top.other
            .get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let settings_text = note(SETTINGS_ANNOTATION)
        .ok_or_else(|| not_export("no io.unionmount.container annotation"))?;
    let settings: Value = parse_json(settings_text.as_bytes(), &format!("{name}: settings"))?;
    let base =
        Digest::parse(&note(BASE_DIGEST).ok_or_else(|| not_export("no base image digest"))?)?;
    let base_bytes = read_blob(&src, &base, "base manifest")?;
    let base_m: Manifest = parse_json(&base_bytes, &format!("{name}: base manifest"))?;
    let cfg_bytes = read_blob(&src, &base_m.config.digest, "base config")?;
    let base_cfg: image::ConfigView = parse_json(&cfg_bytes, &format!("{name}: base config"))?;
    let top_cfg: image::ConfigView = parse_json(
        &read_blob(&src, &top.config.digest, "config")?,
        &format!("{name}: config"),
    )?;
    let n = base_m.layers.len();
    let layers_match = top.layers.len() == n + 1
        && top.layers[..n]
            .iter()
            .zip(&base_m.layers)
            .all(|(a, b)| a.digest == b.digest)
        && top_cfg.rootfs.diff_ids.len() == n + 1
        && top_cfg.rootfs.diff_ids[..n] == base_cfg.rootfs.diff_ids[..];
    if !layers_match {
        return Err(not_export("its layers are not the base image's plus one"));
    }
    let base = match same_image_here(store, &base_m.config.digest)? {
        Some(here) => here,
        None => {
            store_base(
                &mut txn,
                &src,
                &base,
                &base_m,
                &base_bytes,
                &cfg_bytes,
                base_cfg,
            )?;
            base
        }
    };
    // The changes, straight into `upper`, checked against both digests.
    let changes = top
        .layers
        .last()
        .ok_or_else(|| not_export("no changes layer"))?;
    image::check_layer_type(&changes.media_type, &format!("{name}: changes layer"))?;
    let what = format!("{name}: changes layer {}", changes.digest);
    let mut blob = HashingReader::new(io::BufReader::new(
        src.open_file(&blob_path(&changes.digest))?,
    ));
    let got = crate::unpack::unpack(&mut blob, upper, store.unpack_options())
        .map_err(|e| Error::invalid(&what, e.to_string()))?;
    io::copy(&mut blob, &mut io::sink()).ctx(|| what.clone())?;
    let (actual, _) = blob.finish();
    if actual != changes.digest {
        return Err(Error::DigestMismatch {
            what,
            expected: changes.digest.clone(),
            actual,
        });
    }
    let want_diff = &top_cfg.rootfs.diff_ids[n];
    if &got.diff_id != want_diff {
        return Err(Error::DigestMismatch {
            what: format!("{what} (uncompressed)"),
            expected: want_diff.clone(),
            actual: got.diff_id,
        });
    }
    let base_name = note(BASE_NAME).filter(|t| check_tag(t).is_ok());
    let tagged = tag_base
        && base_name
            .as_deref()
            .is_some_and(|t| match store.resolve(t) {
                Ok(i) => i.manifest_desc.digest == base && i.name.as_deref() == Some(t),
                Err(Error::NotFound { .. }) => true,
                Err(_) => false,
            });
    if tagged && let Some(t) = &base_name {
        // The image already here, or the archive's copy just staged.
        let mut d = match store.resolve(&base.to_string()) {
            Ok(i) => i.manifest_desc,
            Err(_) => Descriptor::new(OCI_MANIFEST, base.clone(), base_bytes.len() as u64),
        };
        d.annotations.insert(REF_NAME.to_string(), t.clone());
        txn.add_ref(d);
    }
    txn.commit()?;
    Ok(Imported {
        base,
        base_name,
        tagged,
        settings,
        changes: got.entries,
    })
}
