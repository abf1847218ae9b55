//! Layers kept for a program outside the index: containerd's snapshots
//! (`unionmount snapshotter`) stack the store's own layer trees, so `prune`
//! must keep those. `holds/<holder>` lists the diff ids a holder uses, one
//! a line, rewritten whole by temporary name and rename. Chain ids (OCI's
//! `ChainID`, containerd's names for committed layers) find the layer a
//! holder asks for.

use std::collections::{BTreeSet, HashMap};
use std::fs;

use super::Store;
use crate::digest::Digest;
use crate::util::write_atomic;
use crate::{Context, Result};

/// A layer tree of the store, found by its chain id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLayer {
    pub diff_id: Digest,
    /// The chain id of the layers under it (None for a bottom layer).
    pub parent: Option<Digest>,
}

impl Store {
    fn holds_dir(&self) -> std::path::PathBuf {
        self.root.join("holds")
    }

    /// Record that `holder` uses the layer trees `layers` (replacing what
    /// it held before). Take the store shared (`open`) around the lookup
    /// and this call, so that no prune runs in between.
    pub fn set_holds(&self, holder: &str, layers: &[Digest]) -> Result<()> {
        let text: String = layers.iter().map(|d| format!("{d}\n")).collect();
        write_atomic(&self.tmp, &self.holds_dir().join(holder), text.as_bytes())
    }

    /// Every layer some holder uses.
    pub(super) fn held_layers(&self) -> Result<BTreeSet<Digest>> {
        let dir = self.holds_dir();
        let mut out = BTreeSet::new();
        for e in fs::read_dir(&dir).at(&dir)?.flatten() {
            let text = fs::read_to_string(e.path()).at(&e.path())?;
            out.extend(text.lines().filter_map(|l| Digest::parse(l.trim()).ok()));
        }
        Ok(out)
    }

    /// The unpacked layers of the store's images by chain id.
    pub fn chains(&self) -> Result<HashMap<Digest, ChainLayer>> {
        let mut out = HashMap::new();
        for info in self.images()? {
            let mut parent: Option<Digest> = None;
            for diff in &info.config.rootfs.diff_ids {
                let chain = match &parent {
                    None => diff.clone(),
                    Some(p) => Digest::of_bytes(format!("{p} {diff}").as_bytes()),
                };
                if self.layer_dir(diff).is_dir() {
                    let layer = ChainLayer {
                        diff_id: diff.clone(),
                        parent: parent.clone(),
                    };
                    out.entry(chain.clone()).or_insert(layer);
                }
                parent = Some(chain);
            }
        }
        Ok(out)
    }
}
