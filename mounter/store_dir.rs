//! Which layer store a command works on, and opening it.

use std::fs;
use std::path::PathBuf;

use layerstore::Store;

use crate::progress::terminal_progress;

/// Where the store is: a directory given on the command line, else
/// `UNIONMOUNT_STORE`, else the default (`Store::default_root`).
#[derive(Clone, Debug, Default)]
pub struct StoreDir {
    pub path: Option<PathBuf>,
}

impl StoreDir {
    fn root(&self) -> anyhow::Result<PathBuf> {
        match &self.path {
            Some(p) => Ok(p.clone()),
            None => Ok(Store::default_root()?),
        }
    }

    /// The store's directory, with symlinks resolved (records hold canonical paths).
    pub fn canonical_root(&self) -> anyhow::Result<PathBuf> {
        let root = self.root()?;
        Ok(fs::canonicalize(&root).unwrap_or(root))
    }

    pub fn open(&self) -> anyhow::Result<Store> {
        let mut s = Store::open(&self.root()?)?;
        s.set_progress(terminal_progress());
        Ok(s)
    }

    pub fn open_exclusive(&self) -> anyhow::Result<Store> {
        let mut s = Store::open_exclusive(&self.root()?)?;
        s.set_progress(terminal_progress());
        Ok(s)
    }
}
