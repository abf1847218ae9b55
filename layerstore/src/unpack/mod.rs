//! Layer tar (plain, gzip or zstd) → layer directory in kernel overlayfs format.
//!
//! Every object is created relative to a directory fd that was itself reached
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the layer root,
//! and always under a single-component name that is created exclusively (an
//! existing object is removed first, never opened and written through). So no
//! path, symlink or hard link in a tar can make us write outside the layer.
//!
//! As root, OCI whiteouts become overlay whiteouts (`.wh.NAME` → character
//! device 0/0, `.wh..wh..opq` → `trusted.overlay.opaque=y`); without
//! privilege the `.wh.` files are kept and owners, modes and device numbers go
//! into `user.containers.override_stat`.
//!
//! Hostile input is bounded, not trusted: at most [`Limits::max_entries`]
//! entries; each entry is charged against the room left on the layer's
//! filesystem before it is written (see [`room`]: 1/20 of the filesystem, at
//! most 1 GiB, stays free), so a gzip or zstd bomb is refused instead of
//! filling the disk; memory holds at most a zstd window of
//! 2^[`ZSTD_WINDOW_LOG_MAX`] bytes (gzip: 32 KiB), tar metadata entries of
//! [`MAX_TAR_METADATA`] bytes and the metadata of the layer's directories.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use lru::LruCache;

use ondisk::override_stat;
use ondisk::whiteout::{self, Marker, classify};
use ondisk::xattr::{self, Key, XattrNs};
use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags, makedev,
};
use rustix::io::Errno;
use rustix::process::geteuid;

use crate::digest::{Digest, HashingReader};

mod compression;
mod guard;
mod meta;
mod paths;
pub mod room;

use crate::{Context, Error, Result};
pub use compression::{Compression, ZSTD_WINDOW_LOG_MAX, decompress, diff_id_of};
pub use guard::{HeaderGuard, MAX_TAR_METADATA};
pub(crate) use meta::{Meta, read_meta};
use meta::{override_value, root_dir_override, without_xattrs};
pub use paths::split_path;
pub use room::check_room;

/// Most entries one layer tar may hold (the largest real layers hold about a
/// million).
pub const MAX_ENTRIES: u64 = 1 << 22;

/// Bounds of one unpack beyond the disk reserve.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most tar entries (headers of any kind).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: MAX_ENTRIES,
        }
    }
}

/// How to write the layer tree.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Root: chown, mknod, overlay whiteouts, trusted xattrs. Otherwise the
    /// rootless form (`.wh.` files, `user.containers.override_stat`).
    pub privileged: bool,
}

impl UnpackOptions {
    /// Privileged exactly when running as root.
    pub fn for_current_user() -> Self {
        UnpackOptions {
            privileged: geteuid().is_root(),
        }
    }
}

/// What unpacking a layer found.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream.
    pub tar_size: u64,
    /// Number of tar entries.
    pub entries: u64,
}

/// Unpack a layer stream into `dest`, an empty directory, and return its diff id.
/// On error `dest` holds a partial tree that the caller removes.
pub fn unpack(r: impl Read, dest: &Path, opts: UnpackOptions) -> Result<Unpacked> {
    unpack_with(r, dest, opts, Limits::default())
}

/// [`unpack`] with other limits.
pub fn unpack_with(
    r: impl Read,
    dest: &Path,
    opts: UnpackOptions,
    limits: Limits,
) -> Result<Unpacked> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at(dest)?;
    let (_, plain) = decompress(r).ctx(|| "layer".to_string())?;
    let mut archive = tar::Archive::new(HeaderGuard::new(HashingReader::new(plain)));
    let room = room::Room::new(root.try_clone().at(dest)?);
    let mut u = Unpacker {
        root,
        room,
        opts,
        dirs: BTreeMap::new(),
        open_dirs: LruCache::new(OPEN_DIRS),
        entries: 0,
    };
    let bad_tar = |e: io::Error| Error::invalid("layer tar", tar_error(&e));
    for entry in archive.entries().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        if u.entries >= limits.max_entries {
            return Err(Error::invalid(
                "layer tar",
                format!("more than {} entries", limits.max_entries),
            ));
        }
        u.entry(entry)?;
        u.entries += 1;
    }
    u.finish_dirs()?;
    let mut rest = archive.into_inner().into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad_tar)?;
    if rest.len() % 512 != 0 || rest.trailing_zeros() < 1024 {
        return Err(Error::invalid(
            "layer tar",
            "truncated (no end-of-archive marker)",
        ));
    }
    let (diff_id, tar_size) = rest.finish();
    rustix::fs::syncfs(&u.root).at(dest)?;
    Ok(Unpacked {
        diff_id,
        tar_size,
        entries: u.entries,
    })
}

/// The reason of a tar reader's error, short: the tar crate quotes a corrupt
/// header's raw bytes, which say nothing to a user.
pub(crate) fn tar_error(e: &io::Error) -> String {
    let msg = e.to_string();
    if let Some(i) = msg.rfind(" when getting ") {
        let field = msg[i + 14..].split(' ').next().unwrap_or("a");
        return format!("corrupt header ({field} field is not a number)");
    }
    if msg == "failed to read entire block" {
        return "truncated (cut in the middle of a header or a file)".to_string();
    }
    msg
}

struct Unpacker {
    root: OwnedFd,
    /// The disk bound.
    room: room::Room,
    opts: UnpackOptions,
    /// Directory metadata, applied at the end (deepest first) so that
    /// creating children does not change a directory's mtime and a read-only
    /// directory mode does not get in the way. (Xattrs are set at once, not
    /// kept here.)
    dirs: BTreeMap<Vec<u8>, Meta>,
    /// Directories opened lately, by path: the next entries are mostly
    /// their children, or their parents again after a subdirectory.
    open_dirs: LruCache<Vec<u8>, Rc<OwnedFd>>,
    entries: u64,
}

/// Directory fds kept open while unpacking.
const OPEN_DIRS: NonZeroUsize = NonZeroUsize::new(64).unwrap();

const NOT_DIR: &str = "a parent is not a directory";

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = e.path_bytes().into_owned();
        let name_shown = shown(&raw);
        let data = if matches!(kind, T::Regular | T::Continuous | T::GNUSparse) {
            e.size()
        } else {
            0
        };
        self.room.take(data, &name_shown)?;
        let comps = split_path(&raw).map_err(|r| Error::entry(&name_shown, r))?;
        let meta = read_meta(&mut e, &name_shown)?;
        let Some((name, parent)) = comps.split_last() else {
            if kind != T::Directory {
                return Err(Error::entry(
                    &name_shown,
                    "the layer root must be a directory",
                ));
            }
            let fd = self.open_dir(&[], &name_shown)?;
            self.set_xattrs(fd.as_fd(), &meta, &name_shown)?;
            self.dirs.insert(Vec::new(), without_xattrs(meta));
            return Ok(());
        };
        let name: &[u8] = name;
        let marker = classify(name).map_err(|r| Error::entry(&name_shown, r))?;
        let parent_fd = match self.open_dir(parent, &name_shown) {
            Ok(fd) => fd,
            // A whiteout below something this layer made a non-directory
            // (umoci writes these) has nothing left to hide.
            Err(Error::UnsafeEntry { reason, .. })
                if reason == NOT_DIR && !matches!(marker, Marker::Name) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match marker {
            Marker::AufsMeta => return Ok(()),
            Marker::Opaque if self.opts.privileged => {
                let opaque = XattrNs::Trusted.name(Key::Opaque);
                return set_xattr(parent_fd.as_fd(), opaque, xattr::OPAQUE)
                    .ctx(|| format!("layer entry {name_shown:?}: marking opaque"));
            }
            Marker::Whiteout(target) if self.opts.privileged => {
                self.clear(parent_fd.as_fd(), target, false, &name_shown)?;
                return rustix::fs::mknodat(
                    &parent_fd,
                    os(target),
                    whiteout::KERNEL_KIND,
                    Mode::empty(),
                    whiteout::KERNEL_RDEV,
                )
                .ctx(|| format!("layer entry {name_shown:?}: making whiteout"));
            }
            _ => {}
        }
        let p = parent_fd.as_fd();
        match kind {
            T::Directory => self.directory(p, name, meta, &raw, &name_shown),
            T::Regular | T::Continuous | T::GNUSparse => {
                self.regular(p, name, &mut e, kind, meta, &name_shown)
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Error::entry(&name_shown, "symlink without a target"))?
                    .into_owned();
                if target.contains(&0) || target.is_empty() {
                    return Err(Error::entry(
                        &name_shown,
                        "symlink target is empty or has NUL",
                    ));
                }
                let link = || rustix::fs::symlinkat(os(&target), p, os(name));
                match link() {
                    // A duplicate entry replaces what the name held.
                    Err(Errno::EXIST) => {
                        self.clear(p, name, false, &name_shown)?;
                        link()
                    }
                    made => made,
                }
                .ctx(|| format!("layer entry {name_shown:?}"))?;
                self.path_meta(p, name, &meta, None, &name_shown)
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Error::entry(&name_shown, "hard link without a target"))?
                    .into_owned();
                self.hard_link(p, name, &comps, &target, &name_shown)
            }
            T::Char | T::Block | T::Fifo => {
                self.clear(p, name, false, &name_shown)?;
                self.special(p, name, &e, kind, meta, &name_shown)
            }
            other => Err(Error::entry(
                &name_shown,
                format!("unsupported tar entry type {:?}", other.as_byte() as char),
            )),
        }
    }

    /// Open a directory of the layer by components, creating missing ones
    /// (as 0755 root-owned, as tar does). Refuses a path through a symlink or
    /// a non-directory.
    fn open_dir(&mut self, comps: &[&[u8]], entry: &str) -> Result<Rc<OwnedFd>> {
        let key = comps.join(&b'/');
        if let Some(fd) = self.open_dirs.get(&key) {
            return Ok(fd.clone());
        }
        // Walk from the deepest ancestor still open, else from the root.
        let mut from = 0;
        let mut base = None;
        for i in (1..comps.len()).rev() {
            if let Some(fd) = self.open_dirs.get(&comps[..i].join(&b'/')) {
                (from, base) = (i, Some(fd.clone()));
                break;
            }
        }
        let fd = match &base {
            Some(b) => self.walk(b.as_fd(), &comps[from..], entry)?,
            None => self.walk(self.root.as_fd(), comps, entry)?,
        };
        let fd = Rc::new(fd);
        self.open_dirs.put(key, fd.clone());
        Ok(fd)
    }

    fn walk(&self, base: BorrowedFd<'_>, comps: &[&[u8]], entry: &str) -> Result<OwnedFd> {
        let err = |e: Errno| match e {
            Errno::LOOP | Errno::XDEV => Error::entry(entry, "path goes through a symlink"),
            Errno::NOTDIR => Error::entry(entry, NOT_DIR),
            e => Error::Io {
                what: format!("layer entry {entry:?}"),
                error: e.into(),
            },
        };
        let mut cur = rustix::fs::openat(base, ".", DIR_FLAGS, Mode::empty()).map_err(err)?;
        for c in comps {
            let next =
                match rustix::fs::openat2(&cur, os(c), DIR_FLAGS, Mode::empty(), resolve_flags()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => {
                        match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(err(e)),
                        }
                        let fd = rustix::fs::openat2(
                            &cur,
                            os(c),
                            DIR_FLAGS,
                            Mode::empty(),
                            resolve_flags(),
                        )
                        .map_err(err)?;
                        if !self.opts.privileged {
                            let _ = set_xattr(
                                fd.as_fd(),
                                override_stat::XATTR,
                                root_dir_override().as_bytes(),
                            );
                        }
                        fd
                    }
                    Err(Errno::NOTDIR) if is_symlink(cur.as_fd(), c) => {
                        return Err(Error::entry(entry, "path goes through a symlink"));
                    }
                    Err(e) => return Err(err(e)),
                };
            cur = next;
        }
        Ok(cur)
    }

    /// Remove whatever is at `name` so a new object can be created there.
    /// With `keep_dir`, an existing directory is kept; returns whether it was.
    fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        keep_dir: bool,
        entry: &str,
    ) -> Result<bool> {
        let st = match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e).ctx(|| format!("layer entry {entry:?}")),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        if is_dir {
            // An open directory may be the one removed, or below it.
            self.open_dirs.clear();
            remove_tree(parent, name)
                .ctx(|| format!("layer entry {entry:?}: replacing a directory"))?;
        } else {
            rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
                .ctx(|| format!("layer entry {entry:?}: replacing"))?;
        }
        Ok(false)
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: Meta,
        raw: &[u8],
        entry: &str,
    ) -> Result<()> {
        let mkdir = || rustix::fs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700));
        match mkdir() {
            // An existing directory is kept (tar merges), anything else replaced.
            Err(Errno::EXIST) if self.clear(parent, name, true, entry)? => Ok(()),
            Err(Errno::EXIST) => mkdir(),
            made => made,
        }
        .ctx(|| format!("layer entry {entry:?}"))?;
        let fd = rustix::fs::openat2(parent, os(name), DIR_FLAGS, Mode::empty(), resolve_flags())
            .ctx(|| format!("layer entry {entry:?}"))?;
        self.set_xattrs(fd.as_fd(), &meta, entry)?;
        let key = split_path(raw).unwrap_or_default().join(&b'/');
        // Its entries most likely come next.
        self.open_dirs.put(key.clone(), Rc::new(fd));
        self.dirs.insert(key, without_xattrs(meta));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        e: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        meta: Meta,
        entry: &str,
    ) -> Result<()> {
        let fd = match create_file(parent, name) {
            // A duplicate entry replaces what the name held.
            Err(Errno::EXIST) => {
                self.clear(parent, name, false, entry)?;
                create_file(parent, name)
            }
            made => made,
        }
        .ctx(|| format!("layer entry {entry:?}"))?;
        let mut file = File::from(fd);
        let expected = e.size();
        let copied = io::copy(e, &mut file)
            .map_err(|err| Error::invalid(format!("layer entry {entry:?}"), err.to_string()))?;
        if kind != tar::EntryType::GNUSparse && copied != expected {
            return Err(Error::invalid(
                format!("layer entry {entry:?}"),
                format!("truncated: {copied} of {expected} bytes"),
            ));
        }
        self.fd_meta(file.as_fd(), &meta, false, None, entry)
    }

    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        comps: &[&[u8]],
        target: &[u8],
        entry: &str,
    ) -> Result<()> {
        let tcomps = split_path(target)
            .map_err(|r| Error::entry(entry, format!("hard link target: {r}")))?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(Error::entry(entry, "hard link to the layer root"));
        };
        if tcomps == comps {
            return Err(Error::entry(entry, "hard link to itself"));
        }
        if tcomps.starts_with(comps) {
            return Err(Error::entry(
                entry,
                "hard link in place of a directory holding its target",
            ));
        }
        let tparent_fd = match self.walk_existing(tparent) {
            Some(fd) => fd,
            None => {
                return Err(Error::entry(
                    entry,
                    "hard link target is not in the layer (yet)",
                ));
            }
        };
        match rustix::fs::statat(&tparent_fd, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Error::entry(entry, "hard link to a directory"));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Error::entry(
                    entry,
                    "hard link target is not in the layer (yet)",
                ));
            }
        }
        self.clear(parent, name, false, entry)?;
        rustix::fs::linkat(&tparent_fd, os(tname), parent, os(name), AtFlags::empty())
            .ctx(|| format!("layer entry {entry:?}: hard link"))
    }

    /// Open an existing directory without creating anything.
    fn walk_existing(&self, comps: &[&[u8]]) -> Option<OwnedFd> {
        if comps.is_empty() {
            return rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty()).ok();
        }
        let path = comps.join(&b'/');
        rustix::fs::openat2(
            &self.root,
            os(&path),
            DIR_FLAGS,
            Mode::empty(),
            resolve_flags(),
        )
        .ok()
    }

    fn special<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        e: &tar::Entry<'_, R>,
        kind: tar::EntryType,
        meta: Meta,
        entry: &str,
    ) -> Result<()> {
        let h = e.header();
        // Empty fields mean 0, as Go's archive/tar reads them; a value that is
        // not a number or does not fit a device number is refused.
        let dev = |field: std::ops::Range<usize>| {
            if h.as_ustar().is_none() && h.as_gnu().is_none() {
                return Ok(0);
            }
            guard::header_number(&h.as_bytes()[field])
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| Error::entry(entry, "bad device number in header"))
        };
        let major = dev(329..337)?;
        let minor = dev(337..345)?;
        let ft = match kind {
            tar::EntryType::Char => FileType::CharacterDevice,
            tar::EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if self.opts.privileged || ft == FileType::Fifo {
            rustix::fs::mknodat(
                parent,
                os(name),
                ft,
                Mode::from_raw_mode(0o600),
                makedev(major, minor),
            )
            .ctx(|| format!("layer entry {entry:?}"))?;
            let dev = (ft != FileType::Fifo).then_some((ft, major, minor));
            return self.path_meta(parent, name, &meta, dev, entry);
        }
        // Without privilege a device is an empty file described by the override xattr.
        let fd = rustix::fs::openat(
            parent,
            os(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ctx(|| format!("layer entry {entry:?}"))?;
        self.fd_meta(fd.as_fd(), &meta, false, Some((ft, major, minor)), entry)
    }

    fn set_xattrs(&self, fd: BorrowedFd<'_>, meta: &Meta, entry: &str) -> Result<()> {
        for (k, v) in &meta.xattrs {
            if !self.opts.privileged && !k.to_bytes().starts_with(b"user.") {
                continue;
            }
            set_xattr(fd, k, v)
                .ctx(|| format!("layer entry {entry:?}: xattr {}", k.to_string_lossy()))?;
        }
        Ok(())
    }

    /// Owner, mode, xattrs, time of an object open as `fd`.
    fn fd_meta(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        is_dir: bool,
        dev: Option<(FileType, u32, u32)>,
        entry: &str,
    ) -> Result<()> {
        let what = || format!("layer entry {entry:?}");
        self.set_xattrs(fd, meta, entry)?;
        if self.opts.privileged {
            rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid))).ctx(what)?;
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).ctx(what)?;
        } else {
            let own = if is_dir { 0o700 } else { 0o600 };
            rustix::fs::fchmod(fd, Mode::from_raw_mode((meta.mode & 0o777) | own)).ctx(what)?;
            set_xattr(
                fd,
                override_stat::XATTR,
                override_value(meta, dev).as_bytes(),
            )
            .ctx(what)?;
        }
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::futimens(fd, &times).ctx(what)
    }

    /// Owner, mode and time of a symlink or device, by name (never opened).
    fn path_meta(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        dev: Option<(FileType, u32, u32)>,
        entry: &str,
    ) -> Result<()> {
        let what = || format!("layer entry {entry:?}");
        let is_symlink = matches!(
            rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink
        );
        if self.opts.privileged {
            rustix::fs::chownat(
                parent,
                os(name),
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .ctx(what)?;
            if !is_symlink {
                // A device or fifo we just created: chmod by name cannot be redirected.
                rustix::fs::chmodat(
                    parent,
                    os(name),
                    Mode::from_raw_mode(meta.mode & 0o7777),
                    AtFlags::empty(),
                )
                .ctx(what)?;
            }
        } else if !is_symlink {
            // A fifo: owner and mode go in the override xattr, through an O_PATH-free open
            // that cannot block (O_NONBLOCK on a fifo opened for reading).
            if let Ok(fd) = rustix::fs::openat(
                parent,
                os(name),
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode((meta.mode & 0o777) | 0o600));
                let value = override_value(meta, dev);
                let _ = set_xattr(fd.as_fd(), override_stat::XATTR, value.as_bytes());
            }
        }
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::utimensat(parent, os(name), &times, AtFlags::SYMLINK_NOFOLLOW).ctx(what)
    }

    /// Apply the deferred directory metadata, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        self.open_dirs.clear();
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let entry = shown(path);
            let fd = if path.is_empty() {
                rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            } else {
                rustix::fs::openat2(
                    &self.root,
                    os(path),
                    DIR_FLAGS,
                    Mode::empty(),
                    resolve_flags(),
                )
            };
            // A directory replaced later in the tar by something else keeps no metadata.
            let Ok(fd) = fd else { continue };
            self.fd_meta(fd.as_fd(), meta, true, None, &entry)?;
        }
        Ok(())
    }
}

/// A new file, created exclusively (never opened through an existing name).
fn create_file(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        os(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw_unchecked(raw)
}

fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw_unchecked(raw)
}

fn set_xattr(
    fd: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
    value: &[u8],
) -> rustix::io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty())
}

fn is_symlink(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    matches!(
        rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink
    )
}

/// Remove a directory tree below `parent`, by fd, never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(parent, os(name), DIR_FLAGS, Mode::empty())?;
    let dup = rustix::fs::openat(&fd, ".", DIR_FLAGS, Mode::empty())?;
    let mut dir = Dir::new(dup)?;
    let mut names = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), ent.file_type()));
        }
    }
    for (n, ft) in names {
        let is_dir = match ft {
            FileType::Directory => true,
            FileType::Unknown => matches!(
                rustix::fs::statat(&fd, os(&n), AtFlags::SYMLINK_NOFOLLOW),
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory
            ),
            _ => false,
        };
        if is_dir {
            remove_tree(fd.as_fd(), &n)?;
        } else {
            rustix::fs::unlinkat(&fd, os(&n), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, os(name), AtFlags::REMOVEDIR)
}
