//! Making a container: its record, directories, `/etc` files and `init/`
//! layer, from an image (`create`) or from exported settings (`settings`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use layerstore::Store;
use layerstore::serde_json::{self, Value};
use layerstore::store::containers::write_image_record;

use super::record::{self, Container, ContainersLock, Network, Spec, Volume};
use crate::cgroup::Limits;
use crate::store_dir::StoreDir;

/// What `run`, `create` and `bundle` ask for.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    /// Remove the container when it ends
    pub rm: bool,
    /// Name of the container (default: its id)
    pub name: Option<String>,
    /// K=V, or K to take it from here
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// UID[:GID] or a name from the image's /etc/passwd
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// HOST:CTR or HOST:CTR:ro
    pub volumes: Vec<String>,
    pub network: Network,
    pub limits: Limits,
    pub read_only: bool,
    pub init: bool,
    /// A terminal for the command (`-t`)
    pub tty: bool,
    /// Its stdin attached (`-i`)
    pub interactive: bool,
    pub store: StoreDir,
    /// Image name or id
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    pub cmd: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_volume(spec: &str) -> anyhow::Result<Volume> {
    let bad = |why: &str| anyhow!("-v {spec}: {why} (expected HOST:CTR or HOST:CTR:ro)");
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, ctr, read_only) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        [_, _, m] => return Err(bad(&format!("unknown mode {m:?}"))),
        _ => return Err(bad("wrong number of fields")),
    };
    if !host.starts_with('/') || !ctr.starts_with('/') {
        return Err(bad("both paths must be absolute"));
    }
    if ctr.trim_end_matches('/').is_empty() {
        return Err(bad("cannot mount over the container's /"));
    }
    if ctr.split('/').any(|c| c == "..") {
        return Err(bad("the container path must not contain .."));
    }
    let host = fs::canonicalize(host).map_err(|e| bad(&format!("{host}: {e}")))?;
    Ok(Volume {
        host,
        ctr: PathBuf::from(ctr),
        read_only,
    })
}

pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("--name {name:?}: use letters, digits, '_', '.' and '-' (first a letter or digit)");
    }
    Ok(())
}

pub(super) fn new_id() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    let mut f = fs::File::open("/dev/urandom").context("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).context("/dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The image's `config` object: Entrypoint, Cmd, Env, WorkingDir, User.
/// Read as plain JSON: five fields are wanted, and an image type that drops or
/// rejects unknown fields would refuse images that carry newer ones.
fn image_config(s: &Store, info: &layerstore::store::ImageInfo) -> anyhow::Result<Value> {
    let bytes = s.blobs().read_verified(&info.manifest.config.digest)?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("image config {}", info.manifest.config.digest))?;
    Ok(v.get("config").cloned().unwrap_or(Value::Null))
}

/// Make a container: record, directories, /etc files. Nothing is mounted yet.
pub fn create(args: &CreateRequest) -> anyhow::Result<Container> {
    let volumes = args
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(n) = &args.name {
        check_name(n)?;
    }
    if let Some(w) = args.workdir.as_deref().filter(|w| !w.starts_with('/')) {
        bail!("--workdir {w}: not an absolute path");
    }
    let store = Store::open(&args.store.canonical_root()?)?;
    let info = store.resolve(&args.image)?;
    let lowers = store.layer_dirs(&info)?;
    if lowers.is_empty() {
        bail!("image {}: has no layers", args.image);
    }
    let cfg = image_config(&store, &info)?;
    let mut argv = strings(&cfg["Entrypoint"]);
    argv.extend(if args.cmd.is_empty() {
        strings(&cfg["Cmd"])
    } else {
        args.cmd.clone()
    });
    if argv.is_empty() {
        bail!(
            "run {}: no command given and the image has no Entrypoint or Cmd",
            args.image
        );
    }
    let mut env = strings(&cfg["Env"]);
    for e in &args.env {
        let kv = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        set_env(&mut env, &kv);
    }
    let root = store.root().to_path_buf();
    let _lock = ContainersLock::take(&root)?;
    let containers = record::list_in(&root)?;
    let id = new_id()?;
    let name = args.name.clone().unwrap_or_else(|| id.clone());
    if containers.iter().any(|c| c.name == name || c.id == name) {
        bail!("container name {name:?} is already in use (unionmount rm {name})");
    }
    let hostname = args.hostname.clone().unwrap_or_else(|| id.clone());
    let c = Container {
        dir: record::new_dir(&root, &id),
        id,
        name,
        image: args.image.clone(),
        created: record::now(),
        spec: Spec {
            lowers,
            argv,
            env,
            workdir: args
                .workdir
                .clone()
                .or_else(|| cfg["WorkingDir"].as_str().map(str::to_string))
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            user: args
                .user
                .clone()
                .or_else(|| cfg["User"].as_str().map(str::to_string))
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0".into()),
            hostname,
            volumes,
            network: args.network,
            limits: args.limits,
            read_only: args.read_only,
            init: args.init,
            auto_remove: args.rm,
            tty: args.tty,
            interactive: args.interactive,
        },
    };
    let made = write_new(&c, &info.manifest_desc.digest.to_string());
    if made.is_err() {
        let _ = fs::remove_dir_all(&c.dir);
    }
    made?;
    Ok(c)
}

fn set_env(env: &mut Vec<String>, kv: &str) {
    let key = kv.split('=').next().unwrap_or(kv);
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(kv.to_string());
}

pub(super) fn write_new(c: &Container, manifest: &str) -> anyhow::Result<()> {
    for d in [c.dir.clone(), c.upper(), c.work(), c.merged(), c.init()] {
        fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
    }
    write_init_layer(c)?;
    write_image_record(&c.dir, manifest).context("container image file")?;
    let h = &c.spec.hostname;
    fs::write(c.dir.join("hostname"), format!("{h}\n")).context("container hostname file")?;
    fs::write(
        c.dir.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{h}\n"
        ),
    )
    .context("container hosts file")?;
    let resolv = match c.spec.network {
        Network::Host => fs::read("/etc/resolv.conf").unwrap_or_default(),
        Network::None => Vec::new(),
    };
    fs::write(c.dir.join("resolv.conf"), resolv).context("container resolv.conf")?;
    record::write_new_record(c)
}

/// The container's own lowest-but-one layer, `init/`, on top of the image's:
/// the mount points the runner needs (/proc, /dev, /sys, the /etc files, volume
/// targets, the working directory), so that none of them is written into the
/// upper and none ends up in a commit. Directories that the image has too get
/// the image's owner and mode (the top layer's attributes are the ones shown).
fn write_init_layer(c: &Container) -> anyhow::Result<()> {
    let init = c.init();
    let mut dirs: Vec<PathBuf> = ["proc", "dev", "sys", "etc"].map(PathBuf::from).to_vec();
    let mut files: Vec<PathBuf> = ["etc/hostname", "etc/hosts", "etc/resolv.conf"]
        .map(PathBuf::from)
        .to_vec();
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
    let wd = rel(Path::new(&c.spec.workdir));
    if !wd.as_os_str().is_empty()
        && !wd.components().any(|x| x.as_os_str() == "..")
        && !hides_image_file(&c.spec.lowers, &wd)
    {
        dirs.push(wd);
    }
    for v in &c.spec.volumes {
        if v.host.is_dir() {
            dirs.push(rel(&v.ctr));
        } else {
            files.push(rel(&v.ctr));
        }
    }
    for f in &files {
        if let Some(parent) = f.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for d in &dirs {
        let mut at = PathBuf::new();
        for part in d.components() {
            at.push(part);
            let p = init.join(&at);
            if fs::symlink_metadata(&p).is_err() {
                fs::create_dir(&p).with_context(|| p.display().to_string())?;
                like_image(&c.spec.lowers, &at, &p);
            }
        }
    }
    for f in &files {
        let p = init.join(f);
        if fs::symlink_metadata(&p).is_err() {
            fs::File::create(&p).with_context(|| p.display().to_string())?;
        }
    }
    Ok(())
}

/// Is some part of `rel` a file or symlink in the image (in the top-most
/// layer that has that part)? A directory made there in `init/` would hide
/// it: a working directory that is a file must fail as one.
fn hides_image_file(lowers: &[PathBuf], rel: &Path) -> bool {
    let mut at = PathBuf::new();
    for part in rel.components() {
        at.push(part);
        let top = lowers
            .iter()
            .rev()
            .find_map(|l| fs::symlink_metadata(l.join(&at)).ok());
        match top {
            Some(m) if !m.is_dir() => return true,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

/// Give `made` the owner and mode of `rel` in the image's top-most layer that
/// has it as a directory (reached without following any symlink).
fn like_image(lowers: &[PathBuf], rel: &Path, made: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    for l in lowers.iter().rev() {
        let mut at = l.clone();
        let mut ok = true;
        for part in rel.components() {
            at.push(part);
            ok = fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir());
            if !ok {
                break;
            }
        }
        if ok && let Ok(m) = fs::symlink_metadata(&at) {
            let _ = std::os::unix::fs::lchown(made, Some(m.uid()), Some(m.gid()));
            let _ = fs::set_permissions(made, m.permissions());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v = parse_volume("/tmp:/data:ro").unwrap();
        assert!(v.read_only);
        assert_eq!(v.ctr, PathBuf::from("/data"));
        assert!(parse_volume("/tmp:/data").is_ok_and(|v| !v.read_only));
        for bad in [
            "/tmp",
            "tmp:/data",
            "/tmp:data",
            "/tmp:/data:xx",
            "/tmp:/a/../b",
            "/a:/b:ro:x",
            "/does/not/exist:/x",
            "/tmp:/",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_env() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        set_env(&mut env, "A=2");
        assert_eq!(env, ["PATH=/bin", "A=2"]);
    }
}
