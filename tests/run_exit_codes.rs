//! The exit statuses of `run`, `create` and `start`, as podman and Docker
//! give them: 125 when the runner itself fails (its flags, the image, the
//! store, the user, the working directory), 126 when the command is there
//! but cannot be run, 127 when it is not there, else the command's own
//! status. Each failure is one line on stderr naming what and why.

mod support;

use support::run::{Env, Out};

/// The status is `code` and stderr is one line holding `words`.
#[track_caller]
fn fails(out: &Out, code: i32, words: &str) {
    assert_eq!(out.code, code, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(out.stderr.starts_with("unionmount: "), "{out:?}");
    assert!(out.stderr.contains(words), "{words:?} in {out:?}");
}

#[test]
fn a_command_that_cannot_run_is_126_or_127() {
    let Some(env) = Env::new() else { return };
    for init in [&[][..], &["--init"][..]] {
        let run = |cmd: &str| {
            let mut args = vec!["run", "--rm"];
            args.extend(init);
            args.extend(["t", "--", cmd]);
            env.um(&args)
        };
        let out = run("nosuch");
        fails(&out, 127, "nosuch: executable file not found in $PATH");
        fails(&run("/no/such"), 127, "/no/such: no such file or directory");
        fails(&run("/etc"), 126, "/etc: is a directory");
        fails(&run("/etc/motd"), 126, "/etc/motd: permission denied");
    }
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn a_runner_failure_is_125() {
    let Some(env) = Env::new() else { return };
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm"];
        all.extend(args);
        env.um(&all)
    };
    fails(&run(&["nosuch-image", "true"]), 125, "nosuch-image");
    fails(&run(&["-u", "nosuch", "t", "true"]), 125, "user nosuch");
    fails(&run(&["-w", "/etc/motd", "t", "true"]), 125, "/etc/motd");
    fails(&run(&["-w", "rel", "t", "true"]), 125, "--workdir rel");
    fails(&run(&["-v", "/no/such:/x", "t", "true"]), 125, "-v");
    // A store that is not there is said so, and not made.
    let gone = env.other_store("no-store");
    let out = env.um_in(&gone, &["run", "--rm", "t", "true"]);
    fails(&out, 125, "no store at");
    assert!(!gone.exists());
    assert!(env.containers().is_empty(), "{:?}", env.containers());
}

#[test]
fn usage_errors_of_run_create_and_start_are_125() {
    let Some(env) = Env::new() else { return };
    for cmd in ["run", "create"] {
        let out = env.um(&[cmd, "--bogus", "t", "true"]);
        fails(&out, 125, "--bogus");
        let out = env.um(&[cmd]);
        fails(&out, 125, "<IMAGE>");
    }
    fails(&env.um(&["start", "--bogus", "x"]), 125, "--bogus");
    // Help is not an error.
    assert_eq!(env.um(&["run", "--help"]).code, 0);
    // Other commands keep clap's usual status.
    assert_eq!(env.um(&["ps", "--bogus"]).code, 2);
}

#[test]
fn create_and_start_report_the_same_way() {
    let Some(env) = Env::new() else { return };
    fails(
        &env.um(&["create", "nosuch-image", "true"]),
        125,
        "nosuch-image",
    );
    fails(
        &env.um(&["start", "nosuch-container"]),
        125,
        "nosuch-container",
    );
    let out = env.um(&["create", "--name", "c", "t", "nosuch"]);
    assert_eq!(out.code, 0, "{out:?}");
    fails(
        &env.um(&["start", "c"]),
        127,
        "nosuch: executable file not found",
    );
    let out = env.um(&["create", "--name", "d", "t", "sh", "-c", "exit 9"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.um(&["start", "d"]).code, 9);
}
