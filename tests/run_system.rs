//! System-container mode: `run` with the image's own init as the command.
//! busybox init reads an /etc/inittab that starts two long-running sleeps and
//! an HTTP server; all of them run in the container's pid namespace, the
//! server answers inside the container's network namespace, init respawns
//! what dies, and `unionmount stop` ends them all (init's shutdown actions
//! included) and cleans up.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::run::{Env, cgroup_dirs, kill, wait_until};

const INITTAB: &str = "::sysinit:/bin/sh -c 'echo up > /sysinit-ran'
::respawn:/bin/sleep 1001
::respawn:/bin/sleep 1002
::respawn:/usr/sbin/httpd -f -p 127.0.0.1:8080 -h /www
::shutdown:/bin/sh -c 'echo bye > /shutdown-ran'
";

fn pid1_of(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("state.json")).ok()?;
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&text).ok()?;
    i32::try_from(v["pid"][0].as_i64()?).ok()
}

/// (pid, command line) of every live process in the pid namespace of `pid1`.
fn namespace_processes(pid1: i32) -> Vec<(i32, String)> {
    let Ok(ns) = fs::read_link(format!("/proc/{pid1}/ns/pid")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|n| n == ns))
        .filter_map(|p| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (!cmd.is_empty()).then(|| (p, cmd.trim_end().to_string()))
        })
        .collect();
    out.sort();
    out
}

fn pid_of(procs: &[(i32, String)], cmd: &str) -> Option<i32> {
    procs.iter().find(|(_, c)| c == cmd).map(|(p, _)| *p)
}

#[test]
fn busybox_init_runs_several_daemons_and_stop_ends_them_all() {
    let Some(env) = Env::new() else { return };
    if !support::tools::require(&["nsenter"]) {
        return;
    }
    let rootfs = env.root().join("rootfs");
    fs::write(rootfs.join("etc/inittab"), INITTAB).unwrap();
    fs::create_dir_all(rootfs.join("www")).unwrap();
    fs::write(rootfs.join("www/index.html"), "hello from the container\n").unwrap();
    let out = env.um(&["image", "import", rootfs.to_str().unwrap(), "--tag", "sys"]);
    assert_eq!(out.code, 0, "{out:?}");
    let runner = env.spawn(&["run", "--name", "sys", "sys", "--", "/sbin/init"]);
    let want = [
        "/bin/sleep 1001",
        "/bin/sleep 1002",
        "/usr/sbin/httpd -f -p 127.0.0.1:8080 -h /www",
    ];
    let mut pid1 = 0;
    let all_up = wait_until(30, || {
        let Some(p) = env.container_dir("sys").and_then(|d| pid1_of(&d)) else {
            return false;
        };
        pid1 = p;
        let procs = namespace_processes(p);
        want.iter().all(|w| pid_of(&procs, w).is_some())
    });
    let procs = namespace_processes(pid1);
    assert!(all_up, "{procs:?}");
    assert_eq!(pid_of(&procs, "init"), Some(pid1), "{procs:?}");
    let dir = env.container_dir("sys").unwrap();
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(dir.join("upper/sysinit-ran").exists());
    // The server answers inside the container's network namespace.
    let got = Command::new("nsenter")
        .args(["-t", &pid1.to_string(), "-n"])
        .args(["/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "hello from the container\n",
        "{got:?}"
    );
    // init supervises: a daemon that dies comes back.
    let old = pid_of(&procs, "/bin/sleep 1001").unwrap();
    kill(old, libc::SIGKILL);
    assert!(
        wait_until(30, || pid_of(&namespace_processes(pid1), "/bin/sleep 1001")
            .is_some_and(|p| p != old)),
        "{:?}",
        namespace_processes(pid1)
    );
    assert!(env.um(&["ps"]).stdout.contains(" sys "));
    let pids: Vec<i32> = namespace_processes(pid1).iter().map(|(p, _)| *p).collect();
    assert!(pids.len() >= 4, "{pids:?}");
    // stop: SIGTERM to init, which runs its shutdown actions and ends the rest.
    let out = env.um(&["stop", "sys"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.wait(runner, 30), 0);
    for p in &pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "process {p} of the container left"
        );
    }
    assert!(dir.join("upper/shutdown-ran").exists());
    assert!(env.um(&["ps", "-a"]).stdout.contains("exited (0)"));
    assert_eq!(support::run::processes_naming(&id), Vec::<i32>::new());
    assert!(cgroup_dirs(&id).is_empty());
    assert_eq!(env.host_mounts(), Vec::<String>::new());
    assert_eq!(env.um(&["rm", "sys"]).code, 0);
}
