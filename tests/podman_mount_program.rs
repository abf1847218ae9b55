//! podman (containers-storage) with unionmount as the overlay driver's
//! `mount_program`, as it runs fuse-overlayfs: containers run, `podman diff`
//! and `podman commit` see their changes through unionmount's mounts, and a
//! directory removed and recreated in a container comes back empty in the
//! committed image (the `rm -rf /usr; mkdir -p /usr/x` case FUSE overlays have
//! got wrong).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

use support::tools::{bin, busybox_rootfs, ok, require};

/// A private podman: its own root, runroot and containers.conf (see CLIENTS.md
/// for why each setting), with unionmount as the mount program.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{}/events.log\"\nruntime = \"runc\"\n\
             [containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             netns = \"none\"\n",
            dir.display()
        );
        fs::write(dir.join("containers.conf"), conf).expect("write containers.conf");
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!("overlay.mount_program={}", bin()))
            .args(args)
            .output()
            .expect("podman runs")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (they hold mounts), then storage, then anything left.
        let _ = self.run(&["rm", "-a", "-f"]);
        let _ = self.run(&["system", "reset", "-f"]);
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            for line in mounts.lines() {
                if let Some(mnt) = line.split(' ').nth(1)
                    && mnt.starts_with(self.dir.to_string_lossy().as_ref())
                {
                    let _ = Command::new("umount").args(["-l", mnt]).status();
                }
            }
        }
    }
}

fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(dir.to_string_lossy().as_ref()))
        .map(String::from)
        .collect()
}

#[test]
fn podman_runs_diffs_and_commits_through_unionmount() {
    if !require(&["podman", "runc", "busybox"]) {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("unionmount-podman-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let d = t.path();
    // A busybox image made and saved by our own store, loaded by podman.
    let rootfs = d.join("rootfs");
    busybox_rootfs(&rootfs);
    fs::write(rootfs.join("etc/motd"), "image\n").expect("write motd");
    // A hard-link group, changed through one name in the container.
    fs::write(rootfs.join("etc/link1"), "linked\n").expect("write link1");
    fs::hard_link(rootfs.join("etc/link1"), rootfs.join("etc/link2")).expect("link");
    let store = d.join("store");
    let um = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .expect("unionmount")
    };
    ok(
        "image import",
        um(&[
            "image",
            "import",
            rootfs.to_str().expect("utf-8"),
            "--tag",
            "bb",
        ]),
    );
    let archive = d.join("bb.tar");
    ok(
        "image save",
        um(&[
            "image",
            "save",
            "bb",
            "--format",
            "docker-archive",
            archive.to_str().expect("utf-8"),
        ]),
    );

    let pm_dir = d.join("podman");
    fs::create_dir(&pm_dir).expect("mkdir");
    let podman = Podman::new(&pm_dir);
    let loaded = ok(
        "podman load",
        podman.run(&["load", "-i", archive.to_str().expect("utf-8")]),
    );
    let image = loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .expect("loaded image name")
        .trim();

    let out = ok(
        "podman run",
        podman.run(&[
            "run",
            "--rm",
            image,
            "/bin/sh",
            "-c",
            "echo hello; cat /etc/motd",
        ]),
    );
    assert_eq!(out, "hello\nimage\n");

    // The case FUSE overlays get wrong: a directory removed and made again.
    ok(
        "podman run t1",
        podman.run(&[
            "run",
            "--name",
            "t1",
            image,
            "/bin/sh",
            "-c",
            "rm -rf /usr; mkdir -p /usr/x; echo new > /etc/added; rm /etc/motd; \
             echo x > /etc/link1",
        ]),
    );
    let diff = ok("podman diff", podman.run(&["diff", "t1"]));
    for line in [
        "A /usr/x",
        "A /etc/added",
        "D /etc/motd",
        "D /usr/bin",
        "D /usr/sbin",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "podman diff lacks {line:?}:\n{diff}"
        );
    }
    ok(
        "podman commit",
        podman.run(&["commit", "t1", "localhost/bb:changed"]),
    );
    let out = ok(
        "run the committed image",
        podman.run(&[
            "run",
            "--rm",
            "localhost/bb:changed",
            "/bin/sh",
            "-c",
            "ls /usr; cat /etc/added; ls /etc; cat /etc/link2",
        ]),
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("x"),
        "the recreated /usr holds only x:\n{out}"
    );
    assert_eq!(lines.next(), Some("new"), "{out}");
    assert!(
        !out.lines().any(|l| l == "motd"),
        "a whiteout must never come back as a file:\n{out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("x"),
        "a change through /etc/link1 reaches /etc/link2 in the commit:\n{out}"
    );
    ok("podman rm", podman.run(&["rm", "t1"]));
    assert!(
        fuse_mounts_under(&pm_dir).is_empty(),
        "mounts left: {:?}",
        fuse_mounts_under(&pm_dir)
    );
}
