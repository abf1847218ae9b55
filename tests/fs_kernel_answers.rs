//! Answers kernel overlayfs gives that unionmount must give too: mknod of a
//! whiteout (EPERM), ctime of no-op setattrs, atime under the atime mount
//! options, and inode flags (chattr/lsattr, FS_IOC_*FLAGS, FS_IOC_FS*XATTR).

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::sys::{self, cstr};
use support::{Both, Layer, Setup};

fn fixture() -> Option<Both> {
    Both::setup(
        Setup::new(vec![
            Layer::new()
                .file("lower", "lower data")
                .file("dir/inner", "inner")
                .symlink("link", "lower"),
        ])
        .upper(
            Layer::new()
                .file("up", "upper data")
                .file_with("suid", "s", support::Meta::mode(0o4755))
                .dir("updir"),
        ),
    )
}

// --- mknod of a whiteout ------------------------------------------------------

#[test]
fn mknod_of_a_whiteout_is_refused() {
    let Some(b) = fixture() else { return };
    let wh = sys::makedev(0, 0);
    for (name, mode) in [
        ("wh", libc::S_IFCHR | 0o644),
        ("wh0", libc::S_IFCHR),
        ("whsuid", libc::S_IFCHR | 0o4755),
        ("dir/wh", libc::S_IFCHR | 0o600),
        ("updir/wh", libc::S_IFCHR | 0o600),
    ] {
        b.err(&format!("mknod {name} c 0 0"), libc::EPERM, |m| {
            sys::mknod(&m.join(name), mode, wh)
        });
    }
    b.err("mknod over an existing name", libc::EEXIST, |m| {
        sys::mknod(&m.join("lower"), libc::S_IFCHR | 0o644, wh)
    });
    // Other devices are ordinary objects.
    b.ok("mknod c 0 1", |m| {
        sys::mknod(&m.join("c01"), libc::S_IFCHR | 0o644, sys::makedev(0, 1))
    });
    b.ok("mknod b 0 0", |m| {
        sys::mknod(&m.join("b00"), libc::S_IFBLK | 0o644, wh)
    });
    b.check_trees("after mknod of whiteouts");
    b.check_uppers("after mknod of whiteouts");
}

// --- ctime of setattrs that change nothing ----------------------------------

fn ctime(p: &Path) -> std::io::Result<(i64, i64)> {
    let st = sys::lstat(p)?;
    Ok((st.st_ctime, st.st_ctime_nsec))
}

/// Whether `op` on `rel` changes its ctime (after a pause longer than the
/// clock's tick, so that a change shows).
fn ctime_changes(
    m: &Path,
    rel: &str,
    op: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let p = m.join(rel);
    let before = ctime(&p)?;
    std::thread::sleep(Duration::from_millis(30));
    op(&p)?;
    Ok(ctime(&p)? != before)
}

fn chown_keep(p: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, None, None)
}

fn utimens_omit(p: &Path) -> std::io::Result<()> {
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let c = cstr(p);
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [omit, omit].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn setattrs_that_change_nothing_update_ctime_as_the_kernel_does() {
    let Some(b) = fixture() else { return };
    // Copy "lower" up first: the question is about files already in the upper.
    b.ok("copy up", |m| chown_keep(&m.join("lower")));
    for rel in ["lower", "up", "updir", "dir", "link"] {
        b.ok(&format!("chown {rel} -1 -1"), |m| {
            ctime_changes(m, rel, chown_keep)
        });
    }
    b.ok("chown -1 -1 of a set-uid file: mode after", |m| {
        chown_keep(&m.join("suid"))?;
        Ok(sys::lstat(&m.join("suid"))?.st_mode)
    });
    b.ok("fchown(fd, -1, -1)", |m| {
        ctime_changes(m, "up", |p| {
            let f = fs::File::open(p)?;
            std::os::unix::fs::fchown(&f, None, None)
        })
    });
    b.ok("chown to the same owner", |m| {
        ctime_changes(m, "up", |p| std::os::unix::fs::lchown(p, Some(0), Some(0)))
    });
    b.ok("chmod to the same mode", |m| {
        ctime_changes(m, "up", |p| sys::chmod(p, 0o644))
    });
    b.ok("truncate to the same size", |m| {
        ctime_changes(m, "up", |p| {
            let len = fs::metadata(p)?.len();
            fs::OpenOptions::new().write(true).open(p)?.set_len(len)
        })
    });
    b.ok("utimes to the times it has", |m| {
        ctime_changes(m, "up", |p| {
            let st = sys::lstat(p)?;
            sys::lutimes(
                p,
                (st.st_atime, st.st_atime_nsec),
                (st.st_mtime, st.st_mtime_nsec),
            )
        })
    });
    b.ok("setxattr to the value it has", |m| {
        sys::lsetxattr(&m.join("up"), "user.same", b"v")?;
        ctime_changes(m, "up", |p| sys::lsetxattr(p, "user.same", b"v"))
    });
    b.ok("utimensat with both times omitted", |m| {
        ctime_changes(m, "up", utimens_omit)
    });
    b.ok("open O_TRUNC of an empty file", |m| {
        fs::write(m.join("empty"), "")?;
        ctime_changes(m, "empty", |p| fs::File::create(p).map(drop))
    });
}

// --- mount flags ---------------------------------------------------------------

/// The mount's flags as statvfs(2) reports them.
fn mount_flags(p: &Path) -> std::io::Result<u64> {
    let c = cstr(p);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_flag as u64)
}

/// The super-block flags mountinfo shows that are not statvfs's.
fn super_words(p: &Path) -> Vec<String> {
    let m = support::mount_at(p).expect("mounted");
    m.super_opts
        .split(',')
        .filter(|w| ["sync", "dirsync", "lazytime"].contains(w))
        .map(String::from)
        .collect()
}

/// Run `p` (an executable script): whether it succeeded, or exec's errno.
fn exec(p: &Path) -> std::io::Result<bool> {
    std::process::Command::new(p).status().map(|s| s.success())
}

#[test]
fn vfs_options_are_flags_of_the_mount_as_on_the_kernel() {
    let sets = [
        ",nosuid,nodev,noexec",
        ",noatime,nodiratime,sync,dirsync,lazytime",
        ",strictatime",
        ",relatime,diratime,atime,async,nolazytime",
        ",nosymfollow",
        ",ro",
    ];
    for extra in sets {
        let setup = Setup::new(vec![
            Layer::new()
                .file_with("run.sh", "#!/bin/sh\nexit 0\n", support::Meta::mode(0o755))
                .symlink("link", "run.sh"),
        ])
        .upper(Layer::new())
        .kernel_extra(extra)
        .union_extra(extra);
        let Some(b) = Both::setup(setup) else { return };
        b.ok(&format!("statvfs flags with {extra}"), mount_flags);
        assert_eq!(
            super_words(&b.k.mnt),
            super_words(&b.u.mnt),
            "super-block flags with {extra}: kernel (left), unionmount (right)"
        );
        let _ = b.same(&format!("exec with {extra}"), |m| exec(&m.join("run.sh")));
        let _ = b.same(&format!("open through a symlink with {extra}"), |m| {
            fs::read(m.join("link"))
        });
        let _ = b.same(&format!("create with {extra}"), |m| {
            fs::write(m.join("new"), "n")
        });
    }
}

// --- atime -------------------------------------------------------------------

/// The atime of `rel` in the branch that holds it (not through the mount,
/// whose attribute cache may lag).
fn branch_atime(side: &support::Side, rel: &str) -> (i64, i64) {
    let upper = side.upper.join(rel);
    let p = if upper.symlink_metadata().is_ok() {
        upper
    } else {
        side.lowers[0].join(rel)
    };
    let st = sys::lstat(&p).unwrap();
    (st.st_atime, st.st_atime_nsec)
}

/// Does `op` through each mount change the atime of `rel` in its branch?
/// (after a pause past the clock's tick, so that a change shows)
fn atime_moves(b: &Both, what: &str, rel: &str, op: impl Fn(&Path) -> std::io::Result<()>) {
    std::thread::sleep(Duration::from_millis(30));
    let moved: Vec<bool> = b
        .sides()
        .iter()
        .map(|side| {
            let before = branch_atime(side, rel);
            op(&side.p(rel)).unwrap_or_else(|e| panic!("{what} on {}: {e}", side.name));
            branch_atime(side, rel) != before
        })
        .collect();
    assert_eq!(
        moved[0], moved[1],
        "{what}: atime moved on kernel (left) vs unionmount (right)"
    );
}

fn read(p: &Path) -> std::io::Result<()> {
    fs::read(p).map(drop)
}

fn list(p: &Path) -> std::io::Result<()> {
    fs::read_dir(p)?.try_for_each(|e| e.map(drop))
}

/// xfstests generic/003 and generic/120, compared with kernel overlayfs:
/// atime moves on every read under strictatime, under relatime only while
/// it is not newer than mtime, never under noatime; nodiratime spares dirs.
#[test]
fn atime_follows_the_mount_options_as_on_the_kernel() {
    for opts in [
        "",
        ",relatime",
        ",noatime",
        ",strictatime",
        ",nodiratime",
        ",strictatime,nodiratime",
    ] {
        let setup = Setup::new(vec![Layer::new().file("low", "lower data").dir("ldir/x")])
            .upper(Layer::new().file("up", "upper data").dir("udir/y"))
            .kernel_extra(opts)
            .union_extra(opts);
        let Some(b) = Both::setup(setup) else { return };
        atime_moves(
            &b,
            &format!("first read of a lower file ({opts})"),
            "low",
            read,
        );
        atime_moves(
            &b,
            &format!("second read of a lower file ({opts})"),
            "low",
            read,
        );
        atime_moves(
            &b,
            &format!("first read of an upper file ({opts})"),
            "up",
            read,
        );
        atime_moves(
            &b,
            &format!("second read of an upper file ({opts})"),
            "up",
            read,
        );
        atime_moves(&b, &format!("listing an upper dir ({opts})"), "udir", list);
        atime_moves(&b, &format!("listing a lower dir ({opts})"), "ldir", list);
        atime_moves(
            &b,
            &format!("listing an upper dir again ({opts})"),
            "udir",
            list,
        );
        b.ok("write an upper file", |m| {
            support::write(&m.join("up"), b"changed")
        });
        atime_moves(&b, &format!("read after a write ({opts})"), "up", read);
        atime_moves(&b, &format!("read after that read ({opts})"), "up", read);
    }
}

/// Kernel overlayfs opens its real files O_NOATIME: reading a lower file or
/// listing a lower directory never moves their atime, even where the
/// layer's own mount would (an atime older than the mtime, under relatime).
#[test]
fn lower_atime_never_moves() {
    if !support::require_mounts() {
        return;
    }
    let s = support::Scratch::new();
    let old = (1_000_000_000, 0);
    let mut moved = Vec::new();
    for (name, kernel) in [("kernel", true), ("unionmount", false)] {
        let [l, u, w, m] = s.dirs([
            &format!("{name}/l"),
            &format!("{name}/u"),
            &format!("{name}/w"),
            &format!("{name}/m"),
        ]);
        Layer::new()
            .file("f", "data")
            .dir("d/x")
            .build(&l, support::Dialect::Kernel);
        for rel in ["f", "d"] {
            sys::lutimes(&l.join(rel), old, (support::LAYER_MTIME, 0)).unwrap();
        }
        let opts = support::kernel_opts(std::slice::from_ref(&l), Some((&u, &w)));
        let mount = if kernel {
            support::Mount::kernel(&m, &opts).unwrap()
        } else {
            let args = [
                "-o".into(),
                support::union_opts(std::slice::from_ref(&l), Some((&u, &w))).into(),
            ];
            support::Mount::union_foreground(&m, &args).unwrap()
        };
        read(&m.join("f")).unwrap();
        list(&m.join("d")).unwrap();
        drop(mount);
        let atime = |rel: &str| sys::lstat(&l.join(rel)).unwrap().st_atime;
        moved.push((name, atime("f") != old.0, atime("d") != old.0));
    }
    assert_eq!(
        (moved[0].1, moved[0].2),
        (moved[1].1, moved[1].2),
        "lower atime moved (file, dir): {moved:?}"
    );
}

// --- inode flags: chattr, lsattr, FS_IOC_* -------------------------------------

/// e2fsprogs' chattr and lsattr, or the reason they cannot run.
fn e2fsprogs() -> bool {
    let there = std::process::Command::new("lsattr")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if there {
        Vec::new()
    } else {
        vec!["chattr/lsattr (package e2fsprogs) not installed".to_string()]
    };
    support::can_run("inode flag tests", &missing)
}

/// `chattr ARGS PATH`: Ok, or the errno its message names (EPERM, ENOTTY…).
fn chattr(args: &str, p: &Path) -> std::io::Result<()> {
    let out = std::process::Command::new("chattr")
        .args(args.split(' '))
        .arg(p)
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let errno = if err.contains("Operation not permitted") {
        libc::EPERM
    } else if err.contains("Operation not supported") || err.contains("Inappropriate ioctl") {
        libc::EOPNOTSUPP
    } else {
        libc::EIO
    };
    Err(std::io::Error::from_raw_os_error(errno))
}

/// The flags column of `lsattr -d PATH`.
fn lsattr(p: &Path) -> std::io::Result<String> {
    let out = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(p)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or("").to_string())
}

/// ioctl(fd, cmd, buf) with a buffer of `len` bytes: the bytes it left.
fn ioctl_buf(p: &Path, cmd: libc::c_ulong, input: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(p)?;
    let mut buf = vec![0u8; len];
    buf[..input.len()].copy_from_slice(input);
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            cmd as _,
            buf.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(buf)
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// Clears `i` and `a` on every upper object when dropped (even after a
/// failed assertion): an immutable file could not be removed otherwise.
struct ClearFlags(Vec<std::path::PathBuf>);

impl Drop for ClearFlags {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::process::Command::new("chattr")
                .args(["-R", "-f", "-i", "-a"])
                .arg(dir)
                .status();
        }
    }
}

#[test]
fn inode_flags_pass_to_the_real_file_as_on_the_kernel() {
    if !e2fsprogs() {
        return;
    }
    let setup = Setup::new(vec![
        Layer::new()
            .file("imm", "lower immutable")
            .file("early", "opened before +i")
            .file("low_a", "lower append")
            .file("plain", "plain")
            .dir("dir/inner"),
    ])
    .upper(Layer::new().file("app", "upper append").dir("updir"));
    let Some(b) = Both::setup(setup) else { return };
    let _clear = ClearFlags(vec![b.k.upper.clone(), b.u.upper.clone()]);
    for rel in ["imm", "app", "dir", "updir", "plain"] {
        b.ok(&format!("lsattr {rel}"), |m| lsattr(&m.join(rel)));
        b.ok(&format!("FS_IOC_GETFLAGS {rel}"), |m| {
            ioctl_buf(&m.join(rel), FS_IOC_GETFLAGS, &[], 4)
        });
        b.ok(&format!("FS_IOC_FSGETXATTR {rel}"), |m| {
            ioctl_buf(&m.join(rel), FS_IOC_FSGETXATTR, &[], 28)
        });
    }
    let early: Vec<fs::File> = b
        .sides()
        .iter()
        .map(|s| {
            fs::OpenOptions::new()
                .write(true)
                .open(s.p("early"))
                .unwrap()
        })
        .collect();
    for (args, rel) in [
        ("+i", "imm"),
        ("+i", "early"),
        ("+a", "app"),
        ("+a", "low_a"),
        ("+A", "dir"),
        ("+d", "plain"),
        ("+i", "updir"),
    ] {
        b.ok(&format!("chattr {args} {rel}"), |m| {
            chattr(args, &m.join(rel))
        });
        b.ok(&format!("lsattr {rel} after chattr {args}"), |m| {
            lsattr(&m.join(rel))
        });
    }
    b.ok("FS_IOC_FSGETXATTR of an immutable file", |m| {
        ioctl_buf(&m.join("imm"), FS_IOC_FSGETXATTR, &[], 28)
    });
    // What the flags forbid, the kernel's way.
    b.err("write an immutable file", libc::EPERM, |m| {
        support::write(&m.join("imm"), b"x")
    });
    b.err("unlink an immutable file", libc::EPERM, |m| {
        fs::remove_file(m.join("imm"))
    });
    b.err("rename an immutable file", libc::EPERM, |m| {
        fs::rename(m.join("imm"), m.join("moved"))
    });
    b.err("chmod an immutable file", libc::EPERM, |m| {
        sys::chmod(&m.join("imm"), 0o600)
    });
    b.err("setxattr on an immutable file", libc::EPERM, |m| {
        sys::lsetxattr(&m.join("imm"), "user.x", b"1")
    });
    b.err("create in an immutable dir", libc::EPERM, |m| {
        support::write(&m.join("updir/new"), b"n")
    });
    b.ok("append to an append-only file", |m| {
        support::append(&m.join("app"), b"+more")
    });
    b.ok("append to a copied-up append-only file", |m| {
        support::append(&m.join("low_a"), b"+more")
    });
    b.err("overwrite an append-only file", libc::EPERM, |m| {
        support::write(&m.join("app"), b"x")
    });
    b.err("truncate an append-only file", libc::EPERM, |m| {
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("app"))?
            .set_len(0)
    });
    // Kernel overlayfs keeps `i` in overlay.protattr, off the real file, so a
    // descriptor opened before chattr +i still writes; here the real upper
    // file is immutable and refuses it (README, known limits).
    let wrote: Vec<_> = early
        .iter()
        .map(|f| support::outcome(std::io::Write::write(&mut &*f, b"late")))
        .collect();
    assert_eq!(
        wrote[0],
        Ok(4),
        "kernel: write through an fd opened before +i"
    );
    if !support::subject_is_kernel() {
        assert_eq!(
            wrote[1],
            Err(support::Errno(libc::EPERM)),
            "unionmount: an fd opened before +i must not write"
        );
    }
    drop(early);
    // FS_IOC_SETFLAGS and FS_IOC_FSSETXATTR themselves, then clear.
    b.ok("FS_IOC_SETFLAGS clears i", |m| {
        let cur = ioctl_buf(&m.join("imm"), FS_IOC_GETFLAGS, &[], 4)?;
        let flags = u32::from_ne_bytes(cur[..4].try_into().unwrap()) & !0x10;
        ioctl_buf(&m.join("imm"), FS_IOC_SETFLAGS, &flags.to_ne_bytes(), 4)?;
        lsattr(&m.join("imm"))
    });
    b.ok("FS_IOC_FSSETXATTR clears a", |m| {
        let mut cur = ioctl_buf(&m.join("app"), FS_IOC_FSGETXATTR, &[], 28)?;
        let xflags = u32::from_ne_bytes(cur[..4].try_into().unwrap()) & !0x10;
        cur[..4].copy_from_slice(&xflags.to_ne_bytes());
        ioctl_buf(&m.join("app"), FS_IOC_FSSETXATTR, &cur, 28)?;
        lsattr(&m.join("app"))
    });
    for (args, rel) in [("-i", "early"), ("-a", "low_a"), ("-i", "updir")] {
        b.ok(&format!("chattr {args} {rel}"), |m| {
            chattr(args, &m.join(rel))
        });
    }
    b.ok("write once the flags are gone", |m| {
        support::write(&m.join("imm"), b"free")?;
        support::write(&m.join("app"), b"free")?;
        support::write(&m.join("early"), b"free")?;
        fs::read(m.join("imm"))
    });
    b.check_trees("after chattr");
}
