//! Memory and pids limits for a container: cgroup v2 where the controller is
//! enabled there, else the controller's v1 hierarchy (the hybrid layout, where
//! `/sys/fs/cgroup/unified` holds only some controllers).
//!
//! One directory `unionmount-<id>` per hierarchy used; the container's first
//! process joins it before it execs; the directories go when the container ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const ROOT: &str = "/sys/fs/cgroup";

/// Limits asked for with `--memory` and `--pids-limit`. (The serde names are
/// the container record's, `memory` and `pidsLimit`.)
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default, rename = "pidsLimit")]
    pub pids: Option<u64>,
}

/// The cgroup v2 mount, if any: `/sys/fs/cgroup` itself or `unified` below it.
fn v2_root() -> Option<PathBuf> {
    [PathBuf::from(ROOT), Path::new(ROOT).join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

fn v2_has(root: &Path, controller: &str) -> bool {
    fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|t| t.split_whitespace().any(|c| c == controller))
}

/// Where one controller lives: (hierarchy root, is v2).
fn hierarchy(controller: &str) -> anyhow::Result<(PathBuf, bool)> {
    if let Some(root) = v2_root().filter(|r| v2_has(r, controller)) {
        return Ok((root, true));
    }
    let v1 = Path::new(ROOT).join(controller);
    if v1.join("cgroup.procs").is_file() {
        return Ok((v1, false));
    }
    bail!("--{controller} limit: no cgroup {controller} controller on this machine")
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    fs::write(path, value).with_context(|| format!("cgroup: writing {value} to {}", path.display()))
}

/// Create the cgroups for `limits`; `dirs` lists them for `join` and `remove`.
pub fn create(id: &str, limits: Limits) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let res = create_into(id, limits, &mut dirs);
    if res.is_err() {
        remove(&dirs);
    }
    res.map(|()| dirs)
}

fn create_into(id: &str, limits: Limits, dirs: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let wanted = [("memory", limits.memory), ("pids", limits.pids)];
    for (controller, limit) in wanted {
        let Some(limit) = limit else { continue };
        let (root, v2) = hierarchy(controller)?;
        let dir = root.join(format!("unionmount-{id}"));
        if !dirs.contains(&dir) {
            if v2 {
                write(
                    &root.join("cgroup.subtree_control"),
                    &format!("+{controller}"),
                )?;
            }
            fs::create_dir(&dir).with_context(|| format!("cgroup {}", dir.display()))?;
            dirs.push(dir.clone());
        }
        let n = limit.to_string();
        match (controller, v2) {
            ("memory", true) => {
                write(&dir.join("memory.max"), &n)?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
            }
            ("memory", false) => {
                write(&dir.join("memory.limit_in_bytes"), &n)?;
                // Without this the limit could be met by swapping instead of an OOM kill.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&dir.join("memory.memsw.limit_in_bytes"), &n)?;
                }
            }
            _ => write(&dir.join("pids.max"), &n)?,
        }
    }
    Ok(())
}

/// Move the calling process into every cgroup in `dirs`.
pub fn join(dirs: &[PathBuf]) -> anyhow::Result<()> {
    for d in dirs {
        write(&d.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

/// How many processes the kernel's OOM killer ended in these cgroups.
pub fn oom_kills(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .flat_map(|d| ["memory.oom_control", "memory.events"].map(|f| d.join(f)))
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Remove cgroup directories (waiting a little for exiting processes to leave).
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    log::warn!("cgroup {}: not removed: {e}", d.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Parse `--memory`: bytes, or a number with k, m or g (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: expected a size in bytes, like 64m"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999999999g").is_err());
    }
}
