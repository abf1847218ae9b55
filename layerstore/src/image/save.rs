//! Images out of the store: OCI layout directory, OCI archive, docker-archive.
//! The output is written under a temporary name beside `out` and renamed
//! when complete.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{DockerEntry, Index, REF_NAME, Sink, blob_path, to_json};
use crate::store::{Store, layer_pairs};
use crate::unpack::{self, Compression};
use crate::util::{create_unique, remove_all, unique_name};
use crate::{Context, Error, Result};

/// Output formats of `image save`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFormat {
    /// An OCI image layout directory.
    Oci,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// A `docker save` tar.
    DockerArchive,
}

impl std::str::FromStr for SaveFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "oci" | "oci-dir" => Ok(SaveFormat::Oci),
            "oci-archive" => Ok(SaveFormat::OciArchive),
            "docker-archive" | "docker" => Ok(SaveFormat::DockerArchive),
            other => Err(Error::invalid(
                format!("format {other:?}"),
                "expected oci, oci-archive or docker-archive",
            )),
        }
    }
}

/// Write image `name` to `out` (which must not exist). `ref_name` is the
/// name recorded in the output (default: the image's tag). OCI output has
/// its layers in `compress`, recompressed where the store keeps them in
/// another (a new manifest; same config and diff ids, so the same image
/// id): gzip is what every tool reads. A docker-archive holds plain tars, as
/// `docker save` writes them.
pub fn save(
    store: &Store,
    name: &str,
    format: SaveFormat,
    out: &Path,
    ref_name: Option<&str>,
    compress: Compression,
) -> Result<()> {
    let info = store.resolve(name)?;
    if out.symlink_metadata().is_ok() {
        return Err(Error::invalid(out.display().to_string(), "already exists"));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| Error::invalid(out.display().to_string(), "not a file name"))?
        .to_string_lossy()
        .into_owned();
    let staging = parent.join(format!(".{}", unique_name(&file_name)));
    let sink = match format {
        SaveFormat::Oci => {
            fs::create_dir(&staging).at(out)?;
            Sink::Dir(staging.clone())
        }
        _ => Sink::Tar(tar::Builder::new(File::create(&staging).at(out)?)),
    };
    let tag = ref_name.map(str::to_string).or_else(|| info.name.clone());
    let res = match format {
        SaveFormat::DockerArchive => write_docker(store, &info, sink, tag.as_deref()),
        _ => write_oci(store, &info, sink, tag.as_deref(), compress),
    };
    let res = res.and_then(|()| fs::rename(&staging, out).at(out));
    if res.is_err() {
        let _ = remove_all(&staging);
    }
    res
}

fn write_oci(
    store: &Store,
    info: &crate::store::ImageInfo,
    mut sink: Sink,
    tag: Option<&str>,
    compress: Compression,
) -> Result<()> {
    sink.add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let out = super::outgoing(store, info, Some(compress))?;
    for blob in out.blobs() {
        sink.add_file(&blob_path(&blob.desc.digest), &blob.path)?;
    }
    sink.add_bytes(&blob_path(&out.manifest.digest), &out.manifest_bytes)?;
    let mut desc = out.manifest.clone();
    if let Some(t) = tag {
        desc.annotations.insert(REF_NAME.to_string(), t.to_string());
    }
    let idx = Index {
        manifests: vec![desc],
        ..Index::default()
    };
    sink.add_bytes("index.json", &to_json(&idx))?;
    sink.finish()
}

fn write_docker(
    store: &Store,
    info: &crate::store::ImageInfo,
    mut sink: Sink,
    tag: Option<&str>,
) -> Result<()> {
    let cfg = &info.manifest.config.digest;
    let cfg_name = format!("{}.json", cfg.hex());
    sink.add_file(&cfg_name, &store.blobs().path(cfg))?;
    let mut layer_names = Vec::new();
    for (blob, diff_id) in layer_pairs(info)? {
        let name = format!("{}/layer.tar", diff_id.hex());
        if !layer_names.contains(&name) {
            let src = store.blobs().path(&blob);
            let (comp, _) = unpack::decompress(File::open(&src).at(&src)?).at(&src)?;
            if comp == Compression::None {
                sink.add_file(&name, &src)?;
            } else {
                // Docker archives hold uncompressed layers: decompress to a file first
                // (the tar header needs the size).
                let (mut f, tmp) = create_unique(store.tmp(), "layer")?;
                let res = (|| {
                    let (_, mut plain) = unpack::decompress(File::open(&src).at(&src)?).at(&src)?;
                    std::io::copy(&mut plain, &mut f).ctx(|| format!("layer blob {blob}"))?;
                    sink.add_file(&name, &tmp)
                })();
                let _ = fs::remove_file(&tmp);
                res?;
            }
        }
        layer_names.push(name);
    }
    let repo_tags = tag.map(|t| vec![docker_ref(t)]);
    let entry = DockerEntry {
        config: cfg_name,
        repo_tags,
        layers: layer_names,
    };
    sink.add_bytes("manifest.json", &to_json(&vec![entry]))?;
    // The legacy `repositories` file: repository → tag → top layer id.
    if let (Some(t), Some((_, top))) = (tag, layer_pairs(info)?.last()) {
        let r = docker_ref(t);
        if let Some((repo, tagpart)) = r.rsplit_once(':') {
            let v = json!({ repo: { tagpart: top.hex() } });
            sink.add_bytes("repositories", &to_json(&v))?;
        }
    }
    sink.finish()
}

/// A docker reference always has a tag: `NAME` → `NAME:latest`.
pub fn docker_ref(tag: &str) -> String {
    let last = tag.rsplit('/').next().unwrap_or(tag);
    if last.contains(':') || last.contains('@') {
        tag.to_string()
    } else {
        format!("{tag}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_refs_get_a_tag() {
        assert_eq!(docker_ref("img"), "img:latest");
        assert_eq!(
            docker_ref("localhost:5000/img"),
            "localhost:5000/img:latest"
        );
        assert_eq!(docker_ref("localhost/img:v3"), "localhost/img:v3");
    }
}
