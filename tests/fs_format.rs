//! The on-disk format, checked across implementations in both directions:
//! an upper written by unionmount, mounted by kernel overlayfs, shows exactly
//! what unionmount showed; an upper written by kernel overlayfs, mounted by
//! unionmount, shows what the kernel showed. Name translation: overlay xattrs
//! escaped as the kernel does (so overlays nest), `.wh.` names in OCI mode.

mod support;

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use support::sys::{self, RENAME_EXCHANGE};
use support::{Both, Dialect, Impl, Layer, Meta, Mount, Setup, assert_trees_eq, subject_is_kernel};

fn lowers() -> Vec<Layer> {
    vec![
        Layer::new()
            .file("etc/conf", "l0 conf")
            .file_with("etc/secret", "s", Meta::mode(0o600).owner(5, 6))
            .dir("var/log")
            .file("var/log/old.log", "old")
            .file("usr/bin/tool", "#!/bin/sh\n")
            .xattr("usr/bin/tool", "user.note", "n")
            .file("data/a", "a")
            // a lower hard link would be broken by the index=off reference on
            // copy-up and kept by unionmount (tested in fs_dir_ops)
            .file("data/a_link", "a"),
        Layer::new()
            .file("etc/conf", "l1 conf")
            .file("etc/only_l1", "1")
            .file("usr/lib/libx.so", "lib")
            .file("usr/lib/sub/deep", "deep")
            .file("data/b", "b")
            .dir("empty"),
    ]
}

/// Changes of every kind the format has to record.
fn workload(m: &Path) -> io::Result<()> {
    fs::write(m.join("etc/conf"), "changed conf")?; // copy-up
    fs::remove_file(m.join("etc/only_l1"))?; // whiteout
    fs::remove_dir_all(m.join("var/log"))?; // dir whiteout
    fs::create_dir(m.join("var/log"))?; // opaque dir
    fs::write(m.join("var/log/new.log"), "new")?;
    fs::rename(m.join("usr/lib"), m.join("usr/lib64"))?; // redirect (relative)
    fs::rename(m.join("usr/lib64/sub"), m.join("data/moved_sub"))?; // redirect (absolute)
    fs::create_dir(m.join("usr/lib"))?; // new dir where a renamed one was
    fs::write(m.join("usr/lib/fresh"), "f")?;
    sys::lsetxattr(&m.join("usr/bin/tool"), "user.added", b"a")?; // metadata copy-up
    sys::chmod(&m.join("etc/secret"), 0o640)?;
    sys::lchown(&m.join("data/b"), 77, 88)?;
    fs::hard_link(m.join("data/b"), m.join("data/b_link"))?;
    symlink("../etc/conf", m.join("data/conf_link"))?;
    sys::mkfifo(&m.join("data/fifo"), 0o600)?;
    sys::lsetxattr(&m.join("data"), "trusted.overlay.user_set", b"escaped")?;
    sys::renameat2(&m.join("data/a"), &m.join("etc/secret"), RENAME_EXCHANGE)?;
    fs::remove_dir(m.join("empty"))?;
    fs::create_dir_all(m.join("brand/new/tree"))?;
    fs::rename(m.join("brand"), m.join("renamed_new"))?;
    Ok(())
}

#[test]
fn upper_written_by_unionmount_mounts_under_kernel_overlayfs() {
    let Some(mut b) = Both::new(lowers()) else {
        return;
    };
    b.ok("workload", workload);
    b.check_trees("after the workload");
    let live = b.u.snapshot();
    b.u.unmount();
    b.u.mount_as(Impl::Kernel);
    let by_kernel = b.u.snapshot();
    assert_trees_eq(
        "unionmount's upper under kernel overlayfs",
        "unionmount (live)",
        &live,
        "kernel overlayfs over unionmount's upper",
        &by_kernel,
    );
    // And unionmount itself reads back what it wrote.
    b.u.unmount();
    b.u.mount();
    let again = b.u.snapshot();
    assert_trees_eq("remount", "before remount", &live, "after remount", &again);
}

#[test]
fn upper_written_by_kernel_overlayfs_mounts_under_unionmount() {
    let Some(mut b) = Both::new(lowers()) else {
        return;
    };
    b.ok("workload", workload);
    let kernel_view = b.k.snapshot();
    b.k.unmount();
    let imp = if subject_is_kernel() {
        Impl::Kernel
    } else {
        Impl::Union
    };
    b.k.mount_as(imp);
    let union_view = b.k.snapshot();
    assert_trees_eq(
        "kernel's upper under unionmount",
        "kernel overlayfs (live)",
        &kernel_view,
        "unionmount over the kernel's upper",
        &union_view,
    );
    // Keep working on it with unionmount: the result still mounts under the kernel.
    fs::write(b.k.p("usr/lib64/libx.so"), "rewritten").unwrap();
    fs::rename(b.k.p("data/moved_sub"), b.k.p("moved_again")).unwrap();
    fs::remove_dir_all(b.k.p("renamed_new")).unwrap();
    let continued = b.k.snapshot();
    b.k.unmount();
    b.k.mount_as(Impl::Kernel);
    assert_trees_eq(
        "kernel upper continued by unionmount",
        "unionmount",
        &continued,
        "kernel",
        &b.k.snapshot(),
    );
}

#[test]
fn existing_upper_with_whiteouts_and_opaque_dirs() {
    let setup = Setup::new(lowers()).upper(
        Layer::new()
            .whiteout("etc/conf")
            .opaque("usr")
            .file("usr/own", "o")
            .whiteout("data/b")
            .file("data/c", "c"),
    );
    let Some(b) = Both::setup(setup) else { return };
    assert_eq!(b.ok("list usr", |m| sys::names(&m.join("usr"))), ["own"]);
    assert_eq!(
        b.ok("list data", |m| sys::names(&m.join("data"))),
        ["a", "a_link", "c"]
    );
    b.check_trees("pre-existing upper");
}

#[test]
fn overlay_xattrs_are_escaped_like_the_kernel_does() {
    let Some(b) = Both::new(lowers()) else { return };
    b.ok("set trusted.overlay.foo", |m| {
        sys::lsetxattr(&m.join("etc/conf"), "trusted.overlay.foo", b"bar")
    });
    b.ok("set trusted.overlay.opaque on a dir", |m| {
        sys::lsetxattr(&m.join("usr"), "trusted.overlay.opaque", b"y")
    });
    for side in b.sides() {
        assert_eq!(
            sys::lgetxattr(&side.upper.join("etc/conf"), "trusted.overlay.overlay.foo").ok(),
            Some(b"bar".to_vec()),
            "{}: stored escaped in the upper",
            side.name
        );
        assert!(
            sys::lgetxattr(&side.upper.join("etc/conf"), "trusted.overlay.foo").is_err(),
            "{}: stored unescaped",
            side.name
        );
        assert_eq!(
            sys::lgetxattr(&side.upper.join("usr"), "trusted.overlay.overlay.opaque").ok(),
            Some(b"y".to_vec()),
            "{}",
            side.name
        );
    }
    let mut l = b.ok("list", |m| sys::llistxattr(&m.join("etc/conf")));
    l.sort();
    assert_eq!(l, ["trusted.overlay.foo"]);
    assert_eq!(
        b.ok("get", |m| sys::lgetxattr(
            &m.join("etc/conf"),
            "trusted.overlay.foo"
        )),
        b"bar"
    );
    // The user's opaque xattr does not make the directory opaque.
    assert_eq!(
        b.ok("list usr", |m| sys::names(&m.join("usr"))),
        ["bin", "lib"]
    );
    b.ok("remove", |m| {
        sys::lremovexattr(&m.join("etc/conf"), "trusted.overlay.foo")
    });
    for side in b.sides() {
        assert!(
            sys::lgetxattr(&side.upper.join("etc/conf"), "trusted.overlay.overlay.foo").is_err(),
            "{}: escaped xattr not removed",
            side.name
        );
    }
    b.check_trees("escaped xattrs");
}

#[test]
fn an_overlay_nests_inside_the_mount() {
    // Layers for an inner kernel overlayfs live inside the outer mount; their
    // whiteouts and opaque xattrs are written through it (escaped on disk).
    let Some(b) = Both::new(vec![Layer::new().file("inner/low/keep", "k"), Layer::new()]) else {
        return;
    };
    b.ok("build inner layers through the mount", |m| {
        let top = m.join("inner/top");
        fs::create_dir_all(top.join("opq"))?;
        sys::lsetxattr(&top.join("opq"), "trusted.overlay.opaque", b"y")?;
        // overlayfs refuses mknod of a 0/0 whiteout; an xattr whiteout works
        fs::write(top.join("keep"), "")?;
        sys::lsetxattr(&top.join("keep"), "trusted.overlay.whiteout", b"")?;
        sys::lsetxattr(&top, "trusted.overlay.opaque", b"x")?;
        fs::write(top.join("added"), "a")?;
        fs::create_dir_all(m.join("inner/low/opq"))?;
        fs::write(m.join("inner/low/opq/hidden"), "h")?;
        fs::write(m.join("inner/low/visible"), "v")?;
        fs::create_dir(m.join("inner/mnt"))
    });
    let mut views = Vec::new();
    for side in b.sides() {
        let inner_mnt = side.p("inner/mnt");
        let opts = format!(
            "lowerdir={}:{}",
            side.p("inner/top").display(),
            side.p("inner/low").display()
        );
        let inner = Mount::kernel(&inner_mnt, &opts)
            .unwrap_or_else(|e| panic!("{}: inner overlay over the mount: {e}", side.name));
        views.push((side.name, support::snapshot(&inner_mnt)));
        assert_eq!(
            sys::names(&inner_mnt).unwrap(),
            ["added", "opq", "visible"],
            "{}: inner overlay view",
            side.name
        );
        assert!(
            sys::names(&inner_mnt.join("opq")).unwrap().is_empty(),
            "{}",
            side.name
        );
        drop(inner);
    }
    assert_trees_eq(
        "inner overlay",
        views[0].0,
        &views[0].1,
        views[1].0,
        &views[1].1,
    );
}

#[test]
fn user_names_starting_with_wh_in_oci_mode() {
    let setup = Setup::new(vec![
        Layer::new().whiteout("gone").file("d/x", "x"),
        Layer::new()
            .file("gone", "g")
            .file("foo", "foo")
            .file("d/y", "y"),
    ])
    .dialect(Dialect::Oci);
    let Some(mut b) = Both::setup(setup) else {
        return;
    };
    b.ok("create .wh.foo", |m| fs::write(m.join(".wh.foo"), "mine"));
    b.ok("create .wh..wh..opq in d", |m| {
        fs::write(m.join("d/.wh..wh..opq"), "mine too")
    });
    b.ok("mkdir .wh.dir", |m| fs::create_dir(m.join(".wh.dir")));
    assert_eq!(b.ok("list", sys::names), [".wh.dir", ".wh.foo", "d", "foo"]);
    assert_eq!(
        b.ok("list d", |m| sys::names(&m.join("d"))),
        [".wh..wh..opq", "x", "y"]
    );
    assert_eq!(b.ok("read", |m| fs::read(m.join(".wh.foo"))), b"mine");
    b.check_trees(".wh. names");
    let before = b.u.snapshot();
    b.u.remount();
    assert_trees_eq(
        ".wh. names after remount",
        "before",
        &before,
        "after",
        &b.u.snapshot(),
    );
    b.ok("remove them", |m| {
        fs::remove_file(m.join(".wh.foo"))?;
        fs::remove_dir(m.join(".wh.dir"))
    });
    b.check_trees(".wh. names removed");
}

/// A unionmount mount (no kernel counterpart) over one lower with extra options.
fn mapped_mount(s: &support::Scratch, extra: &str) -> (Mount, std::path::PathBuf) {
    let [l, u, w, m] = s.dirs(["l", "u", "w", "m"]);
    if !l.join("mapped").exists() {
        Layer::new()
            .file_with("mapped", "m", Meta::mode(0o644).owner(100_005, 100_006))
            .file_with("unmapped", "u", Meta::mode(0o644).owner(50, 50))
            .dir_with("dir", Meta::mode(0o755).owner(100_000, 100_000))
            .build(&l, Dialect::Kernel);
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        l.display(),
        u.display(),
        w.display()
    );
    let mount = Mount::union_foreground(&m, &["-o".into(), opts.into()])
        .unwrap_or_else(|e| panic!("mount with {extra}: {e}"));
    (mount, u)
}

fn owner(p: &Path) -> (u32, u32) {
    let st = sys::lstat(p).unwrap();
    (st.st_uid, st.st_gid)
}

#[test]
fn uid_and_gid_mapping_both_ways() {
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        eprintln!("owner mapping is a unionmount option; nothing to check on the kernel");
        return;
    }
    let s = support::Scratch::new();
    let (m, upper) = mapped_mount(&s, ",uidmapping=0:100000:65536,gidmapping=0:100000:65536");
    let mnt = m.mnt.clone();
    assert_eq!(
        owner(&mnt.join("mapped")),
        (5, 6),
        "disk 100005:100006 shows as 5:6"
    );
    assert_eq!(owner(&mnt.join("dir")), (0, 0));
    let overflow = |f: &str| -> u32 {
        fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(65534)
    };
    assert_eq!(
        owner(&mnt.join("unmapped")),
        (overflow("overflowuid"), overflow("overflowgid")),
        "an unmapped disk owner shows as the overflow id"
    );
    fs::write(mnt.join("dir/new"), "n").unwrap();
    assert_eq!(owner(&mnt.join("dir/new")), (0, 0));
    assert_eq!(
        owner(&upper.join("dir/new")),
        (100_000, 100_000),
        "root inside is 100000 on disk"
    );
    sys::lchown(&mnt.join("dir/new"), 7, 8).unwrap();
    assert_eq!(owner(&mnt.join("dir/new")), (7, 8));
    assert_eq!(
        owner(&upper.join("dir/new")),
        (100_007, 100_008),
        "chown maps back to disk ids"
    );
    sys::lchown(&mnt.join("mapped"), 9, 9).unwrap();
    assert_eq!(
        owner(&upper.join("mapped")),
        (100_009, 100_009),
        "copy-up then chown"
    );
    assert_eq!(
        owner(&upper.join("dir")),
        (100_000, 100_000),
        "parent copied up with its disk owner"
    );
    drop(m);
}

#[test]
fn squash_options_show_one_owner() {
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        eprintln!("squash_to_* are unionmount options; nothing to check on the kernel");
        return;
    }
    let s = support::Scratch::new();
    for (extra, want) in [
        (",squash_to_root", (0, 0)),
        (",squash_to_uid=1234,squash_to_gid=4321", (1234, 4321)),
    ] {
        let (m, _upper) = mapped_mount(&s, extra);
        for name in ["mapped", "unmapped", "dir"] {
            assert_eq!(owner(&m.mnt.join(name)), want, "{extra}: owner of {name}");
        }
        drop(m);
    }
}

/// Every xattr name anywhere under `dir` (not following symlinks).
fn all_xattr_names(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for n in sys::llistxattr(&p).unwrap() {
            out.push((p.clone(), n));
        }
        if sys::lstat(&p).unwrap().st_mode & libc::S_IFMT == libc::S_IFDIR {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn userxattr_mode_writes_user_overlay_xattrs_the_kernel_reads() {
    if !support::require_mounts() {
        return;
    }
    if subject_is_kernel() {
        eprintln!("userxattr is checked against unionmount only");
        return;
    }
    let s = support::Scratch::new();
    let [l0, l1, u, w, m] = s.dirs(["l0", "l1", "u", "w", "m"]);
    Layer::new()
        .opaque("opq")
        .file("opq/top", "t")
        .whiteout("gone")
        .build(&l0, Dialect::UserXattr);
    Layer::new()
        .file("gone", "g")
        .file("opq/hidden", "h")
        .file("d/x", "x")
        .file("d/y", "y")
        .file("f", "f")
        .build(&l1, Dialect::UserXattr);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},userxattr",
        l0.display(),
        l1.display(),
        u.display(),
        w.display()
    );
    let mut mount = Mount::union_foreground(&m, &["-o".into(), opts.clone().into()]).unwrap();
    assert_eq!(sys::names(&m).unwrap(), ["d", "f", "opq"]);
    assert_eq!(sys::names(&m.join("opq")).unwrap(), ["top"]);
    fs::remove_dir_all(m.join("d")).unwrap();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/new"), "n").unwrap();
    fs::remove_file(m.join("f")).unwrap();
    fs::write(m.join("opq/top"), "changed").unwrap();
    sys::lsetxattr(&m.join("opq/top"), "user.overlay.mine", b"v").unwrap();
    assert_eq!(
        sys::lgetxattr(&m.join("opq/top"), "user.overlay.mine").unwrap(),
        b"v",
        "a user's own user.overlay.* xattr reads back"
    );
    let live = support::snapshot(&m);
    mount.unmount().unwrap();
    let trusted: Vec<_> = all_xattr_names(&u)
        .into_iter()
        .filter(|(_, n)| n.starts_with("trusted.overlay."))
        .collect();
    assert!(
        trusted.is_empty(),
        "userxattr mode wrote trusted.overlay.*: {trusted:?}"
    );
    assert_eq!(
        sys::lgetxattr(&u.join("d"), "user.overlay.opaque")
            .ok()
            .as_deref(),
        Some(&b"y"[..]),
        "the new dir over a whiteout is opaque in the user namespace"
    );
    assert_eq!(
        sys::lgetxattr(&u.join("opq/top"), "user.overlay.overlay.mine")
            .ok()
            .as_deref(),
        Some(&b"v"[..]),
        "the user's user.overlay.* xattr is stored escaped"
    );
    let kernel = Mount::kernel(&m, &opts).unwrap();
    let by_kernel = support::snapshot(&m);
    drop(kernel);
    assert_trees_eq(
        "userxattr upper",
        "unionmount",
        &live,
        "kernel overlayfs (userxattr)",
        &by_kernel,
    );
}
