//! Content-addressed, OCI-compatible layer store (see DESIGN.md).
//!
//! Modules are split by kind of operation: [`digest`] (content addresses and
//! hashing streams), [`blobs`] (write-once, verify-on-read blob files),
//! [`unpack`] (layer tar → overlay layer tree, confined), [`diff`] (upper tree →
//! layer tar), [`image`] (OCI / Docker formats in and out) and [`store`] (the
//! facade: locking, tags, transactions, garbage collection, fsck).
//!
//! ```text
//! STORE/
//!   oci-layout, index.json     an OCI image layout: tags are ref.name annotations
//!   blobs/sha256/<hex>         manifests, configs, layer blobs (as received)
//!   layers/<diffid-hex>/       unpacked layers, kernel overlayfs format
//!                              (rootless: OCI .wh. names + user.containers.override_stat)
//!   containers/<id>/image      a container's manifest digest keeps its image from prune
//!   tmp/                       staging; cleaned by the first command that has the store alone
//!   lock, locks/               flock files (see `store`)
//! ```
//!
//! Everything enters through `tmp/` and a rename, blobs first, then layers,
//! then `index.json`: after a crash at any point, what is visible is whole,
//! and what is unreferenced goes with `prune`.

pub mod blobs;
mod check;
pub mod diff;
pub mod digest;
pub mod image;
pub mod progress;
pub mod store;
pub mod unpack;
mod util;

pub use digest::Digest;
/// Re-exported so the binary prints JSON with the same version.
pub use serde_json;
pub use store::Store;

/// Everything the store can fail with. Each message is one line that names the
/// object concerned and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a named object failed.
    /// (The I/O error is part of the message, not a separate source, so a
    /// report prints it once.)
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// Content does not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, content is {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A string is not a valid digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },
    /// A layer tar entry that would escape the layer or is malformed.
    #[error("layer entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    /// Input that is well-formed at the byte level but not acceptable.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A named object does not exist.
    #[error("{what}: not found")]
    NotFound { what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub(crate) fn entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::UnsafeEntry {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// Attach a description of the object to an I/O error.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T, E: Into<std::io::Error>> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            what: what(),
            error: e.into(),
        })
    }
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.ctx(|| path.display().to_string())
    }
}
