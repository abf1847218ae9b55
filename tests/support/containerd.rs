//! A private containerd for the snapshotter tests (Debian's, with the
//! runc shim): its own root, state and socket under a scratch directory,
//! and a `proxy_plugins` entry naming the test's snapshotter. `ctr` and
//! containerd get the test binary's directory first on PATH, because
//! containerd mounts a `fuse3.unionmount` snapshot through `mount.fuse3`,
//! which runs `unionmount`. Stopped by pid when dropped, with every mount
//! under its directories undone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::bin;
use super::snapshotter::NAME;

pub struct Containerd {
    dir: PathBuf,
    /// A namespace of its own: runc keeps container state per namespace
    /// in one directory for every containerd of the machine.
    pub ns: String,
    child: Option<Child>,
}

static INSTANCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn path_with_bin() -> String {
    let dir = Path::new(bin()).parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

impl Containerd {
    /// Start one under `dir`, with the snapshotter listening on `snapshotter`.
    pub fn start(dir: &Path, snapshotter: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [proxy_plugins.{NAME}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                snapshotter.display(),
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path_with_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd");
        let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let c = Containerd {
            dir: dir.to_path_buf(),
            ns: format!("um-test-{}-{n}", std::process::id()),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd: not up in 30 s: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a SOCKET -n NS ARGS`, not run yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", &self.ns])
            .args(args)
            .env("PATH", path_with_bin())
            .stdin(Stdio::null());
        c
    }

    /// `ctr -a SOCKET -n NS ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ctr runs")
    }

    fn lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.ctr(args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `ctr ARGS`, which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first: their shims and runc state outlive
        // containerd otherwise.
        for id in self.lines(&["tasks", "ls", "-q"]) {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", &id]);
            let _ = self.ctr(&["tasks", "rm", "-f", &id]);
        }
        for id in self.lines(&["containers", "ls", "-q"]) {
            let _ = self.ctr(&["containers", "rm", &id]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in super::mount::mounts_under(&self.dir).into_iter().rev() {
            let _ = super::sys::umount2(&m, libc::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.ns));
    }
}
