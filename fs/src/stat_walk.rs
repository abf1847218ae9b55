//! Guessing whether a directory walk reads the attributes of what it lists.
//!
//! The kernel asks for attributes with the first page of every listing
//! (READDIRPLUS). Giving them costs an lstat of every entry, and on a cold
//! cache that is a read of every inode: work `find` or `ls` never use, since
//! names and file types come from the listing alone. Kernel overlayfs reads
//! no inode for them either. Entries may go without attributes (node id 0):
//! a later `stat` of one then costs a LOOKUP instead.
//!
//! So the union guesses from what the caller did last. A LOOKUP of a file
//! in a directory just listed without attributes means the walk stats what
//! it lists (`ls -l`, `du`): listings carry attributes from then on. Every
//! eighth listing after that goes without them again, to notice when the
//! walk has changed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// One listing in this many goes without attributes while a walk stats.
const PROBE_EVERY: u64 = 8;

/// Directories listed without attributes lately (a walk looks up in the one
/// it just listed; a few more cover walkers running side by side).
const BARE_KEPT: usize = 8;

pub struct StatWalk {
    /// The last walk looked up the files it listed.
    stats: AtomicBool,
    /// Listings given attributes since the last probe.
    since_probe: AtomicU64,
    bare: [AtomicU64; BARE_KEPT],
    next_bare: AtomicUsize,
}

impl Default for StatWalk {
    fn default() -> StatWalk {
        StatWalk {
            // A lone `ls -l` of one directory should not pay a LOOKUP per
            // file: a walk that does not stat is noticed at the first probe.
            stats: AtomicBool::new(true),
            since_probe: AtomicU64::new(0),
            bare: Default::default(),
            next_bare: AtomicUsize::new(0),
        }
    }
}

impl StatWalk {
    /// A listing is read for READDIRPLUS: should its files carry
    /// attributes?
    pub fn listing_wants_attrs(&self) -> bool {
        if self.stats.load(Ordering::Relaxed)
            && self.since_probe.fetch_add(1, Ordering::Relaxed) + 1 < PROBE_EVERY
        {
            return true;
        }
        self.since_probe.store(0, Ordering::Relaxed);
        self.stats.store(false, Ordering::Relaxed);
        false
    }

    /// Entries not resolved at listing time: give them attributes now?
    pub fn attrs_now(&self) -> bool {
        self.stats.load(Ordering::Relaxed)
    }

    /// `dir` was listed without attributes.
    pub fn listed_bare(&self, dir: u64) {
        let slot = self.next_bare.fetch_add(1, Ordering::Relaxed) % BARE_KEPT;
        self.bare[slot].store(dir, Ordering::Relaxed);
    }

    /// A LOOKUP in `parent` found a non-directory (directories are looked
    /// up by walks that stat nothing, to descend).
    pub fn looked_up_file(&self, parent: u64) {
        if !self.stats.load(Ordering::Relaxed)
            && self
                .bare
                .iter()
                .any(|d| d.load(Ordering::Relaxed) == parent)
        {
            self.stats.store(true, Ordering::Relaxed);
        }
    }
}
