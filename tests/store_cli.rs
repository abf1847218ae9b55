//! The store commands as podman and Docker users expect them: which commands
//! may make a store, `import` of a root filesystem tar, image ids and id
//! prefixes, `image save`'s defaults.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::store::{Env, need_root, need_tools, run};

/// A small root filesystem tar (`etc/motd`, `bin/`) in `dir`.
fn rootfs_tar(dir: &Path, name: &str, motd: &str) -> PathBuf {
    let src = dir.join(format!("{name}.d"));
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("etc/motd"), motd).unwrap();
    let tar = dir.join(name);
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("."));
    tar
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `unionmount ARGS` in directory `cwd`, with no store in the environment.
fn um_in_dir(cwd: &Path, args: &[&str]) -> Output {
    Command::new(support::bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("UNIONMOUNT_STORE")
        .output()
        .expect("running unionmount")
}

/// Every command that does not write an image, on a mistyped `--store`:
/// one line "no store at DIR", non-zero exit, and no store made there.
#[test]
fn only_commands_that_write_an_image_make_a_store() {
    let env = Env::new();
    let t = env.path();
    let reads: &[&[&str]] = &[
        &["image", "ls", "--store", "typo"],
        &["image", "inspect", "--store", "typo", "img"],
        &["image", "tag", "--store", "typo", "img", "b"],
        &["image", "rm", "--store", "typo", "img"],
        &["image", "save", "--store", "typo", "img", "out.tar"],
        &["image", "prune", "--store", "typo"],
        &["image", "fsck", "--store", "typo"],
        &["image", "mount", "--store", "typo", "img", "mnt"],
        &["ps", "--store", "typo"],
        &["run", "--store", "typo", "img", "true"],
        &["create", "--store", "typo", "img"],
        &["start", "--store", "typo", "c"],
        &["stop", "--store", "typo", "c"],
        &["rm", "--store", "typo", "c"],
        &["export", "--store", "typo", "c", "-o", "out.tar"],
        &["container", "save", "--store", "typo", "c", "out.tar"],
        &[
            "container",
            "export",
            "--store",
            "typo",
            "c",
            "-o",
            "out.tar",
        ],
    ];
    for args in reads {
        let out = um_in_dir(t, args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err, "unionmount: no store at typo\n", "{args:?}");
        assert!(!t.join("typo").exists(), "{args:?} made a store");
    }
    // An absolute path, and `UNIONMOUNT_STORE`, are named stores too.
    let abs = t.join("elsewhere");
    let out = um_in_dir(t, &["run", "--store", abs.to_str().unwrap(), "img"]);
    assert_eq!(
        stderr(&out),
        format!("unionmount: no store at {}\n", abs.display())
    );
    let out = env.um_out(&["image", "ls"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no store at"), "{}", stderr(&out));
    assert!(!env.store().exists());
    // The commands that write an image make it.
    let tar = rootfs_tar(t, "rootfs.tar", "hi\n");
    let made = [
        vec![
            "image",
            "import",
            "--store",
            "s1",
            tar.to_str().unwrap(),
            "i",
        ],
        vec!["import", "--store", "s2", tar.to_str().unwrap(), "i"],
    ];
    for args in made {
        let out = um_in_dir(t, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert!(t.join("s1/index.json").is_file() && t.join("s2/index.json").is_file());
    let saved = t.join("i.tar");
    let out = um_in_dir(
        t,
        &[
            "image",
            "save",
            "--store",
            "s1",
            "i",
            saved.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = um_in_dir(
        t,
        &["image", "load", "--store", "s3", saved.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.join("s3/index.json").is_file());
}

/// The default store (no `--store`, no `UNIONMOUNT_STORE`) of a user who
/// never made one: `image ls` and `ps` list nothing and make nothing, as
/// podman's do on a fresh machine; other commands say there is no store;
/// `import` makes it.
#[test]
fn listing_a_default_store_not_yet_made_makes_nothing() {
    if !need_root("listing_a_default_store_not_yet_made_makes_nothing")
        || !need_tools(
            "listing_a_default_store_not_yet_made_makes_nothing",
            &["setpriv"],
        )
    {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let home = t.join("home");
    fs::create_dir(&home).unwrap();
    for d in [t, home.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let tar = rootfs_tar(t, "rootfs.tar", "hi\n");
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    // As a user, whose default store is under XDG_DATA_HOME (root's is a
    // fixed system path a test must not touch).
    let as_user = |args: &[&str]| -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(support::bin())
            .args(args)
            .current_dir(&home)
            .env_remove("UNIONMOUNT_STORE")
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .output()
            .expect("setpriv runs")
    };
    let store = home.join("data/unionmount");
    let out = as_user(&["image", "ls"]);
    assert!(out.status.success(), "image ls: {}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listed.lines().count(), 1, "only the header: {listed}");
    assert!(listed.starts_with("NAME"), "{listed}");
    let out = as_user(&["image", "ls", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = as_user(&["ps", "-a"]);
    assert!(out.status.success(), "ps: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        !home.join("data").exists(),
        "a listing made the default store"
    );
    let out = as_user(&["image", "inspect", "img"]);
    assert_eq!(
        stderr(&out),
        format!("unionmount: no store at {}\n", store.display())
    );
    let out = as_user(&["import", tar.to_str().unwrap(), "img"]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    assert!(store.join("index.json").is_file());
    let out = as_user(&["image", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("img"));
}

/// The id `image ls` shows for each image, by name.
fn ids(env: &Env) -> Vec<(String, String)> {
    let v: layerstore::serde_json::Value =
        layerstore::serde_json::from_str(&env.um(&["image", "ls", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let name = i["name"].as_str().unwrap_or("<none>").to_string();
            (name, i["id"].as_str().unwrap()[7..19].to_string())
        })
        .collect()
}

/// `unionmount import ROOTFS [REF]`, as `docker import`: a root filesystem
/// tar (plain, gzip, zstd, or `-` for standard input) becomes a one-layer
/// image; the one line printed is its id as `image ls` shows it.
#[test]
fn import_makes_an_image_of_a_rootfs_tar_and_prints_its_id() {
    let env = Env::new();
    let t = env.path();
    let plain = rootfs_tar(t, "plain.tar", "plain\n");
    let gz = rootfs_tar(t, "gz.tar", "gzip\n");
    run(Command::new("gzip").arg("-k").arg(&gz));
    let zst = rootfs_tar(t, "zst.tar", "zstd\n");
    run(Command::new("zstd").arg("-q").arg(&zst));
    let stdin_tar = rootfs_tar(t, "stdin.tar", "stdin\n");
    let cases = [
        (plain.clone(), "plain", "plain\n"),
        (t.join("gz.tar.gz"), "gz", "gzip\n"),
        (t.join("zst.tar.zst"), "zst", "zstd\n"),
    ];
    for (file, name, motd) in &cases {
        let out = env.um(&["import", file.to_str().unwrap(), name]);
        let id = out.trim_end();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert_eq!(id, env.short_id(name), "{name}");
        let dirs = env.layer_dirs(id);
        assert_eq!(dirs.len(), 1);
        assert_eq!(fs::read_to_string(dirs[0].join("etc/motd")).unwrap(), *motd);
    }
    // `-`: the tar on standard input; no name: known by its id alone.
    let out = Command::new(support::bin())
        .args(["import", "-"])
        .env("UNIONMOUNT_STORE", env.store())
        .stdin(fs::File::open(&stdin_tar).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert!(
        ids(&env).contains(&("<none>".to_string(), id.clone())),
        "{id} not untagged in {:?}",
        ids(&env)
    );
    let dirs = env.layer_dirs(&id);
    assert_eq!(
        fs::read_to_string(dirs[0].join("etc/motd")).unwrap(),
        "stdin\n"
    );
    // `image import` is the same command; `--tag` still names the image.
    let out = env.um(&["image", "import", plain.to_str().unwrap(), "--tag", "again"]);
    assert_eq!(out.trim_end(), env.short_id("again"));
    let err = env.um_fail(&["import", t.join("nosuch.tar").to_str().unwrap()]);
    assert!(err.contains("nosuch.tar"), "{err}");
}

/// Any command taking an image takes a unique prefix of its id, of any
/// length, as Docker does; an ambiguous one is one line listing the images
/// it matches.
#[test]
fn an_id_prefix_names_an_image_and_an_ambiguous_one_lists_them() {
    let env = Env::new();
    let t = env.path();
    // 17 images: two of them share their first digit.
    for i in 0..17 {
        let tar = rootfs_tar(t, &format!("r{i}.tar"), &format!("{i}\n"));
        env.um(&["import", tar.to_str().unwrap(), &format!("img{i}")]);
    }
    let all = ids(&env);
    assert_eq!(all.len(), 17);
    let first = |id: &str| id[..1].to_string();
    let shared = all
        .iter()
        .map(|(_, id)| first(id))
        .find(|d| all.iter().filter(|(_, id)| first(id) == *d).count() > 1)
        .unwrap();
    let err = env.um_fail(&["image", "inspect", &shared]);
    for (name, id) in all.iter().filter(|(_, id)| first(id) == shared) {
        assert!(
            err.contains(id) && err.contains(name.as_str()),
            "{id} ({name}) not listed: {err}"
        );
    }
    assert!(err.contains("ambiguous"), "{err}");
    let err = env.um_fail(&["run", &shared, "true"]);
    assert!(err.contains("ambiguous"), "{err}");
    // The shortest unique prefix of each image names it.
    for (name, id) in &all {
        let n = (1..=12)
            .find(|&n| all.iter().filter(|(_, o)| o.starts_with(&id[..n])).count() == 1)
            .unwrap();
        let v: layerstore::serde_json::Value =
            layerstore::serde_json::from_str(&env.um(&["image", "inspect", &id[..n]])).unwrap();
        assert_eq!(v["name"], name.as_str(), "prefix {}", &id[..n]);
    }
    let (name, id) = &all[0];
    env.um(&["image", "tag", &id[..12], "by-id"]);
    assert_eq!(env.short_id("by-id"), *id, "{name}");
}

/// `image save` without `--format` writes a docker-archive (skopeo reads
/// it), as podman does; OCI output has gzip layers by default, as Docker's
/// and podman's, so Debian's umoci reads it, though the store keeps the
/// layer zstd; `--compression` (or `--compress`) chooses.
#[test]
fn image_save_defaults_to_docker_archive_and_gzip_layers() {
    let test = "image_save_defaults_to_docker_archive_and_gzip_layers";
    if !need_root(test) || !need_tools(test, &["skopeo", "umoci"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let rootfs = t.join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/motd"), "saved\n").unwrap();
    // A directory import: the store keeps the layer zstd.
    env.um(&["image", "import", rootfs.to_str().unwrap(), "--tag", "img"]);
    let docker = t.join("img.tar");
    env.um(&["image", "save", "img", docker.to_str().unwrap()]);
    let listing = run(Command::new("tar").arg("-tf").arg(&docker));
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker.display())));
    assert!(inspect.contains("\"Layers\""), "{inspect}");
    let layer_types = |manifest: &str| -> Vec<String> {
        let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(manifest).unwrap();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    };
    let oci = t.join("oci");
    env.um(&[
        "image",
        "save",
        "img",
        "--format",
        "oci",
        oci.to_str().unwrap(),
    ]);
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:img", oci.display())));
    assert_eq!(
        layer_types(&raw),
        ["application/vnd.oci.image.layer.v1.tar+gzip"]
    );
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:img", oci.display()))
        .arg(t.join("bundle")));
    assert_eq!(
        fs::read_to_string(t.join("bundle/rootfs/etc/motd")).unwrap(),
        "saved\n"
    );
    let archive = t.join("img.oci.tar");
    env.um(&[
        "image",
        "save",
        "img",
        "--format",
        "oci-archive",
        archive.to_str().unwrap(),
    ]);
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", archive.display())));
    assert_eq!(
        layer_types(&raw),
        ["application/vnd.oci.image.layer.v1.tar+gzip"]
    );
    for (flag, want) in [
        (
            "--compression=zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        ("--compress=none", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let out = t.join(format!("oci{flag}"));
        env.um(&[
            "image",
            "save",
            "img",
            "--format",
            "oci",
            flag,
            out.to_str().unwrap(),
        ]);
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:img", out.display())));
        assert_eq!(layer_types(&raw), [want], "{flag}");
    }
    let err = env.um_fail(&["image", "save", "img", "--compression", "zstd", "x.tar"]);
    assert!(err.contains("docker-archive"), "{err}");
}

/// `image prune` needs the store to itself: while another command holds
/// it, prune says in one line what it waits for, then runs.
#[test]
fn prune_says_what_it_waits_for() {
    if !need_tools("prune_says_what_it_waits_for", &["flock"]) {
        return;
    }
    let env = Env::new();
    env.init_store();
    let held = env.path().join("held");
    let lock = env.store().join("lock");
    let mut holder = Command::new("flock")
        .arg("-s")
        .arg(&lock)
        .arg("-c")
        .arg(format!("touch {} && sleep 2", held.display()))
        .spawn()
        .expect("flock");
    assert!(support::wait_until(
        std::time::Duration::from_secs(20),
        || held.exists()
    ));
    let out = env.um_out(&["image", "prune"]);
    let _ = holder.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("waiting for the other commands using the store"),
        "{err}"
    );
    // Alone, it says nothing of the kind.
    let out = env.um_out(&["image", "prune"]);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
}
