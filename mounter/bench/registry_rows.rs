//! Registry rows of the layer-store rows: `unionmount pull` against
//! `podman pull` and against `skopeo copy` + `image load`, and `unionmount
//! push` against `skopeo copy`, of the store rows' layer image (or the
//! `--image` the bench was given), through Debian's `docker-registry` on
//! loopback. Each
//! run starts from a registry with empty storage (push) or a store and a
//! podman root that are empty (pull), so every blob crosses the wire; the
//! two sides take turns going first.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::store::{Inputs, timed, um};
use super::workload::run_cmd;

/// The repository the pull rows read.
const PULLED: &str = "bench/base:1";

/// A `docker-registry` on 127.0.0.1, stopped (and its storage removed)
/// when dropped.
pub struct Loopback {
    child: Child,
    dir: PathBuf,
    pub addr: String,
}

impl Loopback {
    /// Start one with empty storage under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Loopback> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let mut reg = Loopback {
            child,
            dir: dir.to_path_buf(),
            addr,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                bail!("docker-registry exited at start ({st})");
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not listen on {} within 20 s",
            self.addr
        )
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tools the rows need, or why they cannot run.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["docker-registry", "podman", "skopeo"]
        .into_iter()
        .filter(|p| super::target::which(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

/// (baseline seconds, unionmount seconds) of one run of `name`.
pub fn one_run(
    name: &str,
    inputs: &Inputs,
    scratch: &Path,
    run: usize,
) -> anyhow::Result<(Option<f64>, f64)> {
    if let Some(why) = missing_tools() {
        bail!("{why}");
    }
    std::fs::create_dir_all(scratch)?;
    let (mut b, mut u) = (0.0, 0.0);
    let (src_store, image) = (&inputs.registry_image.0, inputs.registry_image.1.as_str());
    match name {
        "pull" | "pull-skopeo" => {
            let reg = Loopback::start(&scratch.join("registry"))?;
            // Not timed: the image goes up once, gzip, as registries hold it.
            let dest = format!("{}/{PULLED}", reg.addr);
            um(src_store, &["push", image, &dest], &[], &[])?;
            for side in [run % 2, 1 - run % 2] {
                let store = scratch.join(format!("store-{side}"));
                if side == 1 {
                    u = timed(|| um(&store, &["pull", "-q", &dest], &[], &[]))?;
                } else if name == "pull" {
                    b = timed(|| podman_pull(&scratch.join("podman"), &dest))?;
                } else {
                    b = timed(|| skopeo_and_load(&store, &scratch.join("layout"), &dest))?;
                }
            }
        }
        _ => {
            for side in [run % 2, 1 - run % 2] {
                // A registry of its own for each side: no blob is there yet,
                // and none can be mounted from a repository the other made.
                let reg = Loopback::start(&scratch.join(format!("registry-{side}")))?;
                let dest = format!("{}/bench/pushed:1", reg.addr);
                if side == 0 {
                    b = timed(|| skopeo_push(src_store, image, &dest))?;
                } else {
                    u = timed(|| um(src_store, &["push", image, &dest], &[], &[]))?;
                }
            }
        }
    }
    Ok((Some(b), u))
}

/// `podman pull` into a root of its own (so nothing is there yet). Its
/// runroot must be a short path (podman refuses one over 50 characters).
fn podman_pull(root: &Path, reference: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)?;
    let runroot = ShortDir::new()?;
    let conf = root.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{}/events.log\"\n",
            root.display()
        ),
    )?;
    let result = run_cmd(
        Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(runroot.path())
            .args([
                "--storage-driver",
                "overlay",
                "pull",
                "-q",
                "--tls-verify=false",
            ])
            .arg(reference),
    );
    // podman's overlay storage leaves mounts of its own layers behind.
    let _ = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(runroot.path())
        .args(["--storage-driver", "overlay", "system", "reset", "-f"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    result
}

/// The two-step way in: `skopeo copy` to an OCI layout, then `image load`
/// of that layout into an empty store.
fn skopeo_and_load(store: &Path, layout: &Path, reference: &str) -> anyhow::Result<()> {
    run_cmd(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:pulled", layout.display())),
    )?;
    um(store, &["image", "load"], &[layout], &[])
}

/// `skopeo copy` of the store's image (the store is an OCI layout) with its
/// layers recompressed to gzip, as `unionmount push` sends them.
fn skopeo_push(store: &Path, image: &str, dest: &str) -> anyhow::Result<()> {
    run_cmd(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--dest-compress-format",
                "gzip",
                "--dest-compress",
            ])
            .arg(format!("oci:{}:{image}", store.display()))
            .arg(format!("docker://{dest}")),
    )
}

/// A directory with a short path (`/tmp/um-podman-PID`), removed when
/// dropped.
struct ShortDir(PathBuf);

impl ShortDir {
    fn new() -> anyhow::Result<ShortDir> {
        let p = PathBuf::from(format!("/tmp/um-podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).with_context(|| p.display().to_string())?;
        Ok(ShortDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
