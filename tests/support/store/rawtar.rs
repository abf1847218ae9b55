//! Tars written header by header, so they can say anything.
#![allow(dead_code)]

/// A tar written header by header, so it can say anything.
#[derive(Default)]
pub struct RawTar(Vec<u8>);

impl RawTar {
    pub fn header(&mut self, path: &[u8], kind: u8, link: &[u8], size: u64, mode: u32) {
        let h = Self::block(path, kind, link, size, mode);
        self.push(h);
    }

    /// A ustar header block, its checksum still to be set by [`RawTar::push`].
    pub fn block(path: &[u8], kind: u8, link: &[u8], size: u64, mode: u32) -> [u8; 512] {
        let mut h = [0u8; 512];
        let (prefix, name) = if path.len() > 100 {
            let cut = path.len() - 100;
            (&path[..cut], &path[cut..])
        } else {
            (&b""[..], path)
        };
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h
    }

    /// Append a header block after setting its checksum.
    pub fn push(&mut self, mut h: [u8; 512]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
    }

    /// Raw bytes, as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Any entry: header fields as given, then the data padded.
    pub fn entry(mut self, path: &[u8], kind: u8, link: &[u8], mode: u32, data: &[u8]) -> Self {
        self.header(path, kind, link, data.len() as u64, mode);
        self.data(data);
        self
    }

    /// A header with a header block tweaked by `f` (sizes, fields), no data.
    pub fn tweaked(mut self, path: &[u8], kind: u8, f: impl FnOnce(&mut [u8; 512])) -> Self {
        let mut h = Self::block(path, kind, b"", 0, 0o644);
        f(&mut h);
        self.push(h);
        self
    }

    /// A file whose ustar `prefix` field holds `prefix` and whose name field `name`.
    pub fn prefixed(mut self, prefix: &[u8], name: &[u8], data: &[u8]) -> Self {
        let mut h = Self::block(name, b'0', b"", data.len() as u64, 0o644);
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        self.push(h);
        self.data(data);
        self
    }

    /// A file with the given mode bits (setuid and the like).
    pub fn file_mode(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.entry(path.as_bytes(), b'0', b"", mode, data)
    }

    /// A device node (`kind` b'3' char, b'4' block, b'6' fifo) with octal
    /// device numbers given as text (so they can be anything).
    pub fn device(mut self, path: &str, kind: u8, major: &[u8], minor: &[u8], mode: u32) -> Self {
        let mut h = Self::block(path.as_bytes(), kind, b"", 0, mode);
        h[329..329 + major.len()].copy_from_slice(major);
        h[337..337 + minor.len()].copy_from_slice(minor);
        self.push(h);
        self
    }

    /// A PAX extended header with these records (raw bytes); the next entry
    /// is the one it describes.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let data = pax_records(records);
        self.header(b"PaxHeader", b'x', b"", data.len() as u64, 0o644);
        self.data(&data);
        self
    }

    /// A GNU long name (`L`) entry; the next entry takes this name.
    pub fn gnu_long_name(mut self, name: &[u8]) -> Self {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = Self::block(b"././@LongLink", b'L', b"", data.len() as u64, 0o644);
        h[257..265].copy_from_slice(b"ustar  \0");
        self.push(h);
        self.data(&data);
        self
    }

    pub fn data(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.header(path.as_bytes(), b'0', b"", data.len() as u64, 0o644);
        self.data(data);
        self
    }

    pub fn dir(mut self, path: &str) -> Self {
        self.header(path.as_bytes(), b'5', b"", 0, 0o755);
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.header(path.as_bytes(), b'2', target.as_bytes(), 0, 0o777);
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.header(path.as_bytes(), b'1', target.as_bytes(), 0, 0o644);
        self
    }

    /// A PAX header whose `path` record is raw bytes, then a file.
    pub fn pax_path_file(mut self, path: &[u8]) -> Self {
        let mut rec = b" path=".to_vec();
        rec.extend_from_slice(path);
        rec.push(b'\n');
        // The length prefix counts itself.
        let mut len = rec.len() + 2;
        if (len.to_string().len() + rec.len()) != len {
            len += 1;
        }
        let mut full = len.to_string().into_bytes();
        full.extend_from_slice(&rec);
        self.header(b"PaxHeader", b'x', b"", full.len() as u64, 0o644);
        self.data(&full);
        self.file("placeholder", b"x")
    }

    /// A file header claiming `size` bytes followed by far fewer.
    pub fn lying_size(mut self, path: &str, size: u64) -> Self {
        self.header(path.as_bytes(), b'0', b"", size, 0o644);
        self.data(b"only a few bytes");
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// PAX extended-header records ("LEN KEY=VALUE\n", LEN counting itself).
pub fn pax_records<K: AsRef<str>, V: AsRef<[u8]>>(records: &[(K, V)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let mut rec = format!(" {}=", k.as_ref()).into_bytes();
        rec.extend_from_slice(v.as_ref());
        rec.push(b'\n');
        let mut len = rec.len() + 1;
        while len.to_string().len() + rec.len() != len {
            len += 1;
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.extend_from_slice(&rec);
    }
    data
}
