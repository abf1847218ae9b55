//! `overlay.nlink`: the link count the mount shows for a hard-linked upper
//! file, as an offset against the upper file's count ("U+1") or against its
//! lower origin's ("L-1"), as the kernel writes it.

/// A parsed `overlay.nlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nlink {
    /// Offset against the upper file's link count.
    Upper(i64),
    /// Offset against the lower origin's link count.
    Lower(i64),
}

impl Nlink {
    /// "U+1" / "L-2" as the kernel writes them.
    pub fn parse(v: &[u8]) -> Option<Nlink> {
        let s = std::str::from_utf8(v).ok()?;
        let (base, num) = s.split_at_checked(1)?;
        if !num.starts_with(['+', '-']) {
            return None;
        }
        let d = num.parse().ok()?;
        match base {
            "U" => Some(Nlink::Upper(d)),
            "L" => Some(Nlink::Lower(d)),
            _ => None,
        }
    }

    /// The value to store.
    pub fn format(self) -> String {
        match self {
            Nlink::Upper(d) => format!("U{d:+}"),
            Nlink::Lower(d) => format!("L{d:+}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Nlink;

    #[test]
    fn nlink_offsets_parse_as_the_kernel_writes_them() {
        assert_eq!(Nlink::parse(b"U+1"), Some(Nlink::Upper(1)));
        assert_eq!(Nlink::parse(b"U-2"), Some(Nlink::Upper(-2)));
        assert_eq!(Nlink::parse(b"U+0"), Some(Nlink::Upper(0)));
        assert_eq!(Nlink::parse(b"L+1"), Some(Nlink::Lower(1)));
        assert_eq!(Nlink::parse(b"L-3"), Some(Nlink::Lower(-3)));
        assert_eq!(Nlink::parse(b"U1"), None);
        assert_eq!(Nlink::parse(b"X+1"), None);
        assert_eq!(Nlink::parse(b"garbage"), None);
        assert_eq!(Nlink::parse(b""), None);
        assert_eq!(Nlink::parse(b"U+"), None);
        assert_eq!(Nlink::parse(b"\xff+1"), None);
    }

    #[test]
    fn nlink_offsets_format_with_a_sign() {
        assert_eq!(Nlink::Upper(1).format(), "U+1");
        assert_eq!(Nlink::Upper(0).format(), "U+0");
        assert_eq!(Nlink::Upper(-2).format(), "U-2");
        assert_eq!(Nlink::Lower(3).format(), "L+3");
        assert_eq!(Nlink::Lower(-1).format(), "L-1");
        for n in [Nlink::Upper(-7), Nlink::Lower(12)] {
            assert_eq!(Nlink::parse(n.format().as_bytes()), Some(n));
        }
    }
}
