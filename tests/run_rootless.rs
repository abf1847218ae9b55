//! A rootless runner: `unionmount run` as an unprivileged user (uid 4242)
//! makes a user namespace in which that user is root (the only id mapped),
//! mounts the union there with its overlay markers in `user.overlay.*`,
//! and confines the container as a root runner does. The test needs root
//! only to prepare: a scratch directory the user owns, and /dev/fuse opened
//! up (0666) while it runs (this machine keeps it 0600).

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const UID: u32 = 4242;

/// Restores /dev/fuse and removes what the user's containers left, even
/// when the test failed.
struct Guard {
    dir: PathBuf,
    fuse_mode: u32,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let store = self.dir.join("store");
        if let Ok(rd) = fs::read_dir(store.join("containers")) {
            for e in rd.flatten() {
                let _ = as_user(
                    &["rm", "-f", "--store", store.to_str().unwrap()],
                    &[&e.file_name().to_string_lossy()],
                );
            }
        }
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.fuse_mode));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `unionmount ARGS… MORE…` as uid/gid 4242 with no supplementary groups.
fn as_user(args: &[&str], more: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "--",
        ])
        .arg(support::tools::bin())
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle}: {err}");
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&d))
        .map(str::to_string)
        .collect()
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::lchown(p, Some(UID), Some(UID)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path());
        }
    }
}

const SCRIPT: &str = "id -u; id -g; cat /proc/self/uid_map; echo $$; hostname; \
    echo hi > /new; rm /bin/ls; rm -rf /usr/sbin; mkdir /usr/sbin; \
    ls /proc | grep -c '^[0-9]'; echo fds; ls /proc/1/fd; echo end; \
    grep -E '^(NoNewPrivs|CapEff):' /proc/self/status; \
    wc -c < /proc/timer_list; touch /sys/x 2>/dev/null || echo sys-ro; \
    cut -d' ' -f5 /proc/self/mountinfo | grep -c \"$SCRATCH\"; exit 7";

#[test]
fn an_unprivileged_user_runs_a_confined_container() {
    if !support::tools::require(&["setpriv", "busybox"]) {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("unionmount-rootless-")
        .tempdir()
        .unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    let _guard = Guard {
        dir: dir.clone(),
        fuse_mode: fs::metadata("/dev/fuse").unwrap().mode() & 0o7777,
    };
    let rootfs = dir.join("rootfs");
    support::tools::busybox_rootfs(&rootfs);
    for d in ["proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    chown_tree(&dir);
    let store = dir.join("store");
    let st = store.to_str().unwrap();
    // Without /dev/fuse the user is told so, in one line.
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_user(
        &["image", "import", rootfs.to_str().unwrap(), "--tag", "t"],
        &["--store", st],
    );
    assert!(out.status.success(), "{out:?}");
    let out = as_user(&["run", "--rm", "--store", st, "t", "--", "true"], &[]);
    one_line_error(&out, "/dev/fuse");
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    // A terminal of the container's own, as a root runner gives.
    let out = as_user(&["run", "--rm", "-t", "--store", st, "t", "--", "tty"], &[]);
    assert_eq!(text(&out.stdout), "/dev/pts/0\r\n", "{out:?}");
    let scratch = format!("SCRATCH={}", dir.display());
    let out = as_user(
        &[
            "run",
            "--store",
            st,
            "--name",
            "r",
            "--hostname",
            "rl",
            "-e",
            &scratch,
            "t",
            "--",
            "sh",
            "-c",
            SCRIPT,
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    // Root inside, the user outside: one id mapped.
    assert_eq!(lines[..2], ["0", "0"], "{stdout}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &UID.to_string(), "1"], "{stdout}");
    assert_eq!(lines[3..5], ["1", "rl"], "{stdout}");
    // Its own pid namespace (sh and the pipeline), no leaked descriptor.
    let pids: u32 = lines[5].parse().unwrap();
    assert!((1..=4).contains(&pids), "{stdout}");
    assert_eq!(lines[6..11], ["fds", "0", "1", "2", "end"], "{stdout}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{stdout}");
    // Masked, read-only, and no mount of the host's scratch directory.
    assert_eq!(lines[lines.len() - 3..], ["0", "sys-ro", "0"], "{stdout}");
    // The changes: in the upper, owned by the user, in overlay form with
    // the markers in user.overlay.* (trusted.* needs the host's root).
    let cdir = fs::read_dir(store.join("containers"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let upper = cdir.join("upper");
    let new = fs::metadata(upper.join("new")).unwrap();
    assert_eq!((new.uid(), new.gid()), (UID, UID));
    let wh = fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(upper.join("usr/sbin"), "user.overlay.opaque", &mut buf)
        .expect("usr/sbin opaque");
    assert_eq!(&buf[..n], b"y");
    // What a rootless container cannot have, each refused in one line.
    let out = as_user(
        &["run", "--rm", "--store", st, "-u", "1", "t", "--", "true"],
        &[],
    );
    one_line_error(&out, "rootless");
    let out = as_user(
        &[
            "run", "--rm", "--store", st, "--memory", "16m", "t", "--", "true",
        ],
        &[],
    );
    one_line_error(&out, "--memory");
    let out = as_user(&["rm", "--store", st, "r"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_dir(store.join("containers")).unwrap().count(), 0);
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
}
