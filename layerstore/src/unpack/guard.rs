//! A guard in front of the tar reader: metadata entries (PAX headers, GNU
//! long names, GNU sparse maps) are held in memory by the reader, so their
//! sizes are checked before it reads them.

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
    /// Sparse extension blocks of the current entry so far.
    sparse_blocks: u64,
    /// The tar reader has stopped (end of archive): nothing more to check.
    done: bool,
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
            sparse_blocks: 0,
            done: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn feed(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() && !self.done {
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

    /// One header block, read as the tar crate reads it (the guard must see
    /// the same entry boundaries, or a header it takes for data could hide a
    /// metadata bomb from it).
    fn header(&mut self) -> io::Result<()> {
        let h = &self.block;
        if let Some(data) = self.sparse_ext {
            // The tar reader keeps every region of the map (and a zero-length
            // region costs it as much as any other): bound the map like metadata.
            self.sparse_blocks += 1;
            if self.sparse_blocks * 512 > MAX_TAR_METADATA {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("GNU sparse map longer than {MAX_TAR_METADATA} bytes"),
                ));
            }
            if h[504] != 1 {
                self.sparse_ext = None;
                self.skip = data;
            }
            return Ok(());
        }
        if h.iter().all(|&b| b == 0) {
            // The tar reader stops at the first zero block; what follows is
            // only hashed.
            self.done = true;
            return Ok(());
        }
        let kind = h[156];
        // A size the tar reader cannot read ends the archive with an error there.
        let Some(size) = header_number(&h[124..136]) else {
            self.done = true;
            return Ok(());
        };
        let recognized = (&h[257..263] == b"ustar\0" && &h[263..265] == b"00")
            || (&h[257..263] == b"ustar " && &h[263..265] == b" \0");
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        // Recognized `x`, `L` and `K` entries are read whole into memory and
        // describe the next entry; anything else is an entry of its own.
        let buffered = recognized && matches!(kind, b'x' | b'L' | b'K');
        if buffered && size > MAX_TAR_METADATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tar metadata entry of {size} bytes (limit {MAX_TAR_METADATA})"),
            ));
        }
        let size = if extension {
            size
        } else {
            self.next_size.unwrap_or(size)
        };
        if !buffered {
            self.next_size = None;
        }
        if buffered && kind == b'x' {
            self.next_size = None;
            self.pax = (size > 0).then(Vec::new);
            self.pax_left = size;
        }
        let padded = size.div_ceil(512).saturating_mul(512);
        if kind == b'S' && h[482] == 1 {
            self.sparse_ext = Some(padded);
            self.sparse_blocks = 0;
        } else {
            self.skip = padded;
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

/// A tar numeric field, as the tar crate reads it: octal text up to the
/// first NUL, spaces trimmed (empty is 0 here; the tar crate refuses it);
/// or, with the high bit set, base-256 from the last 8 bytes.
pub(crate) fn header_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let (mut v, skip) = if field.len() == 8 {
            (u64::from(field[0] ^ 0x80), 1)
        } else {
            (0, field.len().saturating_sub(8))
        };
        for &b in &field[skip..] {
            v = (v << 8) | u64::from(b);
        }
        return Some(v);
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let t = std::str::from_utf8(&field[..end]).ok()?.trim();
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// The `size` of PAX header data (`LEN key=value\n` records), as the tar
/// crate finds it: the first `size` record, if every record before it is
/// well formed.
fn pax_size(data: &[u8]) -> Option<u64> {
    for rec in data.split(|&b| b == b'\n') {
        if rec.is_empty() {
            return None;
        }
        let sp = rec.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rec[..sp]).ok()?.parse().ok()?;
        if rec.len() + 1 != len {
            return None;
        }
        let kv = &rec[sp + 1..];
        let eq = kv.iter().position(|&b| b == b'=')?;
        if &kv[..eq] == b"size" {
            return std::str::from_utf8(&kv[eq + 1..]).ok()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tar_numbers_and_pax_sizes() {
        assert_eq!(header_number(b"00000001750\0"), Some(1000));
        assert_eq!(header_number(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(header_number(&b256), Some(261));
        assert_eq!(
            pax_size(b"18 path=a/b/c/d/e\n15 size=123456\n"),
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
        bad[257..265].copy_from_slice(b"ustar\x0000");
        bad.extend(vec![b'9'; 4096]);
        let mut g = HeaderGuard::new(&bad[..]);
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
        // The same size in base-256 with junk in the bytes the tar crate
        // ignores (it reads the last 8): still seen.
        bad[124..136].copy_from_slice(&[0x80, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        let mut g = HeaderGuard::new(&bad[..]);
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
        // Without a ustar or GNU magic the tar crate buffers nothing: passed on.
        bad[257..265].fill(0);
        let mut g = HeaderGuard::new(&bad[..]);
        io::copy(&mut g, &mut io::sink()).unwrap();
    }

    #[test]
    fn pax_size_is_the_first_size_record_as_the_tar_crate_reads_it() {
        assert_eq!(pax_size(b"12 size=100\n12 size=999\n"), Some(100));
        // A malformed record before it: the tar crate uses no PAX size.
        assert_eq!(pax_size(b"99 path=x\n12 size=100\n"), None);
        assert_eq!(pax_size(b"12 size=1x0\n12 size=999\n"), None);
        // Octal text up to the first NUL.
        assert_eq!(header_number(b"12\0garbage\0\0"), Some(0o12));
        assert_eq!(header_number(b" 17 \0"), Some(0o17));
        assert_eq!(header_number(b"9"), None);
    }
}
