//! The container row: `unionmount run --rm IMAGE /true`, start to exit, of
//! a one-file image (the host's static busybox as `/true`), against
//! `runc run` of a bundle of the same image made and mounted beforehand
//! (`unionmount bundle`): what a container's start costs beyond the
//! runtime's own work. The two take turns going first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::containerd_rows::BUSYBOX;
use super::store::{timed, um};
use super::workload::run_cmd;

const IMAGE: &str = "bench-true";

/// The image in a store, and the bundle runc runs.
pub struct Rig {
    store: PathBuf,
    bundle: PathBuf,
}

impl Rig {
    /// Import the image into `store` and make its bundle, under `dir`.
    pub fn prepare(store: &Path, dir: &Path) -> anyhow::Result<Rig> {
        if !Path::new(BUSYBOX).exists() {
            bail!("{BUSYBOX} not installed (busybox-static)");
        }
        if super::target::which("runc").is_none() {
            bail!("runc not installed");
        }
        let rootfs = dir.join("true-rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::copy(BUSYBOX, rootfs.join("true")).context("copying busybox")?;
        let tar = dir.join("true.tar");
        run_cmd(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        um(store, &["image", "import"], &[&tar], &["--tag", IMAGE])?;
        let rig = Rig {
            store: store.to_path_buf(),
            bundle: dir.join("true-bundle"),
        };
        let exe = std::env::current_exe().context("finding the unionmount binary")?;
        run_cmd(
            Command::new(exe)
                .args(["bundle", "--store"])
                .arg(store)
                .arg(IMAGE)
                .arg(&rig.bundle)
                .arg("/true"),
        )
        .context("unionmount bundle")?;
        Ok(rig)
    }

    /// (runc seconds, unionmount seconds) of one run.
    pub fn one_run(&self, run: usize) -> anyhow::Result<(Option<f64>, f64)> {
        let exe = std::env::current_exe().context("finding the unionmount binary")?;
        let (mut b, mut u) = (0.0, 0.0);
        for side in [run % 2, 1 - run % 2] {
            if side == 0 {
                let id = format!("bench-true-{}-{run}", std::process::id());
                b = timed(|| {
                    run_cmd(
                        Command::new("runc")
                            .arg("run")
                            .arg("--bundle")
                            .arg(&self.bundle)
                            .arg(&id),
                    )
                })?;
            } else {
                u = timed(|| {
                    run_cmd(
                        Command::new(&exe)
                            .args(["run", "--rm", "--store"])
                            .arg(&self.store)
                            .args([IMAGE, "/true"]),
                    )
                })?;
            }
        }
        Ok((Some(b), u))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The bundle's union: its daemon ends with the mount.
        let rootfs = self.bundle.join("rootfs");
        if rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
