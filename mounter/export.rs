//! `unionmount export CONTAINER [-o FILE]`, as `docker export`: the
//! container's filesystem (its image with its changes) as one plain tar.
//!
//! The container's layers are mounted read-only through our own binary, its
//! upper on top as one more lower (overlay whiteouts and opaque directories
//! in it then hide what they hide), and the merged tree is written as a
//! layer would be. A running container is exported as it is now.

use std::fs::{self, File};
use std::io::{self, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use layerstore::Store;
use layerstore::diff::{DiffOptions, tree_to_layer};
use rustix::mount::{UnmountFlags, unmount};

use crate::container::record::{Container, find};
use crate::options::OverlayOptions;
use crate::store_dir::StoreDir;

/// `unionmount export`.
#[derive(Debug)]
pub struct ExportRequest {
    /// Container name or id
    pub container: String,
    /// Where the tar goes (default: standard output)
    pub out: Option<PathBuf>,
    pub store: StoreDir,
}

pub fn export(req: ExportRequest) -> anyhow::Result<ExitCode> {
    if req.out.is_none() && io::stdout().is_terminal() {
        bail!(
            "export {}: refusing to write a tar to a terminal (use -o FILE or redirect)",
            req.container
        );
    }
    let store = req.store.open()?;
    let c = find(store.root(), &req.container)?;
    let what = || format!("export {}", c.name);
    let layer = {
        let m = MergedView::mount(&c).with_context(what)?;
        let opts = DiffOptions {
            progress: store.progress().clone(),
            ..DiffOptions::plain()
        };
        tree_to_layer(&m.dir, store.tmp(), &opts).with_context(what)?
    };
    let res = write_out(&store, &layer.path, req.out.as_deref());
    let _ = fs::remove_file(&layer.path);
    res.with_context(what)?;
    Ok(ExitCode::SUCCESS)
}

/// The layer file (zstd) uncompressed to `out`, or to standard output.
fn write_out(store: &Store, layer: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let (_, mut tar) = layerstore::unpack::decompress(File::open(layer)?)?;
    let Some(out) = out else {
        let mut stdout = io::stdout().lock();
        io::copy(&mut tar, &mut stdout)?;
        return Ok(stdout.flush()?);
    };
    // Written beside the target and renamed: never half a tar under its name.
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file name", out.display()))?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".{}.tmp", std::process::id()));
    let staging = out.with_file_name(staging_name);
    let res = (|| -> anyhow::Result<()> {
        let mut f = File::create(&staging).with_context(|| out.display().to_string())?;
        let mut w = store.progress().writer("writing tar", None, &mut f);
        io::copy(&mut tar, &mut w).with_context(|| out.display().to_string())?;
        drop(w);
        f.sync_all()?;
        fs::rename(&staging, out).with_context(|| out.display().to_string())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&staging);
    }
    res
}

/// A read-only mount of a container's layers and upper in a directory of
/// its own; unmounted (its daemon then exits) and removed on drop.
struct MergedView {
    dir: PathBuf,
}

impl MergedView {
    fn mount(c: &Container) -> anyhow::Result<MergedView> {
        let dir =
            std::env::temp_dir().join(format!("unionmount-export-{}-{}", std::process::id(), c.id));
        fs::create_dir(&dir).with_context(|| dir.display().to_string())?;
        let view = MergedView { dir };
        let init = c.init();
        let opts = OverlayOptions {
            lowers: [c.upper()]
                .into_iter()
                .chain(init.is_dir().then_some(init))
                .chain(c.spec.lowers.iter().rev().cloned())
                .collect(),
            userxattr: crate::confine::in_user_namespace(),
            ..OverlayOptions::default()
        }
        .encode()?;
        let exe = std::env::current_exe().context("finding the unionmount binary")?;
        let status = Command::new(exe)
            .arg("-o")
            .arg(&opts)
            .arg(&view.dir)
            .stdin(Stdio::null())
            .status()
            .context("starting the mount")?;
        if !status.success() {
            // Not mounted: drop removes the directory, finding nothing to unmount.
            bail!("mounting its layers failed ({status})");
        }
        Ok(view)
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        if unmount(&self.dir, UnmountFlags::empty()).is_err() {
            let _ = unmount(&self.dir, UnmountFlags::DETACH);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}
