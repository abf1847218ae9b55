//! rename, including directories that live in lower layers or are merged: the
//! moved directory records where its lower content is (`overlay.redirect`, the
//! kernel's own format), so nothing is copied and nothing answers EXDEV.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use ondisk::redirect;
use ondisk::xattr::{self, Key};
use rustix::fs::{AtFlags, Mode, RenameFlags, Stat, Timespec, Timestamps, XattrFlags};
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
    let over_whiteout = clear_destination(u, ddir.as_fd(), new_name)?;
    // Marked before the entry moves in (a crash must not leave it unmarked).
    if !std::ptr::eq(parent, new_parent) {
        u.mark_impure(ddir.as_fd());
    }
    let from = (sdir.as_fd(), name);
    let to = (ddir.as_fd(), new_name);
    if over_whiteout && src.state.is_dir {
        if src_needs_whiteout && !is_char_whiteout(ddir.as_fd(), new_name)? {
            // An xattr whiteout is about to land in the source's directory.
            u.mark_xattr_whiteout_dir(sdir.as_fd())?;
        }
        move_dir_over_whiteout(from, to, src_needs_whiteout)?;
    } else {
        move_entry(u, from, to, src_needs_whiteout)?;
    }
    u.inodes
        .rename_name(parent.id, name, new_parent.id, new_name);
    if let Some(d) = dst.filter(|d| d.is_last_link()) {
        u.inodes.deleted(d.st_ino);
    }
    // A listing read before this must not hand out the old name (readdirplus).
    u.changed();
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
        let redirect = redirect::absolute(lower_path.as_os_str().as_bytes());
        let key = u.cfg.xattr_ns.name(Key::Redirect);
        return layer::set_xattr(fd.as_fd(), key, &redirect, XattrFlags::empty());
    }
    if u.lowers_have(to_parent, to_name)? {
        let key = u.cfg.xattr_ns.name(Key::Opaque);
        layer::set_xattr(fd.as_fd(), key, xattr::OPAQUE, XattrFlags::empty())?;
    }
    Ok(())
}

/// Make the destination something one rename can replace, without ever
/// showing it other than as it was: an upper directory that only holds
/// whiteouts (not empty to the upper's filesystem) is first exchanged with an
/// empty opaque one, as the kernel does. Returns whether the destination is a
/// whiteout (which a directory cannot replace).
fn clear_destination(u: &Union, ddir: BorrowedFd<'_>, new_name: &OsStr) -> Result<bool> {
    let st = match stat_at(ddir, new_name) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if u.is_upper_whiteout(ddir, new_name, &st)? {
        return Ok(true);
    }
    if crate::lookup::is_dir(&st) {
        let old = layer::open_path_at(ddir, new_name)?;
        if crate::list_names(old.as_fd())?.is_empty() {
            return Ok(false);
        }
        let work = u.work_fd()?;
        let tmp = u.temp_name();
        let swapped = empty_opaque_like(u, work, &tmp, &st).and_then(|()| {
            rustix::fs::renameat_with(work, &tmp, ddir, new_name, RenameFlags::EXCHANGE)
        });
        if let Err(e) = swapped {
            u.remove_temp(&tmp);
            return Err(e);
        }
        crate::remove_tree_at(work, &tmp)?;
    }
    Ok(false)
}

/// An empty opaque directory `tmp` in the workdir with the owner, mode and
/// times of `st`.
fn empty_opaque_like(u: &Union, work: BorrowedFd<'_>, tmp: &OsStr, st: &Stat) -> Result<()> {
    rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
    let fd = layer::open_path_at(work, tmp)?;
    let key = u.cfg.xattr_ns.name(Key::Opaque);
    layer::set_xattr(fd.as_fd(), key, xattr::OPAQUE, XattrFlags::empty())?;
    u.chown_or_record(
        work,
        tmp,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    u.chmod_or_record(work, tmp, st.st_mode & 0o7777)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(work, tmp, &times, AtFlags::SYMLINK_NOFOLLOW)
}

/// Move an entry (a directory too) to a name that is free or that it may
/// replace, leaving a whiteout behind when the lowers have the old name: one
/// rename with RENAME_WHITEOUT where the upper's filesystem has it.
fn move_entry(
    u: &Union,
    (sdir, name): (BorrowedFd<'_>, &OsStr),
    (ddir, new_name): (BorrowedFd<'_>, &OsStr),
    needs_whiteout: bool,
) -> Result<()> {
    if needs_whiteout {
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

fn is_char_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    let st = stat_at(dir, name)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice)
}

/// A directory onto an upper whiteout: exchanged with it, as the kernel does,
/// so the whiteout lands on the old name in the same step (and is dropped there
/// when nothing below needs hiding).
fn move_dir_over_whiteout(
    (sdir, name): (BorrowedFd<'_>, &OsStr),
    (ddir, new_name): (BorrowedFd<'_>, &OsStr),
    needs_whiteout: bool,
) -> Result<()> {
    rustix::fs::renameat_with(sdir, name, ddir, new_name, RenameFlags::EXCHANGE)?;
    if !needs_whiteout {
        rustix::fs::unlinkat(sdir, name, AtFlags::empty())?;
    }
    Ok(())
}
