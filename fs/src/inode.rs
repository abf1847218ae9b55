//! The inode table: merged identity, names, lookup counts, `forget`.
//!
//! A merged object's FUSE node id is its `st_ino` (unique within the mount and
//! stable across copy-up), so every name of a hard-link group resolves to one
//! node and readdir's `d_ino` equals stat's `st_ino` by construction.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rustix::fs::Stat;
use rustix::io::Errno;
use smallvec::SmallVec;

use crate::Result;
use crate::sync;

/// A name in a directory, kept inline up to 24 bytes (most names are
/// shorter): a node's name costs no allocation of its own.
#[derive(Clone, PartialEq, Eq)]
pub struct Name(SmallVec<[u8; 24]>);

impl Name {
    pub fn new(name: &OsStr) -> Name {
        Name(SmallVec::from_slice(name.as_bytes()))
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_os_str().fmt(f)
    }
}

/// NUL-separated xattr names, shared.
pub type XattrNames = Arc<Vec<u8>>;

/// The (parent id, name) pairs of an object: almost always one.
pub type Names = SmallVec<[(u64, Name); 1]>;

/// Lower (branch, path) entries of an object, top first: one but for merged
/// directories.
pub type Lowers = SmallVec<[(usize, PathBuf); 1]>;

/// The bit of a node's generation word that marks it deleted.
const GONE: u64 = 1 << 63;

/// FUSE's id for the root directory.
pub const ROOT_ID: u64 = 1;

/// Where a merged object lives.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// Every (parent id, name) this object is known by; the first is used to reach it.
    pub names: Names,
    pub is_dir: bool,
    /// Exists in the upper at its merged path.
    pub upper: bool,
    /// Lower branches holding it, top first, with its path in each. A non-directory
    /// uses only the first; a directory merges them all. A node keeps an empty
    /// path for a non-directory found under its first name in its parent's
    /// lower directory of that branch, the usual case: [`InodeTable::top_lower`]
    /// rebuilds it, and a node costs no copy of its parent's path.
    pub lowers: Lowers,
    /// The directory hides everything below its own layer.
    pub opaque: bool,
    /// A lower hard-link group member whose group was copied up through another
    /// name: its data is the index entry of this name.
    pub index: Option<Box<OsStr>>,
    /// An upper file holding metadata only (kernel overlayfs `metacopy`): its
    /// data is still the top lower's, copied up at the first open for writing.
    pub metacopy: bool,
    /// The xattr names an object of a read-only layer shows (as listxattr
    /// returns them), read once: such a layer never changes, and a copy-up
    /// or a new lookup makes a new state without them.
    /// (A thin pointer: a node is a few bytes under an allocator size class.)
    pub xattr_names: Option<XattrNames>,
}

impl NodeState {
    /// A non-directory whose lower path is rebuilt from its parent's, not kept.
    fn keeps_no_lower_path(&self) -> bool {
        !self.is_dir
            && self
                .lowers
                .first()
                .is_some_and(|(_, p)| p.as_os_str().is_empty())
    }

    /// The topmost lower (branch, path) of a state fresh from resolving a
    /// name, whose paths are whole; a node's own state goes through
    /// [`InodeTable::top_lower`].
    pub fn resolved_top_lower(&self) -> Option<&(usize, PathBuf)> {
        self.lowers.first()
    }
}

pub struct Node {
    pub id: u64,
    pub st_ino: u64,
    lookups: AtomicU64,
    /// FUSE generation: bumped when the id comes back for another object.
    /// Its top bit ([`GONE`]) says the object was deleted while the kernel
    /// may still hold its inode: the upper's filesystem may give its inode
    /// number to a new object, which must reach the kernel as a new inode
    /// (another generation), not as the dead one.
    generation: AtomicU64,
    state: Mutex<NodeState>,
    /// Serialises copy-up of this node only; other nodes go on meanwhile.
    pub copy_up_lock: Mutex<()>,
}

impl Node {
    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        // A poisoned lock means a thread panicked mid-update; the state is still the
        // best we have, and the daemon must not die for it.
        sync::lock(&self.state)
    }

    pub fn snapshot(&self) -> NodeState {
        self.state().clone()
    }

    /// The FUSE generation to send with this node's id.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire) & !GONE
    }
}

/// Node id for an `st_ino`: the root is always 1, so a real inode 1 moves aside.
pub fn node_id_for(st_ino: u64, is_root: bool) -> u64 {
    match (is_root, st_ino) {
        (true, _) => ROOT_ID,
        (false, 1) => 1 << 63 | 1,
        (false, 0) => 1 << 63,
        (false, ino) => ino,
    }
}

/// (parent id, hash of the name): where a name is in the name index.
type NameKey = (u64, u64);

/// Does `node` hold the name (parent, name)?
fn has_name(node: &Node, parent: u64, name: &OsStr) -> bool {
    node.state()
        .names
        .iter()
        .any(|(p, n)| *p == parent && n.as_os_str() == name)
}

/// Nodes the kernel forgets between two returns of free memory to the system.
const RELEASE_EVERY: usize = 4096;

/// Nodes live while the kernel holds their inodes: the table is as large as
/// the kernel's inode cache for this mount, and shrinks with it (FORGET).
#[derive(Default)]
pub struct InodeTable {
    map: RwLock<HashMap<u64, Arc<Node>>>,
    /// Which node each known (parent, name) belongs to, so a name is dropped from
    /// the node the kernel knows even when the object's identity changed since.
    /// Keyed by a hash of the name (the node holds the name itself: a second
    /// copy here cost a sixth of a node); every hit is checked against the
    /// node's names, so two names hashing alike only make the index miss.
    by_name: Mutex<HashMap<NameKey, u64>>,
    name_hasher: std::hash::RandomState,
    /// Nodes dropped since free memory was last given back.
    dropped: AtomicUsize,
    /// The last stat (link count 0) of directories removed while the kernel
    /// still knows them: an open descriptor or a working directory outlives
    /// the name, and the kernel answers for it as for any removed directory.
    removed_dirs: Mutex<HashMap<u64, Stat>>,
}

impl InodeTable {
    pub fn get(&self, id: u64) -> Result<Arc<Node>> {
        let map = sync::read(&self.map);
        map.get(&id).cloned().ok_or(Errno::STALE)
    }

    /// Record one kernel lookup of `st_ino` reached as (parent, name), creating the
    /// node or refreshing where it lives.
    pub fn remember(
        &self,
        st_ino: u64,
        is_root: bool,
        parent: u64,
        name: &OsStr,
        fresh: NodeState,
        count_lookup: bool,
    ) -> Arc<Node> {
        let id = node_id_for(st_ino, is_root);
        let mut map = sync::write(&self.map);
        let node = map
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Node {
                    id,
                    st_ino,
                    lookups: AtomicU64::new(0),
                    generation: AtomicU64::new(0),
                    state: Mutex::new(NodeState::default()),
                    copy_up_lock: Mutex::new(()),
                })
            })
            .clone();
        if count_lookup {
            // Counted under the table lock so a concurrent forget cannot drop the
            // node between finding it and counting this lookup.
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
        // Another object on a deleted one's inode number: a new generation, so
        // the kernel drops the inode it still holds for the old one instead of
        // taking it for this one. Its lookups stay counted with the new ones:
        // the kernel forgets them with the old inode.
        let reborn = node.generation.fetch_and(!GONE, Ordering::AcqRel) & GONE != 0;
        if reborn {
            node.generation.fetch_add(1, Ordering::AcqRel);
            sync::lock(&self.removed_dirs).remove(&id);
        }
        drop(map);
        let mut fresh = fresh;
        // Before the node's lock is taken: finding the parent takes the
        // table's lock, which forget holds while it locks nodes.
        if fresh.keeps_no_lower_path() {
            // A node's own state passed back under another name (a rename):
            // its path is rebuilt from the names it had.
            if let Some(whole) = self.top_lower(&node.snapshot()) {
                fresh.lowers[0] = whole;
            }
        }
        if !is_root && self.lower_path_derives(&fresh, parent, name) {
            fresh.lowers[0].1 = PathBuf::new();
        }
        {
            let mut st = node.state();
            let mut names = std::mem::take(&mut st.names);
            if reborn {
                for old in names.drain(..) {
                    self.unindex(&old, id);
                }
            }
            if !is_root {
                if fresh.is_dir {
                    // A directory has exactly one name.
                    for old in names.drain(..) {
                        if old.0 != parent || old.1.as_os_str() != name {
                            self.unindex(&old, id);
                        }
                    }
                }
                // The name just confirmed goes first: it is the one used to reach
                // the object, and is known good now.
                names.retain(|(p, n)| !(*p == parent && n.as_os_str() == name));
                names.insert(0, (parent, Name::new(name)));
            }
            // Exact capacities: a merged directory's lowers spill to the heap
            // with room for more, and paths built by join keep spare bytes.
            names.shrink_to_fit();
            fresh.lowers.shrink_to_fit();
            for (_, path) in fresh.lowers.iter_mut() {
                path.shrink_to_fit();
            }
            *st = NodeState { names, ..fresh };
        }
        if !is_root {
            self.index(parent, name, id);
        }
        node
    }

    /// Is a fresh non-directory state's lower path its parent's lower
    /// directory in that branch joined with `name`?
    fn lower_path_derives(&self, fresh: &NodeState, parent: u64, name: &OsStr) -> bool {
        match fresh.lowers.as_slice() {
            [(li, path)] if !fresh.is_dir => self
                .with_lower_dir(parent, *li, |d| {
                    path.strip_prefix(d).ok() == Some(name.as_ref())
                })
                .unwrap_or(false),
            _ => false,
        }
    }

    /// `f` of the path of directory `dir` in lower branch `li`.
    fn with_lower_dir<T>(&self, dir: u64, li: usize, f: impl FnOnce(&Path) -> T) -> Option<T> {
        let dir = self.get(dir).ok()?;
        let st = dir.state();
        let (_, path) = st.lowers.iter().find(|(l, _)| *l == li)?;
        Some(f(path))
    }

    /// The topmost lower (branch, path) of a node's state `st` (a snapshot:
    /// no node's lock may be held), for data and attributes of lower
    /// objects; a path the node did not keep is rebuilt from its parent's.
    pub fn top_lower(&self, st: &NodeState) -> Option<(usize, PathBuf)> {
        let (li, path) = st.lowers.first()?;
        if !path.as_os_str().is_empty() || st.is_dir {
            return Some((*li, path.clone()));
        }
        let (parent, name) = st.names.first()?;
        let path = self.with_lower_dir(*parent, *li, |d| d.join(name.as_os_str()))?;
        Some((*li, path))
    }

    /// The kernel dropped `n` lookups of `id`; the node goes when none are left.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut map = sync::write(&self.map);
        let mut dropped = false;
        if let Some(node) = map.get(&id) {
            let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
            node.lookups.store(left, Ordering::Relaxed);
            if left == 0
                && let Some(node) = map.remove(&id)
            {
                let state = node.state();
                for name in state.names.iter() {
                    self.unindex(name, id);
                }
                // Only a directory without a name can be a removed one: a
                // forget of any other node takes no second lock.
                let nameless = state.names.is_empty();
                drop(state);
                if nameless {
                    sync::lock(&self.removed_dirs).remove(&id);
                }
                dropped = true;
            }
        }
        drop(map);
        if dropped && self.dropped.fetch_add(1, Ordering::Relaxed) + 1 >= RELEASE_EVERY {
            self.dropped.store(0, Ordering::Relaxed);
            self.release_memory();
        }
    }

    /// After many forgets (the kernel shrank its inode cache): shrink the
    /// tables and give freed memory back, so the daemon's memory follows the
    /// kernel's cache down instead of staying at its peak.
    fn release_memory(&self) {
        {
            let mut map = sync::write(&self.map);
            if map.capacity() > 4 * map.len().max(1024) {
                let keep = 2 * map.len();
                map.shrink_to(keep);
            }
        }
        {
            let mut idx = sync::lock(&self.by_name);
            if idx.capacity() > 4 * idx.len().max(1024) {
                let keep = 2 * idx.len();
                idx.shrink_to(keep);
            }
        }
        crate::sys::release_free_memory();
    }

    pub fn len(&self) -> usize {
        sync::read(&self.map).len()
    }

    fn key(&self, parent: u64, name: &OsStr) -> NameKey {
        use std::hash::BuildHasher;
        (parent, self.name_hasher.hash_one(name))
    }

    fn index(&self, parent: u64, name: &OsStr, id: u64) {
        let key = self.key(parent, name);
        let mut idx = sync::lock(&self.by_name);
        let old = idx.insert(key, id);
        drop(idx);
        if let Some(old) = old.filter(|old| *old != id) {
            // The name now means another object: the old node loses it.
            if let Ok(n) = self.get(old) {
                self.change_names(&n, |names| {
                    names.retain(|(p, nm)| !(*p == parent && nm.as_os_str() == name))
                });
            }
        }
    }

    fn unindex(&self, (parent, name): &(u64, Name), id: u64) {
        let key = self.key(*parent, name.as_os_str());
        let mut idx = sync::lock(&self.by_name);
        if idx.get(&key) == Some(&id) {
            idx.remove(&key);
        }
    }

    /// The node currently known by (parent, name), if any.
    pub fn by_name(&self, parent: u64, name: &OsStr) -> Option<Arc<Node>> {
        let key = self.key(parent, name);
        let id = *sync::lock(&self.by_name).get(&key)?;
        self.get(id).ok().filter(|n| has_name(n, parent, name))
    }

    /// Take (parent, name) out of the index: the node that held it, if any.
    fn take_name(&self, parent: u64, name: &OsStr) -> Option<Arc<Node>> {
        let key = self.key(parent, name);
        // The index lock is not held while the table or a node is locked:
        // forget takes them in the other order.
        let id = *sync::lock(&self.by_name).get(&key)?;
        let node = self.get(id).ok().filter(|n| has_name(n, parent, name))?;
        let mut idx = sync::lock(&self.by_name);
        if idx.get(&key) == Some(&id) {
            idx.remove(&key);
        }
        Some(node)
    }

    /// The name (parent, name) is gone: drop it from whichever node holds it.
    pub fn drop_name(&self, parent: u64, name: &OsStr) {
        if let Some(node) = self.take_name(parent, name) {
            self.change_names(&node, |names| {
                names.retain(|(p, n)| !(*p == parent && n.as_os_str() == name))
            });
        }
    }

    /// The directory `id` lost its name; `last` is what it showed (its link
    /// count is made 0).
    pub fn dir_removed(&self, id: u64, mut last: Stat) {
        last.st_nlink = 0;
        sync::lock(&self.removed_dirs).insert(id, last);
    }

    /// What the removed directory `id` shows, if it is one.
    pub fn removed_dir(&self, id: u64) -> Option<Stat> {
        sync::lock(&self.removed_dirs).get(&id).copied()
    }

    /// Change what the removed directory `id` shows.
    pub fn update_removed_dir(&self, id: u64, f: impl FnOnce(&mut Stat)) -> Option<Stat> {
        let mut dirs = sync::lock(&self.removed_dirs);
        let st = dirs.get_mut(&id)?;
        f(st);
        Some(*st)
    }

    /// The object of `st_ino` was deleted (its last name removed): its inode
    /// number may come back for another object.
    pub fn deleted(&self, st_ino: u64) {
        if let Ok(node) = self.get(node_id_for(st_ino, false)) {
            node.generation.fetch_or(GONE, Ordering::AcqRel);
        }
    }

    /// The object named (parent, name) is now named (new_parent, new_name);
    /// whatever had the new name loses it.
    pub fn rename_name(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        self.drop_name(new_parent, new_name);
        let Some(node) = self.take_name(parent, name) else {
            return;
        };
        self.change_names(&node, |names| {
            for entry in names.iter_mut() {
                if entry.0 == parent && entry.1.as_os_str() == name {
                    *entry = (new_parent, Name::new(new_name));
                }
            }
        });
        self.index(new_parent, new_name, node.id);
    }

    /// Change a node's names. A lower path the node rebuilds from its first
    /// name is made whole first, since that name may go or move.
    fn change_names(&self, node: &Node, change: impl FnOnce(&mut Names)) {
        let derived = node.state().keeps_no_lower_path();
        // Rebuilt with no node locked (it locks the table and the parent).
        let whole = derived.then(|| self.top_lower(&node.snapshot())).flatten();
        let mut st = node.state();
        if let Some(whole) = whole
            && st.keeps_no_lower_path()
        {
            st.lowers[0] = whole;
        }
        change(&mut st.names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(lowers: &[(usize, &str)]) -> NodeState {
        NodeState {
            is_dir: true,
            lowers: lowers.iter().map(|(l, p)| (*l, PathBuf::from(p))).collect(),
            ..NodeState::default()
        }
    }

    fn file(li: usize, path: &str) -> NodeState {
        NodeState {
            lowers: smallvec::smallvec![(li, PathBuf::from(path))],
            ..NodeState::default()
        }
    }

    fn stored_path(t: &InodeTable, id: u64) -> PathBuf {
        t.get(id).unwrap().snapshot().lowers[0].1.clone()
    }

    fn top(t: &InodeTable, id: u64) -> Option<(usize, PathBuf)> {
        t.top_lower(&t.get(id).unwrap().snapshot())
    }

    #[test]
    fn a_lower_path_under_the_parents_is_rebuilt_not_kept() {
        let t = InodeTable::default();
        t.remember(1, true, ROOT_ID, OsStr::new(""), dir(&[(1, "")]), true);
        t.remember(
            10,
            false,
            ROOT_ID,
            OsStr::new("d"),
            dir(&[(1, "d"), (2, "d")]),
            true,
        );
        let f = t.remember(20, false, 10, OsStr::new("f"), file(2, "d/f"), true);
        assert_eq!(stored_path(&t, f.id), PathBuf::new());
        assert_eq!(top(&t, f.id), Some((2, PathBuf::from("d/f"))));
        // Found elsewhere (a redirect): kept whole.
        let g = t.remember(21, false, 10, OsStr::new("g"), file(1, "old/g"), true);
        assert_eq!(stored_path(&t, g.id), PathBuf::from("old/g"));
        assert_eq!(top(&t, g.id), Some((1, PathBuf::from("old/g"))));
    }

    #[test]
    fn names_changing_keep_the_lower_path() {
        let t = InodeTable::default();
        t.remember(1, true, ROOT_ID, OsStr::new(""), dir(&[(1, "")]), true);
        t.remember(10, false, ROOT_ID, OsStr::new("a"), dir(&[(1, "a")]), true);
        t.remember(11, false, ROOT_ID, OsStr::new("b"), dir(&[(1, "b")]), true);
        // Two names of one lower file (a hard-link group).
        t.remember(30, false, 10, OsStr::new("x"), file(1, "a/x"), true);
        let n = t.remember(30, false, 11, OsStr::new("y"), file(1, "b/y"), true);
        assert_eq!(top(&t, n.id), Some((1, PathBuf::from("b/y"))));
        t.drop_name(11, OsStr::new("y"));
        assert_eq!(top(&t, n.id), Some((1, PathBuf::from("b/y"))));
        t.rename_name(10, OsStr::new("x"), 11, OsStr::new("z"));
        assert_eq!(top(&t, n.id), Some((1, PathBuf::from("b/y"))));
        // Its own state passed back under another name keeps its path too.
        let again = t.remember(30, false, 10, OsStr::new("w"), n.snapshot(), false);
        assert_eq!(top(&t, again.id), Some((1, PathBuf::from("b/y"))));
    }
}
