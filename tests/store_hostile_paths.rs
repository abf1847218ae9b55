//! Hostile layer tars that aim outside by spelling: `..` in every form,
//! symlink chains and writes over links, hard links to host paths, names
//! with NUL, whiteouts of the root, `.` and `..`, and absurd header numbers.
//! Each is refused with one line naming the entry, or confined to its layer;
//! nothing appears outside the store.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use support::store::hostile::Hostile;
use support::store::rawtar::RawTar;
use support::store::*;

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
