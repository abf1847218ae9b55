//! Requests by kind, counted: the bench reports them beside each time (a
//! round trip costs what it costs; fewer is the lever). With
//! `UNIONMOUNT_REQUEST_COUNTS=FILE` in its environment, the daemon writes
//! the counts so far as one JSON object when its mount ends and whenever it
//! gets SIGUSR1 (the bench asks before and after the timed part).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! kinds {
    ($($kind:ident => $name:literal),* $(,)?) => {
        /// The requests the union answers.
        #[derive(Clone, Copy, Debug)]
        pub(crate) enum Kind { $($kind),* }
        const NAMES: &[&str] = &[$($name),*];
    };
}

kinds!(
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Fsyncdir => "fsyncdir", Statfs => "statfs",
    Setxattr => "setxattr", Getxattr => "getxattr", Listxattr => "listxattr",
    Removexattr => "removexattr", Access => "access", Create => "create", Ioctl => "ioctl",
    Fallocate => "fallocate", Lseek => "lseek", CopyFileRange => "copy_file_range",
);

/// The environment variable naming the file the counts go to.
pub const COUNTS_ENV: &str = "UNIONMOUNT_REQUEST_COUNTS";

/// The mount's counts, for whoever writes them out when asked (the
/// daemon's signal thread).
#[derive(Clone)]
pub struct RequestCounts(pub(crate) Arc<Requests>);

impl RequestCounts {
    /// Write the counts so far to `$UNIONMOUNT_REQUEST_COUNTS`, if set.
    pub fn write_if_asked(&self) {
        self.0.write_if_asked();
    }
}

/// The key of the requests that came through io_uring (counted by kind too).
pub const VIA_IO_URING: &str = "via_io_uring";

pub(crate) struct Requests {
    counts: Vec<AtomicU64>,
    via_io_uring: AtomicU64,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            counts: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            via_io_uring: AtomicU64::new(0),
        }
    }
}

impl Requests {
    pub(crate) fn note(&self, kind: Kind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request that came through an io_uring queue, not /dev/fuse.
    pub(crate) fn note_io_uring(&self) {
        self.via_io_uring.fetch_add(1, Ordering::Relaxed);
    }

    /// `{"lookup": 12, ..., "via_io_uring": 9}`, kinds never asked left out.
    pub(crate) fn json(&self) -> String {
        let via_io_uring = [(VIA_IO_URING, &self.via_io_uring)];
        let fields: Vec<String> = NAMES
            .iter()
            .copied()
            .zip(&self.counts)
            .chain(via_io_uring)
            .map(|(n, c)| (n, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .map(|(n, c)| format!("\"{n}\": {c}"))
            .collect();
        format!("{{{}}}\n", fields.join(", "))
    }

    /// Write the counts where the environment asks, whole or not at all
    /// (temporary name, then rename).
    pub(crate) fn write_if_asked(&self) {
        let Some(path) = std::env::var_os(COUNTS_ENV) else {
            return;
        };
        let path = std::path::PathBuf::from(path);
        let tmp = path.with_extension("tmp");
        let res = std::fs::write(&tmp, self.json()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            log::warn!("request counts: {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_as_json() {
        let r = Requests::default();
        r.note(Kind::Lookup);
        r.note(Kind::Lookup);
        r.note(Kind::CopyFileRange);
        r.note_io_uring();
        assert_eq!(
            r.json(),
            "{\"lookup\": 2, \"copy_file_range\": 1, \"via_io_uring\": 1}\n"
        );
    }
}
