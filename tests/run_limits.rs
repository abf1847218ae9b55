//! `--memory` and `--pids-limit`: cgroup v2 where its controllers are
//! available, v1 otherwise; an OOM kill comes back as 137, forks fail at the
//! limit, and the cgroup directories go when the container ends.

mod support;

use support::run::{Env, cgroup_dirs};

fn id_of(env: &Env, name: &str) -> String {
    let dir = env.container_dir(name).expect("container");
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn memory_over_the_limit_is_an_oom_kill() {
    let Some(env) = Env::new() else { return };
    // dd fills a 64 MiB buffer: far over 16 MiB.
    let out = env.um(&[
        "run",
        "--name",
        "m",
        "--memory",
        "16m",
        "t",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(out.code, 137, "{out:?}");
    assert!(out.stderr.contains("out of memory"), "{out:?}");
    let id = id_of(&env, "m");
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    // Under the limit the same command works.
    let out = env.um(&[
        "run",
        "--rm",
        "--memory",
        "256m",
        "t",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=16M",
        "count=1",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn pids_limit_stops_forks() {
    let Some(env) = Env::new() else { return };
    let script = "i=0; while [ $i -lt 12 ]; do sleep 1 & i=$((i+1)); done; wait";
    let out = env.um(&[
        "run",
        "--name",
        "p",
        "--pids-limit",
        "5",
        "t",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("fork"), "{out:?}");
    let id = id_of(&env, "p");
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    let out = env.um(&[
        "run",
        "--rm",
        "--pids-limit",
        "64",
        "t",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
}
