//! Inode flags (chattr/lsattr): FS_IOC_GETFLAGS, FS_IOC_SETFLAGS,
//! FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR on regular files and directories.
//!
//! As kernel overlayfs, a read asks the topmost real object and a change
//! copies up first, then applies to the upper object. The real filesystem
//! enforces what it is told (an immutable file refuses writes, an append-only
//! one all but appends). Kernel overlayfs keeps `i` and `a` out of the real
//! upper inode, in its `overlay.protattr` xattr, and enforces them itself;
//! such an xattr written by the kernel is shown here too.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use crate::inode::Node;
use crate::layer;
use crate::sync;
use crate::{Result, Union, sys};

/// One of the four inode-flag ioctls, by its request number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagsIoctl {
    GetFlags,
    SetFlags,
    GetXattr,
    SetXattr,
}

/// `_IOR('f', 1, long)` and friends, as the kernel numbers them on 64-bit.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// The flags' argument is an int (whatever the request number says); the
/// fsxattr one is `struct fsxattr`.
const FLAGS_SIZE: usize = 4;
const FSXATTR_SIZE: usize = 28;

const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;
const FS_XFLAG_IMMUTABLE: u32 = 0x8;
const FS_XFLAG_APPEND: u32 = 0x10;

impl FlagsIoctl {
    pub fn from_cmd(cmd: u32) -> Option<FlagsIoctl> {
        Some(match cmd {
            FS_IOC_GETFLAGS => FlagsIoctl::GetFlags,
            FS_IOC_SETFLAGS => FlagsIoctl::SetFlags,
            FS_IOC_FSGETXATTR => FlagsIoctl::GetXattr,
            FS_IOC_FSSETXATTR => FlagsIoctl::SetXattr,
            _ => return None,
        })
    }

    fn cmd(self) -> u32 {
        match self {
            FlagsIoctl::GetFlags => FS_IOC_GETFLAGS,
            FlagsIoctl::SetFlags => FS_IOC_SETFLAGS,
            FlagsIoctl::GetXattr => FS_IOC_FSGETXATTR,
            FlagsIoctl::SetXattr => FS_IOC_FSSETXATTR,
        }
    }

    /// Bytes of the argument, in and out.
    fn size(self) -> usize {
        match self {
            FlagsIoctl::GetFlags | FlagsIoctl::SetFlags => FLAGS_SIZE,
            FlagsIoctl::GetXattr | FlagsIoctl::SetXattr => FSXATTR_SIZE,
        }
    }

    fn changes(self) -> bool {
        matches!(self, FlagsIoctl::SetFlags | FlagsIoctl::SetXattr)
    }
}

impl Union {
    /// Run an inode-flag ioctl for `node` with the caller's argument bytes;
    /// returns the argument as the real filesystem left it.
    pub fn flags_ioctl(&self, node: &Node, op: FlagsIoctl, input: &[u8]) -> Result<Vec<u8>> {
        let fd = if op.changes() {
            self.prepare_meta_write(node)?;
            let _ns = sync::read(&self.namespace);
            let (li, path) = self.write_location(node)?;
            self.open_for_flags(li, &path)?
        } else {
            let _ns = sync::read(&self.namespace);
            let (li, path) = self.top_entry(node, &node.snapshot())?;
            self.open_for_flags(li, &path)?
        };
        let mut arg = vec![0u8; op.size()];
        let n = input.len().min(arg.len());
        arg[..n].copy_from_slice(&input[..n]);
        sys::ioctl_arg(fd.as_fd(), op.cmd(), &mut arg)?;
        if !op.changes() {
            self.show_protattr(&fd, op, &mut arg)?;
        }
        Ok(arg)
    }

    /// A regular file or directory of a branch opened to ask or change its
    /// flags (reading is enough for both); other kinds have no flags here.
    fn open_for_flags(&self, li: crate::Branch, path: &std::path::Path) -> Result<OwnedFd> {
        let layer = self.branch(li)?;
        let st = layer.stat(path)?;
        let extra = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => OFlags::empty(),
            FileType::Directory => OFlags::DIRECTORY,
            _ => return Err(Errno::NOTTY),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | extra;
        self.open_data(li, path, flags)
    }

    /// Add the `i` and `a` kernel overlayfs keeps in `overlay.protattr`.
    fn show_protattr(&self, fd: &OwnedFd, op: FlagsIoctl, arg: &mut [u8]) -> Result<()> {
        let name = format!("{}protattr", self.cfg.xattr_ns.prefix());
        let Some(value) = layer::get_xattr(fd.as_fd(), &name)? else {
            return Ok(());
        };
        let (immutable, append, at) = match op {
            FlagsIoctl::GetFlags => (FS_IMMUTABLE_FL, FS_APPEND_FL, 0),
            // struct fsxattr begins with fsx_xflags.
            _ => (FS_XFLAG_IMMUTABLE, FS_XFLAG_APPEND, 0),
        };
        let mut word = u32::from_ne_bytes(arg[at..at + 4].try_into().expect("4 bytes"));
        for c in value {
            word |= match c {
                b'i' => immutable,
                b'a' => append,
                _ => 0,
            };
        }
        arg[at..at + 4].copy_from_slice(&word.to_ne_bytes());
        Ok(())
    }
}
