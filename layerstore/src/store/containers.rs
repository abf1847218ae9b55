//! The containers' part of the store's layout. `containers/<id>/` belongs to
//! the program that runs containers (its record, upper, workdir…); the store
//! reads one file of it, `image`: the manifest digest the container was made
//! from, which keeps that image from `prune` even once untagged.
//!
//! The functions taking a directory serve containers that are made elsewhere
//! (say under `tmp/`) and renamed into `containers/` once complete.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Store;

/// The directory holding every container, under the store's root.
pub fn containers_dir(root: &Path) -> PathBuf {
    root.join("containers")
}

/// A container's directory, under the store's root.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    containers_dir(root).join(id)
}

/// The file of a container's directory that names its image.
fn image_file(dir: &Path) -> PathBuf {
    dir.join("image")
}

/// Record in the container directory `dir` the manifest digest it was made from.
pub fn write_image_record(dir: &Path, manifest: &str) -> io::Result<()> {
    fs::write(image_file(dir), format!("{manifest}\n"))
}

/// The manifest digest recorded in the container directory `dir`.
pub fn read_image_record(dir: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(image_file(dir))?.trim().to_string())
}

impl Store {
    /// The directory holding every container.
    pub fn containers_dir(&self) -> PathBuf {
        containers_dir(self.root())
    }

    /// The directory of the container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        container_dir(self.root(), id)
    }

    /// Record the manifest digest the container `id` was made from.
    pub fn record_container_image(&self, id: &str, manifest: &str) -> io::Result<()> {
        write_image_record(&self.container_dir(id), manifest)
    }

    /// The manifest digest the container `id` was made from.
    pub fn container_image(&self, id: &str) -> io::Result<String> {
        read_image_record(&self.container_dir(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_record_keeps_its_place_and_format() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let dir = store.container_dir("abc");
        assert_eq!(dir, tmp.path().join("containers").join("abc"));
        fs::create_dir_all(&dir).unwrap();
        store.record_container_image("abc", "sha256:00ff").unwrap();
        // The layout of every version: `containers/<id>/image`, one line.
        assert_eq!(
            fs::read_to_string(tmp.path().join("containers/abc/image")).unwrap(),
            "sha256:00ff\n"
        );
        assert_eq!(store.container_image("abc").unwrap(), "sha256:00ff");
        assert_eq!(read_image_record(&dir).unwrap(), "sha256:00ff");
        assert!(store.container_image("none").is_err());
    }
}
