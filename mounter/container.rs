//! Containers in the store: create, start, stop, list, remove; the record.
//!
//! ```text
//! STORE/containers/<id>/
//!   image          the manifest digest (keeps the image from `image prune`)
//!   config.json    name, image, and everything `start` needs (see `Spec`)
//!   state.json     status, the runner's pid, the container's pid 1, cgroups, exit code
//!   upper/ work/   the container's changes and the union's workdir
//!   init/          mount points (/proc, /dev, /sys, /etc files, volume targets),
//!                  a layer over the image's so that they stay out of the upper
//!   merged/        the union's mountpoint (mounted only inside the container's
//!                  mount namespace, never on the host)
//!   hostname hosts resolv.conf    bind-mounted over the container's /etc files
//! ```

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use layerstore::Store;
use layerstore::serde_json::{self, Value, json};

use crate::cgroup::{self, Limits};
use crate::image_cmd::StoreArg;

/// Print a line; a closed stdout (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// A network namespace of its own with only a loopback device
    None,
    /// The host's network
    Host,
}

/// `run` and `create`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it ends
    #[arg(long)]
    pub rm: bool,
    /// Name of the container (default: its id)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (K=V, or K to take it from here)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID] or a name from the image's /etc/passwd
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Host name inside the container (default: the container's id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Bind-mount a host directory or file: HOST:CTR or HOST:CTR:ro
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<String>,
    /// Network: none (default, loopback only) or host
    #[arg(long, value_enum, default_value = "none")]
    pub network: Network,
    /// Memory limit in bytes (k, m, g suffixes); over it the container is OOM-killed
    #[arg(long, value_parser = cgroup::parse_bytes, value_name = "BYTES")]
    pub memory: Option<u64>,
    /// Most processes the container may have at once
    #[arg(long = "pids-limit", value_name = "N")]
    pub pids_limit: Option<u64>,
    /// Mount the container's root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Run a small init as pid 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    #[command(flatten)]
    pub store: StoreArg,
    /// Image name or id
    pub image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// A host path bound into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub ctr: PathBuf,
    pub read_only: bool,
}

/// Everything `start` needs, fixed at `create`.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Layer directories, bottom first.
    pub lowers: Vec<PathBuf>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    pub volumes: Vec<Volume>,
    pub network: Network,
    pub limits: Limits,
    pub read_only: bool,
    pub init: bool,
    pub auto_remove: bool,
}

/// A container of the store.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub dir: PathBuf,
    pub created: u64,
    pub spec: Spec,
}

impl Container {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    /// The container's mount points, a layer between the image and the upper.
    pub fn init(&self) -> PathBuf {
        self.dir.join("init")
    }
}

/// What `state.json` says.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// created, running or exited
    pub status: String,
    pub runner: Option<(i32, u64)>,
    pub pid1: Option<(i32, u64)>,
    pub cgroups: Vec<PathBuf>,
    pub exit_code: Option<i32>,
}

impl State {
    fn to_json(&self) -> Value {
        json!({
            "status": self.status,
            "runner": self.runner.map(|(p, t)| json!([p, t])),
            "pid": self.pid1.map(|(p, t)| json!([p, t])),
            "cgroups": self.cgroups,
            "exitCode": self.exit_code,
        })
    }

    fn from_json(v: &Value) -> State {
        let pid = |k: &str| {
            let a = v.get(k)?.as_array()?;
            Some((
                i32::try_from(a.first()?.as_i64()?).ok()?,
                a.get(1)?.as_u64()?,
            ))
        };
        State {
            status: v["status"].as_str().unwrap_or("unknown").to_string(),
            runner: pid("runner"),
            pid1: pid("pid"),
            cgroups: strings(&v["cgroups"])
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            exit_code: v["exitCode"].as_i64().and_then(|c| i32::try_from(c).ok()),
        }
    }
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The store's directory, with symlinks resolved (records hold canonical paths).
pub fn store_root(arg: &StoreArg) -> anyhow::Result<PathBuf> {
    let root = match &arg.store {
        Some(p) => p.clone(),
        None => Store::default_root()?,
    };
    Ok(fs::canonicalize(&root).unwrap_or(root))
}

/// Write `path` through a temporary name and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    f.write_all(bytes)
        .with_context(|| tmp.display().to_string())?;
    fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

pub fn write_state(c: &Container, st: &State) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(&st.to_json())?;
    write_atomic(&c.dir.join("state.json"), &bytes)
}

pub fn read_state(dir: &Path) -> State {
    fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| State::from_json(&v))
        .unwrap_or_else(|| State {
            status: "unknown".into(),
            ..State::default()
        })
}

/// `/proc/PID/stat`'s state letter and start time.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// `/proc/PID/stat`'s start time: with the pid, it names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// The process still runs: same pid and start time, and not a zombie (a
/// runner killed -9 stays one until its parent reaps it).
fn alive(p: Option<(i32, u64)>) -> bool {
    p.is_some_and(|(pid, t)| {
        proc_stat(pid).is_some_and(|(state, start)| start == t && !matches!(state, 'Z' | 'X'))
    })
}

/// A container is running while its runner is.
pub fn is_running(st: &State) -> bool {
    st.status == "running" && alive(st.runner)
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

fn new_id() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    let mut f = fs::File::open("/dev/urandom").context("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).context("/dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The image's `config` object: Entrypoint, Cmd, Env, WorkingDir, User.
fn image_config(s: &Store, info: &layerstore::store::ImageInfo) -> anyhow::Result<Value> {
    let bytes = s.blobs().read_verified(&info.manifest.config.digest)?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("image config {}", info.manifest.config.digest))?;
    Ok(v.get("config").cloned().unwrap_or(Value::Null))
}

/// Exclusive lock over the containers directory while names are checked.
struct ContainersLock(#[allow(dead_code)] fs::File);

impl ContainersLock {
    fn take(root: &Path) -> anyhow::Result<ContainersLock> {
        let p = root.join("locks").join("containers.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .with_context(|| p.display().to_string())?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)
            .with_context(|| p.display().to_string())?;
        Ok(ContainersLock(f))
    }
}

/// Make a container: record, directories, /etc files. Nothing is mounted yet.
pub fn create(args: &RunArgs) -> anyhow::Result<Container> {
    let volumes = args
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(n) = &args.name {
        check_name(n)?;
    }
    let store = Store::open(&store_root(&args.store)?)?;
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
    let containers = list_in(&root)?;
    let id = new_id()?;
    let name = args.name.clone().unwrap_or_else(|| id.clone());
    if containers.iter().any(|c| c.name == name || c.id == name) {
        bail!("container name {name:?} is already in use (unionmount rm {name})");
    }
    let hostname = args.hostname.clone().unwrap_or_else(|| id.clone());
    let c = Container {
        dir: root.join("containers").join(&id),
        id,
        name,
        image: args.image.clone(),
        created: now(),
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
            limits: Limits {
                memory: args.memory,
                pids: args.pids_limit,
            },
            read_only: args.read_only,
            init: args.init,
            auto_remove: args.rm,
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

fn write_new(c: &Container, manifest: &str) -> anyhow::Result<()> {
    for d in [c.dir.clone(), c.upper(), c.work(), c.merged(), c.init()] {
        fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
    }
    write_init_layer(c)?;
    fs::write(c.dir.join("image"), format!("{manifest}\n")).context("container image file")?;
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
    write_atomic(
        &c.dir.join("config.json"),
        &serde_json::to_vec_pretty(&to_json(c))?,
    )?;
    write_state(
        c,
        &State {
            status: "created".into(),
            ..State::default()
        },
    )
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
    if !wd.as_os_str().is_empty() && !wd.components().any(|x| x.as_os_str() == "..") {
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

fn to_json(c: &Container) -> Value {
    let s = &c.spec;
    json!({
        "id": c.id,
        "name": c.name,
        "image": c.image,
        "created": c.created,
        "lowers": s.lowers,
        "argv": s.argv,
        "env": s.env,
        "workdir": s.workdir,
        "user": s.user,
        "hostname": s.hostname,
        "volumes": s.volumes.iter().map(|v| json!({
            "host": v.host, "ctr": v.ctr, "readOnly": v.read_only,
        })).collect::<Vec<_>>(),
        "network": match s.network { Network::None => "none", Network::Host => "host" },
        "memory": s.limits.memory,
        "pidsLimit": s.limits.pids,
        "readOnly": s.read_only,
        "init": s.init,
        "autoRemove": s.auto_remove,
    })
}

/// Version of the settings `settings` writes.
const SETTINGS_VERSION: u64 = 1;

/// What makes a container besides its image and its changes: its record
/// without the id, the creation time and this store's layer paths (what
/// `export` carries to another store). A host name that is the id is left
/// out, so that the new container gets its own id as host name.
pub fn settings(c: &Container) -> Value {
    let mut v = to_json(c);
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "lowers", "created"] {
            o.remove(k);
        }
        if c.spec.hostname == c.id {
            o.insert("hostname".into(), Value::Null);
        }
        o.insert("version".into(), json!(SETTINGS_VERSION));
    }
    v
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
    v["created"] = json!(now());
    v["lowers"] = json!(plan.lowers);
    if v["hostname"].as_str().is_none_or(str::is_empty) {
        v["hostname"] = json!(id);
    }
    if plan.no_volumes {
        v["volumes"] = json!([]);
    }
    let mut c = from_json(staging, &v)
        .ok_or_else(|| anyhow!("container settings: not a container record"))?;
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
    if list_in(root)?
        .iter()
        .any(|o| o.name == name || o.id == name)
    {
        bail!("container name {name:?} is already in use (import with --name NEW)");
    }
    write_new(&c, &plan.manifest)?;
    let dest = root.join("containers").join(&id);
    fs::rename(staging, &dest)
        .with_context(|| format!("moving {} to {}", staging.display(), dest.display()))?;
    c.dir = dest;
    Ok(c)
}

/// Is `name` free for a new container in the store at `root`?
pub fn name_is_free(root: &Path, name: &str) -> anyhow::Result<bool> {
    Ok(!list_in(root)?
        .iter()
        .any(|o| o.name == name || o.id == name))
}

/// A fresh container id (12 hex digits).
pub fn fresh_id() -> anyhow::Result<String> {
    new_id()
}

fn from_json(dir: &Path, v: &Value) -> Option<Container> {
    Some(Container {
        id: v["id"].as_str()?.to_string(),
        name: v["name"].as_str()?.to_string(),
        image: v["image"].as_str().unwrap_or("").to_string(),
        dir: dir.to_path_buf(),
        created: v["created"].as_u64().unwrap_or(0),
        spec: Spec {
            lowers: strings(&v["lowers"])
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            argv: strings(&v["argv"]),
            env: strings(&v["env"]),
            workdir: v["workdir"].as_str().unwrap_or("/").to_string(),
            user: v["user"].as_str().unwrap_or("0").to_string(),
            hostname: v["hostname"].as_str().unwrap_or("").to_string(),
            volumes: v["volumes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            Some(Volume {
                                host: PathBuf::from(x["host"].as_str()?),
                                ctr: PathBuf::from(x["ctr"].as_str()?),
                                read_only: x["readOnly"].as_bool().unwrap_or(false),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            network: if v["network"].as_str() == Some("host") {
                Network::Host
            } else {
                Network::None
            },
            limits: Limits {
                memory: v["memory"].as_u64(),
                pids: v["pidsLimit"].as_u64(),
            },
            read_only: v["readOnly"].as_bool().unwrap_or(false),
            init: v["init"].as_bool().unwrap_or(false),
            auto_remove: v["autoRemove"].as_bool().unwrap_or(false),
        },
    })
}

fn load(dir: &Path) -> Option<Container> {
    let bytes = fs::read(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    from_json(dir, &v)
}

fn list_in(root: &Path) -> anyhow::Result<Vec<Container>> {
    let dir = root.join("containers");
    let mut out: Vec<Container> = match fs::read_dir(&dir) {
        Ok(rd) => rd.flatten().filter_map(|e| load(&e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| dir.display().to_string()),
    };
    out.sort_by_key(|c| (c.created, c.id.clone()));
    Ok(out)
}

/// Find a container by name, id or unique id prefix.
pub fn find(root: &Path, key: &str) -> anyhow::Result<Container> {
    let all = list_in(root)?;
    if let Some(c) = all.iter().find(|c| c.name == key || c.id == key) {
        return Ok(c.clone());
    }
    let hits: Vec<_> = all.iter().filter(|c| c.id.starts_with(key)).collect();
    match hits.as_slice() {
        [c] if !key.is_empty() => Ok((*c).clone()),
        [] | [_] => bail!("container {key}: not found"),
        _ => bail!(
            "container {key}: ambiguous: {} containers match",
            hits.len()
        ),
    }
}

/// Containers need CAP_SYS_ADMIN (namespaces, mounts), or, rootless, a user
/// namespace of their own and /dev/fuse: say so before anything is created.
fn check_privilege(limits: Limits) -> anyhow::Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0);
    if caps & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        bail!("run: no permission to create namespaces and mounts (needs root or CAP_SYS_ADMIN)");
    }
    // Rootless.
    if limits.memory.is_some() || limits.pids.is_some() {
        bail!("run: --memory and --pids-limit need root (cgroups are not delegated to this user)");
    }
    let userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    if userns == Some(0) {
        bail!(
            "run: no permission to create namespaces (user namespaces are disabled; run as root)"
        );
    }
    if rustix::fs::access(
        "/dev/fuse",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        bail!(
            "run: /dev/fuse: permission denied (a rootless container needs to open it; or run as root)"
        );
    }
    Ok(())
}

/// `unionmount run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    check_privilege(Limits {
        memory: args.memory,
        pids: args.pids_limit,
    })?;
    let c = create(&args)?;
    start_created(&c)
}

/// `unionmount create`: print the id.
pub fn create_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let c = create(&args)?;
    say!("{}", c.id);
    Ok(ExitCode::SUCCESS)
}

/// `unionmount start NAME`: run a created (or ended) container in the foreground.
pub fn start_cmd(store: &StoreArg, key: &str) -> anyhow::Result<ExitCode> {
    let root = store_root(store)?;
    let c = find(&root, key)?;
    check_privilege(c.spec.limits)?;
    let lock = ContainersLock::take(&root)?;
    let st = read_state(&c.dir);
    if is_running(&st) {
        bail!("container {}: already running", c.name);
    }
    if st.status == "running" {
        cleanup_stale(&c, &st);
    }
    drop(lock);
    start_created(&c)
}

fn start_created(c: &Container) -> anyhow::Result<ExitCode> {
    let code = crate::runner::start(c);
    if c.spec.auto_remove {
        remove_dir(c)?;
    }
    let code = code?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// `unionmount stop NAME`: SIGTERM to the container's pid 1, SIGKILL after `timeout`.
pub fn stop_cmd(store: &StoreArg, key: &str, timeout: u64) -> anyhow::Result<ExitCode> {
    let c = find(&store_root(store)?, key)?;
    let st = read_state(&c.dir);
    if !is_running(&st) {
        bail!("container {}: not running", c.name);
    }
    let signal = |sig: rustix::process::Signal| {
        if let Some((pid, t)) = st.pid1
            && start_time(pid) == Some(t)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    signal(rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while is_running(&read_state(&c.dir)) {
        if Instant::now() > deadline {
            signal(rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say!("{}", c.name);
    Ok(ExitCode::SUCCESS)
}

/// `unionmount ps [-a]`.
pub fn ps(store: &StoreArg, all: bool) -> anyhow::Result<ExitCode> {
    let root = store_root(store)?;
    say!(
        "{:<12}  {:<20}  {:<20}  {:<24}  STATUS",
        "ID",
        "NAME",
        "IMAGE",
        "COMMAND"
    );
    for c in list_in(&root)? {
        let st = read_state(&c.dir);
        let running = is_running(&st);
        if !all && !running {
            continue;
        }
        let status = match (running, st.status.as_str(), st.exit_code) {
            (true, _, _) => "running".to_string(),
            (false, "running", _) => "dead (runner gone; unionmount rm)".to_string(),
            (false, "exited", Some(code)) => format!("exited ({code})"),
            (false, s, _) => s.to_string(),
        };
        let mut cmd = c.spec.argv.join(" ");
        if cmd.chars().count() > 24 {
            cmd = cmd.chars().take(21).collect::<String>() + "...";
        }
        say!(
            "{:<12}  {:<20}  {:<20}  {:<24}  {status}",
            c.id,
            c.name,
            c.image,
            cmd
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `unionmount rm [-f] NAME...`: remove containers, cleaning after runners
/// that were killed (their union daemon, cgroups and directories).
pub fn rm(store: &StoreArg, keys: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let root = store_root(store)?;
    let mut failed = false;
    for key in keys {
        match rm_one(&root, key, force) {
            Ok(name) => say!("{name}"),
            Err(e) => {
                eprintln!("unionmount: rm: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn rm_one(root: &Path, key: &str, force: bool) -> anyhow::Result<String> {
    let c = find(root, key)?;
    let st = read_state(&c.dir);
    if is_running(&st) {
        if !force {
            bail!("container {}: running (stop it first, or rm -f)", c.name);
        }
        kill_running(&c, &st);
    }
    cleanup_stale(&c, &st);
    remove_dir(&c)?;
    Ok(c.name)
}

/// End a running container the way its runner cleans up after: SIGKILL to
/// its pid 1; the runner reaps it, unmounts the union, reaps the union's
/// daemon and removes the cgroups. Killing the runner instead would leave
/// both processes to the host's init (zombies until it reaps them) and the
/// cleanup to `cleanup_stale`; that is only the last resort, for a runner
/// that does not finish.
fn kill_running(c: &Container, st: &State) {
    let signal = |p: Option<(i32, u64)>, sig: rustix::process::Signal| {
        if alive(p)
            && let Some((pid, _)) = p
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(st.runner) && Instant::now() < deadline {
        // Read again: a runner still setting up records its pid 1 soon.
        signal(read_state(&c.dir).pid1, rustix::process::Signal::KILL);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(st.runner) {
        signal(st.runner, rustix::process::Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(st.runner) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// After a runner that did not finish its work: end the container's processes
/// and its union daemon (which unmounts the union as it goes), remove cgroups.
fn cleanup_stale(c: &Container, st: &State) {
    if alive(st.pid1)
        && let Some((pid, _)) = st.pid1
        && let Some(p) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    for pid in daemons_of(c) {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = daemons_of(c);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unmount_leftovers(&c.dir);
    cgroup::remove(&st.cgroups);
}

/// Live union daemons serving this container: their command line names its upper.
fn daemons_of(c: &Container) -> Vec<i32> {
    let needle = format!("upperdir={}", c.upper().display());
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let r = &s[s.rfind(')')? + 1..];
                    r.split_whitespace().next().map(|st| st == "Z")
                })
                .unwrap_or(true);
            !zombie
                && cmd
                    .split(|b| *b == 0)
                    .any(|a| a.split(|b| *b == b',').any(|o| o == needle.as_bytes()))
        })
        .collect()
}

/// Mounts under the container's directory in this mount namespace (none,
/// normally: the union lives in the container's own namespace).
fn unmount_leftovers(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Remove the container's directory, unless something is still mounted on
/// its merged directory (then removing would reach into the union).
pub fn remove_dir(c: &Container) -> anyhow::Result<()> {
    let merged = c.merged();
    if let (Ok(a), Ok(b)) = (fs::metadata(&merged), fs::metadata(&c.dir)) {
        use std::os::unix::fs::MetadataExt as _;
        if a.dev() != b.dev() {
            bail!(
                "container {}: {} is still mounted; not removed",
                c.name,
                merged.display()
            );
        }
    }
    match fs::remove_dir_all(&c.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", c.dir.display())),
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
