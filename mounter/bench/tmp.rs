//! The run's temporary directory: removed on Drop, after detaching anything
//! still mounted inside it (so removal never reaches through a mount into a
//! layer or a real directory).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub struct TempDir {
    path: PathBuf,
    /// A fresh filesystem mounted inside, where the run's files go.
    scratch: Option<PathBuf>,
}

impl TempDir {
    pub fn new(parent: Option<&Path>) -> anyhow::Result<TempDir> {
        let parent = match parent {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("TMPDIR") {
                Some(d) => PathBuf::from(d),
                None if Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
                None => std::env::temp_dir(),
            },
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("unionmount-bench-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let path = path.canonicalize().unwrap_or(path);
        Ok(TempDir {
            path,
            scratch: None,
        })
    }

    /// Put the run's files on a fresh ext4 made inside (see `scratch_fs`);
    /// where that cannot be done, say why and use the directory as it is.
    pub fn on_fresh_ext4(&mut self, room: &super::scratch_fs::Room) {
        match super::scratch_fs::mount_fresh_ext4(&self.path, room) {
            Ok(mnt) => self.scratch = Some(mnt),
            Err(e) => eprintln!(
                "unionmount bench: no fresh ext4 for the run ({e:#}); using {} as it is",
                self.path.display()
            ),
        }
    }

    /// Where the run's files go.
    pub fn path(&self) -> &Path {
        self.scratch.as_deref().unwrap_or(&self.path)
    }

    /// Whether `path` is a fresh ext4 made for the run.
    pub fn fresh_fs(&self) -> bool {
        self.scratch.is_some()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Detach every mount at or below `dir`, deepest first, then remove `dir`.
pub fn remove_tree(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mounts {
        let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
    }
    if !mounts_under(dir).is_empty() {
        eprintln!(
            "unionmount bench: {} is still mounted on; leaving it in place",
            dir.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("unionmount bench: removing {}: {e}", dir.display());
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
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

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape(r"/a\040b"), "/a b");
        assert_eq!(super::unescape(r"/plain"), "/plain");
    }
}
