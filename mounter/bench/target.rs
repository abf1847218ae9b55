//! Targets and their instances: a fresh upper, workdir and mountpoint per
//! timed run, mounted by the target's own command and unmounted (and
//! removed) by a guard whatever happens.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::workload::run_cmd;
use crate::options::{OverlayOptions, UpperDirs};

pub enum Kind {
    /// The binary, and options added to its mount (the transport).
    Unionmount(PathBuf, &'static str),
    Overlay,
    FuseOverlayfs(PathBuf),
    UnionfsFuse(PathBuf),
    Dir,
    Custom(String),
}

pub struct Target {
    pub name: String,
    pub kind: Kind,
}

/// What `--compare` installs when missing: the FUSE peers, git for the git
/// workload and XFS's tools for the FICLONE row (program, Debian package).
const PEERS: &[(&str, &str)] = &[
    ("fuse-overlayfs", "fuse-overlayfs"),
    ("unionfs-fuse", "unionfs-fuse"),
    ("git", "git"),
    ("mkfs.xfs", "xfsprogs"),
];

/// Install the FUSE peers (and git) from the distribution when missing.
pub fn install_peers() {
    let missing: Vec<&str> = PEERS
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!(
        "unionmount bench: installing {} (apt-get)",
        missing.join(", ")
    );
    let res = run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    );
    if let Err(e) = res {
        eprintln!("unionmount bench: apt-get install failed, peers may be skipped: {e:#}");
    }
}

/// unionmount with an option added (not run unless named): on the
/// /dev/fuse loop beside one that takes io_uring when offered, and with
/// read-only lower files passed through.
pub const UNIONMOUNT_VARIANTS: &[(&str, &str)] = &[
    ("unionmount-devfuse", ",noio_uring"),
    ("unionmount-lower-passthrough", ",lower_passthrough"),
];

/// A target not run: its name and why.
pub type Skipped = (String, String);

/// The targets asked for, and the ones skipped with the reason.
pub fn resolve(
    names: &[String],
    custom: &[String],
    builtin: &[&str],
) -> anyhow::Result<(Vec<Target>, Vec<Skipped>)> {
    let mut customs = Vec::new();
    for c in custom {
        let Some((name, cmd)) = c.split_once('=') else {
            bail!("--target {c:?}: expected NAME='mount command'");
        };
        if name.is_empty()
            || builtin.contains(&name)
            || UNIONMOUNT_VARIANTS.iter().any(|(v, _)| *v == name)
            || name.contains(',')
        {
            bail!("--target {c:?}: the name must be new, non-empty and without commas");
        }
        customs.push((name.to_string(), cmd.to_string()));
    }
    let wanted: Vec<String> = if names.is_empty() {
        let mut all: Vec<String> = builtin.iter().map(|s| s.to_string()).collect();
        all.extend(customs.iter().map(|(n, _)| n.clone()));
        all
    } else {
        names.to_vec()
    };
    let (mut targets, mut skipped) = (Vec::new(), Vec::new());
    for name in wanted {
        let kind = match name.as_str() {
            // unionmount as mounted by default, or with one option more.
            n if n == "unionmount" || UNIONMOUNT_VARIANTS.iter().any(|(v, _)| *v == n) => {
                let exe = std::env::current_exe().context("finding the unionmount binary")?;
                let extra = UNIONMOUNT_VARIANTS.iter().find(|(v, _)| *v == n);
                Kind::Unionmount(exe, extra.map_or("", |(_, o)| o))
            }
            "overlay" => Kind::Overlay,
            "dir" => Kind::Dir,
            "fuse-overlayfs" | "unionfs-fuse" => match which(&name) {
                Some(p) if name == "fuse-overlayfs" => Kind::FuseOverlayfs(p),
                Some(p) => Kind::UnionfsFuse(p),
                None => {
                    skipped.push((name, "not installed (--compare installs it)".into()));
                    continue;
                }
            },
            other => match customs.iter().find(|(n, _)| n == other) {
                Some((_, cmd)) => Kind::Custom(cmd.clone()),
                None => bail!("unknown target {other:?} (give its command with --target)"),
            },
        };
        if targets.iter().any(|t: &Target| t.name == name) {
            bail!("target {name:?} given twice");
        }
        targets.push(Target { name, kind });
    }
    Ok((targets, skipped))
}

pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// One mounted (or copied) instance of a target; Drop cleans up.
pub struct Instance {
    dir: PathBuf,
    root: PathBuf,
    mounted: bool,
    daemon: Option<u32>,
    /// Where the daemon writes its request counts on SIGUSR1 (our own
    /// daemon only: the signal would end another program).
    counts: Option<PathBuf>,
}

/// Request counts by kind, as the daemon writes them.
pub type Counts = std::collections::BTreeMap<String, u64>;

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Instance {
    /// Mount `t` over `lowers` (top first) with a fresh upper under `base`.
    pub fn start(
        t: &Target,
        lowers: &[PathBuf],
        merged: Option<&Path>,
        base: &Path,
        writes: bool,
    ) -> anyhow::Result<Instance> {
        let dir = base.join(format!("run{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut inst = Instance {
            root: mnt.clone(),
            dir,
            mounted: false,
            daemon: None,
            counts: None,
        };
        let overlay = OverlayOptions {
            lowers: lowers.to_vec(),
            upper: Some(UpperDirs {
                upper: upper.clone(),
                work: work.clone(),
            }),
            ..OverlayOptions::default()
        };
        let ovl_opts = overlay.encode()?;
        let mut cmd = match &t.kind {
            Kind::Dir => {
                let Some(merged) = merged else {
                    bail!("no merged copy for the dir target");
                };
                if writes {
                    let copy = inst.dir.join("copy");
                    run_cmd(Command::new("cp").arg("-a").arg(merged).arg(&copy))?;
                    inst.root = copy;
                } else {
                    inst.root = merged.to_path_buf();
                }
                return Ok(inst);
            }
            Kind::Overlay => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay", "-o"]).arg(&ovl_opts);
                c
            }
            // Metadata-only copy-up: what makes chown -R cheap. The kernel
            // target keeps its default (metacopy off: data copied), the one
            // a container engine gets.
            Kind::Unionmount(p, extra) => {
                let metacopy = OverlayOptions {
                    metacopy: true,
                    ..overlay
                };
                let counts = inst.dir.join("requests.json");
                let mut opts = metacopy.encode()?;
                opts.push(extra);
                let mut c = Command::new(p);
                c.arg("-o")
                    .arg(opts)
                    .env(unionfs::fuse::COUNTS_ENV, &counts);
                inst.counts = Some(counts);
                c
            }
            Kind::FuseOverlayfs(p) => {
                let mut c = Command::new(p);
                c.arg("-o").arg(&ovl_opts);
                c
            }
            Kind::UnionfsFuse(p) => {
                let mut branches = format!("{}=RW", upper.display());
                for l in lowers {
                    branches.push_str(&format!(":{}=RO", l.display()));
                }
                let mut c = Command::new(p);
                c.args(["-o", "cow", &branches]);
                c
            }
            Kind::Custom(template) => {
                let line = template
                    .replace("{lower}", &overlay.lowerdir()?.to_string_lossy())
                    .replace("{upper}", &upper.to_string_lossy())
                    .replace("{work}", &work.to_string_lossy())
                    .replace("{mnt}", &mnt.to_string_lossy());
                let mut c = Command::new("sh");
                c.args(["-c", &line]);
                inst.mounted = true; // whatever it did, try to unmount
                run_cmd(&mut c).context("mount command")?;
                inst.daemon = find_daemon(&mnt);
                return Ok(inst);
            }
        };
        cmd.arg(&mnt);
        inst.mounted = true;
        run_cmd(&mut cmd).context("mounting")?;
        if !matches!(t.kind, Kind::Overlay) {
            inst.daemon = find_daemon(&mnt);
        }
        Ok(inst)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The daemon's user + system CPU seconds so far.
    pub fn daemon_cpu(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.daemon?)).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // after the comm: state is field 3, utime 14, stime 15
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
    }

    /// The requests our daemon has answered so far, by kind: it writes them
    /// when signalled (None for other targets).
    pub fn request_counts(&self) -> Option<Counts> {
        let (file, pid) = (self.counts.as_ref()?, self.daemon?);
        let _ = std::fs::remove_file(file);
        let pid = rustix::process::Pid::from_raw(pid as i32)?;
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).ok()?;
        let t0 = Instant::now();
        while !file.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut counts: Counts = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
        // Which transport carried them, not another kind of request.
        counts.remove("via_io_uring");
        Some(counts)
    }

    /// The daemon's peak resident set (VmHWM), KiB.
    pub fn daemon_peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Disk space under the upper (blocks, as du counts them, each inode
    /// once), when the target has one.
    pub fn upper_kib(&self) -> Option<u64> {
        if !self.mounted {
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0u64;
        let mut stack = vec![self.dir.join("upper")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                let Ok(md) = entry.metadata() else { continue };
                if md.is_dir() {
                    stack.push(entry.path());
                }
                if seen.insert(md.ino()) {
                    bytes += md.blocks() * 512;
                }
            }
        }
        Some(bytes / 1024)
    }

    /// Unmount and remove, reporting an unmount failure.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.unmount()
    }

    fn unmount(&mut self) -> anyhow::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let mnt = self.dir.join("mnt");
        let mut last = None;
        for _ in 0..40 {
            match rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.mounted = false;
        if let Some(pid) = self.daemon.take() {
            wait_gone(pid, Duration::from_secs(10));
        }
        match last {
            None => Ok(()),
            Some(e) => {
                let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
                bail!("unmounting {}: {e}", mnt.display())
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("unionmount bench: {e:#}");
        }
        super::tmp::remove_tree(&self.dir);
    }
}

/// The process serving `mnt`: the one whose arguments name it.
fn find_daemon(mnt: &Path) -> Option<u32> {
    let me = std::process::id();
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

fn wait_gone(pid: u32, limit: Duration) {
    let t0 = Instant::now();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    while proc.exists() && t0.elapsed() < limit {
        // a zombie is gone as far as we care
        if std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
