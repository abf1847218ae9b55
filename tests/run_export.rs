//! `unionmount container save` and `container load`: a container moved to
//! another store (its image, its changes, its settings) shows the same
//! merged view there; the archive is an OCI image skopeo reads, with gzip
//! layers; a running container is saved as a snapshot; bad input is one line
//! and leaves no container behind. And `unionmount export`, as `docker
//! export`: the container's merged filesystem as a plain tar.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use support::run::{Env, Out, wait_until};

/// First start: change the image's files (add, modify, delete, replace a
/// directory, modes, owners, a symlink, a fifo, a hard link). Later starts:
/// describe the merged view (everything but the mount points and /done).
const SCRIPT: &str = r#"
if [ ! -e /done ]; then
  echo new > /etc/new; chmod 0640 /etc/new; chown 5:6 /etc/new
  echo changed >> /etc/motd
  rm /bin/ls /etc/group
  rm -rf /usr/bin; mkdir -m 0711 /usr/bin; echo only > /usr/bin/only
  mkdir -p /srv/data/deep; echo d > /srv/data/deep/f; chown -R 7:8 /srv
  ln -s /etc/new /link; mkfifo /fifo; ln /etc/new /etc/new-hard
  touch /done
  exit 0
fi
echo "host=$(hostname) pwd=$(pwd) a=$A user=$(id -u)"
find / -xdev ! -path /done ! -path /proc ! -path /sys ! -path /dev | sort | while read -r f; do
  if [ -L "$f" ]; then echo "$f link $(readlink "$f")"
  elif [ -f "$f" ]; then echo "$f $(stat -c '%a %u %g %h %s' "$f") $(md5sum < "$f" | cut -c1-32)"
  else echo "$f $(stat -c '%F %a %u %g' "$f")"; fi
done
"#;

/// Create the container `web` in `env`'s store and make its changes.
fn changed_container(env: &Env) {
    let out = env.um(&[
        "create",
        "--name",
        "web",
        "-e",
        "A=1",
        "-w",
        "/srv",
        "--hostname",
        "box",
        "t",
        "--",
        "sh",
        "-c",
        SCRIPT,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = env.um(&["start", "web"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
}

fn one_line_error(out: &Out, needle: &str) {
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains(needle), "{needle}: {out:?}");
}

/// No container and no import leftovers in `store`.
fn nothing_made(store: &Path) {
    let names = |d: &str| -> Vec<String> {
        fs::read_dir(store.join(d))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names("containers"), Vec::<String>::new());
    assert!(
        names("tmp").iter().all(|n| !n.starts_with("import-")),
        "{:?}",
        names("tmp")
    );
}

#[test]
fn a_saved_container_loads_into_another_store_with_its_changes_and_settings() {
    let Some(env) = Env::new() else { return };
    if !support::tools::require(&["skopeo"]) {
        return;
    }
    changed_container(&env);
    let before = env.um(&["start", "web"]);
    assert_eq!(before.code, 0, "{before:?}");
    assert!(
        before.stdout.starts_with("host=box pwd=/srv a=1 user=0\n"),
        "{before:?}"
    );
    assert!(
        before.stdout.contains("/etc/new 640 5 6 2 4 "),
        "{before:?}"
    );
    assert!(!before.stdout.contains("/bin/ls"), "{before:?}");
    let archive = env.root().join("web.tar");
    let out = env.um(&["container", "save", "web", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Saved web to "), "{out:?}");
    // An OCI image: the image's layer plus one layer of changes.
    let oci = format!("oci-archive:{}", archive.display());
    let inspect = support::tools::ok(
        "skopeo inspect",
        std::process::Command::new("skopeo")
            .args(["inspect", &oci])
            .output()
            .unwrap(),
    );
    assert_eq!(inspect.matches("\"sha256:").count(), 3, "{inspect}");
    assert!(inspect.contains("\"A=1\""), "{inspect}");
    let raw = support::tools::ok(
        "skopeo inspect --raw",
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", &oci])
            .output()
            .unwrap(),
    );
    assert!(raw.contains("io.unionmount.container"), "{raw}");
    assert!(
        raw.contains("org.opencontainers.image.base.digest"),
        "{raw}"
    );
    // Every layer gzip, as Docker and podman write them (the image `t` is
    // kept zstd in the store).
    assert_eq!(raw.matches("tar+gzip").count(), 2, "{raw}");
    assert!(!raw.contains("zstd"), "{raw}");
    // Into a second store (named by UNIONMOUNT_STORE), under a new id.
    let other = env.other_store("store2");
    let other_s = other.to_str().unwrap();
    let out = env.um_bare(
        &[("UNIONMOUNT_STORE", other_s)],
        &["container", "load", archive.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Loaded web ("), "{out:?}");
    let ps = env.um_in(&other, &["ps", "-a"]);
    assert!(
        ps.stdout.contains(" web ") && ps.stdout.contains("created"),
        "{ps:?}"
    );
    let images = env.um_in(&other, &["image", "ls"]);
    assert!(
        images.stdout.lines().any(|l| l.starts_with("t ")),
        "{images:?}"
    );
    // The upper is in overlay form: a whiteout, an opaque directory.
    let dir = fs::read_dir(other.join("containers"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let upper = dir.join("upper");
    let wh = fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(upper.join("usr/bin"), "trusted.overlay.opaque", &mut buf)
        .expect("usr/bin is opaque");
    assert_eq!(&buf[..n], b"y");
    // Started there, the container shows exactly the same merged view.
    let after = env.um_in(&other, &["start", "web"]);
    assert_eq!(after.code, 0, "{after:?}");
    assert_eq!(after.stdout, before.stdout);
    // Once more, under another name in the first store: same image, no copy.
    let images_before = env.um(&["image", "ls"]).stdout;
    let out = env.um(&[
        "container",
        "load",
        archive.to_str().unwrap(),
        "--name",
        "web2",
    ]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    assert_eq!(env.um(&["image", "ls"]).stdout, images_before);
    let again = env.um(&["start", "web2"]);
    assert_eq!(again.stdout, before.stdout);
    for (store, name) in [(&env.store, "web"), (&env.store, "web2"), (&other, "web")] {
        assert_eq!(env.um_in(store, &["rm", name]).code, 0);
    }
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

#[test]
fn a_running_container_is_saved_as_a_snapshot() {
    let Some(env) = Env::new() else { return };
    let runner = env.spawn(&[
        "run",
        "--name",
        "live",
        "t",
        "--",
        "sh",
        "-c",
        "echo before > /etc/snap; touch /ready; sleep 100",
    ]);
    assert!(wait_until(30, || env
        .container_dir("live")
        .is_some_and(|d| d.join("upper/ready").exists())));
    let archive = env.root().join("live.tar");
    let out = env.um(&["container", "save", "live", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("snapshot"), "{out:?}");
    assert!(env.um(&["ps"]).stdout.contains(" live "), "still running");
    assert_eq!(env.um(&["rm", "-f", "live"]).code, 0);
    assert_eq!(env.wait(runner, 30), 137);
    let other = env.other_store("store2");
    let out = env.um_in(&other, &["container", "load", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let dir = fs::read_dir(other.join("containers"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(
        fs::read_to_string(dir.join("upper/etc/snap")).unwrap(),
        "before\n"
    );
    assert_eq!(env.um_in(&other, &["rm", "live"]).code, 0);
}

#[test]
fn bad_input_is_one_line_and_makes_no_container() {
    let Some(env) = Env::new() else { return };
    let root = env.root();
    let tar = |n: &str| root.join(n).to_string_lossy().into_owned();
    // save: unknown container, existing output.
    let out = env.um(&["container", "save", "nosuch", &tar("x.tar")]);
    one_line_error(&out, "nosuch");
    assert!(!root.join("x.tar").exists());
    let out = env.um(&["create", "--name", "c", "t", "--", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    fs::write(root.join("exists.tar"), "keep").unwrap();
    let out = env.um(&["container", "save", "c", &tar("exists.tar")]);
    one_line_error(&out, "already exists");
    assert_eq!(fs::read_to_string(root.join("exists.tar")).unwrap(), "keep");
    let out = env.um(&["container", "save", "c", &tar("c.tar")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(env.um(&["rm", "c"]).code, 0);
    let other = env.other_store("store2");
    // load: a missing file, garbage, an image that is no saved container,
    // a truncated archive, a name in use.
    let out = env.um_in(&other, &["container", "load", &tar("missing.tar")]);
    one_line_error(&out, "missing.tar");
    fs::write(root.join("garbage.tar"), vec![0x5a; 5000]).unwrap();
    let out = env.um_in(&other, &["container", "load", &tar("garbage.tar")]);
    one_line_error(&out, "garbage.tar");
    let out = env.um(&[
        "image",
        "save",
        "t",
        &tar("image.tar"),
        "--format",
        "oci-archive",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = env.um_in(&other, &["container", "load", &tar("image.tar")]);
    one_line_error(&out, "not a container export");
    let whole = fs::read(root.join("c.tar")).unwrap();
    fs::write(root.join("cut.tar"), &whole[..whole.len() / 2]).unwrap();
    let out = env.um_in(&other, &["container", "load", &tar("cut.tar")]);
    one_line_error(&out, "cut.tar");
    nothing_made(&other);
    let out = env.um_in(
        &other,
        &["container", "load", &tar("c.tar"), "--name", "bad/name"],
    );
    one_line_error(&out, "--name");
    nothing_made(&other);
    assert_eq!(
        env.um_in(&other, &["container", "load", &tar("c.tar")])
            .code,
        0
    );
    let out = env.um_in(&other, &["container", "load", &tar("c.tar")]);
    one_line_error(&out, "already in use");
    let ps = env.um_in(&other, &["ps", "-a"]);
    assert_eq!(ps.stdout.lines().count(), 2, "{ps:?}");
    assert_eq!(env.um_in(&other, &["rm", "c"]).code, 0);
    nothing_made(&other);
}

/// `unionmount export NAME -o FILE`, as `docker export`: one plain tar of the
/// container's merged filesystem (the image with its changes: deleted files
/// gone, a replaced directory holding only its new content, owners, modes,
/// links and fifos as the container sees them); without `-o`, the same tar
/// on standard output; no mount left behind.
#[test]
fn export_writes_the_merged_filesystem_as_a_tar() {
    let Some(env) = Env::new() else { return };
    changed_container(&env);
    let file = env.root().join("fs.tar");
    let out = env.um(&["export", "web", "-o", file.to_str().unwrap()]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    let tar = |args: &[&str]| {
        support::tools::ok(
            "tar",
            std::process::Command::new("tar")
                .args(args)
                .arg("-f")
                .arg(&file)
                .output()
                .unwrap(),
        )
    };
    let list = tar(&["-tv", "--numeric-owner"]);
    let line = |path: &str| -> String {
        list.lines()
            .find(|l| l.split_whitespace().nth(5) == Some(path))
            .unwrap_or_else(|| panic!("{path} not in the tar:\n{list}"))
            .to_string()
    };
    assert!(line("etc/new").starts_with("-rw-r----- 5/6 "), "{list}");
    assert!(line("srv/data/deep/f").contains(" 7/8 "), "{list}");
    assert!(line("link").ends_with("link -> /etc/new"), "{list}");
    assert!(line("fifo").starts_with('p'), "{list}");
    assert!(line("etc/new-hard").contains("link to etc/new"), "{list}");
    assert!(line("usr/bin").starts_with("drwx--x--x"), "{list}");
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for gone in ["bin/ls", "etc/group", "usr/bin/env"] {
        assert!(!names.contains(&gone), "{gone} in the tar:\n{list}");
    }
    assert!(names.contains(&"usr/bin/only") && names.contains(&"bin/busybox"));
    assert_eq!(tar(&["-xO", "etc/motd"]), "orig\nchanged\n");
    let to_stdout = env.um(&["export", "web"]);
    assert_eq!(to_stdout.code, 0, "{}", to_stdout.stderr);
    assert!(
        to_stdout.stdout == String::from_utf8_lossy(&fs::read(&file).unwrap()),
        "standard output differs from -o"
    );
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains("unionmount-export-"), "{table}");
    assert_eq!(env.um(&["rm", "web"]).code, 0);
}
