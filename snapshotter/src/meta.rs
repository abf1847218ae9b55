//! The snapshot records: one JSON file, rewritten whole under a temporary
//! name, synced and renamed, so each change (a prepare; a commit, which
//! turns an active snapshot into a committed one under another name; a
//! remove) is atomic. A snapshot's directory is named by its record's id;
//! a directory no record names is an orphan of a crash, which Cleanup
//! removes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Read-only, never committed.
    View,
    /// Writable: an upper over its parents, until committed or removed.
    Active,
    /// Read-only, a parent for others: a layer in kernel overlayfs format.
    Committed,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// The parent's name ("" for none).
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// A committed snapshot whose tree is the store's layer of this diff
    /// id (`share`), not a directory of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
}

/// Every snapshot by key (active, view) or name (committed).
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Db {
    pub next_id: u64,
    pub snapshots: BTreeMap<String, Record>,
}

impl Db {
    /// The records at `path` (none yet: empty).
    pub fn load(path: &Path) -> Result<Db> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                what: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Db::default()),
            Err(e) => Err(e).at(path.display()),
        }
    }

    /// Write the records to `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .at("records")?;
        let mut f = fs::File::create(&tmp).at(tmp.display())?;
        f.write_all(&bytes).at(tmp.display())?;
        f.sync_all().at(tmp.display())?;
        fs::rename(&tmp, path).at(path.display())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .at(dir.display())
    }

    pub fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// `parent` and its ancestors, nearest first.
    pub fn chain(&self, parent: &str) -> Result<Vec<&Record>> {
        let mut recs = Vec::new();
        let mut at = parent;
        while !at.is_empty() {
            let r = self.get(at)?;
            recs.push(r);
            at = &r.parent;
        }
        Ok(recs)
    }

    /// The store layers shared snapshots stand on.
    pub fn shared_layers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .snapshots
            .values()
            .filter_map(|r| r.layer.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn has_children(&self, key: &str) -> bool {
        self.snapshots.values().any(|r| r.parent == key)
    }
}
