//! File operations compared with kernel overlayfs: fallocate, SEEK_DATA /
//! SEEK_HOLE, fsync, flock and POSIX locks between processes, xattrs,
//! statfs of the upper, ENOTTY for unknown ioctls, and inode numbers (unique,
//! stable across copy-up and remount, st_dev uniform, d_ino == st_ino).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use support::sys::{self, cstr};
use support::{Both, Impl, Layer, Meta, Mount, Scratch, Setup, kernel_opts, union_opts};

fn fixture() -> Option<Both> {
    Both::setup(
        Setup::new(vec![
            Layer::new()
                .file("f", support::pattern(200_000, 3))
                .sparse(
                    "sparse",
                    16 << 20,
                    &[(0, b"a"), (8 << 20, b"b")],
                    Meta::mode(0o644),
                )
                .file("dir/g", "g")
                .xattr("f", "user.lower", "L")
                .symlink("link", "f"),
            Layer::new().file("dir/h", "h"),
        ])
        .upper(Layer::new().file("up", "upper")),
    )
}

fn open_rw(p: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().read(true).write(true).open(p)
}

#[test]
fn fallocate_modes() {
    let Some(b) = fixture() else { return };
    b.ok("fallocate extends a lower file", |m| {
        let f = open_rw(&m.join("f"))?;
        sys::fallocate(f.as_raw_fd(), 0, 0, 300_000)?;
        Ok(sys::fstat(f.as_raw_fd())?.st_size)
    });
    b.ok("KEEP_SIZE", |m| {
        let f = open_rw(&m.join("up"))?;
        sys::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20)?;
        let st = sys::fstat(f.as_raw_fd())?;
        Ok((st.st_size, st.st_blocks >= 2048))
    });
    b.ok("PUNCH_HOLE", |m| {
        let f = open_rw(&m.join("f"))?;
        sys::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            65536,
            65536,
        )?;
        let mut buf = vec![1u8; 65536];
        f.read_exact_at(&mut buf, 65536)?;
        Ok(buf.iter().all(|b| *b == 0))
    });
    b.ok("ZERO_RANGE", |m| {
        let f = open_rw(&m.join("dir/g"))?;
        sys::fallocate(f.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, 0, 10_000)?;
        Ok(sys::fstat(f.as_raw_fd())?.st_size)
    });
    b.err("fallocate on a read-only fd", libc::EBADF, |m| {
        let f = fs::File::open(m.join("dir/h"))?;
        sys::fallocate(f.as_raw_fd(), 0, 0, 10)
    });
    b.err("bad mode", libc::EOPNOTSUPP, |m| {
        let f = open_rw(&m.join("up"))?;
        sys::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE, 0, 10)
    });
    b.check_trees("fallocate");
}

#[test]
fn seek_data_and_seek_hole() {
    let Some(b) = fixture() else { return };
    let probe = |m: &Path, name: &str| -> std::io::Result<Vec<Result<i64, i32>>> {
        let f = fs::File::open(m.join(name))?;
        let fd = f.as_raw_fd();
        let size = sys::fstat(fd)?.st_size;
        let mut out = Vec::new();
        for (off, whence) in [
            (0, libc::SEEK_HOLE),
            (0, libc::SEEK_DATA),
            (1 << 20, libc::SEEK_DATA),
            (1 << 20, libc::SEEK_HOLE),
            ((8 << 20) + 1, libc::SEEK_HOLE),
            (size - 1, libc::SEEK_DATA),
            (size, libc::SEEK_DATA),
            (size + 10, libc::SEEK_HOLE),
        ] {
            out.push(sys::lseek(fd, off, whence).map_err(|e| sys::errno_of(&e)));
        }
        Ok(out)
    };
    let lower = b.ok("on a lower (not copied-up) file", |m| probe(m, "sparse"));
    assert_eq!(lower[2], Ok(8 << 20), "SEEK_DATA finds the data at 8 MiB");
    assert_eq!(lower[6], Err(libc::ENXIO), "SEEK_DATA at EOF");
    b.ok("make a new sparse file", |m| {
        let f = fs::File::create(m.join("new_sparse"))?;
        f.write_all_at(b"x", 0)?;
        f.write_all_at(b"y", 4 << 20)?;
        f.set_len(12 << 20)
    });
    let new = b.ok("on an upper file", |m| probe(m, "new_sparse"));
    assert_eq!(new[0], Ok(4096));
    b.ok("copy it up", |m| sys::chmod(&m.join("sparse"), 0o600));
    // Kernel overlayfs skips holes in 1 MiB chunks when copying up, so exact
    // offsets may differ; where the data and the holes are must not.
    for side in b.sides() {
        let after = probe(&side.mnt, "sparse").unwrap();
        let in_range = |r: Result<i64, i32>, lo: i64, hi: i64| r.is_ok_and(|v| v >= lo && v <= hi);
        assert!(
            in_range(after[0], 1, 1 << 20),
            "{}: first hole {:?}",
            side.name,
            after[0]
        );
        assert_eq!(after[1], Ok(0), "{}: data at 0", side.name);
        assert_eq!(after[2], Ok(8 << 20), "{}: SEEK_DATA from 1 MiB", side.name);
        assert_eq!(
            after[3],
            Ok(1 << 20),
            "{}: SEEK_HOLE inside a hole",
            side.name
        );
        assert!(
            in_range(after[4], (8 << 20) + 1, 9 << 20),
            "{}: hole after the data at 8 MiB: {:?}",
            side.name,
            after[4]
        );
        assert_eq!(
            after[6],
            Err(libc::ENXIO),
            "{}: SEEK_DATA at EOF",
            side.name
        );
    }
}

#[test]
fn fsync_fdatasync_syncfs() {
    let Some(b) = fixture() else { return };
    b.ok("fsync lower file opened rw", |m| {
        open_rw(&m.join("f"))?.sync_all()
    });
    b.ok("fdatasync new file", |m| {
        let mut f = fs::File::create(m.join("new"))?;
        f.write_all(b"data")?;
        f.sync_data()
    });
    b.ok("fsync read-only fd", |m| {
        fs::File::open(m.join("dir/h"))?.sync_all()
    });
    b.ok("fsync a directory", |m| {
        fs::File::open(m.join("dir"))?.sync_all()
    });
    b.ok("syncfs", |m| {
        let f = fs::File::open(m)?;
        if unsafe { libc::syncfs(f.as_raw_fd()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    b.check_trees("fsync");
}

#[test]
fn flock_conflicts_between_open_files() {
    let Some(b) = fixture() else { return };
    b.ok("flock", |m| {
        let a = fs::File::open(m.join("f"))?;
        let c = fs::File::open(m.join("f"))?;
        sys::flock(a.as_raw_fd(), libc::LOCK_EX)?;
        let busy =
            sys::flock(c.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).map_err(|e| sys::errno_of(&e));
        let shared_busy =
            sys::flock(c.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB).map_err(|e| sys::errno_of(&e));
        sys::flock(a.as_raw_fd(), libc::LOCK_UN)?;
        let free =
            sys::flock(c.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).map_err(|e| sys::errno_of(&e));
        assert_eq!(busy, Err(libc::EWOULDBLOCK));
        assert_eq!(shared_busy, Err(libc::EWOULDBLOCK));
        assert_eq!(free, Ok(()));
        Ok(())
    });
}

fn setlk(fd: i32, cmd: i32, typ: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start as _;
    fl.l_len = len as _;
    let r = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(fl)
    }
}

#[test]
fn posix_locks_conflict_between_processes() {
    let Some(b) = fixture() else { return };
    for side in b.sides() {
        for name in ["f", "up", "dir/h"] {
            let path = side.p(name);
            let c = cstr(&path);
            let f = open_rw(&path).unwrap();
            setlk(f.as_raw_fd(), libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
            let me = std::process::id() as i32;
            let code = sys::in_child(|| {
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
                if fd < 0 {
                    return 10;
                }
                // Overlapping write lock: refused.
                match setlk(fd, libc::F_SETLK, libc::F_WRLCK, 50, 10) {
                    Err(e) if e == libc::EAGAIN || e == libc::EACCES => {}
                    Err(_) => return 11,
                    Ok(_) => return 12,
                }
                // F_GETLK names the holder.
                match setlk(fd, libc::F_GETLK, libc::F_RDLCK, 0, 1) {
                    Ok(fl) if i32::from(fl.l_type) == libc::F_WRLCK && fl.l_pid == me => {}
                    Ok(_) => return 13,
                    Err(_) => return 14,
                }
                // A disjoint range is free.
                if setlk(fd, libc::F_SETLK, libc::F_WRLCK, 200, 10).is_err() {
                    return 15;
                }
                unsafe { libc::close(fd) };
                0
            });
            assert_eq!(
                code, 0,
                "{}: {name}: child lock check failed (code {code})",
                side.name
            );
            setlk(f.as_raw_fd(), libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
            let code = sys::in_child(|| {
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
                if fd < 0 {
                    return 10;
                }
                if setlk(fd, libc::F_SETLK, libc::F_WRLCK, 50, 10).is_err() {
                    return 16;
                }
                0
            });
            assert_eq!(
                code, 0,
                "{}: {name}: lock after unlock (code {code})",
                side.name
            );
            // OFD locks conflict within one process.
            let g = open_rw(&path).unwrap();
            setlk(f.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10).unwrap();
            let r = setlk(g.as_raw_fd(), libc::F_OFD_SETLK, libc::F_RDLCK, 5, 1).map(|_| ());
            assert!(
                r == Err(libc::EAGAIN) || r == Err(libc::EACCES),
                "{}: {name}: OFD lock conflict: {r:?}",
                side.name
            );
        }
    }
}

#[test]
fn xattr_get_set_list_remove() {
    let Some(b) = fixture() else { return };
    for target in ["f", "up", "dir", "dir/h"] {
        b.ok(&format!("{target}: set"), |m| {
            sys::lsetxattr(&m.join(target), "user.one", b"1")
        });
        b.ok(&format!("{target}: set trusted"), |m| {
            sys::lsetxattr(&m.join(target), "trusted.two", b"22")
        });
        b.ok(&format!("{target}: set empty value"), |m| {
            sys::lsetxattr(&m.join(target), "user.empty", b"")
        });
        b.ok(&format!("{target}: set a big value"), |m| {
            sys::lsetxattr(&m.join(target), "user.big", &support::pattern(3000, 9))
        });
        let mut l = b.ok(&format!("{target}: list"), |m| {
            sys::llistxattr(&m.join(target))
        });
        l.sort();
        assert!(l.contains(&"user.one".to_string()) && l.contains(&"trusted.two".to_string()));
        assert_eq!(
            b.ok(&format!("{target}: get"), |m| sys::lgetxattr(
                &m.join(target),
                "trusted.two"
            )),
            b"22"
        );
        b.ok(&format!("{target}: replace"), |m| {
            sys::lsetxattr(&m.join(target), "user.one", b"111")
        });
        b.ok(&format!("{target}: remove"), |m| {
            sys::lremovexattr(&m.join(target), "user.one")
        });
        b.err(&format!("{target}: get removed"), libc::ENODATA, |m| {
            sys::lgetxattr(&m.join(target), "user.one")
        });
        b.err(&format!("{target}: remove missing"), libc::ENODATA, |m| {
            sys::lremovexattr(&m.join(target), "user.none")
        });
    }
    b.ok("XATTR_CREATE on a new name", |m| {
        xattr_flags(&m.join("f"), "user.c", libc::XATTR_CREATE)
    });
    b.err(
        "XATTR_CREATE on an existing lower xattr",
        libc::EEXIST,
        |m| xattr_flags(&m.join("f"), "user.lower", libc::XATTR_CREATE),
    );
    b.err("XATTR_REPLACE on a missing name", libc::ENODATA, |m| {
        xattr_flags(&m.join("dir/g"), "user.nothere", libc::XATTR_REPLACE)
    });
    b.err("get into a too-small buffer", libc::ERANGE, |m| {
        let c = cstr(&m.join("f"));
        let n = std::ffi::CString::new("user.big").unwrap();
        let mut buf = [0u8; 10];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 10) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    });
    b.ok("size query", |m| {
        let c = cstr(&m.join("f"));
        let n = std::ffi::CString::new("user.big").unwrap();
        let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    });
    b.err("user xattr on a symlink", libc::EPERM, |m| {
        sys::lsetxattr(&m.join("link"), "user.x", b"1")
    });
    b.err("unknown namespace", libc::EOPNOTSUPP, |m| {
        sys::lsetxattr(&m.join("f"), "bogus.x", b"1")
    });
    b.check_trees("xattrs");
    b.check_uppers("xattrs");
}

fn xattr_flags(p: &Path, name: &str, flags: i32) -> std::io::Result<()> {
    let c = cstr(p);
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, flags) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn statfs_reports_the_upper() {
    let Some(b) = fixture() else { return };
    for side in b.sides() {
        let m = sys::statfs(&side.mnt).unwrap();
        let u = sys::statfs(&side.upper).unwrap();
        assert_eq!(
            m.f_blocks as u128 * m.f_frsize as u128,
            u.f_blocks as u128 * u.f_frsize as u128,
            "{}: total bytes",
            side.name
        );
        assert_eq!(m.f_files, u.f_files, "{}: total inodes", side.name);
        assert_eq!(m.f_namelen, 255, "{}: namelen", side.name);
        let free_m = m.f_bavail as i128 * m.f_frsize as i128;
        let free_u = u.f_bavail as i128 * u.f_frsize as i128;
        assert!(
            (free_m - free_u).abs() < 64 << 20,
            "{}: free bytes {free_m} vs {free_u}",
            side.name
        );
    }
}

#[test]
fn unknown_ioctl_is_enotty() {
    let Some(b) = fixture() else { return };
    // _IO('Z', 0x77): no filesystem implements it.
    let cmd: libc::c_ulong = (b'Z' as libc::c_ulong) << 8 | 0x77;
    for target in ["f", "up", "dir"] {
        b.err(&format!("ioctl on {target}"), libc::ENOTTY, |m| {
            let f = fs::File::open(m.join(target))?;
            let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, 0) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        });
    }
}

/// st_ino of every path in a mount.
fn inos(root: &Path) -> BTreeMap<PathBuf, u64> {
    let t = support::snapshot(root);
    t.entries
        .keys()
        .map(|k| (k.clone(), sys::lstat(&root.join(k)).unwrap().st_ino))
        .collect()
}

#[test]
fn inode_numbers_unique_and_stable() {
    let Some(mut b) = fixture() else { return };
    b.ok("make some changes", |m| {
        fs::write(m.join("newfile"), "n")?;
        fs::create_dir(m.join("newdir"))?;
        fs::hard_link(m.join("dir/h"), m.join("h_link"))?;
        Ok(())
    });
    for side in [&b.k, &b.u] {
        let before = inos(&side.mnt);
        // unique within the mount, except hard links
        let mut by: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
        for (p, i) in &before {
            by.entry(*i).or_default().push(p);
        }
        for (i, ps) in &by {
            if ps.len() > 1 {
                let mut ps: Vec<_> = ps.iter().map(|p| p.to_str().unwrap()).collect();
                ps.sort();
                assert_eq!(ps, ["dir/h", "h_link"], "{}: st_ino {i} shared", side.name);
            }
        }
        // stable across copy-up
        for p in ["f", "dir/g", "sparse", "dir"] {
            sys::chmod(&side.p(p), 0o700).unwrap();
            assert_eq!(
                sys::lstat(&side.p(p)).unwrap().st_ino,
                before[Path::new(p)],
                "{}: st_ino of {p} changed on copy-up",
                side.name
            );
        }
        let t = support::snapshot(&side.mnt);
        assert!(t.problems.is_empty(), "{}: {:?}", side.name, t.problems);
    }
    let before_k = inos(&b.k.mnt);
    let before_u = inos(&b.u.mnt);
    b.k.remount();
    b.u.remount();
    assert_eq!(
        inos(&b.k.mnt),
        before_k,
        "kernel: st_ino changed across remount"
    );
    assert_eq!(
        inos(&b.u.mnt),
        before_u,
        "{}: st_ino changed across remount",
        b.u.name
    );
    b.check_trees("inode numbers");
}

#[test]
fn inode_numbers_with_a_lower_on_another_filesystem() {
    // One lower on tmpfs, whose small inode numbers can collide with the
    // disk's: st_ino must stay unique and st_dev uniform.
    if !support::require_mounts() {
        return;
    }
    let disk = Scratch::new();
    let shm = tempfile::Builder::new()
        .prefix("unionmount-test-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let mut mounts: Vec<Mount> = Vec::new();
    for (i, subject) in [false, true].into_iter().enumerate() {
        let l0 = shm.path().join(format!("l0-{i}"));
        let l1 = disk.dir(&format!("l1-{i}"));
        let (u, w, mnt) = (
            disk.dir(&format!("u-{i}")),
            disk.dir(&format!("w-{i}")),
            disk.dir(&format!("m-{i}")),
        );
        let mut l0_layer = Layer::new();
        let mut l1_layer = Layer::new();
        for j in 0..50 {
            l0_layer = l0_layer.file(&format!("a{j}"), "x").dir(&format!("d{j}"));
            l1_layer = l1_layer
                .file(&format!("b{j}"), "y")
                .file(&format!("d{j}/e"), "z");
        }
        l0_layer.build(&l0, support::Dialect::Kernel);
        l1_layer.build(&l1, support::Dialect::Kernel);
        let lowers = vec![l0, l1];
        let m = if subject && !support::subject_is_kernel() {
            let args = vec!["-o".into(), union_opts(&lowers, Some((&u, &w))).into()];
            Mount::union_foreground(&mnt, &args).unwrap()
        } else {
            Mount::kernel(&mnt, &kernel_opts(&lowers, Some((&u, &w)))).unwrap()
        };
        mounts.push(m);
    }
    // Kernel overlayfs falls short here (xino cannot cover tmpfs's 64-bit
    // inode numbers: st_dev differs per layer, st_ino collides), so only the
    // entries are compared with it; the invariants are checked on the subject.
    fs::write(mounts[0].mnt.join("new"), "n").unwrap();
    fs::write(mounts[1].mnt.join("new"), "n").unwrap();
    let a = support::snapshot(&mounts[0].mnt);
    let c = support::snapshot(&mounts[1].mnt);
    let d = support::snapshot::diff_trees(
        "kernel",
        &support::Tree {
            problems: vec![],
            links: Default::default(),
            ..a
        },
        "subject",
        &support::Tree {
            problems: vec![],
            links: Default::default(),
            ..c.clone()
        },
    );
    assert!(d.is_empty(), "lower on tmpfs: entries differ:\n{d}");
    if support::subject_is_kernel() {
        eprintln!("subject is kernel overlayfs: not checking st_ino/st_dev invariants it lacks");
    } else {
        assert!(c.problems.is_empty(), "subject: {:?}", c.problems);
        assert!(c.links.is_empty(), "subject: st_ino shared: {:?}", c.links);
    }
    drop(mounts);
}

#[test]
fn open_flags_on_lower_and_upper_files() {
    let Some(b) = fixture() else { return };
    let open = |p: &Path, flags: i32| -> std::io::Result<i32> {
        let c = cstr(p);
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o640) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let st = sys::fstat(fd);
        unsafe { libc::close(fd) };
        st.map(|s| (s.st_mode & 0o7777) as i32)
    };
    b.err("O_CREAT|O_EXCL on a lower file", libc::EEXIST, |m| {
        open(&m.join("f"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)
    });
    b.err("O_CREAT|O_EXCL on an upper file", libc::EEXIST, |m| {
        open(&m.join("up"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)
    });
    b.ok("O_CREAT|O_EXCL on a new name", |m| {
        open(
            &m.join("dir/newx"),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        )
    });
    b.err("O_DIRECTORY on a file", libc::ENOTDIR, |m| {
        open(&m.join("f"), libc::O_DIRECTORY | libc::O_RDONLY)
    });
    b.err("write-open a directory", libc::EISDIR, |m| {
        open(&m.join("dir"), libc::O_WRONLY)
    });
    b.err("O_NOFOLLOW on a symlink", libc::ELOOP, |m| {
        open(&m.join("link"), libc::O_NOFOLLOW | libc::O_RDONLY)
    });
    b.err("O_CREAT in a missing dir", libc::ENOENT, |m| {
        open(&m.join("nodir/x"), libc::O_CREAT | libc::O_WRONLY)
    });
    b.ok("O_APPEND on a lower file", |m| {
        let mut f = fs::OpenOptions::new().append(true).open(m.join("dir/h"))?;
        f.write_all(b"+1")?;
        let mut f = fs::OpenOptions::new().append(true).open(m.join("dir/h"))?;
        f.write_all(b"+2")?;
        fs::read(m.join("dir/h"))
    });
    b.ok("O_TRUNC through a symlink to a lower file", |m| {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("link"))?;
        Ok(sys::lstat(&m.join("f"))?.st_size)
    });
    b.check_trees("open flags");
}

#[test]
fn o_tmpfile_is_refused_cleanly() {
    // Kernel overlayfs supports O_TMPFILE and the FUSE protocol has had an
    // opcode for it since 7.37 (FUSE_TMPFILE, Linux 6.1), but fuser 0.18, the
    // crate the daemon is built on, does not know opcode 51: its dispatcher
    // answers ENOSYS without asking the filesystem, and the kernel then
    // answers EOPNOTSUPP itself for the rest of the mount's life — the error
    // programs take as "make a named temporary file instead". This test pins
    // that behaviour (a clean error, nothing left in the tree); when fuser
    // gains FUSE_TMPFILE it must compare with the kernel instead.
    let Some(b) = fixture() else { return };
    for side in b.sides() {
        let c = cstr(&side.p("dir"));
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        let err = std::io::Error::last_os_error();
        if side.imp == Impl::Kernel {
            assert!(fd >= 0, "{}: O_TMPFILE: {err}", side.name);
            unsafe { libc::close(fd) };
        } else {
            assert_eq!(fd, -1, "{}: O_TMPFILE unexpectedly opened", side.name);
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP),
                "{}: O_TMPFILE: {err}",
                side.name
            );
        }
    }
    b.check_trees("O_TMPFILE leaves nothing behind");
}

#[test]
fn mmap_shared_write_is_seen_by_read() {
    let Some(b) = fixture() else { return };
    b.ok("mmap a lower file MAP_SHARED and write through it", |m| {
        let f = open_rw(&m.join("dir/g"))?;
        let len = 4096usize;
        f.set_len(len as u64)?;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        unsafe {
            std::ptr::copy_nonoverlapping(b"MMAPPED".as_ptr(), p.cast::<u8>().add(100), 7);
            libc::msync(p, len, libc::MS_SYNC);
            libc::munmap(p, len);
        }
        let data = fs::read(m.join("dir/g"))?;
        Ok(data[100..107].to_vec())
    });
    b.ok("read a lower file through mmap", |m| {
        let f = fs::File::open(m.join("f"))?;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), 8192).to_vec() };
        unsafe { libc::munmap(p, 8192) };
        Ok(v)
    });
    b.check_trees("mmap");
}

/// ioctl(fd, cmd, buf): the buffer as the kernel left it, or the errno.
fn ioctl_buf(fd: i32, cmd: libc::c_ulong, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let r = unsafe { libc::ioctl(fd, cmd as _, buf.as_mut_ptr()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(buf)
    }
}

/// `_IOWR('f', 11, struct fiemap)` and `_IOWR(0x94, 54, struct file_dedupe_range)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIDEDUPERANGE: libc::c_ulong = 0xC018_9436;

/// FIDEDUPERANGE of `f`'s first 64 KiB onto `g`'s: the call's errno, or the
/// status the kernel left for the one destination.
fn dedupe(f: &fs::File, g: &fs::File) -> std::io::Result<i32> {
    let mut arg = vec![0u8; 24 + 32];
    arg[8..16].copy_from_slice(&65536u64.to_ne_bytes());
    arg[16..18].copy_from_slice(&1u16.to_ne_bytes());
    arg[24..32].copy_from_slice(&i64::from(g.as_raw_fd()).to_ne_bytes());
    let out = ioctl_buf(f.as_raw_fd(), FIDEDUPERANGE, arg)?;
    Ok(i32::from_ne_bytes(out[48..52].try_into().unwrap()))
}

#[test]
fn what_the_fuse_module_itself_refuses() {
    // The kernel's FUSE module answers these without asking the daemon
    // (README, known limits): collapse and insert range (fuse_file_fallocate
    // takes KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE only), FIEMAP (no ->fiemap)
    // and FIDEDUPERANGE (no ->remap_file_range). This pins that, and that
    // kernel overlayfs does the first three on the same filesystem; when the
    // FUSE module gains them, compare with the kernel instead.
    let Some(b) = fixture() else { return };
    let modes = [
        ("collapse range", libc::FALLOC_FL_COLLAPSE_RANGE),
        ("insert range", libc::FALLOC_FL_INSERT_RANGE),
    ];
    for side in b.sides() {
        let kernel = side.imp == Impl::Kernel;
        let f = open_rw(&side.p("f")).unwrap();
        for (what, mode) in modes {
            let r = sys::fallocate(f.as_raw_fd(), mode, 65536, 65536);
            match (kernel, r) {
                (true, Ok(())) => {}
                (false, Err(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                (_, r) => panic!("{}: {what}: {r:?}", side.name),
            }
        }
        let fiemap = ioctl_buf(f.as_raw_fd(), FS_IOC_FIEMAP, {
            let mut arg = vec![0u8; 32];
            arg[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
            arg
        });
        match (kernel, fiemap) {
            (true, Ok(_)) => {}
            (false, Err(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            (_, r) => panic!("{}: FIEMAP: {r:?}", side.name),
        }
        fs::copy(side.p("f"), side.p("f2")).unwrap();
        let g = open_rw(&side.p("f2")).unwrap();
        let deduped = dedupe(&f, &g);
        if !kernel {
            let refused = match &deduped {
                Err(e) => e.raw_os_error() == Some(libc::EOPNOTSUPP),
                Ok(status) => *status == -libc::EOPNOTSUPP,
            };
            assert!(refused, "{}: FIDEDUPERANGE: {deduped:?}", side.name);
        }
    }
}
