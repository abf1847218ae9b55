//! Resolving a name through the stack: whiteouts, opaque directories, redirects,
//! and the identity (`st_ino`) of what is found.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ondisk::redirect::{self, Redirect};
use ondisk::whiteout;
use ondisk::xattr::Key;
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::Branch;
use crate::inode::{Lowers, Names, Node, NodeState, ROOT_ID};
use crate::layer::{get_xattr, open_path_at, split, stat_at};
use crate::names::{self, has_opaque_xattr, is_whiteout};
use crate::sync;
use crate::{Result, Union, sys};

/// What a name resolves to.
pub struct Resolved {
    pub state: NodeState,
    /// lstat of the topmost entry.
    pub stat: Stat,
    pub st_ino: u64,
}

impl Resolved {
    /// Removing this name deletes the object: a directory, or a file with no
    /// other link (a lower hard-link group keeps its other names).
    pub(crate) fn is_last_link(&self) -> bool {
        self.state.is_dir || (self.stat.st_nlink <= 1 && self.state.index.is_none())
    }

    /// A lower file that may have other names (a hard-link group).
    pub(crate) fn may_be_lower_link(&self) -> bool {
        !self.state.is_dir
            && !self.state.upper
            && (self.state.index.is_some() || self.stat.st_nlink > 1)
    }
}

pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Branch directories opened while resolving the names of one directory (a
/// listing resolves every entry), so each is opened once rather than per name.
#[derive(Default)]
pub(crate) struct DirCache {
    fds: RefCell<HashMap<(usize, PathBuf), OpenedDir>>,
}

/// A branch directory opened once, or None where the path is no directory.
type OpenedDir = Option<Arc<OwnedFd>>;

impl DirCache {
    /// The directory `path` of branch `layer`, or None where it is not one.
    fn dir(&self, u: &Union, layer: usize, path: &Path) -> Result<OpenedDir> {
        let key = (layer, path.to_path_buf());
        if let Some(fd) = self.fds.borrow().get(&key) {
            return Ok(fd.clone());
        }
        let fd = match u.branch(Branch::Layer(layer))?.dir(path) {
            Ok(fd) => Some(fd),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => None,
            Err(e) => return Err(e),
        };
        self.fds.borrow_mut().insert(key, fd.clone());
        Ok(fd)
    }
}

/// Where a lookup continues in the branches below.
enum Below {
    /// The parent's own lower directories, joined with the name.
    Parent,
    /// A relative redirect: the parent's lower directories, joined with this name.
    Relative(PathBuf),
    /// An absolute redirect: the same path in every branch below `after`.
    Absolute { after: usize, path: PathBuf },
}

impl Union {
    /// Build the root node: the upper's root over every lower root down to an opaque one.
    pub(crate) fn init_root(&self) -> Result<()> {
        let mut lowers = Lowers::new();
        let first_lower = usize::from(self.has_upper());
        let mut opaque = false;
        if self.has_upper() {
            opaque = has_opaque_xattr(self.upper().root_fd())?;
        }
        if !opaque {
            for (n, layer) in self.layers.iter().enumerate().skip(first_lower) {
                lowers.push((n, PathBuf::new()));
                if has_opaque_xattr(layer.root_fd())? {
                    break;
                }
            }
        }
        let top = self.upper();
        let stat = rustix::fs::fstat(&top.root)?;
        let st_ino = self.dir_ino(self.has_upper(), &lowers, &stat)?;
        let state = NodeState {
            names: Names::new(),
            is_dir: true,
            upper: self.has_upper(),
            lowers,
            opaque,
            index: None,
            metacopy: false,
            xattr_names: None,
        };
        self.inodes
            .remember(st_ino, true, ROOT_ID, OsStr::new(""), state, true);
        Ok(())
    }

    /// FUSE lookup: resolve `name` in `parent`, remember it, count the lookup.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(Arc<Node>, Stat)> {
        if name.len() > 255 {
            return Err(Errno::NAMETOOLONG);
        }
        let _ns = sync::read(&self.namespace);
        let dir = self.node(parent)?;
        let dir_state = dir.snapshot();
        if !dir_state.is_dir {
            return Err(Errno::NOTDIR);
        }
        let dir_path = self.path_of(&dir)?;
        let found = self
            .resolve_child(&dir_state, &dir_path, name)?
            .ok_or(Errno::NOENT)?;
        if !found.state.is_dir {
            self.stat_walk.looked_up_file(parent);
        }
        let node = self
            .inodes
            .remember(found.st_ino, false, parent, name, found.state, true);
        Ok((node, found.stat))
    }

    /// Resolve `name` inside the directory `dir` (merged path `dir_path`).
    pub(crate) fn resolve_child(
        &self,
        dir: &NodeState,
        dir_path: &Path,
        name: &OsStr,
    ) -> Result<Option<Resolved>> {
        self.resolve_child_in(dir, dir_path, name, &DirCache::default())
    }

    /// `resolve_child` reusing the branch directories `cache` holds open.
    pub(crate) fn resolve_child_in(
        &self,
        dir: &NodeState,
        dir_path: &Path,
        name: &OsStr,
        cache: &DirCache,
    ) -> Result<Option<Resolved>> {
        if name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(Errno::INVAL);
        }
        let mut top: Option<(usize, Stat)> = None;
        let mut state = NodeState::default();
        let mut below = Below::Parent;
        if self.has_upper() && dir.upper {
            if self.is_hidden_upper_name(dir_path, name) {
                return Ok(None);
            }
            if let Some(updir) = cache.dir(self, 0, dir_path)? {
                match stat_at(updir.as_fd(), name) {
                    Ok(st) => {
                        if is_whiteout(updir.as_fd(), name, &st)? {
                            return Ok(None);
                        }
                        state.upper = true;
                        if !is_dir(&st) {
                            let found =
                                self.resolve_upper_file(dir, updir.as_fd(), name, st, cache)?;
                            return Ok(Some(found));
                        }
                        state.is_dir = true;
                        let fd = open_dir_at(updir.as_fd(), name)?;
                        let marks = names::dir_marks(fd.as_fd())?;
                        state.opaque = marks.opaque;
                        if let Some(r) = marks.redirect {
                            below = redirect_target(&r, 0);
                        }
                        top = Some((0, st));
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !state.opaque {
            self.resolve_in_lowers(dir, name, below, &mut top, &mut state, cache)?;
        }
        let Some((top_layer, stat)) = top else {
            return Ok(None);
        };
        let st_ino = if state.is_dir {
            self.dir_ino(state.upper, &state.lowers, &stat)?
        } else {
            self.branch(Branch::Layer(top_layer))?.ino_prefix | stat.st_ino
        };
        Ok(Some(Resolved {
            state,
            stat,
            st_ino,
        }))
    }

    fn resolve_in_lowers(
        &self,
        dir: &NodeState,
        name: &OsStr,
        mut below: Below,
        top: &mut Option<(usize, Stat)>,
        state: &mut NodeState,
        cache: &DirCache,
    ) -> Result<()> {
        let first_lower = usize::from(self.has_upper());
        let mut layer_idx = first_lower;
        while layer_idx < self.layers.len() {
            let Some(path) = candidate(&below, dir, layer_idx, name) else {
                layer_idx += 1;
                continue;
            };
            // An absolute redirect names a path from the root of each branch
            // below: its directories there may hide the branches further down.
            let mut last_layer = false;
            if matches!(below, Below::Absolute { .. }) {
                match self.redirect_ancestors(layer_idx, &path, cache)? {
                    Ancestors::Missing => {
                        layer_idx += 1;
                        continue;
                    }
                    Ancestors::Hidden => break,
                    Ancestors::Open { opaque } => last_layer = opaque,
                }
            }
            let (parent, lname) = split(&path);
            let Some(lname) = lname else { break };
            let Some(ldir) = cache.dir(self, layer_idx, parent)? else {
                if last_layer {
                    break;
                }
                layer_idx += 1;
                continue;
            };
            let st = match stat_at(ldir.as_fd(), lname) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    if last_layer || oci_whiteout_present(ldir.as_fd(), lname)? {
                        break;
                    }
                    layer_idx += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if whiteout::is_meta_name(lname.as_bytes()) || is_whiteout(ldir.as_fd(), lname, &st)? {
                break;
            }
            if top.is_none() && !is_dir(&st) {
                let mut st = st;
                if st.st_nlink > 1 {
                    // A hard-link group copied up through another name: read its copy.
                    if let Some((key, ist)) = self.index_entry(layer_idx, &path)? {
                        let fd = open_path_at(self.branch(Branch::Index)?.root_fd(), &key)?;
                        // The group keeps its lower inode number.
                        let (ino, dev) = (st.st_ino, st.st_dev);
                        st = ist;
                        (st.st_ino, st.st_dev) = (ino, dev);
                        st.st_nlink = self.shown_nlink(fd.as_fd(), ist.st_nlink);
                        state.index = Some(key.into_boxed_os_str());
                    }
                }
                state.lowers.push((layer_idx, path));
                *top = Some((layer_idx, st));
                break;
            }
            if !is_dir(&st) {
                // A non-directory below a directory ends the merge.
                break;
            }
            state.is_dir = true;
            state.lowers.push((layer_idx, path.clone()));
            if top.is_none() {
                *top = Some((layer_idx, st));
            }
            let fd = open_dir_at(ldir.as_fd(), lname)?;
            let marks = names::dir_marks(fd.as_fd())?;
            if marks.opaque
                || oci_whiteout_present(ldir.as_fd(), lname)?
                || stat_at(fd.as_fd(), OsStr::from_bytes(whiteout::OPAQUE)).is_ok()
            {
                break;
            }
            if last_layer {
                break;
            }
            if let Some(r) = marks.redirect {
                below = redirect_target(&r, layer_idx);
            }
            layer_idx += 1;
        }
        Ok(())
    }

    /// The directories above `path` in branch `layer`, walked as kernel
    /// overlayfs walks an absolute redirect there: a missing one means the
    /// branch holds nothing for it; a whiteout or a non-directory hides this
    /// and every branch below; an opaque one hides the branches below.
    fn redirect_ancestors(&self, layer: usize, path: &Path, cache: &DirCache) -> Result<Ancestors> {
        let mut opaque = false;
        let mut at = PathBuf::new();
        let parent = path.parent().unwrap_or(Path::new(""));
        for comp in parent.components() {
            let name = comp.as_os_str();
            let Some(dir) = cache.dir(self, layer, &at)? else {
                return Ok(Ancestors::Missing);
            };
            let st = match stat_at(dir.as_fd(), name) {
                Ok(st) => st,
                Err(Errno::NOENT) if oci_whiteout_present(dir.as_fd(), name)? => {
                    return Ok(Ancestors::Hidden);
                }
                Err(Errno::NOENT) => return Ok(Ancestors::Missing),
                Err(e) => return Err(e),
            };
            if whiteout::is_meta_name(name.as_bytes())
                || is_whiteout(dir.as_fd(), name, &st)?
                || !is_dir(&st)
            {
                return Ok(Ancestors::Hidden);
            }
            let fd = open_dir_at(dir.as_fd(), name)?;
            if names::dir_marks(fd.as_fd())?.opaque
                || stat_at(fd.as_fd(), OsStr::from_bytes(whiteout::OPAQUE)).is_ok()
            {
                opaque = true;
            }
            at.push(name);
        }
        Ok(Ancestors::Open { opaque })
    }

    /// Is `name` hidden by a whiteout in a lower branch of `dir`?
    pub(crate) fn whited_out_below(&self, dir: &NodeState, name: &OsStr) -> Result<bool> {
        for (li, lpath) in &dir.lowers {
            let ldir = match self.branch(Branch::Layer(*li))?.dir(lpath) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            match stat_at(ldir.as_fd(), name) {
                Ok(st) => return is_whiteout(ldir.as_fd(), name, &st),
                Err(Errno::NOENT) => {
                    if oci_whiteout_present(ldir.as_fd(), name)? {
                        return Ok(true);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Names in the upper that belong to unionmount itself.
    pub(crate) fn is_hidden_upper_name(&self, dir_path: &Path, name: &OsStr) -> bool {
        self.cfg.workdir.is_none() && dir_path.as_os_str().is_empty() && name == names::COW_WORKDIR
    }

    /// `st_ino` of a directory: its topmost lower's when it has lowers (so it does
    /// not change when the directory is copied up), else its upper's.
    pub(crate) fn dir_ino(
        &self,
        upper: bool,
        lowers: &[(usize, PathBuf)],
        top: &Stat,
    ) -> Result<u64> {
        match lowers.first() {
            Some((li, path)) if upper => {
                let st = self.branch(Branch::Layer(*li))?.stat(path)?;
                Ok(self.branch(Branch::Layer(*li))?.ino_prefix | st.st_ino)
            }
            Some((li, _)) => Ok(self.branch(Branch::Layer(*li))?.ino_prefix | top.st_ino),
            None => Ok(self.upper().ino_prefix | top.st_ino),
        }
    }

    /// An upper non-directory: its identity, hard-link group and link count,
    /// and for a copy holding metadata only, where its data is below.
    fn resolve_upper_file(
        &self,
        dir: &NodeState,
        updir: BorrowedFd<'_>,
        name: &OsStr,
        mut st: Stat,
        cache: &DirCache,
    ) -> Result<Resolved> {
        let mut state = NodeState {
            upper: true,
            ..NodeState::default()
        };
        // One descriptor for the origin and the link count.
        let fd = open_path_at(updir, name)?;
        let (mut st_ino, index, origin) = self.upper_file_ino(fd.as_fd(), &st)?;
        state.index = index.map(std::ffi::OsString::into_boxed_os_str);
        if state.index.is_none() && self.is_metacopy(fd.as_fd(), &st, origin)? {
            state.metacopy = true;
            let (lowers, data_ino) = self.metacopy_data(dir, name, fd.as_fd(), cache)?;
            state.lowers = lowers;
            // Made without an origin: the data's inode is the object's.
            if !origin {
                st_ino = data_ino.unwrap_or(st_ino);
            }
        }
        if st.st_nlink > 1 {
            st.st_nlink = self.shown_nlink(fd.as_fd(), st.st_nlink);
        }
        Ok(Resolved {
            state,
            stat: st,
            st_ino,
        })
    }

    /// `st_ino` of an upper non-directory: the inode it was copied up from when its
    /// origin still resolves (so copy-up keeps `st_ino`), else its own; the
    /// index entry it shares with its lower hard-link group, if any; and
    /// whether it has an origin at all.
    fn upper_file_ino(
        &self,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<(u64, Option<std::ffi::OsString>, bool)> {
        let own = self.upper().ino_prefix | st.st_ino;
        let Some(origin) = get_xattr(fd, self.cfg.xattr_ns.name(Key::Origin))? else {
            return Ok((own, None, false));
        };
        let index = (st.st_nlink > 1 && self.is_indexed_copy(&origin, st))
            .then(|| ondisk::origin::index_name(&origin).into());
        Ok((self.decode_origin(&origin, st).unwrap_or(own), index, true))
    }

    /// Is the upper regular file `fd` marked as holding metadata only? Such a
    /// copy holds no data: it is sparse, or (the kernel's, with an origin)
    /// takes at most the one block of its xattrs. Files with data, copied
    /// up or made in the upper, cost no extra syscall.
    fn is_metacopy(&self, fd: BorrowedFd<'_>, st: &Stat, origin: bool) -> Result<bool> {
        let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        let sparse = st.st_size > 0 && st.st_blocks * 512 < st.st_size;
        let xattr_block_at_most = st.st_blocks * 512 <= 4096;
        if !regular || !(sparse || origin && xattr_block_at_most) {
            return Ok(false);
        }
        Ok(get_xattr(fd, self.cfg.xattr_ns.name(Key::Metacopy))?.is_some())
    }

    /// Where the data of an upper file holding metadata only lives: the lower
    /// file its redirect names, or the one of its name below, as kernel
    /// overlayfs finds it, with its `st_ino`. Nothing when no lower has it
    /// (reads then fail: EIO).
    fn metacopy_data(
        &self,
        dir: &NodeState,
        name: &OsStr,
        fd: BorrowedFd<'_>,
        cache: &DirCache,
    ) -> Result<(Lowers, Option<u64>)> {
        let below = match get_xattr(fd, self.cfg.xattr_ns.name(Key::Redirect))? {
            Some(r) => redirect_target(&r, 0),
            None => Below::Parent,
        };
        let mut top = None;
        let mut found = NodeState::default();
        self.resolve_in_lowers(dir, name, below, &mut top, &mut found, cache)?;
        match top {
            Some((li, st))
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && found.index.is_none() =>
            {
                Ok((
                    found.lowers,
                    Some(self.branch(Branch::Layer(li))?.ino_prefix | st.st_ino),
                ))
            }
            _ => Ok((Lowers::new(), None)),
        }
    }

    fn decode_origin(&self, origin: &[u8], upper: &Stat) -> Option<u64> {
        let (uuid, handle) = ondisk::origin::parse(origin)?;
        for layer in &self.layers[1..] {
            if layer.uuid != uuid {
                continue;
            }
            if let Ok(fd) = sys::open_by_handle(layer.handle_fd.as_fd(), &handle) {
                let st = rustix::fs::fstat(&fd).ok()?;
                // Names of a lower hard-link group share its inode only while they
                // share the copy in the index; a group broken up (by kernel
                // overlayfs without index) must not merge into one node.
                if st.st_nlink > 1 && !self.is_indexed_copy(origin, upper) {
                    return None;
                }
                return Some(layer.ino_prefix | st.st_ino);
            }
        }
        None
    }

    /// The link count of the lower object an upper one (`fd`) was copied from.
    pub(crate) fn origin_nlink(&self, fd: BorrowedFd<'_>) -> Option<u64> {
        let origin = get_xattr(fd, self.cfg.xattr_ns.name(Key::Origin)).ok()??;
        let (uuid, handle) = ondisk::origin::parse(&origin)?;
        let first_lower = usize::from(self.has_upper());
        self.layers[first_lower..]
            .iter()
            .filter(|l| l.uuid == uuid)
            .find_map(|l| sys::open_by_handle(l.handle_fd.as_fd(), &handle).ok())
            .and_then(|f| rustix::fs::fstat(&f).ok())
            .map(|st| st.st_nlink)
    }

    /// The origin xattr value (kernel `struct ovl_fb`) for a lower object.
    pub(crate) fn encode_origin(&self, layer: usize, path: &Path) -> Option<Vec<u8>> {
        let layer = self.layers.get(layer)?;
        let (parent, name) = split(path);
        let dir = layer.dir(parent).ok()?;
        let handle = sys::name_to_handle(dir.as_fd(), name?).ok()?;
        Some(ondisk::origin::encode(&layer.uuid, &handle))
    }
}

/// What a branch's directories above an absolute redirect's target allow.
enum Ancestors {
    /// One is missing: nothing there in this branch, look further down.
    Missing,
    /// A whiteout or a non-directory: nothing there nor further down.
    Hidden,
    /// All there; an opaque one among them ends the lookup with this branch.
    Open { opaque: bool },
}

/// Where the lookup continues after a redirect found in branch `layer`.
fn redirect_target(r: &[u8], layer: usize) -> Below {
    match redirect::parse(r) {
        Redirect::Absolute(abs) => Below::Absolute {
            after: layer,
            path: abs.to_path_buf(),
        },
        Redirect::Relative(p) => Below::Relative(p.to_path_buf()),
    }
}

/// The path to try in branch `layer`, or None when it holds no candidate.
fn candidate(below: &Below, dir: &NodeState, layer: usize, name: &OsStr) -> Option<PathBuf> {
    let in_parent = |n: &Path| {
        let (_, dpath) = dir.lowers.iter().find(|(l, _)| *l == layer)?;
        Some(dpath.join(n))
    };
    match below {
        Below::Parent => in_parent(Path::new(name)),
        Below::Relative(r) => in_parent(r),
        Below::Absolute { after, path } => (layer > *after).then(|| path.clone()),
    }
}

/// Open the directory `name` in `dir` for reading its xattrs directly (an O_PATH
/// descriptor where it may not be read).
fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    let flags = rustix::fs::OFlags::RDONLY
        | rustix::fs::OFlags::DIRECTORY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, rustix::fs::Mode::empty()) {
        Err(Errno::ACCESS) => open_path_at(dir, name),
        other => other,
    }
}

/// Is there an OCI `.wh.NAME` beside NAME?
fn oci_whiteout_present(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    if name.len() + whiteout::PREFIX.len() > 255 {
        return Ok(false);
    }
    match stat_at(
        dir,
        OsStr::from_bytes(&whiteout::whiteout_name(name.as_bytes())),
    ) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
