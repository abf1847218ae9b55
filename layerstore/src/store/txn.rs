//! Transactions: new content staged under `tmp/` and made visible at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Store, add_ref};
use crate::blobs::MAX_JSON;
use crate::digest::Digest;
use crate::image::Descriptor;
use crate::progress::Progress;
use crate::unpack;
use crate::util::{Lock, mkdir_unique, remove_all, sync_dir};
use crate::{Context, Error, Result};

/// New content staged in a private directory under `tmp/`, made visible by
/// `commit` (blobs, then layers, then the index). Dropping a transaction
/// without committing removes everything it staged.
pub struct Txn<'s> {
    store: &'s Store,
    dir: PathBuf,
    blobs: BTreeMap<Digest, PathBuf>,
    layers: BTreeMap<Digest, PathBuf>,
    locks: Vec<Lock>,
    locked: BTreeSet<Digest>,
    refs: Vec<Descriptor>,
}

impl<'s> Txn<'s> {
    pub fn new(store: &'s Store) -> Result<Txn<'s>> {
        Ok(Txn {
            store,
            dir: mkdir_unique(&store.tmp, "txn")?,
            blobs: BTreeMap::new(),
            layers: BTreeMap::new(),
            locks: Vec::new(),
            locked: BTreeSet::new(),
            refs: Vec::new(),
        })
    }

    pub fn progress(&self) -> &Progress {
        &self.store.progress
    }

    /// The private staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.store.blobs.contains(d)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        match self.blobs.get(d) {
            Some(p) => File::open(p).at(p),
            None => self.store.blobs.open(d),
        }
    }

    /// A blob's bytes (at most `MAX_JSON`), checked against its digest.
    pub fn read_blob(&self, d: &Digest, what: &str) -> Result<Vec<u8>> {
        crate::blobs::read_limited(self.open_blob(d)?, MAX_JSON, what, d)
    }

    /// Stage a blob from a stream unless the store has it; its digest (and
    /// size, if given) must match.
    pub fn add_blob(
        &mut self,
        r: &mut impl Read,
        d: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<()> {
        if self.has_blob(d) {
            return Ok(());
        }
        let mut r = self.store.progress.reader(what, size, r);
        let (actual, len, path) = crate::blobs::stage_hashed(&self.dir, &mut r, what)?;
        if &actual != d {
            let _ = fs::remove_file(&path);
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: d.clone(),
                actual,
            });
        }
        if let Some(size) = size.filter(|&s| s != len) {
            let _ = fs::remove_file(&path);
            return Err(Error::invalid(
                what,
                format!("size {len}, descriptor says {size}"),
            ));
        }
        self.blobs.insert(d.clone(), path);
        Ok(())
    }

    /// Adopt a file already staged in this transaction's directory whose
    /// content is known to hash to `d`.
    pub fn add_staged(&mut self, path: PathBuf, d: Digest) {
        if self.has_blob(&d) {
            if self.blobs.get(&d) != Some(&path) {
                let _ = fs::remove_file(&path);
            }
        } else {
            self.blobs.insert(d, path);
        }
    }

    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of_bytes(bytes);
        self.add_blob(&mut &bytes[..], &d, None, "blob")?;
        Ok(d)
    }

    /// Tag (or keep untagged) a manifest when the transaction commits.
    pub fn add_ref(&mut self, desc: Descriptor) {
        self.refs.push(desc);
    }

    /// Make sure each layer is unpacked (in this transaction or already in
    /// the store) and that each blob's uncompressed content hashes to its
    /// diff id. Layer locks are held until the transaction ends.
    pub fn unpack_layers(&mut self, pairs: &[(Digest, Digest)]) -> Result<()> {
        // Sorted by diff id, so concurrent transactions take layer locks in one order.
        let todo: BTreeSet<(Digest, Digest)> =
            pairs.iter().map(|(b, d)| (d.clone(), b.clone())).collect();
        for (diff, blob) in &todo {
            self.lock_layer(diff)?;
            let what = format!("layer blob {blob}");
            let mismatch = |actual| Error::DigestMismatch {
                what: format!("{what} (uncompressed)"),
                expected: diff.clone(),
                actual,
            };
            if self.layers.contains_key(diff) || self.store.layer_dir(diff).is_dir() {
                // Unpacked already: this blob must still be that layer.
                let f = self.open_blob(blob)?;
                let r = self.store.progress.reader(
                    &format!("checking layer {}", diff.short()),
                    crate::progress::file_len(&f),
                    f,
                );
                let (actual, _) = unpack::diff_id_of(r).ctx(|| what.clone())?;
                if &actual != diff {
                    return Err(mismatch(actual));
                }
                continue;
            }
            let dest = self.dir.join(format!("layer-{}", diff.hex()));
            fs::create_dir(&dest).at(&dest)?;
            let f = self.open_blob(blob)?;
            let r = self.store.progress.reader(
                &format!("unpacking layer {}", diff.short()),
                crate::progress::file_len(&f),
                f,
            );
            let r = std::io::BufReader::with_capacity(1 << 20, r);
            let got = unpack::unpack(r, &dest, self.store.opts)
                .map_err(|e| Error::invalid(&what, e.to_string()))?;
            if &got.diff_id != diff {
                return Err(mismatch(got.diff_id));
            }
            self.layers.insert(diff.clone(), dest);
        }
        Ok(())
    }

    /// Hold layer `diff`'s lock until the transaction ends.
    fn lock_layer(&mut self, diff: &Digest) -> Result<()> {
        if !self.locked.contains(diff) {
            self.locks
                .push(Lock::exclusive(&self.store.layer_lock(diff))?);
            self.locked.insert(diff.clone());
        }
        Ok(())
    }

    /// Stage a layer blob from a stream and unpack it in the same pass (see
    /// `tee`). Returns the blob's digest and size and the layer's diff id. If
    /// the store or this transaction has the layer already, the fresh tree
    /// is dropped: a layer is unpacked into the store once.
    pub fn add_layer_stream(
        &mut self,
        src: &mut (impl Read + Send),
        what: &str,
    ) -> Result<(Digest, u64, Digest)> {
        let dest = mkdir_unique(&self.dir, "layer")?;
        let opts = self.store.opts;
        let teed = crate::tee::stage_teed(&self.dir, src, what, |r| {
            unpack::unpack(r, &dest, opts).map_err(|e| Error::invalid(what, e.to_string()))
        })?;
        let diff = teed.consumed.diff_id;
        self.lock_layer(&diff)?;
        if self.layers.contains_key(&diff) || self.store.layer_dir(&diff).is_dir() {
            remove_all(&dest)?;
        } else {
            self.layers.insert(diff.clone(), dest);
        }
        self.add_staged(teed.path, teed.digest.clone());
        Ok((teed.digest, teed.len, diff))
    }

    /// Adopt a layer tree unpacked (by the caller, e.g. while downloading)
    /// into a directory under this transaction's directory, whose tar
    /// stream hashed to `diff`. If the store or this transaction has the
    /// layer already, the tree is dropped.
    pub fn adopt_layer(&mut self, dir: PathBuf, diff: Digest) -> Result<()> {
        if !dir.starts_with(&self.dir) {
            return Err(Error::invalid(
                dir.display().to_string(),
                "not in the transaction's directory",
            ));
        }
        self.lock_layer(&diff)?;
        if self.layers.contains_key(&diff) || self.store.layer_dir(&diff).is_dir() {
            remove_all(&dir)
        } else {
            self.layers.insert(diff, dir);
            Ok(())
        }
    }

    /// Make everything staged visible: blobs, layers, then index entries.
    pub fn commit(mut self) -> Result<()> {
        let store = self.store;
        for (d, p) in std::mem::take(&mut self.blobs) {
            if store.blobs.contains(&d) {
                continue;
            }
            fs::rename(&p, store.blobs.path(&d)).ctx(|| format!("blob {d}"))?;
        }
        sync_dir(store.blobs.dir())?;
        for (d, p) in std::mem::take(&mut self.layers) {
            let dest = store.layer_dir(&d);
            fs::rename(&p, &dest).ctx(|| format!("layer {d}"))?;
        }
        sync_dir(&store.root.join("layers"))?;
        let refs = std::mem::take(&mut self.refs);
        if !refs.is_empty() {
            store.update_index(|idx| {
                for r in refs {
                    add_ref(idx, r);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        let _ = remove_all(&self.dir);
    }
}
