//! Directory operations compared with kernel overlayfs: unlink/rmdir and
//! where whiteouts go, ENOTEMPTY on merged dirs, mkdir over a whiteout,
//! unlink of an open file, rename of files (NOREPLACE, EXCHANGE) and of lower
//! and merged directories (no EXDEV, kernel-format redirects), hard links,
//! special files, name and path length limits.

mod support;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, symlink};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use support::sys::{self, RENAME_EXCHANGE, RENAME_NOREPLACE};
use support::{Both, Impl, Layer, Meta, Setup, Side, subject_is_kernel};

fn lowers() -> Vec<Layer> {
    vec![
        Layer::new()
            .file("f", "l0-f")
            .file("g", "l0-g")
            .file("merged/a", "l0-a")
            .dir("emptydir")
            .file("d/inner/x", "x")
            .file("d/y", "y")
            .dir_with("d", Meta::mode(0o750).owner(3, 4)),
        Layer::new()
            .file("merged/b", "l1-b")
            .file("merged/sub/c", "l1-c")
            .file("h", "l1-h")
            .file("d2/z", "z")
            .dir("onlylower/deep/er"),
    ]
}

fn fixture() -> Option<Both> {
    Both::setup(
        Setup::new(lowers()).upper(Layer::new().file("up", "upper-only").file("merged/u", "u")),
    )
}

#[test]
fn unlink_whites_out_only_names_a_lower_has() {
    let Some(b) = fixture() else { return };
    b.ok("unlink lower file", |m| fs::remove_file(m.join("f")));
    b.ok("unlink upper-only file", |m| fs::remove_file(m.join("up")));
    b.ok("create and unlink a new file", |m| {
        fs::write(m.join("merged/new"), "n")?;
        fs::remove_file(m.join("merged/new"))
    });
    b.ok("unlink a copied-up file", |m| {
        fs::write(m.join("g"), "changed")?;
        fs::remove_file(m.join("g"))
    });
    b.ok("unlink in a lower-only dir", |m| {
        fs::remove_file(m.join("merged/sub/c"))
    });
    b.err("unlink again", libc::ENOENT, |m| {
        fs::remove_file(m.join("f"))
    });
    b.err("unlink a dir", libc::EISDIR, |m| {
        fs::remove_file(m.join("d"))
    });
    b.ok("recreate over a whiteout", |m| {
        fs::write(m.join("f"), "again")
    });
    assert_eq!(b.ok("read", |m| fs::read(m.join("f"))), b"again");
    b.check_trees("unlink");
    b.check_uppers("unlink");
}

#[test]
fn rmdir_checks_the_merged_view() {
    let Some(b) = fixture() else { return };
    b.err(
        "rmdir merged non-empty (entries only in lowers)",
        libc::ENOTEMPTY,
        |m| fs::remove_dir(m.join("merged/sub")),
    );
    b.err("rmdir merged non-empty (both)", libc::ENOTEMPTY, |m| {
        fs::remove_dir(m.join("merged"))
    });
    b.ok("rmdir empty lower dir", |m| {
        fs::remove_dir(m.join("emptydir"))
    });
    b.ok("rmdir new dir", |m| {
        fs::create_dir(m.join("newdir"))?;
        fs::remove_dir(m.join("newdir"))
    });
    b.ok("empty a merged dir, then rmdir it", |m| {
        fs::remove_file(m.join("merged/sub/c"))?;
        fs::remove_dir(m.join("merged/sub"))
    });
    b.ok("rm -r a lower tree", |m| {
        fs::remove_dir_all(m.join("onlylower"))
    });
    b.err("rmdir a file", libc::ENOTDIR, |m| {
        fs::remove_dir(m.join("h"))
    });
    b.err("rmdir missing", libc::ENOENT, |m| {
        fs::remove_dir(m.join("emptydir"))
    });
    b.check_trees("rmdir");
    b.check_uppers("rmdir");
}

#[test]
fn mkdir_over_a_whiteout_is_opaque() {
    let Some(mut b) = fixture() else { return };
    b.ok("rm -r d, mkdir d", |m| {
        fs::remove_dir_all(m.join("d"))?;
        fs::create_dir(m.join("d"))
    });
    assert!(b.ok("list d", |m| sys::names(&m.join("d"))).is_empty());
    b.ok("rm -r merged, mkdir merged, create in it", |m| {
        fs::remove_dir_all(m.join("merged"))?;
        fs::create_dir(m.join("merged"))?;
        fs::write(m.join("merged/only"), "o")
    });
    assert_eq!(
        b.ok("list merged", |m| sys::names(&m.join("merged"))),
        ["only"]
    );
    b.ok("file over a whiteout of a dir", |m| {
        fs::remove_dir_all(m.join("d2"))?;
        fs::write(m.join("d2"), "file now")
    });
    b.ok("dir over a whiteout of a file", |m| {
        fs::remove_file(m.join("h"))?;
        fs::create_dir(m.join("h"))
    });
    for side in b.sides() {
        for d in ["d", "merged", "h"] {
            let v = sys::lgetxattr(&side.upper.join(d), "trusted.overlay.opaque")
                .or_else(|_| sys::lgetxattr(&side.upper.join(d), "user.overlay.opaque"));
            assert_eq!(
                v.ok().as_deref(),
                Some(&b"y"[..]),
                "{}: upper {d} not opaque",
                side.name
            );
        }
    }
    b.check_trees("mkdir over whiteout");
    b.check_uppers("mkdir over whiteout");
    b.check_trees_after_kernel_remount("mkdir over whiteout");
}

#[test]
fn unlinked_open_file_stays_usable() {
    let Some(b) = fixture() else { return };
    for side in b.sides() {
        let lower_ro = fs::File::open(side.p("f")).unwrap();
        let mut lower_rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(side.p("g"))
            .unwrap();
        let upper_rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(side.p("up"))
            .unwrap();
        for n in ["f", "g", "up"] {
            fs::remove_file(side.p(n)).unwrap();
            assert!(
                sys::lstat(&side.p(n)).is_err(),
                "{}: {n} still there",
                side.name
            );
        }
        let mut s = String::new();
        (&lower_ro).read_to_string(&mut s).unwrap();
        assert_eq!(s, "l0-f", "{}: read unlinked lower file", side.name);
        lower_rw.write_all(b"XY").unwrap();
        let mut buf = [0u8; 4];
        lower_rw.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(
            &buf, b"XY-g",
            "{}: write+read unlinked copied-up file",
            side.name
        );
        upper_rw.write_all_at(b"UP", 0).unwrap();
        let mut buf = [0u8; 10];
        upper_rw.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"UPper-only", "{}", side.name);
        for (n, f) in [("f", &lower_ro), ("g", &lower_rw), ("up", &upper_rw)] {
            // Kernel overlayfs stats the still-linked lower file of a read-only
            // fd (nlink 1); the issue asks for 0 everywhere.
            if n == "f" && side.imp == Impl::Kernel {
                continue;
            }
            let st = sys::fstat(f.as_raw_fd()).unwrap();
            assert_eq!(st.st_nlink, 0, "{}: fstat nlink of unlinked {n}", side.name);
        }
        // A new file under the same name is a different file.
        fs::write(side.p("g"), "new g").unwrap();
        let mut buf = [0u8; 4];
        lower_rw.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"XY-g", "{}: old fd sees the old file", side.name);
    }
    b.check_trees("after unlinking open files");
    b.check_uppers("after unlinking open files");
}

#[test]
fn rename_files() {
    let Some(b) = fixture() else { return };
    b.ok("rename lower file", |m| {
        fs::rename(m.join("f"), m.join("f2"))
    });
    b.ok("rename upper file into a lower dir", |m| {
        fs::rename(m.join("up"), m.join("merged/sub/up"))
    });
    b.ok("rename lower file over lower file", |m| {
        fs::rename(m.join("g"), m.join("h"))
    });
    b.ok("rename lower file across dirs", |m| {
        fs::rename(m.join("merged/b"), m.join("d/b"))
    });
    b.ok("rename to itself", |m| {
        fs::rename(m.join("merged/a"), m.join("merged/a"))
    });
    b.err("rename missing", libc::ENOENT, |m| {
        fs::rename(m.join("nope"), m.join("x"))
    });
    b.err("file over dir", libc::EISDIR, |m| {
        fs::rename(m.join("h"), m.join("emptydir"))
    });
    b.err("dir over file", libc::ENOTDIR, |m| {
        fs::rename(m.join("emptydir"), m.join("h"))
    });
    b.err("dir over non-empty merged dir", libc::ENOTEMPTY, |m| {
        fs::rename(m.join("emptydir"), m.join("merged"))
    });
    b.err("dir into itself", libc::EINVAL, |m| {
        fs::rename(m.join("d"), m.join("d/inner/d"))
    });
    b.err("into a missing dir", libc::ENOENT, |m| {
        fs::rename(m.join("h"), m.join("nope/h"))
    });
    b.check_trees("rename files");
    b.check_uppers("rename files");
}

#[test]
fn rename_noreplace_and_exchange() {
    let Some(mut b) = fixture() else { return };
    b.err("NOREPLACE onto a lower file", libc::EEXIST, |m| {
        sys::renameat2(&m.join("f"), &m.join("g"), RENAME_NOREPLACE)
    });
    b.err("NOREPLACE onto an upper file", libc::EEXIST, |m| {
        sys::renameat2(&m.join("f"), &m.join("up"), RENAME_NOREPLACE)
    });
    b.ok("NOREPLACE onto a free name", |m| {
        sys::renameat2(&m.join("f"), &m.join("f_new"), RENAME_NOREPLACE)
    });
    b.ok("NOREPLACE onto a whited-out name", |m| {
        sys::renameat2(&m.join("g"), &m.join("f"), RENAME_NOREPLACE)
    });
    b.ok("EXCHANGE two lower files", |m| {
        sys::renameat2(&m.join("h"), &m.join("merged/a"), RENAME_EXCHANGE)
    });
    assert_eq!(b.ok("read h", |m| fs::read(m.join("h"))), b"l0-a");
    assert_eq!(
        b.ok("read merged/a", |m| fs::read(m.join("merged/a"))),
        b"l1-h"
    );
    b.ok("EXCHANGE lower and upper file", |m| {
        sys::renameat2(&m.join("up"), &m.join("merged/b"), RENAME_EXCHANGE)
    });
    b.ok("EXCHANGE file and lower dir", |m| {
        sys::renameat2(&m.join("f"), &m.join("d2"), RENAME_EXCHANGE)
    });
    b.err("EXCHANGE with a missing name", libc::ENOENT, |m| {
        sys::renameat2(&m.join("h"), &m.join("missing"), RENAME_EXCHANGE)
    });
    b.err("EXCHANGE|NOREPLACE", libc::EINVAL, |m| {
        sys::renameat2(
            &m.join("h"),
            &m.join("up"),
            RENAME_EXCHANGE | RENAME_NOREPLACE,
        )
    });
    b.check_trees("renameat2");
    b.check_uppers("renameat2");
    b.check_trees_after_kernel_remount("renameat2");
}

#[test]
fn rename_lower_and_merged_directories() {
    let Some(mut b) = fixture() else { return };
    b.ok("rename a lower-only dir (no EXDEV)", |m| {
        fs::rename(m.join("onlylower"), m.join("renamed_lower"))
    });
    b.ok("rename a merged dir", |m| {
        fs::rename(m.join("merged"), m.join("m2"))
    });
    b.ok("rename a lower dir into another dir", |m| {
        fs::rename(m.join("d/inner"), m.join("m2/sub/inner"))
    });
    b.ok("rename its parent too", |m| {
        fs::rename(m.join("m2/sub"), m.join("sub_top"))
    });
    b.ok("write inside a moved dir", |m| {
        fs::write(m.join("sub_top/inner/x"), "changed")
    });
    b.ok("create where the old dir was", |m| {
        fs::create_dir(m.join("merged"))
    });
    b.ok("rename a lower dir over an empty lower dir", |m| {
        fs::rename(m.join("d2"), m.join("emptydir"))
    });
    let names = b.ok("list moved merged dir", |m| sys::names(&m.join("m2")));
    assert_eq!(names, ["a", "b", "u"]);
    let names = b.ok("list new merged", |m| sys::names(&m.join("merged")));
    assert!(
        names.is_empty(),
        "a new dir where a renamed one was is empty: {names:?}"
    );
    assert_eq!(
        b.ok("read deep", |m| fs::read(m.join("sub_top/c"))),
        b"l1-c"
    );
    b.ok("rename a dir back and forth", |m| {
        fs::rename(m.join("renamed_lower"), m.join("onlylower"))?;
        fs::rename(m.join("onlylower/deep"), m.join("deep2"))?;
        fs::rename(m.join("deep2"), m.join("onlylower/deep"))
    });
    b.ok("EXCHANGE two lower dirs", |m| {
        sys::renameat2(&m.join("d"), &m.join("onlylower"), RENAME_EXCHANGE)
    });
    b.check_trees("dir renames");
    b.check_trees_after_kernel_remount("dir renames");
}

#[test]
fn lower_hard_link_group_stays_one_group() {
    let setup = Setup::new(vec![
        Layer::new()
            .file_with("one", "shared-content", Meta::mode(0o640))
            .hardlink("two", "one")
            .hardlink("sub/three", "one"),
        Layer::new().file("other", "o"),
    ]);
    let Some(b) = Both::setup(setup) else { return };
    // Kernel overlayfs keeps hard-link groups only with index=on; use that as
    // the reference for this (deliberate) improvement.
    let mut idx = b.extra_side("kernel-index");
    idx.mount_kernel_with(",index=on");
    let sides: Vec<&Side> = if subject_is_kernel() {
        vec![&idx]
    } else {
        vec![&idx, &b.u]
    };
    for side in sides {
        let st1 = sys::lstat(&side.p("one")).unwrap();
        assert_eq!(st1.st_nlink, 3, "{}: nlink before copy-up", side.name);
        fs::OpenOptions::new()
            .write(true)
            .open(side.p("one"))
            .unwrap()
            .write_all(b"SHARED")
            .unwrap();
        assert_eq!(
            fs::read(side.p("two")).unwrap(),
            b"SHARED-content",
            "{}: write through one name, read through another",
            side.name
        );
        assert_eq!(
            fs::read(side.p("sub/three")).unwrap(),
            b"SHARED-content",
            "{}",
            side.name
        );
        let (a, b2, c) = (
            sys::lstat(&side.p("one")).unwrap(),
            sys::lstat(&side.p("two")).unwrap(),
            sys::lstat(&side.p("sub/three")).unwrap(),
        );
        assert_eq!(a.st_ino, b2.st_ino, "{}: st_ino of the group", side.name);
        assert_eq!(a.st_ino, c.st_ino, "{}: st_ino of the group", side.name);
        assert_eq!(a.st_ino, st1.st_ino, "{}: st_ino across copy-up", side.name);
        assert_eq!(
            (a.st_nlink, c.st_nlink),
            (3, 3),
            "{}: nlink after copy-up",
            side.name
        );
        sys::chmod(&side.p("two"), 0o600).unwrap();
        assert_eq!(
            sys::lstat(&side.p("sub/three")).unwrap().st_mode & 0o777,
            0o600,
            "{}",
            side.name
        );
        fs::remove_file(side.p("two")).unwrap();
        assert_eq!(
            sys::lstat(&side.p("one")).unwrap().st_nlink,
            2,
            "{}: nlink after unlink",
            side.name
        );
        fs::hard_link(side.p("one"), side.p("four")).unwrap();
        assert_eq!(
            sys::lstat(&side.p("sub/three")).unwrap().st_nlink,
            3,
            "{}",
            side.name
        );
        let t = support::snapshot(&side.mnt);
        assert_eq!(
            t.links.iter().cloned().collect::<Vec<_>>(),
            vec![vec![
                PathBuf::from("four"),
                PathBuf::from("one"),
                PathBuf::from("sub/three")
            ]],
            "{}: hard-link groups",
            side.name
        );
        assert!(t.problems.is_empty(), "{}: {:?}", side.name, t.problems);
    }
}

#[test]
fn link_a_lower_file() {
    let Some(b) = fixture() else { return };
    b.ok("link lower file", |m| {
        fs::hard_link(m.join("h"), m.join("merged/h_link"))
    });
    b.ok("link again", |m| {
        fs::hard_link(m.join("merged/h_link"), m.join("h3"))
    });
    let nl = b.ok("nlink", |m| sys::lstat(&m.join("h")).map(|s| s.st_nlink));
    assert_eq!(nl, 3);
    b.ok("write via one", |m| {
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("h3"))?
            .write_all(b"+")
    });
    assert_eq!(b.ok("read via other", |m| fs::read(m.join("h"))), b"l1-h+");
    b.err("link onto existing", libc::EEXIST, |m| {
        fs::hard_link(m.join("h"), m.join("f"))
    });
    b.err("link a dir", libc::EPERM, |m| {
        fs::hard_link(m.join("d"), m.join("d_link"))
    });
    b.ok("unlink one name", |m| fs::remove_file(m.join("h")));
    let nl = b.ok("nlink after unlink", |m| {
        sys::lstat(&m.join("h3")).map(|s| s.st_nlink)
    });
    assert_eq!(nl, 2);
    b.check_trees("link");
    b.check_uppers("link");
}

#[test]
fn symlinks_and_special_files() {
    let Some(b) = fixture() else { return };
    b.ok("symlink", |m| symlink("f", m.join("s1")));
    b.ok("symlink in a lower dir", |m| {
        symlink("../../h", m.join("merged/sub/s2"))
    });
    b.ok("long symlink target", |m| {
        symlink("x".repeat(4000), m.join("s3"))
    });
    assert_eq!(
        b.ok("read via symlink", |m| fs::read(m.join("merged/sub/s2"))),
        b"l1-h"
    );
    b.err("symlink over existing", libc::EEXIST, |m| {
        symlink("x", m.join("f"))
    });
    b.ok("fifo", |m| sys::mkfifo(&m.join("fifo"), 0o640));
    b.ok("socket", |m| {
        sys::mknod(&m.join("merged/sock"), libc::S_IFSOCK | 0o600, 0)
    });
    b.ok("char device", |m| {
        sys::mknod(&m.join("null"), libc::S_IFCHR | 0o666, sys::makedev(1, 3))
    });
    b.ok("block device", |m| {
        sys::mknod(&m.join("blk"), libc::S_IFBLK | 0o600, sys::makedev(7, 0))
    });
    b.ok("regular via mknod", |m| {
        sys::mknod(&m.join("reg"), libc::S_IFREG | 0o600, 0)
    });
    b.err("mknod over existing", libc::EEXIST, |m| {
        sys::mkfifo(&m.join("h"), 0o600)
    });
    b.ok("write to the null device through the mount", |m| {
        fs::write(m.join("null"), "gone")
    });
    b.ok("unlink a fifo, then a symlink", |m| {
        fs::remove_file(m.join("fifo"))?;
        fs::remove_file(m.join("s1"))
    });
    b.check_trees("special files");
    b.check_uppers("special files");
}

#[test]
fn names_longer_than_name_max() {
    let Some(b) = fixture() else { return };
    let ok_name = "n".repeat(255);
    let long = "n".repeat(256);
    b.ok("create 255", |m| fs::write(m.join(&ok_name), "x"));
    b.ok("mkdir 255 in a lower dir", |m| {
        fs::create_dir(m.join("merged").join("d".repeat(255)))
    });
    b.err("create 256", libc::ENAMETOOLONG, |m| {
        fs::write(m.join(&long), "x")
    });
    b.err("lookup 256", libc::ENAMETOOLONG, |m| {
        sys::lstat(&m.join(&long)).map(|_| ())
    });
    b.err("mkdir 256", libc::ENAMETOOLONG, |m| {
        fs::create_dir(m.join(&long))
    });
    b.err("symlink 256", libc::ENAMETOOLONG, |m| {
        symlink("t", m.join(&long))
    });
    b.err("rename to 256", libc::ENAMETOOLONG, |m| {
        fs::rename(m.join("f"), m.join(&long))
    });
    b.err("link to 256", libc::ENAMETOOLONG, |m| {
        fs::hard_link(m.join("f"), m.join(&long))
    });
    b.err("setxattr name over 255", libc::ERANGE, |m| {
        sys::lsetxattr(&m.join("f"), &format!("user.{}", "x".repeat(260)), b"v")
    });
    b.check_trees("long names");
}

/// A relative path of exactly `len` bytes, in components of at most 250.
fn deep_rel(len: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len {
        let left = len - s.len() - usize::from(!s.is_empty());
        let part = if left > 250 {
            // leave at least 2 bytes for a last component
            let n = if left - 250 < 2 { 240 } else { 250 };
            format!("{}", char::from(b'a' + (i % 26) as u8)).repeat(n)
        } else {
            "F".repeat(left)
        };
        if !s.is_empty() {
            s.push('/');
        }
        s.push_str(&part);
        i += 1;
    }
    assert_eq!(s.len(), len);
    s
}

#[test]
fn paths_near_path_max() {
    // The mount path plus the relative path is 4095 bytes (PATH_MAX - 1): the
    // upper's own path is longer than the mount's, so an implementation that
    // builds absolute upper paths fails here.
    let probe = Both::new(vec![Layer::new().file("x", "x"), Layer::new()]);
    let Some(probe) = probe else { return };
    let mnt_len = probe.u.mnt.as_os_str().len();
    assert_eq!(
        mnt_len,
        probe.k.mnt.as_os_str().len(),
        "sides must have equal path lengths"
    );
    drop(probe);
    // Scratch names have the same length every time.
    let rel = deep_rel(4095 - mnt_len - 1);
    let parent = Path::new(&rel)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let sibling = format!("{parent}/{}", "G".repeat(rel.len() - parent.len() - 1));
    let b = Both::new(vec![
        Layer::new().file(&rel, "deep-content"),
        Layer::new().file("top", "t"),
    ])
    .unwrap();
    assert_eq!(b.u.p(&rel).as_os_str().len(), 4095);
    assert_eq!(
        b.ok("read deepest", |m| fs::read(m.join(&rel))),
        b"deep-content"
    );
    b.ok("write deepest (copies every parent up)", |m| {
        fs::OpenOptions::new()
            .append(true)
            .open(m.join(&rel))?
            .write_all(b"+")
    });
    b.ok("create a sibling at PATH_MAX-1", |m| {
        fs::write(m.join(&sibling), "s")
    });
    b.ok("rename deepest to the sibling's name", |m| {
        fs::rename(m.join(&rel), m.join(&sibling))
    });
    b.ok("unlink it", |m| fs::remove_file(m.join(&sibling)));
    b.ok("mkdir at PATH_MAX-1", |m| fs::create_dir(m.join(&rel)));
    b.err("one byte more", libc::ENAMETOOLONG, |m| {
        fs::write(PathBuf::from(format!("{}/{}x", m.display(), rel)), "x")
    });
    b.check_trees("deep paths");
}

#[test]
fn exchange_a_lower_file_with_a_renamed_one() {
    // Found by the randomized differential test.
    let Some(b) = fixture() else { return };
    b.ok("rename a lower file to the root", |m| {
        fs::rename(m.join("merged/a"), m.join("x"))
    });
    b.ok("EXCHANGE another lower file with it", |m| {
        sys::renameat2(&m.join("d/y"), &m.join("x"), RENAME_EXCHANGE)
    });
    assert_eq!(b.ok("read d/y", |m| fs::read(m.join("d/y"))), b"l0-a");
    assert_eq!(b.ok("read x", |m| fs::read(m.join("x"))), b"y");
    b.ok("EXCHANGE back", |m| {
        sys::renameat2(&m.join("d/y"), &m.join("x"), RENAME_EXCHANGE)
    });
    assert_eq!(b.ok("read x again", |m| fs::read(m.join("x"))), b"l0-a");
    b.check_trees("exchange with a renamed file");
    b.check_uppers("exchange with a renamed file");
}

/// One lower group of three names, as `lower_hard_link_group_stays_one_group`.
fn group_setup() -> Setup {
    Setup::new(vec![
        Layer::new()
            .file_with("one", "shared-content", Meta::mode(0o640))
            .hardlink("two", "one")
            .hardlink("sub/three", "one"),
        Layer::new().file("other", "o"),
    ])
}

/// What a side's upper holds for the group, read as a commit of it reads:
/// kernel overlayfs with that upper as the top lower over the side's lowers.
/// Every name's data, and whether they are one file (its link count there
/// counts the group's index entry in the workdir too).
fn group_as_committed(side: &Side) -> (Vec<Vec<u8>>, bool) {
    let mut lowers = vec![side.upper.clone()];
    lowers.extend(side.lowers.iter().cloned());
    let mnt = side.base.join("as-lower");
    fs::create_dir_all(&mnt).unwrap();
    let _m = support::Mount::kernel(&mnt, &support::kernel_opts(&lowers, None))
        .expect("kernel overlayfs over the upper as a lower");
    let names = ["one", "two", "sub/three"];
    let data = names
        .iter()
        .map(|n| fs::read(mnt.join(n)).unwrap())
        .collect();
    let st: Vec<_> = names
        .iter()
        .map(|n| sys::lstat(&mnt.join(n)).unwrap())
        .collect();
    let one_file = st.iter().all(|s| s.st_ino == st[0].st_ino);
    (data, one_file)
}

#[test]
fn a_changed_lower_hard_link_group_is_whole_in_the_upper() {
    let Some(mut b) = Both::setup(group_setup()) else {
        return;
    };
    if subject_is_kernel() {
        // Kernel overlayfs links the other names only when each is opened
        // for writing: this is unionmount's own rule.
        return;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(b.u.p("one"))
        .unwrap();
    f.write_all(b"SHARED").unwrap();
    drop(f);
    b.u.unmount();
    let (data, one_file) = group_as_committed(&b.u);
    assert_eq!(
        data,
        vec![b"SHARED-content".to_vec(); 3],
        "every name holds the change"
    );
    assert!(one_file, "the names are still one file in the upper");
}

#[test]
fn a_group_the_kernel_left_partly_in_the_upper_is_completed_at_the_next_change() {
    let Some(b) = Both::setup(group_setup()) else {
        return;
    };
    if subject_is_kernel() {
        return;
    }
    let mut side = b.extra_side("kernel-index");
    side.mount_kernel_with(",index=on");
    support::write(&side.p("one"), b"K").unwrap();
    side.unmount();
    assert!(
        !side.upper.join("two").exists(),
        "kernel overlayfs left the other names out of the upper"
    );
    side.mount_as(Impl::Union);
    support::append(&side.p("sub/three"), b"!").unwrap();
    assert_eq!(fs::read(side.p("two")).unwrap(), b"K!");
    side.unmount();
    let (data, one_file) = group_as_committed(&side);
    assert_eq!(data, vec![b"K!".to_vec(); 3]);
    assert!(one_file, "the names are still one file in the upper");
}

#[test]
fn nlink_of_a_lower_hard_link_group_after_unlink_and_link() {
    // Reference: kernel overlayfs with index=on, which keeps groups too.
    let setup = Setup::new(vec![
        Layer::new()
            .file("one", "group")
            .hardlink("two", "one")
            .hardlink("d/three", "one"),
        Layer::new().file("other", "o"),
    ])
    .kernel_extra(",index=on");
    let Some(mut b) = Both::setup(setup) else {
        return;
    };
    b.ok("unlink one name, no copy-up", |m| {
        fs::remove_file(m.join("one"))
    });
    let nl = b.ok("nlink of the others", |m| {
        Ok((
            sys::lstat(&m.join("two"))?.st_nlink,
            sys::lstat(&m.join("d/three"))?.st_nlink,
        ))
    });
    assert_eq!(nl, (2, 2));
    b.ok("link another name", |m| {
        fs::hard_link(m.join("two"), m.join("d/four"))
    });
    let nl = b.ok("nlink after link", |m| {
        sys::lstat(&m.join("d/three")).map(|s| s.st_nlink)
    });
    assert_eq!(nl, 3);
    b.ok("write through one", |m| {
        support::append(&m.join("d/four"), b"+")
    });
    assert_eq!(
        b.ok("read through another", |m| fs::read(m.join("two"))),
        b"group+"
    );
    b.check_trees("lower hard-link group after unlink and link");
    b.check_trees_after_kernel_remount("lower hard-link group after unlink and link");
}

#[test]
fn failed_operations_copy_nothing_up() {
    // Found by the randomized differential test: an ENOTEMPTY rmdir changed
    // what the parent directory reports.
    let Some(b) = fixture() else { return };
    b.err("rmdir a non-empty lower-only dir", libc::ENOTEMPTY, |m| {
        fs::remove_dir(m.join("onlylower/deep"))
    });
    b.err("rmdir a non-empty lower dir", libc::ENOTEMPTY, |m| {
        fs::remove_dir(m.join("d/inner"))
    });
    b.err("unlink a missing name in a lower dir", libc::ENOENT, |m| {
        fs::remove_file(m.join("d2/missing"))
    });
    b.err("mkdir over an existing lower name", libc::EEXIST, |m| {
        fs::create_dir(m.join("d2/z"))
    });
    b.err("rename a missing name", libc::ENOENT, |m| {
        fs::rename(m.join("onlylower/nope"), m.join("d/nope"))
    });
    b.err("link onto an existing lower name", libc::EEXIST, |m| {
        fs::hard_link(m.join("h"), m.join("d/y"))
    });
    b.err(
        "rename a lower dir over a non-empty lower dir",
        libc::ENOTEMPTY,
        |m| fs::rename(m.join("d/inner"), m.join("onlylower/deep")),
    );
    for side in b.sides() {
        let copied: Vec<_> = fs::read_dir(&side.upper)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "up" && n != "merged")
            .collect();
        assert!(
            copied.is_empty(),
            "{}: failed operations copied up {copied:?}",
            side.name
        );
    }
    let nl = b.ok("nlink of a lower-only dir with a subdir", |m| {
        Ok((
            sys::lstat(&m.join("onlylower"))?.st_nlink,
            sys::lstat(&m.join("d"))?.st_nlink,
        ))
    });
    assert_eq!(nl, (3, 3));
    b.check_trees("after failed operations");
    b.check_uppers("after failed operations");
}

/// Lowers with a hard-link group; the kernel reference runs with index=on,
/// which keeps groups across copy-up as unionmount does.
fn linked_fixture() -> Option<Both> {
    Both::setup(
        Setup::new(vec![
            Layer::new()
                .file("a", support::pattern(10_000, 4))
                .hardlink("deep/x", "a")
                .file("f", "f")
                .dir("sub/inner"),
            Layer::new().file("other", "o"),
        ])
        .kernel_extra(",index=on"),
    )
}

#[test]
fn rename_over_a_name_of_a_lower_hard_link_group() {
    // Found by the randomized differential test.
    let Some(b) = linked_fixture() else { return };
    b.ok("rename a file over one name of the group", |m| {
        fs::rename(m.join("f"), m.join("deep/x"))
    });
    let nl = b.ok("nlink of the other name", |m| {
        sys::lstat(&m.join("a")).map(|s| s.st_nlink)
    });
    assert_eq!(nl, 1);
    b.check_trees("rename over a linked name");
}

#[test]
fn rename_from_a_copied_up_dir_over_a_name_of_a_lower_hard_link_group() {
    // Found by the randomized differential test (the first variant passes).
    let Some(b) = linked_fixture() else { return };
    b.ok("make a fifo in a lower dir (copies it up)", |m| {
        sys::mkfifo(&m.join("sub/fifo"), 0o644)
    });
    b.ok("rename its sibling over one name of the group", |m| {
        fs::write(m.join("sub/g"), "g")?;
        fs::rename(m.join("sub/g"), m.join("deep/x"))
    });
    let nl = b.ok("nlink of the other name", |m| {
        sys::lstat(&m.join("a")).map(|s| s.st_nlink)
    });
    assert_eq!(nl, 1);
    b.check_trees("rename over a linked name");
}

#[test]
fn exchange_a_copied_up_hard_linked_file_with_a_dir() {
    // Found by the randomized differential test.
    let Some(b) = linked_fixture() else { return };
    b.ok("copy the group up (open for write)", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("deep/x"))
            .map(|_| ())
    });
    b.ok("EXCHANGE a lower dir with the copied-up name", |m| {
        sys::renameat2(&m.join("sub"), &m.join("a"), RENAME_EXCHANGE)
    });
    assert!(b.ok("a is the dir now", |m| Ok(m.join("a/inner").is_dir())));
    assert_eq!(
        b.ok("sub is the file", |m| fs::read(m.join("sub"))),
        support::pattern(10_000, 4)
    );
    b.check_trees("exchange with a linked file");
}

#[test]
fn rm_r_of_a_dir_holding_one_name_of_a_lower_hard_link_group() {
    // Found by the randomized differential test.
    let setup = Setup::new(vec![
        Layer::new()
            .file("b", "group")
            .hardlink("b2", "b")
            .hardlink("m/sub/b", "b")
            .file("m/other", "o"),
        Layer::new().file("m/sub/lower_only", "l"),
    ])
    .kernel_extra(",index=on");
    let Some(b) = Both::setup(setup) else { return };
    b.ok("rm -r m", |m| fs::remove_dir_all(m.join("m")));
    let nl = b.ok("nlink of the names left", |m| {
        Ok((
            sys::lstat(&m.join("b"))?.st_nlink,
            sys::lstat(&m.join("b2"))?.st_nlink,
        ))
    });
    assert_eq!(nl, (2, 2));
    b.check_trees("rm -r of one name of a group");
}

/// What an open directory answers once its name is gone: its link count,
/// its listing (without the dots), whether fchmod works and the mode it
/// then shows, and what mkdir inside it gives.
#[derive(Debug, PartialEq)]
struct RemovedDir {
    nlink: u64,
    names: Vec<String>,
    fchmod: Result<u32, support::Errno>,
    mkdir_inside: Result<(), support::Errno>,
    fstatat_dot_nlink: u64,
}

fn removed_dir_answers(fd: &fs::File) -> io::Result<RemovedDir> {
    let raw = fd.as_raw_fd();
    let nlink = sys::fstat(raw)?.st_nlink;
    let names = listing_of_fd(raw)?;
    let fchmod = support::outcome(if unsafe { libc::fchmod(raw, 0o700) } == 0 {
        sys::fstat(raw).map(|st| st.st_mode & 0o7777)
    } else {
        Err(io::Error::last_os_error())
    });
    let mkdir_inside = support::outcome(
        if unsafe { libc::mkdirat(raw, c"new".as_ptr(), 0o755) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        },
    );
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(raw, c".".as_ptr(), &mut st, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(RemovedDir {
        nlink,
        names,
        fchmod,
        mkdir_inside,
        fstatat_dot_nlink: st.st_nlink,
    })
}

/// The names readdir gives for the directory open as `fd` (a new open of
/// it through "." as a removed working directory's `ls` does).
fn listing_of_fd(fd: libc::c_int) -> io::Result<Vec<String>> {
    let dir = unsafe { libc::openat(fd, c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = unsafe { libc::fdopendir(dir) };
    assert!(!stream.is_null());
    let mut names = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir(stream) };
        if e.is_null() {
            let err = io::Error::last_os_error();
            unsafe { libc::closedir(stream) };
            if err.raw_os_error() == Some(0) {
                break;
            }
            return Err(err);
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let name = name.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

#[test]
fn an_open_directory_outlives_its_name_as_the_kernels_does() {
    let Some(b) = fixture() else { return };
    let removed = b.ok("rmdir of an open new directory", |m| {
        fs::create_dir(m.join("gone"))?;
        fs::write(m.join("gone/f"), "x")?;
        let fd = fs::File::open(m.join("gone"))?;
        fs::remove_file(m.join("gone/f"))?;
        fs::remove_dir(m.join("gone"))?;
        removed_dir_answers(&fd)
    });
    assert_eq!(removed.nlink, 0, "{removed:?}");
    assert_eq!(removed.fchmod, Ok(0o700), "{removed:?}");
    let replaced = b.ok("a directory renamed over an open one", |m| {
        fs::create_dir_all(m.join("old"))?;
        fs::create_dir_all(m.join("newer"))?;
        let fd = fs::File::open(m.join("old"))?;
        fs::rename(m.join("newer"), m.join("old"))?;
        removed_dir_answers(&fd)
    });
    assert_eq!(replaced.nlink, 0, "{replaced:?}");
    b.check_trees("open directories removed");
}

/// The daemon keeps the upper's directories open by path; a rename or a
/// rmdir makes a path name another directory, and what is made there
/// afterwards must land in the new one, as on the kernel's side.
#[test]
fn names_made_after_a_directory_moves_land_in_the_new_one() {
    let Some(b) = fixture() else { return };
    b.ok("fill an upper directory", |m| {
        fs::create_dir_all(m.join("moving/sub"))?;
        fs::write(m.join("moving/sub/a"), "a")
    });
    b.ok("move it and make one in its place", |m| {
        fs::rename(m.join("moving"), m.join("moved"))?;
        fs::create_dir_all(m.join("moving/sub"))?;
        fs::write(m.join("moving/sub/b"), "b")?;
        fs::write(m.join("moved/sub/c"), "c")
    });
    b.ok("remove one and make it again", |m| {
        fs::remove_file(m.join("moving/sub/b"))?;
        fs::remove_dir(m.join("moving/sub"))?;
        fs::create_dir(m.join("moving/sub"))?;
        fs::write(m.join("moving/sub/d"), "d")
    });
    b.ok("exchange two", |m| {
        sys::renameat2(&m.join("moving"), &m.join("moved"), RENAME_EXCHANGE)?;
        fs::write(m.join("moving/sub/e"), "e")?;
        fs::write(m.join("moved/sub/f"), "f")
    });
    b.ok("listings", |m| {
        let mut names = Vec::new();
        for d in ["moving/sub", "moved/sub"] {
            let mut l: Vec<_> = fs::read_dir(m.join(d))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            l.sort();
            names.push(l);
        }
        Ok(names)
    });
    b.check_trees("after the moves");
    b.check_uppers("after the moves");
}
