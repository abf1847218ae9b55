//! The `Store` facade: layout, locking, references (tags in `index.json`),
//! transactions that make new content visible all at once, garbage
//! collection and fsck.
//!
//! Garbage collection and fsck are in `gc`, transactions in `txn`, the
//! containers' part of the layout in `containers`.
//!
//! Locks (all `flock`): `lock` is held shared by every command and exclusive
//! by `prune` and `fsck --repair`; the first command that finds nobody else
//! holding it cleans `tmp/`. `locks/index.lock` serializes updates of
//! `index.json`; `locks/layer-<diffid>.lock` makes sure a layer is unpacked
//! once however many imports want it at the same time.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::blobs::{Blobs, MAX_JSON};
use crate::digest::Digest;
use crate::image::{self, ConfigView, Descriptor, Index, Manifest, REF_NAME};
use crate::progress::Progress;
use crate::unpack::UnpackOptions;
use crate::util::{Lock, remove_all, write_atomic};
use crate::{Context, Error, Result};

pub mod containers;
mod gc;
mod holds;
mod txn;

pub use holds::ChainLayer;

pub use gc::PruneReport;
pub use txn::Txn;

/// An open store.
pub struct Store {
    root: PathBuf,
    blobs: Blobs,
    tmp: PathBuf,
    opts: UnpackOptions,
    progress: Progress,
    /// Opened with `open_exclusive`: no other command uses the store.
    exclusive: bool,
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

    /// Is there a store at `root`? Its `index.json` is written when it is made.
    pub fn exists(root: &Path) -> bool {
        root.join("index.json").is_file()
    }

    /// Open (creating if needed) the store at `root` for ordinary commands.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, false, || {})
    }

    /// Open the store alone: waits until no other command uses it.
    pub fn open_exclusive(root: &Path) -> Result<Store> {
        Store::open_with(root, true, || {})
    }

    /// `open_exclusive`, calling `waiting` first when other commands hold
    /// the store (so that a caller can say why it does not return yet).
    pub fn open_exclusive_or_say(root: &Path, waiting: impl FnOnce()) -> Result<Store> {
        Store::open_with(root, true, waiting)
    }

    fn open_with(root: &Path, exclusive: bool, waiting: impl FnOnce()) -> Result<Store> {
        for d in [
            "blobs/sha256",
            "layers",
            "tmp",
            "containers",
            "locks",
            "partial",
            "holds",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx(|| format!("store {}: {d}", root.display()))?;
        }
        let root = fs::canonicalize(root).at(root)?;
        let tmp = root.join("tmp");
        let lock_path = root.join("lock");
        let lock = if exclusive {
            let l = match Lock::try_exclusive(&lock_path)? {
                Some(l) => l,
                None => {
                    waiting();
                    Lock::exclusive(&lock_path)?
                }
            };
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
            exclusive,
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

    /// Blobs being downloaded (`partial/<hex>`: the first bytes of the blob
    /// of that digest). Kept across commands so a pull resumes; not part of
    /// any image until a transaction adopts them; `prune` removes them.
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn layer_lock(&self, d: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("layer-{}.lock", d.hex()))
    }

    /// Refuse an operation that needs the store alone.
    fn need_exclusive(&self, what: &str) -> Result<()> {
        if self.exclusive {
            Ok(())
        } else {
            Err(Error::invalid(
                what,
                "needs the store opened with open_exclusive",
            ))
        }
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

    /// Every entry of the index with its image, or why it cannot be read
    /// (so a listing can show the damaged ones too).
    pub fn entries(&self) -> Result<Vec<(Descriptor, Result<ImageInfo>)>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .map(|d| {
                let info = self.info(&d);
                (d, info)
            })
            .collect())
    }

    /// Find an image by tag (`NAME`, or `NAME:latest` for a bare name), by
    /// a unique prefix of its id (the config digest, as `image ls` shows it;
    /// any length, as Docker takes it), or by its manifest digest or a prefix
    /// of it of 12+ digits. An ambiguous prefix is an error listing the images.
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
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let by_manifest = hex.len() >= 12;
            let mut found: Vec<ImageInfo> = Vec::new();
            for d in &idx.manifests {
                let Ok(info) = self.info(d) else { continue };
                let hit = info.id().hex().starts_with(&hex)
                    || by_manifest
                        && (d.digest.hex().starts_with(&hex)
                            || info.manifest_desc.digest.hex().starts_with(&hex));
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
                _ => {
                    return Err(Error::invalid(
                        format!("image {name}"),
                        format!("ambiguous id prefix, matches {}", candidates(&found)),
                    ));
                }
            }
        }
        // A full manifest digest of an untagged image that a container still
        // holds (`containers/<id>/image`).
        if let Ok(d) = Digest::parse(name)
            && self.blobs.contains(&d)
            && let Ok(info) = self.info(&Descriptor::new(image::OCI_MANIFEST, d, 0))
        {
            return Ok(info);
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
}

/// The images an ambiguous prefix matches, as `image ls` shows them: short
/// id and name (or manifest digest, for two manifests of one config).
fn candidates(found: &[ImageInfo]) -> String {
    found
        .iter()
        .map(|i| match &i.name {
            Some(n) => format!("{} ({n})", i.id().short()),
            None => format!(
                "{} (manifest {})",
                i.id().short(),
                i.manifest_desc.digest.short()
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    fn adopted_layers_appear_at_commit_once() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("s")).unwrap();
        assert!(store.partial_dir().is_dir(), "made with the store");
        let diff = Digest::of_bytes(b"layer");
        let mut txn = Txn::new(&store).unwrap();
        let outside = t.path().join("elsewhere");
        fs::create_dir(&outside).unwrap();
        assert!(txn.adopt_layer(outside, diff.clone()).is_err());
        for n in 0..2 {
            let dir = txn.dir().join(format!("tree{n}"));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("f"), format!("{n}")).unwrap();
            txn.adopt_layer(dir.clone(), diff.clone()).unwrap();
            // The second tree of the same layer is dropped at once.
            assert_eq!(dir.exists(), n == 0);
        }
        assert!(
            !store.layer_dir(&diff).exists(),
            "not visible before commit"
        );
        txn.commit().unwrap();
        assert_eq!(
            fs::read_to_string(store.layer_dir(&diff).join("f")).unwrap(),
            "0"
        );
    }

    #[test]
    fn checks_tags() {
        assert!(check_tag("localhost/img:v3").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a b").is_err());
        assert!(check_tag("sha256:abc").is_err());
    }
}
