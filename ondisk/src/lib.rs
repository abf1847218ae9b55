//! The on-disk formats a union branch or a container layer is written in,
//! defined once for the union filesystem and the layer store.
//!
//! Everything here parses or encodes values (bytes, names, numbers); nothing
//! opens a file or makes a system call. Reading the values from a branch is
//! the caller's business.
//!
//! - [`whiteout`]: the OCI `.wh.` names and the kernel's character-device whiteout;
//! - [`xattr`]: the overlay's xattr names in both namespaces, their values,
//!   and how a user's own overlay xattrs are escaped;
//! - [`override_stat`]: `user.containers.override_stat`, the owner, mode and
//!   type a rootless branch could not give the object itself;
//! - [`origin`]: the kernel's file-handle origin (`struct ovl_fb`) and the
//!   index name made from it;
//! - [`redirect`]: where a renamed directory's (or a metacopy file's) lower
//!   content is;
//! - [`nlink`]: the link count the mount shows, as an offset;
//! - [`escape`]: names as a branch with other rules (exFAT, FAT) stores them;
//! - [`attr_log`]: what the entries of a directory on such a branch cannot
//!   hold themselves (owner, mode, type, times, xattrs, overlay markers).

pub mod attr_log;
pub mod escape;
pub mod nlink;
pub mod origin;
pub mod override_stat;
pub mod redirect;
pub mod whiteout;
pub mod xattr;
