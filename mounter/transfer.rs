//! `unionmount container save NAME OUT.tar` and `unionmount container load
//! IN.tar`: a container (its image, its changes, its settings) moved to
//! another store as one OCI archive (see `layerstore::container_archive` for
//! the format). Not `export`/`import`: those are Docker's words for a
//! container's filesystem as a tar and a root filesystem tar as an image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use layerstore::container_archive;
use layerstore::store::containers::read_image_record;

use crate::container::create::check_name;
use crate::container::record::{self, Container, find, read_state};
use crate::container::settings::{ImportPlan, create_imported, fresh_id, settings};
use crate::image_cmd::parse_compression;
use crate::store_dir::StoreDir;

/// Print a line; a closed stdout (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `unionmount container save`.
#[derive(Debug)]
pub struct ContainerSave {
    /// Container name or id (a running one is saved as it is now)
    pub container: String,
    /// The archive to write (an OCI archive; must not exist)
    pub out: PathBuf,
    /// gzip, zstd or none (default: gzip)
    pub compression: Option<String>,
    pub store: StoreDir,
}

/// `unionmount container load`.
#[derive(Debug)]
pub struct ContainerLoad {
    /// An archive written by `unionmount container save`
    pub archive: PathBuf,
    /// Name of the new container (default: the saved container's name)
    pub name: Option<String>,
    /// Leave out the saved container's volumes (host paths of the other machine)
    pub no_volumes: bool,
    pub store: StoreDir,
}

fn human(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let (mut v, mut unit) = (n as f64 / 1000.0, "kB");
    for u in ["MB", "GB"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

pub fn save(args: ContainerSave) -> anyhow::Result<ExitCode> {
    let compression = parse_compression(args.compression.as_deref())?;
    let store = args.store.open()?;
    let c = find(store.root(), &args.container)?;
    let base = read_image_record(&c.dir)
        .with_context(|| format!("container {}: its image record", c.name))?;
    let running = read_state(&c.dir).is_running();
    let e = container_archive::export(
        &store,
        &base,
        &c.upper(),
        &settings(&c)?,
        &c.name,
        &args.out,
        compression,
    )
    .with_context(|| format!("container save {}", c.name))?;
    say!(
        "Saved {} to {}: image {} + {} of changes{} ({} in all)",
        c.name,
        args.out.display(),
        c.image,
        human(e.changes_size),
        if running {
            " (a snapshot: it is running)"
        } else {
            ""
        },
        human(e.archive_size)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn load(args: ContainerLoad) -> anyhow::Result<ExitCode> {
    if let Some(n) = &args.name {
        check_name(n)?;
    }
    // It brings an image: a store may be made for it.
    let store = args.store.open_or_create()?;
    let root = store.root().to_path_buf();
    if let Some(n) = &args.name
        && !record::name_is_free(&root, n)?
    {
        bail!("container load: container name {n:?} is already in use");
    }
    // Everything is made under the store's tmp/ and renamed into
    // containers/ at the end: a failed import leaves no container behind.
    let id = fresh_id()?;
    let staging = root.join("tmp").join(format!("import-{id}"));
    fs::create_dir_all(staging.join("upper"))
        .with_context(|| format!("container load: {}", staging.display()))?;
    let res = make(&store, &args, &staging, id);
    if res.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    // (Errors about the archive name it themselves.)
    let (c, imported) = res.context("container load")?;
    say!(
        "Loaded {} ({}) from {}: image {}, {} changed paths",
        c.name,
        c.id,
        args.archive.display(),
        c.image,
        imported.changes
    );
    Ok(ExitCode::SUCCESS)
}

fn make(
    store: &layerstore::Store,
    args: &ContainerLoad,
    staging: &Path,
    id: String,
) -> anyhow::Result<(Container, container_archive::Imported)> {
    let imported = container_archive::import(store, &args.archive, &staging.join("upper"), true)?;
    let base = imported.base.to_string();
    let info = store.resolve(&base)?;
    let lowers = store.layer_dirs(&info)?;
    let image = match (&imported.base_name, imported.tagged) {
        (Some(n), true) => n.clone(),
        _ => base.clone(),
    };
    if !imported.tagged
        && let Some(n) = &imported.base_name
    {
        eprintln!(
            "unionmount: container load: image {n} names another image in this store; the container's image stays untagged ({base})"
        );
    }
    let plan = ImportPlan {
        id,
        name: args.name.as_deref(),
        image,
        manifest: base,
        lowers,
        no_volumes: args.no_volumes,
    };
    let c = create_imported(store.root(), staging, &imported.settings, plan)?;
    Ok((c, imported))
}
