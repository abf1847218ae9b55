//! The snapshot operations, on the records (`meta`) and the directories
//! `<root>/<id>/fs` (the snapshot's own tree: an upper in kernel overlayfs
//! format, a layer once committed) and `<root>/<id>/work` (the union's
//! workdir while active). One lock serializes the changes, which are
//! quick: containerd's parallel calls see each other whole.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;

use crate::error::{Context, Error, Result};
use crate::filter::Filters;
use crate::meta::{Db, Kind, Record};

pub struct Snapshots {
    root: PathBuf,
    /// The store whose layer trees snapshots may stand on (`share`).
    store: Option<PathBuf>,
    db: Mutex<Db>,
}

type Labels = BTreeMap<String, String>;

impl Snapshots {
    /// Open the snapshot area `root` (made if missing), beside the store
    /// at `store` if there is one.
    pub fn open(root: &Path, store: Option<&Path>) -> Result<Snapshots> {
        fs::create_dir_all(root).at(root.display())?;
        let db = Db::load(&root.join("metadata.json"))?;
        Ok(Snapshots {
            root: root.to_path_buf(),
            store: store.map(Path::to_path_buf),
            db: Mutex::new(db),
        })
    }

    /// The tree of a snapshot: its own directory, or the store's layer.
    fn tree(&self, r: &Record) -> PathBuf {
        match (&r.layer, &self.store) {
            (Some(hex), Some(store)) => crate::share::tree(store, hex),
            _ => self.fs_dir(r.id),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, db: &Db) -> Result<()> {
        db.save(&self.root.join("metadata.json"))
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string()).join("fs")
    }

    fn work_dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string()).join("work")
    }

    /// Prepare (`Kind::Active`) or View: a new snapshot `key` over the
    /// committed snapshot `parent` ("" for none); its mounts.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("a snapshot key is empty".into()));
        }
        let mut db = self.lock();
        if db.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() && db.get(parent)?.kind != Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "parent {parent:?} of {key:?} is not committed"
            )));
        }
        if kind == Kind::Active && self.try_share(&mut db, parent, &labels)? {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let id = db.next_id.max(1);
        db.next_id = id + 1;
        self.make_dirs(id, kind)?;
        let now = SystemTime::now();
        let rec = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            layer: None,
        };
        db.snapshots.insert(key.to_string(), rec);
        if let Err(e) = self.save(&db) {
            db.snapshots.remove(key);
            let _ = fs::remove_dir_all(self.root.join(id.to_string()));
            return Err(e);
        }
        self.mounts_of(&db, key)
    }

    /// A Prepare labelled with its target (`share::TARGET_LABEL`) whose
    /// layer the store has: record the target, committed on the store's
    /// tree, and hold that tree. True when done (the caller answers
    /// AlreadyExists, as remote snapshotters do); an existing target
    /// answers the same.
    fn try_share(&self, db: &mut Db, parent: &str, labels: &Labels) -> Result<bool> {
        let Some(target) = labels.get(crate::share::TARGET_LABEL) else {
            return Ok(false);
        };
        if db.snapshots.contains_key(target) {
            return Ok(true);
        }
        let Some(store_root) = &self.store else {
            return Ok(false);
        };
        let store = crate::share::open(store_root)?;
        let Some(hex) = crate::share::layer_for(&store, labels, parent)? else {
            return Ok(false);
        };
        let id = db.next_id.max(1);
        db.next_id = id + 1;
        let now = SystemTime::now();
        let rec = Record {
            id,
            kind: Kind::Committed,
            parent: parent.to_string(),
            labels: labels.clone(),
            created: now,
            updated: now,
            layer: Some(hex),
        };
        db.snapshots.insert(target.clone(), rec);
        // Held before it is recorded: a crash between leaves a hold too
        // many (the next change rewrites it), never a record on a tree a
        // prune may take.
        crate::share::hold(&store, &db.shared_layers())?;
        if let Err(e) = self.save(db) {
            db.snapshots.remove(target);
            return Err(e);
        }
        log::info!("{target}: the store's layer, shared");
        Ok(true)
    }

    /// `<id>/fs` and, for an active snapshot, `<id>/work`. A directory of
    /// this id left by a crash before its record was written goes first.
    fn make_dirs(&self, id: u64, kind: Kind) -> Result<()> {
        let dir = self.root.join(id.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir).at(dir.display())?;
        }
        fs::create_dir_all(self.fs_dir(id)).at(dir.display())?;
        if kind == Kind::Active {
            fs::create_dir(self.work_dir(id)).at(dir.display())?;
        }
        Ok(())
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.mounts_of(&self.lock(), key)
    }

    fn mounts_of(&self, db: &Db, key: &str) -> Result<Vec<Mount>> {
        let rec = db.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: it has no mounts"
            )));
        }
        let lowers: Vec<PathBuf> = db
            .chain(&rec.parent)?
            .into_iter()
            .map(|r| self.tree(r))
            .collect();
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        Ok(crate::mounts::mounts(
            rec.kind,
            &self.fs_dir(rec.id),
            &self.work_dir(rec.id),
            &lowers,
            crate::mounts::is_extract(key),
        ))
    }

    /// The active snapshot `key` becomes the committed snapshot `name`: its
    /// tree is synced to disk first, then one record change names it.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let mut db = self.lock();
        let rec = db.get(key)?.clone();
        if rec.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active: only an active snapshot can be committed"
            )));
        }
        if db.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let fs_dir = self.fs_dir(rec.id);
        let d = fs::File::open(&fs_dir).at(fs_dir.display())?;
        rustix::fs::syncfs(&d).at(fs_dir.display())?;
        let now = SystemTime::now();
        let committed = Record {
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            ..rec.clone()
        };
        db.snapshots.remove(key);
        db.snapshots.insert(name.to_string(), committed);
        if let Err(e) = self.save(&db) {
            db.snapshots.remove(name);
            db.snapshots.insert(key.to_string(), rec);
            return Err(e);
        }
        let _ = fs::remove_dir_all(self.work_dir(db.get(name)?.id));
        Ok(())
    }

    /// Remove `key` (not a parent of another): its record, then its
    /// directories.
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut db = self.lock();
        let rec = db.get(key)?.clone();
        if db.has_children(key) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} has children: remove them first"
            )));
        }
        db.snapshots.remove(key);
        if let Err(e) = self.save(&db) {
            db.snapshots.insert(key.to_string(), rec);
            return Err(e);
        }
        if rec.layer.is_some() {
            // The tree is the store's: only the hold goes.
            if let Some(root) = &self.store {
                let store = crate::share::open(root)?;
                crate::share::hold(&store, &db.shared_layers())?;
            }
            return Ok(());
        }
        drop(db);
        let dir = self.root.join(rec.id.to_string());
        fs::remove_dir_all(&dir).at(dir.display())
    }

    pub fn stat(&self, key: &str) -> Result<Record> {
        Ok(self.lock().get(key)?.clone())
    }

    /// Update: only labels can change. `fieldpaths` empty or `labels`:
    /// all of them; `labels.KEY`: that one (set, or removed when absent).
    pub fn update(&self, key: &str, labels: Labels, fieldpaths: &[String]) -> Result<Record> {
        let mut db = self.lock();
        let mut rec = db.get(key)?.clone();
        if fieldpaths.is_empty() {
            rec.labels = labels.clone();
        }
        for path in fieldpaths {
            if path == "labels" {
                rec.labels = labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match labels.get(k) {
                    Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                    None => rec.labels.remove(k),
                };
            } else {
                return Err(Error::InvalidArgument(format!(
                    "snapshot {key:?}: field {path:?} cannot be updated (only labels can)"
                )));
            }
        }
        rec.updated = SystemTime::now();
        let old = db.snapshots.insert(key.to_string(), rec.clone());
        if let Err(e) = self.save(&db) {
            if let Some(old) = old {
                db.snapshots.insert(key.to_string(), old);
            }
            return Err(e);
        }
        Ok(rec)
    }

    /// Bytes and inodes of the snapshot's own tree (its parents not
    /// counted).
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let tree = self.tree(self.lock().get(key)?);
        crate::usage::disk_usage(&tree)
    }

    /// Every snapshot `filters` select, by name.
    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Record)>> {
        let f = Filters::parse(filters)?;
        let db = self.lock();
        Ok(db
            .snapshots
            .iter()
            .filter(|(name, r)| f.matches(name, r))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect())
    }

    /// Cleanup: remove what no record names (directories left by a crash
    /// between making them and recording them, or between a remove's
    /// record change and its deletion). The number removed.
    pub fn cleanup(&self) -> Result<usize> {
        let db = self.lock();
        let known: std::collections::HashSet<String> =
            db.snapshots.values().map(|r| r.id.to_string()).collect();
        let mut removed = 0;
        for e in fs::read_dir(&self.root).at(self.root.display())? {
            let e = e.at(self.root.display())?;
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = name.parse::<u64>().is_ok() && !known.contains(&name);
            if orphan || name == "metadata.tmp" {
                let p = e.path();
                if p.is_dir() {
                    fs::remove_dir_all(&p).at(p.display())?;
                } else {
                    fs::remove_file(&p).at(p.display())?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}
