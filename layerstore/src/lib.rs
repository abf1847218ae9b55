//! Content-addressed, OCI-compatible layer store (see docs/design.md).
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
pub mod container_archive;
pub mod diff;
pub mod digest;
pub mod image;
pub mod progress;
pub mod store;
pub mod tee;
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
    #[error("{}: {}", one_line(.what), one_line(&.error.to_string()))]
    Io { what: String, error: std::io::Error },
    /// Content does not hash to the digest that names it.
    #[error("{}: digest mismatch: expected {expected}, content is {actual}", one_line(.what))]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// A string is not a valid digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },
    /// A layer tar entry that would escape the layer or is malformed.
    #[error("layer entry {}: {}", one_line(&format!("{:?}", .entry)), one_line(.reason))]
    UnsafeEntry { entry: String, reason: String },
    /// Input that is well-formed at the byte level but not acceptable.
    #[error("{}: {}", one_line(.what), one_line(.reason))]
    Invalid { what: String, reason: String },
    /// A named object does not exist.
    #[error("{}: not found", one_line(.what))]
    NotFound { what: String },
}

/// Text fit for one line of an error message: control characters (a tar
/// header's garbage, a newline in a name) escaped, and at most a couple of thousand
/// characters.
pub(crate) fn one_line(s: &str) -> String {
    const MAX: usize = 2000;
    let mut out = String::with_capacity(s.len().min(MAX));
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_on_one_line() {
        let e = Error::invalid("x.tar", "bad\nfield \u{1b}[2J\0 here");
        assert_eq!(e.to_string(), "x.tar: bad\\nfield \\u{1b}[2J\\u{0} here");
        let long = Error::invalid("y", "z".repeat(5000)).to_string();
        assert!(long.chars().count() < 2020 && long.ends_with('…'), "{long}");
        let io = Error::Io {
            what: "a\nb".into(),
            error: std::io::Error::other("c\rd"),
        };
        assert_eq!(io.to_string(), "a\\nb: c\\rd");
    }
}
