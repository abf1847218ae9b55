//! Hostile layer tars, built byte by byte here: each is refused with one line
//! naming the entry, or confined to its layer; nothing ever appears outside
//! the store, and a refused import stores nothing.

mod store_common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use store_common::rawtar::RawTar;
use store_common::*;

struct Hostile {
    env: Env,
    /// A directory outside the store that the tars aim at.
    outside: std::path::PathBuf,
}

impl Hostile {
    fn new() -> Hostile {
        let env = Env::new();
        let outside = env.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("target"), "precious").unwrap();
        // Store exists before the hostile imports.
        env.um(&["image", "ls"]);
        Hostile { env, outside }
    }

    fn import(&self, name: &str, tar: Vec<u8>) -> std::process::Output {
        let p = self.env.path().join(format!("{name}.tar"));
        fs::write(&p, tar).unwrap();
        self.env
            .um_out(&["image", "import", &p.display().to_string(), "--tag", name])
    }

    /// The tar must be refused, with `want` in the one-line message, and store nothing.
    fn refused(&self, name: &str, tar: Vec<u8>, want: &str) {
        let before = self.env.contents();
        let p = self.env.path().join(format!("{name}.tar"));
        fs::write(&p, tar).unwrap();
        let err = self
            .env
            .um_fail(&["image", "import", &p.display().to_string(), "--tag", name]);
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        assert_eq!(
            self.env.contents(),
            before,
            "{name}: refused import stored something"
        );
        self.untouched(name);
    }

    fn untouched(&self, name: &str) {
        assert_eq!(
            all_paths(&self.outside),
            vec!["target".to_string()],
            "{name}: wrote outside"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("target")).unwrap(),
            "precious",
            "{name}"
        );
        assert_eq!(
            fs::metadata(self.outside.join("target")).unwrap().nlink(),
            1,
            "{name}"
        );
        // Nothing beside the store, the tars and the outside dir appeared.
        for e in fs::read_dir(self.env.path()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                n == "store" || n == "outside" || n.ends_with(".tar"),
                "{name}: stray {n}"
            );
        }
        let tmp = self.env.store().join("tmp");
        // Staging is cleaned by the next command.
        self.env.um(&["image", "ls"]);
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "{name}: staging left behind"
        );
    }
}

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

// ---------------------------------------------------------------------------
// Paths that climb out by other spellings

#[test]
fn dotdot_in_every_spelling_is_refused() {
    let h = Hostile::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-slash-dotdot",
            RawTar::default().file("./../outside/x", b"x").finish(),
        ),
        (
            "double-slashes",
            RawTar::default().file(".//..//outside/x", b"x").finish(),
        ),
        (
            "dot-dir-dotdot",
            RawTar::default().file("a/./../../outside/x", b"x").finish(),
        ),
        (
            "trailing-dotdot-dir",
            RawTar::default().dir("./a/b/../../..").finish(),
        ),
        // The ustar prefix field is joined to the name: a checker that only
        // looks at the name field sees "x".
        (
            "prefix-field",
            RawTar::default()
                .prefixed(b"../../outside", b"x", b"x")
                .finish(),
        ),
        (
            "gnu-long-name",
            RawTar::default()
                .gnu_long_name(format!("./{}../outside/x", "a/".repeat(60)).as_bytes())
                .file("placeholder", b"x")
                .finish(),
        ),
        (
            "pax-path",
            RawTar::default()
                .pax(&[("path", b"./../outside/x")])
                .file("placeholder", b"x")
                .finish(),
        ),
        (
            "pax-linkpath",
            RawTar::default()
                .file("a", b"x")
                .pax(&[("linkpath", b"./../outside/target")])
                .hardlink("h", "a")
                .finish(),
        ),
    ];
    for (name, tar) in cases {
        h.refused(name, tar, "..");
    }
}

// ---------------------------------------------------------------------------
// Symlinks: chains, writes through them

#[test]
fn symlink_chains_never_lead_out() {
    let h = Hostile::new();
    let out = h.outside.display().to_string();
    // a -> b -> c -> the outside dir: nothing goes through any link of the chain.
    let chain = || {
        RawTar::default()
            .symlink("c", &out)
            .symlink("b", "c")
            .symlink("a", "b")
    };
    h.refused(
        "chain-file",
        chain().file("a/evil", b"x").finish(),
        "symlink",
    );
    h.refused("chain-dir", chain().dir("a/sub").finish(), "symlink");
    h.refused(
        "chain-hardlink",
        chain().hardlink("h", "a/target").finish(),
        "hard link",
    );
    h.refused(
        "chain-whiteout",
        chain().file("a/.wh.target", b"").finish(),
        "symlink",
    );
    h.refused(
        "chain-opaque",
        chain().file("a/.wh..wh..opq", b"").finish(),
        "symlink",
    );
    // A relative chain climbing one level per link.
    h.refused(
        "relative-chain",
        RawTar::default()
            .dir("d1/d2")
            .symlink("d1/d2/up", "..")
            .symlink("d1/up", "../..")
            .symlink("top", "d1/d2/up/up/../../outside")
            .file("top/target", b"x")
            .finish(),
        "symlink",
    );
    // A chain that stays inside is not followed either: a path through any
    // symlink is refused.
    h.refused(
        "inner-chain",
        RawTar::default()
            .dir("real")
            .symlink("l2", "real")
            .symlink("l1", "l2")
            .file("l1/f", b"x")
            .finish(),
        "symlink",
    );
}

#[test]
fn writing_over_a_symlink_replaces_the_link_not_its_target() {
    let h = Hostile::new();
    let target = h.outside.join("target").display().to_string();
    let out = h.outside.display().to_string();
    // Each name is first a symlink to the outside, then an object of every
    // kind: the link is replaced, the outside file keeps its content, owner,
    // mode and link count.
    let tar = RawTar::default()
        .symlink("f", &target)
        .file("f", b"new content")
        .symlink("l", &target)
        .hardlink("l", "f")
        .symlink("p", &target)
        .device("p", b'6', b"0000000", b"0000000", 0o600)
        .symlink("d", &out)
        .dir("d")
        .symlink("s", &target)
        .symlink("s", "f")
        .file_mode("m", b"m", 0o644)
        .symlink("m", &target)
        .finish();
    let res = h.import("over-symlinks", tar);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("over-symlinks");
    let l = &h.env.layer_dirs("over-symlinks")[0];
    assert_eq!(fs::read_to_string(l.join("f")).unwrap(), "new content");
    assert_eq!(
        fs::metadata(l.join("l")).unwrap().ino(),
        fs::metadata(l.join("f")).unwrap().ino()
    );
    assert!(
        fs::symlink_metadata(l.join("p"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(fs::symlink_metadata(l.join("d")).unwrap().is_dir());
    assert_eq!(fs::read_link(l.join("s")).unwrap(), Path::new("f"));
    assert_eq!(
        fs::read_link(l.join("m")).unwrap(),
        h.outside.join("target")
    );
    let st = fs::metadata(h.outside.join("target")).unwrap();
    assert_eq!(st.mode() & 0o7777, 0o644);
}

// ---------------------------------------------------------------------------
// Hard links

#[test]
fn hard_link_targets_are_never_looked_up_on_the_host() {
    // Run from the directory holding outside/target: a hard link to
    // "outside/target", a path not (yet) in the layer, must not find the host
    // file relative to the working directory (or anywhere else).
    let h = Hostile::new();
    for (name, tar, want) in [
        (
            "hl-cwd",
            RawTar::default().hardlink("h", "outside/target").finish(),
            "not in the layer",
        ),
        (
            "hl-cwd-later",
            RawTar::default()
                .hardlink("h", "outside/target")
                .dir("outside")
                .file("outside/target", b"later")
                .finish(),
            "not in the layer",
        ),
        (
            "hl-dir-later",
            RawTar::default()
                .hardlink("d/h", "d/later")
                .file("d/later", b"x")
                .finish(),
            "not in the layer",
        ),
        (
            "hl-root",
            RawTar::default().hardlink("h", "./").finish(),
            "root",
        ),
    ] {
        let before = h.env.contents();
        let p = h.env.path().join(format!("{name}.tar"));
        fs::write(&p, tar).unwrap();
        let out = std::process::Command::new(bin())
            .current_dir(h.env.path())
            .args(["image", "import", &format!("{name}.tar"), "--tag", name])
            .env("UNIONMOUNT_STORE", h.env.store())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: imported");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: expected {want:?} in {err}");
        assert_eq!(h.env.contents(), before, "{name}: stored something");
        h.untouched(name);
    }
}

// ---------------------------------------------------------------------------
// Names

#[test]
fn names_and_targets_with_nul_are_refused() {
    let h = Hostile::new();
    h.refused(
        "nul-gnu-long-name",
        RawTar::default()
            .gnu_long_name(b"a\0/../../outside/x")
            .file("placeholder", b"x")
            .finish(),
        "NUL",
    );
    h.refused(
        "nul-symlink-target",
        RawTar::default()
            .pax(&[("linkpath", b"ok\0/../../outside")])
            .symlink("l", "placeholder")
            .finish(),
        "NUL",
    );
    h.refused(
        "nul-hardlink-target",
        RawTar::default()
            .file("a", b"x")
            .pax(&[("linkpath", b"a\0b")])
            .hardlink("h", "a")
            .finish(),
        "NUL",
    );
    h.refused(
        "nul-xattr-name",
        RawTar::default()
            .pax(&[("SCHILY.xattr.user.a\0trusted.overlay.opaque", b"y")])
            .dir("d")
            .finish(),
        "NUL",
    );
    // A NUL inside the ustar name field ends the name there, as every tar
    // reader agrees: "a\0../../x" is "a", in the layer.
    let res = h.import(
        "nul-in-name-field",
        RawTar::default()
            .entry(b"a\0../../outside/x", b'0', b"", 0o644, b"inside")
            .finish(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("nul-in-name-field");
    let l = &h.env.layer_dirs("nul-in-name-field")[0];
    assert_eq!(fs::read_to_string(l.join("a")).unwrap(), "inside");
}

#[test]
fn whiteouts_of_the_root_dot_and_dotdot_are_refused() {
    let h = Hostile::new();
    for (name, path) in [
        ("wh-root-dotdot", "./.wh.."),
        ("wh-abs-dotdot", "/.wh.."),
        ("wh-root-dot", "/./.wh.."),
        ("wh-dot-slash", "./.wh./"),
        ("wh-deep-dot", "a/b/.wh.."),
    ] {
        h.refused(name, RawTar::default().file(path, b"").finish(), "whiteout");
    }
    // A whiteout typed as a directory, a symlink or a hard link is refused the
    // same way.
    h.refused(
        "wh-dir-dotdot",
        RawTar::default().dir(".wh..").finish(),
        "whiteout",
    );
    h.refused(
        "wh-symlink-dotdot",
        RawTar::default().symlink(".wh..", "/").finish(),
        "whiteout",
    );
}

// ---------------------------------------------------------------------------
// Absurd numbers

#[test]
fn absurd_header_numbers_are_refused() {
    let h = Hostile::new();
    // A size past u64 in base-256, with data that does not follow.
    h.refused(
        "size-overflow",
        RawTar::default()
            .tweaked(b"big", b'0', |b| {
                b[124..136].copy_from_slice(&[
                    0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ]);
            })
            .finish(),
        "layer tar",
    );
    h.refused(
        "pax-size-max",
        RawTar::default()
            .pax(&[("size", b"18446744073709551615")])
            .file("f", b"x")
            .finish(),
        "layer tar",
    );
    h.refused(
        "pax-uid-huge",
        RawTar::default()
            .pax(&[("uid", b"1099511627776")])
            .file("f", b"x")
            .finish(),
        "uid",
    );
    h.refused(
        "pax-gid-minus-one",
        RawTar::default()
            .pax(&[("gid", b"4294967295")])
            .file("f", b"x")
            .finish(),
        "gid",
    );
    h.refused(
        "pax-mtime-huge",
        RawTar::default()
            .pax(&[("mtime", b"1e300")])
            .file("f", b"x")
            .finish(),
        "mtime",
    );
    h.refused(
        "mode-garbage",
        RawTar::default()
            .tweaked(b"f", b'0', |b| b[100..108].copy_from_slice(b"zzzzzzz\0"))
            .finish(),
        "mode",
    );
    if need_root("absurd_header_numbers") {
        h.refused(
            "device-major-garbage",
            RawTar::default()
                .device("dev", b'3', b"9z9\0", b"0000000", 0o600)
                .finish(),
            "device number",
        );
        h.refused(
            "device-minor-base256",
            RawTar::default()
                .device(
                    "dev",
                    b'4',
                    b"0000001",
                    &[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                    0o600,
                )
                .finish(),
            "device number",
        );
    }
    // A GNU long name of 2 MiB: the tar reader would hold it in memory.
    h.refused(
        "long-name-bomb",
        RawTar::default()
            .gnu_long_name(&vec![b'a'; 2 << 20])
            .file("placeholder", b"x")
            .finish(),
        "metadata",
    );
}

/// A GNU sparse file whose map goes on for `blocks` extension blocks of
/// zero-length regions (each one a record the tar reader keeps).
fn sparse_map_bomb(blocks: usize) -> Vec<u8> {
    let mut t = RawTar::default();
    let mut h = RawTar::block(b"sparse", b'S', b"", 0, 0o644);
    h[257..265].copy_from_slice(b"ustar  \0");
    h[386..398].copy_from_slice(b"00000000000\0");
    h[398..410].copy_from_slice(b"00000000000\0");
    h[482] = 1;
    h[483..495].copy_from_slice(b"00000000000\0");
    t.push(h);
    let mut ext = [0u8; 512];
    for i in 0..21 {
        ext[i * 24..i * 24 + 12].copy_from_slice(b"00000000000\0");
        ext[i * 24 + 12..i * 24 + 24].copy_from_slice(b"00000000000\0");
    }
    ext[504] = 1;
    let mut raw = Vec::new();
    for i in 0..blocks {
        if i + 1 == blocks {
            ext[504] = 0;
        }
        raw.extend_from_slice(&ext);
    }
    t.raw(&raw).finish()
}

#[test]
fn sparse_map_bombs_are_refused_before_buffering() {
    let h = Hostile::new();
    // 4 MiB of map (86,016 regions): past the 1 MiB bound on what the tar
    // reader holds for one entry.
    h.refused("sparse-bomb", sparse_map_bomb(8192), "sparse map");
    // A short map of the same kind is an ordinary (empty) sparse file.
    let res = h.import("sparse-short", sparse_map_bomb(4));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.untouched("sparse-short");
}

#[test]
fn the_entry_count_is_bounded() {
    use layerstore::unpack::{Limits, UnpackOptions, unpack_with};
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    fs::create_dir(&dest).unwrap();
    let mut tar = RawTar::default();
    for i in 0..101 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let tar = tar.finish();
    let opts = UnpackOptions { privileged: false };
    let err = unpack_with(&tar[..], &dest, opts, Limits { max_entries: 100 })
        .unwrap_err()
        .to_string();
    assert_eq!(err, "layer tar: more than 100 entries");
    fs::remove_dir_all(&dest).unwrap();
    fs::create_dir(&dest).unwrap();
    let got = unpack_with(&tar[..], &dest, opts, Limits { max_entries: 101 }).unwrap();
    assert_eq!(got.entries, 101);
    assert_eq!(
        layerstore::unpack::Limits::default().max_entries,
        layerstore::unpack::MAX_ENTRIES
    );
}

// ---------------------------------------------------------------------------
// Setuid files and device nodes without privilege

fn xattr(p: &Path, name: &str) -> Option<String> {
    let mut v = [0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    Some(String::from_utf8_lossy(&v[..n]).into_owned())
}

fn special_tar() -> Vec<u8> {
    RawTar::default()
        .file_mode("suid", b"#!/bin/sh\n", 0o4755)
        .file_mode("sgid", b"x", 0o2711)
        .file_mode("all", b"x", 0o7777)
        .entry(b"sgid-dir", b'5', b"", 0o3775, b"")
        .device("null", b'3', b"0000001", b"0000003", 0o666)
        .device("sda", b'4', b"0000010", b"0000000", 0o660)
        .device("fifo", b'6', b"", b"", 0o644)
        .device("wh", b'3', b"0000000", b"0000000", 0o600)
        .finish()
}

#[test]
fn without_privilege_setuid_bits_and_devices_exist_only_in_the_override() {
    use layerstore::unpack::{UnpackOptions, unpack};
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("f"), "s").unwrap();
    unpack(
        &special_tar()[..],
        &dest,
        UnpackOptions { privileged: false },
    )
    .unwrap();
    // On disk: no setuid, setgid or sticky bit anywhere, no device node.
    for e in fs::read_dir(&dest).unwrap().flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(
            m.mode() & 0o7000,
            0,
            "{:?} keeps a special mode bit on disk: {:o}",
            e.file_name(),
            m.mode()
        );
        let ft = m.file_type();
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "{:?} is a device on disk",
            e.file_name()
        );
    }
    // In the override xattr, for a rootless mount to show.
    let ov = |n: &str| xattr(&dest.join(n), "user.containers.override_stat");
    assert_eq!(ov("suid").as_deref(), Some("0:0:04755"));
    assert_eq!(ov("sgid").as_deref(), Some("0:0:02711"));
    assert_eq!(ov("all").as_deref(), Some("0:0:07777"));
    assert_eq!(ov("sgid-dir").as_deref(), Some("0:0:03775"));
    assert_eq!(ov("null").as_deref(), Some("0:0:0666:char-1-3"));
    assert_eq!(ov("sda").as_deref(), Some("0:0:0660:block-8-0"));
    assert_eq!(ov("wh").as_deref(), Some("0:0:0600:char-0-0"));
    assert!(fs::metadata(dest.join("null")).unwrap().is_file());
    assert!(
        fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(all_paths(&sentinel), vec!["f".to_string()]);

    // As root, the privileged form keeps them for real.
    if !need_root("setuid_as_root") {
        return;
    }
    let dest = t.path().join("layer-root");
    fs::create_dir(&dest).unwrap();
    unpack(
        &special_tar()[..],
        &dest,
        UnpackOptions { privileged: true },
    )
    .unwrap();
    let m = |n: &str| fs::symlink_metadata(dest.join(n)).unwrap();
    assert_eq!(m("suid").mode() & 0o7777, 0o4755);
    assert_eq!(m("sgid").mode() & 0o7777, 0o2711);
    assert!(m("null").file_type().is_char_device());
    assert_eq!(m("null").rdev(), rustix::fs::makedev(1, 3));
    assert!(m("sda").file_type().is_block_device());
    assert_eq!(
        xattr(&dest.join("suid"), "user.containers.override_stat"),
        None
    );
}

#[test]
fn a_rootless_store_drops_setuid_and_devices_from_disk() {
    // The same through the store and the CLI run as an ordinary user: the
    // imported layer has no setuid file and no device node on disk.
    if !need_root("rootless_setuid") || !need_tools("rootless_setuid", &["setpriv"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(t.join("s.tar"), special_tar()).unwrap();
    sh(&format!(
        "chown -R 65534:65534 {} && chmod 755 {} && chmod 644 {}/s.tar",
        home.display(),
        t.display(),
        t.display()
    ));
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["image", "import"])
        .arg(t.join("s.tar"))
        .args(["--tag", "s"])
        .env_remove("UNIONMOUNT_STORE")
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = home.join("data/unionmount/layers");
    let l = fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let m = |n: &str| fs::symlink_metadata(l.join(n)).unwrap();
    assert_eq!(m("suid").mode() & 0o7000, 0);
    assert_eq!(m("suid").uid(), 65534);
    assert!(m("null").is_file());
    assert!(m("sda").is_file());
    assert_eq!(
        xattr(&l.join("suid"), "user.containers.override_stat").as_deref(),
        Some("0:0:04755")
    );
}

// ---------------------------------------------------------------------------
// Compression bombs

/// A tar stream made on the fly: `files` entries of `each` zero bytes (so a
/// bomb is never held in memory here).
struct ZeroTar {
    files: u64,
    each: u64,
    /// Declared size of the first file, when it should lie bigger.
    first_declared: Option<u64>,
    next: u64,
    header: Vec<u8>,
    zeros: u64,
}

impl ZeroTar {
    fn new(files: u64, each: u64) -> ZeroTar {
        ZeroTar {
            files,
            each,
            first_declared: None,
            next: 0,
            header: Vec::new(),
            zeros: 0,
        }
    }
}

impl std::io::Read for ZeroTar {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.header.is_empty() {
            let n = out.len().min(self.header.len());
            out[..n].copy_from_slice(&self.header[..n]);
            self.header.drain(..n);
            return Ok(n);
        }
        if self.zeros > 0 {
            let n = out
                .len()
                .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
            out[..n].fill(0);
            self.zeros -= n as u64;
            return Ok(n);
        }
        let i = self.next;
        self.next += 1;
        if i < self.files {
            let declared = match (i, self.first_declared) {
                (0, Some(d)) => d,
                _ => self.each,
            };
            let mut h = RawTar::block(format!("zero{i}").as_bytes(), b'0', b"", 0, 0o644);
            // Base-256, so that any size fits.
            h[124] = 0x80;
            h[125..128].fill(0);
            h[128..136].copy_from_slice(&declared.to_be_bytes());
            let mut t = RawTar::default();
            t.push(h);
            self.header = t.finish();
            self.header.truncate(512);
            self.zeros = self.each.div_ceil(512) * 512;
        } else if i == self.files {
            self.zeros = 1024;
        } else {
            return Ok(0);
        }
        self.read(out)
    }
}

/// `tool ARGS` reading `input` on stdin; its stdout.
fn compress(tool: &[&str], mut input: impl std::io::Read + Send + 'static) -> Vec<u8> {
    let mut child = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::copy(&mut input, &mut stdin).map(|_| ()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool:?} failed");
    out.stdout
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={size},mode=0755 tmpfs {}",
            at.display()
        ));
        Tmpfs(at.to_path_buf())
    }

    fn used(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

#[test]
fn compression_bombs_stop_before_filling_the_disk() {
    // The store on a 32 MiB tmpfs; layers that expand to 4 GiB, 64 MiB and
    // 48 MiB (8 files of 6 MiB, each of which would fit alone). Each is
    // refused with a message saying it would not fit, not with ENOSPC: the
    // bound (1/20 of the filesystem stays free) acted before the disk filled.
    if !need_root("compression_bombs") || !need_tools("compression_bombs", &["gzip", "zstd"]) {
        return;
    }
    let env = Env::new();
    let tmpfs = Tmpfs::new(&env.store(), "32m");
    env.um(&["image", "ls"]);
    let outside = env.path().join("bombs");
    fs::create_dir(&outside).unwrap();
    let mut huge = ZeroTar::new(1, 1 << 20);
    huge.first_declared = Some(4 << 30);
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        ("gzip-declared-4g", compress(&["gzip", "-1", "-c"], huge)),
        (
            "gzip-64m",
            compress(&["gzip", "-1", "-c"], ZeroTar::new(1, 64 << 20)),
        ),
        (
            "zstd-8x6m",
            compress(&["zstd", "-q", "-1", "-c"], ZeroTar::new(8, 6 << 20)),
        ),
    ];
    for (name, bomb) in bombs {
        assert!(bomb.len() < 1 << 20, "{name}: {} bytes", bomb.len());
        let p = outside.join(format!("{name}.tar"));
        fs::write(&p, &bomb).unwrap();
        let before = env.contents();
        let err = env.um_fail(&["image", "import", p.to_str().unwrap(), "--tag", name]);
        assert!(err.contains("would not fit"), "{name}: {err}");
        assert!(err.contains("keeps"), "{name}: {err}");
        assert!(!err.contains("No space left"), "{name}: {err}");
        assert_eq!(env.contents(), before, "{name}: stored something");
        env.um(&["image", "ls"]);
        assert!(
            tmpfs.used() < 4 << 20,
            "{name}: {} bytes left on the store's filesystem",
            tmpfs.used()
        );
    }

    // `image load` of a gzip docker-archive holding a 64 MiB file: staging
    // the archive's files is bounded the same way.
    let mut t = RawTar::default()
        .file("manifest.json", b"[]")
        .tweaked(b"layer.tar", b'0', |b| {
            b[124..136].copy_from_slice(b"00400000000\0")
        });
    t.data(&[]);
    let head = t.finish();
    let head = head[..head.len() - 1024].to_vec();
    let archive = compress(
        &["gzip", "-1", "-c"],
        std::io::Cursor::new(head).chain(std::io::repeat(0).take((64 << 20) + 1024)),
    );
    let p = outside.join("archive-bomb.tar.gz");
    fs::write(&p, &archive).unwrap();
    let before = env.contents();
    let err = env.um_fail(&["image", "load", p.to_str().unwrap()]);
    assert!(err.contains("would not fit"), "{err}");
    assert_eq!(env.contents(), before);
    env.um(&["image", "ls"]);
    assert!(tmpfs.used() < 4 << 20, "{} bytes left", tmpfs.used());
    drop(tmpfs);
}

/// A zstd frame (raw block) of `data` declaring a 2^`window_log` window.
fn zstd_frame(window_log: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
    let bh = ((data.len() as u32) << 3) | 1;
    f.extend_from_slice(&bh.to_le_bytes()[..3]);
    f.extend_from_slice(data);
    f
}

#[test]
fn zstd_frames_asking_for_huge_windows_are_refused() {
    // The decoder would allocate the window the frame asks for: 2 GiB here.
    let h = Hostile::new();
    let tar = RawTar::default().file("f", b"x").finish();
    // The same frame with a 1 MiB window is an ordinary layer.
    let res = h.import("zstd-small-window", zstd_frame(20, &tar));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.refused(
        "zstd-window",
        zstd_frame(31, &tar),
        "window larger than 128 MiB",
    );
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
