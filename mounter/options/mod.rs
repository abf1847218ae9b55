//! Mount command lines in both syntaxes, parsed and checked before anything is mounted.
//!
//! fuse-overlayfs / kernel overlay: `-o lowerdir=A:B,upperdir=U,workdir=W MNT`
//! unionfs-fuse: `-o cow UPPER=RW:LOWER=RO MNT`
//! mount.fuse3: `SRC MNT -o OPTS` (SRC is ignored, as fuse-overlayfs does)
//!
//! Every path is made absolute and canonical here, at parse time, because the
//! daemon later changes directory to `/` and relative lowerdirs (containers-storage
//! passes `l/ID` symlinks relative to its working directory) would stop resolving.
//!
//! Layout, as the kernel's overlayfs splits `params.c` from `super.c`:
//! `parse` reads argv, `params` applies one `-o` option at a time, `branches`
//! turns the path values into branches (both syntaxes, escapes, resolution),
//! `host` checks the request against the host before mounting, and `encode`
//! writes an overlay `-o` value from typed parts, escaped as `parse` reads it
//! back (callers that start a mount use it instead of building strings).

mod branches;
mod encode;
mod host;
mod params;
mod parse;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testing;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

pub use encode::{OverlayOptions, UpperDirs};
pub use host::validate;
pub use parse::parse_mount_args;

/// One branch of the union, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub path: PathBuf,
    pub writable: bool,
}

/// One range of an owner mapping: ids `inside..inside+count` seen in the mount are
/// `outside..outside+count` on disk (fuse-overlayfs `uidmapping=C:H:L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Everything a mount command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub mountpoint: PathBuf,
    /// Top first. With the overlay syntax: the upper (if any, writable) then the lowers.
    pub branches: Vec<Branch>,
    pub workdir: Option<PathBuf>,
    /// Copy up files of read-only branches on write (always on with an upperdir).
    /// Only ever true when some branch is writable.
    pub cow: bool,
    pub foreground: bool,
    pub debug: bool,
    pub uid_mapping: Vec<IdMapping>,
    pub gid_mapping: Vec<IdMapping>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub volatile: bool,
    /// `metacopy=on`: chown, chmod and xattr changes copy up metadata only.
    pub metacopy: bool,
    /// True with `-o ro` and whenever no branch is writable.
    pub read_only: bool,
    /// Overlay xattrs in `user.overlay.*` instead of `trusted.overlay.*`.
    pub userxattr: bool,
    pub fsname: Option<String>,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub max_write: Option<u32>,
    pub noatime: bool,
    /// Mount flags of the FUSE mount itself, as mount(8) spells them: the
    /// kernel applies them to the mount as it does for kernel overlayfs.
    pub nodiratime: bool,
    pub strictatime: bool,
    pub lazytime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub nosymfollow: bool,
    /// FUSE over io_uring: `io_uring` requires it, `noio_uring` refuses
    /// it; by default it is used when the kernel offers it.
    pub io_uring: Option<bool>,
    /// Read-only opens of lower files pass through to them (kernel speed);
    /// such a descriptor keeps reading the lower file after a copy-up.
    pub lower_passthrough: bool,
    /// Unknown options ignored, as fuse-overlayfs ignores them (one warning).
    pub ignored_options: Vec<String>,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// FUSE `allow_root`: root may use the mount besides the mounting user.
    pub allow_root: bool,
    /// FUSE `auto_unmount`: the kernel side unmounts if the daemon dies.
    pub auto_unmount: bool,
    /// FUSE `subtype=`: shown as `fuse.SUBTYPE` in the mount table.
    pub subtype: Option<String>,
    /// fuse-overlayfs `timeout=SECONDS`: entry and attribute cache lifetime.
    pub timeout: Option<Duration>,
    /// fuse-overlayfs `xattr_permissions=0|1|2` (0 = off, 1 = privileged, 2 = user
    /// namespace); stored, meaning left to the filesystem.
    pub xattr_permissions: u8,
}

// ---------------------------------------------------------------------------
// Shared by the parts: one-line messages and byte paths.

/// Longest error message, in characters: a huge option value is cut short.
const MAX_ERROR: usize = 2000;

/// An error fit for one line of stderr: the values and paths it quotes come
/// from the user and may hold newlines or escape sequences, which are shown
/// escaped; a huge value is cut.
fn one_line(msg: String) -> String {
    if !msg.chars().any(char::is_control) && msg.chars().count() <= MAX_ERROR {
        return msg;
    }
    let mut out = String::with_capacity(msg.len().min(MAX_ERROR));
    let mut n = 0;
    for c in msg.chars() {
        let shown: Vec<char> = if c.is_control() {
            c.escape_default().collect()
        } else {
            vec![c]
        };
        if n + shown.len() > MAX_ERROR {
            out.push('…');
            break;
        }
        n += shown.len();
        out.extend(shown);
    }
    out
}

fn os_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// `io::Error` text without the " (os error N)" tail, for one-line messages.
fn error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
