//! The container record: `config.json` (what the container is, fixed at
//! create) and `state.json` (what it is doing), their reading and writing,
//! and the state transitions. Nothing else writes either file.
//!
//! The JSON field names and values are the ones of the first version of
//! these files: records written by older builds read the same.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use layerstore::serde_json::{self, Value};
use layerstore::store::containers::{container_dir, containers_dir};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::procs::alive;
use crate::cgroup::Limits;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A network namespace of its own with only a loopback device
    #[default]
    None,
    /// The host's network
    Host,
}

/// A host path bound into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub host: PathBuf,
    pub ctr: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// Everything `start` needs, fixed at `create`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Layer directories, bottom first.
    #[serde(default)]
    pub lowers: Vec<PathBuf>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub workdir: String,
    #[serde(default = "root_user")]
    pub user: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub network: Network,
    /// `memory` and `pidsLimit`.
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub init: bool,
    #[serde(default)]
    pub auto_remove: bool,
    /// A terminal for the command (`-t`). Left out of the record when false,
    /// as records without it were written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Its stdin attached at each start (`-i`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub interactive: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn root_dir() -> String {
    "/".into()
}

fn root_user() -> String {
    "0".into()
}

/// A container of the store: `config.json`, and where it lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub image: String,
    /// The container's directory (not recorded: it is where the record is).
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(default)]
    pub created: u64,
    #[serde(flatten)]
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

    /// The record as a JSON object (keys in sorted order, as always written).
    pub fn to_value(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self)?)
    }

    /// A record (`config.json`'s object) of the container living in `dir`.
    pub fn from_value(dir: &Path, v: Value) -> anyhow::Result<Container> {
        let mut c: Container = serde_json::from_value(v)?;
        c.dir = dir.to_path_buf();
        Ok(c)
    }
}

/// Where a container is in its life, as `state.json` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited,
    /// No state, or one this build does not know.
    #[default]
    Unknown,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    /// Any other string is `Unknown`, as a state of a newer build would be.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "created" => Status::Created,
            "running" => Status::Running,
            "exited" => Status::Exited,
            _ => Status::Unknown,
        })
    }
}

/// What `state.json` says. A process is named by its pid and start time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub status: Status,
    /// The runner (`unionmount run` or `start`).
    #[serde(default)]
    pub runner: Option<(i32, u64)>,
    /// The container's pid 1.
    #[serde(default, rename = "pid")]
    pub pid1: Option<(i32, u64)>,
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    #[serde(default, rename = "exitCode")]
    pub exit_code: Option<i32>,
}

impl State {
    /// A container is running while its runner is.
    pub fn is_running(&self) -> bool {
        self.status == Status::Running && alive(self.runner)
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Write `path` through a temporary name and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // A name of this process's own: two writers must not share one.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    f.write_all(bytes)
        .with_context(|| tmp.display().to_string())?;
    fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

/// Write `config.json` (and a first `state.json`: created).
pub fn write_new_record(c: &Container) -> anyhow::Result<()> {
    write_atomic(
        &c.dir.join("config.json"),
        &serde_json::to_vec_pretty(&c.to_value()?)?,
    )?;
    write_state(
        c,
        &State {
            status: Status::Created,
            ..State::default()
        },
    )
}

fn write_state(c: &Container, st: &State) -> anyhow::Result<()> {
    // Through a Value: keys in sorted order, as always written.
    let bytes = serde_json::to_vec_pretty(&serde_json::to_value(st)?)?;
    write_atomic(&c.dir.join("state.json"), &bytes)
}

/// The state of the container in `dir`; `Unknown` if there is none.
pub fn read_state(dir: &Path) -> State {
    fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .unwrap_or_default()
}

/// One run of a container as its state records it: running (with the
/// runner's pid), its cgroups and pid 1 as they come, exited with a code.
pub struct RunState<'a> {
    c: &'a Container,
    st: State,
}

impl<'a> RunState<'a> {
    /// The container runs, in this process.
    pub fn running(c: &'a Container) -> anyhow::Result<RunState<'a>> {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let st = State {
            status: Status::Running,
            runner: super::procs::start_time(me).map(|t| (me, t)),
            ..State::default()
        };
        write_state(c, &st)?;
        Ok(RunState { c, st })
    }

    pub fn cgroups(&mut self, dirs: &[PathBuf]) -> anyhow::Result<()> {
        self.st.cgroups = dirs.to_vec();
        write_state(self.c, &self.st)
    }

    /// Best effort: `stop` and `rm` find pid 1 through the runner's cgroups too.
    pub fn pid1(&mut self, pid: i32) {
        self.st.pid1 = super::procs::start_time(pid).map(|t| (pid, t));
        let _ = write_state(self.c, &self.st);
    }

    pub fn exited(mut self, code: i32) {
        self.st.status = Status::Exited;
        self.st.exit_code = Some(code);
        let _ = write_state(self.c, &self.st);
    }
}

fn load(dir: &Path) -> Option<Container> {
    let bytes = fs::read(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Container::from_value(dir, v).ok()
}

/// The containers of the store at `root`, oldest first.
pub fn list_in(root: &Path) -> anyhow::Result<Vec<Container>> {
    let dir = containers_dir(root);
    let mut out: Vec<Container> = match fs::read_dir(&dir) {
        Ok(rd) => rd.flatten().filter_map(|e| load(&e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| dir.display().to_string()),
    };
    out.sort_by_key(|c| (c.created, c.id.clone()));
    Ok(out)
}

/// The directory a new container `id` gets in the store at `root`.
pub fn new_dir(root: &Path, id: &str) -> PathBuf {
    container_dir(root, id)
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

/// Is `name` free for a new container in the store at `root`?
pub fn name_is_free(root: &Path, name: &str) -> anyhow::Result<bool> {
    Ok(!list_in(root)?
        .iter()
        .any(|o| o.name == name || o.id == name))
}

/// Exclusive lock over the containers directory while names are checked.
pub struct ContainersLock(#[allow(dead_code)] fs::File);

impl ContainersLock {
    pub fn take(root: &Path) -> anyhow::Result<ContainersLock> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.json` and `state.json` exactly as the first version wrote them.
    const CONFIG: &str = r#"{
  "argv": ["/bin/sh", "-c", "echo hi"],
  "autoRemove": false,
  "created": 1764806400,
  "env": ["PATH=/usr/bin:/bin", "A=1"],
  "hostname": "3f2a9c1b7d4e",
  "id": "3f2a9c1b7d4e",
  "image": "alpine:3",
  "init": true,
  "lowers": ["/var/lib/unionmount/layers/aa", "/var/lib/unionmount/layers/bb"],
  "memory": 67108864,
  "name": "web",
  "network": "host",
  "pidsLimit": null,
  "readOnly": true,
  "user": "1000:1000",
  "volumes": [{"ctr": "/data", "host": "/srv/data", "readOnly": true}],
  "workdir": "/app"
}"#;
    const STATE: &str = r#"{
  "cgroups": ["/sys/fs/cgroup/unionmount-3f2a9c1b7d4e"],
  "exitCode": null,
  "pid": [4242, 998877],
  "runner": [4240, 998870],
  "status": "running"
}"#;

    #[test]
    fn reads_first_version_records() {
        let v: Value = serde_json::from_str(CONFIG).unwrap();
        let c = Container::from_value(Path::new("/d"), v).unwrap();
        assert_eq!(c.id, "3f2a9c1b7d4e");
        assert_eq!(c.name, "web");
        assert_eq!(c.image, "alpine:3");
        assert_eq!(c.created, 1764806400);
        assert_eq!(c.dir, PathBuf::from("/d"));
        let s = &c.spec;
        assert_eq!(s.lowers.len(), 2);
        assert_eq!(s.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.env, ["PATH=/usr/bin:/bin", "A=1"]);
        assert_eq!((s.workdir.as_str(), s.user.as_str()), ("/app", "1000:1000"));
        assert_eq!(s.hostname, "3f2a9c1b7d4e");
        assert_eq!(
            s.volumes,
            [Volume {
                host: "/srv/data".into(),
                ctr: "/data".into(),
                read_only: true
            }]
        );
        assert_eq!(s.network, Network::Host);
        assert_eq!((s.limits.memory, s.limits.pids), (Some(67108864), None));
        assert!(s.read_only && s.init && !s.auto_remove);

        let st: State = serde_json::from_str(STATE).unwrap();
        assert_eq!(st.status, Status::Running);
        assert_eq!(st.runner, Some((4240, 998870)));
        assert_eq!(st.pid1, Some((4242, 998877)));
        assert_eq!(st.cgroups.len(), 1);
        assert_eq!(st.exit_code, None);
    }

    #[test]
    fn missing_fields_take_the_old_defaults() {
        let v = serde_json::json!({"id": "a", "name": "b"});
        let c = Container::from_value(Path::new("/d"), v).unwrap();
        assert_eq!((c.spec.workdir.as_str(), c.spec.user.as_str()), ("/", "0"));
        assert_eq!(c.spec.network, Network::None);
        let st: State = serde_json::from_str(r#"{"status": "exited", "exitCode": 3}"#).unwrap();
        assert_eq!((st.status, st.exit_code), (Status::Exited, Some(3)));
        assert_eq!(
            read_state(Path::new("/nonexistent")).status,
            Status::Unknown
        );
    }

    #[test]
    fn records_round_trip_in_the_same_format() {
        let v: Value = serde_json::from_str(CONFIG).unwrap();
        let c = Container::from_value(Path::new("/d"), v.clone()).unwrap();
        assert_eq!(c.to_value().unwrap(), v);
        let st: Value = serde_json::from_str(STATE).unwrap();
        let parsed: State = serde_json::from_value(st.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), st);
    }
}
