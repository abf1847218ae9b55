//! Permissions compared with kernel overlayfs, for an unprivileged user
//! (uid 1000) in a forked child: modes on lower and upper files, POSIX ACLs
//! enforced and inherited like the kernel's, and setgid directories passing
//! on their group.

mod support;

use std::fs;
use std::path::Path;

use support::sys::{self, cstr};
use support::{Both, Layer, Meta, Setup};

/// Run `f` as uid/gid 1000 in a forked child; returns its result as
/// `Ok(())` or the errno (exit code 0 or the errno).
fn as_user(f: impl FnOnce() -> i32) -> Result<(), i32> {
    as_user_in(&[], f)
}

/// `as_user` with these supplementary groups.
fn as_user_in(groups: &[libc::gid_t], f: impl FnOnce() -> i32) -> Result<(), i32> {
    let code = sys::in_child(|| {
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(1000, 1000, 1000) != 0
                || libc::setresuid(1000, 1000, 1000) != 0
            {
                return 200;
            }
        }
        f()
    });
    assert_ne!(code, 200, "could not drop privileges");
    if code == 0 { Ok(()) } else { Err(code) }
}

fn errno_now() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(255)
}

#[test]
fn permissions_for_an_unprivileged_user() {
    let setup = Setup::new(vec![
        Layer::new()
            .file_with("secret", "s", Meta::mode(0o600))
            .file_with("public", "p", Meta::mode(0o644))
            .file_with("mine", "m", Meta::mode(0o600).owner(1000, 1000))
            .dir_with("rootdir", Meta::mode(0o755))
            .dir_with("userdir", Meta::mode(0o755).owner(1000, 1000))
            .dir_with("sticky", Meta::mode(0o1777))
            .file_with("sticky/roots", "r", Meta::mode(0o666)),
        Layer::new().file("userdir/lower_file", "l"),
    ]);
    let Some(b) = Both::setup(setup) else { return };
    let cases: Vec<(&str, i32, &str)> = vec![
        ("read 0600 root file", 0, "secret"),
        ("read 0644 root file", 0, "public"),
        ("write 0644 root file", 1, "public"),
        ("write own file", 1, "mine"),
        ("create in root's dir", 2, "rootdir/new"),
        ("create in own dir", 2, "userdir/new"),
        ("unlink in own dir (lower file)", 3, "userdir/lower_file"),
        ("unlink root's file in a sticky dir", 3, "sticky/roots"),
        ("chmod root's file", 4, "public"),
        ("chmod own file", 4, "mine"),
        ("mkdir in own lower dir", 5, "userdir/sub"),
        ("mkdir in root's dir", 5, "rootdir/sub"),
        (
            "rename own lower file within own dir",
            6,
            "userdir/lower_file",
        ),
        ("rename root's file out of a sticky dir", 6, "sticky/roots"),
        ("setxattr user.x on own file", 7, "mine"),
        ("setxattr user.x on root's file", 7, "public"),
        ("chown own file to root", 8, "mine"),
        ("utimes(NULL) on root's 0666 file", 9, "sticky/roots"),
        ("utimes(NULL) on root's 0644 file", 9, "public"),
    ];
    for (what, op, rel) in cases {
        let mut results = Vec::new();
        for side in b.sides() {
            let c = cstr(&side.p(rel));
            let to = cstr(&side.p(&format!("{rel}.renamed")));
            let xname = std::ffi::CString::new("user.x").unwrap();
            let r = as_user(|| {
                let r = match op {
                    0 => unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) },
                    1 => unsafe { libc::open(c.as_ptr(), libc::O_WRONLY) },
                    2 => unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) },
                    3 => unsafe { libc::unlink(c.as_ptr()) },
                    4 => unsafe { libc::chmod(c.as_ptr(), 0o640) },
                    5 => unsafe { libc::mkdir(c.as_ptr(), 0o755) },
                    6 => unsafe { libc::rename(c.as_ptr(), to.as_ptr()) },
                    7 => unsafe {
                        libc::setxattr(c.as_ptr(), xname.as_ptr(), b"v".as_ptr().cast(), 1, 0)
                    },
                    8 => unsafe { libc::chown(c.as_ptr(), 0, 0) },
                    _ => unsafe {
                        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0)
                    },
                };
                if r < 0 { errno_now() } else { 0 }
            });
            results.push(r);
        }
        assert_eq!(
            results[0], results[1],
            "{what}: kernel (left) and {} (right)",
            b.u.name
        );
    }
    b.check_trees("after unprivileged operations");
    b.check_uppers("after unprivileged operations");
}

/// A POSIX ACL xattr value: (tag, perm, id) entries (id ignored for the
/// owner, group, mask and other entries).
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

fn set_xattr_raw(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (c, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What uid 1000 (no groups) gets opening `rel` read-only on each side.
fn user_reads(b: &Both, rel: &str) -> [Result<(), i32>; 2] {
    b.sides().map(|side| {
        let c = cstr(&side.p(rel));
        as_user(|| {
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            if fd < 0 { errno_now() } else { 0 }
        })
    })
}

#[test]
fn posix_acls_are_enforced_and_inherited_like_the_kernel() {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    let setup = Setup::new(vec![
        Layer::new()
            .dir_with("shared", Meta::mode(0o755))
            .file_with("shared/f", "secret", Meta::mode(0o600)),
    ]);
    let Some(mut b) = Both::setup(setup) else {
        return;
    };
    assert_eq!(
        user_reads(&b, "shared/f"),
        [Err(libc::EACCES); 2],
        "before any ACL"
    );

    // An access ACL granting uid 1000 read: the kernel checks it on both.
    let grant = acl_value(&[
        (USER_OBJ, 6, 0),
        (USER, 4, 1000),
        (GROUP_OBJ, 0, 0),
        (MASK, 4, 0),
        (OTHER, 0, 0),
    ]);
    b.ok("set an access ACL on a lower file", |m| {
        set_xattr_raw(&m.join("shared/f"), "system.posix_acl_access", &grant)
    });
    assert_eq!(user_reads(&b, "shared/f"), [Ok(()); 2], "with the ACL");
    b.ok("chmod narrows the mask", |m| {
        fs::set_permissions(
            m.join("shared/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
    });
    assert_eq!(
        user_reads(&b, "shared/f"),
        [Err(libc::EACCES); 2],
        "mask emptied by chmod"
    );
    b.check_trees("after a chmod of a file with an ACL");

    // A default ACL: new objects inherit it, and the umask does not apply.
    let default = acl_value(&[
        (USER_OBJ, 7, 0),
        (USER, 7, 1000),
        (GROUP_OBJ, 5, 0),
        (MASK, 7, 0),
        (OTHER, 5, 0),
    ]);
    b.ok("set a default ACL on a lower dir", |m| {
        set_xattr_raw(&m.join("shared"), "system.posix_acl_default", &default)
    });
    for side in b.sides() {
        let (file, dir) = (cstr(&side.p("shared/new")), cstr(&side.p("shared/sub")));
        let code = sys::in_child(|| unsafe {
            libc::umask(0o022);
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o666);
            if fd < 0 || libc::mkdir(dir.as_ptr(), 0o777) < 0 {
                errno_now()
            } else {
                0
            }
        });
        assert_eq!(code, 0, "{}: create under a default ACL", side.name);
    }
    b.check_trees("objects made under a default ACL");
    assert_eq!(
        user_reads(&b, "shared/new"),
        [Ok(()); 2],
        "the inherited ACL grants"
    );
    b.ok("a file made in an inheriting subdirectory", |m| {
        fs::write(m.join("shared/sub/g"), "g")
    });
    b.check_trees("a default ACL inherited twice");
    b.check_trees_after_kernel_remount("ACLs on disk");
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let setup = Setup::new(vec![
        Layer::new().dir_with("sg", Meta::mode(0o2777).owner(0, 100)),
    ]);
    let Some(b) = Both::setup(setup) else { return };
    for side in b.sides() {
        let [f, d, e] =
            ["sg/by_user", "sg/dir_by_user", "sg/dir_by_user/f"].map(|r| cstr(&side.p(r)));
        let r = as_user(|| unsafe {
            libc::umask(0o022);
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644);
            if fd < 0 || libc::mkdir(d.as_ptr(), 0o755) < 0 {
                return errno_now();
            }
            if libc::open(e.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) < 0 {
                errno_now()
            } else {
                0
            }
        });
        assert_eq!(r, Ok(()), "{}: create in a setgid directory", side.name);
    }
    b.ok("root makes a directory there", |m| {
        fs::create_dir(m.join("sg/dir_by_root"))
    });
    let group = b.ok("the group of a new file", |m| {
        Ok(std::os::unix::fs::MetadataExt::gid(&fs::metadata(
            m.join("sg/by_user"),
        )?))
    });
    assert_eq!(group, 100);
    b.check_trees("objects made in a setgid directory");
}

/// An unprivileged write or truncate clears setuid (and setgid where the
/// group may execute) and file capabilities, as on the kernel's side; a
/// chown clears them whoever makes it. (FUSE_HANDLE_KILLPRIV_V2 would save
/// the GETATTR the kernel makes before a chown, but a passthrough write
/// then clears nothing: the kernel leaves that write's clearing to a
/// daemon that never sees it. This test is what caught it.)
#[test]
fn writes_truncates_and_chowns_clear_setuid_as_the_kernels_do() {
    let own = || Meta::mode(0o6775).owner(1000, 1000);
    let setup = Setup::new(vec![
        Layer::new()
            .file_with("write", "data", own())
            .file_with("truncate", "data", own())
            .file_with("open-trunc", "data", own())
            .file_with("kept-sgid", "data", Meta::mode(0o2764).owner(1000, 1000))
            .file_with("chown", "data", own())
            .file_with("cap", "data", Meta::mode(0o755).owner(1000, 1000)),
    ]);
    let Some(b) = Both::setup(setup) else { return };
    // A file capability (v2, cap_net_raw), which a write drops too.
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    b.ok("give cap a file capability", |m| {
        set_xattr_raw(&m.join("cap"), "security.capability", &cap)
    });
    let cases: Vec<(&str, i32, &str)> = vec![
        ("write", 0, "write"),
        ("truncate", 1, "truncate"),
        ("open O_TRUNC", 2, "open-trunc"),
        ("write, setgid without group exec", 0, "kept-sgid"),
        ("write a file with a capability", 0, "cap"),
    ];
    for (what, op, rel) in cases {
        let mut results = Vec::new();
        for side in b.sides() {
            let c = cstr(&side.p(rel));
            let r = as_user(|| unsafe {
                let r = match op {
                    0 => {
                        let fd = libc::open(c.as_ptr(), libc::O_WRONLY);
                        if fd < 0 || libc::write(fd, b"x".as_ptr().cast(), 1) != 1 {
                            -1
                        } else {
                            libc::close(fd)
                        }
                    }
                    1 => libc::truncate(c.as_ptr(), 2),
                    _ => libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_TRUNC),
                };
                if r < 0 { errno_now() } else { 0 }
            });
            let st = sys::lstat(&side.p(rel)).unwrap();
            let has_cap = sys::xattrs(&side.p(rel))
                .unwrap()
                .iter()
                .any(|(k, _)| k == "security.capability");
            results.push((r, st.st_mode & 0o7777, has_cap));
        }
        assert_eq!(
            results[0], results[1],
            "{what}: kernel (left) and {} (right): (errno, mode, capability)",
            b.u.name
        );
    }
    b.ok("root chowns a setuid file", |m| {
        std::os::unix::fs::lchown(m.join("chown"), Some(1000), Some(0))?;
        Ok(sys::lstat(&m.join("chown"))?.st_mode & 0o7777)
    });
    b.check_trees("after the writes");
    b.check_uppers("after the writes");
}

/// What a user makes is theirs from the first moment, with the mode it asked
/// for (setuid included), also where only a supplementary group lets them
/// write: the daemon makes it as them, and keeps its own rights meanwhile.
#[test]
fn objects_made_through_a_group_are_their_makers() {
    let setup = Setup::new(vec![
        Layer::new().dir_with("team", Meta::mode(0o3770).owner(0, 100)),
    ]);
    let Some(mut b) = Both::setup(setup) else {
        return;
    };
    for side in b.sides() {
        let [f, d, e, l, p, s] = [
            "team/tool",
            "team/dir",
            "team/dir/f",
            "team/link",
            "team/pipe",
            "team/secret",
        ]
        .map(|r| cstr(&side.p(r)));
        let target = cstr(Path::new("tool"));
        let r = as_user_in(&[100], || unsafe {
            libc::umask(0o022);
            let made = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o4755) >= 0
                && libc::mkdir(d.as_ptr(), 0o777) == 0
                && libc::open(e.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o666) >= 0
                && libc::symlink(target.as_ptr(), l.as_ptr()) == 0
                && libc::mkfifo(p.as_ptr(), 0o640) == 0
                && libc::open(s.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600) >= 0;
            if made { 0 } else { errno_now() }
        });
        assert_eq!(r, Ok(()), "{}: make things in a group directory", side.name);
        // Not a member: the directory's group gives nothing.
        let denied = as_user(|| unsafe {
            let fd = libc::open(s.as_ptr(), libc::O_RDONLY);
            if fd >= 0 { 0 } else { errno_now() }
        });
        assert_eq!(
            denied,
            Err(libc::EACCES),
            "{}: outside the group",
            side.name
        );
    }
    let owner = b.ok("the owner of a new file", |m| {
        let meta = fs::symlink_metadata(m.join("team/tool"))?;
        use std::os::unix::fs::MetadataExt;
        Ok((meta.uid(), meta.gid(), meta.mode() & 0o7777))
    });
    assert_eq!(owner, (1000, 100, 0o4755));
    b.check_trees("objects made through a supplementary group");
    b.check_trees_after_kernel_remount("objects made by a user, on disk");
}
