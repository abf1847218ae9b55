//! Garbage collection (`prune`) and `fsck`.

use std::collections::BTreeSet;
use std::fs;

use super::{Store, Txn, layer_pairs};
use crate::digest::Digest;
use crate::image::{self, ConfigView, Descriptor, Index};
use crate::util::{remove_all, unique_name};
use crate::{Context, Result};

/// What `prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub blobs: usize,
    pub layers: usize,
    /// Partial downloads removed.
    pub partial: usize,
    pub bytes: u64,
}

impl Store {
    /// Everything reachable from the index and from containers.
    fn reachable(&self) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        let mut entries = self.index()?.manifests;
        entries.extend(self.container_images()?);
        for d in &entries {
            blobs.insert(d.digest.clone());
            let (md, m) = self.manifest(d)?;
            if image::is_index(&d.media_type) {
                // Keep the whole index (other platforms too).
                let idx: Index = image::parse_json(&self.blobs.read_verified(&d.digest)?, "index")?;
                blobs.extend(idx.manifests.iter().map(|x| x.digest.clone()));
            }
            blobs.insert(md.digest);
            blobs.insert(m.config.digest.clone());
            blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
            let cfg: ConfigView =
                image::parse_json(&self.blobs.read_verified(&m.config.digest)?, "config")?;
            layers.extend(cfg.rootfs.diff_ids);
        }
        layers.extend(self.held_layers()?);
        Ok((blobs, layers))
    }

    /// Manifests that containers were made from: `containers/<id>/image`
    /// holds a manifest digest.
    fn container_images(&self) -> Result<Vec<Descriptor>> {
        let dir = self.containers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)?.flatten() {
            let Ok(text) = super::containers::read_image_record(&e.path()) else {
                continue;
            };
            if let Ok(d) = Digest::parse(&text)
                && self.blobs.contains(&d)
            {
                out.push(Descriptor::new(image::OCI_MANIFEST, d, 0));
            }
        }
        Ok(out)
    }

    /// Remove blobs and layers that nothing reaches. Needs `open_exclusive`.
    pub fn prune(&self) -> Result<PruneReport> {
        self.need_exclusive("prune")?;
        let (keep_blobs, keep_layers) = self.reachable()?;
        let mut report = PruneReport::default();
        for d in self.blobs.list()? {
            if !keep_blobs.contains(&d) {
                report.bytes += fs::metadata(self.blobs.path(&d))
                    .map(|m| m.len())
                    .unwrap_or(0);
                self.blobs.remove(&d)?;
                report.blobs += 1;
            }
        }
        for d in self.layer_list()? {
            if !keep_layers.contains(&d) {
                self.discard_layer(&d)?;
                report.layers += 1;
            }
        }
        // Downloads that never finished (or finished and were adopted by a
        // commit a kill interrupted): nothing refers to them.
        let partial = self.partial_dir();
        for e in fs::read_dir(&partial).at(&partial)?.flatten() {
            report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            remove_all(&e.path())?;
            report.partial += 1;
        }
        // Layer lock files are made on demand; with the store held alone none
        // is in use, so all can go (also those of loads that failed).
        let locks = self.root.join("locks");
        for e in fs::read_dir(&locks).at(&locks)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("layer-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(report)
    }

    /// Take a layer directory out of `layers/` in one rename, then delete
    /// it: a kill half-way never leaves a partial tree under the layer's
    /// name, which the next import would take for the unpacked layer.
    fn discard_layer(&self, d: &Digest) -> Result<()> {
        let dir = self.layer_dir(d);
        let doomed = self.tmp.join(unique_name("discard"));
        match fs::rename(&dir, &doomed) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&dir),
            Ok(()) => remove_all(&doomed),
        }
    }

    fn layer_list(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("layers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(n) = e.file_name().to_str()
                && let Ok(d) = Digest::from_hex(n)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Re-hash every blob and check every image's layers. With `repair`,
    /// corrupt blobs are removed and missing or damaged layers re-unpacked
    /// (needs `open_exclusive`). Returns the problems found (and, with
    /// `repair`, what could not be fixed is still an error).
    pub fn fsck(&self, repair: bool) -> Result<Vec<String>> {
        if repair {
            self.need_exclusive("fsck --repair")?;
        }
        let mut problems = Vec::new();
        let mut bad_blobs = BTreeSet::new();
        for d in self.blobs.list()? {
            if let Err(e) = self.blobs.verify(&d) {
                problems.push(e.to_string());
                bad_blobs.insert(d.clone());
                if repair {
                    self.blobs.remove(&d)?;
                }
            }
        }
        // partial/ holds only files named by a digest (a pull's downloads).
        let partial = self.partial_dir();
        for e in fs::read_dir(&partial).at(&partial)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if Digest::from_hex(&name).is_err() || !is_file {
                problems.push(format!("partial download {name:?}: not a blob download"));
                if repair {
                    remove_all(&e.path())?;
                }
            }
        }
        let mut relayer = Vec::new();
        let mut checked = BTreeSet::new();
        for entry in self.index()?.manifests {
            let name = entry.ref_name().unwrap_or("<none>").to_string();
            let info = match self.info(&entry) {
                Ok(i) => i,
                Err(e) => {
                    problems.push(format!("image {name}: {e}"));
                    continue;
                }
            };
            let pairs = match layer_pairs(&info) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("image {name}: {e}"));
                    continue;
                }
            };
            for (blob, diff_id) in pairs {
                if !self.blobs.contains(&blob) || bad_blobs.contains(&blob) {
                    problems.push(format!(
                        "image {name}: layer blob {blob} is missing or damaged"
                    ));
                    continue;
                }
                let dir = self.layer_dir(&diff_id);
                if !dir.is_dir() {
                    problems.push(format!("image {name}: layer {diff_id} is not unpacked"));
                    relayer.push((blob, diff_id));
                } else if checked.insert(diff_id.clone()) {
                    let found = self.blobs.open(&blob).and_then(|f| {
                        crate::check::check_layer(std::io::BufReader::new(f), &dir, self.opts)
                    });
                    match found {
                        Ok(p) if p.is_empty() => {}
                        Ok(p) => {
                            let more = if p.len() > 3 {
                                format!(" (and {} more)", p.len() - 3)
                            } else {
                                String::new()
                            };
                            problems.push(format!(
                                "image {name}: layer {diff_id}: {}{more}",
                                p[..p.len().min(3)].join("; ")
                            ));
                            relayer.push((blob, diff_id));
                        }
                        Err(e) => {
                            problems.push(format!("image {name}: layer {diff_id}: {e}"));
                            relayer.push((blob, diff_id));
                        }
                    }
                }
            }
        }
        if repair && !relayer.is_empty() {
            for (_, d) in &relayer {
                self.discard_layer(d)?;
            }
            let mut txn = Txn::new(self)?;
            txn.unpack_layers(&relayer)?;
            txn.commit()?;
        }
        Ok(problems)
    }
}
