//! `unionmount image …`, `import` and `commit`: thin wrappers over the
//! layerstore crate. Commands that make an image print its id as `image ls`
//! shows it (the first 12 digits of its config digest, as Docker's).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use layerstore::Store;
use layerstore::image::{self, SaveFormat};
use layerstore::serde_json;
use layerstore::store::{ImageInfo, layer_pairs};
use layerstore::unpack::Compression;

use crate::options::{OverlayOptions, UpperDirs};
use crate::store_dir::StoreDir;

/// Print a line; a closed stdout (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `image save`.
#[derive(Debug)]
pub struct SaveRequest {
    pub image: String,
    /// oci | oci-archive | docker-archive
    pub format: String,
    /// Output path (must not exist)
    pub out: PathBuf,
    /// Name recorded in the output (default: the image's name)
    pub ref_name: Option<String>,
    /// gzip, zstd or none (default: gzip)
    pub compression: Option<String>,
}

/// `import` and `image import`.
#[derive(Debug)]
pub struct ImportRequest {
    /// A root filesystem tar, `-` (a tar on standard input) or a directory
    pub path: PathBuf,
    /// Name of the new image
    pub tag: Option<String>,
    pub store: StoreDir,
}

/// `image mount`.
#[derive(Debug)]
pub struct ImageMount {
    pub image: String,
    pub mountpoint: PathBuf,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

/// `commit`.
#[derive(Debug)]
pub struct CommitRequest {
    /// Upper directory or container
    pub source: PathBuf,
    /// Name of the new image
    pub tag: Option<String>,
    /// The image the upper was mounted on
    pub from: Option<String>,
    pub store: StoreDir,
}

// Progress bars end with their task, before any error is printed.

/// Run `f` on `path`, or, for `-`, on a copy of standard input staged in
/// the store's tmp/ (which nobody cleans while this command holds the store).
fn with_input<T>(
    s: &Store,
    path: &Path,
    f: impl FnOnce(&Path) -> layerstore::Result<T>,
) -> anyhow::Result<T> {
    if path.as_os_str() != "-" {
        return Ok(f(path)?);
    }
    let p = s.tmp().join(format!("stdin-{}.tar", std::process::id()));
    let file = std::fs::File::create(&p).with_context(|| p.display().to_string())?;
    let mut w = s.progress().writer("reading standard input", None, file);
    let copied = std::io::copy(&mut std::io::stdin().lock(), &mut w);
    drop(w);
    let res = match copied {
        Ok(_) => f(&p).map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::anyhow!("reading standard input: {e}")),
    };
    let _ = std::fs::remove_file(&p);
    res
}

/// The id `image ls` shows for the image with manifest `manifest`.
fn short_id(s: &Store, manifest: &layerstore::Digest) -> anyhow::Result<String> {
    Ok(s.resolve(&manifest.to_string())?.id().short().to_string())
}

/// `image load`: `-` is an archive on standard input.
pub fn load(store: &StoreDir, path: &Path, tag: Option<&str>) -> anyhow::Result<()> {
    let s = store.open_or_create()?;
    for l in with_input(&s, path, |p| image::load(&s, p, tag))? {
        let id = short_id(&s, &l.manifest)?;
        match &l.name {
            Some(n) => say!("Loaded image: {n} ({id})"),
            None => say!("Loaded image ID: {id}"),
        }
    }
    Ok(())
}

/// `import` and `image import`: prints the new image's id.
pub fn import(req: ImportRequest) -> anyhow::Result<ExitCode> {
    let s = req.store.open_or_create()?;
    let d = with_input(&s, &req.path, |p| image::import(&s, p, req.tag.as_deref()))?;
    say!("{}", short_id(&s, &d)?);
    Ok(ExitCode::SUCCESS)
}

/// `image ls`.
pub fn list(store: &StoreDir, format: Option<&str>) -> anyhow::Result<()> {
    match store.listing_root()? {
        Some(_) => ls(Some(&store.open()?), format),
        // The default store, not made yet: no images.
        None => ls(None, format),
    }
}

/// `image inspect`.
pub fn inspect_image(store: &StoreDir, image: &str) -> anyhow::Result<()> {
    inspect(&store.open()?, image)
}

/// `image tag`.
pub fn tag(store: &StoreDir, image: &str, new: &str) -> anyhow::Result<()> {
    Ok(store.open()?.tag(image, new)?)
}

/// `image rm`.
pub fn remove(store: &StoreDir, images: &[String]) -> anyhow::Result<()> {
    let s = store.open()?;
    for i in images {
        let n = s.remove(i)?;
        say!(
            "Untagged {i} ({n} entr{})",
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

/// `--compression`: gzip unless told otherwise, as Docker and podman write
/// layers (Debian's umoci and older Docker read nothing else).
pub fn parse_compression(c: Option<&str>) -> anyhow::Result<Compression> {
    match c {
        None | Some("gzip") => Ok(Compression::Gzip),
        Some("zstd") => Ok(Compression::Zstd),
        Some("none") => Ok(Compression::None),
        Some(other) => bail!("--compression {other:?}: expected gzip, zstd or none"),
    }
}

/// `image save`.
pub fn save(store: &StoreDir, req: &SaveRequest) -> anyhow::Result<()> {
    let fmt: SaveFormat = req.format.parse()?;
    let compression = parse_compression(req.compression.as_deref())?;
    if fmt == SaveFormat::DockerArchive
        && compression != Compression::None
        && req.compression.is_some()
    {
        bail!(
            "image save: --compression applies to oci and oci-archive; docker-archive layers are plain tar, as docker save writes them"
        );
    }
    image::save(
        &store.open()?,
        &req.image,
        fmt,
        &req.out,
        req.ref_name.as_deref(),
        compression,
    )?;
    Ok(())
}

/// `image prune`.
pub fn prune(store: &StoreDir) -> anyhow::Result<()> {
    let r = store.open_exclusive()?.prune()?;
    let partial = match r.partial {
        0 => String::new(),
        n => format!(" and {n} partial downloads"),
    };
    say!(
        "Removed {} blobs ({}) and {} layers{partial}",
        r.blobs,
        human(r.bytes),
        r.layers
    );
    Ok(())
}

/// `image fsck [--repair]`.
pub fn fsck(store: &StoreDir, repair: bool) -> anyhow::Result<()> {
    let s = if repair {
        store.open_exclusive()?
    } else {
        store.open()?
    };
    let problems = s.fsck(repair)?;
    for p in &problems {
        say!("{p}");
    }
    if problems.is_empty() {
        say!("store {}: clean", s.root().display());
    } else if repair {
        let left = s.fsck(false)?;
        if !left.is_empty() {
            bail!(
                "store {}: {} problems remain after repair",
                s.root().display(),
                left.len()
            );
        }
        say!(
            "store {}: repaired {} problems",
            s.root().display(),
            problems.len()
        );
    } else {
        bail!(
            "store {}: {} problems (run with --repair)",
            s.root().display(),
            problems.len()
        );
    }
    Ok(())
}

/// `image mount`.
pub fn mount_image(store: &StoreDir, m: &ImageMount) -> anyhow::Result<ExitCode> {
    mount(
        &store.open()?,
        &m.image,
        &m.mountpoint,
        m.upper.as_deref(),
        m.work.as_deref(),
    )
}

pub fn commit(args: CommitRequest) -> anyhow::Result<ExitCode> {
    let s = args.store.open_or_create()?;
    let mut from = args.from.clone();
    let mut upper = args.source.clone();
    if !upper.is_dir() {
        // A container (name, id or id prefix): its upper and the image it was
        // made from. Also while it runs: the upper is read as it is now.
        let key = args.source.to_string_lossy();
        let dir = match crate::container::record::find(s.root(), &key) {
            Ok(c) if !key.contains('/') => c.dir,
            // A container directory without a runner's record (made by hand or
            // by an older version): its id names it.
            _ => s.container_dir(&key),
        };
        if key.contains('/') || !dir.join("upper").is_dir() {
            bail!(
                "commit {}: not a directory or a container",
                args.source.display()
            );
        }
        if from.is_none() {
            from = layerstore::store::containers::read_image_record(&dir).ok();
        }
        upper = dir.join("upper");
    }
    let d = layerstore::diff::commit(&s, &upper, args.tag.as_deref(), from.as_deref())?;
    say!("{}", short_id(&s, &d)?);
    Ok(ExitCode::SUCCESS)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ls(s: Option<&Store>, format: Option<&str>) -> anyhow::Result<()> {
    let entries = match s {
        Some(s) => s.entries()?,
        None => Vec::new(),
    };
    let name = |d: &image::Descriptor| d.ref_name().unwrap_or("<none>").to_string();
    match format {
        Some("json") => {
            let v: Vec<_> = entries
                .iter()
                .map(|(d, info)| match info {
                    Ok(i) => serde_json::json!({
                        "name": i.name,
                        "id": i.id().to_string(),
                        "digest": i.manifest_desc.digest.to_string(),
                        "layers": i.manifest.layers.len(),
                        "size": i.size,
                        "created": i.config.created,
                        // Where `pull` got it: the reference and the digest
                        // it resolved to (null for images made here).
                        "source": d.annotations.get(registry::pull::SOURCE_REF),
                        "sourceDigest": d.annotations.get(registry::pull::SOURCE_DIGEST),
                    }),
                    Err(e) => serde_json::json!({
                        "name": d.ref_name(),
                        "digest": d.digest.to_string(),
                        "error": e.to_string(),
                    }),
                })
                .collect();
            say!("{}", serde_json::to_string_pretty(&v)?);
        }
        None | Some("table") => {
            say!(
                "{:<40} {:<12} {:>6} {:>10}  CREATED",
                "NAME",
                "ID",
                "LAYERS",
                "SIZE"
            );
            for (d, info) in &entries {
                match info {
                    Ok(i) => say!(
                        "{:<40} {:<12} {:>6} {:>10}  {}",
                        name(d),
                        i.id().short(),
                        i.manifest.layers.len(),
                        human(i.size),
                        i.config.created.as_deref().unwrap_or("-")
                    ),
                    Err(e) => say!("{:<40} damaged: {e} (see image fsck)", name(d)),
                }
            }
        }
        Some(other) => bail!("image ls: unknown format {other:?} (expected json or table)"),
    }
    Ok(())
}

fn inspect(s: &Store, name: &str) -> anyhow::Result<()> {
    let info = s.resolve(name)?;
    let cfg_bytes = s.blobs().read_verified(&info.manifest.config.digest)?;
    // As stored, unknown fields and all: not an image type that would drop them.
    let config: serde_json::Value = serde_json::from_slice(&cfg_bytes)
        .with_context(|| format!("config {}", info.manifest.config.digest))?;
    let layers: Vec<_> = layer_pairs(&info)?
        .into_iter()
        .map(|(blob, diff)| {
            serde_json::json!({
                "blob": blob.to_string(),
                "diffId": diff.to_string(),
                "dir": s.layer_dir(&diff),
            })
        })
        .collect();
    let v = serde_json::json!({
        "name": info.name,
        "id": info.id().to_string(),
        "digest": info.manifest_desc.digest.to_string(),
        "manifest": info.manifest,
        "config": config,
        "layers": layers,
    });
    say!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The work directory beside `upper`: `.NAME.work` in the same parent (so on
/// the same filesystem, and not inside the upper), made if missing.
fn default_work(upper: &Path) -> anyhow::Result<PathBuf> {
    let upper =
        std::fs::canonicalize(upper).with_context(|| format!("upper {}", upper.display()))?;
    let (Some(parent), Some(name)) = (upper.parent(), upper.file_name()) else {
        bail!(
            "upper {}: needs --work (no parent directory)",
            upper.display()
        );
    };
    let mut w = std::ffi::OsString::from(".");
    w.push(name);
    w.push(".work");
    let work = parent.join(w);
    match std::fs::create_dir(&work) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && work.is_dir() => {}
        Err(e) => bail!("work directory {}: {e}", work.display()),
    }
    Ok(work)
}

fn mount(
    s: &Store,
    name: &str,
    mnt: &Path,
    upper: Option<&Path>,
    work: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let info: ImageInfo = s.resolve(name)?;
    let mut dirs = s.layer_dirs(&info)?;
    if dirs.is_empty() {
        bail!("image {name}: has no layers to mount");
    }
    // Mount options list the top layer first.
    dirs.reverse();
    let work = match (upper, work) {
        (Some(u), None) => Some(default_work(u)?),
        (_, w) => w.map(Path::to_path_buf),
    };
    let opts = OverlayOptions {
        lowers: dirs,
        upper: upper.zip(work).map(|(u, w)| UpperDirs {
            upper: u.to_path_buf(),
            work: w,
        }),
        ..OverlayOptions::default()
    }
    .encode()
    .with_context(|| format!("image mount {name}"))?;
    let exe = std::env::current_exe().context("finding the unionmount binary")?;
    let status = std::process::Command::new(exe)
        .arg("-o")
        .arg(&opts)
        .arg(mnt)
        .status()
        .with_context(|| format!("image mount {name}: starting the mount"))?;
    if !status.success() {
        bail!(
            "image mount {name} on {}: the mount failed ({status})",
            mnt.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
