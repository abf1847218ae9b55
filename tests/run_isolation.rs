//! `unionmount run`: what the command sees inside its container — pid 1, its
//! own host name and /proc, /dev and /sys, user, environment — and that its
//! writes land in the container's upper while the image's layer stays as it was.

mod support;

use std::fs;
use std::os::unix::fs::FileTypeExt as _;

use support::run::Env;

#[test]
fn pid_one_hostname_and_etc_files() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "t",
        "--",
        "sh",
        "-c",
        "echo $$; hostname; cat /etc/hostname; grep -c box /etc/hosts; echo $HOSTNAME",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "1\nbox\nbox\n1\nbox\n");
}

#[test]
fn proc_shows_only_the_containers_processes() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&["run", "--rm", "t", "--", "sh", "-c", "ls /proc; true"]);
    assert_eq!(out.code, 0, "{out:?}");
    let pids: Vec<u32> = out
        .stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // sh (pid 1) and ls.
    assert!(pids.contains(&1), "{pids:?}");
    assert!(pids.len() <= 2 && pids.iter().all(|p| *p < 10), "{pids:?}");
}

#[test]
fn dev_sys_and_network() {
    let Some(env) = Env::new() else { return };
    let script = "ls /dev; head -c 5 /dev/zero | wc -c; echo x > /dev/null; \
                  grep -E ' /sys | /dev/pts ' /proc/mounts; \
                  touch /sys/x 2>/dev/null || echo sys-ro; \
                  echo ifaces $(tail -n +3 /proc/net/dev | cut -d: -f1); \
                  grep NoNewPrivs /proc/self/status; \
                  ip link show lo | grep -q ',UP' && echo lo-up";
    let out = env.um(&["run", "--rm", "t", "--", "sh", "-c", script]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(lines.contains(&dev), "/dev/{dev} missing: {lines:?}");
    }
    assert!(lines.contains(&"5"), "{lines:?}");
    assert!(lines.contains(&"sys-ro"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sysfs /sys sysfs ro")
                || l.contains(" /sys ") && l.contains(" ro,")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("devpts /dev/pts")),
        "{lines:?}"
    );
    // --network none: only the loopback device.
    assert!(lines.contains(&"ifaces lo"), "{lines:?}");
    assert!(lines.contains(&"lo-up"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{lines:?}"
    );
}

#[test]
fn writes_stay_in_the_upper_and_the_layer_is_untouched() {
    let Some(env) = Env::new() else { return };
    let layer = env.layer();
    let out = env.um(&[
        "run",
        "--name",
        "w",
        "t",
        "--",
        "sh",
        "-c",
        "echo hi > /etc/new; rm /bin/ls; echo changed >> /etc/motd; cat /etc/motd",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "orig\nchanged\n");
    let dir = env.container_dir("w").expect("container w");
    let upper = dir.join("upper");
    assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "hi\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "orig\nchanged\n"
    );
    let wh = fs::symlink_metadata(upper.join("bin/ls")).expect("whiteout for /bin/ls");
    assert!(wh.file_type().is_char_device(), "{wh:?}");
    // Mount points are not the container's changes.
    for p in [
        "proc",
        "dev",
        "sys",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
    ] {
        assert!(
            fs::symlink_metadata(upper.join(p)).is_err(),
            "{p} in the upper"
        );
    }
    // The image's layer as it was.
    assert_eq!(
        fs::read_to_string(layer.join("etc/motd")).unwrap(),
        "orig\n"
    );
    assert!(fs::symlink_metadata(layer.join("bin/ls")).is_ok());
    assert!(fs::symlink_metadata(layer.join("etc/new")).is_err());
    // The container record keeps its image from prune.
    let image = fs::read_to_string(dir.join("image")).unwrap();
    assert!(image.starts_with("sha256:"), "{image}");
    // A new container of the image sees none of it.
    let out = env.um(&[
        "run",
        "--rm",
        "t",
        "--",
        "sh",
        "-c",
        "cat /etc/motd; test -e /bin/ls && echo ls; test -e /etc/new || echo no-new",
    ]);
    assert_eq!(out.stdout, "orig\nls\nno-new\n", "{out:?}");
    // Nothing of either container is mounted on the host.
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

#[test]
fn user_workdir_env_and_read_only() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&[
        "run",
        "--rm",
        "-u",
        "1000:1000",
        "-w",
        "/work",
        "-e",
        "A=b",
        "t",
        "--",
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $A",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "1000\n1000\n/work\nb\n");
    let out = env.um(&[
        "run",
        "--rm",
        "-u",
        "app",
        "t",
        "--",
        "sh",
        "-c",
        "id -u; id -g; echo $HOME",
    ]);
    assert_eq!(out.stdout, "1001\n1001\n/home/app\n", "{out:?}");
    let out = env.um(&[
        "run",
        "--rm",
        "--read-only",
        "t",
        "--",
        "sh",
        "-c",
        "echo x > /f",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Read-only"), "{out:?}");
}
