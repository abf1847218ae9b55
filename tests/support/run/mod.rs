//! Shared helpers for the runner tests (`unionmount run` and friends).
//!
//! `Env` is a scratch directory holding a store with one small image, `t`,
//! built from busybox-static: `/bin/busybox` and its applet links, an
//! `/etc/passwd` with `root` and `app` (1001:1001, home `/home/app`) and an
//! `/etc/motd` reading `orig`. Dropping an `Env` cleans whatever a test left,
//! even when it failed: runners it started are killed, every container is
//! removed with `unionmount rm -f` (which ends union daemons and removes
//! cgroups), mounts under the directory are detached, the directory goes.
//!
//! Without root, /dev/fuse or busybox the tests say why and pass, except under
//! `CI=true`, where they fail.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The unionmount binary under test.
pub use super::{bin, under_ci};

const BUSYBOX: &str = "/bin/busybox";

/// Whether this machine can run the runner tests. Under `CI=true` a missing
/// requirement is a loud failure; elsewhere the test prints why and returns.
#[must_use]
pub fn require_runner() -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("not running as root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing".to_string());
    }
    if !fs::read(BUSYBOX).is_ok_and(|b| is_static_elf(&b)) {
        missing.push(format!("{BUSYBOX} (busybox-static) is missing"));
    }
    super::can_run("runner tests", &missing)
}

/// A 64-bit ELF without a program interpreter (PT_INTERP): runs in any root.
fn is_static_elf(b: &[u8]) -> bool {
    let num = |at: usize, len: usize| -> Option<usize> {
        let bytes = b.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0usize, |n, x| (n << 8) | *x as usize),
        )
    };
    let check = || -> Option<bool> {
        if b.get(..5)? != b"\x7fELF\x02" {
            return Some(false);
        }
        let (phoff, phentsize, phnum) = (num(0x20, 8)?, num(0x36, 2)?, num(0x38, 2)?);
        for i in 0..phnum {
            if num(phoff + i * phentsize, 4)? == 3 {
                return Some(false);
            }
        }
        Some(true)
    };
    check().unwrap_or(false)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What a command printed and how it ended (128+N for a signal N).
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o
                .status
                .code()
                .or_else(|| o.status.signal().map(|s| 128 + s))
                .unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A scratch directory with a store holding the image `t`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    children: Mutex<Vec<Child>>,
    /// Other stores a test made (`other_store`): cleaned like the first.
    others: Mutex<Vec<PathBuf>>,
}

impl Env {
    /// None when the machine cannot run these tests (and this is not CI).
    pub fn new() -> Option<Env> {
        if !require_runner() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("unionmount-run-")
            .tempdir()
            .expect("scratch dir");
        let root = fs::canonicalize(dir.path()).expect("canonical scratch dir");
        let env = Env {
            store: root.join("store"),
            dir,
            children: Mutex::new(Vec::new()),
            others: Mutex::new(Vec::new()),
        };
        let rootfs = root.join("rootfs");
        build_rootfs(&rootfs);
        let out = env.um(&["image", "import", rootfs.to_str().unwrap(), "--tag", "t"]);
        assert_eq!(out.code, 0, "image import: {out:?}");
        Some(env)
    }

    pub fn root(&self) -> PathBuf {
        self.store.parent().unwrap().to_path_buf()
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_in(&self.store, args)
    }

    fn command_in(&self, store: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(args[0]);
        // `--store` belongs to the subcommand of `image` and `container`.
        if args[0] != "image" && args[0] != "container" {
            cmd.arg("--store").arg(store);
            cmd.args(&args[1..]);
        } else {
            cmd.arg(args[1]).arg("--store").arg(store);
            cmd.args(&args[2..]);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Another (empty) store under the scratch directory, cleaned on drop
    /// like the first.
    pub fn other_store(&self, name: &str) -> PathBuf {
        let p = self.root().join(name);
        self.others.lock().unwrap().push(p.clone());
        p
    }

    /// `um` on another store.
    pub fn um_in(&self, store: &Path, args: &[&str]) -> Out {
        finish(self.command_in(store, args), args)
    }

    /// `unionmount ARGS…` without `--store`, with extra environment
    /// variables (`UNIONMOUNT_STORE`, say).
    pub fn um_bare(&self, vars: &[(&str, &str)], args: &[&str]) -> Out {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        finish(cmd, args)
    }

    /// Run `unionmount ARGS…` (with this store) to the end; 120 s at most.
    pub fn um(&self, args: &[&str]) -> Out {
        self.um_env(&[], args)
    }

    /// `um` with extra environment variables for unionmount itself.
    pub fn um_env(&self, vars: &[(&str, &str)], args: &[&str]) -> Out {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        finish(cmd, args)
    }

    /// Start `unionmount ARGS…` in the background; its pid. The Env kills and
    /// reaps it when dropped, if it still runs.
    pub fn spawn(&self, args: &[&str]) -> u32 {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting unionmount");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Wait for a background runner to end; its exit status (128+N for a signal).
    pub fn wait(&self, pid: u32, secs: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            {
                let mut kids = self.children.lock().unwrap();
                if let Some(i) = kids.iter().position(|c| c.id() == pid) {
                    if let Some(st) = kids[i].try_wait().expect("try_wait") {
                        let _ = kids.remove(i).wait();
                        return st.code().or_else(|| st.signal().map(|s| 128 + s)).unwrap();
                    }
                } else {
                    panic!("pid {pid} is not a runner of this test");
                }
            }
            assert!(
                Instant::now() < deadline,
                "runner {pid} still runs after {secs} s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory of the container named `name`.
    pub fn container_dir(&self, name: &str) -> Option<PathBuf> {
        let want = format!("\"name\": \"{name}\"");
        fs::read_dir(self.store.join("containers"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| fs::read_to_string(p.join("config.json")).is_ok_and(|t| t.contains(&want)))
    }

    /// Every container directory of the store.
    pub fn containers(&self) -> Vec<PathBuf> {
        fs::read_dir(self.store.join("containers"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The image's single layer directory.
    pub fn layer(&self) -> PathBuf {
        let mut layers: Vec<_> = fs::read_dir(self.store.join("layers"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(layers.len(), 1, "{layers:?}");
        layers.remove(0)
    }

    /// Host mounts below the scratch directory.
    pub fn host_mounts(&self) -> Vec<String> {
        mounts_under(&self.root())
    }

    /// Live processes (not zombies) whose command line names the scratch directory.
    pub fn processes(&self) -> Vec<i32> {
        processes_naming(&self.root().to_string_lossy())
    }
}

/// Run a prepared command to the end; 120 s at most.
fn finish(mut cmd: Command, args: &[&str]) -> Out {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting unionmount");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(o)) => o.into(),
        _ => {
            kill(pid as i32, libc::SIGKILL);
            panic!("unionmount {args:?}: timed out or failed to run");
        }
    }
}

/// `rustix` has no "send this raw signal number"; tests send the usual ones.
pub fn kill(pid: i32, sig: i32) {
    if let (Some(p), Some(s)) = (
        rustix::process::Pid::from_raw(pid),
        rustix::process::Signal::from_named_raw(sig),
    ) {
        let _ = rustix::process::kill_process(p, s);
    }
}

/// Poll `cond` every 20 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&d))
        .map(str::to_string)
        .collect()
}

pub fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    !cmd.is_empty() && contains(&cmd, needle.as_bytes())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Cgroup directories a container id would have.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    ["memory", "pids", "unified", ""]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(format!("unionmount-{id}"))
        })
        .filter(|p| p.exists())
        .collect()
}

/// A busybox root filesystem with a passwd file and a file to change.
fn build_rootfs(root: &Path) {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "home/app", "tmp",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let p = root.join(applet);
        if applet != "bin/busybox" && fs::symlink_metadata(&p).is_err() {
            symlink("/bin/busybox", &p).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:1001:\n").unwrap();
    fs::write(root.join("etc/motd"), "orig\n").unwrap();
}

impl Drop for Env {
    fn drop(&mut self) {
        let kids: Vec<Child> =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for mut c in kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut stores = vec![self.store.clone()];
        stores.extend(std::mem::take(
            &mut *self.others.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        let in_stores: Vec<(PathBuf, PathBuf)> = stores
            .iter()
            .flat_map(|st| {
                fs::read_dir(st.join("containers"))
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| (st.clone(), e.path()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        for (store, dir) in in_stores {
            let id = dir.file_name().unwrap().to_string_lossy().into_owned();
            let _ = Command::new(bin())
                .args(["rm", "-f", "--store"])
                .arg(&store)
                .arg(&id)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            for cg in cgroup_dirs(&id) {
                let _ = fs::remove_dir(cg);
            }
        }
        for pid in self.processes() {
            kill(pid, libc::SIGKILL);
        }
        let mut left = self.host_mounts();
        left.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in left {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}
