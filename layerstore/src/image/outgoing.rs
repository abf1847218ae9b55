//! An image's blobs as they leave the store (an OCI save, a push): the
//! config, each layer in the compression asked for (recompressed into tmp/
//! where the store keeps another), and the manifest that names them. The
//! config and the diff ids stay, so the image id stays too.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::PathBuf;

use super::{Descriptor, recompress};
use crate::store::{ImageInfo, Store};
use crate::unpack::{self, Compression};
use crate::{Context, Digest, Result};

/// One blob on its way out: its descriptor and the file holding it.
pub struct OutBlob {
    pub desc: Descriptor,
    pub path: PathBuf,
}

/// An image ready to leave the store. Recompressed layers are files in the
/// store's tmp/, removed when this is dropped.
pub struct Outgoing {
    pub config: OutBlob,
    /// In manifest order; a layer used twice is listed twice.
    pub layers: Vec<OutBlob>,
    /// The manifest's descriptor and its exact bytes.
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    temporary: Vec<PathBuf>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        for p in &self.temporary {
            let _ = fs::remove_file(p);
        }
    }
}

impl Outgoing {
    /// Every distinct blob (config first, then layers), each once.
    pub fn blobs(&self) -> Vec<&OutBlob> {
        let mut seen = std::collections::BTreeSet::new();
        std::iter::once(&self.config)
            .chain(&self.layers)
            .filter(|b| seen.insert(b.desc.digest.clone()))
            .collect()
    }
}

/// `info`'s blobs with layers in `compress` (None: as the store keeps them).
/// The manifest is the stored one when no layer changed, else a new OCI
/// manifest naming the recompressed layers.
pub fn outgoing(
    store: &Store,
    info: &ImageInfo,
    compress: Option<Compression>,
) -> Result<Outgoing> {
    let blobs = store.blobs();
    let cfg = &info.manifest.config;
    let mut out = Outgoing {
        config: OutBlob {
            desc: cfg.clone(),
            path: blobs.path(&cfg.digest),
        },
        layers: Vec::new(),
        manifest: info.manifest_desc.clone(),
        manifest_bytes: Vec::new(),
        temporary: Vec::new(),
    };
    let mut manifest = info.manifest.clone();
    let mut done: HashMap<Digest, (Descriptor, PathBuf)> = HashMap::new();
    for layer in &mut manifest.layers {
        if let Some((desc, path)) = done.get(&layer.digest) {
            *layer = desc.clone();
            out.layers.push(OutBlob {
                desc: desc.clone(),
                path: path.clone(),
            });
            continue;
        }
        let src = blobs.path(&layer.digest);
        let (comp, _) = unpack::decompress(File::open(&src).at(&src)?).at(&src)?;
        let old = layer.digest.clone();
        let path = match compress {
            // A foreign layer's digest is what its urls serve: kept as is.
            Some(want) if want != comp && !layer.is_foreign() => {
                let what = format!("layer blob {}", layer.digest);
                let (d, size, tmp) = recompress(store, &src, &what, want)?;
                out.temporary.push(tmp.clone());
                layer.media_type = super::layer_type(want).to_string();
                layer.digest = d;
                layer.size = size;
                tmp
            }
            _ => src,
        };
        done.insert(old, (layer.clone(), path.clone()));
        out.layers.push(OutBlob {
            desc: layer.clone(),
            path,
        });
    }
    if manifest.layers == info.manifest.layers {
        let d = &info.manifest_desc.digest;
        out.manifest_bytes = blobs.read_verified(d)?;
    } else {
        let layers = std::mem::take(&mut manifest.layers);
        let (desc, bytes, m) = super::relayered(manifest, layers);
        out.config.desc.media_type = m.config.media_type;
        out.manifest = desc;
        out.manifest_bytes = bytes;
    }
    out.manifest.annotations.clear();
    out.manifest.platform = None;
    Ok(out)
}
