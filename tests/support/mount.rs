//! Scratch directories and mount guards that always clean up, even when a
//! test panics: a kernel overlayfs mount or a unionmount mount, unmounted on
//! Drop, the daemon waited for (and killed if it will not go).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::bin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::sys;

/// The unionmount binary under test.
/// Whether this machine can run mount tests. Under `CI=true` a missing
/// requirement is a loud failure; elsewhere the test prints why and returns.
#[must_use]
pub fn require_mounts() -> bool {
    let mut missing = Vec::new();
    if sys::geteuid() != 0 {
        missing.push("not running as root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing".to_string());
    }
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        missing.push("kernel overlayfs is not available (modprobe overlay)".to_string());
    }
    super::can_run("mount tests", &missing)
}

/// Which implementation plays "the subject". `UNIONMOUNT_TEST_SUBJECT=kernel`
/// makes it kernel overlayfs too, to check the harness against itself.
pub fn subject_is_kernel() -> bool {
    std::env::var("UNIONMOUNT_TEST_SUBJECT").is_ok_and(|v| v == "kernel" || v == "kernel-raw")
}

/// `UNIONMOUNT_TEST_SUBJECT=kernel-raw`: the kernel subject gets the layers in
/// the dialect under test, which it does not understand.
pub fn subject_keeps_dialect() -> bool {
    std::env::var("UNIONMOUNT_TEST_SUBJECT").is_ok_and(|v| v == "kernel-raw")
}

/// Seconds after which a hung unionmount mount is aborted so the test fails
/// instead of hanging (`UNIONMOUNT_TEST_TIMEOUT`, default 180).
fn watchdog_timeout() -> Duration {
    let secs = std::env::var("UNIONMOUNT_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// A temporary directory under /var/tmp (a disk filesystem with xattrs),
/// removed on Drop after detaching anything still mounted inside it.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let base = if Path::new("/var/tmp").is_dir() {
            "/var/tmp"
        } else {
            "/tmp"
        };
        sweep_stale_scratch(Path::new(base));
        let dir = tempfile::Builder::new()
            .prefix("unionmount-test-")
            .tempdir_in(base)
            .expect("create scratch dir");
        let path = dir.path().canonicalize().unwrap();
        fs::write(path.join(OWNER_FILE), std::process::id().to_string()).unwrap();
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/rel`, created as a directory.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Several directories at once, as `dir` makes them.
    pub fn dirs<const N: usize>(&self, rels: [&str; N]) -> [PathBuf; N] {
        rels.map(|r| self.dir(r))
    }
}

const OWNER_FILE: &str = ".owner-pid";

/// A test process killed by a signal (a CI timeout, a ^C) never runs its
/// guards: the first scratch dir of every test process detaches the mounts
/// left under scratch dirs whose owner process is gone, and removes them.
fn sweep_stale_scratch(base: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = fs::read_dir(base) else { return };
        for e in rd.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .starts_with("unionmount-test-")
            {
                continue;
            }
            let dir = e.path();
            let Some(pid) = fs::read_to_string(dir.join(OWNER_FILE))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            for m in mounts_under(&dir).into_iter().rev() {
                eprintln!(
                    "removing a mount left by dead test process {pid}: {}",
                    m.display()
                );
                abort_fuse_connection(&m);
                let _ = sys::umount2(&m, libc::MNT_DETACH);
            }
            if mounts_under(&dir).is_empty() {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    });
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Never let remove_dir_all walk into a live mount (it would delete through it).
        for m in mounts_under(&self.path).into_iter().rev() {
            eprintln!("scratch cleanup: detaching leftover mount {}", m.display());
            abort_fuse_connection(&m);
            let _ = sys::umount2(&m, libc::MNT_DETACH);
        }
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            if let Err(e) = d.close() {
                // An unremovable leftover is a bug of the filesystem under test
                // (or of the test); say so rather than hide it.
                eprintln!("scratch cleanup: cannot remove {}: {e}", p.display());
            }
        }
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub dev: (u32, u32),
    pub root: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        if f.len() < 5 || g.len() < 3 {
            continue;
        }
        let (maj, min) = f[2].split_once(':').unwrap_or(("0", "0"));
        out.push(MountInfo {
            dev: (maj.parse().unwrap_or(0), min.parse().unwrap_or(0)),
            root: unescape_mountinfo(f[3]),
            mountpoint: PathBuf::from(unescape_mountinfo(f[4])),
            fstype: g[0].to_string(),
            source: unescape_mountinfo(g[1]),
            super_opts: g[2].to_string(),
        });
    }
    out
}

/// The topmost mount at exactly `p`, if any.
pub fn mount_at(p: &Path) -> Option<MountInfo> {
    mountinfo().into_iter().rev().find(|m| m.mountpoint == p)
}

pub fn is_mounted(p: &Path) -> bool {
    mount_at(p).is_some()
}

/// Mount points at or below `p`, in mount order.
pub fn mounts_under(p: &Path) -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(p))
        .map(|m| m.mountpoint)
        .collect()
}

/// Abort the FUSE connection mounted at `p` (all its requests fail with
/// ENOTCONN): the way out of a hung daemon. Does nothing for other mounts.
pub fn abort_fuse_connection(p: &Path) {
    if let Some(m) = mount_at(p)
        && m.fstype.starts_with("fuse")
    {
        let id = (m.dev.0 << 20) | m.dev.1;
        let _ = fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
    }
}

/// Run a command with a time limit; returns (exit code or -1, stdout, stderr).
/// `unionmount umount MNT`: its exit code and stderr. EBUSY is retried for
/// a few seconds: another thread of this test process may be starting a
/// program, and until that child execs it holds a copy of every descriptor,
/// a file just read through the mount included, which keeps the mount busy
/// (the kernel case below retries the same way).
pub fn unionmount_umount(mnt: &Path) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut cmd = Command::new(bin());
        cmd.arg("umount").arg(mnt);
        let (code, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
        let busy = err.contains("Device or resource busy");
        if code == 0 || !busy || Instant::now() > deadline {
            return (code, err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        match child.try_wait().unwrap() {
            Some(st) => break st.code().unwrap_or(-1),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // A daemon that inherited the pipes keeps them open: don't wait forever.
    let join = |t: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(2);
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            String::from_utf8_lossy(&t.join().unwrap()).into_owned()
        } else {
            String::from("<output still open: a daemon kept stdout/stderr>")
        }
    };
    let out = join(t_out);
    let err = join(t_err);
    (code, out, err)
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Wait until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Options for a kernel overlayfs reference mount.
pub fn kernel_opts(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut s = format!("lowerdir={}", l.join(":"));
    if let Some((u, w)) = upper {
        s += &format!(
            ",upperdir={},workdir={},redirect_dir=on,index=off,metacopy=off",
            u.display(),
            w.display()
        );
    }
    s
}

/// The `-o` value for unionmount in the overlay syntax.
pub fn union_opts(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> String {
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut s = format!("lowerdir={}", l.join(":"));
    if let Some((u, w)) = upper {
        s += &format!(",upperdir={},workdir={}", u.display(), w.display());
    }
    s
}

enum Kind {
    Kernel,
    Union {
        child: Option<Child>,
        stderr_file: Option<PathBuf>,
        watchdog_stop: Arc<AtomicBool>,
    },
}

/// A live mount; Drop unmounts it and ends its daemon.
pub struct Mount {
    pub mnt: PathBuf,
    kind: Kind,
    unmounted: bool,
}

impl Mount {
    /// Kernel overlayfs with `opts` (see `kernel_opts`).
    pub fn kernel(mnt: &Path, opts: &str) -> std::io::Result<Mount> {
        sys::mount_overlay(mnt, opts)?;
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            kind: Kind::Kernel,
            unmounted: false,
        })
    }

    /// `unionmount -f ARGS… MNT`, waiting until the mount is live. The daemon's
    /// stderr goes to `MNT.stderr` beside the mountpoint.
    pub fn union_foreground(mnt: &Path, args: &[OsString]) -> Result<Mount, String> {
        Mount::union_foreground_wrapped(mnt, &[], args)
    }

    /// `WRAPPER… unionmount -f ARGS… MNT` (e.g. `prlimit --nofile=256:256`), as
    /// `union_foreground`. The wrapper must exec the daemon (keep its pid), so
    /// that `kill_daemon` and the guard reach the daemon itself.
    pub fn union_foreground_wrapped(
        mnt: &Path,
        wrapper: &[&str],
        args: &[OsString],
    ) -> Result<Mount, String> {
        let errf = mnt.with_extension("stderr");
        let file = fs::File::create(&errf).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("-f").args(args).arg(mnt);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let mut child = cmd.spawn().map_err(|e| format!("spawn unionmount: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(m) = mount_at(mnt)
                && m.fstype.starts_with("fuse")
            {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                let err = fs::read_to_string(&errf).unwrap_or_default();
                return Err(format!(
                    "unionmount -f {:?} {} exited ({st}) before mounting: {}",
                    args,
                    mnt.display(),
                    err.trim()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = sys::umount2(mnt, libc::MNT_DETACH);
                return Err(format!(
                    "unionmount -f {:?} {} did not mount within 20 s",
                    args,
                    mnt.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Mount::union_guard(mnt, Some(child), Some(errf)))
    }

    /// A tmpfs at `mnt` with `opts` (e.g. "size=8m"), unmounted on Drop.
    pub fn tmpfs(mnt: &Path, opts: &str) -> std::io::Result<Mount> {
        sys::mount_tmpfs(mnt, opts)?;
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            kind: Kind::Kernel,
            unmounted: false,
        })
    }

    /// A filesystem made by `mkfs` (program and options) in a sparse image
    /// of `size` bytes at `image`, loop-mounted at `mnt` by mount(8) (its
    /// loop device goes with the mount), unmounted on Drop. Err says which
    /// step failed (a missing mkfs, a kernel without the filesystem).
    pub fn loop_fs(image: &Path, mkfs: &[&str], size: u64, mnt: &Path) -> Result<Mount, String> {
        let f = fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(size)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        };
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(mnt))?;
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            kind: Kind::Kernel,
            unmounted: false,
        })
    }

    /// A filesystem made by `mkfs` in a sparse image of `size` bytes at
    /// `image`, mounted at `mnt` by a FUSE driver: `driver` is its program
    /// and options, given the source then `mnt`. With `block` the source is
    /// a loop device (detached lazily, so it goes when the driver lets it
    /// go), else the image itself. Unmounted on Drop.
    pub fn fuse_fs(
        image: &Path,
        mkfs: &[&str],
        size: u64,
        driver: &[&str],
        block: bool,
        mnt: &Path,
    ) -> Result<Mount, String> {
        let run = |cmd: &mut Command| -> Result<String, String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let f = fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(size)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(image))?;
        let source = if block {
            PathBuf::from(run(Command::new("losetup")
                .args(["-f", "--show"])
                .arg(image))?)
        } else {
            image.to_path_buf()
        };
        let mounted = run(Command::new(driver[0])
            .args(&driver[1..])
            .arg(&source)
            .arg(mnt));
        if block {
            let _ = Command::new("losetup").arg("-d").arg(&source).status();
        }
        mounted?;
        if !super::wait_until(Duration::from_secs(10), || mount_at(mnt).is_some()) {
            return Err(format!("{} did not mount at {}", driver[0], mnt.display()));
        }
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            kind: Kind::Kernel,
            unmounted: false,
        })
    }

    /// `unionmount ARGS… MNT` (daemonizing); fails unless it exits 0 with the mount live.
    pub fn union_daemon(mnt: &Path, args: &[OsString]) -> Result<Mount, String> {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg(mnt);
        let (code, _out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
        let live = mount_at(mnt).is_some_and(|m| m.fstype.starts_with("fuse"));
        let guard = if live {
            Some(Mount::union_guard(mnt, None, None))
        } else {
            None
        };
        if code != 0 || !live {
            return Err(format!(
                "unionmount {args:?} {}: exit {code}, mounted: {live}, stderr: {}",
                mnt.display(),
                err.trim()
            ));
        }
        Ok(guard.unwrap())
    }

    /// Take charge of a unionmount mount someone else started (e.g. a CLI test).
    pub fn union_guard(mnt: &Path, child: Option<Child>, stderr_file: Option<PathBuf>) -> Mount {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, mnt2) = (stop.clone(), mnt.to_path_buf());
        let limit = watchdog_timeout();
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !stop2.load(Ordering::Relaxed) {
                eprintln!(
                    "WATCHDOG: unionmount mount {} still in use after {limit:?}; aborting its FUSE connection",
                    mnt2.display()
                );
                abort_fuse_connection(&mnt2);
            }
        });
        Mount {
            mnt: mnt.to_path_buf(),
            kind: Kind::Union {
                child,
                stderr_file,
                watchdog_stop: stop,
            },
            unmounted: false,
        }
    }

    pub fn is_fuse(&self) -> bool {
        matches!(self.kind, Kind::Union { .. })
    }

    /// Pid of a foreground daemon started by this guard.
    pub fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Union { child: Some(c), .. } => Some(c.id()),
            _ => None,
        }
    }

    /// What the daemon wrote to stderr so far (foreground mounts only).
    pub fn daemon_stderr(&self) -> String {
        match &self.kind {
            Kind::Union {
                stderr_file: Some(f),
                ..
            } => fs::read_to_string(f).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Kill -9 the foreground daemon (crash tests). The mount stays until Drop.
    pub fn kill_daemon(&mut self) {
        if let Kind::Union { child: Some(c), .. } = &mut self.kind {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmount now and check that it worked and the daemon exited; returns
    /// an error description instead of panicking.
    pub fn unmount(&mut self) -> Result<(), String> {
        if self.unmounted {
            return Ok(());
        }
        self.unmounted = true;
        let mut problems = Vec::new();
        match &mut self.kind {
            Kind::Kernel => {
                // A file closed an instant ago may still pin the mount (its
                // last reference dropped later): retry EBUSY for a while.
                let mut result = sys::umount2(&self.mnt, 0);
                let deadline = Instant::now() + Duration::from_secs(3);
                while result
                    .as_ref()
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                    result = sys::umount2(&self.mnt, 0);
                }
                if let Err(e) = result {
                    problems.push(format!("umount {}: {e}", self.mnt.display()));
                    let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                }
            }
            Kind::Union {
                child,
                watchdog_stop,
                ..
            } => {
                watchdog_stop.store(true, Ordering::Relaxed);
                if is_mounted(&self.mnt) {
                    let (code, err) = unionmount_umount(&self.mnt);
                    if code != 0 || is_mounted(&self.mnt) {
                        problems.push(format!(
                            "unionmount umount {}: exit {code}: {}",
                            self.mnt.display(),
                            err.trim()
                        ));
                        abort_fuse_connection(&self.mnt);
                        if sys::umount2(&self.mnt, 0).is_err() {
                            let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                        }
                    }
                }
                if let Some(c) = child {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        match c.try_wait() {
                            Ok(Some(_)) | Err(_) => break,
                            Ok(None) if Instant::now() > deadline => {
                                problems.push(format!(
                                    "daemon {} did not exit after unmount; killed",
                                    c.id()
                                ));
                                let _ = c.kill();
                                let _ = c.wait();
                                break;
                            }
                            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("mount guard: {e}");
        }
    }
}
