//! Names as a branch with other rules stores them (docs/branches.md):
//! what the branch cannot hold is written `%XX`, reversibly, and a name
//! too long for it is replaced by a hash whose merged name its attribute
//! record keeps.

use sha2::{Digest, Sha256};

/// What a branch's filesystem takes in a name (from the mount's probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Bytes it refuses.
    pub refused: Vec<u8>,
    /// `A` and `a` are two names.
    pub case_sensitive: bool,
    /// A trailing `.` or space is kept as given.
    pub trailing_dots: bool,
    /// The longest name it takes, in bytes.
    pub name_max: usize,
}

/// The escape character; always escaped itself.
const ESCAPE: u8 = b'%';

/// What a hashed name starts with: never produced by escaping, which
/// follows every `%` with two hex digits.
const HASHED: &[u8] = b"%%";

/// Hex digits of the SHA-256 a hashed name keeps.
const HASH_DIGITS: usize = 40;

/// The longest hashed name.
pub const HASHED_LEN: usize = HASHED.len() + HASH_DIGITS;

/// A merged name as the branch stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Escaped; `from_stored` gives the merged name back.
    Name(Vec<u8>),
    /// Too long once escaped: `%%` and a hash; the attribute record holds
    /// the merged name.
    Hashed(Vec<u8>),
}

impl Stored {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Stored::Name(b) | Stored::Hashed(b) => b,
        }
    }
}

impl Rules {
    /// Whether names can be escaped for the branch at all: it must take the
    /// escape's own bytes, `%` and the hex digits (every filesystem met
    /// does), and names as long as a hashed one.
    pub fn can_escape(&self) -> bool {
        self.name_max >= HASHED_LEN && !self.refused.iter().any(|b| is_escape_byte(*b))
    }

    /// Whether byte `b` at `pos` of a `len`-byte name must be escaped.
    fn must_escape(&self, name: &[u8], pos: usize) -> bool {
        let b = name[pos];
        b == ESCAPE
            || self.refused.contains(&b)
            || (!self.case_sensitive && (b.is_ascii_uppercase() || b >= 0x80))
            || (!self.trailing_dots && pos + 1 == name.len() && (b == b'.' || b == b' '))
            || (pos == 0 && name.starts_with(crate::whiteout::PREFIX))
    }
}

/// The name `name` (a merged name: no `/`, no NUL) is stored under, on a
/// branch whose rules `can_escape`.
pub fn to_stored(name: &[u8], rules: &Rules) -> Stored {
    let mut out = Vec::with_capacity(name.len());
    for pos in 0..name.len() {
        if rules.must_escape(name, pos) {
            out.extend_from_slice(&escaped(name[pos]));
        } else {
            out.push(name[pos]);
        }
    }
    if out.len() <= rules.name_max {
        return Stored::Name(out);
    }
    let digest = Sha256::digest(name);
    let mut hashed = HASHED.to_vec();
    hashed.extend(hex(&digest).bytes().take(HASH_DIGITS));
    Stored::Hashed(hashed)
}

/// Is `stored` a hashed name (its merged name is in the attribute record)?
pub fn is_hashed(stored: &[u8]) -> bool {
    stored.starts_with(HASHED)
}

/// A stored name this module did not write: a stray `%`, lowercase hex,
/// an escape that decodes to `/` or NUL.
#[derive(Debug, PartialEq, Eq)]
pub struct Foreign;

/// The merged name behind an escaped stored name; None for a hashed one.
pub fn from_stored(stored: &[u8]) -> Result<Option<Vec<u8>>, Foreign> {
    if is_hashed(stored) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(stored.len());
    let mut rest = stored;
    while let Some((&b, tail)) = rest.split_first() {
        if b != ESCAPE {
            out.push(b);
            rest = tail;
            continue;
        }
        let [hi, lo, ..] = tail else {
            return Err(Foreign);
        };
        let byte = (digit(*hi)? << 4) | digit(*lo)?;
        if byte == b'/' || byte == 0 {
            return Err(Foreign);
        }
        out.push(byte);
        rest = &tail[2..];
    }
    Ok(Some(out))
}

/// The bytes escapes and hashed names are written with.
fn is_escape_byte(b: u8) -> bool {
    b == ESCAPE || b.is_ascii_hexdigit()
}

fn escaped(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [ESCAPE, HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// An uppercase hex digit's value: lowercase ones are never written, so
/// that escapes survive a case-insensitive branch unchanged.
fn digit(b: u8) -> Result<u8, Foreign> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(Foreign),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// exFAT's rules, as the probe finds them.
    fn exfat() -> Rules {
        let mut refused: Vec<u8> = (1u8..0x20).collect();
        refused.extend_from_slice(b"\"*:<>?\\|");
        Rules {
            refused,
            case_sensitive: false,
            trailing_dots: true,
            name_max: 255,
        }
    }

    fn name(s: &[u8]) -> Vec<u8> {
        match to_stored(s, &exfat()) {
            Stored::Name(n) => n,
            Stored::Hashed(h) => panic!("hashed: {h:?}"),
        }
    }

    #[test]
    fn refused_bytes_case_and_the_escape_itself_are_escaped() {
        assert_eq!(name(b"readme"), b"readme");
        assert_eq!(name(b"README"), b"%52%45%41%44%4D%45");
        assert_eq!(name(b"a:b"), b"a%3Ab");
        assert_eq!(name(b"what?"), b"what%3F");
        assert_eq!(name(b"100%"), b"100%25");
        assert_eq!(name(b"caf\xc3\xa9"), b"caf%C3%A9");
        assert_eq!(name(b".wh.x"), b"%2Ewh.x");
        assert_eq!(name(b"tab\there"), b"tab%09here");
    }

    #[test]
    fn trailing_dots_are_escaped_only_where_the_branch_drops_them() {
        let mut rules = exfat();
        assert_eq!(to_stored(b"end.", &rules), Stored::Name(b"end.".to_vec()));
        rules.trailing_dots = false;
        assert_eq!(to_stored(b"end.", &rules), Stored::Name(b"end%2E".to_vec()));
        assert_eq!(to_stored(b"end ", &rules), Stored::Name(b"end%20".to_vec()));
        assert_eq!(to_stored(b"a.b", &rules), Stored::Name(b"a.b".to_vec()));
    }

    #[test]
    fn a_name_too_long_once_escaped_is_hashed() {
        let long = vec![b':'; 100];
        let stored = to_stored(&long, &exfat());
        let Stored::Hashed(h) = &stored else {
            panic!("{stored:?}")
        };
        assert_eq!(h.len(), HASHED_LEN);
        assert!(is_hashed(h));
        assert_eq!(from_stored(h), Ok(None));
        // Another name, another hash.
        assert_ne!(to_stored(&[b'?'; 100], &exfat()), stored);
    }

    #[test]
    fn names_not_written_here_are_foreign() {
        for bad in [&b"50%"[..], b"%4a", b"%G0", b"%2F", b"%00"] {
            assert_eq!(from_stored(bad), Err(Foreign), "{bad:?}");
        }
    }

    fn any_rules() -> impl Strategy<Value = Rules> {
        (
            proptest::collection::vec(1u8..=255, 0..12),
            any::<bool>(),
            any::<bool>(),
            HASHED_LEN..=255usize,
        )
            .prop_map(|(refused, case_sensitive, trailing_dots, name_max)| Rules {
                refused: refused
                    .into_iter()
                    .filter(|b| *b != b'/' && !is_escape_byte(*b))
                    .collect(),
                case_sensitive,
                trailing_dots,
                name_max,
            })
    }

    fn any_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![1u8..=255, Just(b'%'), Just(b'.'), Just(b'A'), Just(b'a')],
            1..120,
        )
        .prop_map(|v| v.into_iter().filter(|b| *b != b'/').collect::<Vec<_>>())
        .prop_filter("a name", |v| !v.is_empty())
    }

    /// The stored name, folded as a case-insensitive branch compares names.
    fn folded(stored: &[u8]) -> Vec<u8> {
        stored.to_ascii_lowercase()
    }

    proptest! {
        #[test]
        fn a_stored_name_is_one_the_branch_takes_and_gives_the_name_back(
            name in any_name(), rules in any_rules()
        ) {
            let stored = to_stored(&name, &rules);
            let bytes = stored.bytes();
            prop_assert!(bytes.len() <= rules.name_max);
            prop_assert!(bytes.iter().all(|b| !rules.refused.contains(b)));
            prop_assert!(!bytes.starts_with(crate::whiteout::PREFIX));
            if !rules.trailing_dots {
                prop_assert!(!bytes.ends_with(b".") && !bytes.ends_with(b" "));
            }
            match &stored {
                Stored::Name(n) => prop_assert_eq!(from_stored(n), Ok(Some(name.clone()))),
                Stored::Hashed(h) => prop_assert_eq!(from_stored(h), Ok(None)),
            }
        }

        #[test]
        fn names_differing_only_in_case_are_stored_apart_where_case_folds(
            name in any_name(), flips in proptest::collection::vec(any::<bool>(), 120)
        ) {
            let rules = Rules { case_sensitive: false, ..exfat() };
            let other: Vec<u8> = name
                .iter()
                .zip(&flips)
                .map(|(b, flip)| if *flip && b.is_ascii_alphabetic() { *b ^ 0x20 } else { *b })
                .collect();
            let (a, b) = (to_stored(&name, &rules), to_stored(&other, &rules));
            prop_assert_eq!(folded(a.bytes()) == folded(b.bytes()), name == other);
        }
    }
}
