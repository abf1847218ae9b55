//! Content addresses (`sha256:<64 hex>`) and streams that hash what passes through.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::Error;

/// A content digest. Only sha256 is accepted: it is what OCI images use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest {
    hex: String,
}

const PREFIX: &str = "sha256:";

impl Digest {
    /// Parse `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, Error> {
        let bad = |reason| Error::InvalidDigest {
            input: s.to_string(),
            reason,
        };
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(bad("expected ALGORITHM:HEX"));
        };
        if alg != "sha256" {
            return Err(bad("only sha256 is supported"));
        }
        Digest::from_hex(hex).map_err(|_| bad("expected 64 lowercase hex digits"))
    }

    /// Build from the 64 hex digits alone.
    pub fn from_hex(hex: &str) -> Result<Digest, Error> {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Digest {
                hex: hex.to_string(),
            })
        } else {
            Err(Error::InvalidDigest {
                input: hex.to_string(),
                reason: "expected 64 lowercase hex digits",
            })
        }
    }

    /// The digest of a byte string.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The hex part, used as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `image ls` shows them.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> Digest {
        let out = self.inner.finalize();
        let mut hex = String::with_capacity(64);
        for b in out.iter() {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 15)]));
        }
        Digest { hex }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A reader that hashes every byte read through it. It also counts the run
/// of zero bytes at the end of what it has read, so a tar reader can tell an
/// archive that ends with its end-of-archive blocks from a truncated one.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    trailing_zeros: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            trailing_zeros: 0,
        }
    }
    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }
    /// Length of the run of zero bytes that ends what was read so far.
    pub fn trailing_zeros(&self) -> u64 {
        self.trailing_zeros
    }
    /// Read the rest of the stream, then return its digest and length.
    pub fn finish_to_end(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.finish())
    }
    /// Digest and length of what was read so far.
    pub fn finish(self) -> (Digest, u64) {
        let len = self.hasher.len();
        (self.hasher.finish(), len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        self.hasher.update(got);
        match got.iter().rposition(|&b| b != 0) {
            Some(last) => self.trailing_zeros = (n - last - 1) as u64,
            None => self.trailing_zeros += n as u64,
        }
        Ok(n)
    }
}

/// A writer that hashes every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }
    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        let len = self.hasher.len();
        (self.hasher.finish(), len, self.inner)
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_empty_and_abc() {
        assert_eq!(Digest::of_bytes(b"").hex(), EMPTY);
        assert_eq!(
            Digest::of_bytes(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parses_and_rejects() {
        let d = Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d.hex(), EMPTY);
        assert_eq!(d.short(), &EMPTY[..12]);
        for bad in [
            "",
            "sha256",
            EMPTY,
            "sha512:abc",
            &format!("sha256:{}", EMPTY.to_uppercase()),
            &format!("sha256:{}", &EMPTY[1..]),
            &format!("sha256:{EMPTY}0"),
            &format!("sha256:../{}", &EMPTY[3..]),
            &format!("sha256:{}/", &EMPTY[1..]),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_round_trip() {
        let d = Digest::of_bytes(b"x");
        let s = serde_json::to_string(&d).unwrap();
        let back: Digest = serde_json::from_str(&s).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn hashing_streams_agree() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = HashingReader::new(&data[..]);
        let (d, n) = {
            io::copy(&mut r, &mut io::sink()).unwrap();
            r.finish()
        };
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Digest::of_bytes(&data));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (d2, n2, out) = w.finish();
        assert_eq!((d2, n2), (d, n));
        assert_eq!(out, data);
    }

    #[test]
    fn counts_trailing_zeros() {
        let mut data = vec![1u8; 10];
        data.extend([0u8; 1024]);
        let mut r = HashingReader::new(&data[..]);
        let mut buf = [0u8; 7];
        while r.read(&mut buf).unwrap() > 0 {}
        assert_eq!(r.trailing_zeros(), 1024);
    }
}
