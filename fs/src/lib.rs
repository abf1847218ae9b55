//! Union filesystem semantics in kernel overlayfs format, and their FUSE adapter.
