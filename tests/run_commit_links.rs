//! A commit keeps what the container saw of a hard-link group of its image:
//! changed through any name, every name holds the change in the new layer,
//! and the names stay one file there.

mod support;

use std::fs;
use std::process::Command;

use support::run::Env;

/// The image `h`: the test image plus one group of three names
/// (`/link1`, `/link2`, `/etc/link3`) reading "linked".
fn image_with_a_group(env: &Env) {
    let root = env.root().join("hl-rootfs");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(env.root().join("rootfs"))
        .arg(&root)
        .status()
        .expect("cp");
    assert!(cp.success());
    fs::write(root.join("link1"), "linked\n").unwrap();
    fs::hard_link(root.join("link1"), root.join("link2")).unwrap();
    fs::hard_link(root.join("link1"), root.join("etc/link3")).unwrap();
    let out = env.um(&["image", "import", root.to_str().unwrap(), "--tag", "h"]);
    assert_eq!(out.code, 0, "{out:?}");
}

const SHOW: &str =
    "cat /link1 /link2 /etc/link3; stat -c '%h %i' /link1 /link2 /etc/link3 | sort -u";

/// Run `change` in a container of `h`, commit it, and return what a
/// container of the commit shows: the three names' data, then their one
/// link count and inode (a single line when they are still one file).
fn commit_after(env: &Env, change: &str) -> (String, String) {
    let script = format!("{change}; {SHOW}");
    let seen = env.um(&["run", "--name", "c1", "h", "--", "sh", "-c", &script]);
    assert_eq!(seen.code, 0, "{seen:?}");
    let out = env.um(&["commit", "c1", "--tag", "h:2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let after = env.um(&["run", "--rm", "h:2", "--", "sh", "-c", SHOW]);
    assert_eq!(after.code, 0, "{after:?}");
    (seen.stdout, after.stdout)
}

#[test]
fn a_write_through_one_name_is_committed_under_every_name() {
    let Some(env) = Env::new() else { return };
    image_with_a_group(&env);
    let (seen, committed) = commit_after(&env, "echo x > /link1");
    assert!(seen.starts_with("x\nx\nx\n"), "the container saw: {seen}");
    assert_eq!(seen.lines().count(), 4, "one file in the container: {seen}");
    assert_eq!(committed.lines().take(3).collect::<Vec<_>>(), ["x"; 3]);
    assert_eq!(
        committed.lines().count(),
        4,
        "the names are no longer one file after the commit: {committed}"
    );
    assert!(
        committed.lines().nth(3).unwrap().starts_with("3 "),
        "{committed}"
    );
}

#[test]
fn a_truncation_then_an_append_through_another_name_are_committed() {
    let Some(env) = Env::new() else { return };
    image_with_a_group(&env);
    let (seen, committed) = commit_after(&env, ": > /link2; echo y >> /etc/link3");
    assert!(seen.starts_with("y\ny\ny\n"), "the container saw: {seen}");
    assert_eq!(committed.lines().take(3).collect::<Vec<_>>(), ["y"; 3]);
    assert_eq!(committed.lines().count(), 4, "{committed}");
}

#[test]
fn a_name_removed_in_the_container_stays_removed_in_the_commit() {
    let Some(env) = Env::new() else { return };
    image_with_a_group(&env);
    let script = "echo z > /link2; rm /etc/link3; cat /link1; stat -c %h /link1";
    let seen = env.um(&["run", "--name", "c1", "h", "--", "sh", "-c", script]);
    assert_eq!((seen.code, seen.stdout.as_str()), (0, "z\n2\n"), "{seen:?}");
    let out = env.um(&["commit", "c1", "--tag", "h:2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let show = "cat /link1 /link2; stat -c %h /link1; test ! -e /etc/link3 && echo gone";
    let after = env.um(&["run", "--rm", "h:2", "--", "sh", "-c", show]);
    assert_eq!(after.stdout, "z\nz\n2\ngone\n", "{after:?}");
}
