//! A layer blob in another compression, for a save, a push or a container
//! archive. Compression is the slow part of all three (a store layer is
//! zstd, registries and most tools want gzip), so both encoders use every
//! core: gzip as parallel deflate blocks joined into one gzip stream (gzp,
//! as pigz and Go's pgzip do), zstd with its own worker threads.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use gzp::ZWriter;
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};

use crate::digest::HashingWriter;
use crate::store::Store;
use crate::unpack::{self, Compression};
use crate::util::create_unique;
use crate::{Context, Digest, Result};

/// Level of gzip output: the default of gzip(1), Docker and Go's pgzip.
const GZIP_LEVEL: u32 = 6;
/// Level of zstd output: zstd's own default, as the store writes layers.
const ZSTD_LEVEL: i32 = 3;

/// The layer at `src` in `want`, as a file in the store's tmp/: its digest,
/// size and path. On error nothing is left in tmp/.
pub(crate) fn recompress(
    store: &Store,
    src: &Path,
    what: &str,
    want: Compression,
) -> Result<(Digest, u64, PathBuf)> {
    let (f, tmp) = create_unique(store.tmp(), "layer")?;
    match encode(src, f, want).ctx(|| what.to_string()) {
        Ok((d, n)) => Ok((d, n, tmp)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Decompress `src` and write it to `out` in `want`; the digest and length
/// of what was written.
fn encode(src: &Path, out: File, want: Compression) -> io::Result<(Digest, u64)> {
    let (_, mut plain) = unpack::decompress(File::open(src)?)?;
    let sink = SharedSink::new(HashingWriter::new(io::BufWriter::new(out)));
    match want {
        Compression::None => {
            io::copy(&mut plain, &mut sink.clone())?;
        }
        Compression::Gzip => {
            let mut enc: ParCompress<Gzip, SharedSink> = ParCompressBuilder::new()
                .num_threads(threads())
                .map_err(io::Error::other)?
                .compression_level(flate2::Compression::new(GZIP_LEVEL))
                .from_writer(sink.clone());
            io::copy(&mut plain, &mut enc)?;
            enc.finish().map_err(io::Error::other)?;
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(sink.clone(), ZSTD_LEVEL)?;
            enc.multithread(threads() as u32)?;
            io::copy(&mut plain, &mut enc)?;
            enc.finish()?;
        }
    }
    let mut w = sink.into_inner()?;
    w.flush()?;
    let (d, n, _) = w.finish();
    Ok((d, n))
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The hashing file writer, shared with the encoder: gzp's encoder keeps
/// its writer on a thread of its own and does not give it back.
#[derive(Clone)]
struct SharedSink(Arc<Mutex<HashingWriter<io::BufWriter<File>>>>);

impl SharedSink {
    fn new(w: HashingWriter<io::BufWriter<File>>) -> Self {
        SharedSink(Arc::new(Mutex::new(w)))
    }

    /// The writer, once every encoder that held a clone is gone.
    fn into_inner(self) -> io::Result<HashingWriter<io::BufWriter<File>>> {
        Arc::try_unwrap(self.0)
            .map_err(|_| io::Error::other("layer encoder still holds its output"))
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Several MiB of text-like bytes: more than one gzp block.
    fn sample() -> Vec<u8> {
        (0..600_000u32)
            .flat_map(|i| format!("line {i} {}\n", i.wrapping_mul(2654435761)).into_bytes())
            .collect()
    }

    fn encode_to_vec(plain: &[u8], want: Compression) -> (Vec<u8>, Digest, u64) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.zst");
        fs::write(&src, zstd::encode_all(plain, 3).unwrap()).unwrap();
        let dst = dir.path().join("dst");
        let (d, n) = encode(&src, File::create(&dst).unwrap(), want).unwrap();
        (fs::read(&dst).unwrap(), d, n)
    }

    #[test]
    fn parallel_gzip_is_one_gzip_stream_of_the_same_bytes() {
        let plain = sample();
        let (gz, d, n) = encode_to_vec(&plain, Compression::Gzip);
        assert_eq!((d, n), (Digest::of_bytes(&gz), gz.len() as u64));
        // A single-member decoder: readers that stop after the first gzip
        // member must still see every byte.
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn threaded_zstd_and_plain_round_trip() {
        let plain = sample();
        let (z, d, _) = encode_to_vec(&plain, Compression::Zstd);
        assert_eq!(d, Digest::of_bytes(&z));
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), plain);
        let (raw, _, n) = encode_to_vec(&plain, Compression::None);
        assert_eq!((raw.as_slice(), n), (plain.as_slice(), plain.len() as u64));
    }
}
