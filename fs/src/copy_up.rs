//! Copying a lower object into the upper: data (holes stay holes), owner, mode,
//! xattrs, times and origin. Everything is built under a temporary name in the
//! workdir and published by one rename, so a crash never leaves a half-copied
//! object in the upper.
//!
//! With `metacopy`, a change of metadata only (chown, chmod, utimes, xattrs)
//! copies up a sparse file marked `overlay.metacopy` whose data stays the
//! lower's, as kernel overlayfs does with `metacopy=on`. The data follows at
//! the first open for writing, into that same file, and the mark goes last:
//! a crash midway leaves the mark, so the lower's data is still what is shown.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use ondisk::override_stat;
use ondisk::xattr::{self, Key};
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use crate::Branch;
use crate::inode::Node;
use crate::layer::{self, Layer, split};
use crate::sync;
use crate::{Result, Union};

impl Union {
    /// Make `node` ready for a change: copied up (with copy-on-write), or checked
    /// to live in a writable branch (without).
    pub(crate) fn prepare_write(&self, node: &Node) -> Result<()> {
        self.prepare(node, CopyUp::Data)
    }

    /// `prepare_write` for a change of metadata only: a metadata-only copy-up
    /// where the mount allows it.
    pub(crate) fn prepare_meta_write(&self, node: &Node) -> Result<()> {
        self.prepare(node, CopyUp::Meta)
    }

    /// Make `node` ready for a change copied up as `how` says.
    pub(crate) fn prepare(&self, node: &Node, how: CopyUp) -> Result<()> {
        if !self.has_upper() {
            return self.write_location(node).map(|_| ());
        }
        // A hard-link group's shared copy is about to change: every name the
        // mount shows for it goes into the upper first, as this one does.
        if node.snapshot().index.is_none() {
            self.copy_up_with(node, how)?;
        }
        self.link_whole_group(node)
    }

    /// Where a change to a prepared node goes: its copy in the upper, the shared
    /// copy of its hard-link group, or its own writable branch. The caller holds
    /// the namespace lock for as long as it uses the path, so that no rename or
    /// unlink makes the path name something else meanwhile.
    pub(crate) fn write_location(&self, node: &Node) -> Result<(Branch, PathBuf)> {
        let st = node.snapshot();
        if let Some(key) = st.index {
            // A hard-link group's shared copy: changed once for every name.
            return Ok((Branch::Index, PathBuf::from(&*key)));
        }
        if self.has_upper() {
            return if st.upper {
                Ok((Branch::TOP, self.path_of(node)?))
            } else {
                Err(Errno::STALE)
            };
        }
        match self.inodes.top_lower(&st) {
            Some((li, path)) if self.branch(Branch::Layer(li))?.writable => {
                Ok((Branch::Layer(li), path))
            }
            _ => Err(Errno::ROFS),
        }
    }

    /// Copy `node` (and its parents) up unless it is there already, with its
    /// data.
    pub(crate) fn copy_up(&self, node: &Node) -> Result<()> {
        self.copy_up_with(node, CopyUp::Data)
    }

    /// Copy up as `how` says; the data of an upper holding metadata only
    /// follows unless `how` is `Meta`.
    pub(crate) fn copy_up_with(&self, node: &Node, how: CopyUp) -> Result<()> {
        let st = node.snapshot();
        if st.upper && st.metacopy && how != CopyUp::Meta {
            return self.copy_up_data(node, how);
        }
        if st.upper || st.index.is_some() {
            return Ok(());
        }
        if !self.has_upper() {
            return Err(Errno::ROFS);
        }
        let (parent_id, _) = node.snapshot().names.first().cloned().ok_or(Errno::NOENT)?;
        let parent = self.node(parent_id)?;
        self.copy_up(&parent)?;
        let _guard = sync::lock(&node.copy_up_lock);
        let st = node.snapshot();
        if st.upper || st.index.is_some() {
            return Ok(());
        }
        let (li, lpath) = self.inodes.top_lower(&st).ok_or(Errno::STALE)?;
        let lower_st = self.branch(Branch::Layer(li))?.stat(&lpath)?;
        let lower_nlink = lower_st.st_nlink;
        // A member of a lower hard-link group whose group is copied up already
        // only needs a link to that copy.
        let group = !st.is_dir && lower_nlink > 1 && self.index.is_some();
        let indexed = group && self.index_entry(li, &lpath)?.is_some();
        // Metadata only for a lone regular file: a hard-link group's shared
        // copy has its data at once, so that every name can reach it.
        let lone_file = FileType::from_raw_mode(lower_st.st_mode) == FileType::RegularFile
            && lower_nlink == 1
            && lower_st.st_size > 0;
        let how = match how {
            CopyUp::Meta if !(self.cfg.metacopy && lone_file) => CopyUp::Data,
            how => how,
        };
        let tmp = self.temp_name();
        let built = if indexed {
            Ok(())
        } else {
            self.copy_into_work(li, &lpath, &tmp, how)
        };
        let result = built.and_then(|()| {
            let _ns = sync::read(&self.namespace);
            let path = self.path_of(node)?;
            let (pp, name) = split(&path);
            let updir = self.upper().dir(pp)?;
            let name = name.ok_or(Errno::INVAL)?;
            let parent_times = rustix::fs::fstat(&updir)?;
            // The directory is marked before the entry with an origin lands in
            // it, so that no crash leaves one in an unmarked directory.
            self.mark_impure(updir.as_fd());
            let work_tmp = (!indexed).then_some(tmp.as_os_str());
            let published = group
                && self.publish_group_member(
                    li,
                    &lpath,
                    lower_nlink,
                    work_tmp,
                    updir.as_fd(),
                    name,
                )?;
            if !published {
                let work = self.work_fd()?;
                rustix::fs::renameat_with(work, &tmp, &updir, name, RenameFlags::NOREPLACE)?;
            }
            // A copy-up is no change to the directory: keep its times, as the
            // kernel does. A moved directory's own mtime changes with its ".."
            // entry on some filesystems, so it gets its lower times back too.
            restore_times(&updir, &parent_times)?;
            if st.is_dir {
                let lst = self.branch(Branch::Layer(li))?.stat(&lpath)?;
                rustix::fs::utimensat(&updir, name, &times_of(&lst), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            let mut state = node.state();
            state.upper = true;
            state.metacopy = how == CopyUp::Meta;
            self.changed();
            if group {
                state.index = self
                    .index_key(li, &lpath)
                    .map(std::ffi::OsString::into_boxed_os_str);
            }
            Ok(())
        });
        if result.is_err() {
            self.remove_temp(&tmp);
        }
        result
    }

    /// Build a copy of lower object `lpath` in branch `li` as `tmp` in the workdir.
    pub(crate) fn copy_into_work(
        &self,
        li: usize,
        lpath: &Path,
        tmp: &OsStr,
        how: CopyUp,
    ) -> Result<()> {
        let lower = self.branch(Branch::Layer(li))?;
        let work = self.work_fd()?;
        let src = lower.open_beneath(lpath, OFlags::PATH | OFlags::NOFOLLOW)?;
        let st = rustix::fs::fstat(&src)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        match kind {
            FileType::RegularFile => self.copy_regular(lower, lpath, &st, work, tmp, how)?,
            FileType::Directory => rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&src, "", Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)?;
            }
            _ => rustix::fs::mknodat(work, tmp, kind, Mode::from_raw_mode(0o600), st.st_rdev)?,
        }
        copy_metadata(src.as_fd(), &st, work, tmp, self)?;
        let fd = layer::open_path_at(work, tmp)?;
        if how == CopyUp::Meta && kind == FileType::RegularFile {
            // Without the mark the sparse copy would be taken for the data.
            // No origin: the data found below by name gives st_ino (as the
            // kernel takes it too), and the two xattrs together overflow an
            // ext4 inode into a 4 KiB block, as much as the data of a small
            // file. The origin comes with the data (`copy_up_data`).
            let name = self.cfg.xattr_ns.name(Key::Metacopy);
            return layer::set_xattr(fd.as_fd(), name, xattr::METACOPY, XattrFlags::empty());
        }
        self.set_origin(fd.as_fd(), li, lpath);
        Ok(())
    }

    /// Record where an upper object came from. Origin only keeps st_ino
    /// across remounts; a filesystem without trusted xattrs still gets a
    /// correct copy.
    fn set_origin(&self, fd: BorrowedFd<'_>, li: usize, lpath: &Path) {
        if let Some(origin) = self.encode_origin(li, lpath) {
            let name = self.cfg.xattr_ns.name(Key::Origin);
            let _ = layer::set_xattr(fd, name, &origin, XattrFlags::empty());
        }
    }

    fn copy_regular(
        &self,
        lower: &Layer,
        lpath: &Path,
        st: &Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        how: CopyUp,
    ) -> Result<()> {
        let dst = rustix::fs::openat(
            work,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        match how {
            CopyUp::Data if st.st_size > 0 => {
                let src = lower.open_beneath(lpath, OFlags::RDONLY | OFlags::NOFOLLOW)?;
                copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64)?;
            }
            // The size without the data: a sparse file costs no blocks.
            CopyUp::Meta => rustix::fs::ftruncate(&dst, st.st_size as u64)?,
            CopyUp::Data | CopyUp::Truncated => {}
        }
        // No data, nothing to make durable before the rename: the journal
        // keeps the inode's size and xattrs in order with it.
        if !self.cfg.volatile && how == CopyUp::Data {
            rustix::fs::fsync(&dst)?;
        }
        Ok(())
    }

    /// The data of an upper file holding metadata only, copied from its lower
    /// into that file (none for an open that truncates), then the mark removed.
    /// Its times stay: a copy-up is no change to the file.
    fn copy_up_data(&self, node: &Node, how: CopyUp) -> Result<()> {
        let _guard = sync::lock(&node.copy_up_lock);
        let st = node.snapshot();
        if !st.metacopy {
            return Ok(());
        }
        let _ns = sync::read(&self.namespace);
        let path = self.path_of(node)?;
        let upper = self.upper();
        let dst = upper.open_beneath(&path, OFlags::WRONLY | OFlags::NOFOLLOW)?;
        let before = rustix::fs::fstat(&dst)?;
        let (li, lpath) = self.inodes.top_lower(&st).ok_or(Errno::IO)?;
        if how == CopyUp::Data && before.st_size > 0 {
            let src = self
                .branch(Branch::Layer(li))?
                .open_beneath(&lpath, OFlags::RDONLY | OFlags::NOFOLLOW)?;
            copy_data(src.as_fd(), dst.as_fd(), before.st_size as u64)?;
        } else {
            rustix::fs::ftruncate(&dst, 0)?;
        }
        rustix::fs::futimens(&dst, &times_of(&before))?;
        if !self.cfg.volatile {
            rustix::fs::fsync(&dst)?;
        }
        let mark = self.cfg.xattr_ns.name(Key::Metacopy);
        match layer::remove_xattr(dst.as_fd(), mark) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
        // After the mark, so that it fits in the inode (a crash in between
        // costs only the st_ino kept across remounts).
        let has_origin = matches!(
            layer::get_xattr(dst.as_fd(), self.cfg.xattr_ns.name(Key::Origin)),
            Ok(Some(_))
        );
        if !has_origin {
            self.set_origin(dst.as_fd(), li, &lpath);
        }
        node.state().metacopy = false;
        Ok(())
    }
}

/// What a copy-up brings up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyUp {
    /// Everything, data included.
    Data,
    /// Everything but data: for an open that truncates the file anyway.
    Truncated,
    /// Metadata for a change of metadata (data left below where the mount
    /// has `metacopy`; otherwise as `Data`).
    Meta,
}

impl Union {
    /// Mark an upper directory as holding entries whose inode numbers come from
    /// elsewhere (origin, redirect), as the kernel does, so that kernel overlayfs
    /// reading this upper gives readdir the same d_ino as stat.
    pub(crate) fn mark_impure(&self, dir: BorrowedFd<'_>) {
        let key = self.cfg.xattr_ns.name(Key::Impure);
        if matches!(layer::get_xattr(dir, key), Ok(None)) {
            // Without xattrs there are no origins or redirects to announce either.
            let _ = layer::set_xattr(dir, key, xattr::IMPURE, XattrFlags::empty());
        }
    }
}

pub(crate) fn restore_times(dir: &std::os::fd::OwnedFd, st: &Stat) -> Result<()> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::futimens(&fd, &times_of(st))
}

fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Copy file data: a reflink where the filesystem offers one, else the data
/// extents only (holes stay holes) with copy_file_range, else read and write.
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Result<()> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) => pos,
            Err(e) => return Err(e),
        };
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        copy_range(src, dst, data, hole)?;
        pos = hole;
    }
    rustix::fs::ftruncate(dst, size)
}

/// Copy bytes [from, to) at the same offsets.
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, from: u64, to: u64) -> Result<()> {
    let mut off_in = from;
    let mut off_out = from;
    while off_in < to {
        let want = (to - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
                return copy_by_reading(src, dst, off_in, to);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_by_reading(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut off: u64, to: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while off < to {
        let want = ((to - off) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
    }
    Ok(())
}

/// Owner, mode, xattrs, then times (in that order: chown clears setuid bits and
/// file capabilities, and every change but the last bumps the times).
fn copy_metadata(
    src: BorrowedFd<'_>,
    st: &Stat,
    work: BorrowedFd<'_>,
    tmp: &OsStr,
    union: &Union,
) -> Result<()> {
    let kind = FileType::from_raw_mode(st.st_mode);
    let recorded = if union.rootless {
        crate::names::override_of(src)?
    } else {
        None
    };
    let dst = layer::open_path_at(work, tmp)?;
    match recorded {
        // A rootless layer's owner stays recorded the same way in the upper.
        Some(o) => layer::set_xattr(
            dst.as_fd(),
            override_stat::XATTR,
            o.format().as_bytes(),
            XattrFlags::empty(),
        )?,
        None => union.chown_or_record(
            work,
            tmp,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?,
    }
    if kind != FileType::Symlink {
        // With a recorded owner the mode is recorded too (chmod_or_record), and
        // the copy itself stays usable by the daemon that owns it.
        let mode = match recorded {
            Some(o) => o.mode,
            None => st.st_mode & 0o7777,
        };
        union.chmod_or_record(work, tmp, mode)?;
    }
    for name in layer::list_xattrs(src)? {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        if xattr::unescape(union.cfg.xattr_ns, name).is_none() {
            continue;
        }
        if let Some(value) = layer::get_xattr(src, name)? {
            match layer::set_xattr(dst.as_fd(), name, &value, XattrFlags::empty()) {
                Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
                Err(e) => return Err(e),
            }
        }
    }
    rustix::fs::utimensat(work, tmp, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
}
