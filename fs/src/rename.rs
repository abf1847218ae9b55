//! rename, including directories that live in lower layers or are merged: the
//! moved directory records where its lower content is (`overlay.redirect`, the
//! kernel's own format), so nothing is copied and nothing answers EXDEV.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::inode::Node;
use crate::layer::{self, stat_at};
use crate::lookup::Resolved;
use crate::{Result, Union};

/// The rename itself, with the namespace lock held exclusively and the source
/// (and for an exchange the destination) already copied up.
pub(crate) fn rename_locked(
    u: &Union,
    parent: &Node,
    name: &OsStr,
    new_parent: &Node,
    new_name: &OsStr,
    flags: RenameFlags,
) -> Result<()> {
    let (src, dst) = check(u, parent, name, new_parent, new_name, flags)?;
    let sdir = u.upper().dir(&u.path_of(parent)?)?;
    let ddir = u.upper().dir(&u.path_of(new_parent)?)?;
    if flags.contains(RenameFlags::EXCHANGE) {
        let dst = dst.ok_or(Errno::NOENT)?;
        mark_moved_dir(u, &src, sdir.as_fd(), name, new_parent, new_name)?;
        mark_moved_dir(u, &dst, ddir.as_fd(), new_name, parent, name)?;
        u.mark_impure(sdir.as_fd());
        u.mark_impure(ddir.as_fd());
        rustix::fs::renameat_with(&sdir, name, &ddir, new_name, RenameFlags::EXCHANGE)?;
        let a = u.inodes.by_name(parent.id, name);
        let b = u.inodes.by_name(new_parent.id, new_name);
        u.inodes.drop_name(parent.id, name);
        u.inodes.drop_name(new_parent.id, new_name);
        for (node, p, n) in [(a, new_parent.id, new_name), (b, parent.id, name)] {
            if let Some(node) = node {
                let fresh = node.snapshot();
                u.inodes.remember(node.st_ino, false, p, n, fresh, false);
            }
        }
        u.changed();
        return Ok(());
    }
    if dst.as_ref().is_some_and(|d| d.st_ino == src.st_ino) {
        // Two names of one file: POSIX says rename does nothing.
        return Ok(());
    }
    if let Some(d) = &dst {
        u.removing_lower_name(d, new_parent.id, new_name)?;
    }
    let src_needs_whiteout = u.lowers_have(parent, name)?;
    mark_moved_dir(u, &src, sdir.as_fd(), name, new_parent, new_name)?;
    clear_destination(u, ddir.as_fd(), new_name, src.state.is_dir)?;
    // Marked before the entry moves in (a crash must not leave it unmarked).
    if !std::ptr::eq(parent, new_parent) {
        u.mark_impure(ddir.as_fd());
    }
    move_entry(
        u,
        sdir.as_fd(),
        name,
        ddir.as_fd(),
        new_name,
        src_needs_whiteout,
        src.state.is_dir,
    )?;
    u.inodes
        .rename_name(parent.id, name, new_parent.id, new_name);
    Ok(())
}

/// Every error a rename can give, found before anything is copied up.
pub(crate) fn check(
    u: &Union,
    parent: &Node,
    name: &OsStr,
    new_parent: &Node,
    new_name: &OsStr,
    flags: RenameFlags,
) -> Result<(Resolved, Option<Resolved>)> {
    let src = u.resolve_now(parent, name)?.ok_or(Errno::NOENT)?;
    let dst = u.resolve_now(new_parent, new_name)?;
    if flags.contains(RenameFlags::NOREPLACE) && dst.is_some() {
        return Err(Errno::EXIST);
    }
    match &dst {
        None if flags.contains(RenameFlags::EXCHANGE) => return Err(Errno::NOENT),
        Some(d) if !flags.contains(RenameFlags::EXCHANGE) && d.st_ino != src.st_ino => {
            check_replace(u, &src, d, new_parent, new_name)?
        }
        _ => {}
    }
    Ok((src, dst))
}

/// The kinds must fit, and a directory being replaced must be empty.
fn check_replace(
    u: &Union,
    src: &Resolved,
    dst: &Resolved,
    new_parent: &Node,
    new_name: &OsStr,
) -> Result<()> {
    match (src.state.is_dir, dst.state.is_dir) {
        (true, false) => Err(Errno::NOTDIR),
        (false, true) => Err(Errno::ISDIR),
        (true, true) => {
            let path = u.path_of(new_parent)?.join(new_name);
            if u.merged_dir_is_empty(&dst.state, &path)? {
                Ok(())
            } else {
                Err(Errno::NOTEMPTY)
            }
        }
        (false, false) => Ok(()),
    }
}

/// A directory moving to (to_parent, to_name): one with lower content records
/// where that content is; a pure upper one landing on a name lowers still have
/// becomes opaque so they do not merge into it.
fn mark_moved_dir(
    u: &Union,
    obj: &Resolved,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    to_parent: &Node,
    to_name: &OsStr,
) -> Result<()> {
    if !obj.state.is_dir {
        return Ok(());
    }
    let fd = layer::open_path_at(dir, name)?;
    if let Some((_, lower_path)) = obj.state.lowers.first() {
        let mut redirect = b"/".to_vec();
        redirect.extend_from_slice(lower_path.as_os_str().as_bytes());
        let key = u.cfg.xattr_ns.name("redirect");
        return layer::set_xattr(fd.as_fd(), &key, &redirect, XattrFlags::empty());
    }
    if u.lowers_have(to_parent, to_name)? {
        let key = u.cfg.xattr_ns.name("opaque");
        layer::set_xattr(fd.as_fd(), &key, b"y", XattrFlags::empty())?;
    }
    Ok(())
}

/// Make room at the destination: a whiteout cannot be replaced by a directory,
/// and an upper directory that only holds whiteouts is not empty to the kernel.
fn clear_destination(
    u: &Union,
    ddir: BorrowedFd<'_>,
    new_name: &OsStr,
    src_is_dir: bool,
) -> Result<()> {
    let st = match stat_at(ddir, new_name) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if u.is_upper_whiteout(ddir, new_name, &st)? {
        if src_is_dir {
            rustix::fs::unlinkat(ddir, new_name, AtFlags::empty())?;
        }
        return Ok(());
    }
    if crate::lookup::is_dir(&st) {
        let work = u.work_fd()?;
        let tmp = u.temp_name();
        rustix::fs::renameat(ddir, new_name, work, &tmp)?;
        crate::remove_tree_at(work, &tmp)?;
    }
    Ok(())
}

fn move_entry(
    u: &Union,
    sdir: BorrowedFd<'_>,
    name: &OsStr,
    ddir: BorrowedFd<'_>,
    new_name: &OsStr,
    needs_whiteout: bool,
    is_dir: bool,
) -> Result<()> {
    if needs_whiteout && !is_dir {
        match rustix::fs::renameat_with(sdir, name, ddir, new_name, RenameFlags::WHITEOUT) {
            Ok(()) => return Ok(()),
            Err(Errno::INVAL) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::renameat(sdir, name, ddir, new_name)?;
    if needs_whiteout {
        u.make_whiteout(sdir, name)?;
    }
    Ok(())
}
