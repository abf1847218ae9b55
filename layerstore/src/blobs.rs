//! Write-once, verify-on-read blob storage under `blobs/sha256/<hex>`.
//!
//! A blob is written into `tmp/`, hashed on the way, fsynced and renamed into
//! place: a blob file that exists is always complete. Reads that matter
//! (manifests, configs, fsck) re-hash what they read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};
use crate::util::{create_unique, sync_dir};
use crate::{Context, Error, Result};

/// Largest JSON document (manifest, config, index) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// A `blobs/sha256` directory.
#[derive(Clone, Debug)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Blobs under `root/blobs/sha256`; the directory must exist.
    pub fn new(root: &Path) -> Blobs {
        Blobs {
            dir: root.join("blobs").join("sha256"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn open(&self, d: &Digest) -> Result<File> {
        let p = self.path(d);
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::not_found(format!("blob {d}")),
            _ => Error::Io {
                what: format!("blob {d}"),
                error: e,
            },
        })
    }

    /// Read a whole (small) blob and check its digest.
    pub fn read_verified(&self, d: &Digest) -> Result<Vec<u8>> {
        let f = self.open(d)?;
        read_limited(f, MAX_JSON, &format!("blob {d}"), d)
    }

    /// Re-hash a stored blob.
    pub fn verify(&self, d: &Digest) -> Result<u64> {
        let mut f = self.open(d)?;
        let (actual, len) = hash_stream(&mut f).ctx(|| format!("blob {d}"))?;
        if &actual != d {
            return Err(Error::DigestMismatch {
                what: format!("blob {d}"),
                expected: d.clone(),
                actual,
            });
        }
        Ok(len)
    }

    /// Store bytes, returning their digest.
    pub fn put_bytes(&self, tmp: &Path, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of_bytes(bytes);
        if !self.contains(&d) {
            let staged = stage(tmp, &mut &bytes[..], Some(&d), "blob")?;
            self.adopt(&staged, &d)?;
        }
        Ok(d)
    }

    /// Move a verified staged file into place as blob `d`.
    pub fn adopt(&self, staged: &Path, d: &Digest) -> Result<()> {
        let dest = self.path(d);
        fs::rename(staged, &dest).ctx(|| format!("blob {d}"))?;
        sync_dir(&self.dir)
    }

    /// Every blob file name that is a valid digest.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            if let Some(name) = e.file_name().to_str()
                && let Ok(d) = Digest::from_hex(name)
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn remove(&self, d: &Digest) -> Result<()> {
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx(|| format!("blob {d}")),
            _ => Ok(()),
        }
    }
}

/// Hash a whole stream.
pub fn hash_stream(r: &mut impl Read) -> io::Result<(Digest, u64)> {
    let mut w = HashingWriter::new(io::sink());
    io::copy(r, &mut w)?;
    let (d, n, _) = w.finish();
    Ok((d, n))
}

/// Read at most `limit` bytes and check they hash to `d`.
pub fn read_limited(r: impl Read, limit: u64, what: &str, d: &Digest) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut buf)
        .ctx(|| what.to_string())?;
    if buf.len() as u64 > limit {
        return Err(Error::invalid(what, format!("larger than {limit} bytes")));
    }
    let actual = Digest::of_bytes(&buf);
    if &actual != d {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: d.clone(),
            actual,
        });
    }
    Ok(buf)
}

/// Copy a stream into a new fsynced file in `tmp`, checking its digest when
/// one is expected. Returns the staged path; on any error nothing is left.
pub fn stage(
    tmp: &Path,
    r: &mut impl Read,
    expected: Option<&Digest>,
    what: &str,
) -> Result<PathBuf> {
    let (digest, _len, path) = stage_hashed(tmp, r, what)?;
    if let Some(exp) = expected
        && &digest != exp
    {
        let _ = fs::remove_file(&path);
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: exp.clone(),
            actual: digest,
        });
    }
    Ok(path)
}

/// Copy a stream into a new fsynced file in `tmp`; return its digest, length
/// and path.
pub fn stage_hashed(tmp: &Path, r: &mut impl Read, what: &str) -> Result<(Digest, u64, PathBuf)> {
    let (f, path) = create_unique(tmp, "blob")?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f));
    let res = io::copy(r, &mut w)
        .ctx(|| what.to_string())
        .and_then(|_| w.flush().at(&path));
    if let Err(e) = res {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    let (digest, len, bw) = w.finish();
    let synced = bw
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all());
    if let Err(e) = synced {
        let _ = fs::remove_file(&path);
        return Err(e).at(&path);
    }
    Ok((digest, len, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verify_and_detect_corruption() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
        fs::create_dir(t.path().join("tmp")).unwrap();
        let b = Blobs::new(t.path());
        let d = b.put_bytes(&t.path().join("tmp"), b"hello").unwrap();
        assert_eq!(b.read_verified(&d).unwrap(), b"hello");
        assert_eq!(b.list().unwrap(), vec![d.clone()]);
        fs::write(b.path(&d), b"hellO").unwrap();
        assert!(matches!(b.verify(&d), Err(Error::DigestMismatch { .. })));
        assert!(b.read_verified(&d).is_err());
        let other = Digest::of_bytes(b"x");
        let err = stage(
            &t.path().join("tmp"),
            &mut &b"y"[..],
            Some(&other),
            "blob x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }
}
