//! Hostile branches: symlinks in a lower or an upper that point at host
//! files are shown as symlinks and never followed by the daemon, not even
//! when a directory is swapped for such a symlink behind the mount's back;
//! and a mountpoint nested with a branch (by path, through a symlink, or
//! through a bind mount) is refused with one line and nothing mounted.

mod support;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::mount::{mount_at, run_with_timeout};
use support::snapshot::assert_raw_unchanged;
use support::sys;
use support::{Mount, Scratch, raw_checksum};

const SECRET: &str = "SECRET host data";

/// A scratch dir with `host/` (files the branches point at), a lower, an
/// upper, a workdir, and a mountpoint one level deeper than the branches,
/// so that a relative symlink resolves to the host file inside a branch but
/// to nothing through the mount.
struct Rig {
    s: Scratch,
    host: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Rig {
    fn new() -> Option<Rig> {
        if !support::require_mounts() {
            return None;
        }
        let s = Scratch::new();
        let host = s.dir("host");
        fs::write(host.join("secret"), SECRET).unwrap();
        fs::write(host.join("f"), SECRET).unwrap();
        fs::write(host.join("g"), SECRET).unwrap();
        sys::lsetxattr(&host.join("secret"), "user.mark", b"host").unwrap();
        let [lower, upper, work, mnt] = s.dirs(["lower", "upper", "work", "m/mnt"]);
        Some(Rig {
            s,
            host,
            lower,
            upper,
            work,
            mnt,
        })
    }

    fn mount(&self) -> Mount {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        );
        Mount::union_foreground(&self.mnt, &[OsString::from("-o"), opts.into()]).unwrap()
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// No file of the upper holds the host's data.
    fn upper_has_no_secret(&self) {
        for (rel, line) in raw_checksum(&self.upper) {
            assert!(
                !line.contains("SECRET"),
                "upper/{} holds host data: {line}",
                rel.display()
            );
        }
    }
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

#[test]
fn a_symlink_in_a_lower_is_shown_and_never_followed_by_the_daemon() {
    let Some(r) = Rig::new() else { return };
    let abs_secret = r.host.join("secret");
    // In the lower, "../host/secret" is the host file; through the mount
    // (one level deeper) it is m/host/secret, which does not exist.
    symlink("../host/secret", r.lower.join("link")).unwrap();
    symlink(&abs_secret, r.lower.join("abslink")).unwrap();
    symlink("../host", r.lower.join("dirlink")).unwrap();
    fs::create_dir(r.lower.join("d")).unwrap();
    symlink("../../host/secret", r.lower.join("d/inner")).unwrap();
    let host_before = raw_checksum(&r.host);
    let lower_before = raw_checksum(&r.lower);
    let mut g = r.mount();

    // Shown as symlinks, with their targets, never as the host file.
    for (name, target) in [
        ("link", PathBuf::from("../host/secret")),
        ("abslink", abs_secret.clone()),
        ("dirlink", PathBuf::from("../host")),
    ] {
        let st = fs::symlink_metadata(r.m(name)).unwrap();
        assert!(st.file_type().is_symlink(), "{name}: {st:?}");
        assert_eq!(fs::read_link(r.m(name)).unwrap(), target, "{name}");
    }
    let listed: Vec<_> = fs::read_dir(&r.mnt)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name(), e.file_type().unwrap().is_symlink()))
        .collect();
    assert!(
        listed.contains(&("link".into(), true)) && listed.contains(&("dirlink".into(), true)),
        "{listed:?}"
    );

    // Operations that do not follow a final symlink copy up the link itself.
    sys::lchown(&r.m("link"), 4321, 4321).unwrap();
    sys::lchown(&r.m("abslink"), 4321, 4321).unwrap();
    sys::lsetxattr(&r.m("abslink"), "trusted.hostile", b"v").unwrap();
    sys::lutimes(&r.m("abslink"), (1, 0), (2, 0)).unwrap();
    fs::hard_link(r.m("abslink"), r.m("hardlinked")).unwrap();
    fs::rename(r.m("link"), r.m("renamed")).unwrap();
    fs::remove_file(r.m("renamed")).unwrap();
    // Following ones are resolved by the kernel, from the mount: nothing there.
    assert_eq!(
        errno(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(r.m("dirlink/secret"))
        ),
        libc::ENOENT
    );
    assert_eq!(errno(fs::File::create(r.m("dirlink/new"))), libc::ENOENT);
    assert_eq!(errno(sys::chmod(&r.m("d/inner"), 0o777)), libc::ENOENT);
    assert_eq!(
        errno(fs::OpenOptions::new().write(true).open(r.m("d/inner"))),
        libc::ENOENT
    );
    // A new file beside a symlink copies the directory up, not its links' targets.
    fs::write(r.m("d/new"), "n").unwrap();
    // The daemon's own answers for the links.
    let up = fs::symlink_metadata(r.upper.join("abslink")).unwrap();
    assert!(up.file_type().is_symlink());
    assert_eq!((up.uid(), up.gid()), (4321, 4321));
    assert_eq!(
        sys::lgetxattr(&r.upper.join("abslink"), "trusted.hostile").unwrap(),
        b"v"
    );
    assert_eq!(fs::read_link(r.upper.join("abslink")).unwrap(), abs_secret);
    assert!(
        fs::symlink_metadata(r.upper.join("d/inner")).is_err(),
        "d/inner was copied up"
    );
    assert_eq!(
        fs::read_link(r.m("d/inner")).unwrap(),
        Path::new("../../host/secret")
    );

    g.unmount().unwrap();
    assert_raw_unchanged(&r.host, &host_before, &raw_checksum(&r.host));
    assert_raw_unchanged(&r.lower, &lower_before, &raw_checksum(&r.lower));
    r.upper_has_no_secret();
    // The host file kept its one name.
    assert_eq!(fs::metadata(&abs_secret).unwrap().nlink(), 1);
}

#[test]
fn a_directory_swapped_for_a_symlink_behind_the_mount_is_not_followed() {
    // Changing branches under a live mount is undefined for overlayfs, but it
    // must never lead the daemon out of its branches: every access resolves
    // below the branch with RESOLVE_NO_SYMLINKS, so a swapped-in symlink is an
    // error, never the host directory.
    let Some(r) = Rig::new() else { return };
    fs::create_dir(r.lower.join("d")).unwrap();
    fs::write(r.lower.join("d/f"), "lower data").unwrap();
    let mut g = r.mount();
    // Lower: d/f is looked up and read, then d becomes a symlink to host/.
    assert_eq!(fs::read_to_string(r.m("d/f")).unwrap(), "lower data");
    fs::rename(r.lower.join("d"), r.lower.join("d.orig")).unwrap();
    symlink("../host", r.lower.join("d")).unwrap();
    // Upper: u/x made through the mount, then u becomes a symlink to host/.
    fs::create_dir(r.m("u")).unwrap();
    fs::write(r.m("u/x"), "upper data").unwrap();
    fs::rename(r.upper.join("u"), r.upper.join("u.orig")).unwrap();
    symlink("../host", r.upper.join("u")).unwrap();
    let host_before = raw_checksum(&r.host);

    // Whatever the mount answers, it is never the host's data or names.
    if let Ok(s) = fs::read_to_string(r.m("d/f")) {
        assert_ne!(s, SECRET);
    }
    assert!(
        fs::metadata(r.m("d/g")).is_err(),
        "d/g found: the lower symlink was followed"
    );
    assert!(
        fs::metadata(r.m("u/g")).is_err(),
        "u/g found: the upper symlink was followed"
    );
    for dir in ["d", "u"] {
        if let Ok(rd) = fs::read_dir(r.m(dir)) {
            let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
            assert!(
                !names.iter().any(|n| n == "secret" || n == "g"),
                "{dir} lists the host directory: {names:?}"
            );
        }
    }
    // Writes: copy-up of d/f, a new file in u, attribute changes.
    if let Ok(mut f) = fs::OpenOptions::new().append(true).open(r.m("d/f")) {
        let _ = f.write_all(b" appended");
    }
    let _ = fs::write(r.m("u/new"), "n");
    let _ = fs::write(r.m("d/new"), "n");
    let _ = sys::lchown(&r.m("u/x"), 4321, 4321);
    let _ = sys::chmod(&r.m("d/f"), 0o600);
    let _ = sys::lsetxattr(&r.m("u/x"), "user.hostile", b"v");
    let _ = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(r.m("u/x"));
    let _ = fs::remove_file(r.m("u/x"));
    let _ = fs::rename(r.m("d/f"), r.m("moved"));
    if let Ok(mut f) = fs::File::open(r.m("moved")) {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        assert!(!s.contains("SECRET"), "moved: {s}");
    }

    g.unmount().unwrap();
    assert_raw_unchanged(&r.host, &host_before, &raw_checksum(&r.host));
    // Nothing was written through the symlinks: they are still symlinks,
    // and the upper never received host data.
    assert!(
        fs::symlink_metadata(r.upper.join("u"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(r.lower.join("d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    r.upper_has_no_secret();
}

// ---------------------------------------------------------------------------
// Mountpoints nested with branches

/// Run a mount that must be refused: non-zero exit, one line naming `want`,
/// nothing mounted at `mnt`.
fn refused(what: &str, args: &[OsString], mnt: &Path, want: &str) {
    let before = mount_at(mnt).map(|m| m.dev);
    let mut cmd = Command::new(support::bin());
    cmd.args(args).arg(mnt);
    let (code, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    if mount_at(mnt).map(|m| m.dev) != before {
        drop(Mount::union_guard(mnt, None, None));
        panic!("{what}: something was mounted at {} ({err})", mnt.display());
    }
    assert_ne!(code, 0, "{what}: exit 0");
    assert_ne!(code, -1, "{what}: hung");
    assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
    assert_eq!(out, "", "{what}");
    assert!(err.contains(want), "{what}: expected {want:?} in {err:?}");
}

/// A bind mount, detached on drop.
struct Bind(PathBuf);

impl Bind {
    fn new(from: &Path, to: &Path) -> Bind {
        fs::create_dir_all(to).unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount --bind {} {}",
            from.display(),
            to.display()
        );
        Bind(to.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = sys::umount2(&self.0, libc::MNT_DETACH);
    }
}

#[test]
fn mountpoints_nested_with_branches_are_refused() {
    let Some(r) = Rig::new() else { return };
    let s = &r.s;
    let l2 = s.dir("l2");
    let o = |lower: &str, upper: &Path, work: &Path| -> Vec<OsString> {
        vec![
            "-o".into(),
            format!(
                "lowerdir={lower},upperdir={},workdir={}",
                upper.display(),
                work.display()
            )
            .into(),
        ]
    };
    let lowers = format!("{}:{}", r.lower.display(), l2.display());
    let ov = o(&lowers, &r.upper, &r.work);

    let in_upper = s.dir("upper/mnt");
    refused(
        "mountpoint inside the upper",
        &ov,
        &in_upper,
        "inside upper",
    );
    let in_work = s.dir("work/mnt");
    refused(
        "mountpoint inside the workdir",
        &ov,
        &in_work,
        "inside workdir",
    );
    refused("mountpoint is a lower", &ov, &l2, "inside branch");
    let deep = s.dir("l2/a/b/c");
    refused("mountpoint deep in a lower", &ov, &deep, "inside branch");
    // Through a symlink to the lower.
    symlink(&l2, s.path().join("alias")).unwrap();
    refused(
        "mountpoint inside a lower, named through a symlink",
        &ov,
        &s.path().join("alias/a"),
        "inside branch",
    );
    // Through a bind mount of the lower: another path, the same directory.
    let bind = Bind::new(&l2, &s.path().join("bind"));
    refused(
        "mountpoint inside a bind-mounted lower",
        &ov,
        &bind.0.join("a"),
        "inside branch",
    );
    drop(bind);
    // Branches under the mountpoint.
    let mnt = &r.mnt;
    let under = s.dir("m/mnt/low");
    refused(
        "lower under the mountpoint",
        &o(
            &format!("{}:{}", r.lower.display(), under.display()),
            &r.upper,
            &r.work,
        ),
        mnt,
        "inside mountpoint",
    );
    let up_under = s.dir("m/mnt/up");
    let work_under = s.dir("m/mnt/work");
    refused(
        "upper under the mountpoint",
        &o(&lowers, &up_under, &r.work),
        mnt,
        "inside mountpoint",
    );
    refused(
        "workdir under the mountpoint",
        &o(&lowers, &r.upper, &work_under),
        mnt,
        "inside mountpoint",
    );
    refused(
        "the mountpoint's parent as a lower",
        &o(&s.path().join("m").display().to_string(), &r.upper, &r.work),
        mnt,
        "inside branch",
    );
    // The unionfs-fuse syntax, and a relative spelling.
    refused(
        "unionfs-fuse branch under the mountpoint",
        &[
            "-o".into(),
            "cow".into(),
            format!("{}=RW:{}=RO", r.upper.display(), under.display()).into(),
        ],
        mnt,
        "inside mountpoint",
    );
    let mut cmd = Command::new(support::bin());
    cmd.current_dir(s.path())
        .args(["-o", "cow", "upper=RW:lower/../l2=RO", "l2/a"]);
    let (code, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(mount_at(&s.path().join("l2/a")).is_none());
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("inside branch"), "{err}");
    // A workdir on a bind mount of the upper's filesystem: same device,
    // another mount, where rename(2) into the upper fails.
    let wsrc = s.dir("wsrc");
    let wbind = Bind::new(&wsrc, &s.path().join("wbind"));
    refused(
        "workdir on another mount of the same filesystem",
        &o(&lowers, &r.upper, &wbind.0),
        mnt,
        "not on the same mount",
    );
    drop(wbind);

    // With all of that refused, the same layout mounts where it should.
    let g = r.mount();
    assert!(g.is_fuse());
    drop(g);
    let _ = s.dir("l2/a");
    assert!(support::mount::mounts_under(s.path()).is_empty());
}
