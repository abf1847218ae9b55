//! Helpers for tests that drive the binary and real tools (podman, runc,
//! setpriv): what they need, and running commands that must succeed.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub use super::bin;

/// Does `tool --version` run?
pub fn has_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Root, /dev/fuse and each named tool: true when all are there. Under CI
/// anything missing fails the test loudly; elsewhere it is skipped with a word.
pub fn require(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    for t in tools {
        let there = match *t {
            "busybox" => Path::new("/bin/busybox").exists(),
            t => has_tool(t),
        };
        if !there {
            missing.push((*t).into());
        }
    }
    super::can_run("this test", &missing)
}

/// A root filesystem at `dir`: the host's static busybox with its applets.
pub fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "sbin", "usr/bin", "usr/sbin", "etc"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    // The applet links `busybox --install -s` makes, listed by the host's
    // busybox: running the fresh copy can fail with ETXTBSY while another
    // test thread's fork still holds its write descriptor.
    let list = ok(
        "busybox --list-full",
        Command::new("/bin/busybox")
            .arg("--list-full")
            .output()
            .expect("busybox"),
    );
    for applet in list.lines().filter(|a| *a != "bin/busybox") {
        let link = dir.join(applet);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link).expect("applet link");
        }
    }
}

/// The stdout of a command that must have succeeded.
pub fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
