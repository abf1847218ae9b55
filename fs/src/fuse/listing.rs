//! READDIR and READDIRPLUS: pages of a merged listing.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::requests::Kind;
use super::{TTL, UnionFuse, attr, err, errors, kind};
use crate::readdir::DirEntry;

impl UnionFuse {
    pub(super) fn reply_listing(&self, dir: INodeNo, offset: u64, mut reply: ReplyDirectory) {
        self.requests.note(Kind::Readdir);
        let page = match self.union.listing_page(dir.0, offset, false) {
            Ok(p) => p,
            Err(e) => return reply.error(errors::noted("readdir", dir.0, err(e))),
        };
        for e in &page.entries[page.start..] {
            let id = crate::inode::node_id_for(e.ino, false);
            if reply.add(INodeNo(id), e.pos, kind(e.kind.as_raw_mode()), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// Entries with their attributes, each counting as a lookup; or, for
    /// an entry the listing did not resolve while the walk seems to stat
    /// nothing (`stat_walk`), without (node id 0: the kernel takes only the
    /// name, type and inode number, as for "." and "..").
    pub(super) fn reply_listing_plus(
        &self,
        dir: INodeNo,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.requests.note(Kind::Readdirplus);
        let page = match self.union.listing_page(dir.0, offset, true) {
            Ok(p) => p,
            Err(e) => return reply.error(errors::noted("readdirplus", dir.0, err(e))),
        };
        let resolve_now = self.union.stat_walk.attrs_now();
        let mut sent_bare = false;
        for e in &page.entries[page.start..] {
            let dot = e.name == "." || e.name == "..";
            if dot || (e.found.is_none() && !resolve_now) {
                sent_bare |= !dot;
                if reply.add(
                    INodeNo(0),
                    e.pos,
                    &e.name,
                    &Duration::ZERO,
                    &bare_attr(e),
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let Ok((node, st)) = self.union.remember_listed(dir.0, e, page.fresh) else {
                continue;
            };
            let st = self.union.present_stat(&node, &node.snapshot(), st);
            if reply.add(
                INodeNo(node.id),
                e.pos,
                &e.name,
                &TTL,
                &attr(node.id, &st),
                Generation(node.generation()),
            ) {
                // Not sent: give back the lookup just counted.
                self.union.inodes.forget(node.id, 1);
                break;
            }
        }
        if sent_bare {
            self.union.stat_walk.listed_bare(dir.0);
        }
        reply.ok();
    }
}

/// What an entry sent without attributes carries: the kernel reads only its
/// inode number and type.
fn bare_attr(e: &DirEntry) -> FileAttr {
    FileAttr {
        ino: INodeNo(e.ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: kind(e.kind.as_raw_mode()),
        perm: 0o755,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
