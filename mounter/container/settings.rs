//! A container's settings as `export` carries them to another store, and the
//! container `import` makes of them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use layerstore::serde_json::{Value, json};

use super::create::{check_name, new_id, write_new};
use super::record::{self, Container, ContainersLock};

/// Version of the settings `settings` writes.
const SETTINGS_VERSION: u64 = 1;

/// What makes a container besides its image and its changes: its record
/// without the id, the creation time and this store's layer paths (what
/// `export` carries to another store). A host name that is the id is left
/// out, so that the new container gets its own id as host name.
pub fn settings(c: &Container) -> anyhow::Result<Value> {
    let mut v = c.to_value()?;
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "lowers", "created"] {
            o.remove(k);
        }
        if c.spec.hostname == c.id {
            o.insert("hostname".into(), Value::Null);
        }
        o.insert("version".into(), json!(SETTINGS_VERSION));
    }
    Ok(v)
}

/// How an imported container is made (see `create_imported`).
pub struct ImportPlan<'a> {
    /// The new container's id (`fresh_id`).
    pub id: String,
    /// Its name, instead of the one in the settings.
    pub name: Option<&'a str>,
    /// The image's name as shown, and the manifest digest that keeps it.
    pub image: String,
    pub manifest: String,
    /// The image's layer directories, bottom first.
    pub lowers: Vec<PathBuf>,
    /// Drop every volume (their host paths may not exist here).
    pub no_volumes: bool,
}

/// Make the container that `settings` describe, in the store at `root`, from
/// `staging` (a directory on the store's filesystem whose `upper` holds its
/// changes already): record, directories and /etc files are written there,
/// then the whole directory is renamed into `containers/`. A volume whose
/// host path is missing is an error, unless `plan.no_volumes`.
pub fn create_imported(
    root: &Path,
    staging: &Path,
    settings: &Value,
    plan: ImportPlan<'_>,
) -> anyhow::Result<Container> {
    let version = settings["version"].as_u64().unwrap_or(0);
    if version != SETTINGS_VERSION {
        bail!(
            "container settings version {version}: this unionmount reads version {SETTINGS_VERSION}"
        );
    }
    let name = match plan.name.or(settings["name"].as_str()) {
        Some(n) => n.to_string(),
        None => bail!("the archive names no container (use --name)"),
    };
    check_name(&name)?;
    let id = plan.id;
    let mut v = settings.clone();
    v["id"] = json!(id);
    v["name"] = json!(name);
    v["image"] = json!(plan.image);
    v["created"] = json!(record::now());
    v["lowers"] = json!(plan.lowers);
    if v["hostname"].as_str().is_none_or(str::is_empty) {
        v["hostname"] = json!(id);
    }
    if plan.no_volumes {
        v["volumes"] = json!([]);
    }
    let mut c = Container::from_value(staging, v)
        .map_err(|_| anyhow!("container settings: not a container record"))?;
    if c.spec.argv.is_empty() {
        bail!("container {name}: its settings have no command");
    }
    for vol in &c.spec.volumes {
        if !vol.host.exists() || !vol.ctr.is_absolute() {
            bail!(
                "volume {}:{}: {} does not exist here (create it, or import with --no-volumes)",
                vol.host.display(),
                vol.ctr.display(),
                vol.host.display()
            );
        }
    }
    let _lock = ContainersLock::take(root)?;
    if !record::name_is_free(root, &name)? {
        bail!("container name {name:?} is already in use (import with --name NEW)");
    }
    write_new(&c, &plan.manifest)?;
    let dest = record::new_dir(root, &id);
    fs::rename(staging, &dest)
        .with_context(|| format!("moving {} to {}", staging.display(), dest.display()))?;
    c.dir = dest;
    Ok(c)
}

/// A fresh container id (12 hex digits).
pub fn fresh_id() -> anyhow::Result<String> {
    new_id()
}
