//! `unionmount run` from the outside: exit statuses, signals, one-line errors,
//! `--rm` cleanup, host volumes, two containers of one image at once,
//! create/start/stop/ps, and `rm` after a runner that was killed.

mod support;

use std::fs;

use support::run::{Env, cgroup_dirs, kill, wait_until};

fn one_line(s: &str) -> bool {
    s.lines().count() == 1
}

#[test]
fn exit_statuses() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&["run", "--rm", "t", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code, 7, "{out:?}");
    // Killed by a signal: 128+N (with --init the shell is not its
    // namespace's init, which the kernel shields from its own SIGKILL).
    let out = env.um(&["run", "--rm", "--init", "t", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code, 137, "{out:?}");
    let out = env.um(&["run", "--rm", "--init", "t", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(env.containers().is_empty());
}

#[test]
fn errors_are_one_line() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&["run", "--rm", "t", "--", "no-such-command"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(
        one_line(&out.stderr) && out.stderr.contains("executable file not found in $PATH"),
        "{out:?}"
    );
    let out = env.um(&["run", "--rm", "no-such-image", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        one_line(&out.stderr) && out.stderr.contains("not found"),
        "{out:?}"
    );
    for bad in ["/tmp", "relative:/x", "/tmp:/x:bogus", "/no/such/dir:/x"] {
        let out = env.um(&["run", "--rm", "-v", bad, "t", "--", "true"]);
        assert_eq!(out.code, 125, "{bad}: {out:?}");
        assert!(
            one_line(&out.stderr) && out.stderr.contains("-v"),
            "{bad}: {out:?}"
        );
    }
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    // Without privilege: refused with one line, whatever step refuses first.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(support::run::bin())
        .args(["run", "--rm", "--store"])
        .arg(&env.store)
        .args(["t", "--", "true"])
        .output();
    match out {
        Ok(o) => {
            let o = support::run::Out::from(o);
            assert_ne!(o.code, 0, "{o:?}");
            assert!(one_line(&o.stderr), "{o:?}");
            assert!(o.stderr.to_lowercase().contains("permission"), "{o:?}");
        }
        Err(e) if support::run::under_ci() => {
            panic!("setpriv (util-linux) is needed: {e}")
        }
        Err(e) => eprintln!("not checking the unprivileged case: setpriv: {e}"),
    }
}

#[test]
fn signals_reach_the_command() {
    let Some(env) = Env::new() else { return };
    // --init forwards SIGTERM to the command, which dies of it.
    let pid = env.spawn(&[
        "run",
        "--rm",
        "--name",
        "s1",
        "--init",
        "t",
        "--",
        "sh",
        "-c",
        "touch /ready; exec sleep 100",
    ]);
    assert!(wait_until(30, || env
        .container_dir("s1")
        .is_some_and(|d| d.join("upper/ready").exists())));
    kill(pid as i32, libc::SIGTERM);
    assert_eq!(env.wait(pid, 30), 143);
    // Without --init the command is pid 1 and sees the signal with its own handler.
    let pid = env.spawn(&[
        "run",
        "--rm",
        "--name",
        "s2",
        "t",
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; touch /ready; while :; do sleep 0.1; done",
    ]);
    assert!(wait_until(30, || env
        .container_dir("s2")
        .is_some_and(|d| d.join("upper/ready").exists())));
    kill(pid as i32, libc::SIGTERM);
    assert_eq!(env.wait(pid, 30), 42);
    assert!(wait_until(10, || env.containers().is_empty()));
}

#[test]
fn rm_flag_leaves_nothing() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&[
        "run",
        "--rm",
        "--memory",
        "64m",
        "--pids-limit",
        "64",
        "t",
        "--",
        "sh",
        "-c",
        "echo x > /file; cat /file",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "x\n");
    assert!(env.containers().is_empty(), "{:?}", env.containers());
    assert_eq!(env.host_mounts(), Vec::<String>::new());
    assert!(
        wait_until(10, || env.processes().is_empty()),
        "left running: {:?}",
        env.processes()
    );
}

#[test]
fn volumes_reach_the_host() {
    let Some(env) = Env::new() else { return };
    let vol = env.root().join("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("in"), "from host\n").unwrap();
    let spec = format!("{}:/data", vol.display());
    let out = env.um(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "t",
        "--",
        "sh",
        "-c",
        "cat /data/in; echo out > /data/out",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "from host\n");
    assert_eq!(fs::read_to_string(vol.join("out")).unwrap(), "out\n");
    let ro = format!("{}:/data:ro", vol.display());
    let out = env.um(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "t",
        "--",
        "sh",
        "-c",
        "echo no > /data/ro",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!vol.join("ro").exists());
}

#[test]
fn two_containers_of_one_image_at_once() {
    let Some(env) = Env::new() else { return };
    let script = |v: &str| {
        format!(
            "echo {v} > /f; touch /ready-{v}; while ! test -e /go; do sleep 0.05; done; test \"$(cat /f)\" = {v}"
        )
    };
    let (sa, sb) = (script("a"), script("b"));
    let a = env.spawn(&["run", "--name", "a", "t", "--", "sh", "-c", &sa]);
    let b = env.spawn(&["run", "--name", "b", "t", "--", "sh", "-c", &sb]);
    let upper = |n: &str| env.container_dir(n).map(|d| d.join("upper"));
    assert!(wait_until(30, || upper("a")
        .is_some_and(|u| u.join("ready-a").exists())
        && upper("b").is_some_and(|u| u.join("ready-b").exists())));
    let ps = env.um(&["ps"]);
    assert_eq!(ps.stdout.matches("running").count(), 2, "{ps:?}");
    for n in ["a", "b"] {
        fs::write(upper(n).unwrap().join("go"), "").unwrap();
    }
    assert_eq!(env.wait(a, 30), 0);
    assert_eq!(env.wait(b, 30), 0);
    assert_eq!(
        fs::read_to_string(upper("a").unwrap().join("f")).unwrap(),
        "a\n"
    );
    assert_eq!(
        fs::read_to_string(upper("b").unwrap().join("f")).unwrap(),
        "b\n"
    );
    assert!(!env.layer().join("f").exists());
    let ps = env.um(&["ps", "-a"]);
    assert_eq!(ps.stdout.matches("exited (0)").count(), 2, "{ps:?}");
    for n in ["a", "b"] {
        assert_eq!(env.um(&["rm", n]).code, 0);
    }
    assert!(env.containers().is_empty());
}

#[test]
fn two_starts_of_one_container_at_once_mount_its_upper_once() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&[
        "create",
        "--name",
        "c1",
        "t",
        "--",
        "sh",
        "-c",
        "echo $$ >> /starts; sleep 1",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    for round in 1..=3 {
        let a = env.spawn(&["start", "c1"]);
        let b = env.spawn(&["start", "c1"]);
        let codes = [env.wait(a, 60), env.wait(b, 60)];
        assert_eq!(
            codes.iter().filter(|c| **c == 0).count(),
            1,
            "round {round}: exactly one start runs the container: {codes:?}"
        );
        let upper = env.container_dir("c1").unwrap().join("upper");
        let starts = fs::read_to_string(upper.join("starts")).unwrap();
        assert_eq!(starts.lines().count(), round, "{starts}");
    }
}

#[test]
fn killed_runner_is_cleaned_by_rm() {
    let Some(env) = Env::new() else { return };
    let pid = env.spawn(&[
        "run",
        "--name",
        "k",
        "--memory",
        "64m",
        "--pids-limit",
        "32",
        "t",
        "--",
        "sh",
        "-c",
        "touch /ready; sleep 100",
    ]);
    assert!(wait_until(30, || env
        .container_dir("k")
        .is_some_and(|d| d.join("upper/ready").exists())));
    let dir = env.container_dir("k").unwrap();
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!cgroup_dirs(&id).is_empty());
    let out = env.um(&["rm", "k"]);
    assert_ne!(
        out.code, 0,
        "rm of a running container must refuse: {out:?}"
    );
    kill(pid as i32, libc::SIGKILL);
    assert_eq!(env.wait(pid, 30), 137);
    let ps = env.um(&["ps", "-a"]);
    assert!(ps.stdout.contains("dead"), "{ps:?}");
    // The union's daemon outlives its runner until rm.
    let upper = format!("upperdir={}", dir.join("upper").display());
    assert!(!support::run::processes_naming(&upper).is_empty());
    let out = env.um(&["rm", "k"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!dir.exists());
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    assert!(
        wait_until(10, || support::run::processes_naming(&upper).is_empty()),
        "daemon left"
    );
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

#[test]
fn create_start_stop_ps() {
    let Some(env) = Env::new() else { return };
    let out = env.um(&["create", "--name", "c", "t", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 12, "{out:?}");
    let ps = env.um(&["ps", "-a"]);
    assert!(
        ps.stdout.contains(&id) && ps.stdout.contains("created"),
        "{ps:?}"
    );
    assert_eq!(env.um(&["start", "c"]).code, 5);
    assert_eq!(env.um(&["start", &id[..6]]).code, 5);
    let ps = env.um(&["ps"]);
    assert!(!ps.stdout.contains(&id), "{ps:?}");
    // stop: SIGTERM to an --init container ends it with 143.
    let out = env.um(&[
        "create",
        "--name",
        "d",
        "--init",
        "t",
        "--",
        "sh",
        "-c",
        "touch /ready; exec sleep 100",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let pid = env.spawn(&["start", "d"]);
    assert!(wait_until(30, || env
        .container_dir("d")
        .is_some_and(|d| d.join("upper/ready").exists())));
    assert!(env.um(&["ps"]).stdout.contains(" d "));
    assert_eq!(env.um(&["stop", "d"]).code, 0);
    assert_eq!(env.wait(pid, 30), 143);
    assert!(env.um(&["ps", "-a"]).stdout.contains("exited (143)"));
    assert_eq!(env.um(&["rm", "c", "d"]).code, 0);
    assert!(env.containers().is_empty());
}

#[test]
fn init_reaps_orphans() {
    let Some(env) = Env::new() else { return };
    // Orphans (the subshell exits at once, its sleeps go to pid 1) end while
    // the command still runs: the init reaps them, so no zombie is listed.
    let out = env.um(&[
        "run",
        "--rm",
        "--init",
        "t",
        "--",
        "sh",
        "-c",
        "(sleep 0.1 & sleep 0.1 & sleep 0.1 &); sleep 1; ps -o pid,stat,comm",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert!(!lines.is_empty(), "{out:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.split_whitespace().nth(1) != Some("Z")),
        "{out:?}"
    );
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("1 ")),
        "{out:?}"
    );
}

/// The container's pid 1 as its state file records it.
fn pid1_of(dir: &std::path::Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("state.json")).ok()?;
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&text).ok()?;
    i32::try_from(v["pid"][0].as_i64()?).ok()
}

/// `/proc/PID/stat`'s state letter; None once the process is gone (reaped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Start a container that sleeps; its directory, pid 1 and union daemon.
fn sleeping(env: &Env, name: &str, extra: &[&str]) -> (u32, std::path::PathBuf, i32, i32) {
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["t", "--", "sleep", "100"]);
    let runner = env.spawn(&args);
    let daemons = |d: &std::path::Path| {
        support::run::processes_naming(&format!("upperdir={}", d.join("upper").display()))
    };
    assert!(wait_until(30, || env.container_dir(name).is_some_and(
        |d| pid1_of(&d).is_some() && daemons(&d).len() == 1
    )));
    let dir = env.container_dir(name).unwrap();
    let daemon = daemons(&dir)[0];
    (runner, dir.clone(), pid1_of(&dir).unwrap(), daemon)
}

#[test]
fn stop_and_rm_f_leave_no_zombie() {
    let Some(env) = Env::new() else { return };
    // The runner reaps both its pid 1 and the union's daemon (which runs in
    // a session of its own) before it ends: neither is left, not even as a
    // zombie for the host's init to find.
    let (runner, dir, pid1, daemon) = sleeping(&env, "s", &[]);
    assert_eq!(env.um(&["stop", "-t", "1", "s"]).code, 0);
    assert_eq!(env.wait(runner, 30), 137);
    assert_eq!(proc_state(pid1), None, "pid 1 {pid1} left");
    assert_eq!(proc_state(daemon), None, "daemon {daemon} left");
    // rm -f of a running container ends it through its pid 1; the runner
    // does the cleanup, so again nothing is left to the host's init.
    let (runner, dir_r, pid1, daemon) = sleeping(&env, "r", &["--init"]);
    let out = env.um(&["rm", "-f", "r"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.wait(runner, 30), 137);
    assert_eq!(proc_state(pid1), None, "pid 1 {pid1} left");
    assert_eq!(proc_state(daemon), None, "daemon {daemon} left");
    assert!(!dir_r.exists());
    for d in [&dir, &dir_r] {
        let id = d.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(support::run::processes_naming(&id), Vec::<i32>::new());
        assert!(cgroup_dirs(&id).is_empty());
    }
    assert_eq!(env.um(&["rm", "s"]).code, 0);
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

#[test]
fn killed_runner_ends_a_container_of_another_user() {
    let Some(env) = Env::new() else { return };
    // A change of user clears the parent death signal; the runner sets it
    // again, so the container does not outlive a runner killed with -9.
    let (runner, dir, pid1, _) = sleeping(&env, "u", &["-u", "app"]);
    assert!(
        wait_until(10, || fs::read_to_string(format!("/proc/{pid1}/status"))
            .is_ok_and(|s| s.contains("Uid:\t1001\t"))),
        "pid 1 {pid1} does not run as 1001"
    );
    kill(runner as i32, libc::SIGKILL);
    assert_eq!(env.wait(runner, 30), 137);
    assert!(
        wait_until(10, || !matches!(proc_state(pid1), Some(s) if s != 'Z')),
        "pid 1 {pid1} still runs after its runner was killed"
    );
    // A killed runner (even one not reaped yet) is not running: plain rm
    // cleans up after it.
    assert!(env.um(&["ps", "-a"]).stdout.contains("dead"));
    let out = env.um(&["rm", "u"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        wait_until(10, || support::run::processes_naming(&id).is_empty()),
        "{:?}",
        support::run::processes_naming(&id)
    );
    assert!(!dir.exists());
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

#[test]
fn a_running_container_keeps_no_copy_of_other_mounts() {
    let Some(env) = Env::new() else { return };
    // A union mounted on the host before the container starts: the
    // container's namespaces are made from the host's and would hold a copy
    // of it, keeping its daemon serving after its owner unmounts it.
    let root = env.root();
    for d in ["hl", "hu", "hw", "hm"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("hl/f"), "lower").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        root.join("hl").display(),
        root.join("hu").display(),
        root.join("hw").display()
    );
    let hm = root.join("hm");
    let st = std::process::Command::new(support::run::bin())
        .args(["-o", &opts])
        .arg(&hm)
        .status()
        .unwrap();
    assert!(st.success());
    let host_daemon = support::run::processes_naming(&opts);
    assert_eq!(host_daemon.len(), 1, "{host_daemon:?}");
    let (runner, _, pid1, daemon) = sleeping(&env, "k", &[]);
    let hm_text = hm.to_string_lossy().into_owned();
    for (who, pid) in [
        ("runner", runner as i32),
        ("pid 1", pid1),
        ("daemon", daemon),
    ] {
        let table = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        assert!(
            !table.contains(&hm_text),
            "the container's {who} holds a copy of {hm_text}"
        );
    }
    let st = std::process::Command::new(support::run::bin())
        .args(["umount", &hm_text])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        wait_until(10, || support::run::processes_naming(&opts).is_empty()),
        "the host mount's daemon still serves a copy while the container runs"
    );
    assert_eq!(env.um(&["rm", "-f", "k"]).code, 0);
    assert_eq!(env.wait(runner, 30), 137);
}
