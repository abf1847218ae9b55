//! A guard in front of the tar reader: metadata entries (PAX headers, GNU
//! long names) are held in memory by the reader, so their sizes are checked
//! before it reads them.

use std::io::{self, Read};

/// Largest PAX header or GNU long name accepted. The tar reader holds these
/// in memory, so their header sizes must not be trusted.
pub const MAX_TAR_METADATA: u64 = 1 << 20;

/// Follows the tar stream block by block as it passes through and refuses a
/// metadata entry (PAX header, GNU long name or link) larger than
/// [`MAX_TAR_METADATA`] before the tar reader buffers it. Where it cannot
/// make sense of a header it lets the tar reader judge.
pub struct HeaderGuard<R> {
    inner: R,
    block: Vec<u8>,
    /// Entry bytes (padded) still to pass before the next header.
    skip: u64,
    /// Data of the current PAX header, collected to find a `size` record.
    pax: Option<Vec<u8>>,
    pax_left: u64,
    /// Size of the next entry, from a PAX header.
    next_size: Option<u64>,
    /// GNU sparse extension blocks follow; then this many bytes of data.
    sparse_ext: Option<u64>,
}

impl<R: Read> HeaderGuard<R> {
    pub fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            block: Vec::with_capacity(512),
            skip: 0,
            pax: None,
            pax_left: 0,
            next_size: None,
            sparse_ext: None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn feed(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                if let Some(p) = &mut self.pax {
                    let take = n.min(usize::try_from(self.pax_left).unwrap_or(usize::MAX));
                    p.extend_from_slice(&buf[..take]);
                    self.pax_left -= take as u64;
                    if self.pax_left == 0 {
                        self.next_size = pax_size(p);
                        self.pax = None;
                    }
                }
                self.skip -= n as u64;
                buf = &buf[n..];
                continue;
            }
            let n = (512 - self.block.len()).min(buf.len());
            self.block.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.block.len() == 512 {
                self.header()?;
                self.block.clear();
            }
        }
        Ok(())
    }

    fn header(&mut self) -> io::Result<()> {
        let h = &self.block;
        if let Some(data) = self.sparse_ext {
            if h[504] == 0 {
                self.sparse_ext = None;
                self.skip = data;
            }
            return Ok(());
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let kind = h[156];
        let Some(size) = header_size(&h[124..136]) else {
            return Ok(());
        };
        let meta = matches!(kind, b'x' | b'g' | b'L' | b'K');
        let size = if meta {
            if size > MAX_TAR_METADATA {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tar metadata entry of {size} bytes (limit {MAX_TAR_METADATA})"),
                ));
            }
            if kind == b'x' {
                self.pax = Some(Vec::new());
                self.pax_left = size;
            }
            size
        } else {
            self.next_size.take().unwrap_or(size)
        };
        let padded = size.div_ceil(512).saturating_mul(512);
        if kind == b'S' && h[482] != 0 {
            self.sparse_ext = Some(padded);
        } else {
            self.skip = padded;
        }
        if self.pax.is_some() && size == 0 {
            self.pax = None;
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n])?;
        Ok(n)
    }
}

/// A tar numeric field: octal text, or base-256 when the high bit is set.
fn header_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let t = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// The `size` record of PAX header data (`LEN key=value\n` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    data.split(|&b| b == b'\n')
        .filter_map(|rec| {
            let sp = rec.iter().position(|&b| b == b' ')?;
            rec[sp + 1..].strip_prefix(b"size=")
        })
        .filter_map(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tar_numbers_and_pax_sizes() {
        assert_eq!(header_size(b"00000001750\0"), Some(1000));
        assert_eq!(header_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(header_size(&b256), Some(261));
        assert_eq!(
            pax_size(b"20 path=a/b/c/d/e\n16 size=123456\n"),
            Some(123456)
        );
        assert_eq!(pax_size(b"13 path=abcd\n"), None);
    }

    #[test]
    fn guard_refuses_huge_metadata_and_passes_normal_tars() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        // A long name (GNU L entry) and PAX records, within limits.
        b.append_data(&mut h, "d/".repeat(80) + "f", &b"abc"[..])
            .unwrap();
        b.append_pax_extensions([("size", &b"2"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"xy"[..]).unwrap();
        let good = b.into_inner().unwrap();
        let mut g = HeaderGuard::new(&good[..]);
        io::copy(&mut g, &mut io::sink()).unwrap();
        // A PAX header claiming 1 GiB.
        let mut bad = vec![0u8; 512];
        bad[124..136].copy_from_slice(b"10000000000\0");
        bad[156] = b'x';
        bad.extend(vec![b'9'; 4096]);
        let mut g = HeaderGuard::new(&bad[..]);
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
    }
}
