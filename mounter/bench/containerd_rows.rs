//! containerd rows of the layer-store rows: `ctr images import` and
//! `ctr run --rm IMAGE c true` of the registry image (the store rows'
//! layer image, or `--image`) with `unionmount snapshotter` as
//! containerd's proxy plugin, against containerd's built-in overlayfs
//! snapshotter, on one private containerd. Each run removes the image
//! (synchronously: its snapshots go too) before importing it again, and
//! the two snapshotters take turns going first, each after a sync (so
//! neither pays for the writeback of the other's files). The container runs the
//! host's static busybox as `/true`, bound in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::store::{Inputs, timed, um};
use super::workload::run_cmd;

/// The name the image is imported under.
const IMAGE: &str = "localhost/bench:1";
/// Where the container's `true` comes from: busybox runs the applet its
/// name says.
pub(super) const BUSYBOX: &str = "/bin/busybox";
const TRUE_MOUNT: &str = "type=bind,src=/bin/busybox,dst=/true,options=rbind:ro";

/// The tools the rows need, or why they cannot run.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["containerd", "ctr", "runc", "mount.fuse3"]
        .into_iter()
        .filter(|p| super::target::which(p).is_none())
        .collect();
    let mut missing: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("{BUSYBOX} (busybox-static)"));
    }
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

/// A containerd and the snapshotter it proxies to, stopped (by pid) and
/// their directories removed when dropped.
struct Private {
    dir: PathBuf,
    /// The sockets: a short path, as a unix socket's must be (108 bytes).
    sockets: PathBuf,
    containerd: Child,
    snapshotter: Child,
}

/// The binary's directory first on PATH: containerd mounts a union
/// through `mount.fuse3`, which runs `unionmount`.
fn path() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the unionmount binary")?;
    let dir = exe.parent().context("the binary's directory")?;
    Ok(format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

impl Private {
    fn start(dir: &Path) -> anyhow::Result<Private> {
        std::fs::create_dir_all(dir)?;
        let sockets = PathBuf::from(format!("/tmp/um-cd-{}", std::process::id()));
        std::fs::create_dir_all(&sockets)?;
        let sock = sockets.join("sn.sock");
        let log = |name: &str| std::fs::File::create(dir.join(name)).map(Stdio::from);
        let snapshotter = Command::new(std::env::current_exe()?)
            .arg("snapshotter")
            .arg("--address")
            .arg(&sock)
            .arg("--store")
            .arg(dir.join("store"))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("snapshotter.log")?)
            .spawn()
            .context("starting unionmount snapshotter")?;
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}/containerd.sock\"\n\
                 [proxy_plugins.unionmount]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                sock.display(),
                d = dir.display(),
                s = sockets.display()
            ),
        )?;
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path()?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("containerd.log")?)
            .spawn()
            .context("starting containerd")?;
        let mut p = Private {
            dir: dir.to_path_buf(),
            sockets,
            containerd,
            snapshotter,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.ctr(&["version"]).is_err() || !sock.exists() {
            for (c, log) in [
                (&mut p.snapshotter, "snapshotter.log"),
                (&mut p.containerd, "containerd.log"),
            ] {
                if let Some(st) = c.try_wait()? {
                    let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                    let last = text.lines().last().unwrap_or("").to_string();
                    bail!(
                        "{} exited at start ({st}): {last}",
                        log.trim_end_matches(".log")
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("containerd or the snapshotter did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(p)
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<()> {
        run_cmd(
            Command::new("ctr")
                .arg("-a")
                .arg(self.sockets.join("containerd.sock"))
                .args(["-n", "bench"])
                .args(args)
                .env("PATH", path()?),
        )
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.ctr(&["images", "rm", "--sync", IMAGE]);
        for c in [&mut self.containerd, &mut self.snapshotter] {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.sockets);
        // runc's state directory of the namespace (machine-wide).
        let _ = std::fs::remove_dir("/run/containerd/runc/bench");
    }
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
    let archive = scratch.join("image.tar");
    let (store, image) = (&inputs.registry_image.0, inputs.registry_image.1.as_str());
    um(
        store,
        &["image", "save", image],
        &[&archive],
        &["--ref", IMAGE],
    )?;
    let cd = Private::start(&scratch.join("cd"))?;
    let a = archive.display().to_string();
    let (mut b, mut u) = (0.0, 0.0);
    for side in [run % 2, 1 - run % 2] {
        // Write back what the set-up and the other side left dirty, so that
        // neither side pays for the other's files.
        rustix::fs::sync();
        let sn = if side == 0 { "overlayfs" } else { "unionmount" };
        let import = || cd.ctr(&["images", "import", "--snapshotter", sn, &a]);
        let secs = if name == "ctr-import" {
            timed(import)?
        } else {
            import()?;
            let id = format!("c-{sn}");
            // The host's static busybox as `true`: the generated layer has
            // no programs, and every image runs the same one.
            let run = [
                "run",
                "--snapshotter",
                sn,
                "--rm",
                "--mount",
                TRUE_MOUNT,
                IMAGE,
                &id,
                "/true",
            ];
            timed(|| cd.ctr(&run))?
        };
        cd.ctr(&["images", "rm", "--sync", IMAGE])?;
        if side == 0 {
            b = secs;
        } else {
            u = secs;
        }
    }
    Ok((Some(b), u))
}
