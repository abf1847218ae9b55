//! One pass over a layer stream that both stores it as a blob and feeds a
//! consumer (the unpacker).
//!
//! Importing a layer used to copy the stream into a blob file and then read
//! that file back to unpack it: twice the reads and two hashes in a row. Here
//! a copier thread reads the source, hashes it and writes the blob while the
//! calling thread consumes the same chunks, so on two cores the blob costs
//! about nothing over the unpack itself.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::digest::{Digest, Hasher};
use crate::util::create_unique;
use crate::{Context, Result};

/// Bytes per chunk handed from the copier to the consumer.
const CHUNK: usize = 1 << 20;
/// Chunks in flight: bounds the memory of the pipeline to a few MiB.
const IN_FLIGHT: usize = 4;

/// A blob staged by `stage_teed`.
#[derive(Debug)]
pub struct Teed<T> {
    pub digest: Digest,
    pub len: u64,
    pub path: PathBuf,
    /// What the consumer returned.
    pub consumed: T,
}

/// Copy `src` into a new file in `tmp` while `consume` reads the same bytes
/// on the calling thread. The consumer must read to the end for the blob to
/// be complete. The file is not fsynced: the caller makes it durable (the
/// unpacker's syncfs covers it, as `tmp` is on the store's filesystem). On
/// any error nothing is left in `tmp`.
pub fn stage_teed<T>(
    tmp: &Path,
    src: &mut (impl Read + Send),
    what: &str,
    consume: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<Teed<T>> {
    let (file, path) = create_unique(tmp, "blob")?;
    let (tx, rx) = sync_channel(IN_FLIGHT);
    let (copied, consumed) = std::thread::scope(|s| {
        let copier = s.spawn(|| copy_and_hash(src, file, tx));
        let consumed = consume(&mut ChunkReader::new(rx));
        // The reader is gone (dropped inside consume or here), so a copier
        // still blocked on a full channel stops now.
        (copier.join(), consumed)
    });
    let outcome = match copied {
        Ok(Ok(hashed)) => consumed.map(|c| (hashed, c)),
        // The source's own error explains a consumer's early end best.
        Ok(Err(CopyError::Source(e))) => Err(e).ctx(|| what.to_string()),
        Ok(Err(CopyError::Blob(e))) => Err(e).at(&path),
        // Consumer stopped first (its error says why), or hung up early.
        Ok(Err(CopyError::Abandoned)) => match consumed {
            Err(e) => Err(e),
            Ok(_) => {
                Err(io::Error::other("stopped reading before the end")).ctx(|| what.to_string())
            }
        },
        Err(panic) => std::panic::resume_unwind(panic),
    };
    match outcome {
        Ok(((digest, len), consumed)) => Ok(Teed {
            digest,
            len,
            path,
            consumed,
        }),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

enum CopyError {
    Source(io::Error),
    Blob(io::Error),
    Abandoned,
}

/// The copier: source → (hash, blob file, channel), chunk by chunk. A source
/// error also goes down the channel so the consumer does not mistake it for
/// the end of the stream.
fn copy_and_hash(
    src: &mut impl Read,
    mut file: fs::File,
    tx: SyncSender<io::Result<Vec<u8>>>,
) -> std::result::Result<(Digest, u64), CopyError> {
    let mut hasher = Hasher::new();
    loop {
        let chunk = match read_chunk(src) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(CopyError::Source(e));
            }
        };
        if chunk.is_empty() {
            let len = hasher.len();
            return Ok((hasher.finish(), len));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(CopyError::Blob)?;
        tx.send(Ok(chunk)).map_err(|_| CopyError::Abandoned)?;
    }
}

/// Up to `CHUNK` bytes; empty at the end of the stream.
fn read_chunk(src: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK);
    src.take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The consumer's side: the chunks as one stream.
struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: Receiver<io::Result<Vec<u8>>>) -> Self {
        ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk?;
                    self.pos = 0;
                }
                // The copier is done and has hung up: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut dyn Read) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).ctx(|| "test".to_string())?;
        Ok(v)
    }

    #[test]
    fn blob_and_consumer_see_the_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7) as u8).collect();
        let teed = stage_teed(t.path(), &mut &data[..], "data", drain).unwrap();
        assert_eq!(teed.consumed, data);
        assert_eq!(fs::read(&teed.path).unwrap(), data);
        assert_eq!(teed.digest, Digest::of_bytes(&data));
        assert_eq!(teed.len, data.len() as u64);
    }

    #[test]
    fn a_consumer_error_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let data = vec![1u8; 20 * CHUNK];
        let err = stage_teed(t.path(), &mut &data[..], "data", |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b).unwrap();
            Err::<(), _>(crate::Error::invalid("layer", "bad"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_source_error_reaches_the_consumer_and_leaves_nothing() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let t = tempfile::tempdir().unwrap();
        let err = stage_teed(t.path(), &mut Failing(CHUNK + 5), "src", drain).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
