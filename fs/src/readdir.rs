//! Merged directory listings.
//!
//! The kernel is told we have no opendir: it sends no OPENDIR/RELEASEDIR
//! round trips and caches listings itself (see `fuse`), so a reader has no
//! handle here. Positions are therefore hashes of names, and a listing is
//! sorted by them (as ext4's htree positions are): a reader resumes after the
//! last name it got whatever changed meanwhile, and no name that stays is
//! listed twice or skipped; telldir/seekdir positions stay valid. A listing is
//! kept from one page of a pass to the next (`Listings`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use ondisk::whiteout;
use ondisk::xattr::{self, Key};

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use crate::Branch;
use crate::inode::{Node, NodeState};
use crate::layer::{get_xattr, stat_at};
use crate::names::{self, is_chardev_whiteout};
use crate::sync;
use crate::{Result, Union};

/// One merged entry, as readdir shows it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Where it is in the listing: readdir offsets are these.
    pub pos: u64,
    pub name: OsString,
    pub kind: FileType,
    pub ino: u64,
    /// What the name resolved to when the listing was read (None for "."
    /// and ".."), so readdirplus needs no second lookup while nothing changed.
    pub found: Option<Listed>,
}

/// A name a merged directory shows, as its topmost branch lists it.
pub(crate) struct Merged {
    pub name: OsString,
    pub kind: FileType,
    pub layer: usize,
    pub d_ino: u64,
}

/// A listed name as it resolved when the listing was read.
#[derive(Debug, Clone)]
pub struct Listed {
    pub state: NodeState,
    /// The union's change count then: names moved since if it differs.
    pub seen: u64,
    /// lstat of the topmost entry then. Attributes change without a name
    /// changing, so only a page read from a listing made for it uses this.
    pub stat: rustix::fs::Stat,
}

/// Listings in the middle of a pass, by directory node: dropped when a
/// pass reaches the end, when a name in the directory changes, and the least
/// recently read first beyond a bound (then the next page reads it again).
pub struct Listings {
    held: Mutex<LruCache<u64, Arc<Vec<DirEntry>>>>,
    /// Bumped by every change of names: a listing read while one happened is
    /// not kept.
    epoch: AtomicU64,
}

const LISTINGS_KEPT: usize = 64;

impl Default for Listings {
    fn default() -> Listings {
        Listings {
            held: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(LISTINGS_KEPT).expect("nonzero"),
            )),
            epoch: AtomicU64::new(0),
        }
    }
}

impl Listings {
    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<Vec<DirEntry>>>> {
        sync::lock(&self.held)
    }
}

/// Part of a listing to send: entries from `start` on.
pub struct Page {
    pub entries: Arc<Vec<DirEntry>>,
    pub start: usize,
    /// The listing was read for this page: its attributes are current.
    pub fresh: bool,
}

/// Positions of "." and ".."; names hash above them.
const DOT: u64 = 1;
const DOTDOT: u64 = 2;

/// A name's position: a hash that fits a positive offset. (Two names of one
/// directory hashing alike is a 1 in 2^63 chance per pair; `list_dir` then
/// moves the second one place on.)
fn position(name: &OsString) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() >> 1).max(DOTDOT + 1)
}

impl Union {
    /// Does opening a directory move its atime here? Under `strictatime`
    /// every listing does, and the kernel answers listings from its cache.
    pub fn opendir_moves_atime(&self) -> bool {
        self.cfg.atime == crate::layer::Atime::Strict
    }

    /// Move the atime of a directory's upper copy as listing it would (the
    /// kernel then lists it from its cache): read it once through the
    /// upper's mount clone. Lower copies never get theirs moved.
    pub fn touch_dir_atime(&self, node: &Node) -> Result<()> {
        let _ns = sync::read(&self.namespace);
        let st = node.snapshot();
        if !st.upper || !st.is_dir {
            return Ok(());
        }
        let (li, path) = self.top_entry(node, &st)?;
        let fd = self.open_data(li, &path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut dir = rustix::fs::Dir::read_from(&fd)?;
        if let Some(entry) = dir.read() {
            entry?;
        }
        Ok(())
    }

    /// The listing of directory `node_id` after position `offset` (0 for the
    /// start), for READDIRPLUS if `plus`.
    pub fn listing_page(&self, node_id: u64, offset: u64, plus: bool) -> Result<Page> {
        let held = if offset == 0 {
            None
        } else {
            self.listings.lock().get(&node_id).cloned()
        };
        let fresh = held.is_none();
        let entries = match held {
            Some(entries) => entries,
            None => {
                let epoch = self.listings.epoch.load(Ordering::Acquire);
                let attrs = plus && self.stat_walk.listing_wants_attrs();
                let entries = Arc::new(self.listing_of(&*self.node(node_id)?, attrs)?);
                if self.listings.epoch.load(Ordering::Acquire) == epoch {
                    self.listings.lock().put(node_id, entries.clone());
                }
                entries
            }
        };
        let start = entries.partition_point(|e| e.pos <= offset);
        if start >= entries.len() {
            self.listings.lock().pop(&node_id);
        }
        Ok(Page {
            entries,
            start,
            fresh,
        })
    }

    /// A name in directory `node_id` was made, removed or renamed (as the
    /// kernel drops its cached listing then, so do we). Called by every
    /// operation on names once it is done, whether it succeeded or not.
    pub(crate) fn dir_changed(&self, node_id: u64) {
        self.listings.epoch.fetch_add(1, Ordering::AcqRel);
        self.listings.lock().pop(&node_id);
    }

    /// `list_dir`, or nothing for a removed directory still open somewhere
    /// (the kernel's listing of a removed directory is empty too).
    fn listing_of(&self, node: &Node, attrs: bool) -> Result<Vec<DirEntry>> {
        if node.state().names.is_empty() && self.inodes.removed_dir(node.id).is_some() {
            return Ok(Vec::new());
        }
        self.list_dir(node, attrs)
    }

    /// The merged listing of a directory node, with "." and "..". Without
    /// `attrs`, the files lower branches hold are listed as their branch
    /// lists them, unresolved (`found` None): no inode of theirs is read.
    pub fn list_dir(&self, node: &Node, attrs: bool) -> Result<Vec<DirEntry>> {
        let _ns = sync::read(&self.namespace);
        let st = node.snapshot();
        if !st.is_dir {
            return Err(Errno::NOTDIR);
        }
        let path = self.path_of(node)?;
        let seen_changes = self.change_count();
        let parent_ino = match st.names.first() {
            Some((p, _)) => self.node(*p).map(|n| n.st_ino).unwrap_or(node.st_ino),
            None => node.st_ino,
        };
        let mut out = vec![
            DirEntry {
                pos: DOT,
                name: ".".into(),
                kind: FileType::Directory,
                ino: node.st_ino,
                found: None,
            },
            DirEntry {
                pos: DOTDOT,
                name: "..".into(),
                kind: FileType::Directory,
                ino: parent_ino,
                found: None,
            },
        ];
        let cache = crate::lookup::DirCache::default();
        for m in self.merged_names(&st, &path)? {
            if !attrs && self.listed_as_is(&m)? {
                out.push(DirEntry {
                    pos: position(&m.name),
                    ino: self.branch(Branch::Layer(m.layer))?.ino_prefix | m.d_ino,
                    name: m.name,
                    kind: m.kind,
                    found: None,
                });
                continue;
            }
            let name = m.name;
            // Resolving each entry gives the same st_ino stat would (d_ino == st_ino).
            if let Some(found) = self.resolve_child_in(&st, &path, &name, &cache)? {
                let kind = FileType::from_raw_mode(found.stat.st_mode);
                out.push(DirEntry {
                    pos: position(&name),
                    name,
                    kind,
                    ino: found.st_ino,
                    found: Some(Listed {
                        state: found.state,
                        seen: seen_changes,
                        stat: found.stat,
                    }),
                });
            }
        }
        out[2..].sort_by_key(|e| e.pos);
        for i in 3..out.len() {
            if out[i].pos <= out[i - 1].pos {
                out[i].pos = out[i - 1].pos + 1;
            }
        }
        Ok(out)
    }

    /// Does a lower branch's listing say what the merged one shows for this
    /// name? For a non-directory there, it does: its type, and its inode
    /// number where the branch's filesystem lists the number stat gives
    /// (the merged st_ino is that one). A directory's merged inode number
    /// and an upper file's (its origin's) need more than the listing.
    fn listed_as_is(&self, m: &Merged) -> Result<bool> {
        if (m.layer == 0 && self.has_upper())
            || matches!(m.kind, FileType::Directory | FileType::Unknown)
        {
            return Ok(false);
        }
        Ok(self.branch(Branch::Layer(m.layer))?.dino_is_ino)
    }

    /// A listed entry handed to the kernel with its attributes (readdirplus):
    /// counts as a lookup of it.
    pub fn remember_listed(
        &self,
        parent: u64,
        e: &DirEntry,
        fresh: bool,
    ) -> Result<(std::sync::Arc<Node>, rustix::fs::Stat)> {
        // Held from the check to the remember, so no rename slips in between.
        let ns = sync::read(&self.namespace);
        match &e.found {
            // Names may have moved since the listing was read: then look again,
            // or a stale name would be given back to a node.
            Some(l) if l.seen == self.change_count() => {
                let node =
                    self.inodes
                        .remember(e.ino, false, parent, &e.name, l.state.clone(), true);
                drop(ns);
                // A listing read for this very page saw the attributes as a
                // stat now would (for what raw_stat shows as lstat'ed)...
                if fresh && shown_as_listed(&l.state, &l.stat) {
                    return Ok((node, l.stat));
                }
                // ...an older one may not: a write or a truncate since changes
                // no name, and the kernel would take the old size from this
                // reply (attributes it asked for after the change).
                match self.raw_stat(&node, &node.snapshot()) {
                    Ok(stat) => Ok((node, stat)),
                    Err(err) => {
                        self.inodes.forget(node.id, 1);
                        Err(err)
                    }
                }
            }
            _ => {
                drop(ns);
                self.lookup(parent, &e.name)
            }
        }
    }

    /// The names a merged directory shows (no markers, no whiteouts, no duplicates).
    pub(crate) fn merged_names(&self, st: &NodeState, path: &Path) -> Result<Vec<Merged>> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        let mut dirs: Vec<(usize, &Path)> = Vec::new();
        if st.upper {
            dirs.push((0, path));
        }
        dirs.extend(st.lowers.iter().map(|(l, p)| (*l, p.as_path())));
        for (li, dpath) in dirs {
            let is_upper = li == 0 && self.has_upper();
            let fd = match self.open_data(
                Branch::Layer(li),
                dpath,
                OFlags::RDONLY | OFlags::DIRECTORY,
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let xattr_whiteouts = has_xattr_whiteouts(fd.as_fd())?;
            let mut layer_whiteouts = Vec::new();
            let mut d = rustix::fs::Dir::read_from(&fd)?;
            while let Some(entry) = d.read() {
                let entry = entry?;
                let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
                if name == "." || name == ".." {
                    continue;
                }
                if is_upper && self.is_hidden_upper_name(dpath, &name) {
                    continue;
                }
                if !is_upper && whiteout::is_meta_name(name.as_bytes()) {
                    if let Some(target) = whiteout::target(name.as_bytes()) {
                        layer_whiteouts.push(OsString::from_vec(target.to_vec()));
                    }
                    continue;
                }
                if seen.contains(&name) || hidden.contains(&name) {
                    continue;
                }
                let mut kind = entry.file_type();
                if kind == FileType::CharacterDevice
                    || kind == FileType::Unknown
                    || (xattr_whiteouts && kind == FileType::RegularFile)
                {
                    let st = stat_at(fd.as_fd(), &name)?;
                    kind = FileType::from_raw_mode(st.st_mode);
                    if is_chardev_whiteout(&st)
                        || (xattr_whiteouts && names::is_whiteout(fd.as_fd(), &name, &st)?)
                    {
                        layer_whiteouts.push(name);
                        continue;
                    }
                }
                seen.insert(name.clone());
                out.push(Merged {
                    name,
                    kind,
                    layer: li,
                    d_ino: entry.ino(),
                });
            }
            hidden.extend(layer_whiteouts);
        }
        Ok(out)
    }
}

/// Kernel 6.7+ marks a directory holding xattr whiteouts (`opaque=x` or `whiteouts`).
fn has_xattr_whiteouts(dir: std::os::fd::BorrowedFd<'_>) -> Result<bool> {
    for key in Key::Opaque.names() {
        if get_xattr(dir, key)?.as_deref() == Some(xattr::OPAQUE_HOLDS_WHITEOUTS) {
            return Ok(true);
        }
    }
    for key in Key::Whiteouts.names() {
        if get_xattr(dir, key)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Does `raw_stat` show this entry as its lstat? Not a metacopy file (blocks
/// from the lower), nor a hard-linked upper file (the group's link count).
fn shown_as_listed(state: &NodeState, stat: &rustix::fs::Stat) -> bool {
    !state.metacopy && state.index.is_none() && (state.is_dir || !state.upper || stat.st_nlink <= 1)
}
