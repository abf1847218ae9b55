//! Lookups through the layer stack, merged directories, whiteouts and opaque
//! directories in every dialect, and merged readdir (offsets, d_type, d_ino,
//! no duplicates), each compared with kernel overlayfs.

mod support;

use std::collections::BTreeSet;
use std::fs;

use support::sys::{self, DirStream};
use support::{Both, Dialect, Layer, Meta, Setup};

/// Three lowers and an upper; names overridden at every level.
fn stack() -> Setup {
    Setup::new(vec![
        Layer::new()
            .file("top", "l0-top")
            .file("shadow", "l0-shadow")
            .dir("merged/sub")
            .file("merged/from_l0", "l0")
            .file("merged/sub/deep_l0", "l0-deep")
            .file_with("modes", "m", Meta::mode(0o600).owner(1234, 5678)),
        Layer::new()
            .file("shadow", "l1-shadow")
            .file("mid", "l1-mid")
            .file("merged/from_l1", "l1")
            .file("merged/both", "l1-both")
            .file("merged/sub/deep_l1", "l1-deep")
            .dir_with("only_l1", Meta::mode(0o700).owner(7, 8)),
        Layer::new()
            .file("shadow", "l2-shadow")
            .file("bottom", "l2-bottom")
            .file("merged/both", "l2-both")
            .file("merged/from_l2", "l2")
            .symlink("merged/link", "from_l2")
            .file("filedir", "a file in l2")
            .dir("merged/sub"),
    ])
    .upper(
        Layer::new()
            .file("shadow", "upper-shadow")
            .file("merged/from_upper", "up")
            .dir("filedir"),
    )
}

#[test]
fn lookup_finds_the_topmost_name() {
    let Some(b) = Both::setup(stack()) else {
        return;
    };
    for (name, want) in [
        ("top", "l0-top"),
        ("shadow", "upper-shadow"),
        ("mid", "l1-mid"),
        ("bottom", "l2-bottom"),
        ("merged/both", "l1-both"),
        ("merged/from_l2", "l2"),
        ("merged/link", "l2"),
        ("merged/sub/deep_l1", "l1-deep"),
    ] {
        let got = b.ok(&format!("read {name}"), |m| fs::read(m.join(name)));
        assert_eq!(got, want.as_bytes(), "{name}");
    }
    // An upper directory hides a lower file of the same name.
    let st = b.ok("lstat filedir", |m| {
        sys::lstat(&m.join("filedir")).map(|s| s.st_mode & libc::S_IFMT)
    });
    assert_eq!(st, libc::S_IFDIR);
    b.err("lookup missing", libc::ENOENT, |m| fs::read(m.join("nope")));
    b.err("file as a dir", libc::ENOTDIR, |m| {
        fs::read(m.join("top/x"))
    });
    b.check_trees("layer stack");
}

#[test]
fn merged_directory_lists_every_layer_once() {
    let Some(b) = Both::setup(stack()) else {
        return;
    };
    let names = b.ok("list merged", |m| sys::names(&m.join("merged")));
    assert_eq!(
        names,
        [
            "both",
            "from_l0",
            "from_l1",
            "from_l2",
            "from_upper",
            "link",
            "sub"
        ]
    );
    let names = b.ok("list merged/sub", |m| sys::names(&m.join("merged/sub")));
    assert_eq!(names, ["deep_l0", "deep_l1"]);
    // Metadata of a directory that exists only in a middle layer.
    let (mode, uid, gid) = b.ok("stat only_l1", |m| {
        sys::lstat(&m.join("only_l1")).map(|s| (s.st_mode & 0o7777, s.st_uid, s.st_gid))
    });
    assert_eq!((mode, uid, gid), (0o700, 7, 8));
    b.check_trees("merged listing");
}

/// Whiteouts and an opaque directory in the top lower, written in `dialect`
/// for unionmount (kernel format for the reference).
fn whiteout_case(dialect: Dialect) {
    let setup = Setup::new(vec![
        Layer::new()
            .whiteout("gone")
            .whiteout("gone_dir")
            .whiteout("never_existed")
            .whiteout("dir/gone_inner")
            .file("dir/new", "l0")
            .opaque("opq")
            .file("opq/visible", "l0")
            .opaque("opq/nested_opq")
            .file("opq/nested_opq/keep", "k"),
        Layer::new()
            .file("gone", "l1")
            .file("kept", "l1")
            .file("gone_dir/inside", "l1")
            .file("dir/gone_inner", "l1")
            .file("dir/kept_inner", "l1")
            .file("opq/hidden", "l1")
            .file("opq/visible", "l1-old")
            .dir("opq/hidden_dir"),
        Layer::new()
            .file("gone", "l2")
            .file("opq/also_hidden", "l2")
            .file("gone_dir/deeper/x", "l2"),
    ])
    .dialect(dialect);
    let Some(b) = Both::setup(setup) else {
        return;
    };
    let root = b.ok("list root", sys::names);
    assert_eq!(root, ["dir", "kept", "opq"], "{dialect:?}: root listing");
    let dir = b.ok("list dir", |m| sys::names(&m.join("dir")));
    assert_eq!(dir, ["kept_inner", "new"], "{dialect:?}");
    let opq = b.ok("list opq", |m| sys::names(&m.join("opq")));
    assert_eq!(opq, ["nested_opq", "visible"], "{dialect:?}");
    assert_eq!(
        b.ok("read opq/visible", |m| fs::read(m.join("opq/visible"))),
        b"l0"
    );
    for gone in [
        "gone",
        "gone_dir",
        "gone_dir/inside",
        "never_existed",
        "dir/gone_inner",
        "opq/hidden",
        "opq/hidden_dir",
        "opq/also_hidden",
        ".wh.gone",
        "opq/.wh..wh..opq",
    ] {
        b.err(&format!("{dialect:?}: lstat {gone}"), libc::ENOENT, |m| {
            sys::lstat(&m.join(gone)).map(|_| ())
        });
    }
    // No overlay or marker xattr is listed on the opaque dirs.
    for d in ["", "opq", "opq/nested_opq", "dir"] {
        let x = b.ok(&format!("listxattr {d}"), |m| sys::llistxattr(&m.join(d)));
        assert!(x.is_empty(), "{dialect:?}: {d} lists {x:?}");
    }
    b.check_trees(&format!("whiteouts in dialect {dialect:?}"));
}

/// Changes on top of layers written in `dialect`: whiteouts and opaque dirs
/// of every dialect must behave like the kernel's own.
fn mutations_case(dialect: Dialect) {
    let setup = Setup::new(vec![
        Layer::new()
            .whiteout("gone")
            .whiteout("gone_dir")
            .whiteout("dir/gone_inner")
            .file("dir/new", "l0")
            .opaque("opq")
            .file("opq/visible", "l0"),
        Layer::new()
            .file("gone", "l1")
            .file("kept", "l1")
            .file("gone_dir/inside", "l1")
            .file("dir/gone_inner", "l1")
            .file("dir/kept_inner", "l1")
            .file("opq/hidden", "l1"),
    ])
    .dialect(dialect);
    let Some(b) = Both::setup(setup) else {
        return;
    };
    let d = format!("{dialect:?}");
    b.ok(&format!("{d}: create over a whiteout"), |m| {
        fs::write(m.join("gone"), "back")
    });
    assert_eq!(b.ok("read it", |m| fs::read(m.join("gone"))), b"back");
    b.ok(&format!("{d}: mkdir over a whited-out dir"), |m| {
        fs::create_dir(m.join("gone_dir"))
    });
    assert!(
        b.ok("new dir is empty", |m| sys::names(&m.join("gone_dir")))
            .is_empty()
    );
    b.err(&format!("{d}: rmdir a merged dir"), libc::ENOTEMPTY, |m| {
        fs::remove_dir(m.join("dir"))
    });
    b.ok(&format!("{d}: empty it and rmdir"), |m| {
        fs::remove_file(m.join("dir/new"))?;
        fs::rename(m.join("dir/kept_inner"), m.join("moved"))?;
        fs::remove_dir(m.join("dir"))
    });
    b.err(
        &format!("{d}: whited-out name stays gone"),
        libc::ENOENT,
        |m| sys::lstat(&m.join("dir/gone_inner")).map(|_| ()),
    );
    b.ok(
        &format!("{d}: rmdir an opaque dir after emptying it"),
        |m| {
            fs::remove_file(m.join("opq/visible"))?;
            fs::remove_dir(m.join("opq"))
        },
    );
    b.ok(&format!("{d}: recreate it"), |m| {
        fs::create_dir(m.join("opq"))
    });
    assert!(
        b.ok("recreated opq is empty", |m| sys::names(&m.join("opq")))
            .is_empty()
    );
    b.ok(&format!("{d}: rename a lower dir next to markers"), |m| {
        fs::rename(m.join("gone_dir"), m.join("gd2"))
    });
    b.ok(&format!("{d}: unlink a lower file"), |m| {
        fs::remove_file(m.join("kept"))
    });
    b.check_trees(&format!("changes over {d} layers"));
    b.check_uppers(&format!("changes over {d} layers"));
}

#[test]
fn changes_over_kernel_format_layers() {
    mutations_case(Dialect::Kernel);
}

#[test]
fn changes_over_oci_layers() {
    mutations_case(Dialect::Oci);
}

#[test]
fn changes_over_user_overlay_layers() {
    mutations_case(Dialect::UserXattr);
}

#[test]
fn changes_over_fuseoverlayfs_layers() {
    mutations_case(Dialect::FuseOverlayfs);
}

#[test]
fn changes_over_xattr_whiteout_layers() {
    mutations_case(Dialect::XattrWhiteout);
}

#[test]
fn changes_over_user_xattr_whiteout_layers() {
    mutations_case(Dialect::UserXattrWhiteout);
}

#[test]
fn whiteouts_kernel_chardev_and_trusted_opaque() {
    whiteout_case(Dialect::Kernel);
}

#[test]
fn whiteouts_oci_wh_files_and_opq_marker() {
    whiteout_case(Dialect::Oci);
}

#[test]
fn whiteouts_with_user_overlay_opaque() {
    whiteout_case(Dialect::UserXattr);
}

#[test]
fn whiteouts_with_fuseoverlayfs_opaque() {
    whiteout_case(Dialect::FuseOverlayfs);
}

#[test]
fn whiteouts_as_trusted_overlay_whiteout_xattr() {
    whiteout_case(Dialect::XattrWhiteout);
}

#[test]
fn whiteouts_as_user_overlay_whiteout_xattr() {
    whiteout_case(Dialect::UserXattrWhiteout);
}

#[test]
fn overlay_xattrs_are_never_listed() {
    // A lower dir renamed by kernel overlayfs carries redirect/origin xattrs;
    // here the top lower has opaque and a user xattr side by side.
    let Some(b) = Both::new(vec![
        Layer::new()
            .opaque("o")
            .xattr("o", "user.mine", "v1")
            .xattr("o", "trusted.other", "t")
            .file("f", "x")
            .xattr("f", "user.a", "1")
            .xattr("f", "trusted.overlay.overlay.escaped", "e"),
        Layer::new().file("o/x", "hidden"),
    ]) else {
        return;
    };
    let mut o = b.ok("listxattr o", |m| sys::llistxattr(&m.join("o")));
    o.sort();
    assert_eq!(o, ["trusted.other", "user.mine"]);
    let mut f = b.ok("listxattr f", |m| sys::llistxattr(&m.join("f")));
    f.sort();
    // An escaped overlay xattr in a layer is shown unescaped.
    assert_eq!(f, ["trusted.overlay.escaped", "user.a"]);
    b.err("get opaque", libc::ENODATA, |m| {
        sys::lgetxattr(&m.join("o"), "trusted.overlay.opaque")
    });
    assert_eq!(
        b.ok("get escaped", |m| sys::lgetxattr(
            &m.join("f"),
            "trusted.overlay.escaped"
        )),
        b"e"
    );
    b.check_trees("overlay xattrs");
}

#[test]
fn every_file_type_is_looked_up_with_its_type() {
    let Some(b) = Both::new(vec![
        Layer::new()
            .fifo("fifo")
            .socket("sock")
            .chardev("null", 1, 3)
            .symlink("abs", "/etc/passwd")
            .symlink("rel", "dir/../file")
            .symlink("dangling", "nowhere")
            .file("file", "f")
            .hardlink("file2", "file")
            .dir("dir"),
        Layer::new().file("dir/x", "x"),
    ]) else {
        return;
    };
    let t = b.ok("readlink rel", |m| fs::read_link(m.join("rel")));
    assert_eq!(t, std::path::Path::new("dir/../file"));
    // A symlink inside a layer is never followed to the host.
    let t = b.ok("readlink abs", |m| fs::read_link(m.join("abs")));
    assert_eq!(t, std::path::Path::new("/etc/passwd"));
    let nl = b.ok("nlink of a lower hard link", |m| {
        sys::lstat(&m.join("file2")).map(|s| s.st_nlink)
    });
    assert_eq!(nl, 2);
    b.check_trees("file types");
}

/// A big merged directory: entries from three layers and the upper, with
/// duplicates and whiteouts, more than one getdents buffer's worth.
fn big_dir() -> Setup {
    let mut l0 = Layer::new();
    let mut l1 = Layer::new();
    let mut l2 = Layer::new();
    let mut up = Layer::new();
    for i in 0..400 {
        let n = format!("big/entry_with_a_longish_name_{i:04}");
        match i % 5 {
            0 => l0 = l0.file(&n, "l0"),
            1 => l1 = l1.file(&n, "l1"),
            2 => l2 = l2.file(&n, "l2"),
            3 => {
                l0 = l0.file(&n, "l0");
                l2 = l2.file(&n, "l2");
            }
            _ => {
                up = up.file(&n, "up");
                l1 = l1.dir(&n);
            }
        }
        if i % 7 == 0 {
            // hidden again by a whiteout in a layer above
            let w = format!("big/whited_{i:04}");
            l2 = l2.file(&w, "l2");
            l0 = l0.whiteout(&w);
        }
        if i % 11 == 0 {
            let d = format!("big/subdir_{i:04}");
            l1 = l1.file(&format!("{d}/x"), "x");
            l2 = l2.fifo(&format!("big/fifo_{i:04}"));
        }
    }
    Setup::new(vec![l0, l1, l2]).upper(up.dir("big"))
}

#[test]
fn readdir_has_no_duplicates_right_dtype_and_dino() {
    let Some(b) = Both::setup(big_dir()) else {
        return;
    };
    for side in b.sides() {
        let ents = sys::read_dir_raw(&side.p("big")).unwrap();
        let mut seen = BTreeSet::new();
        for e in &ents {
            assert!(
                seen.insert(e.name.clone()),
                "{}: {:?} listed twice",
                side.name,
                e.name
            );
            let st = sys::lstat(&side.p("big").join(&e.name)).unwrap();
            assert_eq!(
                e.d_type,
                sys::d_type_of_mode(st.st_mode),
                "{}: d_type of {:?}",
                side.name,
                e.name
            );
            assert_eq!(e.ino, st.st_ino, "{}: d_ino of {:?}", side.name, e.name);
            assert!(
                !e.name.to_string_lossy().starts_with("whited_"),
                "{}: {:?}",
                side.name,
                e.name
            );
        }
        assert_eq!(ents.len(), 400 + 37 * 2, "{}: entry count", side.name);
    }
    b.check_trees("big merged dir");
}

#[test]
fn telldir_seekdir_are_stable_while_the_directory_is_open() {
    let Some(b) = Both::setup(big_dir()) else {
        return;
    };
    for side in b.sides() {
        let dir = side.p("big");
        let mut d = DirStream::open(&dir).unwrap();
        // Every entry with the position just before it.
        let mut positions = Vec::new();
        loop {
            let pos = d.tell();
            match d.next_entry().unwrap() {
                Some(e) => positions.push((pos, e)),
                None => break,
            }
        }
        assert!(positions.len() > 400, "{}: short listing", side.name);
        // Seeking to any recorded position yields the entry that followed it,
        // and the rest of the listing from there is the same as the first time.
        for idx in [0, 1, 57, 199, 250, positions.len() / 2, positions.len() - 1] {
            let (pos, want) = &positions[idx];
            d.seek(*pos);
            let got = d.next_entry().unwrap();
            assert_eq!(
                got.as_ref(),
                Some(want),
                "{}: seekdir to entry {idx}",
                side.name
            );
        }
        let (pos, _) = &positions[123];
        d.seek(*pos);
        let rest: Vec<_> = std::iter::from_fn(|| d.next_entry().unwrap()).collect();
        let want: Vec<_> = positions[123..].iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(rest, want, "{}: listing resumed at entry 123", side.name);
        // Going backwards works too, and rewinddir restarts.
        let (pos, want) = &positions[10];
        d.seek(*pos);
        assert_eq!(
            d.next_entry().unwrap().as_ref(),
            Some(want),
            "{}: seek back",
            side.name
        );
        d.rewind();
        let again: Vec<_> = std::iter::from_fn(|| d.next_entry().unwrap()).collect();
        let first: Vec<_> = positions.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(again, first, "{}: listing after rewinddir", side.name);
        // A second stream open at the same time has its own position.
        let mut d2 = DirStream::open(&dir).unwrap();
        let a = d2.next_entry().unwrap();
        d.seek(positions[300].0);
        let b2 = d2.next_entry().unwrap();
        assert_ne!(a, b2, "{}: second stream", side.name);
        assert_eq!(d.next_entry().unwrap().as_ref(), Some(&positions[300].1));
    }
}

#[test]
fn readdir_of_an_open_directory_survives_changes() {
    // Entries removed while a listing is in progress are not listed twice and
    // the listing still ends.
    let Some(b) = Both::setup(big_dir()) else {
        return;
    };
    for side in b.sides() {
        let dir = side.p("big");
        let mut d = DirStream::open(&dir).unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..100 {
            let e = d.next_entry().unwrap().unwrap();
            seen.insert(e.name);
        }
        for i in 0..50 {
            let n = dir.join(format!("new_{i}"));
            fs::write(&n, "n").unwrap();
        }
        for i in (0..400).step_by(3) {
            let _ = fs::remove_file(dir.join(format!("entry_with_a_longish_name_{i:04}")));
        }
        let mut count = 0;
        while let Some(e) = d.next_entry().unwrap() {
            assert!(
                seen.insert(e.name.clone()),
                "{}: {:?} listed twice",
                side.name,
                e.name
            );
            count += 1;
            assert!(count < 10_000, "{}: listing does not end", side.name);
        }
    }
    b.check_trees("after changes during readdir");
}

/// 3,000 names in one merged directory: several getdents calls and many
/// FUSE pages per pass.
fn huge_dir() -> Setup {
    let (mut l0, mut l1, mut up) = (Layer::new(), Layer::new(), Layer::new());
    for i in 0..3000 {
        let n = format!("huge/name_{i:05}");
        match i % 3 {
            0 => l0 = l0.file(&n, "l0"),
            1 => l1 = l1.file(&n, "l1"),
            _ => up = up.file(&n, "up"),
        }
    }
    Setup::new(vec![l0, l1]).upper(up)
}

#[test]
fn many_readers_of_a_changing_directory_see_each_lasting_name_once() {
    // Readers have no handle in the daemon (no opendir: the kernel caches
    // listings) and resume by position alone: 80 streams stopped at different
    // places, names made and removed, then every stream reads on.
    let Some(b) = Both::setup(huge_dir()) else {
        return;
    };
    let removed: BTreeSet<String> = (0..3000)
        .step_by(7)
        .map(|i| format!("name_{i:05}"))
        .collect();
    for side in b.sides() {
        let dir = side.p("huge");
        let mut streams = Vec::new();
        for s in 0..80 {
            let mut d = DirStream::open(&dir).unwrap();
            let mut seen = Vec::new();
            for _ in 0..(s * 37) % 2900 {
                let e = d.next_entry().unwrap().expect("an entry");
                seen.push(e.name.to_string_lossy().into_owned());
            }
            streams.push((d, seen));
        }
        // A position to come back to, taken before the changes.
        let (pos, want) = {
            let (d, _) = &mut streams[5];
            let pos = d.tell();
            let e = d.next_entry().unwrap().expect("an entry");
            let name = e.name.to_string_lossy().into_owned();
            d.seek(pos);
            (pos, name)
        };
        for i in 0..200 {
            fs::write(dir.join(format!("new_{i}")), "n").unwrap();
        }
        for n in &removed {
            fs::remove_file(dir.join(n)).unwrap();
        }
        for (i, (d, seen)) in streams.iter_mut().enumerate() {
            while let Some(e) = d.next_entry().unwrap() {
                seen.push(e.name.to_string_lossy().into_owned());
            }
            let mut counts = std::collections::BTreeMap::new();
            for n in seen.iter() {
                *counts.entry(n.as_str()).or_insert(0) += 1;
            }
            let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
            assert!(
                twice.is_empty(),
                "{}: stream {i} listed twice: {twice:?}",
                side.name
            );
            let missing: Vec<String> = (0..3000)
                .map(|i| format!("name_{i:05}"))
                .filter(|n| !removed.contains(n) && !counts.contains_key(n.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "{}: stream {i} missed {missing:?}",
                side.name
            );
        }
        if !removed.contains(&want) {
            let (d, _) = &mut streams[5];
            d.seek(pos);
            let again = d
                .next_entry()
                .unwrap()
                .map(|e| e.name.to_string_lossy().into_owned());
            assert_eq!(
                again.as_ref(),
                Some(&want),
                "{}: seekdir after changes",
                side.name
            );
        }
    }
    b.check_trees("after readers and changes");
}

#[test]
fn read_only_merged_view_without_upper() {
    let setup = Setup::new(vec![
        Layer::new().file("a", "l0").whiteout("b").file("d/x", "l0"),
        Layer::new()
            .file("a", "l1")
            .file("b", "l1")
            .file("d/y", "l1"),
    ])
    .readonly();
    let Some(b) = Both::setup(setup) else {
        return;
    };
    b.check_trees("read-only view");
    b.err("create", libc::EROFS, |m| fs::write(m.join("new"), "x"));
    b.err("write", libc::EROFS, |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("a"))
            .map(|_| ())
    });
    b.err("mkdir", libc::EROFS, |m| fs::create_dir(m.join("d/z")));
    b.err("unlink", libc::EROFS, |m| fs::remove_file(m.join("a")));
    b.err("setxattr", libc::EROFS, |m| {
        sys::lsetxattr(&m.join("a"), "user.x", b"1")
    });
}
