//! Small filesystem helpers shared by the modules: unique staging names,
//! atomic writes, file locks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, flock};

use crate::{Context, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread will pick: `PREFIX-PID-NANOS-N`.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Create a new file under `dir` with a unique name.
pub(crate) fn create_unique(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    loop {
        let path = dir.join(unique_name(prefix));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).at(&path),
        }
    }
}

/// Make a new directory under `dir` with a unique name.
pub(crate) fn mkdir_unique(dir: &Path, prefix: &str) -> Result<PathBuf> {
    loop {
        let path = dir.join(unique_name(prefix));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).at(&path),
        }
    }
}

/// fsync a directory so a rename into it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replace `dest` with `bytes` atomically: write a file in `tmp`, fsync, rename.
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let (mut f, path) = create_unique(tmp, "write")?;
    let res = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .at(&path)
        .and_then(|()| fs::rename(&path, dest).at(dest));
    if res.is_err() {
        let _ = fs::remove_file(&path);
    }
    res?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// An open lock file; the lock is released when this is dropped.
pub(crate) struct Lock {
    file: File,
}

impl Lock {
    pub(crate) fn open(path: &Path) -> Result<Lock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .at(path)?;
        Ok(Lock { file })
    }

    pub(crate) fn exclusive(path: &Path) -> Result<Lock> {
        let lock = Lock::open(path)?;
        flock(&lock.file, FlockOperation::LockExclusive).at(path)?;
        Ok(lock)
    }

    pub(crate) fn shared(path: &Path) -> Result<Lock> {
        let lock = Lock::open(path)?;
        flock(&lock.file, FlockOperation::LockShared).at(path)?;
        Ok(lock)
    }

    /// Take the exclusive lock only if nobody holds any lock on the file.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let lock = Lock::open(path)?;
        match flock(&lock.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(lock)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }

    /// Turn an exclusive lock into a shared one.
    pub(crate) fn downgrade(&self, path: &Path) -> Result<()> {
        flock(&self.file, FlockOperation::LockShared).at(path)
    }
}

/// Remove a file or a whole tree; a missing path is not an error. Symlinks
/// inside the tree are removed, never followed.
pub(crate) fn remove_all(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
        Ok(m) if m.is_dir() => {
            make_writable(path);
            fs::remove_dir_all(path).at(path)
        }
        Ok(_) => fs::remove_file(path).at(path),
    }
}

/// Give the owner write permission on every directory of a tree, so a tree
/// unpacked without privilege (with 0555 directories) can be removed.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        return;
    }
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
