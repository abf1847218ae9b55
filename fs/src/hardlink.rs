//! Lower hard-link groups stay one group after copy-up: the first name copied
//! up puts the upper copy in the index (`index/<origin as hex>`, the kernel's
//! index=on layout), later names link to it, and names still only in a lower
//! read the index entry. The link count the mount shows is kept as the
//! kernel keeps it: `overlay.nlink` = "U<signed offset>" against the upper's,
//! or "L<signed offset>" against the lower's while a change of the upper's
//! links that leaves the shown count alone (a name linked to the index entry)
//! is under way, so that the count is right wherever the daemon stops.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use ondisk::nlink::Nlink;
use ondisk::xattr::Key;
use rustix::fs::{Stat, XattrFlags};
use rustix::io::Errno;

use crate::Branch;
use crate::copy_up::CopyUp;
use crate::inode::Node;
use crate::layer::{self, stat_at};
use crate::sync;
use crate::{Result, Union};

impl Union {
    /// The index name of a lower object: its origin in hex.
    pub(crate) fn index_key(&self, li: usize, path: &Path) -> Option<OsString> {
        self.index.as_ref()?;
        let origin = self.encode_origin(li, path)?;
        Some(ondisk::origin::index_name(&origin).into())
    }

    /// The index entry of a lower hard-link group member, if its group has one.
    pub(crate) fn index_entry(&self, li: usize, path: &Path) -> Result<Option<(OsString, Stat)>> {
        let (Some(index), Some(key)) = (self.index.as_ref(), self.index_key(li, path)) else {
            return Ok(None);
        };
        match stat_at(index.root_fd(), &key) {
            Ok(st) => Ok(Some((key, st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link count the mount shows for a hard-linked upper file.
    pub(crate) fn shown_nlink(&self, fd: BorrowedFd<'_>, raw_nlink: u64) -> u64 {
        let key = self.cfg.xattr_ns.name(Key::Nlink);
        let stored = layer::get_xattr(fd, key).ok().flatten();
        match stored.as_deref().and_then(Nlink::parse) {
            Some(Nlink::Upper(d)) => raw_nlink.saturating_add_signed(d),
            Some(Nlink::Lower(d)) => self
                .origin_nlink(fd)
                .map_or(raw_nlink, |l| l.saturating_add_signed(d)),
            None => raw_nlink,
        }
    }

    /// Add `delta` to the shown link count, the upper's staying as it is.
    pub(crate) fn adjust_nlink(&self, fd: BorrowedFd<'_>, delta: i64) -> Result<()> {
        let key = self.cfg.xattr_ns.name(Key::Nlink);
        match layer::get_xattr(fd, key)?.as_deref().and_then(Nlink::parse) {
            Some(Nlink::Lower(d)) => set_nlink(self, fd, Nlink::Lower(d + delta)),
            Some(Nlink::Upper(d)) => set_nlink(self, fd, Nlink::Upper(d + delta)),
            None => set_nlink(self, fd, Nlink::Upper(delta)),
        }
    }

    /// Link another upper name to the index entry `key`: one more upper link,
    /// the same shown count. Around the link the count is kept against the
    /// lower's (which the link does not move), then against the upper's again.
    fn link_up(&self, key: &OsStr, updir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let index = self.branch(Branch::Index)?;
        let fd = layer::open_path_at(index.root_fd(), key)?;
        let raw = rustix::fs::fstat(&fd)?.st_nlink;
        let shown = self.shown_nlink(fd.as_fd(), raw);
        let lower = self.origin_nlink(fd.as_fd());
        if let Some(lower) = lower {
            set_nlink(self, fd.as_fd(), Nlink::Lower(shown as i64 - lower as i64))?;
        }
        rustix::fs::linkat(
            index.root_fd(),
            key,
            updir,
            name,
            rustix::fs::AtFlags::empty(),
        )?;
        match lower {
            Some(_) => {
                let raw = rustix::fs::fstat(&fd)?.st_nlink;
                set_nlink(self, fd.as_fd(), Nlink::Upper(shown as i64 - raw as i64))
            }
            None => self.adjust_nlink(fd.as_fd(), -1),
        }
    }

    /// Publish the copy-up of a group member: the first one enters the index,
    /// the others link to it. Returns false when the group has no index here.
    pub(crate) fn publish_group_member(
        &self,
        li: usize,
        lpath: &Path,
        lower_nlink: u64,
        work_tmp: Option<&OsStr>,
        updir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool> {
        let (Some(index), Some(key)) = (self.index.as_ref(), self.index_key(li, lpath)) else {
            return Ok(false);
        };
        if let Some(tmp) = work_tmp {
            let work = self.work_fd()?;
            let fd = layer::open_path_at(work, tmp)?;
            // Shown: the lower group's count. Until this name is in place too
            // that is said against the lower's count (the upper's is 1 after a
            // crash, 2 or 3 on the way); then against the upper's: the index
            // entry and this name.
            let against_lower = self.origin_nlink(fd.as_fd()).is_some();
            let upper_form = Nlink::Upper(lower_nlink as i64 - 2);
            let first = if against_lower {
                Nlink::Lower(0)
            } else {
                upper_form
            };
            set_nlink(self, fd.as_fd(), first)?;
            match rustix::fs::linkat(
                work,
                tmp,
                index.root_fd(),
                &key,
                rustix::fs::AtFlags::empty(),
            ) {
                Ok(()) => {
                    rustix::fs::renameat_with(
                        work,
                        tmp,
                        updir,
                        name,
                        rustix::fs::RenameFlags::NOREPLACE,
                    )?;
                    if against_lower {
                        set_nlink(self, fd.as_fd(), upper_form)?;
                    }
                    return Ok(true);
                }
                // Another name of the group got there first: link to its copy.
                Err(Errno::EXIST) => crate::remove_tree_at(work, tmp)?,
                Err(e) => return Err(e),
            }
        }
        self.link_up(&key, updir, name)?;
        Ok(true)
    }

    /// Make sure the name (parent, name) of a copied-up group member exists in
    /// the upper (a link to the group's index entry), before it is renamed.
    pub(crate) fn link_group_name(&self, parent: &Node, name: &OsStr) -> Result<()> {
        let _one_at_a_time = sync::lock(&self.group_links);
        self.link_name_to_group(parent, name)
    }

    /// `link_group_name`, `group_links` held.
    fn link_name_to_group(&self, parent: &Node, name: &OsStr) -> Result<()> {
        let _ns = sync::read(&self.namespace);
        let path = self.path_of(parent)?;
        let st = parent.snapshot();
        let Some(found) = self.resolve_child(&st, &path, name)? else {
            return Err(Errno::NOENT);
        };
        let (true, false, Some(key)) = (self.has_upper(), found.state.upper, found.state.index)
        else {
            return Ok(());
        };
        let updir = self.upper().dir(&path)?;
        self.mark_impure(updir.as_fd());
        self.link_up(&key, updir.as_fd(), name)?;
        self.changed();
        Ok(())
    }

    /// Before a name of a lower hard-link group is removed (unlink, or a rename
    /// over it), link it to the group's copy in the upper (copying the group up
    /// if it is not yet), as the kernel does: its removal is then one rename
    /// that leaves a whiteout and drops the upper's link count with the shown
    /// one, so the others' count is right wherever the daemon stops.
    pub(crate) fn link_up_before_removal(&self, parent: &Node, name: &OsStr) -> Result<()> {
        if self.index.is_none() {
            return Ok(());
        }
        let node = {
            let _ns = sync::read(&self.namespace);
            let Some(found) = self.resolve_now(parent, name)? else {
                return Ok(());
            };
            let st = &found.state;
            if st.is_dir || st.upper || (st.index.is_none() && found.stat.st_nlink < 2) {
                return Ok(());
            }
            self.inodes
                .remember(found.st_ino, false, parent.id, name, found.state, false)
        };
        self.copy_up(&node)?;
        if node.snapshot().index.is_some() {
            self.link_group_name(parent, name)?;
        }
        Ok(())
    }

    /// A name that only a lower branch has is going away (unlink, or a rename
    /// over it). If it belongs to a hard-link group, the others' link count drops:
    /// the group's index entry keeps that count (made now if there is none).
    pub(crate) fn removing_lower_name(
        &self,
        found: &crate::lookup::Resolved,
        parent: u64,
        name: &OsStr,
    ) -> Result<()> {
        if found.state.is_dir || found.state.upper {
            return Ok(());
        }
        if let Some(key) = &found.state.index {
            let fd = layer::open_path_at(self.branch(Branch::Index)?.root_fd(), key)?;
            return self.adjust_nlink(fd.as_fd(), -1);
        }
        if let Some(key) = self.index_lower_group(found)?
            && let Some(node) = self.inodes.by_name(parent, name)
        {
            node.state().index = Some(key.into_boxed_os_str());
        }
        self.changed();
        Ok(())
    }

    /// A name of a lower hard-link group is being removed while the group has no
    /// copy yet: make its index entry (no name links to it), counting the links
    /// the others keep. Returns the index name, or None for a file not in a group.
    pub(crate) fn index_lower_group(
        &self,
        found: &crate::lookup::Resolved,
    ) -> Result<Option<OsString>> {
        let Some((li, lpath)) = found.state.resolved_top_lower().cloned() else {
            return Ok(None);
        };
        if found.stat.st_nlink < 2 {
            return Ok(None);
        }
        let (Some(index), Some(key)) = (self.index.as_ref(), self.index_key(li, &lpath)) else {
            return Ok(None);
        };
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        let made = self
            .copy_into_work(li, &lpath, &tmp, CopyUp::Data)
            .and_then(|()| {
                let fd = layer::open_path_at(work, &tmp)?;
                // Upper links: the index entry alone; shown: the group less this name.
                set_nlink(
                    self,
                    fd.as_fd(),
                    Nlink::Upper(found.stat.st_nlink as i64 - 2),
                )?;
                match rustix::fs::linkat(
                    work,
                    &tmp,
                    index.root_fd(),
                    &key,
                    rustix::fs::AtFlags::empty(),
                ) {
                    Ok(()) | Err(Errno::EXIST) => Ok(()),
                    Err(e) => Err(e),
                }
            });
        self.remove_temp(&tmp);
        made.map(|()| Some(key))
    }

    /// Link every visible name of `node`'s hard-link group into the upper
    /// (see `lower_links`), before its shared copy changes. The group's
    /// count says when there is nothing to do: every name it shows is an
    /// upper link but the index entry itself (`U-1`).
    pub(crate) fn link_whole_group(&self, node: &Node) -> Result<()> {
        let Some(key) = node.snapshot().index else {
            return Ok(());
        };
        if !self.has_upper() {
            return Ok(());
        }
        let _one_at_a_time = sync::lock(&self.group_links);
        if self.group_all_linked(&key)? {
            return Ok(());
        }
        for (li, path) in self.lower_groups().names(&key) {
            self.link_group_alias(*li, path, &key)?;
        }
        Ok(())
    }

    fn group_all_linked(&self, key: &OsStr) -> Result<bool> {
        let fd = layer::open_path_at(self.branch(Branch::Index)?.root_fd(), key)?;
        let stored = layer::get_xattr(fd.as_fd(), self.cfg.xattr_ns.name(Key::Nlink))?;
        Ok(matches!(
            stored.as_deref().and_then(Nlink::parse),
            Some(Nlink::Upper(-1))
        ))
    }

    /// Link the lower name `path` (of layer `li`) of the group `key` into the
    /// upper, if the mount shows that name as a member of the group and the
    /// upper does not have it yet. A name the mount shows elsewhere (below a
    /// renamed directory) or not at all (whited out) is left alone.
    fn link_group_alias(&self, li: usize, path: &Path, key: &OsStr) -> Result<()> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(());
        };
        let Some(parent) = self.node_at_path(dir)? else {
            return Ok(());
        };
        let Some(alias) = self.lookup_node(&parent, name)? else {
            return Ok(());
        };
        let st = alias.snapshot();
        let same_name = self
            .inodes
            .top_lower(&st)
            .is_some_and(|(l, p)| l == li && p == path);
        if st.upper || st.index.as_deref() != Some(key) || !same_name {
            return Ok(());
        }
        self.copy_up(&parent)?;
        // Like a copy-up, no change to the directory: it keeps its times.
        let updir = {
            let _ns = sync::read(&self.namespace);
            self.upper().dir(&self.path_of(&parent)?)?
        };
        let times = rustix::fs::fstat(&updir)?;
        self.link_name_to_group(&parent, name)?;
        crate::copy_up::restore_times(&updir, &times)?;
        alias.state().upper = true;
        Ok(())
    }

    /// The node of merged directory path `path`, if the mount shows one.
    fn node_at_path(&self, path: &Path) -> Result<Option<std::sync::Arc<Node>>> {
        let mut node = self.node(crate::ROOT_ID)?;
        for part in path.iter() {
            match self.lookup_node(&node, part)? {
                Some(child) if child.snapshot().is_dir => node = child,
                _ => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// Is the upper file `st` (with origin `origin`) its group's index entry?
    pub(crate) fn is_indexed_copy(&self, origin: &[u8], st: &Stat) -> bool {
        let Some(index) = self.index.as_ref() else {
            return false;
        };
        let key = ondisk::origin::index_name(origin);
        matches!(stat_at(index.root_fd(), OsStr::new(&key)),
            Ok(ist) if ist.st_ino == st.st_ino && ist.st_dev == st.st_dev)
    }
}

fn set_nlink(u: &Union, fd: BorrowedFd<'_>, value: Nlink) -> Result<()> {
    let key = u.cfg.xattr_ns.name(Key::Nlink);
    layer::set_xattr(fd, key, value.format().as_bytes(), XattrFlags::empty())
}
