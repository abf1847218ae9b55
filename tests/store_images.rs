//! Images made by real tools (umoci, skopeo, busybox) go into the store and
//! come out again; the merged layers equal what `umoci unpack` produces.
//! Layers are merged by kernel overlayfs (the reference for the on-disk
//! format) and, where noted, by unionmount itself.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::store::*;

/// Load `source`, mount its layers with kernel overlayfs, compare to `reference`.
fn check_loaded(env: &Env, image: &str, reference: &Path, name: &str) {
    let dirs = env.layer_dirs(image);
    let mnt = env.path().join(format!("mnt-{name}"));
    let m = OverlayMount::new(&dirs, None, &mnt);
    assert_same_tree(&m.path, reference);
}

#[test]
fn oci_layout_docker_archive_and_zstd_oci_archive_match_umoci() {
    if !need_root("oci_layout…") || !need_tools("oci_layout…", &["umoci", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    sh(&format!(
        "cd {}
        skopeo copy -q oci:oci:v3 docker-archive:img.tar:localhost/img:v3
        skopeo copy -q --dest-compress-format zstd --dest-compress oci:oci:v3 oci:oci-zstd:v3
        skopeo copy -q oci:oci-zstd:v3 oci-archive:img.oci.tar:localhost/img:zstd",
        t.display()
    ));
    let out = env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    assert!(
        out.contains(&format!("Loaded image: v3 ({})", env.short_id("v3"))),
        "{out}"
    );
    env.um(&[Path::new("image"), Path::new("load"), &t.join("img.tar")].map(|p| p.as_os_str()));
    env.um(&[
        Path::new("image"),
        Path::new("load"),
        &t.join("img.oci.tar"),
    ]
    .map(|p| p.as_os_str()));
    let ls = env.um(&["image", "ls"]);
    for name in ["v1", "v2", "v3", "localhost/img:v3", "localhost/img:zstd"] {
        assert!(
            ls.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing in\n{ls}"
        );
    }
    // The zstd copy really has zstd layers.
    let inspect = env.um(&["image", "inspect", "localhost/img:zstd"]);
    assert!(inspect.contains("tar+zstd"), "{inspect}");
    check_loaded(&env, "v3", &fx.reference, "oci");
    check_loaded(&env, "localhost/img:v3", &fx.reference, "docker");
    check_loaded(&env, "localhost/img:zstd", &fx.reference, "zstd");
    let fsck = env.um(&["image", "fsck"]);
    assert!(fsck.contains("clean"), "{fsck}");
    // Shared layers are unpacked once: v3 has three layers, every copy reuses them.
    let layers = fs::read_dir(env.store().join("layers")).unwrap().count();
    assert_eq!(layers, 3, "expected the 3 layers of v3 once each");
    // The store itself is an OCI layout that umoci and skopeo read.
    let store = env.store();
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v3", store.display())));
    let r2 = t.join("from-store");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", store.display()))
        .arg(&r2));
    assert!(!r2.join("rootfs/some/file").exists());
    assert!(r2.join("rootfs/some/hardlink").exists());
}

#[test]
fn whiteouts_and_opaque_dirs_are_overlay_format() {
    if !need_root("whiteouts…") || !need_tools("whiteouts…", &["umoci"]) {
        return;
    }
    let env = Env::new();
    let fx = umoci_fixture(env.path());
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    let dirs = env.layer_dirs("v3");
    assert_eq!(dirs.len(), 3);
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = fs::symlink_metadata(dirs[1].join("some/file")).expect("whiteout for some/file");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dirs[1].join("some/.wh.file").exists());
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(
        dirs[2].join("some/dir"),
        "trusted.overlay.opaque",
        &mut v[..],
    )
    .expect("opaque xattr");
    assert_eq!(&v[..n], b"y");
    assert!(!dirs[2].join("some/dir/.wh..wh..opq").exists());
    // Owners, modes, hard links, symlinks, fifos survive.
    let x = fs::metadata(dirs[0].join("some/dir/x")).unwrap();
    assert_eq!((x.uid(), x.gid(), x.mode() & 0o7777), (1000, 1001, 0o4750));
    let a = fs::metadata(dirs[0].join("some/file")).unwrap();
    let b = fs::metadata(dirs[0].join("some/hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read_link(dirs[0].join("etc/symlink")).unwrap(),
        Path::new("../some/file")
    );
    assert!(
        fs::symlink_metadata(dirs[0].join("tmp/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn import_rootfs_as_tar_gzip_zstd_and_directory() {
    if !need_root("import…") || !need_tools("import…", &["zstd", "busybox"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let rootfs = t.join("rootfs");
    busybox_rootfs(&rootfs);
    sh(&format!(
        "cd {t}
        tar -C rootfs --numeric-owner -cf rootfs.tar .
        gzip -k rootfs.tar
        zstd -q -k rootfs.tar -o rootfs.tar.zst",
        t = t.display()
    ));
    for (i, f) in ["rootfs.tar", "rootfs.tar.gz", "rootfs.tar.zst", "rootfs"]
        .iter()
        .enumerate()
    {
        let tag = format!("imp{i}");
        let out = env.um(&[
            "image",
            "import",
            &t.join(f).display().to_string(),
            "--tag",
            &tag,
        ]);
        assert_eq!(out.trim_end(), env.short_id(&tag), "{out}");
        let dirs = env.layer_dirs(&tag);
        assert_eq!(dirs.len(), 1);
        assert_same_tree(&dirs[0], &rootfs);
    }
    // The three tars are one layer (same diff id), unpacked once; the directory
    // import is a different tar of the same tree.
    let layers = fs::read_dir(env.store().join("layers")).unwrap().count();
    assert_eq!(layers, 2);
    let json = env.um(&["image", "ls", "--format", "json"]);
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
    assert_eq!(v[0]["layers"], 1);
}

#[test]
fn save_round_trips_through_umoci_and_skopeo() {
    if !need_root("save…") || !need_tools("save…", &["umoci", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    // OCI directory → umoci unpack.
    let out = t.join("out-oci");
    env.um(&[
        "image",
        "save",
        "v3",
        "--format",
        "oci",
        &out.display().to_string(),
    ]);
    let r = t.join("r-oci");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v3", out.display()))
        .arg(&r));
    assert_same_tree(&r.join("rootfs"), &fx.reference);
    // docker-archive → skopeo inspect, skopeo copy → umoci unpack.
    let da = t.join("out.tar");
    env.um(&[
        "image",
        "save",
        "v3",
        "--format",
        "docker-archive",
        &da.display().to_string(),
        "--ref",
        "localhost/saved:1",
    ]);
    let info = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", da.display())));
    assert!(info.contains("\"Layers\""), "{info}");
    sh(&format!(
        "cd {} && skopeo copy -q docker-archive:out.tar oci:from-da:x",
        t.display()
    ));
    let r2 = t.join("r-da");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:x", t.join("from-da").display()))
        .arg(&r2));
    assert_same_tree(&r2.join("rootfs"), &fx.reference);
    // oci-archive → skopeo inspect; and it loads back in under a new name.
    let oa = t.join("out.oci.tar");
    env.um(&[
        "image",
        "save",
        "v3",
        "--format",
        "oci-archive",
        &oa.display().to_string(),
    ]);
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", oa.display())));
    env.um(&["image", "load", &oa.display().to_string(), "--tag", "again"]);
    check_loaded(&env, "again", &fx.reference, "again");
    // The docker-archive loads back too.
    env.um(&["image", "load", &da.display().to_string()]);
    check_loaded(&env, "localhost/saved:1", &fx.reference, "saved");
    // Saving over an existing path is refused.
    let err = env.um_fail(&[
        "image",
        "save",
        "v3",
        "--format",
        "oci",
        &out.display().to_string(),
    ]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn commit_turns_an_upper_into_a_layer() {
    if !need_root("commit…") || !need_tools("commit…", &["umoci", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    let dirs = env.layer_dirs("v3");
    let (up, wk) = (t.join("up"), t.join("wk"));
    fs::create_dir_all(&up).unwrap();
    fs::create_dir_all(&wk).unwrap();
    {
        let m = OverlayMount::new(&dirs, Some((&up, &wk)), &t.join("mnt"));
        sh(&format!(
            "cd {}
            echo changed > some/dir/y
            rm bin/ls
            mkdir newdir && echo n > newdir/f
            rm -rf some/dir && mkdir some/dir && echo fresh > some/dir/z
            mv bin moved_bin
            chmod 700 newdir",
            m.path.display()
        ));
    }
    // The redirect (moved_bin) needs the lowers.
    let err = env.um_fail(&["commit", &up.display().to_string(), "--tag", "c1"]);
    assert!(err.contains("--from"), "{err}");
    let out = env.um(&[
        "commit",
        &up.display().to_string(),
        "--tag",
        "c1",
        "--from",
        "v3",
    ]);
    assert_eq!(out.trim_end(), env.short_id("c1"), "{out}");
    // The expected view: the kernel's, of the upper over v3.
    let mut with_upper = dirs.clone();
    with_upper.push(up.clone());
    let want = OverlayMount::new(&with_upper, None, &t.join("want"));
    check_loaded(&env, "c1", &want.path, "c1");
    let inspect = env.um(&["image", "inspect", "c1"]);
    assert!(inspect.contains("unionmount commit"), "{inspect}");
    assert!(inspect.contains("tar+zstd"), "{inspect}");
    // Saved and read back by real tools (umoci only reads gzip: skopeo converts).
    let out = t.join("c-oci");
    env.um(&[
        "image",
        "save",
        "c1",
        "--format",
        "oci",
        &out.display().to_string(),
    ]);
    sh(&format!(
        "cd {} && skopeo copy -q --dest-compress-format gzip --dest-compress oci:c-oci:c1 oci:c-gz:c1 && umoci unpack --image c-gz:c1 c-ref >/dev/null",
        t.display()
    ));
    assert_same_tree(&t.join("c-ref/rootfs"), &want.path);
    assert_eq!(
        fs::read_to_string(t.join("c-ref/rootfs/some/dir/z")).unwrap(),
        "fresh\n"
    );
    assert!(!t.join("c-ref/rootfs/bin").exists());
    // Or recompressed to gzip by `image save --compress gzip`: umoci reads it directly.
    let gz = t.join("c-gz2");
    env.um(&[
        "image",
        "save",
        "c1",
        "--format",
        "oci",
        &gz.display().to_string(),
        "--compress",
        "gzip",
    ]);
    let r = t.join("c-ref2");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:c1", gz.display()))
        .arg(&r));
    assert_same_tree(&r.join("rootfs"), &want.path);
    // and loads back as the same image (same config, same layers).
    env.um(&["image", "load", &gz.display().to_string(), "--tag", "c1-gz"]);
    let a: layerstore::serde_json::Value =
        layerstore::serde_json::from_str(&env.um(&["image", "inspect", "c1"])).unwrap();
    let b: layerstore::serde_json::Value =
        layerstore::serde_json::from_str(&env.um(&["image", "inspect", "c1-gz"])).unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_ne!(a["digest"], b["digest"]);
}

#[test]
fn tag_rm_prune_and_errors() {
    if !need_root("tag…") || !need_tools("tag…", &["busybox"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    busybox_rootfs(&t.join("rootfs"));
    env.um(&[
        "image",
        "import",
        &t.join("rootfs").display().to_string(),
        "--tag",
        "a",
    ]);
    env.um(&["image", "tag", "a", "b"]);
    let ls = env.um(&["image", "ls"]);
    assert!(ls.contains("\na ") && ls.contains("\nb "), "{ls}");
    // By id prefix.
    let json = env.um(&["image", "ls", "--format", "json"]);
    let v: layerstore::serde_json::Value = layerstore::serde_json::from_str(&json).unwrap();
    let id = v[0]["id"].as_str().unwrap().trim_start_matches("sha256:")[..12].to_string();
    env.um(&["image", "inspect", &id]);
    env.um(&["image", "rm", "a"]);
    let out = env.um(&["image", "prune"]);
    assert!(out.contains("Removed 0 blobs"), "{out}");
    env.um(&["image", "rm", "b"]);
    let out = env.um(&["image", "prune"]);
    assert!(
        out.contains("Removed 3 blobs") && out.contains("1 layers"),
        "{out}"
    );
    assert_eq!(env.contents(), (vec![], vec![]));
    // User errors: one line naming the object, non-zero exit.
    let e = env.um_fail(&["image", "inspect", "nope"]);
    assert!(e.contains("image nope: not found"), "{e}");
    let e = env.um_fail(&["image", "load", &t.join("missing").display().to_string()]);
    assert!(e.contains("missing"), "{e}");
    fs::write(t.join("junk.tar"), b"not a tar at all").unwrap();
    let e = env.um_fail(&["image", "load", &t.join("junk.tar").display().to_string()]);
    assert!(e.contains("junk.tar"), "{e}");
    let e = env.um_fail(&[
        "image",
        "save",
        "nope",
        "--format",
        "oci",
        &t.join("o").display().to_string(),
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = env.um_fail(&[
        "image",
        "save",
        "nope",
        "--format",
        "zip",
        &t.join("o").display().to_string(),
    ]);
    assert!(e.contains("zip"), "{e}");
    let e = env.um_fail(&["image", "tag", "nope", "x"]);
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn image_mount_through_unionmount_matches_umoci_and_commits() {
    if !need_root("image_mount…") || !need_tools("image_mount…", &["umoci"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    let mnt = t.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    {
        env.um(&["image", "mount", "v3", &mnt.display().to_string()]);
        let _m = UnionMount(mnt.clone());
        assert_same_tree(&mnt, &fx.reference);
    }
    // Read-write: changes land in the upper and commit into a new image.
    let (up, wk) = (t.join("up"), t.join("wk"));
    fs::create_dir_all(&up).unwrap();
    fs::create_dir_all(&wk).unwrap();
    {
        env.um(&[
            "image",
            "mount",
            "v3",
            &mnt.display().to_string(),
            "--upper",
            &up.display().to_string(),
            "--work",
            &wk.display().to_string(),
        ]);
        let _m = UnionMount(mnt.clone());
        fs::write(mnt.join("some/dir/added"), "added\n").unwrap();
        fs::remove_file(mnt.join("etc/hostname")).unwrap();
    }
    // --upper alone: the work directory is a hidden sibling of the upper,
    // the same one each time.
    let up2 = t.join("up2");
    fs::create_dir_all(&up2).unwrap();
    for round in 0..2 {
        env.um(&[
            "image",
            "mount",
            "v3",
            &mnt.display().to_string(),
            "--upper",
            &up2.display().to_string(),
        ]);
        let _m = UnionMount(mnt.clone());
        if round == 0 {
            fs::write(mnt.join("some/dir/alone"), "alone\n").unwrap();
        } else {
            assert_eq!(
                fs::read_to_string(mnt.join("some/dir/alone")).unwrap(),
                "alone\n"
            );
        }
    }
    assert!(up2.join("some/dir/alone").is_file());
    assert!(t.join(".up2.work").is_dir());
    env.um(&[
        "commit",
        &up.display().to_string(),
        "--tag",
        "c2",
        "--from",
        "v3",
    ]);
    // An image that skopeo wrote straight into the store is unpacked when first mounted.
    if need_tools("image_mount…", &["skopeo"]) {
        run(Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:v2", fx.oci.display()))
            .arg(format!("oci:{}:by-skopeo", env.store().display())));
        env.um(&["image", "mount", "by-skopeo", &mnt.display().to_string()]);
        let _m = UnionMount(mnt.clone());
        assert!(mnt.join("some/dir/x").exists());
        assert!(!mnt.join("some/file").exists());
    }
    let dirs = env.layer_dirs("c2");
    assert_eq!(dirs.len(), 4);
    let m = OverlayMount::new(&dirs, None, &t.join("check"));
    assert_eq!(
        fs::read_to_string(m.path.join("some/dir/added")).unwrap(),
        "added\n"
    );
    assert!(!m.path.join("etc/hostname").exists());
    assert!(m.path.join("some/dir/y").exists());
    // mount → change → commit → save → umoci unpack shows the change.
    let saved = t.join("c2-oci");
    env.um(&[
        "image",
        "save",
        "c2",
        "--format",
        "oci",
        &saved.display().to_string(),
        "--compress",
        "gzip",
    ]);
    let r = t.join("c2-ref");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:c2", saved.display()))
        .arg(&r));
    assert_eq!(
        fs::read_to_string(r.join("rootfs/some/dir/added")).unwrap(),
        "added\n"
    );
    assert!(!r.join("rootfs/etc/hostname").exists());
    assert_same_tree(&r.join("rootfs"), &m.path);
}

#[test]
fn commit_takes_metacopy_data_from_the_lowers() {
    if !need_root("metacopy…") || !need_tools("metacopy…", &["umoci"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let fx = umoci_fixture(t);
    env.um(&[Path::new("image"), Path::new("load"), &fx.oci].map(|p| p.as_os_str()));
    let dirs = env.layer_dirs("v3");
    let (up, wk) = (t.join("up"), t.join("wk"));
    fs::create_dir_all(&up).unwrap();
    fs::create_dir_all(&wk).unwrap();
    {
        let m = OverlayMount::with_options(&dirs, Some((&up, &wk)), &t.join("mnt"), ",metacopy=on");
        sh(&format!(
            "cd {} && chmod 600 some/dir/y && chown 7:7 etc/hostname && mv bin/busybox bin/bb",
            m.path.display()
        ));
    }
    // The upper holds metadata only for these files.
    assert_eq!(fs::metadata(up.join("some/dir/y")).unwrap().len(), 4);
    let mut v = [0u8; 64];
    assert!(
        rustix::fs::getxattr(
            up.join("etc/hostname"),
            "trusted.overlay.metacopy",
            &mut v[..]
        )
        .is_ok()
    );
    env.um(&[
        "commit",
        &up.display().to_string(),
        "--tag",
        "mc",
        "--from",
        "v3",
    ]);
    let mut with_upper = dirs.clone();
    with_upper.push(up.clone());
    let want = OverlayMount::with_options(
        &with_upper,
        None,
        &t.join("want"),
        ",metacopy=on,redirect_dir=follow",
    );
    let got = OverlayMount::new(&env.layer_dirs("mc"), None, &t.join("got"));
    assert_same_tree(&got.path, &want.path);
    assert_eq!(
        fs::read_to_string(got.path.join("etc/hostname")).unwrap(),
        "test\n"
    );
    assert!(fs::metadata(got.path.join("bin/bb")).unwrap().len() > 100_000);
}

#[test]
fn unpack_keeps_mtimes_devices_owners_and_pax_xattrs() {
    let test = "unpack_keeps_mtimes_devices_owners_and_pax_xattrs";
    if !need_root(test) || !need_tools(test, &["tar", "setfattr", "mknod"]) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let t = env.path();
    // GNU tar writes xattrs as PAX SCHILY.xattr.* records.
    sh(&format!(
        r#"cd {t}
        mkdir -p root/dir/sub
        echo data > root/dir/file
        mknod root/dir/null c 1 3
        mknod root/dir/loop b 7 200
        chown 123:456 root/dir/file
        chmod 2711 root/dir/sub
        setfattr -n user.k -v v1 root/dir/file
        setfattr -n trusted.t -v v2 root/dir/file
        touch -h -d 2001-02-03T04:05:06Z root/dir/file root/dir/null root/dir/sub root/dir
        tar --xattrs --xattrs-include='*' --numeric-owner -C root -cf root.tar dir
        "#,
        t = t.display()
    ));
    let tar = t.join("root.tar");
    env.um(&["image", "import", &tar.display().to_string(), "--tag", "m"]);
    let dirs = env.layer_dirs("m");
    let l = &dirs[0];
    let m = |p: &str| fs::symlink_metadata(l.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let want = fs::symlink_metadata(t.join("root/dir/file"))
        .expect("stat")
        .mtime();
    for p in ["dir", "dir/file", "dir/null", "dir/sub"] {
        assert_eq!(m(p).mtime(), want, "{p}: mtime");
    }
    assert_eq!((m("dir/file").uid(), m("dir/file").gid()), (123, 456));
    assert_eq!(m("dir/sub").mode() & 0o7777, 0o2711);
    assert_eq!(m("dir/null").rdev(), rustix::fs::makedev(1, 3));
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m("dir/null").file_type()
    ));
    assert_eq!(m("dir/loop").rdev(), rustix::fs::makedev(7, 200));
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &m("dir/loop").file_type()
    ));
    let get = |name: &str| {
        let mut buf = [0u8; 64];
        let n = rustix::fs::getxattr(l.join("dir/file"), name, &mut buf[..])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        buf[..n].to_vec()
    };
    assert_eq!(get("user.k"), b"v1");
    assert_eq!(get("trusted.t"), b"v2");
    assert!(env.um(&["image", "fsck"]).contains("clean"));
}

/// The entries of a layer blob, in order (zstd, gzip or plain, by magic).
fn layer_entries(blob: &Path) -> Vec<String> {
    let f = fs::File::open(blob).expect("open blob");
    let (_, mut r) = layerstore::unpack::decompress(f).expect("decompress");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut plain).expect("read layer");
    let tar = blob.with_extension("listed.tar");
    fs::write(&tar, plain).expect("write");
    let out = run(Command::new("tar").arg("-tf").arg(&tar));
    let _ = fs::remove_file(&tar);
    out.lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

#[test]
fn commit_walks_the_upper_only() {
    let test = "commit_walks_the_upper_only";
    if !need_root(test) || !need_tools(test, &["strace", "tar"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    // A base image with many files.
    let root = t.join("root");
    for d in ["data", "etc", "usr/lib"] {
        fs::create_dir_all(root.join(d)).unwrap();
        for i in 0..500 {
            fs::write(root.join(format!("{d}/f{i}")), format!("{d}{i}")).unwrap();
        }
    }
    env.um(&[
        "image",
        "import",
        &root.display().to_string(),
        "--tag",
        "base",
    ]);
    let lowers = env.layer_dirs("base");
    // Changes made through kernel overlayfs: a changed file, a deletion, a
    // new directory, a directory replaced (opaque).
    let (up, wk) = (t.join("up"), t.join("wk"));
    fs::create_dir_all(&up).unwrap();
    fs::create_dir_all(&wk).unwrap();
    {
        let m = OverlayMount::new(&lowers, Some((&up, &wk)), &t.join("mnt"));
        sh(&format!(
            "cd {}
            echo changed > data/f1
            rm data/f2
            mkdir data/sub && echo n > data/sub/n
            rm -rf etc && mkdir etc && echo fresh > etc/fresh",
            m.path.display()
        ));
    }
    let trace = t.join("strace.txt");
    run(Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=%file,%desc", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["commit"])
        .arg(&up)
        .args(["--tag", "next", "--from", "base"])
        .env("UNIONMOUNT_STORE", env.store()));
    // The lowers are looked at as a whole (their roots exist), never inside.
    let layers = format!("{}/", env.store().join("layers").display());
    let trace = fs::read_to_string(&trace).unwrap();
    let inside: Vec<&str> = trace
        .lines()
        .filter(|l| {
            l.match_indices(&layers).any(|(i, _)| {
                let rest = &l[i + layers.len()..];
                let end = rest.find(['"', '>']).unwrap_or(rest.len());
                rest[..end].contains('/')
            })
        })
        .collect();
    assert!(
        inside.is_empty(),
        "commit looked inside a lower layer:\n{}",
        inside.join("\n")
    );
    // The new layer holds the changes only, in OCI form.
    let v: layerstore::serde_json::Value =
        layerstore::serde_json::from_str(&env.um(&["image", "inspect", "next"])).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let blob = layers[1]["blob"].as_str().unwrap();
    let blob = env
        .store()
        .join("blobs/sha256")
        .join(blob.trim_start_matches("sha256:"));
    let mut entries = layer_entries(&blob);
    entries.retain(|e| !e.is_empty() && e != ".");
    entries.sort();
    assert_eq!(
        entries,
        [
            "data",
            "data/.wh.f2",
            "data/f1",
            "data/sub",
            // The kernel marks a new directory in a merged one opaque.
            "data/sub/.wh..wh..opq",
            "data/sub/n",
            "etc",
            "etc/.wh..wh..opq",
            "etc/fresh",
        ],
    );
    // A config with both diff ids and one more history entry.
    let diff_ids = v["config"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(v["config"]["history"].as_array().unwrap().len(), 2);
}
