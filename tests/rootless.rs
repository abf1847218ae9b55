//! A daemon without privilege (as rootless podman runs its mount program):
//! owners it cannot set are recorded in `user.containers.override_stat` and
//! shown from there, markers go in `user.overlay.*`, and layers unpacked
//! rootlessly (owners and device types in the override xattr) show as they
//! should.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use support::tools::{bin, require};

const NOBODY: u32 = 65534;

fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv runs")
}

/// Lets an unprivileged user open /dev/fuse while alive, unmounts on drop.
struct Guard {
    mnt: PathBuf,
    fuse_mode: u32,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.fuse_mode));
    }
}

/// `stat -c FORMAT` through the mount, as its owner (a FUSE mount without
/// allow_other is only for the user who mounted it).
fn stat_as_nobody(path: &Path, format: &str) -> String {
    let out = as_nobody(&["stat", "-c", format, path.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "stat {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read_as_nobody(path: &Path) -> String {
    let out = as_nobody(&["cat", path.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "cat {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn rootless_daemon_records_owners_and_shows_rootless_layers() {
    if !require(&["setpriv", "fusermount3"]) {
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("unionmount-rootless-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let d = t.path();
    for sub in ["lower", "rootless", "upper", "work", "mnt"] {
        fs::create_dir(d.join(sub)).expect("mkdir");
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
    // A layer unpacked as root: root-owned, world-writable so nobody may change it.
    fs::create_dir(d.join("lower/dir")).expect("mkdir");
    fs::set_permissions(d.join("lower/dir"), fs::Permissions::from_mode(0o777)).expect("chmod");
    fs::write(d.join("lower/dir/file"), "lower").expect("write");
    fs::set_permissions(d.join("lower/dir/file"), fs::Permissions::from_mode(0o666))
        .expect("chmod");
    // A layer unpacked rootlessly: a device as an empty file, its truth in the xattr.
    fs::write(d.join("rootless/null"), "").expect("write");
    rustix::fs::setxattr(
        d.join("rootless/null").as_path(),
        "user.containers.override_stat",
        b"0:0:0666:char-1-3",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");
    for sub in ["upper", "work", "mnt", "rootless"] {
        rustix::fs::chown(
            d.join(sub).as_path(),
            Some(rustix::fs::Uid::from_raw(NOBODY)),
            None,
        )
        .expect("chown");
    }
    rustix::fs::chown(
        d.join("rootless/null").as_path(),
        Some(rustix::fs::Uid::from_raw(NOBODY)),
        None,
    )
    .expect("chown");
    let fuse_mode = fs::metadata("/dev/fuse")
        .expect("stat /dev/fuse")
        .permissions()
        .mode()
        & 0o7777;
    let mnt = d.join("mnt");
    let _guard = Guard {
        mnt: mnt.clone(),
        fuse_mode,
    };
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).expect("chmod /dev/fuse");

    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        d.join("rootless").display(),
        d.join("lower").display(),
        d.join("upper").display(),
        d.join("work").display()
    );
    let out = as_nobody(&[bin(), "-o", &opts, mnt.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "rootless mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The rootless layer's device shows as the device it stands for.
    assert_eq!(
        stat_as_nobody(&mnt.join("null"), "%F %t:%T %u %a"),
        "character special file 1:3 0 666"
    );

    // A change by the unprivileged daemon: copy-up of a root-owned file.
    let file = mnt.join("dir/file");
    let out = as_nobody(&["sh", "-c", &format!("echo more >> {}", file.display())]);
    assert!(
        out.status.success(),
        "append: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_as_nobody(&file), "lowermore\n");
    assert_eq!(
        stat_as_nobody(&file, "%u %g %a"),
        "0 0 666",
        "owner and mode shown"
    );
    let upper_file = d.join("upper/dir/file");
    assert_eq!(
        fs::metadata(&upper_file).expect("upper stat").uid(),
        NOBODY,
        "the daemon owns its copy"
    );
    assert_eq!(
        xattr(&upper_file, "user.containers.override_stat").as_deref(),
        Some("0:0:0666")
    );
    assert_eq!(
        fs::read_to_string(d.join("lower/dir/file")).expect("lower"),
        "lower",
        "lower untouched"
    );

    // chmod goes to the record; the copy stays readable by its owner.
    let out = as_nobody(&["chmod", "0400", file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "chmod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stat_as_nobody(&file, "%a"), "400");
    assert_eq!(
        xattr(&upper_file, "user.containers.override_stat").as_deref(),
        Some("0:0:0400")
    );
    assert_eq!(
        fs::metadata(&upper_file).expect("upper stat").mode() & 0o600,
        0o600
    );

    // A directory rename leaves its markers in user.overlay.*.
    let out = as_nobody(&[
        "mv",
        mnt.join("dir").to_str().expect("utf-8"),
        mnt.join("moved").to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "mv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_as_nobody(&mnt.join("moved/file")), "lowermore\n");
    assert_eq!(
        xattr(&d.join("upper/moved"), "user.overlay.redirect").as_deref(),
        Some("/dir")
    );
    assert_eq!(
        xattr(&d.join("upper/moved"), "trusted.overlay.redirect"),
        None
    );

    let out = as_nobody(&["fusermount3", "-u", mnt.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
