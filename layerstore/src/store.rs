//! The `Store` facade: layout, locking, references (tags in `index.json`),
//! transactions that make new content visible all at once, garbage
//! collection and fsck.
//!
//! Locks (all `flock`): `lock` is held shared by every command and exclusive
//! by `prune` and `fsck --repair`; the first command that finds nobody else
//! holding it cleans `tmp/`. `locks/index.lock` serializes updates of
//! `index.json`; `locks/layer-<diffid>.lock` makes sure a layer is unpacked
//! once however many imports want it at the same time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::blobs::{Blobs, MAX_JSON};
use crate::digest::Digest;
use crate::image::{self, ConfigView, Descriptor, Index, Manifest, REF_NAME};
use crate::progress::Progress;
use crate::unpack::{self, UnpackOptions};
use crate::util::{Lock, mkdir_unique, remove_all, sync_dir, write_atomic};
use crate::{Context, Error, Result};

/// An open store.
pub struct Store {
    root: PathBuf,
    blobs: Blobs,
    tmp: PathBuf,
    opts: UnpackOptions,
    progress: Progress,
    _lock: Lock,
}

/// One image as `image ls` and `image inspect` see it.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// The tag, if the index entry has one.
    pub name: Option<String>,
    /// The manifest's descriptor (for a multi-platform entry, the chosen one).
    pub manifest_desc: Descriptor,
    pub manifest: Manifest,
    pub config: ConfigView,
    /// Compressed size: config plus layers.
    pub size: u64,
}

impl ImageInfo {
    /// Docker's image id: the config digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }
}

/// What `prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

impl Store {
    /// `UNIONMOUNT_STORE`, else `/var/lib/unionmount` as root, else
    /// `$XDG_DATA_HOME/unionmount` (or `~/.local/share/unionmount`).
    pub fn default_root() -> Result<PathBuf> {
        if let Some(v) = std::env::var_os("UNIONMOUNT_STORE").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(v));
        }
        if rustix::process::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/unionmount"));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
        {
            return Ok(x.join("unionmount"));
        }
        match std::env::var_os("HOME") {
            Some(h) => Ok(PathBuf::from(h).join(".local/share/unionmount")),
            None => Err(Error::invalid(
                "store",
                "no HOME or XDG_DATA_HOME; pass --store DIR",
            )),
        }
    }

    /// Open (creating if needed) the store at `root` for ordinary commands.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, false)
    }

    /// Open the store alone: waits until no other command uses it.
    pub fn open_exclusive(root: &Path) -> Result<Store> {
        Store::open_with(root, true)
    }

    fn open_with(root: &Path, exclusive: bool) -> Result<Store> {
        for d in ["blobs/sha256", "layers", "tmp", "containers", "locks"] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx(|| format!("store {}: {d}", root.display()))?;
        }
        let root = fs::canonicalize(root).at(root)?;
        let tmp = root.join("tmp");
        let lock_path = root.join("lock");
        let lock = if exclusive {
            let l = Lock::exclusive(&lock_path)?;
            clean_tmp(&tmp)?;
            l
        } else if let Some(l) = Lock::try_exclusive(&lock_path)? {
            clean_tmp(&tmp)?;
            l.downgrade(&lock_path)?;
            l
        } else {
            Lock::shared(&lock_path)?
        };
        let store = Store {
            blobs: Blobs::new(&root),
            tmp,
            opts: UnpackOptions::for_current_user(),
            progress: Progress::default(),
            _lock: lock,
            root,
        };
        store.init_layout()?;
        Ok(store)
    }

    fn init_layout(&self) -> Result<()> {
        let layout = self.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&self.tmp, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let _l = Lock::exclusive(&self.index_lock())?;
        let index = self.root.join("index.json");
        if !index.exists() {
            write_atomic(&self.tmp, &index, &image::to_json(&Index::default()))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    pub fn unpack_options(&self) -> UnpackOptions {
        self.opts
    }

    /// Override how layers are unpacked (tests use the rootless form as root).
    pub fn set_unpack_options(&mut self, opts: UnpackOptions) {
        self.opts = opts;
    }

    /// Report progress of long operations to `p`.
    pub fn set_progress(&mut self, p: Progress) {
        self.progress = p;
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn index_lock(&self) -> PathBuf {
        self.root.join("locks").join("index.lock")
    }

    /// The store's `index.json`.
    pub fn index(&self) -> Result<Index> {
        let p = self.root.join("index.json");
        let mut buf = Vec::new();
        File::open(&p)
            .at(&p)?
            .take(MAX_JSON)
            .read_to_end(&mut buf)
            .at(&p)?;
        image::parse_json(&buf, &p.display().to_string())
    }

    /// Read-modify-write `index.json` under its lock, atomically.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _l = Lock::exclusive(&self.index_lock())?;
        let mut idx = self.index()?;
        let out = f(&mut idx)?;
        write_atomic(
            &self.tmp,
            &self.root.join("index.json"),
            &image::to_json(&idx),
        )?;
        Ok(out)
    }

    /// A verified manifest, following a multi-platform index to this machine's entry.
    pub fn manifest(&self, desc: &Descriptor) -> Result<(Descriptor, Manifest)> {
        let mut desc = desc.clone();
        for _ in 0..4 {
            let bytes = self.blobs.read_verified(&desc.digest)?;
            let what = format!("manifest {}", desc.digest);
            if image::is_index(&desc.media_type) {
                let idx: Index = image::parse_json(&bytes, &what)?;
                desc = image::pick_platform(&idx.manifests, &what)?.clone();
                continue;
            }
            return Ok((desc, image::parse_json(&bytes, &what)?));
        }
        Err(Error::invalid(
            format!("manifest {}", desc.digest),
            "indexes nested too deep",
        ))
    }

    fn info(&self, entry: &Descriptor) -> Result<ImageInfo> {
        let (manifest_desc, manifest) = self.manifest(entry)?;
        let cfg = self.blobs.read_verified(&manifest.config.digest)?;
        let config: ConfigView =
            image::parse_json(&cfg, &format!("config {}", manifest.config.digest))?;
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        Ok(ImageInfo {
            name: entry.ref_name().map(str::to_string),
            manifest_desc,
            manifest,
            config,
            size,
        })
    }

    /// Every image in the index (an entry that cannot be read is an error).
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        self.index()?
            .manifests
            .iter()
            .map(|d| self.info(d))
            .collect()
    }

    /// Find an image by tag (`NAME`, or `NAME:latest` for a bare name), by
    /// manifest or config digest, or by a hex prefix of either (4+ digits).
    pub fn resolve(&self, name: &str) -> Result<ImageInfo> {
        let idx = self.index()?;
        for want in [name.to_string(), format!("{name}:latest")] {
            if let Some(d) = idx
                .manifests
                .iter()
                .find(|d| d.ref_name() == Some(want.as_str()))
            {
                return self.info(d);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<ImageInfo> = Vec::new();
            for d in &idx.manifests {
                let Ok(info) = self.info(d) else { continue };
                let hit = d.digest.hex().starts_with(hex)
                    || info.manifest_desc.digest.hex().starts_with(hex)
                    || info.id().hex().starts_with(hex);
                if hit
                    && !found
                        .iter()
                        .any(|f| f.manifest_desc.digest == info.manifest_desc.digest)
                {
                    found.push(info);
                }
            }
            match found.len() {
                0 => {}
                1 => return Ok(found.remove(0)),
                n => {
                    return Err(Error::invalid(
                        format!("image {name}"),
                        format!("ambiguous: {n} images match"),
                    ));
                }
            }
        }
        Err(Error::not_found(format!("image {name}")))
    }

    /// Give an image one more tag (moving the tag if another image had it).
    pub fn tag(&self, name: &str, new: &str) -> Result<()> {
        check_tag(new)?;
        let info = self.resolve(name)?;
        self.update_index(|idx| {
            let mut d = info.manifest_desc.clone();
            d.annotations.insert(REF_NAME.to_string(), new.to_string());
            add_ref(idx, d);
            Ok(())
        })
    }

    /// Remove a tag, or (by id) every tag of an image. Content stays until `prune`.
    pub fn remove(&self, name: &str) -> Result<usize> {
        let info = self.resolve(name)?;
        self.update_index(|idx| {
            let before = idx.manifests.len();
            let by_tag = info.name.as_deref() == Some(name)
                || info.name.as_deref() == Some(&format!("{name}:latest"));
            idx.manifests.retain(|d| {
                if by_tag {
                    d.ref_name() != info.name.as_deref()
                } else {
                    d.digest != info.manifest_desc.digest
                        && self
                            .manifest(d)
                            .map(|(m, _)| m.digest != info.manifest_desc.digest)
                            .unwrap_or(true)
                }
            });
            Ok(before - idx.manifests.len())
        })
    }

    /// The layer directories of an image, bottom first, unpacking any layer
    /// that is missing (an image written into the store by another tool).
    pub fn layer_dirs(&self, info: &ImageInfo) -> Result<Vec<PathBuf>> {
        let pairs = layer_pairs(info)?;
        let missing: Vec<_> = pairs
            .iter()
            .filter(|(_, d)| !self.layer_dir(d).is_dir())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let mut txn = Txn::new(self)?;
            txn.unpack_layers(&missing)?;
            txn.commit()?;
        }
        Ok(pairs.iter().map(|(_, d)| self.layer_dir(d)).collect())
    }

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
        Ok((blobs, layers))
    }

    /// Manifests that containers were made from: `containers/<id>/image`
    /// holds a manifest digest.
    fn container_images(&self) -> Result<Vec<Descriptor>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)?.flatten() {
            let Ok(text) = fs::read_to_string(e.path().join("image")) else {
                continue;
            };
            if let Ok(d) = Digest::parse(text.trim())
                && self.blobs.contains(&d)
            {
                out.push(Descriptor::new(image::OCI_MANIFEST, d, 0));
            }
        }
        Ok(out)
    }

    /// Remove blobs and layers that nothing reaches. Needs `open_exclusive`.
    pub fn prune(&self) -> Result<PruneReport> {
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
                remove_all(&self.layer_dir(&d))?;
                let _ = fs::remove_file(self.layer_lock(&d));
                report.layers += 1;
            }
        }
        Ok(report)
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

    fn layer_lock(&self, d: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("layer-{}.lock", d.hex()))
    }

    /// Re-hash every blob and check every image's layers. With `repair`,
    /// corrupt blobs are removed and missing or damaged layers re-unpacked
    /// (needs `open_exclusive`). Returns the problems found (and, with
    /// `repair`, what could not be fixed is still an error).
    pub fn fsck(&self, repair: bool) -> Result<Vec<String>> {
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
                remove_all(&self.layer_dir(d))?;
            }
            let mut txn = Txn::new(self)?;
            txn.unpack_layers(&relayer)?;
            txn.commit()?;
        }
        Ok(problems)
    }
}

/// (layer blob, diff id) for each layer of an image, bottom first.
pub fn layer_pairs(info: &ImageInfo) -> Result<Vec<(Digest, Digest)>> {
    let ids = &info.config.rootfs.diff_ids;
    if ids.len() != info.manifest.layers.len() {
        return Err(Error::invalid(
            format!("config {}", info.manifest.config.digest),
            format!(
                "{} diff_ids for {} layers",
                ids.len(),
                info.manifest.layers.len()
            ),
        ));
    }
    Ok(info
        .manifest
        .layers
        .iter()
        .zip(ids)
        .map(|(l, d)| (l.digest.clone(), d.clone()))
        .collect())
}

/// A tag must be non-empty, printable and without whitespace.
pub fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 255
        && tag.chars().all(|c| c.is_ascii_graphic())
        && !tag.starts_with("sha256:");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("tag {tag:?}"),
            "must be 1-255 printable ASCII characters without spaces",
        ))
    }
}

/// Add a manifest entry to an index: a tagged entry replaces the entry that
/// had the tag; an untagged one is added once.
pub fn add_ref(idx: &mut Index, desc: Descriptor) {
    match desc.ref_name().map(str::to_string) {
        Some(tag) => {
            idx.manifests.retain(|d| d.ref_name() != Some(tag.as_str()));
            // An untagged entry for the same manifest is now redundant.
            idx.manifests
                .retain(|d| !(d.ref_name().is_none() && d.digest == desc.digest));
        }
        None => {
            if idx.manifests.iter().any(|d| d.digest == desc.digest) {
                return;
            }
        }
    }
    idx.manifests.push(desc);
}

fn clean_tmp(tmp: &Path) -> Result<()> {
    for e in fs::read_dir(tmp).at(tmp)? {
        let e = e.at(tmp)?;
        remove_all(&e.path())?;
    }
    Ok(())
}

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
        let mut r = self.store.progress.reader(what, r);
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
            if !self.locked.contains(diff) {
                self.locks
                    .push(Lock::exclusive(&self.store.layer_lock(diff))?);
                self.locked.insert(diff.clone());
            }
            let what = format!("layer blob {blob}");
            let mismatch = |actual| Error::DigestMismatch {
                what: format!("{what} (uncompressed)"),
                expected: diff.clone(),
                actual,
            };
            if self.layers.contains_key(diff) || self.store.layer_dir(diff).is_dir() {
                // Unpacked already: this blob must still be that layer.
                let r = self.store.progress.reader(
                    &format!("checking layer {}", diff.short()),
                    self.open_blob(blob)?,
                );
                let (actual, _) = unpack::diff_id_of(r).ctx(|| what.clone())?;
                if &actual != diff {
                    return Err(mismatch(actual));
                }
                continue;
            }
            let dest = self.dir.join(format!("layer-{}", diff.hex()));
            fs::create_dir(&dest).at(&dest)?;
            let r = self.store.progress.reader(
                &format!("unpacking layer {}", diff.short()),
                self.open_blob(blob)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_replace_and_untagged_dedupe() {
        let mut idx = Index::default();
        let a = Descriptor::new(image::OCI_MANIFEST, Digest::of_bytes(b"a"), 1);
        let b = Descriptor::new(image::OCI_MANIFEST, Digest::of_bytes(b"b"), 1);
        add_ref(&mut idx, a.clone());
        add_ref(&mut idx, a.clone());
        assert_eq!(idx.manifests.len(), 1);
        let mut at = a.clone();
        at.annotations.insert(REF_NAME.into(), "t".into());
        add_ref(&mut idx, at);
        assert_eq!(idx.manifests.len(), 1);
        let mut bt = b.clone();
        bt.annotations.insert(REF_NAME.into(), "t".into());
        add_ref(&mut idx, bt);
        assert_eq!(idx.manifests.len(), 1);
        assert_eq!(idx.manifests[0].digest, b.digest);
    }

    #[test]
    fn checks_tags() {
        assert!(check_tag("localhost/img:v3").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a b").is_err());
        assert!(check_tag("sha256:abc").is_err());
    }
}
