//! Snapshots that stand on the store's own layer trees. A client that
//! pulls for a remote snapshotter (containerd's CRI) labels the Prepare of
//! each layer with `containerd.io/snapshot.ref`: the name the committed
//! layer will have, ending in its chain id. When the store has that chain
//! unpacked (an image pulled or imported with unionmount), the layer is
//! not unpacked again: a committed snapshot of that name is recorded on the
//! store's tree and the Prepare answers AlreadyExists, which tells
//! containerd the layer is there. The store keeps such trees through
//! `prune` (`holds/snapshotter`); removing the snapshot never removes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layerstore::{Digest, Store};

use crate::error::{Error, Result};

/// containerd's label naming the committed snapshot a Prepare unpacks to.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";
/// The holder name of the snapshotter's layers in the store.
const HOLDER: &str = "snapshotter";

/// The chain id at the end of a snapshot name (containerd's backend names
/// are `<namespace>/<n>/<chain id>`).
fn chain_of(name: &str) -> Option<Digest> {
    Digest::parse(name.rsplit('/').next()?).ok()
}

fn store_err(e: layerstore::Error) -> Error {
    Error::Io {
        what: "the store".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The store's layer (diff id hex) for the Prepare of `labels` over
/// `parent`, if the store has that chain on that parent chain. `store`
/// is held open (shared) by the caller until the hold is written.
pub fn layer_for(
    store: &Store,
    labels: &BTreeMap<String, String>,
    parent: &str,
) -> Result<Option<String>> {
    let Some(chain) = labels.get(TARGET_LABEL).and_then(|t| chain_of(t)) else {
        return Ok(None);
    };
    let chains = store.chains().map_err(store_err)?;
    let Some(found) = chains.get(&chain) else {
        return Ok(None);
    };
    let parent_chain = if parent.is_empty() {
        None
    } else {
        chain_of(parent)
    };
    if found.parent != parent_chain {
        return Ok(None);
    }
    Ok(Some(found.diff_id.hex().to_string()))
}

/// Open the store at `root` shared: no prune runs while it is held.
pub fn open(root: &Path) -> Result<Store> {
    Store::open(root).map_err(store_err)
}

/// Record the layers shared snapshots stand on.
pub fn hold(store: &Store, layers: &[String]) -> Result<()> {
    let digests: Vec<Digest> = layers
        .iter()
        .filter_map(|h| Digest::from_hex(h).ok())
        .collect();
    store.set_holds(HOLDER, &digests).map_err(store_err)
}

/// The tree of the store's layer `hex`.
pub fn tree(store_root: &Path, hex: &str) -> PathBuf {
    store_root.join("layers").join(hex)
}
