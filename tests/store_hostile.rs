//! Hostile layer tars, built byte by byte here: each is refused with one line
//! naming the entry, or confined to its layer; nothing ever appears outside
//! the store, and a refused import stores nothing.
//!
//! Here: climbing paths, links out, bad whiteouts and names, duplicate
//! entries, lying sizes, metadata bombs, garbage headers, slashes in odd
//! places and layout blobs that are links (more in store_hostile_paths.rs
//! and store_hostile_limits.rs).

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use support::store::hostile::Hostile;
use support::store::rawtar::RawTar;
use support::store::*;

#[test]
fn dotdot_paths_are_refused() {
    let h = Hostile::new();
    h.refused(
        "dotdot",
        RawTar::default().file("../../outside/x", b"x").finish(),
        "..",
    );
    h.refused(
        "dotdot2",
        RawTar::default().file("a/../../outside/x", b"x").finish(),
        "..",
    );
    h.refused("dotdot3", RawTar::default().dir("a/..").finish(), "..");
}

#[test]
fn absolute_paths_are_confined() {
    let h = Hostile::new();
    let abs = format!("{}/abs", h.outside.display());
    let out = h.import("abs", RawTar::default().file(&abs, b"in layer").finish());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.untouched("abs");
    let dirs = h.env.layer_dirs("abs");
    let inside = dirs[0].join(abs.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside).unwrap(), "in layer");
}

#[test]
fn paths_through_symlinks_are_refused() {
    let h = Hostile::new();
    let out = h.outside.display().to_string();
    h.refused(
        "symlink-abs",
        RawTar::default()
            .symlink("link", &out)
            .file("link/evil", b"x")
            .finish(),
        "symlink",
    );
    h.refused(
        "symlink-rel",
        RawTar::default()
            .symlink("up", "../../../../../../..")
            .file("up/evil", b"x")
            .finish(),
        "symlink",
    );
    h.refused(
        "symlink-dir",
        RawTar::default()
            .dir("d")
            .symlink("d/l", &out)
            .dir("d/l/sub")
            .finish(),
        "symlink",
    );
    h.refused(
        "whiteout-through-symlink",
        RawTar::default()
            .symlink("sl", &out)
            .file("sl/.wh.target", b"")
            .finish(),
        "symlink",
    );
    h.refused(
        "hardlink-through-symlink",
        RawTar::default()
            .symlink("sl", &out)
            .hardlink("h", "sl/target")
            .finish(),
        "hard link",
    );
}

#[test]
fn hard_links_stay_inside_the_layer() {
    let h = Hostile::new();
    let target = h.outside.join("target").display().to_string();
    h.refused(
        "hl-abs",
        RawTar::default().hardlink("h", &target).finish(),
        "hard link",
    );
    h.refused(
        "hl-dotdot",
        RawTar::default()
            .hardlink("h", "../outside/target")
            .finish(),
        "..",
    );
    h.refused(
        "hl-later",
        RawTar::default()
            .hardlink("h", "later")
            .file("later", b"x")
            .finish(),
        "not in the layer",
    );
    h.refused(
        "hl-self",
        RawTar::default()
            .file("a", b"1")
            .hardlink("a", "a")
            .finish(),
        "itself",
    );
    h.refused(
        "hl-dir",
        RawTar::default().dir("d").hardlink("h", "d").finish(),
        "directory",
    );
    // A hard link to a symlink that points out links the symlink, not its target.
    let res = h.import(
        "hl-symlink",
        RawTar::default()
            .symlink("sl", &target)
            .hardlink("h", "sl")
            .finish(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("hl-symlink");
    let l = &h.env.layer_dirs("hl-symlink")[0];
    assert!(
        fs::symlink_metadata(l.join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn bad_whiteouts_and_names_are_refused() {
    let h = Hostile::new();
    h.refused(
        "wh-dotdot",
        RawTar::default().file(".wh..", b"").finish(),
        "whiteout",
    );
    h.refused(
        "wh-dot",
        RawTar::default().file("a/.wh..", b"").finish(),
        "whiteout",
    );
    h.refused(
        "wh-empty",
        RawTar::default().file(".wh.", b"").finish(),
        "whiteout",
    );
    h.refused(
        "wh-up",
        RawTar::default().file("../.wh.x", b"").finish(),
        "..",
    );
    h.refused(
        "nul",
        RawTar::default().pax_path_file(b"a\0b").finish(),
        "NUL",
    );
    h.refused(
        "root-file",
        RawTar::default().file("./", b"x").finish(),
        "root",
    );
    h.refused(
        "longname",
        RawTar::default().pax_path_file(&[b'n'; 300]).finish(),
        "255",
    );
}

#[test]
fn duplicate_entries_never_write_through() {
    let h = Hostile::new();
    let out = h.outside.display().to_string();
    // a; b hard-linked to a; then b again as a file: a keeps its content.
    // d a symlink out; then d a directory; then d/x lands inside the layer.
    let tar = RawTar::default()
        .file("a", b"1")
        .hardlink("b", "a")
        .file("b", b"2")
        .symlink("d", &out)
        .dir("d")
        .file("d/x", b"x")
        .file("a", b"3")
        .finish();
    let res = h.import("dups", tar);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("dups");
    let l = &h.env.layer_dirs("dups")[0];
    assert_eq!(fs::read_to_string(l.join("a")).unwrap(), "3");
    assert_eq!(fs::read_to_string(l.join("b")).unwrap(), "2");
    assert_ne!(
        fs::metadata(l.join("a")).unwrap().ino(),
        fs::metadata(l.join("b")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(l.join("d")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(l.join("d/x")).unwrap(), "x");
}

#[test]
fn lying_sizes_and_truncation_are_refused() {
    let h = Hostile::new();
    // 4 GiB claimed, a few bytes present: refused quickly, nothing allocated.
    let start = std::time::Instant::now();
    h.refused(
        "liar",
        RawTar::default().lying_size("big", 4 << 30).finish(),
        "big",
    );
    assert!(start.elapsed().as_secs() < 30);
    // A tar cut in the middle of a file, and one without its end blocks.
    let mut cut = RawTar::default().file("f", &[7u8; 4096]).finish();
    cut.truncate(512 + 1000);
    h.refused("cut", cut, "truncated");
    let mut noend = RawTar::default().file("f", &[7u8; 10]).finish();
    noend.truncate(1024);
    h.refused("noend", noend, "truncated");
    // Compressed and cut.
    let whole = RawTar::default().file("f", &[7u8; 100_000]).finish();
    let path = h.env.path().join("whole.tar");
    fs::write(&path, &whole).unwrap();
    if need_tools("lying_sizes", &["zstd"]) {
        sh(&format!(
            "cd {} && zstd -q whole.tar -o whole.tar.zst.tar",
            h.env.path().display()
        ));
        let mut z = fs::read(h.env.path().join("whole.tar.zst.tar")).unwrap();
        fs::remove_file(h.env.path().join("whole.tar.zst.tar")).unwrap();
        z.truncate(z.len() / 2);
        let before = h.env.contents();
        let p = h.env.path().join("zcut.tar");
        fs::write(&p, z).unwrap();
        h.env
            .um_fail(&["image", "import", &p.display().to_string(), "--tag", "zcut"]);
        assert_eq!(h.env.contents(), before);
    }
}

#[test]
fn whiteouts_of_unsafe_names_never_delete_outside() {
    let h = Hostile::new();
    // A whiteout named like the outside file, at every level: only ever a
    // whiteout inside the layer.
    let out = h.outside.display().to_string();
    let tar = RawTar::default()
        .file(&format!("{}/.wh.target", out.trim_start_matches('/')), b"")
        .file(".wh.outside", b"")
        .finish();
    let res = h.import("wh-names", tar);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("wh-names");
    let _ = Path::new(&out);
}

#[test]
fn rootless_import_keeps_oci_markers_and_confines() {
    // As an unprivileged user (setpriv to nobody) the store keeps `.wh.` files
    // and records owners in user.containers.override_stat; hostile tars are
    // refused the same way.
    if !need_root("rootless_import") || !need_tools("rootless_import", &["setpriv"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    let tar = RawTar::default()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/.wh.shadow", b"")
        .dir("var")
        .file("var/.wh..wh..opq", b"")
        .finish();
    fs::write(t.join("l.tar"), tar).unwrap();
    fs::write(
        t.join("bad.tar"),
        RawTar::default().file("../x", b"x").finish(),
    )
    .unwrap();
    sh(&format!(
        "chown -R 65534:65534 {} && chmod 755 {}",
        home.display(),
        t.display()
    ));
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin())
            .args(args)
            .env_remove("UNIONMOUNT_STORE")
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .output()
            .unwrap()
    };
    let out = as_nobody(&[
        "image",
        "import",
        &t.join("l.tar").display().to_string(),
        "--tag",
        "r",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = home.join("data/unionmount");
    let layers: Vec<_> = fs::read_dir(store.join("layers"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(layers.len(), 1);
    let l = layers[0].path();
    assert!(l.join("etc/.wh.shadow").is_file());
    assert!(l.join("var/.wh..wh..opq").is_file());
    let mut v = [0u8; 64];
    let n = rustix::fs::getxattr(
        l.join("etc/passwd"),
        "user.containers.override_stat",
        &mut v[..],
    )
    .unwrap();
    assert_eq!(&v[..n], b"0:0:0644");
    assert_eq!(fs::metadata(l.join("etc/passwd")).unwrap().uid(), 65534);
    // fsck understands the rootless form.
    let out = as_nobody(&["image", "fsck"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_nobody(&[
        "image",
        "import",
        &t.join("bad.tar").display().to_string(),
        "--tag",
        "b",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".."));
    assert!(!t.join("x").exists() && !home.join("x").exists());
}

#[test]
fn metadata_bombs_are_refused_before_buffering() {
    // A zstd layer whose PAX header claims 256 MiB (and holds 64 MiB): the tar reader
    // would buffer it whole; it is refused after the header instead.
    if !need_tools("metadata_bombs", &["zstd"]) {
        return;
    }
    let h = Hostile::new();
    let mut head = vec![0u8; 512];
    head[..9].copy_from_slice(b"PaxHeader");
    head[100..108].copy_from_slice(b"0000644\0");
    head[124..136].copy_from_slice(b"02000000000\0");
    head[156] = b'x';
    head[257..263].copy_from_slice(b"ustar\0");
    head[263..265].copy_from_slice(b"00");
    head[148..156].copy_from_slice(b"        ");
    let sum: u32 = head.iter().map(|&b| u32::from(b)).sum();
    head[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let dir = h.env.path();
    fs::write(dir.join("head.bin"), &head).unwrap();
    sh(&format!(
        "cd {} && (cat head.bin; head -c 67108864 /dev/zero) | zstd -q -o bomb.tar && rm head.bin",
        dir.display()
    ));
    let before = h.env.contents();
    let start = std::time::Instant::now();
    let err = h.env.um_fail(&[
        "image",
        "import",
        &dir.join("bomb.tar").display().to_string(),
        "--tag",
        "bomb",
    ]);
    assert!(err.contains("metadata"), "{err}");
    assert!(start.elapsed().as_secs() < 60);
    assert_eq!(h.env.contents(), before);
}

#[test]
fn garbage_headers_give_one_short_printable_line() {
    // Random bytes where a tar header should be: the tar reader quotes the
    // raw field; the message names the file and the field, in plain text.
    let h = Hostile::new();
    let mut x: u32 = 12345;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 24) as u8
        })
        .collect();
    let p = h.env.path().join("junk.tar");
    fs::write(&p, &junk).unwrap();
    let before = h.env.contents();
    for args in [
        vec!["image", "import", p.to_str().unwrap(), "--tag", "junk"],
        vec!["image", "load", p.to_str().unwrap()],
    ] {
        let err = h.env.um_fail(&args);
        assert!(err.contains("junk.tar"), "{err}");
        assert!(err.contains("corrupt header"), "{err}");
        assert!(
            err.trim_end().chars().all(|c| (' '..='~').contains(&c)),
            "{args:?}: not plain text: {err}"
        );
        assert!(err.len() < 300, "{err}");
    }
    assert_eq!(h.env.contents(), before);
    h.untouched("junk");
}

#[test]
fn slashes_in_odd_places_stay_in_the_layer() {
    let h = Hostile::new();
    // Repeated, leading and trailing slashes and `.` components are only
    // spellings of paths inside the layer.
    let res = h.import(
        "slashes",
        RawTar::default()
            .dir("///d//")
            .file("d//./f/", b"1")
            .file("/./d/./g", b"2")
            .symlink("d///s//", "f")
            .hardlink("d/h", "//d/./f")
            .finish(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("slashes");
    let l = &h.env.layer_dirs("slashes")[0];
    assert_eq!(fs::read_to_string(l.join("d/f")).unwrap(), "1");
    assert_eq!(fs::read_to_string(l.join("d/g")).unwrap(), "2");
    assert_eq!(fs::read_link(l.join("d/s")).unwrap(), Path::new("f"));
    assert_eq!(
        fs::metadata(l.join("d/h")).unwrap().ino(),
        fs::metadata(l.join("d/f")).unwrap().ino()
    );
    // A path through a file, and a hard link put where a directory holding
    // its own target was.
    h.refused(
        "through-a-file",
        RawTar::default().file("f", b"x").file("f/g", b"y").finish(),
        "not a directory",
    );
    h.refused(
        "hl-over-its-dir",
        RawTar::default()
            .dir("d")
            .file("d/f", b"x")
            .hardlink("d", "d/f")
            .finish(),
        "holding its target",
    );
}

#[test]
fn layout_blobs_that_are_symlinks_out_are_refused() {
    // An OCI layout directory whose config blob is a symlink to a host file
    // with the same content: the loader does not read through it.
    let h = Hostile::new();
    let layout = h.env.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = RawTar::default().file("f", b"x").finish();
    let ld = layerstore::Digest::of_bytes(&layer);
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#,
        layerstore::image::host_arch()
    );
    let cd = layerstore::Digest::of_bytes(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let md = layerstore::Digest::of_bytes(manifest.as_bytes());
    let blobs = layout.join("blobs/sha256");
    fs::write(blobs.join(ld.hex()), &layer).unwrap();
    fs::write(blobs.join(md.hex()), &manifest).unwrap();
    // The host file, outside the layout.
    let host = h.outside.join("target");
    fs::write(&host, &config).unwrap();
    std::os::unix::fs::symlink(&host, blobs.join(cd.hex())).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    let before = h.env.contents();
    let err = h.env.um_fail(&["image", "load", layout.to_str().unwrap()]);
    assert!(err.contains("leads out of the layout"), "{err}");
    assert!(err.contains(cd.hex()), "{err}");
    assert_eq!(h.env.contents(), before);
    // A symlink inside the layout is fine.
    fs::remove_file(blobs.join(cd.hex())).unwrap();
    fs::write(layout.join("cfg"), &config).unwrap();
    std::os::unix::fs::symlink("../../cfg", blobs.join(cd.hex())).unwrap();
    h.env.um(&["image", "load", layout.to_str().unwrap()]);
}
