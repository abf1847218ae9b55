//! The workloads: each is timed as a whole, on a fresh instance of a target.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// What a workload sees: the target's root and the names in the layers.
pub struct Ctx<'a> {
    pub root: &'a Path,
    pub tree: &'a Path,
    /// The big lower file the sequential and random reads read.
    pub big: &'a Path,
    pub big_size: u64,
    /// The lower file one byte is appended to (copy-up).
    pub append: &'a Path,
    /// Bytes the sequential write writes.
    pub write_size: u64,
    pub tarball: &'a Path,
    pub rand_reads: usize,
}

type Op = fn(&Ctx) -> anyhow::Result<()>;

pub struct Workload {
    pub name: &'static str,
    pub about: &'static str,
    /// drop caches before the timed run
    pub cold: bool,
    /// writes to the target (the dir target then gets a fresh copy)
    pub writes: bool,
    /// run untimed first, on the same instance
    pub warmup: Option<Op>,
    pub run: Op,
    /// a program the workload runs that may be missing (then it is skipped)
    pub needs: Option<&'static str>,
}

const fn w(name: &'static str, about: &'static str, cold: bool, run: Op) -> Workload {
    Workload {
        name,
        about,
        cold,
        writes: false,
        warmup: None,
        run,
        needs: None,
    }
}

pub static WORKLOADS: &[Workload] = &[
    w("find-cold", "find, cold cache", true, find),
    Workload {
        warmup: Some(find),
        ..w("find-warm", "find, warm", false, find)
    },
    w("stat-cold", "stat every file, cold", true, stat_walk),
    Workload {
        warmup: Some(stat_walk),
        ..w("stat-warm", "stat every file, warm", false, stat_walk)
    },
    Workload {
        warmup: Some(ls_lr),
        ..w("ls-lR-warm", "ls -lR, warm", false, ls_lr)
    },
    w(
        "read-all-cold",
        "read every byte (tar), cold",
        true,
        tar_all,
    ),
    w("seqread-cold", "big sequential read, cold", true, seq_read),
    Workload {
        warmup: Some(seq_read),
        ..w("seqread-warm", "big sequential read, warm", false, seq_read)
    },
    Workload {
        warmup: Some(seq_read),
        ..w("randread-4k", "4k random reads, warm", false, rand_read)
    },
    Workload {
        writes: true,
        ..w("seqwrite", "big sequential write + fsync", false, seq_write)
    },
    Workload {
        writes: true,
        ..w("untar", "untar many small files", false, untar)
    },
    Workload {
        writes: true,
        ..w(
            "append-copyup",
            "append 1 byte to a big lower file",
            false,
            append,
        )
    },
    Workload {
        writes: true,
        ..w("chown-R", "chown -R of a lower tree", false, chown)
    },
    Workload {
        writes: true,
        ..w("rm-rf", "rm -rf of a lower tree", false, rm_rf)
    },
    Workload {
        writes: true,
        ..w(
            "rename-dir",
            "rename of a populated lower dir",
            false,
            rename,
        )
    },
    Workload {
        writes: true,
        warmup: Some(git_init),
        needs: Some("git"),
        ..w("git", "git add -A && git status", false, git_add_status)
    },
    Workload {
        warmup: Some(stat_walk),
        ..w(
            "stat-2procs",
            "two stat walks at once, warm",
            false,
            two_walks,
        )
    },
];

/// Run a command; a failure carries the last line it printed on stderr.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{:?} failed ({}): {last}", cmd.get_program(), out.status);
    }
    Ok(())
}

pub fn drop_caches() -> anyhow::Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping caches (needs root)")
}

fn find(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(Command::new("find").arg(c.root))
}

/// `find -printf %s` stats every entry.
fn stat_walk(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(
        Command::new("find")
            .arg(c.root)
            .args(["-printf", "%s %m\n"]),
    )
}

fn two_walks(c: &Ctx) -> anyhow::Result<()> {
    let spawn = || {
        Command::new("find")
            .arg(c.root)
            .args(["-printf", "%s %m\n"])
            .stdout(Stdio::null())
            .spawn()
    };
    let mut a = spawn().context("starting find")?;
    let b = spawn();
    let sa = a.wait()?;
    let sb = b.context("starting find")?.wait()?;
    if !sa.success() || !sb.success() {
        bail!("find failed ({sa}, {sb})");
    }
    Ok(())
}

fn ls_lr(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(Command::new("ls").arg("-lR").arg(c.root))
}

/// tar to a pipe we drain (GNU tar skips reading file data when writing to /dev/null).
fn tar_all(c: &Ctx) -> anyhow::Result<()> {
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(c.root)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tar")?;
    if let Some(mut out) = child.stdout.take() {
        std::io::copy(&mut out, &mut std::io::sink())?;
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("tar failed ({st})");
    }
    Ok(())
}

fn seq_read(c: &Ctx) -> anyhow::Result<()> {
    let path = c.root.join(c.big);
    let mut f = File::open(&path).with_context(|| format!("{}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != c.big_size {
        bail!(
            "read {total} bytes of {}, expected {}",
            path.display(),
            c.big_size
        );
    }
    Ok(())
}

fn rand_read(c: &Ctx) -> anyhow::Result<()> {
    let path = c.root.join(c.big);
    let f = File::open(&path).with_context(|| format!("{}", path.display()))?;
    let blocks = (c.big_size / 4096).max(1);
    let mut buf = [0u8; 4096];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..c.rand_reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_at(&mut buf, (x % blocks) * 4096)?;
    }
    Ok(())
}

fn seq_write(c: &Ctx) -> anyhow::Result<()> {
    let path = c.root.join("bench-write.bin");
    let mut f = File::create(&path).with_context(|| format!("{}", path.display()))?;
    let block = vec![0x5au8; 1 << 20];
    let mut left = c.write_size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn untar(c: &Ctx) -> anyhow::Result<()> {
    let dest = c.root.join("bench-untar");
    std::fs::create_dir(&dest).with_context(|| format!("{}", dest.display()))?;
    run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(&dest)
            .arg("-xf")
            .arg(c.tarball),
    )
}

fn append(c: &Ctx) -> anyhow::Result<()> {
    let path = c.root.join(c.append);
    let mut f = OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(b"x")?;
    Ok(())
}

fn chown(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(
        Command::new("chown")
            .args(["-R", "12345:12345"])
            .arg(c.root.join(c.tree)),
    )
}

fn rm_rf(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(Command::new("rm").arg("-rf").arg(c.root.join(c.tree)))
}

fn rename(c: &Ctx) -> anyhow::Result<()> {
    let from = c.root.join(c.tree);
    let mut to = from.clone().into_os_string();
    to.push(".renamed");
    run_cmd(Command::new("mv").arg("-T").arg(&from).arg(&to))
}

/// git, alone: no system or user configuration, any owner accepted.
fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "safe.directory=*", "-c", "gc.auto=0", "-C"])
        .arg(dir);
    cmd
}

/// Untimed: an empty repository in the tree (its .git goes to the upper).
fn git_init(c: &Ctx) -> anyhow::Result<()> {
    run_cmd(git(&c.root.join(c.tree)).args(["-c", "init.defaultBranch=main", "init", "-q"]))
}

/// Hash every file of the tree into the index (objects written under .git),
/// then compare the index with the tree.
fn git_add_status(c: &Ctx) -> anyhow::Result<()> {
    let dir = c.root.join(c.tree);
    run_cmd(git(&dir).args(["add", "-A"])).context("git add -A")?;
    run_cmd(git(&dir).arg("status")).context("git status")
}
