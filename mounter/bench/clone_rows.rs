//! The FICLONE row: the data copy-up of a big lower file (an append of one
//! byte) on unionmount with its lower and upper on XFS, where the copy-up
//! clones the extents, against kernel overlayfs where the bench's other
//! rows run (ext4 here), where it copies them. The XFS is a loop mount of a
//! sparse image, made once per bench and unmounted when the rig goes; each
//! run gets a fresh upper on both sides, and the two take turns going
//! first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::store::timed;
use super::target::{Instance, Kind, Target};
use super::workload::run_cmd;

/// The tools the row needs, or why it cannot run.
fn missing_tools() -> Option<String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if super::target::which("mkfs.xfs").is_none() {
        Some("mkfs.xfs not installed (--compare installs xfsprogs)".into())
    } else if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("xfs"))
    {
        Some("the kernel has no XFS".into())
    } else {
        None
    }
}

/// The two lowers (the same big file on each filesystem) and the XFS mount.
pub struct Rig {
    dir: PathBuf,
    xfs: PathBuf,
    mounted: bool,
    file: &'static str,
}

impl Rig {
    /// A `size`-byte file in a lower on the bench's filesystem and in one
    /// on a new XFS, under `base`.
    pub fn prepare(base: &Path, size: u64) -> anyhow::Result<Rig> {
        if let Some(why) = missing_tools() {
            bail!("{why}");
        }
        let dir = base.join("clone-rows");
        let xfs = dir.join("xfs");
        std::fs::create_dir_all(&xfs)?;
        let mut rig = Rig {
            dir,
            xfs,
            mounted: false,
            file: "big",
        };
        let image = rig.dir.join("xfs.img");
        // Room for the file, its clones' new blocks and XFS's own.
        std::fs::File::create(&image)?.set_len(2 * size + (512 << 20))?;
        run_cmd(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image),
        )
        .context("mkfs.xfs")?;
        run_cmd(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&rig.xfs),
        )
        .context("mounting the XFS image")?;
        rig.mounted = true;
        for lower in [rig.lower_on_xfs(), rig.lower_here()] {
            std::fs::create_dir_all(&lower)?;
            write_file(&lower.join(rig.file), size)?;
        }
        rustix::fs::sync();
        Ok(rig)
    }

    fn lower_on_xfs(&self) -> PathBuf {
        self.xfs.join("lower")
    }

    fn lower_here(&self) -> PathBuf {
        self.dir.join("lower")
    }

    /// (kernel overlayfs here, unionmount on XFS) seconds of one run.
    pub fn one_run(&self, run: usize) -> anyhow::Result<(Option<f64>, f64)> {
        let exe = std::env::current_exe().context("finding the unionmount binary")?;
        let kernel = Target {
            name: "overlay".into(),
            kind: Kind::Overlay,
        };
        let union = Target {
            name: "unionmount".into(),
            kind: Kind::Unionmount(exe, ""),
        };
        let (mut k, mut u) = (0.0, 0.0);
        for side in [run % 2, 1 - run % 2] {
            if side == 0 {
                k = self.append_on(&kernel, &self.lower_here(), &self.dir)?;
            } else {
                u = self.append_on(&union, &self.lower_on_xfs(), &self.xfs)?;
            }
        }
        Ok((Some(k), u))
    }

    /// Seconds to append a byte to the big file through a fresh mount of
    /// `t` over `lower`, its upper under `base`.
    fn append_on(&self, t: &Target, lower: &Path, base: &Path) -> anyhow::Result<f64> {
        let inst = Instance::start(t, &[lower.to_path_buf()], None, base, true)?;
        rustix::fs::sync();
        let path = inst.root().join(self.file);
        let secs = timed(|| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .with_context(|| format!("{}", path.display()))?;
            f.write_all(b"x")?;
            Ok(())
        })?;
        inst.finish()?;
        Ok(secs)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.mounted {
            let gone = rustix::mount::unmount(&self.xfs, rustix::mount::UnmountFlags::empty())
                .or_else(|_| {
                    rustix::mount::unmount(&self.xfs, rustix::mount::UnmountFlags::DETACH)
                });
            if let Err(e) = gone {
                eprintln!("unionmount bench: unmounting {}: {e}", self.xfs.display());
                return;
            }
        }
        super::tmp::remove_tree(&self.dir);
    }
}

/// A file of `size` bytes of data (not a hole: a copy must copy them).
fn write_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}
