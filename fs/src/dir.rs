//! create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
//!
//! A new object is made at its name by one call as its creator (the thread's
//! filesystem ids switched to theirs, as kernel overlayfs overrides its creds),
//! so it is born whole. Where one call cannot make it whole (over a whiteout,
//! an opaque directory, a daemon that cannot act as another user) it is built
//! under a temporary name in the workdir and published by one rename. Either
//! way nothing half-made is ever visible.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use ondisk::whiteout;
use ondisk::xattr::{self, Key};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, XattrFlags};
use rustix::io::Errno;

use crate::Branch;
use crate::acl;
use crate::inode::{Lowers, Names, Node, NodeState};
use crate::layer::{self, stat_at};
use crate::lookup::{Resolved, is_dir};
use crate::sync;
use crate::{Result, Union};

/// What to create; modes as the caller asked, before its umask.
#[derive(Clone, Copy)]
pub enum NewObject<'a> {
    File { mode: u32, flags: OFlags },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a Path },
}

impl NewObject<'_> {
    fn mode_mut(&mut self) -> Option<&mut u32> {
        match self {
            NewObject::File { mode, .. }
            | NewObject::Dir { mode }
            | NewObject::Node { mode, .. } => Some(mode),
            NewObject::Symlink { .. } => None,
        }
    }
}

/// The caller's identity, for the owner of what they create, and its umask.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// A created object: its node, stat and (for files) the open descriptor.
pub struct Created {
    pub node: Arc<Node>,
    pub stat: Stat,
    pub fd: Option<OwnedFd>,
}

impl Union {
    /// Make a directory ready to receive a change (copied up with its parents).
    fn prepare_dir(&self, parent: &Node) -> Result<()> {
        if !parent.snapshot().is_dir {
            return Err(Errno::NOTDIR);
        }
        self.prepare_write(parent)
    }

    /// Resolve (parent, name) now, with the parent's current state.
    pub(crate) fn resolve_now(&self, parent: &Node, name: &OsStr) -> Result<Option<Resolved>> {
        let st = parent.snapshot();
        let path = self.path_of(parent)?;
        self.resolve_child(&st, &path, name)
    }

    /// Does any lower branch show `name` in `parent` (so removing the upper entry
    /// would expose it, and a whiteout is needed)?
    pub(crate) fn lowers_have(&self, parent: &Node, name: &OsStr) -> Result<bool> {
        let mut st = parent.snapshot();
        if st.lowers.is_empty() {
            return Ok(false);
        }
        st.upper = false;
        let path = self.path_of(parent)?;
        Ok(self.resolve_child(&st, &path, name)?.is_some())
    }

    pub fn create(
        &self,
        parent_id: u64,
        name: &OsStr,
        obj: NewObject<'_>,
        who: Caller,
    ) -> Result<Created> {
        let made = self.create_entry(parent_id, name, obj, who);
        self.dir_changed(parent_id);
        made
    }

    fn create_entry(
        &self,
        parent_id: u64,
        name: &OsStr,
        mut obj: NewObject<'_>,
        who: Caller,
    ) -> Result<Created> {
        check_name(name)?;
        let parent = self.node(parent_id)?;
        if !parent.snapshot().is_dir {
            return Err(Errno::NOTDIR);
        }
        if !parent.snapshot().upper || is_whiteout_node(&obj) {
            // Errors first: a failed create must not copy its parent up.
            let _ns = sync::read(&self.namespace);
            if self.resolve_now(&parent, name)?.is_some() {
                return Err(Errno::EXIST);
            }
        }
        if is_whiteout_node(&obj) {
            // As kernel overlayfs: a 0/0 character device is a whiteout in
            // the upper, so making one would delete the name instead.
            return Err(Errno::PERM);
        }
        self.prepare_dir(&parent)?;
        if let Some(created) = self.create_as_caller(&parent, name, obj, who)? {
            return Ok(created);
        }
        let who = self.inherit_setgid(&parent, &mut obj, who)?;
        let _ns = sync::read(&self.namespace);
        let (li, ppath) = self.write_location(&parent)?;
        if self.resolve_now(&parent, name)?.is_some() {
            return Err(Errno::EXIST);
        }
        if li != Branch::TOP || !self.has_upper() {
            let dir = self.branch(li)?.dir(&ppath)?;
            // The branch's filesystem applies a default ACL itself.
            apply_umask(&mut obj, who.umask, default_acl(dir.as_fd()).is_some());
            return self.create_in_place(&parent, li, &ppath, name, obj, who);
        }
        let dir = self.upper().dir(&ppath)?;
        let over_whiteout = match stat_at(dir.as_fd(), name) {
            Ok(st) if self.is_upper_whiteout(dir.as_fd(), name, &st)? => true,
            Ok(_) => return Err(Errno::EXIST),
            Err(Errno::NOENT) => false,
            Err(e) => return Err(e),
        };
        let opaque = matches!(obj, NewObject::Dir { .. })
            && (over_whiteout || self.whited_out_below(&parent.snapshot(), name)?);
        let fd = self.make_and_publish(dir.as_fd(), name, obj, who, opaque, over_whiteout)?;
        self.created_in_upper(parent_id, dir.as_fd(), name, opaque, fd)
    }

    /// Make the object at its name in the upper, in one call as its creator
    /// (owner, mode and the directory's default ACL as kernel overlayfs gets
    /// them): nothing to publish. None where one call cannot make it whole,
    /// to be made in the workdir then: over a whiteout (the name is taken),
    /// a directory that must be opaque (its marker comes first), a daemon that
    /// cannot act as another user (rootless), or a branch other than the upper.
    fn create_as_caller(
        &self,
        parent: &Node,
        name: &OsStr,
        obj: NewObject<'_>,
        who: Caller,
    ) -> Result<Option<Created>> {
        if self.rootless || !self.has_upper() {
            return Ok(None);
        }
        let _ns = sync::read(&self.namespace);
        let (li, ppath) = self.write_location(parent)?;
        if li != Branch::TOP {
            return Ok(None);
        }
        if self.resolve_now(parent, name)?.is_some() {
            return Err(Errno::EXIST);
        }
        if matches!(obj, NewObject::Dir { .. })
            && self.whited_out_below(&parent.snapshot(), name)?
        {
            return Ok(None);
        }
        let dir = self.upper().dir(&ppath)?;
        let uid = self.cfg.uids.to_outside(who.uid);
        let gid = self.cfg.gids.to_outside(who.gid);
        let Some(acting) = crate::sys::act_as(uid, gid) else {
            return Ok(None);
        };
        let mut obj = obj;
        // The upper's filesystem applies the directory's default ACL itself.
        apply_umask(&mut obj, who.umask, default_acl(dir.as_fd()).is_some());
        let made = make_bare(dir.as_fd(), name, &obj);
        drop(acting);
        match made {
            Err(Errno::EXIST) => Ok(None),
            made => self
                .created_in_upper(parent.id, dir.as_fd(), name, false, made?)
                .map(Some),
        }
    }

    /// The node of an object just made at `name` in the upper directory `dir`.
    fn created_in_upper(
        &self,
        parent_id: u64,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        opaque: bool,
        fd: Option<OwnedFd>,
    ) -> Result<Created> {
        let stat = match &fd {
            Some(f) => rustix::fs::fstat(f)?,
            None => stat_at(dir, name)?,
        };
        let state = NodeState {
            names: Names::new(),
            is_dir: is_dir(&stat),
            upper: true,
            lowers: Lowers::new(),
            opaque,
            index: None,
            metacopy: false,
            xattr_names: None,
        };
        let st_ino = self.upper().ino_prefix | stat.st_ino;
        let node = self
            .inodes
            .remember(st_ino, false, parent_id, name, state.clone(), true);
        self.changed();
        Ok(Created {
            stat: self.present_stat(&node, &state, stat),
            node,
            fd,
        })
    }

    /// Make the object under a temporary name in the workdir, owner, mode and
    /// inherited ACL set there, and move it to its name by one rename.
    fn make_and_publish(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mut obj: NewObject<'_>,
        who: Caller,
        opaque: bool,
        over_whiteout: bool,
    ) -> Result<Option<OwnedFd>> {
        let inherited = inherit_acl(dir, &mut obj, who.umask);
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        let made = make_object(work, &tmp, &obj, who, self).and_then(|fd| {
            set_inherited_acl(work, &tmp, inherited.as_ref())?;
            Ok(fd)
        });
        let published = made.and_then(|fd| {
            self.publish(work, &tmp, dir, name, opaque, over_whiteout)?;
            Ok(fd)
        });
        if published.is_err() {
            self.remove_temp(&tmp);
        }
        published
    }

    /// Move a finished temporary object to its name. A directory made where a
    /// whiteout hides a name of the lowers is opaque (as the kernel makes it); over
    /// an upper whiteout it is exchanged with the whiteout, which is then dropped.
    fn publish(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        opaque: bool,
        over_whiteout: bool,
    ) -> Result<()> {
        if opaque {
            let fd = layer::open_path_at(work, tmp)?;
            let key = self.cfg.xattr_ns.name(Key::Opaque);
            layer::set_xattr(fd.as_fd(), key, xattr::OPAQUE, XattrFlags::empty())?;
        }
        match (over_whiteout, opaque) {
            (false, _) => rustix::fs::renameat_with(work, tmp, dir, name, RenameFlags::NOREPLACE),
            (true, true) => {
                rustix::fs::renameat_with(work, tmp, dir, name, RenameFlags::EXCHANGE)?;
                rustix::fs::unlinkat(work, tmp, AtFlags::empty())
            }
            (true, false) => rustix::fs::renameat(work, tmp, dir, name),
        }
    }

    /// Without copy-on-write: create directly in a writable branch.
    /// In a setgid directory a new object takes the directory's group, and a
    /// new directory is setgid too (as `inode_init_owner` does in the kernel:
    /// our objects are made in the workdir, where nothing is inherited).
    fn inherit_setgid(
        &self,
        parent: &Node,
        obj: &mut NewObject<'_>,
        who: Caller,
    ) -> Result<Caller> {
        let st = self.getattr_open(parent, None)?;
        if st.st_mode & libc::S_ISGID == 0 {
            return Ok(who);
        }
        if let NewObject::Dir { mode } = obj {
            *mode |= libc::S_ISGID;
        }
        Ok(Caller {
            gid: st.st_gid,
            ..who
        })
    }

    fn create_in_place(
        &self,
        parent: &Node,
        li: Branch,
        ppath: &Path,
        name: &OsStr,
        obj: NewObject<'_>,
        who: Caller,
    ) -> Result<Created> {
        // A directory is never in the hard-link index, so its place is a layer.
        let Branch::Layer(n) = li else {
            return Err(Errno::STALE);
        };
        let layer = self.branch(li)?;
        let dir = layer.dir(ppath)?;
        let fd = make_object(dir.as_fd(), name, &obj, who, self)?;
        let stat = stat_at(dir.as_fd(), name)?;
        let state = NodeState {
            names: Names::new(),
            is_dir: is_dir(&stat),
            upper: false,
            lowers: smallvec::smallvec![(n, ppath.join(name))],
            opaque: false,
            index: None,
            metacopy: false,
            xattr_names: None,
        };
        let st_ino = layer.ino_prefix | stat.st_ino;
        let node = self
            .inodes
            .remember(st_ino, false, parent.id, name, state.clone(), true);
        self.changed();
        Ok(Created {
            stat: self.present_stat(&node, &state, stat),
            node,
            fd,
        })
    }

    pub fn link(
        &self,
        node_id: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(Arc<Node>, Stat)> {
        let made = self.link_entry(node_id, new_parent, new_name);
        self.dir_changed(new_parent);
        made
    }

    fn link_entry(
        &self,
        node_id: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(Arc<Node>, Stat)> {
        check_name(new_name)?;
        let node = self.node(node_id)?;
        if node.snapshot().is_dir {
            return Err(Errno::PERM);
        }
        let parent = self.node(new_parent)?;
        self.prepare_dir(&parent)?;
        self.prepare_write(&node)?;
        let _ns = sync::read(&self.namespace);
        let (pli, ppath) = self.write_location(&parent)?;
        let (li, src) = self.write_location(&node)?;
        // The hard-link index lives on the upper's filesystem.
        if li != pli && !(li == Branch::Index && pli == Branch::TOP) {
            return Err(Errno::XDEV);
        }
        if self.resolve_now(&parent, new_name)?.is_some() {
            return Err(Errno::EXIST);
        }
        let (sp, sn) = layer::split(&src);
        let sdir = self.branch(li)?.dir(sp)?;
        let ddir = self.branch(pli)?.dir(&ppath)?;
        let sn = sn.ok_or(Errno::INVAL)?;
        if self.has_upper() {
            // The new name may carry an origin: announce it as the kernel does,
            // before it is there.
            self.mark_impure(ddir.as_fd());
        }
        match stat_at(ddir.as_fd(), new_name) {
            Ok(st)
                if self.has_upper() && self.is_upper_whiteout(ddir.as_fd(), new_name, &st)? =>
            {
                let work = self.work_fd()?;
                let tmp = self.temp_name();
                rustix::fs::linkat(&sdir, sn, work, &tmp, AtFlags::empty())?;
                if let Err(e) = rustix::fs::renameat(work, &tmp, &ddir, new_name) {
                    self.remove_temp(&tmp);
                    return Err(e);
                }
            }
            Ok(_) => return Err(Errno::EXIST),
            Err(Errno::NOENT) => rustix::fs::linkat(&sdir, sn, &ddir, new_name, AtFlags::empty())?,
            Err(e) => return Err(e),
        }
        self.inodes.remember(
            node.st_ino,
            false,
            new_parent,
            new_name,
            node.snapshot(),
            true,
        );
        self.changed();
        let mut raw = stat_at(ddir.as_fd(), new_name)?;
        let linked = layer::open_path_at(ddir.as_fd(), new_name)?;
        raw.st_nlink = self.shown_nlink(linked.as_fd(), raw.st_nlink);
        Ok((
            node.clone(),
            self.present_stat(&node, &node.snapshot(), raw),
        ))
    }

    pub fn unlink(&self, parent_id: u64, name: &OsStr) -> Result<()> {
        let done = self.remove(parent_id, name, false);
        self.dir_changed(parent_id);
        done
    }

    pub fn rmdir(&self, parent_id: u64, name: &OsStr) -> Result<()> {
        let done = self.remove(parent_id, name, true);
        self.dir_changed(parent_id);
        done
    }

    /// Every error unlink/rmdir can give, found before anything is copied up.
    fn check_remove(&self, parent: &Node, name: &OsStr, want_dir: bool) -> Result<Resolved> {
        let found = self.resolve_now(parent, name)?.ok_or(Errno::NOENT)?;
        match (want_dir, found.state.is_dir) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            _ => {}
        }
        let path = self.path_of(parent)?.join(name);
        if want_dir && !self.merged_dir_is_empty(&found.state, &path)? {
            return Err(Errno::NOTEMPTY);
        }
        Ok(found)
    }

    fn remove(&self, parent_id: u64, name: &OsStr, want_dir: bool) -> Result<()> {
        let parent = self.node(parent_id)?;
        let (first, seen) = {
            let _ns = sync::read(&self.namespace);
            let found = self.check_remove(&parent, name, want_dir)?;
            (found, self.change_count())
        };
        self.prepare_dir(&parent)?;
        if self.has_upper() && !want_dir && first.may_be_lower_link() {
            self.link_up_before_removal(&parent, name)?;
        }
        let victim = want_dir.then(|| self.last_sight(parent_id, name)).flatten();
        let _ns = sync::write(&self.namespace);
        let _moved = want_dir.then(|| DirsMoved(self));
        let (li, ppath) = self.write_location(&parent)?;
        // Looked at again only if names changed since (a copy-up, another
        // request): what was checked then still holds otherwise.
        let found = if self.change_count() == seen {
            first
        } else {
            self.check_remove(&parent, name, want_dir)?
        };
        if self.has_upper() {
            self.removing_lower_name(&found, parent_id, name)?;
        }
        if !self.has_upper() {
            let (fli, fpath) = found
                .state
                .resolved_top_lower()
                .cloned()
                .ok_or(Errno::STALE)?;
            if Branch::Layer(fli) != li || !self.branch(Branch::Layer(fli))?.writable {
                return Err(Errno::ROFS);
            }
            let (fp, fname) = layer::split(&fpath);
            let dir = self.branch(Branch::Layer(fli))?.dir(fp)?;
            let flags = if want_dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rustix::fs::unlinkat(&dir, fname.ok_or(Errno::INVAL)?, flags)?;
        } else {
            // A name shown from a lower needs a whiteout; one from the upper
            // only if a lower has it too.
            let needs_whiteout = !found.state.upper || self.lowers_have(&parent, name)?;
            let dir = self.upper().dir(&ppath)?;
            self.remove_upper_entry(
                dir.as_fd(),
                name,
                found.state.upper,
                want_dir,
                needs_whiteout,
            )?;
        }
        self.inodes.drop_name(parent_id, name);
        if found.is_last_link() {
            self.inodes.deleted(found.st_ino);
        }
        if let Some((node, last)) = victim {
            self.keep_removed_dir(&node, last);
        }
        self.changed();
        Ok(())
    }

    /// The node the kernel knows as (parent, name), with what it shows now,
    /// taken before a removal of that name (a directory's, whose open
    /// descriptors and working directories keep answering after it).
    fn last_sight(&self, parent_id: u64, name: &OsStr) -> Option<(Arc<Node>, Stat)> {
        let node = self.inodes.by_name(parent_id, name)?;
        let st = self.getattr(&node).ok()?;
        Some((node, st))
    }

    /// A directory lost its last name: keep what it showed, link count 0.
    fn keep_removed_dir(&self, node: &Node, last: Stat) {
        if last.st_ino == node.st_ino && node.state().names.is_empty() {
            self.inodes.dir_removed(node.id, last);
        }
    }

    /// Take `name` out of the upper directory `dir`, leaving a whiteout when a
    /// lower still has it. The entry goes to the workdir first, so the upper
    /// never shows a half-removed directory.
    fn remove_upper_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        in_upper: bool,
        is_dir: bool,
        needs_whiteout: bool,
    ) -> Result<()> {
        if !in_upper {
            return self.make_whiteout(dir, name);
        }
        if !needs_whiteout && !is_dir {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        if needs_whiteout && self.link_shared_whiteout(work, &tmp)? {
            // A link of the shared whiteout takes the entry's place in one
            // exchange (a new inode for RENAME_WHITEOUT costs more).
            match rustix::fs::renameat_with(work, &tmp, dir, name, RenameFlags::EXCHANGE) {
                Ok(()) => return crate::remove_tree_at(work, &tmp),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(work, &tmp, AtFlags::empty());
                    if e != Errno::INVAL {
                        return Err(e);
                    }
                }
            }
        }
        let flags = if needs_whiteout {
            RenameFlags::WHITEOUT
        } else {
            RenameFlags::empty()
        };
        match rustix::fs::renameat_with(dir, name, work, &tmp, flags) {
            Ok(()) => {}
            Err(Errno::INVAL) | Err(Errno::PERM) if needs_whiteout => {
                // No RENAME_WHITEOUT here (or no privilege for it): move, then
                // make the whiteout.
                rustix::fs::renameat(dir, name, work, &tmp)?;
                self.make_whiteout(dir, name)?;
            }
            Err(e) => return Err(e),
        }
        crate::remove_tree_at(work, &tmp)
    }

    /// Does a merged directory hold nothing but whiteouts?
    pub(crate) fn merged_dir_is_empty(&self, st: &NodeState, path: &Path) -> Result<bool> {
        Ok(self.merged_names(st, path)?.is_empty())
    }

    pub fn rename(
        &self,
        parent_id: u64,
        name: &OsStr,
        new_parent_id: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let done = self.rename_entry(parent_id, name, new_parent_id, new_name, flags);
        self.dir_changed(parent_id);
        self.dir_changed(new_parent_id);
        done
    }

    fn rename_entry(
        &self,
        parent_id: u64,
        name: &OsStr,
        new_parent_id: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        check_name(new_name)?;
        if !self.has_upper() {
            return self.rename_in_place(parent_id, name, new_parent_id, new_name, flags);
        }
        let parent = self.node(parent_id)?;
        let new_parent = self.node(new_parent_id)?;
        {
            let _ns = sync::read(&self.namespace);
            crate::rename::check(self, &parent, name, &new_parent, new_name, flags)?;
        }
        self.prepare_dir(&parent)?;
        self.prepare_dir(&new_parent)?;
        let src = self.lookup_node(&parent, name)?.ok_or(Errno::NOENT)?;
        self.copy_up(&src)?;
        if src.snapshot().index.is_some() {
            self.link_group_name(&parent, name)?;
        }
        let dst = self.lookup_node(&new_parent, new_name)?;
        if dst.is_some() && !flags.contains(RenameFlags::EXCHANGE) {
            self.link_up_before_removal(&new_parent, new_name)?;
        }
        if let Some(dst) = &dst
            && flags.contains(RenameFlags::EXCHANGE)
        {
            self.copy_up(dst)?;
            if dst.snapshot().index.is_some() {
                self.link_group_name(&new_parent, new_name)?;
            }
        }
        let replaced_dir = match &dst {
            Some(d) if d.snapshot().is_dir && !flags.contains(RenameFlags::EXCHANGE) => {
                self.last_sight(new_parent_id, new_name)
            }
            _ => None,
        };
        let _ns = sync::write(&self.namespace);
        let _moved = DirsMoved(self);
        crate::rename::rename_locked(self, &parent, name, &new_parent, new_name, flags)?;
        if let Some((node, last)) = replaced_dir {
            self.keep_removed_dir(&node, last);
        }
        Ok(())
    }

    /// Paths in the writable branches may name other directories now.
    fn dirs_moved(&self) {
        for layer in self.layers.iter().chain(&self.index) {
            layer.dirs_moved();
        }
    }

    /// Find (and remember, without counting a kernel lookup) the node of a name.
    pub(crate) fn lookup_node(&self, parent: &Node, name: &OsStr) -> Result<Option<Arc<Node>>> {
        let _ns = sync::read(&self.namespace);
        let Some(found) = self.resolve_now(parent, name)? else {
            return Ok(None);
        };
        Ok(Some(self.inodes.remember(
            found.st_ino,
            false,
            parent.id,
            name,
            found.state,
            false,
        )))
    }

    /// Without copy-on-write: a rename inside one writable branch.
    fn rename_in_place(
        &self,
        parent_id: u64,
        name: &OsStr,
        new_parent_id: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let parent = self.node(parent_id)?;
        let new_parent = self.node(new_parent_id)?;
        let src = self.lookup_node(&parent, name)?.ok_or(Errno::NOENT)?;
        let st = src.snapshot();
        let (li, spath) = self.inodes.top_lower(&st).ok_or(Errno::STALE)?;
        self.prepare_dir(&new_parent)?;
        let _ns = sync::write(&self.namespace);
        let (dli, dpath) = self.write_location(&new_parent)?;
        if !self.branch(Branch::Layer(li))?.writable || Branch::Layer(li) != dli || st.is_dir {
            // Directories would need their descendants' paths moved too.
            return Err(Errno::XDEV);
        }
        let layer = self.branch(Branch::Layer(li))?;
        let (sp, sn) = layer::split(&spath);
        let sdir = layer.dir(sp)?;
        let ddir = layer.dir(&dpath)?;
        rustix::fs::renameat_with(&sdir, sn.ok_or(Errno::INVAL)?, &ddir, new_name, flags)?;
        self.inodes
            .rename_name(parent_id, name, new_parent_id, new_name);
        self.changed();
        src.state().lowers = smallvec::smallvec![(li, dpath.join(new_name))];
        Ok(())
    }
}

impl Union {
    /// Make a whiteout named `name` in the upper directory `dir`: a character
    /// device 0/0, or where mknod is refused (no privilege) an empty file marked
    /// `overlay.whiteout`, its directory marked `overlay.opaque=x` (the kernel's
    /// xattr whiteouts, readable by kernel overlayfs 6.7+ with the same namespace).
    pub(crate) fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        if self.link_shared_whiteout(dir, name)? {
            return Ok(());
        }
        match rustix::fs::mknodat(
            dir,
            name,
            whiteout::KERNEL_KIND,
            Mode::empty(),
            whiteout::KERNEL_RDEV,
        ) {
            Err(Errno::PERM) => {}
            other => return other,
        }
        // Made whole in the workdir and moved in by one rename, its directory
        // marked first: no crash shows an empty file instead of a whiteout.
        self.mark_xattr_whiteout_dir(dir)?;
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        let made = rustix::fs::openat(
            work,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|f| {
            let key = self.cfg.xattr_ns.name(Key::Whiteout);
            layer::set_xattr(f.as_fd(), key, xattr::WHITEOUT, XattrFlags::empty())
        })
        .and_then(|()| rustix::fs::renameat_with(work, &tmp, dir, name, RenameFlags::NOREPLACE));
        if made.is_err() {
            self.remove_temp(&tmp);
        }
        made
    }

    /// Link the mount's shared whiteout at `name` (false when there is none:
    /// no workdir, or whiteouts cannot be made or linked here). As kernel
    /// overlayfs does, one whiteout inode serves every whiteout: a link costs
    /// far less than a new inode (`rm -rf` of a lower tree makes one each).
    fn link_shared_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
        let Ok(work) = self.work_fd() else {
            return Ok(false);
        };
        let mut shared = sync::lock(&self.shared_whiteout);
        for _ in 0..2 {
            if !shared.made {
                let made = rustix::fs::mknodat(
                    work,
                    SHARED_WHITEOUT,
                    whiteout::KERNEL_KIND,
                    Mode::empty(),
                    whiteout::KERNEL_RDEV,
                );
                match made {
                    Ok(()) => shared.made = true,
                    Err(Errno::EXIST) => {
                        // Left by an earlier failure to link it: start afresh.
                        rustix::fs::unlinkat(work, SHARED_WHITEOUT, AtFlags::empty())?;
                        continue;
                    }
                    // Not privileged for mknod: the caller makes xattr whiteouts.
                    Err(_) => return Ok(false),
                }
            }
            match rustix::fs::linkat(work, SHARED_WHITEOUT, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(true),
                // Its links are used up: the next one gets a new inode.
                Err(Errno::MLINK) => {
                    rustix::fs::unlinkat(work, SHARED_WHITEOUT, AtFlags::empty())?;
                    shared.made = false;
                }
                Err(Errno::EXIST) => return Err(Errno::EXIST),
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Mark `dir` as holding xattr whiteouts (`overlay.opaque=x`), which kernel
    /// overlayfs looks for only in directories so marked.
    pub(crate) fn mark_xattr_whiteout_dir(&self, dir: BorrowedFd<'_>) -> Result<()> {
        let key = self.cfg.xattr_ns.name(Key::Opaque);
        if layer::get_xattr(dir, key)?.is_none() {
            layer::set_xattr(dir, key, xattr::OPAQUE_HOLDS_WHITEOUTS, XattrFlags::empty())?;
        }
        Ok(())
    }

    /// Is the upper entry `name` in `dir` (lstat `st`) a whiteout?
    pub(crate) fn is_upper_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> Result<bool> {
        crate::names::is_whiteout(dir, name, st)
    }
}

/// The shared whiteout's name in the workdir's `work/` (emptied at mount).
pub const SHARED_WHITEOUT: &str = "#whiteout";

/// Whether the shared whiteout exists in `work/`.
#[derive(Default)]
pub(crate) struct SharedWhiteout {
    made: bool,
}

/// A character device 0/0: what a whiteout is on disk.
fn is_whiteout_node(obj: &NewObject<'_>) -> bool {
    matches!(obj, NewObject::Node { mode, rdev: 0 }
        if FileType::from_raw_mode(*mode) == FileType::CharacterDevice)
}

pub(crate) fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > 255 {
        Err(Errno::NAMETOOLONG)
    } else {
        Ok(())
    }
}

/// The default ACL of a directory, if it has a valid one.
fn default_acl(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    crate::layer::get_xattr_at(dir, OsStr::new("."), acl::DEFAULT)
        .ok()
        .flatten()
}

/// The caller's umask applies unless a default ACL is inherited (POSIX).
fn apply_umask(obj: &mut NewObject<'_>, umask: u32, inherits: bool) {
    if let Some(mode) = obj.mode_mut()
        && !inherits
    {
        *mode &= !(umask & 0o777);
    }
}

/// An object made in the workdir gets its parent's default ACL by hand (see
/// `acl`): its mode is set here, its ACLs by `set_inherited_acl`.
fn inherit_acl(dir: BorrowedFd<'_>, obj: &mut NewObject<'_>, umask: u32) -> Option<acl::Inherited> {
    let is_dir = matches!(obj, NewObject::Dir { .. });
    let inherited = obj.mode_mut().and_then(|mode| {
        let got = acl::inherit(&default_acl(dir)?, *mode, is_dir)?;
        *mode = got.mode;
        Some(got)
    });
    apply_umask(obj, umask, inherited.is_some());
    inherited
}

fn set_inherited_acl(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    acl: Option<&acl::Inherited>,
) -> Result<()> {
    let Some(acl) = acl else { return Ok(()) };
    let f = layer::open_path_at(dir, name)?;
    for (key, value) in [(acl::ACCESS, &acl.access), (acl::DEFAULT, &acl.default)] {
        if let Some(v) = value {
            layer::set_xattr(f.as_fd(), key, v, rustix::fs::XattrFlags::empty())?;
        }
    }
    Ok(())
}

/// Make the object `name` in `dir` with the caller's owner; files come back open.
fn make_object(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    obj: &NewObject<'_>,
    who: Caller,
    union: &Union,
) -> Result<Option<OwnedFd>> {
    let fd = make_bare(dir, name, obj)?;
    let uid = rustix::fs::Uid::from_raw(union.cfg.uids.to_outside(who.uid));
    let gid = rustix::fs::Gid::from_raw(union.cfg.gids.to_outside(who.gid));
    union.chown_or_record(dir, name, Some(uid), Some(gid))?;
    if let NewObject::File { mode, .. } | NewObject::Dir { mode } | NewObject::Node { mode, .. } =
        obj
        && mode & 0o7000 != 0
    {
        // chown cleared setuid/setgid; put back what the caller asked for.
        layer::chmod_at(dir, name, mode & 0o7777)?;
    }
    Ok(fd)
}

/// Make the object `name` in `dir` as the thread's ids make it; files come back open.
fn make_bare(dir: BorrowedFd<'_>, name: &OsStr, obj: &NewObject<'_>) -> Result<Option<OwnedFd>> {
    let mut fd = None;
    match obj {
        NewObject::File { mode, flags } => {
            let flags = (*flags
                & !(OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC | OFlags::NOCTTY))
                | OFlags::CREATE
                | OFlags::EXCL
                | OFlags::CLOEXEC;
            let f = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode & 0o7777))?;
            fd = Some(f);
        }
        NewObject::Dir { mode } => {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))?
        }
        NewObject::Node { mode, rdev } => {
            let kind = FileType::from_raw_mode(*mode);
            rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(mode & 0o7777), *rdev)?;
        }
        NewObject::Symlink { target } => rustix::fs::symlinkat(*target, dir, name)?,
    }
    Ok(fd)
}

/// Held, after the namespace lock, over a rename or a rmdir: when it is
/// dropped (first, still under the lock) the writable branches forget the
/// directories they opened by path.
struct DirsMoved<'a>(&'a Union);

impl Drop for DirsMoved<'_> {
    fn drop(&mut self) {
        self.0.dirs_moved();
    }
}
