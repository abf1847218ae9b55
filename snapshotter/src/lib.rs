//! A containerd snapshotter: containerd's Snapshots service (a proxy
//! plugin on a unix socket), with snapshots kept under the unionmount
//! store's `snapshots/` directory.
//!
//! - `meta`: the snapshot records, one file changed atomically;
//! - `snapshots`: the operations (prepare, view, commit, remove, ...) on
//!   records and directories;
//! - `mounts`: what containerd is told to mount for a snapshot;
//! - `filter`: containerd's filter expressions, for Walk;
//! - `share`: snapshots that stand on the store's own layer trees;
//! - `service`: the gRPC trait, errors as the codes containerd acts on;
//! - `serve`: the socket and a graceful stop.

mod error;
mod filter;
mod meta;
mod mounts;
mod serve;
mod service;
mod share;
mod snapshots;
mod usage;

pub use error::Error;
pub use meta::Kind;
pub use serve::serve;
pub use snapshots::Snapshots;

/// The generated client, for tests and tools that talk to the service.
pub use containerd_snapshots::{api, tonic};
