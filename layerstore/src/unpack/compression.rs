//! The compression of a layer stream (none, gzip or zstd), told by its first
//! bytes, and a bounded reader of the plain tar.

use std::io::{self, Cursor, Read};

use crate::digest::{Digest, HashingReader};

/// Largest zstd window accepted, as a power of two: 128 MiB (zstd's own
/// default). A frame asking for more is refused, not allocated.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// The compression of a layer stream, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wrap a possibly compressed stream into a reader of the plain tar.
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = Compression::detect(&head[..n]);
    let whole = Cursor::new(head[..n].to_vec()).chain(r);
    let out: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(whole)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(ZstdErrors(d))
        }
    };
    Ok((kind, out))
}

/// A zstd reader whose errors say what was refused.
struct ZstdErrors<R>(R);

impl<R: Read> Read for ZstdErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("too much memory") || msg.contains("indowLog") {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "zstd frame needs a window larger than {} MiB (refused)",
                        (1u64 << ZSTD_WINDOW_LOG_MAX) >> 20
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("zstd: {msg}"))
            }
        })
    }
}

/// The diff id (sha256 of the uncompressed tar) of a layer stream, without
/// unpacking it.
pub fn diff_id_of(r: impl Read) -> io::Result<(Digest, u64)> {
    let (_, plain) = decompress(r)?;
    HashingReader::new(plain).finish_to_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"usta"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }
}
