//! `unionmount bundle IMAGE DIR`: an OCI runtime bundle for runc (or crun):
//! `DIR/config.json` and `DIR/rootfs`, a union mount of the image over a new
//! container's upper, so the runtime's changes land in that container.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Mount,
    Process, Root, Spec, User,
};

use crate::container::create::{CreateRequest, create};
use crate::container::lifecycle::remove_dir;
use crate::container::record::Container;
use crate::store_dir::StoreDir;

/// `unionmount bundle`.
#[derive(Debug)]
pub struct BundleRequest {
    /// Name of the container that keeps the bundle's changes (default: its id)
    pub name: Option<String>,
    /// K=V
    pub env: Vec<String>,
    pub store: StoreDir,
    /// Image name or id
    pub image: String,
    /// The bundle directory (created; must be empty if it exists)
    pub dir: PathBuf,
    /// Command and arguments (default: the image's Entrypoint and Cmd)
    pub cmd: Vec<String>,
}

pub fn run(args: BundleRequest) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("bundle {}: directory is not empty", dir.display());
    }
    // The container first: a bad store or image leaves no directory behind.
    let c = create(&CreateRequest {
        name: args.name.clone(),
        env: args.env.clone(),
        store: args.store.clone(),
        image: args.image.clone(),
        cmd: args.cmd.clone(),
        ..CreateRequest::default()
    })?;
    let made = std::fs::create_dir_all(dir)
        .with_context(|| format!("bundle {}", dir.display()))
        .and_then(|()| make(&c, dir));
    if made.is_err() {
        let _ = remove_dir(&c);
    }
    made?;
    println!("{}", c.id);
    Ok(ExitCode::SUCCESS)
}

fn make(c: &Container, dir: &std::path::Path) -> anyhow::Result<()> {
    let (uid, gid) = numeric_user(&c.spec.user)?;
    let config = runtime_config(c, uid, gid);
    let text = layerstore::serde_json::to_string_pretty(&config)?;
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("bundle {}", dir.display()))?;
    std::fs::rename(&tmp, dir.join("config.json"))?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).with_context(|| format!("bundle {}", rootfs.display()))?;
    crate::runner::mount_union_at(c, &rootfs)
}

/// The image's user as numbers (a runtime does not read the image's passwd).
fn numeric_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u
        .parse()
        .map_err(|_| anyhow::anyhow!("bundle: user {user:?} is not numeric (UID[:GID])"))?;
    let gid = if g.is_empty() {
        uid
    } else {
        g.parse()
            .map_err(|_| anyhow::anyhow!("bundle: group {g:?} is not numeric"))?
    };
    Ok((uid, gid))
}

/// An OCI runtime-spec config with the isolation `unionmount run` gives.
/// Built from `oci-spec`'s defaults with every field this config sets or
/// leaves out said explicitly (the defaults add rlimits, resources and more).
fn runtime_config(c: &Container, uid: u32, gid: u32) -> Spec {
    let caps: Capabilities = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
    ]
    .into_iter()
    .collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_inheritable(None);
    capabilities.set_permitted(Some(caps));
    capabilities.set_ambient(None);

    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);

    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_user(user);
    process.set_args(Some(c.spec.argv.clone()));
    process.set_env(Some(crate::runner::with_default_path(&c.spec.env)));
    process.set_cwd(PathBuf::from(&c.spec.workdir));
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(true));

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));

    let mut linux = Linux::default();
    linux.set_resources(None);
    linux.set_namespaces(Some(
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ]
        .into_iter()
        .map(|t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(t);
            ns
        })
        .collect(),
    ));
    linux.set_masked_paths(Some(strings(&[
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
    ])));
    linux.set_readonly_paths(Some(strings(&[
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ])));

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(c.spec.hostname.clone()));
    spec.set_mounts(Some(mounts()));
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    spec
}

/// /proc, a /dev of its own (pts, shm, mqueue) and a read-only /sys.
fn mounts() -> Vec<Mount> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(dest));
        m.set_typ(Some(typ.into()));
        m.set_source(Some(PathBuf::from(source)));
        m.set_options((!options.is_empty()).then(|| strings(options)));
        m
    };
    vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use layerstore::serde_json::{self, Value, json};

    use super::*;
    use crate::container::record::Spec as ContainerSpec;

    /// An image without PATH gets `run`'s default: runc finds commands by
    /// name in the process's PATH.
    #[test]
    fn default_path() {
        let mut c = Container {
            id: "abc".into(),
            name: "abc".into(),
            image: "img".into(),
            dir: PathBuf::from("/d"),
            created: 0,
            spec: serde_json::from_value::<ContainerSpec>(json!({"env": ["A=1"]})).unwrap(),
        };
        let env = |c: &Container| {
            serde_json::to_value(runtime_config(c, 0, 0)).unwrap()["process"]["env"].clone()
        };
        assert_eq!(
            env(&c),
            json!([
                "A=1",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ])
        );
        c.spec.env = vec!["PATH=/x".into()];
        assert_eq!(env(&c), json!(["PATH=/x"]));
    }

    /// The config the hand-written JSON of the first version gave, for a
    /// container; capabilities compared as sets (oci-spec keeps them in one).
    #[test]
    fn same_config_as_before() {
        let c = Container {
            id: "abc".into(),
            name: "abc".into(),
            image: "img".into(),
            dir: PathBuf::from("/d"),
            created: 0,
            spec: serde_json::from_value::<ContainerSpec>(json!({
                "argv": ["/bin/sh", "-c", "true"],
                "env": ["PATH=/bin", "A=1"],
                "workdir": "/w",
                "hostname": "h",
            }))
            .unwrap(),
        };
        let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let want = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 7, "gid": 8 },
                "args": ["/bin/sh", "-c", "true"],
                "env": ["PATH=/bin", "A=1"],
                "cwd": "/w",
                "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
                "noNewPrivileges": true
            },
            "root": { "path": "rootfs", "readonly": false },
            "hostname": "h",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                  "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
                { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                  "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                  "options": ["nosuid", "noexec", "nodev"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs",
                  "options": ["nosuid", "noexec", "nodev", "ro"] }
            ],
            "linux": {
                "namespaces": [
                    { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                    { "type": "uts" }, { "type": "mount" }
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        let mut got = serde_json::to_value(runtime_config(&c, 7, 8)).unwrap();
        for set in ["bounding", "effective", "permitted"] {
            let v: &mut Value = &mut got["process"]["capabilities"][set];
            let mut names: Vec<Value> = v.as_array().unwrap().clone();
            names.sort_by_key(|n| n.as_str().unwrap().to_string());
            *v = Value::Array(names);
        }
        assert_eq!(got, want);
    }
}
