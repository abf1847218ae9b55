//! Which layer store a command works on, and opening it.
//!
//! Only commands that write an image (`image load`, `import`, `commit`,
//! `container import`) make a store where there is none: any other command
//! given a mistyped `--store` would otherwise leave a new empty store there.
//! Listings (`image ls`, `ps`) of the default store show nothing when it has
//! not been made yet, as podman's do on a fresh machine.

use std::fs;
use std::path::PathBuf;

use anyhow::bail;
use layerstore::Store;

use crate::progress::terminal_progress;

/// Where the store is: a directory given on the command line, else
/// `UNIONMOUNT_STORE`, else the default (`Store::default_root`).
#[derive(Clone, Debug, Default)]
pub struct StoreDir {
    pub path: Option<PathBuf>,
}

/// A store's directory, and whether the user named it (`--store`, or
/// `UNIONMOUNT_STORE`) rather than getting the default.
struct Located {
    root: PathBuf,
    named: bool,
}

impl StoreDir {
    fn locate(&self) -> anyhow::Result<Located> {
        let from_env = std::env::var_os("UNIONMOUNT_STORE").is_some_and(|v| !v.is_empty());
        Ok(match &self.path {
            Some(p) => Located {
                root: p.clone(),
                named: true,
            },
            None => Located {
                root: Store::default_root()?,
                named: from_env,
            },
        })
    }

    /// The store's directory; an error if there is no store there.
    fn existing_root(&self) -> anyhow::Result<PathBuf> {
        let at = self.locate()?;
        if !Store::exists(&at.root) {
            bail!("no store at {}", at.root.display());
        }
        Ok(at.root)
    }

    /// The store's directory, with symlinks resolved (records hold canonical
    /// paths); an error if there is no store there.
    pub fn canonical_root(&self) -> anyhow::Result<PathBuf> {
        let root = self.existing_root()?;
        Ok(fs::canonicalize(&root).unwrap_or(root))
    }

    /// For a listing: the store's directory, or None when it is the default
    /// store and not made yet (an empty list, and nothing made).
    pub fn listing_root(&self) -> anyhow::Result<Option<PathBuf>> {
        let at = self.locate()?;
        if !at.named && !Store::exists(&at.root) {
            return Ok(None);
        }
        self.canonical_root().map(Some)
    }

    /// Open an existing store.
    pub fn open(&self) -> anyhow::Result<Store> {
        with_progress(Store::open(&self.existing_root()?)?)
    }

    /// Open the store for a command that writes an image: made if missing.
    pub fn open_or_create(&self) -> anyhow::Result<Store> {
        with_progress(Store::open(&self.locate()?.root)?)
    }

    /// Open an existing store alone (no other command using it): waits for
    /// the others, and says so once rather than hang without a word.
    pub fn open_exclusive(&self) -> anyhow::Result<Store> {
        let root = self.existing_root()?;
        let say = || {
            eprintln!(
                "unionmount: waiting for the other commands using the store at {} to finish",
                root.display()
            )
        };
        with_progress(Store::open_exclusive_or_say(&root, say)?)
    }
}

fn with_progress(mut s: Store) -> anyhow::Result<Store> {
    s.set_progress(terminal_progress());
    Ok(s)
}
