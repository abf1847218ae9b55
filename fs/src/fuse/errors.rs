//! What an error reply leaves in the log.
//!
//! Every error reply is logged at debug level with its operation, node and
//! errno. EIO, ESTALE and an unexpected EXDEV also warn: they mean a layer
//! is damaged or changed under the mount (a bad redirect or origin, an index
//! entry gone), as the kernel warns on those. Warnings are rate-limited per
//! errno so a broken layer cannot flood the log. Nothing here runs on the
//! success path.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuser::Errno as FuseErrno;

use crate::sync;

/// At most one warning per errno in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The errnos that warn, each with its own rate limit.
const WARNED: [FuseErrno; 3] = [FuseErrno::EIO, FuseErrno::ESTALE, FuseErrno::EXDEV];

/// Operations for which EXDEV is an ordinary answer (the caller falls back
/// to copying), not a sign of damage.
const EXDEV_EXPECTED: [&str; 3] = ["rename", "link", "copy_file_range"];

#[derive(Clone, Copy)]
struct Limit {
    last: Option<Instant>,
    suppressed: u64,
}

impl Limit {
    /// Whether to warn at `now`: with how many were suppressed since the
    /// last warning, or None to stay quiet (and count this one).
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

static LIMITS: Mutex<[Limit; WARNED.len()]> = Mutex::new(
    [Limit {
        last: None,
        suppressed: 0,
    }; WARNED.len()],
);

/// Logs the error reply `e` of operation `op` on node `ino`; returns `e`.
pub(super) fn noted(op: &'static str, ino: u64, e: FuseErrno) -> FuseErrno {
    log::debug!("{op} {ino:#x}: {}", describe(e));
    if let Some(slot) = warned_slot(op, e) {
        warn_limited(slot, op, ino, e);
    }
    e
}

fn warned_slot(op: &str, e: FuseErrno) -> Option<usize> {
    if e == FuseErrno::EXDEV && EXDEV_EXPECTED.contains(&op) {
        return None;
    }
    WARNED.iter().position(|w| *w == e)
}

fn warn_limited(slot: usize, op: &str, ino: u64, e: FuseErrno) {
    let Some(suppressed) = sync::lock(&LIMITS)[slot].admit(Instant::now()) else {
        return;
    };
    if suppressed > 0 {
        log::warn!(
            "{op} {ino:#x}: {} ({suppressed} more suppressed)",
            describe(e)
        );
    } else {
        log::warn!("{op} {ino:#x}: {}", describe(e));
    }
}

fn describe(e: FuseErrno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exdev_warns_only_where_unexpected() {
        assert_eq!(warned_slot("rename", FuseErrno::EXDEV), None);
        assert_eq!(warned_slot("link", FuseErrno::EXDEV), None);
        assert_eq!(warned_slot("lookup", FuseErrno::EXDEV), Some(2));
        assert_eq!(warned_slot("open", FuseErrno::EIO), Some(0));
        assert_eq!(warned_slot("rename", FuseErrno::ESTALE), Some(1));
        assert_eq!(warned_slot("lookup", FuseErrno::ENOENT), None);
    }

    #[test]
    fn one_warning_per_period_counting_the_rest() {
        let mut limit = Limit {
            last: None,
            suppressed: 0,
        };
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Some(0));
        assert_eq!(limit.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(limit.admit(t0 + WARN_EVERY), Some(2));
        assert_eq!(limit.admit(t0 + WARN_EVERY), None);
    }
}
