//! The attribute log: what the entries of a directory on a branch with
//! other rules (exFAT, FAT) cannot hold themselves, kept in a file of that
//! directory (docs/branches.md).
//!
//! ```text
//! unionmount-attrs 1
//! set <stored name> <field>=<value> … #<CRC-32 of the line before " #">
//! del <stored name> #<crc>
//! ```
//!
//! Names and values are percent-encoded (every byte outside `!`..`~`, and
//! `%`, `#`, `=`), so a line is printable ASCII. Each change is one appended
//! line; the last `set` of a name wins and `del` forgets it. A line that is
//! cut short or fails its checksum (a crash in the middle of a write) ends
//! the log.

use std::collections::BTreeMap;

/// The log's name in each directory (`.wh..wh.` names are metadata to
/// every reader of OCI layers, never shown).
pub const FILE_NAME: &str = ".wh..wh.attrs";

/// The format this module writes; a log of a newer one is not touched.
pub const VERSION: u32 = 1;

const MAGIC: &str = "unionmount-attrs";

/// The kind of object a record describes (the branch holds them all as
/// regular files or directories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    fn letter(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::Char => b'c',
            Kind::Block => b'b',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
        }
    }

    fn from_letter(b: &[u8]) -> Option<Kind> {
        Some(match b {
            b"f" => Kind::File,
            b"d" => Kind::Dir,
            b"l" => Kind::Symlink,
            b"c" => Kind::Char,
            b"b" => Kind::Block,
            b"p" => Kind::Fifo,
            b"s" => Kind::Socket,
            _ => return None,
        })
    }
}

/// A time as stat gives it: seconds and nanoseconds.
pub type Time = (i64, u32);

/// What one entry of the directory cannot hold itself. Fields a newer
/// writer added are kept in `other` and written back unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    pub kind: Option<Kind>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits, setuid, setgid and sticky included.
    pub mode: Option<u32>,
    /// A device's (major, minor).
    pub rdev: Option<(u32, u32)>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    pub mtime: Option<Time>,
    pub atime: Option<Time>,
    pub ctime: Option<Time>,
    /// The merged name behind a hashed stored name.
    pub name: Option<Vec<u8>>,
    /// Extended attributes, by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The hard-link group this name belongs to, on a branch without links.
    pub link: Option<u64>,
    /// The overlay markers: `overlay.redirect`, `overlay.origin`,
    /// `overlay.metacopy`, `overlay.impure`, `overlay.nlink` as values.
    pub redirect: Option<Vec<u8>>,
    pub origin: Option<Vec<u8>>,
    pub metacopy: bool,
    pub impure: bool,
    pub nlink: Option<Vec<u8>>,
    pub other: BTreeMap<String, Vec<u8>>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Set(Vec<u8>, Box<Attrs>),
    Del(Vec<u8>),
}

/// A log as read: the live records by stored name, and what the reading
/// found about the file itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Log {
    pub records: BTreeMap<Vec<u8>, Attrs>,
    /// Lines read, header excluded.
    pub lines: usize,
    /// The log ended in a cut or damaged line (a crash mid-write): what
    /// followed it is ignored, and the next change rewrites the file.
    pub torn: bool,
}

impl Log {
    /// Whether the file should be rewritten whole: twice as many lines as
    /// live records, or a torn end an append must not follow.
    pub fn needs_rewrite(&self) -> bool {
        self.torn || self.lines > 2 * self.records.len().max(8)
    }

    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Set(name, attrs) => self.records.insert(name, *attrs),
            Entry::Del(name) => self.records.remove(&name),
        };
    }
}

/// Why a log cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum BadLog {
    /// The first line is not a log header.
    NotALog,
    /// Written by a newer format; not to be read or changed by this one.
    Newer(u32),
    /// A line with a good checksum that this format cannot read.
    Malformed(usize),
}

impl std::fmt::Display for BadLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadLog::NotALog => write!(f, "not an attribute log (no \"{MAGIC}\" header)"),
            BadLog::Newer(v) => write!(f, "attribute log version {v}, newer than {VERSION}"),
            BadLog::Malformed(n) => write!(f, "attribute log line {n} cannot be read"),
        }
    }
}

/// The first line of a new log.
pub fn header() -> Vec<u8> {
    format!("{MAGIC} {VERSION}\n").into_bytes()
}

/// A whole log holding `records`: what a rewrite writes (under a
/// temporary name, then renamed over the old one).
pub fn rewrite(records: &BTreeMap<Vec<u8>, Attrs>) -> Vec<u8> {
    let mut out = header();
    for (name, attrs) in records {
        out.extend(format_entry(&Entry::Set(
            name.clone(),
            Box::new(attrs.clone()),
        )));
    }
    out
}

/// One line, newline included, to append.
pub fn format_entry(entry: &Entry) -> Vec<u8> {
    let mut line = Vec::new();
    match entry {
        Entry::Set(name, attrs) => {
            line.extend_from_slice(b"set ");
            encode(name, &mut line);
            for (key, value) in fields(attrs) {
                line.push(b' ');
                line.extend_from_slice(key.as_bytes());
                line.push(b'=');
                encode(&value, &mut line);
            }
        }
        Entry::Del(name) => {
            line.extend_from_slice(b"del ");
            encode(name, &mut line);
        }
    }
    let crc = crc32fast::hash(&line);
    line.extend_from_slice(format!(" #{crc:08x}\n").as_bytes());
    line
}

/// Read a log.
pub fn parse(bytes: &[u8]) -> Result<Log, BadLog> {
    let mut lines = bytes.split_inclusive(|b| *b == b'\n');
    let first = lines.next().ok_or(BadLog::NotALog)?;
    let version = first
        .strip_suffix(b"\n")
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| {
            h.strip_prefix(MAGIC)?
                .strip_prefix(' ')?
                .parse::<u32>()
                .ok()
        })
        .ok_or(BadLog::NotALog)?;
    if version > VERSION {
        return Err(BadLog::Newer(version));
    }
    let mut log = Log::default();
    for (n, line) in lines.enumerate() {
        let Some(body) = checked(line) else {
            log.torn = true;
            break;
        };
        log.apply(parse_entry(body).ok_or(BadLog::Malformed(n + 2))?);
        log.lines += 1;
    }
    Ok(log)
}

/// A line's content if it is whole and its checksum matches.
fn checked(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n")?;
    let at = line.len().checked_sub(10)?;
    let (body, tail) = line.split_at(at);
    let crc = std::str::from_utf8(tail.strip_prefix(b" #")?).ok()?;
    (u32::from_str_radix(crc, 16).ok()? == crc32fast::hash(body)).then_some(body)
}

fn parse_entry(body: &[u8]) -> Option<Entry> {
    let mut words = body.split(|b| *b == b' ');
    let verb = words.next()?;
    let name = decode(words.next()?)?;
    match verb {
        b"del" => words.next().is_none().then_some(Entry::Del(name)),
        b"set" => {
            let mut attrs = Attrs::default();
            for word in words {
                let eq = word.iter().position(|b| *b == b'=')?;
                let key = std::str::from_utf8(&word[..eq]).ok()?;
                set_field(&mut attrs, key, decode(&word[eq + 1..])?)?;
            }
            Some(Entry::Set(name, Box::new(attrs)))
        }
        _ => None,
    }
}

/// The fields of `attrs` that are set, as (key, raw value), in a fixed order.
fn fields(a: &Attrs) -> Vec<(String, Vec<u8>)> {
    let num = |v: Option<u32>| v.map(|v| v.to_string().into_bytes());
    let time = |t: Option<Time>| t.map(|(s, ns)| format!("{s}.{ns:09}").into_bytes());
    let flag = |on: bool| on.then(|| b"y".to_vec());
    let mut out: Vec<(String, Vec<u8>)> = [
        ("kind", a.kind.map(|k| vec![k.letter()])),
        ("uid", num(a.uid)),
        ("gid", num(a.gid)),
        ("mode", a.mode.map(|m| format!("{m:o}").into_bytes())),
        (
            "rdev",
            a.rdev.map(|(ma, mi)| format!("{ma}:{mi}").into_bytes()),
        ),
        ("target", a.target.clone()),
        ("mtime", time(a.mtime)),
        ("atime", time(a.atime)),
        ("ctime", time(a.ctime)),
        ("name", a.name.clone()),
        ("link", a.link.map(|l| l.to_string().into_bytes())),
        ("redirect", a.redirect.clone()),
        ("origin", a.origin.clone()),
        ("metacopy", flag(a.metacopy)),
        ("impure", flag(a.impure)),
        ("nlink", a.nlink.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect();
    for (name, value) in &a.xattrs {
        let mut key = b"xattr.".to_vec();
        encode(name, &mut key);
        // Encoded: printable ASCII.
        out.push((String::from_utf8_lossy(&key).into_owned(), value.clone()));
    }
    out.extend(a.other.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Set field `key` of `a` from its raw value; None if the value is not one
/// the field takes.
fn set_field(a: &mut Attrs, key: &str, v: Vec<u8>) -> Option<()> {
    let text = || std::str::from_utf8(&v).ok();
    let num = || text()?.parse::<u32>().ok();
    let time = || {
        let (s, ns) = text()?.split_once('.')?;
        Some((
            s.parse::<i64>().ok()?,
            ns.parse::<u32>().ok().filter(|n| *n < 1_000_000_000)?,
        ))
    };
    match key {
        "kind" => a.kind = Some(Kind::from_letter(&v)?),
        "uid" => a.uid = Some(num()?),
        "gid" => a.gid = Some(num()?),
        "mode" => {
            a.mode = Some(
                u32::from_str_radix(text()?, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)?,
            )
        }
        "rdev" => {
            let (ma, mi) = text()?.split_once(':')?;
            a.rdev = Some((ma.parse().ok()?, mi.parse().ok()?));
        }
        "target" => a.target = Some(v),
        "mtime" => a.mtime = Some(time()?),
        "atime" => a.atime = Some(time()?),
        "ctime" => a.ctime = Some(time()?),
        "name" => a.name = Some(v),
        "link" => a.link = Some(text()?.parse().ok()?),
        "redirect" => a.redirect = Some(v),
        "origin" => a.origin = Some(v),
        "metacopy" => a.metacopy = v == b"y",
        "impure" => a.impure = v == b"y",
        "nlink" => a.nlink = Some(v),
        _ => match key.strip_prefix("xattr.") {
            Some(name) => {
                a.xattrs.insert(decode(name.as_bytes())?, v);
            }
            None => {
                a.other.insert(key.to_string(), v);
            }
        },
    }
    Some(())
}

/// Percent-encode every byte outside `!`..`~`, and `%`, `#`, `=`.
fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if (b'!'..=b'~').contains(&b) && !b"%#=".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'%' {
            out.push(b);
            rest = tail;
            continue;
        }
        let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
        out.push(u8::from_str_radix(hex, 16).ok()?);
        rest = &tail[2..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn symlink() -> Attrs {
        Attrs {
            kind: Some(Kind::Symlink),
            uid: Some(1000),
            gid: Some(100),
            mode: Some(0o777),
            target: Some(b"../a target with spaces".to_vec()),
            mtime: Some((1_600_000_000, 123_456_789)),
            ..Attrs::default()
        }
    }

    fn log_of(entries: &[Entry]) -> Vec<u8> {
        let mut out = header();
        for e in entries {
            out.extend(format_entry(e));
        }
        out
    }

    #[test]
    fn lines_are_printable_and_read_back() {
        let mut device = Attrs {
            kind: Some(Kind::Char),
            rdev: Some((1, 3)),
            mode: Some(0o4755),
            ..Attrs::default()
        };
        device
            .xattrs
            .insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0xff]);
        device.other.insert("future".into(), b"kept".to_vec());
        let entries = [
            Entry::Set(b"a link".to_vec(), Box::new(symlink())),
            Entry::Set(b"null%3A".to_vec(), Box::new(device.clone())),
        ];
        let bytes = log_of(&entries);
        assert!(
            bytes
                .iter()
                .all(|b| *b == b'\n' || (b' '..=b'~').contains(b))
        );
        let log = parse(&bytes).unwrap();
        assert_eq!(log.records.get(&b"a link"[..]), Some(&symlink()));
        assert_eq!(log.records.get(&b"null%3A"[..]), Some(&device));
        assert!(!log.torn && !log.needs_rewrite());
    }

    #[test]
    fn the_last_set_wins_and_del_forgets() {
        let mut changed = symlink();
        changed.uid = Some(0);
        let bytes = log_of(&[
            Entry::Set(b"x".to_vec(), Box::new(symlink())),
            Entry::Set(b"y".to_vec(), Box::new(symlink())),
            Entry::Set(b"x".to_vec(), Box::new(changed.clone())),
            Entry::Del(b"y".to_vec()),
        ]);
        let log = parse(&bytes).unwrap();
        assert_eq!(log.records.len(), 1);
        assert_eq!(log.records[&b"x"[..]], changed);
        assert_eq!(log.lines, 4);
    }

    #[test]
    fn a_torn_or_damaged_line_ends_the_log() {
        let whole = log_of(&[
            Entry::Set(b"x".to_vec(), Box::new(symlink())),
            Entry::Set(b"y".to_vec(), Box::new(symlink())),
        ]);
        // Cut anywhere in the last line: the first record stays, alone.
        let second =
            whole.len() - format_entry(&Entry::Set(b"y".to_vec(), Box::new(symlink()))).len();
        for cut in second + 1..whole.len() {
            let log = parse(&whole[..cut]).unwrap();
            assert_eq!(
                log.records.keys().collect::<Vec<_>>(),
                [&b"x".to_vec()],
                "cut at {cut}"
            );
            assert!(log.torn && log.needs_rewrite());
        }
        let mut flipped = whole.clone();
        flipped[second + 6] ^= 1;
        let log = parse(&flipped).unwrap();
        assert_eq!(log.records.len(), 1);
        assert!(log.torn);
    }

    #[test]
    fn other_files_and_newer_logs_are_refused() {
        assert_eq!(parse(b""), Err(BadLog::NotALog));
        assert_eq!(parse(b"hello\n"), Err(BadLog::NotALog));
        assert_eq!(parse(b"unionmount-attrs 2\n"), Err(BadLog::Newer(2)));
        let mut bad = header();
        let line = b"fix x".to_vec();
        bad.extend(&line);
        bad.extend(format!(" #{:08x}\n", crc32fast::hash(&line)).bytes());
        assert_eq!(parse(&bad), Err(BadLog::Malformed(2)));
    }

    #[test]
    fn a_rewrite_keeps_the_live_records_only() {
        let mut log = Log::default();
        for i in 0..40u32 {
            log.apply(Entry::Set(i.to_string().into_bytes(), Box::new(symlink())));
            log.apply(Entry::Del(i.to_string().into_bytes()));
            log.lines += 2;
        }
        log.apply(Entry::Set(b"kept".to_vec(), Box::new(symlink())));
        assert!(log.needs_rewrite());
        let again = parse(&rewrite(&log.records)).unwrap();
        assert_eq!(again.records, log.records);
        assert_eq!(again.lines, 1);
    }

    fn any_attrs() -> impl Strategy<Value = Attrs> {
        (
            proptest::option::of(any::<u32>()),
            proptest::option::of(0u32..=0o7777),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of((any::<i64>(), 0u32..1_000_000_000)),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..20),
                proptest::collection::vec(any::<u8>(), 0..40),
                0..3,
            ),
            any::<bool>(),
        )
            .prop_map(|(uid, mode, target, mtime, xattrs, impure)| Attrs {
                uid,
                mode,
                target,
                mtime,
                xattrs,
                impure,
                ..Attrs::default()
            })
    }

    proptest! {
        #[test]
        fn every_record_survives_the_log(
            name in proptest::collection::vec(any::<u8>(), 1..60), attrs in any_attrs()
        ) {
            let bytes = log_of(&[Entry::Set(name.clone(), Box::new(attrs.clone()))]);
            let log = parse(&bytes).unwrap();
            prop_assert_eq!(log.records.get(&name), Some(&attrs));
        }
    }
}
