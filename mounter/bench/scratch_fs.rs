//! A fresh, journaled ext4 for a run's layers, uppers and mountpoints.
//!
//! Every run makes and then removes thousands of files. On an ext4 without
//! a journal, each new inode skips every inode deleted in the last minute
//! (`recently_deleted()`, so that a crash cannot leave a new file holding a
//! dead one's data), reading its table block: after a few runs a `tar -x`
//! of 10k files took 8.5 s there, against 0.2 s on a journaled ext4. The
//! kernel's own baseline then hid the daemon's cost. Users' filesystems have
//! journals; the bench makes one like theirs, empty, so every target and
//! run starts alike.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::workload::run_cmd;

/// What the filesystem must hold.
pub struct Room {
    /// Bytes, or None for as much as the disk below has.
    pub bytes: Option<u64>,
    pub inodes: u64,
}

/// Make a sparse image in `dir`, an ext4 on it (its inode tables and
/// journal written now: no lazy initialisation runs beside the bench), and
/// mount it through a loop device doing direct I/O (the image's pages are
/// not cached a second time, so a cold run is cold). Returns the mountpoint;
/// the loop device goes away with the mount.
pub fn mount_fresh_ext4(dir: &Path, room: &Room) -> anyhow::Result<PathBuf> {
    let image = dir.join("scratch.img");
    let free = rustix::fs::statvfs(dir).context("statvfs")?;
    // Sparse: only what is written takes room on the disk below.
    let free = free.f_bavail * free.f_frsize;
    let bytes = room.bytes.unwrap_or(u64::MAX).min(free / 10 * 8);
    if bytes < 1 << 30 {
        bail!("{}: less than 1.25 GiB free", dir.display());
    }
    std::fs::File::create(&image)?.set_len(bytes)?;
    run_cmd(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-N", &room.inodes.to_string()])
            .args([
                "-J",
                "size=64",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(&image),
    )
    .context("mkfs.ext4")?;
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&image)
        .output()
        .context("losetup")?;
    if !out.status.success() {
        bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mnt = dir.join("scratch");
    let mounted = std::fs::create_dir(&mnt)
        .map_err(anyhow::Error::from)
        .and_then(|()| run_cmd(Command::new("mount").arg(&dev).arg(&mnt)));
    // Detached now if unused, else when the mount goes (the kernel clears
    // a busy loop device at its last close).
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    mounted.context("mounting the scratch ext4")?;
    Ok(mnt)
}
