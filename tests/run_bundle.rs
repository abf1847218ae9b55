//! `unionmount bundle` + `runc run`: an OCI runtime runs a container on a
//! root filesystem unionmount mounts, and its writes land in the container's
//! upper, not in the image.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::tools::{bin, busybox_rootfs, ok, require};

/// Unmounts the bundle's root filesystem even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `unionmount ARGS…` on `store`. The store goes right after the
/// (sub)subcommand: after `--` all is the container's command.
fn um(store: &Path, args: &[&str]) -> Output {
    let words = if args[0] == "image" { 2 } else { 1 };
    Command::new(bin())
        .args(&args[..words])
        .arg("--store")
        .arg(store)
        .args(&args[words..])
        .output()
        .expect("unionmount")
}

/// A scratch directory under /var/tmp with a store at `store` holding
/// `bb`, the busybox root filesystem at `image` (which has no Env).
fn scratch() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("unionmount-bundle-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let rootfs = t.path().join("image");
    busybox_rootfs(&rootfs);
    let rootfs = rootfs.to_str().expect("utf-8");
    let import = um(
        &t.path().join("store"),
        &["image", "import", rootfs, "--tag", "bb"],
    );
    ok("image import", import);
    t
}

/// `runc run` of the bundle at `bundle` as container `id`.
fn runc_run(d: &Path, bundle: &Path, id: &str) -> Output {
    Command::new("runc")
        .arg("--root")
        .arg(d.join("runc"))
        .args(["run", "-b"])
        .arg(bundle)
        .arg(format!("t-{id}"))
        .output()
        .expect("runc")
}

#[test]
fn runc_runs_a_bundle_on_a_unionmount_root() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let t = scratch();
    let d = t.path();
    let rootfs = d.join("image");
    let store = d.join("store");
    let um = |args: &[&str]| um(&store, args);

    let bundle = d.join("bundle");
    let id = ok(
        "bundle",
        um(&[
            "bundle",
            "bb",
            bundle.to_str().expect("utf-8"),
            "--",
            "/bin/sh",
            "-c",
            "echo pid $$; echo from-runc > /written; cat /written",
        ]),
    )
    .trim()
    .to_string();
    let _guard = Unmount(bundle.join("rootfs"));
    assert!(bundle.join("config.json").is_file(), "config.json written");
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&*bundle.join("rootfs").to_string_lossy()) && l.contains("fuse")),
        "rootfs is a unionmount mount"
    );

    let out = ok("runc run", runc_run(d, &bundle, &id));
    assert_eq!(out, "pid 1\nfrom-runc\n");
    let upper = store.join("containers").join(&id).join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("written")).expect("written in the upper"),
        "from-runc\n"
    );
    assert!(
        !rootfs.join("written").exists(),
        "the image's files are untouched"
    );

    ok(
        "umount",
        Command::new(bin())
            .args(["umount"])
            .arg(bundle.join("rootfs"))
            .output()
            .expect("umount"),
    );
    ok("rm", um(&["rm", &id]));
    assert!(
        !store.join("containers").join(&id).exists(),
        "rm removes the container"
    );

    // A second bundle into a non-empty directory is refused in one line.
    let err = um(&["bundle", "bb", bundle.to_str().expect("utf-8")]);
    assert!(!err.status.success());
    let msg = String::from_utf8_lossy(&err.stderr);
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(msg.contains("not empty"), "{msg}");
}

/// An image without Env gets the default PATH in the bundle, as `run`
/// gives it: runc finds a command by name.
#[test]
fn a_bundle_of_an_image_without_env_has_the_default_path() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let t = scratch();
    let d = t.path();
    let store = d.join("store");
    let bundle = d.join("bundle");
    let dir = bundle.to_str().expect("utf-8");
    let made = um(
        &store,
        &["bundle", "bb", dir, "--", "sh", "-c", "echo $PATH"],
    );
    let id = ok("bundle", made).trim().to_string();
    let _guard = Unmount(bundle.join("rootfs"));
    let out = ok("runc run", runc_run(d, &bundle, &id));
    assert_eq!(
        out,
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let unmounted = Command::new(bin())
        .arg("umount")
        .arg(bundle.join("rootfs"))
        .output()
        .expect("umount");
    ok("umount", unmounted);
    ok("rm", um(&store, &["rm", &id]));
}

#[test]
fn a_bundle_that_cannot_be_made_leaves_no_directory() {
    if !require(&["busybox"]) {
        return;
    }
    let t = scratch();
    let d = t.path();
    let bundle = d.join("bundle");
    let dir = bundle.to_str().expect("utf-8");
    for (store, image, says) in [
        (d.join("typo"), "bb", "no store at"),
        (d.join("store"), "nosuch", "nosuch"),
    ] {
        let out = um(&store, &["bundle", image, dir]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
        assert!(!bundle.exists(), "{image}: the bundle directory was left");
        assert!(!d.join("typo").exists(), "a store was made");
    }
}
