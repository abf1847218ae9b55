//! The image config is honoured: Entrypoint, Cmd, Env, WorkingDir, User; a
//! command on the command line replaces Cmd and keeps the Entrypoint; -u and
//! -w win over the image's. The image is made by umoci from the busybox root.

mod support;

use std::path::Path;
use std::process::Command;

use support::run::Env;

/// Run a tool; false (after saying why) when it is missing outside CI.
fn tool(dir: &Path, args: &[&str]) -> bool {
    match Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "{args:?}: {o:?}");
            true
        }
        Err(e) if support::run::under_ci() => {
            panic!("{} is needed under CI=true: {e}", args[0])
        }
        Err(e) => {
            eprintln!("SKIPPING: {}: {e}", args[0]);
            false
        }
    }
}

/// An image `cfg` in the store: the busybox root with a config.
fn configured_image(env: &Env) -> bool {
    let root = env.root();
    let rootfs = root.join("rootfs");
    let steps: &[&[&str]] = &[
        &["umoci", "init", "--layout", "oci"],
        &["umoci", "new", "--image", "oci:base"],
        &["umoci", "unpack", "--image", "oci:base", "b"],
        &["cp", "-a", &format!("{}/.", rootfs.display()), "b/rootfs/"],
        &["umoci", "repack", "--image", "oci:base", "b"],
        &[
            "umoci",
            "config",
            "--image",
            "oci:base",
            "--tag",
            "cfg",
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.cmd",
            "echo $FOO; pwd; id -u; id -g",
            "--config.env",
            "FOO=bar",
            "--config.workingdir",
            "/home/app",
            "--config.user",
            "app",
        ],
    ];
    for s in steps {
        if !tool(&root, s) {
            return false;
        }
    }
    let oci = root.join("oci");
    let out = env.um(&["image", "load", oci.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    true
}

#[test]
fn entrypoint_cmd_env_workdir_user() {
    let Some(env) = Env::new() else { return };
    if !configured_image(&env) {
        return;
    }
    let out = env.um(&["run", "--rm", "cfg"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "bar\n/home/app\n1001\n1001\n");
    // A command replaces Cmd; the Entrypoint stays; -u, -w and -e win.
    let out = env.um(&[
        "run",
        "--rm",
        "-u",
        "0",
        "-w",
        "/tmp",
        "-e",
        "FOO=baz",
        "cfg",
        "echo $FOO $HOME; pwd; id -u",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "baz /root\n/tmp\n0\n");
}
