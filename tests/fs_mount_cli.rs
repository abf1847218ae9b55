//! The mount command line: both syntaxes and mount(8)'s `SRC MNT -o …` form,
//! daemonizing (returns once live), `-f`, SIGTERM/SIGINT, `unionmount umount`
//! and a plain umount(2) making the daemon exit, fuse-overlayfs options as
//! podman passes them, EROFS on read-only branches without `cow`, and bad
//! input: one line on stderr, non-zero exit, nothing mounted.

mod support;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::mount::{pid_alive, run_with_timeout, unionmount_umount};
use support::{Layer, Mount, Scratch, bin, is_mounted, mount_at, wait_until};

/// Scratch with two lowers, an upper, a workdir and a mountpoint.
struct Dirs {
    s: Scratch,
    l0: PathBuf,
    l1: PathBuf,
    up: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Option<Dirs> {
    if !support::require_mounts() {
        return None;
    }
    let s = Scratch::new();
    let [l0, l1, up, work, mnt] = s.dirs(["l0", "l1", "up", "work", "mnt"]);
    Layer::new()
        .file("a", "l0 a")
        .file("d/x", "x")
        .build(&l0, support::Dialect::Kernel);
    Layer::new()
        .file("a", "l1 a")
        .file("b", "l1 b")
        .build(&l1, support::Dialect::Kernel);
    Some(Dirs {
        s,
        l0,
        l1,
        up,
        work,
        mnt,
    })
}

impl Dirs {
    fn overlay_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.l0.display(),
            self.l1.display(),
            self.up.display(),
            self.work.display()
        )
    }
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Pids of processes whose command line mentions `arg`.
fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let me = std::process::id();
    let want = arg.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = fs::read(e.path().join("cmdline"))
            && cmd.split(|b| *b == 0).any(|a| a == want)
            && pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// `unionmount ARGS` must daemonize: exit 0, silent, mount live on return.
fn mount_daemon(args: &[OsString], mnt: &Path) -> Mount {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    let (code, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let live = mount_at(mnt).is_some_and(|m| m.fstype.starts_with("fuse"));
    // Take charge of whatever got mounted before asserting anything.
    let guard = Mount::union_guard(mnt, None, None);
    assert_eq!(code, 0, "unionmount {args:?}: exit {code}, stderr: {err}");
    assert!(
        live,
        "unionmount {args:?} returned before the mount was live"
    );
    assert_eq!(err, "", "stderr must stay silent on success");
    assert_eq!(out, "", "stdout must stay silent on success");
    guard
}

/// `unionmount umount MNT` unmounts and the daemon exits.
fn umount_and_check_exit(mut guard: Mount, mnt: &Path) {
    let pids = pids_with_arg(mnt);
    assert!(
        !pids.is_empty(),
        "no daemon process found for {}",
        mnt.display()
    );
    let (code, err) = unionmount_umount(mnt);
    assert_eq!(code, 0, "unionmount umount: {err}");
    assert_eq!(err, "", "umount: stderr must stay silent");
    assert!(!is_mounted(mnt), "still mounted after unionmount umount");
    assert!(
        wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|p| !pid_alive(*p))),
        "daemon {pids:?} still running after unionmount umount"
    );
    guard.unmount().unwrap();
}

#[test]
fn overlay_syntax_daemonizes_and_umount_ends_it() {
    let Some(d) = dirs() else { return };
    let args = vec!["-o".into(), d.overlay_opts().into(), d.mnt.clone().into()];
    let g = mount_daemon(&args, &d.mnt);
    let opts = mount_at(&d.mnt).unwrap().super_opts;
    assert!(
        opts.contains("allow_other") && opts.contains("default_permissions"),
        "as root it mounts with allow_other and default_permissions: {opts}"
    );
    assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"l0 a");
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    fs::write(d.mnt.join("a"), "new").unwrap();
    assert_eq!(
        fs::read(d.up.join("a")).unwrap(),
        b"new",
        "writes land in the upper"
    );
    assert_eq!(fs::read(d.l0.join("a")).unwrap(), b"l0 a");
    umount_and_check_exit(g, &d.mnt);
}

#[test]
fn mount_helper_form_src_mnt_dash_o() {
    let Some(d) = dirs() else { return };
    let args = vec![
        "overlay".into(),
        d.mnt.clone().into(),
        "-o".into(),
        d.overlay_opts().into(),
    ];
    let g = mount_daemon(&args, &d.mnt);
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    umount_and_check_exit(g, &d.mnt);
}

#[test]
fn unionfs_syntax_with_cow() {
    let Some(d) = dirs() else { return };
    let branches = format!(
        "{}=RW:{}=RO:{}=RO",
        d.up.display(),
        d.l0.display(),
        d.l1.display()
    );
    let args = vec![
        "-o".into(),
        "cow".into(),
        branches.into(),
        d.mnt.clone().into(),
    ];
    let g = mount_daemon(&args, &d.mnt);
    assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"l0 a");
    fs::write(d.mnt.join("a"), "cow").unwrap();
    fs::write(d.mnt.join("new"), "n").unwrap();
    assert_eq!(fs::read(d.up.join("a")).unwrap(), b"cow");
    assert_eq!(fs::read(d.up.join("new")).unwrap(), b"n");
    assert_eq!(
        fs::read(d.l0.join("a")).unwrap(),
        b"l0 a",
        "RO branch untouched"
    );
    fs::remove_file(d.mnt.join("b")).unwrap();
    assert!(d.l1.join("b").exists(), "RO branch untouched by unlink");
    assert!(!d.mnt.join("b").exists());
    umount_and_check_exit(g, &d.mnt);
}

#[test]
fn unionfs_syntax_without_cow_gives_erofs_on_ro_files() {
    let Some(d) = dirs() else { return };
    let branches = format!("{}=RW:{}=RO", d.up.display(), d.l0.display());
    let args = vec![branches.into(), d.mnt.clone().into()];
    let g = mount_daemon(&args, &d.mnt);
    let e = fs::OpenOptions::new()
        .write(true)
        .open(d.mnt.join("a"))
        .unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "write to a RO branch's file"
    );
    let e = support::sys::chmod(&d.mnt.join("a"), 0o600).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "chmod of a RO branch's file"
    );
    fs::write(d.mnt.join("new"), "n").unwrap();
    assert_eq!(
        fs::read(d.up.join("new")).unwrap(),
        b"n",
        "new files go to the RW branch"
    );
    assert_eq!(fs::read(d.l0.join("a")).unwrap(), b"l0 a");
    umount_and_check_exit(g, &d.mnt);
}

#[test]
fn lowerdir_only_is_read_only() {
    let Some(d) = dirs() else { return };
    let opts = format!("lowerdir={}:{}", d.l0.display(), d.l1.display());
    let args = vec!["-o".into(), opts.into(), d.mnt.clone().into()];
    let g = mount_daemon(&args, &d.mnt);
    assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"l0 a");
    let e = fs::write(d.mnt.join("new"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    umount_and_check_exit(g, &d.mnt);
}

#[test]
fn single_lowerdir_is_read_only() {
    let Some(d) = dirs() else { return };
    let opts = format!("lowerdir={}", d.l1.display());
    let args = vec!["-o".into(), opts.into(), d.mnt.clone().into()];
    let g = mount_daemon(&args, &d.mnt);
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    umount_and_check_exit(g, &d.mnt);
}

fn foreground(d: &Dirs) -> Mount {
    Mount::union_foreground(&d.mnt, &os(&["-o", &d.overlay_opts()])).unwrap()
}

#[test]
fn foreground_daemon_exits_on_sigterm_and_sigint() {
    let Some(d) = dirs() else { return };
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut m = foreground(&d);
        assert!(fs::read(d.mnt.join("a")).is_ok());
        let pid = m.pid().unwrap();
        unsafe { libc::kill(pid as i32, sig) };
        assert!(
            wait_until(Duration::from_secs(10), || !is_mounted(&d.mnt)),
            "signal {sig}: still mounted"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !pid_alive(pid)),
            "signal {sig}: daemon still running"
        );
        let err = m.daemon_stderr();
        m.unmount().unwrap();
        assert_eq!(err, "", "signal {sig}: stderr must stay silent");
    }
}

#[test]
fn foreground_daemon_exits_after_unionmount_umount_and_plain_umount() {
    let Some(d) = dirs() else { return };
    let mut m = foreground(&d);
    let pid = m.pid().unwrap();
    let (code, err) = unionmount_umount(&d.mnt);
    assert_eq!(code, 0, "unionmount umount: {err}");
    assert!(!is_mounted(&d.mnt));
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(pid)),
        "daemon did not exit"
    );
    m.unmount().unwrap();
    // umount(2) by someone else (e.g. `umount MNT`) also ends the daemon.
    let mut m = foreground(&d);
    let pid = m.pid().unwrap();
    support::sys::umount2(&d.mnt, 0).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(pid)),
        "daemon kept running after a plain umount"
    );
    m.unmount().unwrap();
}

#[test]
fn podman_style_options() {
    let Some(d) = dirs() else { return };
    // relative and symlinked lowerdirs, an escaped colon, empty options and
    // every option containers-storage may pass.
    let colon = d.s.dir("with:colon");
    Layer::new()
        .file("c", "colon layer")
        .build(&colon, support::Dialect::Kernel);
    symlink(&d.l1, d.s.path().join("l1-link")).unwrap();
    let opts = format!(
        "lowerdir=l0:l1-link:with\\:colon,upperdir={},workdir={},,volatile,context=\"system_u:object_r:container_file_t:s0\",noacl,fsync=0,\
         timeout=5,rw,dev,suid,exec,noatime,allow_other,default_permissions,fsname=unionmount-test-fs,max_write=131072,\
         xattr_permissions=0,",
        d.up.display(),
        d.work.display()
    );
    let mut cmd = Command::new(bin());
    cmd.current_dir(d.s.path()).arg("-o").arg(&opts).arg(&d.mnt);
    let (code, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let g = Mount::union_guard(&d.mnt, None, None);
    assert_eq!(code, 0, "podman-style options: {err}");
    assert_eq!(err, "");
    assert_eq!(fs::read(d.mnt.join("c")).unwrap(), b"colon layer");
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    let mi = mount_at(&d.mnt).unwrap();
    assert_eq!(
        mi.source, "unionmount-test-fs",
        "fsname= shows as the mount source"
    );
    drop(g);
}

/// Run a mount that must fail: non-zero exit, exactly one line on stderr,
/// nothing mounted at `mnt`.
fn expect_failure(what: &str, args: &[OsString], mnt: &Path) -> String {
    let before = mount_at(mnt).map(|m| m.dev);
    let mut cmd = Command::new(bin());
    cmd.args(args);
    let (code, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let after = mount_at(mnt).map(|m| m.dev);
    if after != before {
        // Clean up whatever was mounted by mistake, then fail.
        drop(Mount::union_guard(mnt, None, None));
        panic!(
            "{what}: something was mounted at {} (exit {code}, stderr {err:?})",
            mnt.display()
        );
    }
    assert_ne!(code, 0, "{what}: exit code 0 (stderr {err:?})");
    assert_ne!(code, -1, "{what}: hung (killed after 20 s)");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be one line, got {err:?}"
    );
    assert!(lines[0].len() > 10, "{what}: message too terse: {err:?}");
    assert_eq!(out, "", "{what}: stdout");
    err
}

#[test]
fn bad_input_fails_with_one_line_and_mounts_nothing() {
    let Some(d) = dirs() else { return };
    let ov = |l: &str, u: &Path, w: &Path| -> OsString {
        format!(
            "lowerdir={l},upperdir={},workdir={}",
            u.display(),
            w.display()
        )
        .into()
    };
    let l = format!("{}:{}", d.l0.display(), d.l1.display());
    let m: OsString = d.mnt.clone().into();
    let missing = d.s.path().join("missing");

    let e = expect_failure(
        "missing lower branch",
        &[
            "-o".into(),
            ov(&format!("{l}:{}", missing.display()), &d.up, &d.work),
            m.clone(),
        ],
        &d.mnt,
    );
    assert!(e.contains("missing"), "the message names the branch: {e}");
    let file_branch = d.s.path().join("a_file");
    fs::write(&file_branch, "not a dir").unwrap();
    expect_failure(
        "a branch that is a file",
        &[
            "-o".into(),
            ov(&format!("{l}:{}", file_branch.display()), &d.up, &d.work),
            m.clone(),
        ],
        &d.mnt,
    );
    expect_failure(
        "missing upper",
        &["-o".into(), ov(&l, &missing, &d.work), m.clone()],
        &d.mnt,
    );
    expect_failure(
        "missing mountpoint",
        &["-o".into(), ov(&l, &d.up, &d.work), missing.clone().into()],
        &missing,
    );

    let shm = tempfile::Builder::new()
        .prefix("unionmount-test-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let e = expect_failure(
        "workdir on another filesystem",
        &["-o".into(), ov(&l, &d.up, shm.path()), m.clone()],
        &d.mnt,
    );
    assert!(
        e.contains("workdir") || e.contains(&*shm.path().to_string_lossy()),
        "{e}"
    );

    let up_in_work = d.s.dir("work/upper");
    expect_failure(
        "upper inside workdir",
        &["-o".into(), ov(&l, &up_in_work, &d.work), m.clone()],
        &d.mnt,
    );
    let work_in_up = d.s.dir("up2/work");
    expect_failure(
        "workdir inside upper",
        &[
            "-o".into(),
            ov(&l, &d.s.path().join("up2"), &work_in_up),
            m.clone(),
        ],
        &d.mnt,
    );
    let inner_mnt = d.s.dir("l0/mnt_inside");
    expect_failure(
        "mountpoint inside a branch",
        &[
            "-o".into(),
            ov(&l, &d.up, &d.work),
            inner_mnt.clone().into(),
        ],
        &inner_mnt,
    );
    let under_mnt = d.s.dir("mnt/branch");
    expect_failure(
        "branch under the mountpoint",
        &[
            "-o".into(),
            ov(&format!("{l}:{}", under_mnt.display()), &d.up, &d.work),
            m.clone(),
        ],
        &d.mnt,
    );
    fs::remove_dir(&under_mnt).unwrap();
    expect_failure(
        "bad branch mode",
        &[
            "-o".into(),
            "cow".into(),
            format!("{}=RW:{}=XX", d.up.display(), d.l0.display()).into(),
            m.clone(),
        ],
        &d.mnt,
    );
    expect_failure(
        "no lowerdir",
        &[
            "-o".into(),
            format!("upperdir={},workdir={}", d.up.display(), d.work.display()).into(),
            m.clone(),
        ],
        &d.mnt,
    );
    for typo in ["uperdir=/x", "lowerdirs=/x", "noexce", "bogus=/a/path"] {
        expect_failure(
            &format!("unknown option {typo} that ignoring would change the mount"),
            &[
                "-o".into(),
                format!("{},{typo}", ov(&l, &d.up, &d.work).to_string_lossy()).into(),
                m.clone(),
            ],
            &d.mnt,
        );
    }

    // A busy mountpoint: something is mounted there already.
    let other = Mount::kernel(
        &d.mnt,
        &format!("lowerdir={}:{}", d.l0.display(), d.l1.display()),
    )
    .unwrap();
    expect_failure(
        "busy mountpoint",
        &["-o".into(), ov(&l, &d.up, &d.work), m.clone()],
        &d.mnt,
    );
    drop(other);
    assert!(!is_mounted(&d.mnt));
    // Nothing left anywhere under the scratch dir.
    assert!(support::mount::mounts_under(d.s.path()).is_empty());
    // The workdir and upper are still usable afterwards.
    let g = Mount::union_foreground(&d.mnt, &os(&["-o", &d.overlay_opts()])).unwrap();
    assert!(d.mnt.join("a").exists());
    drop(g);
}

/// Processes a test started outside the mount guards: killed at the end,
/// even when an assertion fails first.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

/// A tmpfs that is not ours; detached on drop if a test left it mounted.
struct ForeignMount(PathBuf);

impl Drop for ForeignMount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = support::sys::umount2(&self.0, libc::MNT_DETACH);
        }
    }
}

/// `unionmount umount` on a path with nothing mounted names it and says so
/// (not "Invalid argument"); on a mount that is not unionmount's it refuses
/// with the mount's type, unless `--force` / `-f`.
#[test]
fn umount_refuses_what_is_not_a_unionmount_mount() {
    let Some(d) = dirs() else { return };
    let run = |args: &[&str], p: &Path| {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg(p);
        run_with_timeout(&mut cmd, Duration::from_secs(20))
    };
    let (code, out, err) = run(&["umount"], &d.mnt);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!("unionmount: {}: not mounted\n", d.mnt.display())
    );

    support::sys::mount_tmpfs(&d.mnt, "size=1m").unwrap();
    let _guard = ForeignMount(d.mnt.clone());
    let (code, _, err) = run(&["umount"], &d.mnt);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&d.mnt.display().to_string()), "{err}");
    assert!(err.contains("tmpfs") && err.contains("--force"), "{err}");
    assert!(is_mounted(&d.mnt), "a tmpfs not ours was unmounted");
    for flag in ["--force", "-f"] {
        let (code, _, err) = run(&["umount", flag], &d.mnt);
        assert_eq!(code, 0, "umount {flag}: {err}");
        assert!(!is_mounted(&d.mnt), "umount {flag}: still mounted");
        support::sys::mount_tmpfs(&d.mnt, "size=1m").unwrap();
    }
}

fn mount_namespace(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

#[test]
fn an_old_daemon_never_unmounts_a_newer_mount_at_its_path() {
    let Some(d) = dirs() else { return };
    let [up2, work2] = d.s.dirs(["up2", "work2"]);
    let newer_opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        d.l0.display(),
        up2.display(),
        work2.display()
    );
    // The old daemon ends on its own (its last mount copy goes), then by a signal.
    for signal in [None, Some(libc::SIGTERM)] {
        let st = Command::new(bin())
            .args(["-o", &d.overlay_opts()])
            .arg(&d.mnt)
            .status()
            .unwrap();
        assert!(st.success());
        let old = pids_with_arg(&d.mnt);
        assert_eq!(old.len(), 1, "{old:?}");
        let old = old[0];
        // Another mount namespace holds a copy: the old daemon outlives its
        // unmount here, serving that copy.
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "unchanged", "sleep", "60"])
            .spawn()
            .expect("unshare (util-linux)");
        let mut cleanup = KillOnDrop(vec![old, holder.id()]);
        assert!(wait_until(Duration::from_secs(10), || {
            mount_namespace(holder.id()) != mount_namespace(std::process::id())
        }));
        let (code, err) = unionmount_umount(&d.mnt);
        assert_eq!(code, 0, "{err}");
        assert!(!is_mounted(&d.mnt));
        assert!(
            pid_alive(old),
            "the copy should keep the old daemon serving"
        );
        let mut newer = Mount::union_foreground(&d.mnt, &os(&["-o", &newer_opts])).unwrap();
        match signal {
            None => unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) },
            Some(sig) => unsafe { libc::kill(old as i32, sig) },
        };
        assert!(
            wait_until(Duration::from_secs(10), || !pid_alive(old)),
            "{signal:?}: the old daemon did not exit"
        );
        assert!(
            is_mounted(&d.mnt),
            "{signal:?}: the old daemon unmounted the newer mount at its path"
        );
        assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"l0 a");
        assert_eq!(newer.daemon_stderr(), "");
        newer.unmount().unwrap();
        drop(cleanup.0.drain(..).collect::<Vec<_>>());
        unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) };
        let mut holder = holder;
        let _ = holder.wait();
    }
}

#[test]
fn an_upper_or_workdir_in_use_is_refused_naming_its_mount() {
    let Some(d) = dirs() else { return };
    let [mnt2, up2, work2] = d.s.dirs(["mnt2", "up2", "work2"]);
    let first = mount_daemon(
        &os(&["-o", &d.overlay_opts(), d.mnt.to_str().unwrap()]),
        &d.mnt,
    );
    fs::write(d.mnt.join("mine"), "first").unwrap();
    let lower = format!("lowerdir={}", d.l0.display());
    let up =
        |u: &Path, w: &Path| format!("{lower},upperdir={},workdir={}", u.display(), w.display());
    for (what, opts, busy) in [
        ("the same upper and workdir", up(&d.up, &d.work), "upper"),
        (
            "the same upper, another workdir",
            up(&d.up, &work2),
            "upper",
        ),
        (
            "another upper, the same workdir",
            up(&up2, &d.work),
            "workdir",
        ),
    ] {
        let err = expect_failure(what, &os(&["-o", &opts, mnt2.to_str().unwrap()]), &mnt2);
        assert!(
            err.contains(&format!("{busy} ")) && err.contains("is in use by"),
            "{what}: {err}"
        );
        if what != "the same upper, another workdir" {
            assert!(
                err.contains(d.mnt.to_str().unwrap()),
                "{what}: names the mount: {err}"
            );
        }
    }
    // The first mount was left alone: its workdir was not emptied under it.
    fs::write(d.mnt.join("mine"), "still first").unwrap();
    assert_eq!(fs::read(d.up.join("mine")).unwrap(), b"still first");
    // Unmounted, the upper is free again at once, whenever its daemon exits.
    umount_and_check_exit(first, &d.mnt);
    let again = mount_daemon(
        &os(&["-o", &d.overlay_opts(), mnt2.to_str().unwrap()]),
        &mnt2,
    );
    assert_eq!(fs::read(mnt2.join("mine")).unwrap(), b"still first");
    drop(again);
}

/// `unionmount -o OPTS MNT` succeeded; no guard (the caller's next mount at
/// MNT has one).
fn mount_unguarded(opts: &str, mnt: &Path) {
    let st = Command::new(bin())
        .args(["-o", opts])
        .arg(mnt)
        .status()
        .unwrap();
    assert!(st.success() && is_mounted(mnt));
}

#[test]
fn a_plain_umount_then_a_mount_of_the_same_upper_succeeds() {
    let Some(d) = dirs() else { return };
    for _ in 0..5 {
        mount_unguarded(&d.overlay_opts(), &d.mnt);
        // umount(2) returns before the daemon has seen it and let go.
        rustix::mount::unmount(&d.mnt, rustix::mount::UnmountFlags::empty()).unwrap();
        let next = mount_daemon(
            &os(&["-o", &d.overlay_opts(), d.mnt.to_str().unwrap()]),
            &d.mnt,
        );
        umount_and_check_exit(next, &d.mnt);
    }
}

#[test]
fn a_killed_daemon_leaves_its_upper_free() {
    let Some(d) = dirs() else { return };
    let [mnt2] = d.s.dirs(["mnt2"]);
    let first = mount_daemon(
        &os(&["-o", &d.overlay_opts(), d.mnt.to_str().unwrap()]),
        &d.mnt,
    );
    let pids = pids_with_arg(&d.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pids[0])));
    let second = mount_daemon(
        &os(&["-o", &d.overlay_opts(), mnt2.to_str().unwrap()]),
        &mnt2,
    );
    fs::write(mnt2.join("f"), "x").unwrap();
    drop(second);
    drop(first);
}

#[test]
fn unknown_options_are_ignored_with_one_warning_line() {
    let Some(d) = dirs() else { return };
    let opts = format!(
        "{},bogus_opt=1,x-systemd.device-timeout=5,_netdev",
        d.overlay_opts()
    );
    let mut cmd = Command::new(bin());
    cmd.arg("-o").arg(&opts).arg(&d.mnt);
    let (code, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let g = Mount::union_guard(&d.mnt, None, None);
    assert_eq!(code, 0, "unknown options: {err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one warning line: {err:?}");
    assert!(
        lines[0].contains("warning")
            && lines[0].contains("'bogus_opt'")
            && lines[0].contains("'_netdev'"),
        "{err:?}"
    );
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    drop(g);
}

/// `mount -t fuse 'BIN#SRC' MNT -o …`: mount(8) and its FUSE helper start
/// the daemon with the options as a user wrote them in fstab; the VFS ones
/// end up as flags of the mount and unknown ones are ignored.
#[test]
fn mount_8_with_vfs_and_unknown_options() {
    let helper = [
        "/sbin/mount.fuse3",
        "/usr/sbin/mount.fuse3",
        "/sbin/mount.fuse",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let missing: Vec<String> = if helper {
        Vec::new()
    } else {
        vec!["mount.fuse3 (package fuse3) not installed".into()]
    };
    if !support::can_run("mount(8) with the FUSE helper", &missing) {
        return;
    }
    let Some(d) = dirs() else { return };
    let opts = format!(
        "{},noexec,nodiratime,noatime,dirsync,lazytime,bogus",
        d.overlay_opts()
    );
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse"])
        .arg(format!("{}#unionmount", bin()))
        .arg(&d.mnt)
        .arg("-o")
        .arg(&opts);
    let (code, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let g = Mount::union_guard(&d.mnt, None, None);
    assert_eq!(code, 0, "mount(8): {err}");
    assert!(
        err.contains("'bogus'"),
        "the warning reaches the user: {err:?}"
    );
    let mi = mount_at(&d.mnt).unwrap();
    assert_eq!(mi.fstype, "fuse.unionmount");
    for w in ["dirsync", "lazytime"] {
        assert!(mi.super_opts.split(',').any(|o| o == w), "{w}: {mi:?}");
    }
    let c = support::sys::cstr(&d.mnt);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let want = libc::ST_NOEXEC | libc::ST_NODIRATIME | libc::ST_NOATIME;
    assert_eq!(
        st.f_flag & want,
        want,
        "flags of the mount: {:#x}",
        st.f_flag
    );
    assert_eq!(fs::read(d.mnt.join("b")).unwrap(), b"l1 b");
    drop(g);
}

/// `-o io_uring` where the kernel does not offer FUSE over io_uring: one
/// line saying so, nothing mounted (the default would use /dev/fuse).
#[test]
fn io_uring_required_but_not_offered_is_refused() {
    let Some(d) = dirs() else { return };
    let Some(_off) = support::io_uring_off() else {
        return;
    };
    let args = os(&["-o", &format!("{},io_uring", d.overlay_opts())]);
    let mut args = args;
    args.push(d.mnt.clone().into());
    let err = expect_failure("io_uring without the kernel's switch", &args, &d.mnt);
    assert!(
        err.contains("io_uring") && err.contains("enable_uring"),
        "{err}"
    );
}
