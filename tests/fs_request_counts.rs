//! The daemon counts the requests it answers by kind and, with
//! `UNIONMOUNT_REQUEST_COUNTS=FILE`, writes them when its mount ends: the
//! bench's round-trip counts come from there.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Scratch, bin, is_mounted, require_mounts, wait_until};

#[test]
fn the_daemon_writes_its_request_counts_at_unmount() {
    if !require_mounts() {
        return;
    }
    let s = Scratch::new();
    let (lower, upper, work, mnt) = (
        s.path().join("lower"),
        s.path().join("upper"),
        s.path().join("work"),
        s.path().join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(lower.join("f"), "lower\n").unwrap();
    let counts = s.path().join("counts.json");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mut daemon = Command::new(bin())
        .args(["-f", "-o", &opts])
        .arg(&mnt)
        .env("UNIONMOUNT_REQUEST_COUNTS", &counts)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || is_mounted(&mnt)));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "lower\n");
    fs::write(mnt.join("new"), "x").unwrap();
    fs::remove_file(mnt.join("new")).unwrap();
    let ok = Command::new(bin())
        .arg("umount")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(daemon.wait().unwrap().success());
    let text = fs::read_to_string(&counts).expect("the counts file");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for kind in ["lookup", "open", "read", "create", "unlink"] {
        assert!(v[kind].as_u64().unwrap_or(0) >= 1, "{kind} in {text}");
    }
    assert!(v.get("rename").is_none(), "never asked: {text}");
}
