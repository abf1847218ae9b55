//! Copy-up: every trigger (open for write, truncate, chmod, chown, utimens,
//! setxattr, link) copies data, holes, mode, owner, timestamps and xattrs
//! (security.capability included), and the parents with their own metadata;
//! reading never copies up; the lowers are never written (checked by `Both`
//! on every test).

mod support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use support::sys;
use support::{Both, LAYER_MTIME, Layer, Meta};

/// security.capability granting cap_net_raw (v2 format, effective bit set).
fn cap_net_raw() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// A file three directories deep, every level with its own metadata.
fn deep_lower() -> Layer {
    Layer::new()
        .dir_with("a", Meta::mode(0o750).owner(11, 12).mtime(1_400_000_001))
        .dir_with("a/b", Meta::mode(0o711).owner(21, 22).mtime(1_400_000_002))
        .dir_with(
            "a/b/c",
            Meta::mode(0o1777).owner(31, 32).mtime(1_400_000_003),
        )
        .xattr("a", "user.dir_a", "A")
        .xattr("a/b", "trusted.dir_b", "B")
        .file_with(
            "a/b/c/file",
            support::pattern(100_000, 1),
            Meta::mode(0o4751).owner(1001, 1002).mtime(1_400_000_004),
        )
        .xattr("a/b/c/file", "user.k", "v")
        .xattr("a/b/c/file", "trusted.t", "w")
        .xattr("a/b/c/file", "security.capability", cap_net_raw())
        .file("a/b/c/sibling", "s")
        .file("a/b/other", "o")
}

fn fixture() -> Option<Both> {
    Both::new(vec![deep_lower(), Layer::new().file("a/b/c/from_l1", "l1")])
}

const FILE: &str = "a/b/c/file";

/// The raw upper, on each side, holds the parents with the lower's metadata.
fn assert_parents_copied_with_metadata(b: &Both, c_changed: bool) {
    for side in b.sides() {
        for (d, mode, uid, gid, mtime) in [
            ("a", 0o750, 11, 12, 1_400_000_001),
            ("a/b", 0o711, 21, 22, 1_400_000_002),
            ("a/b/c", 0o1777, 31, 32, 1_400_000_003),
        ] {
            let st = sys::lstat(&side.upper.join(d))
                .unwrap_or_else(|e| panic!("{}: upper has no {d}: {e}", side.name));
            // a new name in a/b/c (link) legitimately updates its mtime
            let mtime = if c_changed && d == "a/b/c" {
                st.st_mtime
            } else {
                mtime
            };
            assert_eq!(
                (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime),
                (mode, uid, gid, mtime),
                "{}: upper copy of parent {d}: mode, owner, mtime",
                side.name
            );
        }
        let x = sys::lgetxattr(&side.upper.join("a"), "user.dir_a");
        assert_eq!(
            x.ok().as_deref(),
            Some(&b"A"[..]),
            "{}: parent xattr",
            side.name
        );
        let x = sys::lgetxattr(&side.upper.join("a/b"), "trusted.dir_b");
        assert_eq!(
            x.ok().as_deref(),
            Some(&b"B"[..]),
            "{}: parent xattr",
            side.name
        );
        assert!(
            !side.upper.join("a/b/other").exists() && !side.upper.join("a/b/c/sibling").exists(),
            "{}: siblings must not be copied up",
            side.name
        );
    }
}

/// Common checks after a trigger: the file is in both uppers, trees and
/// uppers agree, st_ino did not change.
fn after_trigger(b: &Both, what: &str, ino_before: u64) {
    after_trigger_with(b, what, ino_before, false)
}

fn after_trigger_with(b: &Both, what: &str, ino_before: u64, c_changed: bool) {
    for side in b.sides() {
        assert!(
            sys::lstat(&side.upper.join(FILE)).is_ok(),
            "{what}: {} did not copy {FILE} up",
            side.name
        );
        let ino = sys::lstat(&side.p(FILE)).unwrap().st_ino;
        if side.name != "kernel" {
            assert_eq!(ino, ino_before, "{what}: st_ino changed across copy-up");
        }
    }
    assert_parents_copied_with_metadata(b, c_changed);
    b.check_trees(what);
    b.check_uppers(what);
}

fn ino_of(b: &Both) -> u64 {
    let k = sys::lstat(&b.k.p(FILE)).unwrap().st_ino;
    let u = sys::lstat(&b.u.p(FILE)).unwrap().st_ino;
    // Kernel overlayfs on one filesystem keeps st_ino across copy-up too.
    let _ = k;
    u
}

#[test]
fn open_for_write_copies_up_data_and_metadata() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("open O_WRONLY and write in the middle", |m| {
        let f = fs::OpenOptions::new().write(true).open(m.join(FILE))?;
        f.write_all_at(b"MIDDLE", 50_000)
    });
    let mut want = support::pattern(100_000, 1);
    want[50_000..50_006].copy_from_slice(b"MIDDLE");
    assert_eq!(b.ok("read back", |m| fs::read(m.join(FILE))), want);
    let (mode, uid, gid) = b.ok("stat", |m| {
        sys::lstat(&m.join(FILE)).map(|s| (s.st_mode & 0o7777, s.st_uid, s.st_gid))
    });
    assert_eq!((uid, gid), (1001, 1002));
    // Writing as root keeps the mode; the kernel drops suid only for non-root.
    let _ = mode;
    assert_eq!(
        b.ok("user xattr kept", |m| sys::lgetxattr(
            &m.join(FILE),
            "user.k"
        )),
        b"v"
    );
    after_trigger(&b, "open for write", ino);
}

#[test]
fn open_rdwr_without_writing_copies_up_unchanged() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("open O_RDWR", |m| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join(FILE))
            .map(|_| ())
    });
    let mtime = b.ok("mtime kept", |m| {
        sys::lstat(&m.join(FILE)).map(|s| s.st_mtime)
    });
    assert_eq!(mtime, 1_400_000_004);
    assert_eq!(
        b.ok("capability kept", |m| sys::lgetxattr(
            &m.join(FILE),
            "security.capability"
        )),
        cap_net_raw()
    );
    after_trigger(&b, "open O_RDWR", ino);
}

#[test]
fn truncate_copies_up() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("truncate to 10", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join(FILE))?
            .set_len(10)
    });
    assert_eq!(
        b.ok("read", |m| fs::read(m.join(FILE))),
        support::pattern(10, 1)
    );
    after_trigger(&b, "truncate", ino);
    // truncate(2) by path, growing, on another lower file
    b.ok("truncate(2) by path", |m| {
        let c = sys::cstr(&m.join("a/b/c/sibling"));
        if unsafe { libc::truncate(c.as_ptr(), 5000) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    b.check_trees("truncate(2)");
    b.check_uppers("truncate(2)");
}

#[test]
fn o_trunc_copies_up_metadata_not_data() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("open O_TRUNC", |m| {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join(FILE))
            .map(|_| ())
    });
    assert_eq!(
        b.ok("size", |m| sys::lstat(&m.join(FILE)).map(|s| s.st_size)),
        0
    );
    after_trigger(&b, "O_TRUNC", ino);
}

#[test]
fn chmod_copies_up() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("chmod", |m| sys::chmod(&m.join(FILE), 0o600));
    let st = b.ok("stat", |m| {
        sys::lstat(&m.join(FILE)).map(|s| (s.st_mode & 0o7777, s.st_mtime))
    });
    assert_eq!(st, (0o600, 1_400_000_004), "mode changed, mtime kept");
    assert_eq!(
        b.ok("data", |m| fs::read(m.join(FILE))),
        support::pattern(100_000, 1)
    );
    after_trigger(&b, "chmod", ino);
}

#[test]
fn chown_copies_up() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("chown", |m| sys::lchown(&m.join(FILE), 4242, 4343));
    let st = b.ok("stat", |m| {
        sys::lstat(&m.join(FILE)).map(|s| (s.st_uid, s.st_gid))
    });
    assert_eq!(st, (4242, 4343));
    after_trigger(&b, "chown", ino);
}

#[test]
fn utimens_copies_up() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("utimens", |m| {
        sys::lutimes(&m.join(FILE), (1_234_567, 89), (1_300_000_000, 5))
    });
    let st = b.ok("stat", |m| {
        sys::lstat(&m.join(FILE))
            .map(|s| (s.st_mtime, s.st_mtime_nsec, s.st_atime, s.st_atime_nsec))
    });
    assert_eq!(st, (1_300_000_000, 5, 1_234_567, 89));
    assert_eq!(
        b.ok("capability kept", |m| sys::lgetxattr(
            &m.join(FILE),
            "security.capability"
        )),
        cap_net_raw()
    );
    after_trigger(&b, "utimens", ino);
}

#[test]
fn setxattr_and_removexattr_copy_up() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("setxattr", |m| {
        sys::lsetxattr(&m.join(FILE), "user.new", b"n")
    });
    let mut names = b.ok("list", |m| sys::llistxattr(&m.join(FILE)));
    names.sort();
    assert_eq!(
        names,
        ["security.capability", "trusted.t", "user.k", "user.new"]
    );
    assert_eq!(
        b.ok("capability kept", |m| sys::lgetxattr(
            &m.join(FILE),
            "security.capability"
        )),
        cap_net_raw()
    );
    after_trigger(&b, "setxattr", ino);
    b.ok("removexattr on another lower file", |m| {
        sys::lsetxattr(&m.join("a/b/other"), "user.tmp", b"1")?;
        sys::lremovexattr(&m.join("a/b/other"), "user.tmp")
    });
    b.ok("removexattr of a lower xattr", |m| {
        sys::lremovexattr(&m.join(FILE), "user.k")
    });
    b.err("removed", libc::ENODATA, |m| {
        sys::lgetxattr(&m.join(FILE), "user.k")
    });
    b.check_trees("removexattr");
    b.check_uppers("removexattr");
}

#[test]
fn link_copies_up_once() {
    let Some(b) = fixture() else { return };
    let ino = ino_of(&b);
    b.ok("link", |m| {
        fs::hard_link(m.join(FILE), m.join("a/b/c/file_link"))
    });
    b.ok("second link", |m| {
        fs::hard_link(m.join(FILE), m.join("link_at_root"))
    });
    let nl = b.ok("nlink", |m| sys::lstat(&m.join(FILE)).map(|s| s.st_nlink));
    assert_eq!(nl, 3);
    b.ok("write through the new name", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("link_at_root"))?
            .write_all(b"NEW")
    });
    let head = b.ok("read through the old name", |m| {
        let mut buf = [0u8; 3];
        fs::File::open(m.join(FILE))?.read_exact(&mut buf)?;
        Ok(buf)
    });
    assert_eq!(&head, b"NEW");
    after_trigger_with(&b, "link", ino, true);
}

#[test]
fn reading_never_copies_up() {
    let Some(b) = fixture() else { return };
    b.ok("read, stat, list, getxattr, readlink, access", |m| {
        fs::read(m.join(FILE))?;
        let mut f = fs::File::open(m.join(FILE))?;
        f.seek(SeekFrom::Start(10))?;
        let mut buf = [0u8; 10];
        f.read_exact(&mut buf)?;
        sys::lstat(&m.join("a/b/c/sibling"))?;
        sys::names(&m.join("a/b/c"))?;
        sys::llistxattr(&m.join(FILE))?;
        sys::lgetxattr(&m.join(FILE), "user.k")?;
        let c = sys::cstr(&m.join(FILE));
        unsafe { libc::access(c.as_ptr(), libc::W_OK) };
        // O_RDONLY with O_NOATIME-free flags must not copy up either
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(m.join(FILE))?;
        Ok(())
    });
    for side in b.sides() {
        let entries: Vec<_> = fs::read_dir(&side.upper).unwrap().collect();
        assert!(
            entries.is_empty(),
            "{}: reading copied something up: {entries:?}",
            side.name
        );
    }
}

#[test]
fn holes_stay_holes() {
    const SIZE: u64 = 64 << 20;
    let lower = Layer::new().sparse(
        "sparse",
        SIZE,
        &[(0, b"head"), (32 << 20, b"middle"), (SIZE - 4, b"tail")],
        Meta::mode(0o644),
    );
    let Some(b) = Both::new(vec![lower, Layer::new().file("other", "x")]) else {
        return;
    };
    b.ok("chmod copies the data up (metacopy=off)", |m| {
        sys::chmod(&m.join("sparse"), 0o600)
    });
    // A hole-aware write: one byte in the middle of a hole.
    b.ok("write in a hole", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("sparse"))?
            .write_all_at(b"X", 48 << 20)
    });
    for side in b.sides() {
        for path in [side.p("sparse"), side.upper.join("sparse")] {
            let st = sys::lstat(&path).unwrap();
            assert_eq!(
                st.st_size as u64,
                SIZE,
                "{}: size of {}",
                side.name,
                path.display()
            );
            assert!(
                (st.st_blocks as u64) * 512 < 4 << 20,
                "{}: {} has {} blocks: holes were filled",
                side.name,
                path.display(),
                st.st_blocks
            );
        }
        let f = fs::File::open(side.p("sparse")).unwrap();
        let fd = f.as_raw_fd();
        let hole = sys::lseek(fd, 0, libc::SEEK_HOLE).unwrap();
        // kernel overlayfs skips holes in 1 MiB chunks
        assert!(hole <= 1 << 20, "{}: first hole at {hole}", side.name);
        let data = sys::lseek(fd, 1 << 20, libc::SEEK_DATA).unwrap();
        assert!(
            data <= 32 << 20 && data > 1 << 20,
            "{}: SEEK_DATA from 1 MiB gave {data}",
            side.name
        );
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, 32 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        f.read_exact_at(&mut buf[..4], SIZE - 4).unwrap();
        assert_eq!(&buf[..4], b"tail");
        f.read_exact_at(&mut buf[..1], 48 << 20).unwrap();
        assert_eq!(buf[0], b'X');
        f.read_exact_at(&mut buf, 16 << 20).unwrap();
        assert_eq!(buf, [0u8; 6]);
    }
    b.check_trees("sparse copy-up");
}

#[test]
fn special_files_and_symlinks_copy_up() {
    let Some(b) = Both::new(vec![
        Layer::new()
            .fifo("d/fifo")
            .symlink("d/link", "target")
            .chardev("d/null", 1, 3)
            .socket("d/sock")
            .dir_with("d", Meta::mode(0o755).mtime(1_400_000_100)),
        Layer::new().file("d/target", "t"),
    ]) else {
        return;
    };
    b.ok("chmod fifo", |m| sys::chmod(&m.join("d/fifo"), 0o600));
    b.ok("lchown symlink", |m| sys::lchown(&m.join("d/link"), 77, 78));
    b.ok("chown device", |m| sys::lchown(&m.join("d/null"), 5, 6));
    b.ok("utimens socket", |m| {
        sys::lutimes(&m.join("d/sock"), (1, 0), (2, 0))
    });
    b.ok("setxattr on a symlink (trusted)", |m| {
        sys::lsetxattr(&m.join("d/link"), "trusted.sym", b"s")
    });
    let t = b.ok("readlink", |m| fs::read_link(m.join("d/link")));
    assert_eq!(t, Path::new("target"));
    b.check_trees("special files");
    b.check_uppers("special files");
}

#[test]
fn copy_up_of_a_directory_keeps_its_metadata() {
    let Some(b) = fixture() else { return };
    b.ok("create in a lower dir", |m| {
        fs::write(m.join("a/b/new"), "n")
    });
    let st = b.ok("parent stat", |m| {
        sys::lstat(&m.join("a")).map(|s| (s.st_mode & 0o7777, s.st_uid, s.st_gid, s.st_mtime))
    });
    assert_eq!(st, (0o750, 11, 12, 1_400_000_001), "grandparent untouched");
    b.ok("chmod a lower dir", |m| sys::chmod(&m.join("a/b/c"), 0o700));
    b.check_trees("directory copy-up");
    b.check_uppers("directory copy-up");
    let _ = LAYER_MTIME;
}

#[test]
fn copy_up_keeps_content_readable_through_an_fd_opened_before() {
    // An fd opened read-only before the copy-up sees either old or new data,
    // never garbage; after reopening, the new data.
    let Some(b) = fixture() else { return };
    for side in b.sides() {
        let ro = fs::File::open(side.p(FILE)).unwrap();
        {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(side.p(FILE))
                .unwrap();
            f.write_all_at(b"ZZZZ", 0).unwrap();
        }
        let mut buf = [0u8; 4];
        ro.read_exact_at(&mut buf, 0).unwrap();
        let old = &support::pattern(4, 1)[..];
        assert!(buf == *old || &buf == b"ZZZZ", "{}: {buf:?}", side.name);
        let mut buf2 = [0u8; 4];
        fs::File::open(side.p(FILE))
            .unwrap()
            .read_exact_at(&mut buf2, 0)
            .unwrap();
        assert_eq!(&buf2, b"ZZZZ", "{}", side.name);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(side.p("a/b/c/from_l1"))
            .unwrap();
        f.write_all(b"+").unwrap();
    }
    b.check_trees("fd opened before copy-up");
}

/// On an upper that can share extents (XFS, lower on the same filesystem),
/// a data copy-up is a clone: the copied-up file's extents are the lower's,
/// shared, and the lower is unchanged. `filefrag -v` (e2fsprogs) shows the
/// sharing (FIEMAP_EXTENT_SHARED). FICLONE does it, or copy_file_range,
/// which XFS answers with a clone too; a copy by read and write would not.
#[test]
fn data_copy_up_clones_the_extents_where_the_upper_can_share_them() {
    if !support::require_mounts() {
        return;
    }
    let s = support::Scratch::new();
    let [fsdir, mnt] = s.dirs(["xfs", "mnt"]);
    let xfs = match support::Mount::loop_fs(
        &s.path().join("xfs.img"),
        &["mkfs.xfs", "-q", "-m", "reflink=1"],
        512 << 20,
        &fsdir,
    ) {
        Ok(m) => m,
        Err(e) => {
            let _ = support::can_run("an XFS upper", &[format!("{e} (./test installs xfsprogs)")]);
            return;
        }
    };
    let [lower, upper, work] = ["lower", "upper", "work"].map(|d| fsdir.join(d));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    let data = support::pattern(8 << 20, 7);
    fs::write(lower.join("f"), &data).unwrap();
    let opts = support::union_opts(std::slice::from_ref(&lower), Some((&upper, &work)));
    let mut um = support::Mount::union_foreground(&mnt, &["-o".into(), opts.into()]).unwrap();

    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f"))
        .unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    um.unmount().unwrap();

    let copied = fs::read(upper.join("f")).unwrap();
    assert_eq!(copied.len(), data.len() + 1);
    assert!(copied[..data.len()] == data[..] && copied[data.len()] == b'!');
    assert!(
        fs::read(lower.join("f")).unwrap() == data,
        "the lower changed"
    );
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(upper.join("f"))
        .output()
        .expect("filefrag (e2fsprogs)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("shared"),
        "no shared extent in the copy-up:\n{report}"
    );
    drop(xfs);
}
