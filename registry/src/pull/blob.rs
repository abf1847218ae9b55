//! One blob from the registry as a `Read`: resumable, verified, bounded
//! retries.
//!
//! The bytes go to `partial/<hex>` in the store as they arrive (so a later
//! pull continues where a killed one stopped) and to the reader's caller
//! (the unpacker) at the same time. A blob that `partial/` already holds in
//! part is first read back from that file, then continued with an HTTP
//! Range request; a registry that answers a Range with the whole blob has
//! the part we hold skipped. Every byte is hashed on the way: the caller
//! asks `finish` for the verdict once it has read to the end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use layerstore::Digest;
use layerstore::digest::Hasher;
use layerstore::image::Descriptor;
use oci_client::client::{BlobResponse, SizedStream};

use super::Ctx;
use super::manifest::describe;
use crate::client::error_chain;

/// Tries of one blob when the connection breaks (the first one included).
const TRIES: u32 = 4;

/// Called with the bytes of a blob received so far.
pub type Tick<'a> = &'a (dyn Fn(u64) + Sync);

pub struct BlobReader<'a> {
    ctx: &'a Ctx,
    desc: &'a Descriptor,
    path: PathBuf,
    /// Appends to `partial/<hex>`; also holds the download's lock.
    out: File,
    /// The part already on disk, read back first.
    prefix: Option<io::Take<File>>,
    stream: Option<SizedStream>,
    /// Bytes to drop from the stream (a Range the registry ignored).
    skip: u64,
    /// Bytes of the blob handed out (and on disk).
    offset: u64,
    pending: bytes::Bytes,
    hasher: Hasher,
    failures: u32,
    tick: Tick<'a>,
    /// Why a read failed (the unpacker's own error would hide it).
    err: Option<String>,
}

impl<'a> BlobReader<'a> {
    /// Open `partial/<hex>` (locked: one download of a blob at a time).
    pub fn open(ctx: &'a Ctx, desc: &'a Descriptor, tick: Tick<'a>) -> Result<Self, String> {
        let path = partial_path(&ctx.partial, &desc.digest);
        let what = |e: io::Error| format!("{}: {e}", path.display());
        let out = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(what)?;
        rustix::fs::flock(&out, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| what(e.into()))?;
        let mut have = out.metadata().map_err(what)?.len();
        if have > desc.size {
            // Not a prefix of this blob: start again.
            out.set_len(0).map_err(what)?;
            have = 0;
        }
        let prefix = File::open(&path).map_err(what)?.take(have);
        Ok(BlobReader {
            ctx,
            desc,
            path,
            out,
            prefix: Some(prefix),
            stream: None,
            skip: 0,
            offset: 0,
            pending: bytes::Bytes::new(),
            hasher: Hasher::new(),
            failures: 0,
            tick,
            err: None,
        })
    }

    /// After reading to the end: the blob is whole and hashes to its digest
    /// (then its file is returned), or it is refused and its file removed.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| self.fail(e))?;
        let what = format!("blob {}", self.desc.digest);
        let len = self.hasher.len();
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.desc.digest || len != self.desc.size {
            let _ = fs::remove_file(&self.path);
            return Err(format!(
                "{what}: digest mismatch: the registry sent {len} bytes hashing to {actual}; refused, nothing kept"
            ));
        }
        Ok(self.path.clone())
    }

    /// The error a read returned, if one did.
    pub fn take_error(&mut self) -> Option<String> {
        self.err.take()
    }

    /// A reader error as the pull reports it.
    pub fn fail(&self, e: io::Error) -> String {
        format!("blob {}: {e}", self.desc.digest)
    }

    fn next_network_chunk(&mut self) -> io::Result<bytes::Bytes> {
        loop {
            // At the size the descriptor gives we stop reading: more would
            // not be this blob (a byte too many was kept so the hash refuses it).
            if self.offset >= self.desc.size {
                return Ok(bytes::Bytes::new());
            }
            let got = match self.stream.as_mut() {
                None => match self.connect() {
                    Ok(()) => Ok(None),
                    // Retrying will not make it appear.
                    Err((false, msg)) => return Err(io::Error::other(msg)),
                    Err((true, msg)) => Err(msg),
                },
                Some(s) => match self.ctx.rt.block_on(s.next()) {
                    Some(Ok(b)) => Ok(Some(b)),
                    Some(Err(e)) => Err(error_chain(&e)),
                    None => Err(format!(
                        "connection closed after {} of {} bytes",
                        self.offset, self.desc.size
                    )),
                },
            };
            match got {
                Ok(None) => continue,
                Ok(Some(mut b)) => {
                    if self.skip > 0 {
                        let n = (self.skip as usize).min(b.len());
                        self.skip -= n as u64;
                        b = b.slice(n..);
                    }
                    if b.is_empty() {
                        continue;
                    }
                    let room = (self.desc.size - self.offset) as usize;
                    if b.len() > room {
                        // More than the descriptor says: the hash will refuse it.
                        b = b.slice(..room + 1);
                    }
                    return Ok(b);
                }
                Err(e) => self.retry(e)?,
            }
        }
    }

    /// Drop the stream; after a short wait the next read reconnects with a
    /// Range from where we are. Bounded: the last failure is the error.
    fn retry(&mut self, reason: String) -> io::Result<()> {
        self.stream = None;
        self.failures += 1;
        if self.failures >= TRIES {
            return Err(io::Error::other(format!(
                "the registry failed {TRIES} times, {} of {} bytes received (kept for the next pull): {reason}",
                self.offset, self.desc.size
            )));
        }
        std::thread::sleep(Duration::from_millis(250 << self.failures));
        Ok(())
    }

    /// Open the stream from `offset`; an error says whether to retry.
    fn connect(&mut self) -> Result<(), (bool, String)> {
        let s = &self.ctx.session;
        let layer = oci_desc(self.desc);
        let fut = async {
            if self.offset == 0 {
                s.client
                    .pull_blob_stream(&s.reference, &layer)
                    .await
                    .map(|st| (st, false))
            } else {
                s.client
                    .pull_blob_stream_partial(&s.reference, &layer, self.offset, None)
                    .await
                    .map(|r| match r {
                        BlobResponse::Partial(st) => (st, false),
                        BlobResponse::Full(st) => (st, true),
                    })
            }
        };
        match self.ctx.rt.block_on(fut) {
            Ok((st, full)) => {
                self.skip = if full { self.offset } else { 0 };
                self.stream = Some(st);
                Ok(())
            }
            Err(e) if is_not_found(&e) => Err((false, format!("not found in {}", self.ctx.repo))),
            Err(e) if is_transient(&e) => Err((true, error_chain(&e))),
            // Refused (unauthorized, denied): asking again will not help.
            Err(e) => Err((false, describe(&e))),
        }
    }
}

impl Drop for BlobReader<'_> {
    fn drop(&mut self) {
        // A download that got nothing leaves no file behind.
        if self.desc.size > 0 && self.out.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf).inspect_err(|e| {
            if self.err.is_none() {
                self.err = Some(self.fail(io::Error::new(e.kind(), e.to_string())));
            }
        })
    }
}

impl BlobReader<'_> {
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(p) = self.prefix.as_mut() {
            let n = p.read(buf)?;
            if n > 0 {
                self.hasher.update(&buf[..n]);
                self.offset += n as u64;
                (self.tick)(self.offset);
                return Ok(n);
            }
            self.prefix = None;
        }
        if self.pending.is_empty() {
            self.pending = self.next_network_chunk()?;
            if self.pending.is_empty() {
                return Ok(0);
            }
            // On disk before it is handed on: what the unpacker has seen is
            // what a resumed pull reads back.
            self.out.write_all(&self.pending)?;
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending = self.pending.slice(n..);
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        (self.tick)(self.offset);
        Ok(n)
    }
}

/// `partial/<hex>`.
pub fn partial_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join(d.hex())
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, oci_client::errors::OciErrorCode::BlobUnknown)),
        E::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// A failure another try may not meet: the connection, or the server's
/// own trouble (5xx, 429).
fn is_transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(_) | E::IoError(_) => true,
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// The descriptor in oci-client's form (digest and size are what it uses;
/// without `urls`, which it would try before the registry).
pub fn oci_desc(d: &Descriptor) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::OciDistributionError as E;

    fn server(code: u16) -> E {
        E::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn only_connection_and_server_trouble_is_retried() {
        assert!(is_transient(&E::IoError(io::Error::other("reset"))));
        assert!(is_transient(&server(503)));
        assert!(is_transient(&server(429)));
        for code in [400, 401, 403, 416] {
            assert!(!is_transient(&server(code)), "{code}");
        }
        assert!(is_not_found(&server(404)));
        assert!(!is_not_found(&server(500)));
    }
}
