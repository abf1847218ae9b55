//! `unionmount image …` and `unionmount commit`: thin wrappers over the layerstore crate.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use layerstore::Store;
use layerstore::image::{self, SaveFormat};
use layerstore::progress::{Observer, Progress};
use layerstore::serde_json;
use layerstore::store::{ImageInfo, layer_pairs};
use layerstore::unpack::Compression;

/// Print a line; a closed stdout (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Where the store is: `--store DIR`, else `UNIONMOUNT_STORE`, else the default.
#[derive(Args, Clone, Debug)]
pub struct StoreArg {
    /// Store directory (default: $UNIONMOUNT_STORE, /var/lib/unionmount as root,
    /// $XDG_DATA_HOME/unionmount otherwise)
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

impl StoreArg {
    fn root(&self) -> anyhow::Result<PathBuf> {
        match &self.store {
            Some(p) => Ok(p.clone()),
            None => Ok(Store::default_root()?),
        }
    }

    pub fn open(&self) -> anyhow::Result<Store> {
        let mut s = Store::open(&self.root()?)?;
        s.set_progress(terminal_progress());
        Ok(s)
    }

    fn open_exclusive(&self) -> anyhow::Result<Store> {
        let mut s = Store::open_exclusive(&self.root()?)?;
        s.set_progress(terminal_progress());
        Ok(s)
    }
}

/// Progress bars on a terminal (stderr); nothing otherwise.
fn terminal_progress() -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::default();
    }
    Progress::new(Arc::new(Bars::default()))
}

/// Draws the store's progress reports with indicatif: one bar per task
/// (bytes of a known total), or a spinner with the byte count and rate. A
/// task gets drawn only once it has passed [`SHOW_AFTER`] bytes, so small
/// blobs do not flicker.
#[derive(Default)]
struct Bars(Mutex<Task>);

#[derive(Default)]
struct Task {
    what: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

const SHOW_AFTER: u64 = 1 << 20;

impl Bars {
    fn task(&self) -> std::sync::MutexGuard<'_, Task> {
        // A poisoned lock only means a panic elsewhere: the state is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Task {
    fn bar(&self, done: u64) -> ProgressBar {
        let target = ProgressDrawTarget::stderr();
        let bar = match self.total {
            Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
                ProgressStyle::with_template(
                    "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg}: {binary_bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.with_message(self.what.clone()).with_position(done)
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        let mut t = self.task();
        t.clear();
        t.what = what.to_string();
        t.total = total;
    }

    fn advance(&self, done: u64) {
        let mut t = self.task();
        if t.bar.is_none() && done >= SHOW_AFTER {
            t.bar = Some(t.bar(done));
        }
        if let Some(bar) = &t.bar {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        self.task().clear();
    }
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load images from a docker-archive tar, an OCI archive tar or an OCI layout directory.
    Load {
        /// The archive or directory (`-`: an archive on standard input)
        path: PathBuf,
        /// Name the (single) image instead of using the names in the source
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Make a one-layer image from a root filesystem (tar, tar.gz, tar.zst or directory).
    Import {
        /// The root filesystem
        path: PathBuf,
        /// Name of the new image
        #[arg(long)]
        tag: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List images.
    Ls {
        /// `json` for scripts
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image's manifest, config and layer directories as JSON.
    Inspect {
        image: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Give an image another name.
    Tag {
        image: String,
        new: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove image names (by id: every name of that image). Content goes with `prune`.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Write an image out: oci (directory), oci-archive or docker-archive (tar).
    Save {
        image: String,
        /// oci | oci-archive | docker-archive
        #[arg(long)]
        format: String,
        /// Output path (must not exist)
        out: PathBuf,
        /// Name recorded in the output (default: the image's name)
        #[arg(long = "ref")]
        ref_name: Option<String>,
        /// Recompress OCI layers: gzip (readable by every tool), zstd or none
        #[arg(long, value_name = "gzip|zstd|none")]
        compress: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove blobs and layers that no image or container uses.
    Prune {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Re-hash blobs and check unpacked layers.
    Fsck {
        /// Remove damaged blobs and re-unpack missing or damaged layers
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Mount an image's layers (read-only, or with --upper/--work) through unionmount.
    Mount {
        image: String,
        mountpoint: PathBuf,
        /// Writable upper directory
        #[arg(long)]
        upper: Option<PathBuf>,
        /// Work directory on the same filesystem as the upper (default: a
        /// hidden sibling of the upper, `.NAME.work`, made if missing)
        #[arg(long, requires = "upper")]
        work: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Args)]
pub struct CommitArgs {
    /// Upper directory or container
    pub source: PathBuf,
    /// Name of the new image
    #[arg(long)]
    pub tag: String,
    /// The image the upper was mounted on (needed for directory redirects)
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run an image command. Progress bars end with their task, before any
/// error is printed.
pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Load { path, tag, store } => {
            let s = store.open()?;
            // `-`: an archive on standard input, staged in the store's tmp/
            // (which nobody cleans while this command holds the store).
            let stdin_copy = (path.as_os_str() == "-")
                .then(|| s.tmp().join(format!("stdin-{}.tar", std::process::id())));
            if let Some(p) = &stdin_copy {
                let f = std::fs::File::create(p).with_context(|| p.display().to_string())?;
                let mut w = s.progress().writer("reading standard input", None, f);
                let copied = std::io::copy(&mut std::io::stdin().lock(), &mut w);
                drop(w);
                if let Err(e) = copied {
                    let _ = std::fs::remove_file(p);
                    bail!("reading standard input: {e}");
                }
            }
            let loaded = image::load(&s, stdin_copy.as_deref().unwrap_or(&path), tag.as_deref());
            if let Some(p) = &stdin_copy {
                let _ = std::fs::remove_file(p);
            }
            for l in loaded? {
                say!(
                    "Loaded image {} ({})",
                    l.name.as_deref().unwrap_or("<none>"),
                    l.manifest
                );
            }
        }
        ImageCommand::Import { path, tag, store } => {
            let s = store.open()?;
            let d = image::import(&s, &path, &tag)?;
            say!("Imported {tag} ({d})");
        }
        ImageCommand::Ls { format, store } => ls(&store.open()?, format.as_deref())?,
        ImageCommand::Inspect { image, store } => inspect(&store.open()?, &image)?,
        ImageCommand::Tag { image, new, store } => store.open()?.tag(&image, &new)?,
        ImageCommand::Rm { images, store } => {
            let s = store.open()?;
            for i in images {
                let n = s.remove(&i)?;
                say!(
                    "Untagged {i} ({n} entr{})",
                    if n == 1 { "y" } else { "ies" }
                );
            }
        }
        ImageCommand::Save {
            image,
            format,
            out,
            ref_name,
            compress,
            store,
        } => {
            let fmt: SaveFormat = format.parse()?;
            let compress = match compress.as_deref() {
                None => None,
                Some("gzip") => Some(Compression::Gzip),
                Some("zstd") => Some(Compression::Zstd),
                Some("none") => Some(Compression::None),
                Some(other) => {
                    bail!("image save: --compress {other:?}: expected gzip, zstd or none")
                }
            };
            image::save(
                &store.open()?,
                &image,
                fmt,
                &out,
                ref_name.as_deref(),
                compress,
            )?;
        }
        ImageCommand::Prune { store } => {
            let r = store.open_exclusive()?.prune()?;
            say!(
                "Removed {} blobs ({}) and {} layers",
                r.blobs,
                human(r.bytes),
                r.layers
            );
        }
        ImageCommand::Fsck { repair, store } => {
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
        }
        ImageCommand::Mount {
            image,
            mountpoint,
            upper,
            work,
            store,
        } => {
            return mount(
                &store.open()?,
                &image,
                &mountpoint,
                upper.as_deref(),
                work.as_deref(),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn commit(args: CommitArgs) -> anyhow::Result<ExitCode> {
    let s = args.store.open()?;
    let mut from = args.from.clone();
    let mut upper = args.source.clone();
    if !upper.is_dir() {
        // A container (name, id or id prefix): its upper and the image it was
        // made from. Also while it runs: the upper is read as it is now.
        let key = args.source.to_string_lossy();
        let dir = match crate::container::find(s.root(), &key) {
            Ok(c) if !key.contains('/') => c.dir,
            // A container directory without a runner's record (made by hand or
            // by an older version): its id names it.
            _ => s.root().join("containers").join(key.as_ref()),
        };
        if key.contains('/') || !dir.join("upper").is_dir() {
            bail!(
                "commit {}: not a directory or a container",
                args.source.display()
            );
        }
        if from.is_none() {
            from = std::fs::read_to_string(dir.join("image"))
                .ok()
                .map(|t| t.trim().to_string());
        }
        upper = dir.join("upper");
    }
    let d = layerstore::diff::commit(&s, &upper, &args.tag, from.as_deref())?;
    say!("Committed {} ({d})", args.tag);
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

fn ls(s: &Store, format: Option<&str>) -> anyhow::Result<()> {
    let entries = s.entries()?;
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
    let option_path = |p: &Path| -> anyhow::Result<String> {
        let t = p.to_string_lossy().into_owned();
        if t.contains([':', ',', '\\']) {
            bail!("{t}: a path with ':', ',' or '\\' cannot go in mount options");
        }
        Ok(t)
    };
    let lowers = dirs
        .iter()
        .map(|d| option_path(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut opts = format!("lowerdir={}", lowers.join(":"));
    let work = match (upper, work) {
        (Some(u), None) => Some(default_work(u)?),
        (_, w) => w.map(Path::to_path_buf),
    };
    if let (Some(u), Some(w)) = (upper, work.as_deref()) {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            option_path(u)?,
            option_path(w)?
        ));
    }
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
