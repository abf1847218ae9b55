//! Tars written header by header, so they can say anything.
#![allow(dead_code)]

/// A tar written header by header, so it can say anything.
#[derive(Default)]
pub struct RawTar(Vec<u8>);

impl RawTar {
    pub fn header(&mut self, path: &[u8], kind: u8, link: &[u8], size: u64, mode: u32) {
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
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
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
