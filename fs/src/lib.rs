//! Union filesystem semantics in kernel overlayfs format, and their FUSE adapter.
//!
//! The union logic (`Union` and its operations, one module per kind of operation)
//! does not depend on `fuser`; only `fuse` translates FUSE requests into it.

mod acl;
mod attr;
mod claim;
mod copy_up;
mod dir;
mod file;
mod flags;
pub mod fuse;
mod hardlink;
mod inode;
mod layer;
mod lookup;
mod lower_links;
pub mod mountinfo;
mod names;
pub mod probe;
mod readdir;
mod rename;
mod stat_walk;
mod sync;
mod sys;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};
pub use rustix::io::Errno;

// What a caller of `Union`'s operations passes in (the FUSE adapter, the
// in-process tests in fs/tests/).
pub use crate::attr::{SetAttr, SetTime};
pub use crate::dir::{Caller, NewObject, SHARED_WHITEOUT};
pub use crate::flags::FlagsIoctl;
pub use crate::inode::ROOT_ID;
use crate::inode::{InodeTable, Node};
pub use crate::layer::Atime;
use crate::layer::Layer;
pub use crate::names::{IdMap, IdRange};
pub use ondisk::xattr::XattrNs;

pub type Result<T> = std::result::Result<T, Errno>;

/// Where an object lives: one of the configured layers (0 is the top), or
/// the hard-link index in the work directory, which holds the shared copy of
/// a copied-up hard-link group. A type rather than a sentinel number, so that
/// only [`Union::branch`] turns it into a layer and no site can index the
/// layer list with the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Branch {
    Layer(usize),
    Index,
}

impl Branch {
    /// The top layer: the upper of a mount that has one.
    pub(crate) const TOP: Branch = Branch::Layer(0);
}

/// For messages: the layer number, or "index".
impl std::fmt::Display for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Branch::Layer(n) => write!(f, "{n}"),
            Branch::Index => f.write_str("index"),
        }
    }
}

/// One branch as configured, top first.
#[derive(Debug, Clone)]
pub struct BranchConfig {
    pub path: PathBuf,
    pub writable: bool,
}

/// What a mount asks of the union.
#[derive(Debug, Clone)]
pub struct Config {
    /// Top first. With copy-on-write the first branch is the upper.
    pub branches: Vec<BranchConfig>,
    /// Kernel-style workdir (its `work/` subdirectory holds temporary files).
    pub workdir: Option<PathBuf>,
    /// Copy lower objects up into the first branch when they are changed.
    pub cow: bool,
    pub xattr_ns: XattrNs,
    pub uids: IdMap,
    pub gids: IdMap,
    /// Skip fsync (containers' `volatile`). The workdir is marked as kernel
    /// overlayfs marks it (`work/incompat/volatile`) until a clean unmount
    /// ([`Union::unmounted_cleanly`]); a workdir a crashed volatile mount left
    /// marked is refused, by this mount and by the kernel.
    pub volatile: bool,
    /// Copy up only metadata for chown, chmod, utimes and xattr changes of a
    /// lower file (kernel overlayfs `metacopy=on`): the upper gets a sparse
    /// file marked `overlay.metacopy`, its data is copied at the first open
    /// for writing. Kernel overlayfs reads such an upper with `metacopy=on`
    /// only, so it is off unless asked for. Uppers made so are read either way.
    pub metacopy: bool,
    /// The mount's atime option: how reads through it move the atime of
    /// upper objects (lower ones never get theirs moved, as with the kernel).
    pub atime: Atime,
    /// A `nodiratime` mount: the same for upper directories.
    pub nodiratime: bool,
}

/// The merged filesystem: branches, the inode table and open handles.
pub struct Union {
    pub(crate) layers: Vec<Layer>,
    pub(crate) cfg: Config,
    /// Where temporary objects are made before a rename publishes them.
    pub(crate) work: Option<OwnedFd>,
    /// Upper copies of lower hard-link groups, by origin (`index/` beside `work/`,
    /// as kernel overlayfs keeps it with index=on).
    pub(crate) index: Option<Layer>,
    pub(crate) inodes: InodeTable,
    pub(crate) handles: file::Handles,
    /// Held shared while a path is computed and used, exclusively while names move.
    pub(crate) namespace: RwLock<()>,
    /// The daemon cannot chown or mknod: owners live in `override_stat` xattrs.
    pub(crate) rootless: bool,
    tmp_counter: AtomicU64,
    /// Counts changes to names and to where objects live (create, link, unlink,
    /// rename, copy-up): a listing read before a change is not trusted after it.
    pub(crate) changes: AtomicU64,
    /// Directory listings being read.
    listings: readdir::Listings,
    /// Whether listings should carry their files' attributes.
    pub(crate) stat_walk: stat_walk::StatWalk,
    /// The whiteout inode every new whiteout is a link of.
    shared_whiteout: std::sync::Mutex<dir::SharedWhiteout>,
    /// Every name of each lower hard-link group, found when first needed.
    lower_groups: std::sync::OnceLock<lower_links::LowerGroups>,
    /// Held while names are linked to a hard-link group's copy, so that no
    /// two requests link one name.
    group_links: std::sync::Mutex<()>,
    /// This mount's hold on its upper and workdir (none without an upper).
    claim: Option<claim::Claim>,
}

impl Union {
    pub fn new(cfg: Config) -> std::io::Result<Union> {
        if cfg.branches.is_empty() {
            return Err(std::io::Error::other("no branches"));
        }
        let mut layers = Vec::new();
        for b in &cfg.branches {
            let layer = Layer::open(&b.path, b.writable)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", b.path.display())))?;
            layers.push(layer);
        }
        assign_ino_prefixes(&mut layers);
        for layer in layers.iter_mut().filter(|l| l.writable) {
            if cfg.atime != Atime::Relative || cfg.nodiratime {
                layer.atime_through_clone(cfg.atime, cfg.nodiratime);
            }
        }
        let (work, index, claim) = if cfg.cow && layers[0].writable {
            let (work, index, claim) =
                prepare_workdir(&layers[0], cfg.workdir.as_deref(), cfg.volatile)?;
            let abilities = probe_upper(work.as_fd(), cfg.xattr_ns)?;
            refuse_unfit_upper(&layers[0].path, &abilities)?;
            (Some(work), Some(index), Some(claim))
        } else {
            (None, None, None)
        };
        let union = Union {
            layers,
            cfg,
            work,
            index,
            inodes: InodeTable::default(),
            handles: file::Handles::default(),
            listings: readdir::Listings::default(),
            stat_walk: Default::default(),
            shared_whiteout: Default::default(),
            namespace: RwLock::new(()),
            rootless: !rustix::process::geteuid().is_root(),
            tmp_counter: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            lower_groups: Default::default(),
            group_links: Default::default(),
            claim,
        };
        union.init_root().map_err(std::io::Error::from)?;
        Ok(union)
    }

    /// Is the first branch an upper that takes copy-ups?
    pub(crate) fn has_upper(&self) -> bool {
        self.work.is_some()
    }

    pub(crate) fn upper(&self) -> &Layer {
        &self.layers[0]
    }

    /// The layer a branch names; ESTALE for one this mount does not have.
    pub(crate) fn branch(&self, b: Branch) -> Result<&Layer> {
        match b {
            Branch::Layer(n) => self.layers.get(n),
            Branch::Index => self.index.as_ref(),
        }
        .ok_or(Errno::STALE)
    }

    pub(crate) fn work_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::ROFS)
    }

    /// Note a change to names or to where an object lives.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn change_count(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// A fresh name for a temporary object in the workdir.
    pub(crate) fn temp_name(&self) -> OsString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{:x}.{n}", std::process::id()))
    }

    pub(crate) fn node(&self, id: u64) -> Result<std::sync::Arc<Node>> {
        self.inodes.get(id)
    }

    /// The merged path of a node (also its path in the upper), from its first name.
    pub(crate) fn path_of(&self, node: &Node) -> Result<PathBuf> {
        let mut parts: Vec<OsString> = Vec::new();
        let mut cur = node.id;
        let mut guard = 0;
        while cur != ROOT_ID {
            let n = self.node(cur)?;
            // A node without a name was unlinked or renamed over since the kernel
            // looked it up: ESTALE makes the kernel look the path up again.
            let (parent, name) = n.state().names.first().cloned().ok_or(Errno::STALE)?;
            parts.push(name.as_os_str().to_os_string());
            cur = parent;
            guard += 1;
            if guard > 4096 {
                return Err(Errno::LOOP);
            }
        }
        Ok(parts.iter().rev().collect())
    }

    /// Remove a workdir temp entry, whatever it is.
    pub(crate) fn remove_temp(&self, name: &OsStr) {
        if let Ok(work) = self.work_fd() {
            let _ = remove_tree_at(work, name);
        }
    }

    /// The mount ended cleanly (unmounted, every request answered). A volatile
    /// mount makes its upper durable now (syncfs) and drops the workdir's
    /// volatile marker, so the next mount may use it; kernel overlayfs keeps
    /// its marker instead, since it cannot tell a clean end from a crash.
    pub fn unmounted_cleanly(&self) -> std::io::Result<()> {
        if !self.cfg.volatile {
            return Ok(());
        }
        let Some(work) = &self.work else {
            return Ok(());
        };
        rustix::fs::syncfs(&self.upper().handle_fd)?;
        remove_tree_at(work.as_fd(), OsStr::new(INCOMPAT_DIR))?;
        rustix::fs::fsync(work)?;
        Ok(())
    }

    /// Record the mountpoint this union is served at, so that a refused
    /// second mount of its upper or workdir can name it.
    pub fn record_mountpoint(&self, mountpoint: &Path) -> std::io::Result<()> {
        match &self.claim {
            Some(c) => c.record_holder(mountpoint),
            None => Ok(()),
        }
    }

    /// Number of nodes the kernel currently knows (for tests and the memory bound).
    pub fn node_count(&self) -> usize {
        self.inodes.len()
    }
}

/// Layers on filesystems other than the upper's get distinct high bits in `st_ino`.
fn assign_ino_prefixes(layers: &mut [Layer]) {
    let mut devs: Vec<u64> = Vec::new();
    for layer in layers.iter_mut() {
        let idx = match devs.iter().position(|d| *d == layer.dev) {
            Some(i) => i,
            None => {
                devs.push(layer.dev);
                devs.len() - 1
            }
        };
        layer.ino_prefix = (idx as u64) << 48;
    }
}

/// `work/incompat/<feature>`: a directory the kernel refuses to mount with.
const INCOMPAT_DIR: &str = "incompat";
const VOLATILE_DIR: &str = "volatile";
const VOLATILE_DIRTY: &str = "dirty";

/// Open (creating) the workdir's `work/` for temporary objects and `index/` for
/// hard-link groups. `work/` is emptied: whatever a crash left there was never
/// visible. But first, like the kernel, refuse a workdir marked by a volatile
/// mount that never ended cleanly (its upper may have lost writes); a volatile
/// mount marks it. Without a workdir both live in a hidden directory of the upper.
fn prepare_workdir(
    upper: &Layer,
    workdir: Option<&Path>,
    volatile: bool,
) -> std::io::Result<(OwnedFd, Layer, claim::Claim)> {
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let base = match workdir {
        Some(w) => rustix::fs::open(w, dir_flags, Mode::empty())?,
        None => {
            mkdir_if_missing(upper.root.as_fd(), names::COW_WORKDIR)?;
            rustix::fs::openat(
                &upper.root,
                names::COW_WORKDIR,
                dir_flags | OFlags::NOFOLLOW,
                Mode::empty(),
            )?
        }
    };
    let shown = workdir.map_or_else(|| upper.path.join(names::COW_WORKDIR), Path::to_path_buf);
    // Before anything in the workdir is touched: another mount may be using it.
    let claim = claim::Claim::take(upper.root.as_fd(), &upper.path, base.as_fd(), &shown)?;
    mkdir_if_missing(base.as_fd(), "work")?;
    mkdir_if_missing(base.as_fd(), "index")?;
    let work = rustix::fs::openat(
        &base,
        "work",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    check_incompat(work.as_fd(), &shown.join("work"))?;
    for name in list_names(work.as_fd())? {
        remove_tree_at(work.as_fd(), &name)?;
    }
    if volatile {
        mark_volatile(work.as_fd())?;
    }
    let index_path = std::path::PathBuf::from("/proc/self/fd")
        .join(base.as_raw_fd().to_string())
        .join("index");
    let mut index = Layer::open(&index_path, true)?;
    index.path = workdir
        .map_or_else(|| upper.path.join(names::COW_WORKDIR), Path::to_path_buf)
        .join("index");
    index.ino_prefix = upper.ino_prefix;
    Ok((work, index, claim))
}

/// Refuse `work/` (shown to the user as `shown`) if it holds an incompatible
/// feature's marker: any directory in `work/incompat/`, as the kernel reads it.
fn check_incompat(work: std::os::fd::BorrowedFd<'_>, shown: &Path) -> std::io::Result<()> {
    let incompat = match rustix::fs::openat(
        work,
        INCOMPAT_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for name in list_names(incompat.as_fd())? {
        let st = layer::stat_at(incompat.as_fd(), &name)?;
        if !lookup::is_dir(&st) {
            continue;
        }
        let marker = shown.join(INCOMPAT_DIR).join(&name);
        let msg = if name == VOLATILE_DIR {
            format!(
                "{} exists: a volatile mount of this upper and workdir did not end cleanly, so the \
                 upper may have lost writes; remove {} to mount it anyway",
                marker.display(),
                marker.display()
            )
        } else {
            format!(
                "{} marks a feature this mount does not know; remove it to mount anyway",
                marker.display()
            )
        };
        return Err(std::io::Error::other(msg));
    }
    Ok(())
}

/// `work/incompat/volatile/dirty`, as kernel overlayfs writes it, made durable.
fn mark_volatile(work: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    mkdir_if_missing(work, INCOMPAT_DIR)?;
    let incompat = rustix::fs::openat(
        work,
        INCOMPAT_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    mkdir_if_missing(incompat.as_fd(), VOLATILE_DIR)?;
    let volatile = rustix::fs::openat(
        &incompat,
        VOLATILE_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::openat(
        &volatile,
        VOLATILE_DIRTY,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fsync(&volatile)?;
    rustix::fs::fsync(&incompat)?;
    rustix::fs::fsync(work)?;
    Ok(())
}

/// Try what the upper's filesystem can hold, in a directory of `work/`.
fn probe_upper(work: BorrowedFd<'_>, ns: XattrNs) -> std::io::Result<probe::Abilities> {
    const DIR: &str = "probe";
    mkdir_if_missing(work, DIR)?;
    let dir = rustix::fs::openat(
        work,
        DIR,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let found = probe::Abilities::probe(dir.as_fd(), &format!("{}probe", ns.prefix()));
    remove_tree_at(work, OsStr::new(DIR))?;
    Ok(found?)
}

/// Refuse, in one line naming the branch and what it lacks, an upper whose
/// filesystem cannot hold what copy-up and removal write there: markers in
/// xattrs (opaque directories, redirects, whiteouts where there are no
/// device nodes), owners and modes. Better than a mount whose first write
/// fails.
fn refuse_unfit_upper(path: &Path, found: &probe::Abilities) -> std::io::Result<()> {
    let rootless = !rustix::process::geteuid().is_root();
    let fit = found.xattrs && found.modes && (found.owners || rootless);
    if fit {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "{}: cannot be an upper: its filesystem holds no {} (tried in the workdir)",
            path.display(),
            found.lacking().join(", ")
        ),
    ))
}

fn mkdir_if_missing(dir: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without "." and "..").
pub(crate) fn list_names(dir: std::os::fd::BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::new(fd)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                name.to_vec(),
            ));
        }
    }
    Ok(out)
}

/// `rm -rf` of `name` in `dir`, without following symlinks.
pub(crate) fn remove_tree_at(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in list_names(sub.as_fd())? {
        remove_tree_at(sub.as_fd(), &child)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
