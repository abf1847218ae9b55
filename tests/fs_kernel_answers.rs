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
        ",ro",
    ];
    for extra in sets {
        let setup = Setup::new(vec![Layer::new().file_with(
            "run.sh",
            "#!/bin/sh\nexit 0\n",
            support::Meta::mode(0o755),
        )])
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
