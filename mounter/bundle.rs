//! `unionmount bundle IMAGE DIR`: an OCI runtime bundle for runc (or crun):
//! `DIR/config.json` and `DIR/rootfs`, a union mount of the image over a new
//! container's upper, so the runtime's changes land in that container.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use layerstore::serde_json::{Value, json};

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
    std::fs::create_dir_all(dir).with_context(|| format!("bundle {}", dir.display()))?;
    if std::fs::read_dir(dir)?.next().is_some() {
        bail!("bundle {}: directory is not empty", dir.display());
    }
    let c = create(&CreateRequest {
        name: args.name.clone(),
        env: args.env.clone(),
        store: args.store.clone(),
        image: args.image.clone(),
        cmd: args.cmd.clone(),
        ..CreateRequest::default()
    })?;
    let made = make(&c, dir);
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
fn runtime_config(c: &Container, uid: u32, gid: u32) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": c.spec.argv,
            "env": c.spec.env,
            "cwd": c.spec.workdir,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": c.spec.hostname,
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
    })
}
