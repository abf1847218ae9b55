//! Image formats: OCI manifests, configs and indexes; reading an OCI layout
//! (directory or archive) or a `docker save` archive; writing them back out.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::blobs::{self, MAX_JSON};
use crate::digest::Digest;
use crate::unpack::{Compression, split_path};
use crate::{Context, Error, Result};

mod load;
mod outgoing;
mod recompress;
mod save;

pub use load::{Loaded, import, load, new_config, store_image};
pub use outgoing::{OutBlob, Outgoing, outgoing};
pub(crate) use recompress::recompress;
pub use save::{SaveFormat, save};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker's foreign layer: a Windows base layer registries need not serve.
pub const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    /// Where a foreign (non-distributable) layer lives besides registries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: Vec::new(),
        }
    }

    /// A foreign layer (Docker's Windows base layers, OCI's
    /// non-distributable types) that names where else it lives. Docker
    /// does not push these, and keeps their blobs as they are.
    pub fn is_foreign(&self) -> bool {
        let t = &self.media_type;
        !self.urls.is_empty() && (t == DOCKER_FOREIGN || t.contains(".nondistributable."))
    }

    pub fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// An OCI image index (also the store's `index.json`).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
            other: Map::new(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2: same shape).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The parts of an image config the store reads. The config itself is kept
/// byte for byte.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct ConfigView {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    pub rootfs: RootFs,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, format!("bad JSON: {e}")))
}

/// `m` with other layer blobs than its own (recompressed, or the store's
/// blob of the same diff id): an OCI manifest, since the new layers may be
/// of OCI types. Its descriptor and exact bytes. The config is unchanged,
/// so the image id is too.
pub fn relayered(mut m: Manifest, layers: Vec<Descriptor>) -> (Descriptor, Vec<u8>, Manifest) {
    m.layers = layers;
    m.media_type = Some(OCI_MANIFEST.to_string());
    m.config.media_type = OCI_CONFIG.to_string();
    let bytes = to_json(&m);
    let desc = Descriptor::new(OCI_MANIFEST, Digest::of_bytes(&bytes), bytes.len() as u64);
    (desc, bytes, m)
}

pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Accept a layer media type, or say why not.
pub fn check_layer_type(media_type: &str, what: &str) -> Result<()> {
    const OK: &[&str] = &[
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        DOCKER_FOREIGN,
    ];
    if OK.contains(&media_type) {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("unsupported layer media type {media_type:?}"),
        ))
    }
}

/// The OCI layer media type for a compression.
pub fn layer_type(c: Compression) -> &'static str {
    match c {
        Compression::None => OCI_LAYER,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    }
}

/// The GOARCH name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Pick the manifest for this machine from an index's entries.
pub fn pick_platform<'a>(list: &'a [Descriptor], what: &str) -> Result<&'a Descriptor> {
    let matches = |d: &&Descriptor| {
        d.platform.as_ref().is_none_or(|p| {
            p.get("architecture").and_then(Value::as_str) == Some(host_arch())
                && p.get("os")
                    .and_then(Value::as_str)
                    .is_none_or(|o| o == "linux")
        })
    };
    list.iter()
        .filter(|d| is_manifest(&d.media_type))
        .find(matches)
        .ok_or_else(|| Error::invalid(what, format!("no manifest for linux/{}", host_arch())))
}

/// Where image files come from: an OCI layout directory, or the files of an
/// archive staged into a private directory.
pub enum Source {
    Dir(PathBuf),
    Archive(ArchiveFiles),
}

/// Regular files of an archive, staged, by normalized path; symlinks by target.
pub struct ArchiveFiles {
    files: HashMap<String, Staged>,
    links: HashMap<String, String>,
    name: String,
}

pub struct Staged {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

impl Source {
    /// Open an image source: a directory (OCI layout) or a tar archive
    /// (OCI archive or docker-archive), which is staged into `tmp`.
    pub fn open(path: &Path, tmp: &Path, progress: &crate::progress::Progress) -> Result<Source> {
        let meta = fs::metadata(path).at(path)?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).at(path)?;
        let name = path.display().to_string();
        let total = crate::progress::file_len(&file);
        let file = progress.reader(&format!("reading {}", path.display()), total, file);
        let (_, plain) = crate::unpack::decompress(file).at(path)?;
        let mut ar = tar::Archive::new(crate::unpack::HeaderGuard::new(plain));
        // A compressed archive may expand without bound: each file staged
        // must leave the staging filesystem its reserve.
        let tmp_dir = File::open(tmp).at(tmp)?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let bad = |e: io::Error| {
            Error::invalid(
                &name,
                format!(
                    "not a readable tar archive: {}",
                    crate::unpack::tar_error(&e)
                ),
            )
        };
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path_bytes().into_owned();
            let Ok(comps) = split_path(&raw) else {
                continue;
            };
            let key = comps.join(&b'/');
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let expected = entry.size();
                    crate::unpack::check_room(
                        std::os::fd::AsFd::as_fd(&tmp_dir),
                        expected,
                        &format!("{name}: {key}"),
                    )?;
                    let (digest, size, staged) =
                        blobs::stage_hashed(tmp, &mut entry, &format!("{name}: {key}"))?;
                    if size != expected {
                        let _ = fs::remove_file(&staged);
                        return Err(Error::invalid(&name, format!("{key}: truncated")));
                    }
                    files.insert(
                        key,
                        Staged {
                            path: staged,
                            digest,
                            size,
                        },
                    );
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Link
                        || target.starts_with('/')
                    {
                        target
                    } else {
                        match key.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target,
                        }
                    };
                    if let Some(r) = lexical(&resolved) {
                        links.insert(key, r);
                    }
                }
                _ => {}
            }
        }
        Ok(Source::Archive(ArchiveFiles { files, links, name }))
    }

    pub fn name(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Archive(a) => a.name.clone(),
        }
    }

    fn staged(&self, rel: &str) -> Option<&Staged> {
        let Source::Archive(a) = self else {
            return None;
        };
        let mut key = normalize(rel)?;
        for _ in 0..16 {
            if let Some(s) = a.files.get(&key) {
                return Some(s);
            }
            key = normalize(a.links.get(&key)?)?;
        }
        None
    }

    pub fn exists(&self, rel: &str) -> bool {
        match self {
            Source::Dir(root) => normalize(rel).is_some_and(|k| root.join(k).is_file()),
            Source::Archive(_) => self.staged(rel).is_some(),
        }
    }

    /// Open a file of the source by relative path.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        let what = || format!("{}: {rel}", self.name());
        match self {
            Source::Dir(root) => {
                let key = normalize(rel).ok_or_else(|| Error::invalid(what(), "bad path"))?;
                let dir = File::open(root).at(root)?;
                let fd = rustix::fs::openat2(
                    &dir,
                    key.as_str(),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                    rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|e| match e {
                    rustix::io::Errno::NOENT => Error::not_found(what()),
                    rustix::io::Errno::XDEV => {
                        Error::invalid(what(), "a symlink that leads out of the layout")
                    }
                    e => Error::Io {
                        what: what(),
                        error: e.into(),
                    },
                })?;
                Ok(File::from(fd))
            }
            Source::Archive(_) => {
                let s = self.staged(rel).ok_or_else(|| Error::not_found(what()))?;
                File::open(&s.path).at(&s.path)
            }
        }
    }

    /// Read a small file (JSON) whole.
    pub fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_file(rel)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("{}: {rel}", self.name()))?;
        if buf.len() as u64 > MAX_JSON {
            return Err(Error::invalid(
                format!("{}: {rel}", self.name()),
                "too large",
            ));
        }
        Ok(buf)
    }

    /// A staged archive file whose content is known to hash to `d`, which can
    /// be renamed into place instead of copied.
    pub fn take_staged(&self, rel: &str, d: &Digest) -> Option<PathBuf> {
        let s = self.staged(rel)?;
        (s.digest == *d && s.path.exists()).then(|| s.path.clone())
    }

    /// The digest and size of a staged archive file.
    pub fn staged_digest(&self, rel: &str) -> Option<(Digest, u64)> {
        self.staged(rel).map(|s| (s.digest.clone(), s.size))
    }
}

/// Normalize a path inside an image source; `None` if it leaves the source.
fn normalize(rel: &str) -> Option<String> {
    let comps = split_path(rel.as_bytes()).ok()?;
    let s = String::from_utf8(comps.join(&b'/')).ok()?;
    (!s.is_empty()).then_some(s)
}

/// Resolve `.` and `..` in a path inside an archive without leaving it.
fn lexical(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    (!out.is_empty()).then(|| out.join("/"))
}

pub fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct DockerEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// Writes the files of an image directory or archive.
pub enum Sink {
    Dir(PathBuf),
    Tar(tar::Builder<File>),
}

impl Sink {
    pub fn add_bytes(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        self.add_reader(rel, bytes.len() as u64, &mut &bytes[..])
    }

    pub fn add_file(&mut self, rel: &str, src: &Path) -> Result<()> {
        match self {
            Sink::Dir(root) => {
                let dest = root.join(rel);
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).at(p)?;
                }
                // A copy (a reflink where the filesystem shares extents), never
                // a hard link: editing the output must not touch the store.
                let from = File::open(src).at(src)?;
                let to = File::create(&dest).at(&dest)?;
                if rustix::fs::ioctl_ficlone(&to, &from).is_err() {
                    drop(to);
                    fs::copy(src, &dest).at(&dest)?;
                }
                Ok(())
            }
            Sink::Tar(_) => {
                let mut f = File::open(src).at(src)?;
                let len = f.metadata().at(src)?.len();
                self.add_reader(rel, len, &mut f)
            }
        }
    }

    pub fn add_reader(&mut self, rel: &str, len: u64, r: &mut dyn Read) -> Result<()> {
        match self {
            Sink::Dir(root) => {
                let dest = root.join(rel);
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).at(p)?;
                }
                let mut f = File::create(&dest).at(&dest)?;
                io::copy(r, &mut f).at(&dest)?;
                Ok(())
            }
            Sink::Tar(b) => {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(len);
                h.set_mtime(0);
                b.append_data(&mut h, rel, r.take(len))
                    .ctx(|| rel.to_string())
            }
        }
    }

    /// Finish the output (flush the archive, fsync).
    pub fn finish(self) -> Result<()> {
        match self {
            Sink::Dir(_) => Ok(()),
            Sink::Tar(b) => {
                let mut f = b.into_inner().ctx(|| "archive".to_string())?;
                f.flush().ctx(|| "archive".to_string())?;
                f.sync_all().ctx(|| "archive".to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_manifest_and_config() {
        let d = Digest::of_bytes(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{d}","size":1}}],"annotations":{{"a":"b"}}}}"#
        );
        let parsed: Manifest = parse_json(m.as_bytes(), "m").unwrap();
        assert_eq!(parsed.layers.len(), 1);
        assert!(parsed.other.contains_key("annotations"));
        let back: Manifest = parse_json(&to_json(&parsed), "m").unwrap();
        assert_eq!(back.config, parsed.config);
        let bad = m.replace(&d.to_string(), "sha256:1234");
        assert!(parse_json::<Manifest>(bad.as_bytes(), "m").is_err());
        let c: ConfigView = parse_json(
            format!(
                r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
            )
            .as_bytes(),
            "c",
        )
        .unwrap();
        assert_eq!(c.rootfs.diff_ids, vec![d]);
    }

    #[test]
    fn layer_types() {
        assert!(check_layer_type(OCI_LAYER_ZSTD, "l").is_ok());
        assert!(check_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip", "l").is_ok());
        let e = check_layer_type("text/plain", "layer x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer x") && e.contains("text/plain"), "{e}");
    }

    #[test]
    fn resolves_archive_links() {
        assert_eq!(lexical("a/../b/layer.tar").as_deref(), Some("b/layer.tar"));
        assert_eq!(lexical("a/./b").as_deref(), Some("a/b"));
        assert_eq!(lexical("../x"), None);
        assert_eq!(lexical("a/../.."), None);
    }

    #[test]
    fn normalizes_source_paths() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("."), None);
    }
}
