//! Tree snapshots: what a mount shows, compared between two mounts; and raw
//! checksums of layer directories, to prove the lowers were never written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use super::layer::LAYER_MTIME;
use super::sys;

/// What one name in a mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' dir, 'l' symlink, 'p' fifo, 's' socket, 'c' char dev, 'b' block dev
    pub kind: char,
    /// permission bits and suid/sgid/sticky
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// None for directories (their size is the upper filesystem's business)
    pub size: Option<u64>,
    pub nlink: u64,
    /// small contents verbatim, larger ones hashed
    pub data: Option<Data>,
    pub target: Option<PathBuf>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// kept only when it is a layer's fixed old mtime (see `LAYER_MTIME`),
    /// so "copied up with its time" and "left alone" compare, fresh ones don't
    pub old_mtime: Option<i64>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Data {
    Bytes(Vec<u8>),
    Hash(u64, u64),
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Data::Hash(len, h) => write!(f, "<{len} bytes, hash {h:016x}>"),
        }
    }
}

pub fn file_data(p: &Path) -> std::io::Result<Data> {
    let bytes = std::fs::read(p)?;
    Ok(if bytes.len() <= 4096 {
        Data::Bytes(bytes)
    } else {
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        Data::Hash(bytes.len() as u64, h.finish())
    })
}

/// A whole mount: every path (relative, "" is the root) and the relations
/// that do not depend on inode numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// groups of paths that share one st_ino (only groups of two or more)
    pub links: BTreeSet<Vec<PathBuf>>,
    /// broken invariants within this mount (d_ino != st_ino, duplicates,
    /// markers shown, d_type wrong, st_dev not uniform, st_ino reused)
    pub problems: Vec<String>,
}

fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '?',
    }
}

pub fn entry_of(p: &Path, st: &libc::stat) -> Entry {
    let kind = kind_of(st.st_mode);
    let data = if kind == 'f' {
        Some(file_data(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
    } else {
        None
    };
    let target = if kind == 'l' {
        Some(std::fs::read_link(p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display())))
    } else {
        None
    };
    let rdev = if kind == 'c' || kind == 'b' {
        Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)))
    } else {
        None
    };
    let mtime = st.st_mtime;
    Entry {
        kind,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == 'd' {
            None
        } else {
            Some(st.st_size as u64)
        },
        nlink: st.st_nlink,
        data,
        target,
        rdev,
        xattrs: sys::xattrs(p).unwrap_or_else(|e| panic!("xattrs {}: {e}", p.display())),
        old_mtime: if mtime <= LAYER_MTIME {
            Some(mtime)
        } else {
            None
        },
    }
}

/// Walk a mount and record what it shows.
pub fn snapshot(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut problems = Vec::new();
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let root_st = sys::lstat(root).unwrap_or_else(|e| panic!("stat {}: {e}", root.display()));
    let dev = root_st.st_dev;
    entries.insert(PathBuf::new(), entry_of(root, &root_st));
    by_ino
        .entry(root_st.st_ino)
        .or_default()
        .push(PathBuf::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let ents =
            sys::read_dir_raw(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        let mut seen = BTreeSet::new();
        for e in ents {
            let name = e.name.to_string_lossy().into_owned();
            let relp = rel.join(&e.name);
            if !seen.insert(name.clone()) {
                problems.push(format!("{}: listed twice", relp.display()));
                continue;
            }
            // A `.wh.` name is not flagged here: the reference never interprets
            // them, so a marker the subject leaks shows up as a tree difference.
            let full = root.join(&relp);
            let st = match sys::lstat(&full) {
                Ok(st) => st,
                Err(err) => {
                    problems.push(format!("{}: listed but lstat fails: {err}", relp.display()));
                    continue;
                }
            };
            if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0 {
                problems.push(format!("{}: whiteout (char 0/0) shown", relp.display()));
            }
            if e.ino != st.st_ino {
                problems.push(format!(
                    "{}: readdir d_ino {} != stat st_ino {}",
                    relp.display(),
                    e.ino,
                    st.st_ino
                ));
            }
            if e.d_type != libc::DT_UNKNOWN && e.d_type != sys::d_type_of_mode(st.st_mode) {
                problems.push(format!(
                    "{}: d_type {} but st_mode {:o}",
                    relp.display(),
                    e.d_type,
                    st.st_mode
                ));
            }
            if st.st_dev != dev {
                problems.push(format!(
                    "{}: st_dev {:#x} differs from the root's {:#x}",
                    relp.display(),
                    st.st_dev,
                    dev
                ));
            }
            by_ino.entry(st.st_ino).or_default().push(relp.clone());
            entries.insert(relp.clone(), entry_of(&full, &st));
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                stack.push(relp);
            }
        }
    }
    let mut links = BTreeSet::new();
    for (ino, mut paths) in by_ino {
        if paths.len() > 1 {
            paths.sort();
            if paths
                .iter()
                .any(|p| entries.get(p).is_some_and(|e| e.kind == 'd'))
            {
                problems.push(format!(
                    "st_ino {ino} shared by {paths:?} (one is a directory)"
                ));
            }
            links.insert(paths);
        }
    }
    Tree {
        entries,
        links,
        problems,
    }
}

/// A readable list of differences, empty when the trees agree.
pub fn diff_trees(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&PathBuf> = a.entries.keys().chain(b.entries.keys()).collect();
    for k in keys {
        match (a.entries.get(k), b.entries.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let _ = writeln!(out, "/{}:", k.display());
                let _ = writeln!(out, "    {a_name}: {x:?}");
                let _ = writeln!(out, "    {b_name}: {y:?}");
            }
            (Some(x), None) => {
                let _ = writeln!(out, "/{}: only in {a_name}: {x:?}", k.display());
            }
            (None, Some(y)) => {
                let _ = writeln!(out, "/{}: only in {b_name}: {y:?}", k.display());
            }
            (None, None) => unreachable!(),
        }
    }
    if a.links != b.links {
        let _ = writeln!(
            out,
            "hard-link groups differ:\n    {a_name}: {:?}\n    {b_name}: {:?}",
            a.links, b.links
        );
    }
    for p in &a.problems {
        let _ = writeln!(out, "{a_name}: {p}");
    }
    for p in &b.problems {
        let _ = writeln!(out, "{b_name}: {p}");
    }
    out
}

/// Panic with the differences when two trees disagree or either has a problem.
pub fn assert_trees_eq(what: &str, a_name: &str, a: &Tree, b_name: &str, b: &Tree) {
    let mut d = diff_trees(a_name, a, b_name, b);
    if d.contains("readdir d_ino") && what.contains("kernel overlayfs") {
        d.push_str(
            "hint: kernel overlayfs translates readdir d_ino only in upper dirs marked \
             trusted.overlay.impure=y (set on a dir when an entry with an origin or a \
             redirect is copied or moved into it)\n",
        );
    }
    assert!(d.is_empty(), "{what}: trees differ:\n{d}");
}

/// Everything about a raw directory tree that a write could change, for
/// proving lower layers were left alone: types, modes, owners, sizes, link
/// counts, inode numbers, mtimes and ctimes, contents, targets, all xattrs.
pub fn raw_checksum(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let st = sys::lstat(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let mut line = format!(
            "mode={:o} uid={} gid={} size={} nlink={} ino={} rdev={} mtime={}.{} ctime={}.{}",
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_nlink,
            st.st_ino,
            st.st_rdev,
            st.st_mtime,
            st.st_mtime_nsec,
            st.st_ctime,
            st.st_ctime_nsec
        );
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let _ = write!(line, " data={:?}", file_data(&full).unwrap());
            }
            libc::S_IFLNK => {
                let _ = write!(line, " target={:?}", std::fs::read_link(&full).unwrap());
            }
            libc::S_IFDIR => {
                for e in std::fs::read_dir(&full).unwrap() {
                    stack.push(rel.join(e.unwrap().file_name()));
                }
            }
            _ => {}
        }
        let _ = write!(line, " xattrs={:?}", sys::xattrs(&full).unwrap());
        out.insert(rel, line);
    }
    out
}

pub fn assert_raw_unchanged(
    what: &Path,
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) {
    if before == after {
        return;
    }
    let mut out = String::new();
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    for k in keys {
        let (x, y) = (before.get(k), after.get(k));
        if x != y {
            let _ = writeln!(
                out,
                "/{}:\n    before: {x:?}\n    after:  {y:?}",
                k.display()
            );
        }
    }
    panic!("lower layer {} was modified:\n{out}", what.display());
}

/// What an upper directory holds on disk, in a form two implementations can
/// be compared on: whiteouts as 'w', opaque dirs marked where a lower
/// (kernel format, `lowers`) has that path (elsewhere opaque changes nothing:
/// the kernel marks every new dir in a merged dir opaque as an optimization),
/// other overlay bookkeeping xattrs (origin, impure, redirect…) left out,
/// mtimes only when they are a layer's fixed old time.
pub fn upper_view(root: &Path, lowers: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let st = sys::lstat(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let fmt = st.st_mode & libc::S_IFMT;
        let whiteout = fmt == libc::S_IFCHR && st.st_rdev == 0;
        let kind = if whiteout { 'w' } else { kind_of(st.st_mode) };
        let mut line = format!("{kind}");
        if !whiteout {
            let _ = write!(
                line,
                " perm={:o} uid={} gid={}",
                st.st_mode & 0o7777,
                st.st_uid,
                st.st_gid
            );
        }
        if st.st_mtime <= LAYER_MTIME {
            let _ = write!(line, " mtime={}", st.st_mtime);
        }
        match fmt {
            libc::S_IFREG => {
                let _ = write!(line, " data={:?}", file_data(&full).unwrap());
            }
            libc::S_IFLNK => {
                let _ = write!(line, " target={:?}", std::fs::read_link(&full).unwrap());
            }
            libc::S_IFDIR => {
                for e in std::fs::read_dir(&full).unwrap() {
                    stack.push(rel.join(e.unwrap().file_name()));
                }
            }
            _ => {}
        }
        let xs: Vec<(String, Vec<u8>)> = sys::xattrs(&full)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| {
                let ov = n
                    .strip_prefix("trusted.overlay.")
                    .or(n.strip_prefix("user.overlay."));
                match ov {
                    Some(rest) => rest == "opaque" || rest.starts_with("overlay."),
                    None => true,
                }
            })
            .map(|(n, v)| {
                (
                    n.replace("user.overlay.opaque", "trusted.overlay.opaque"),
                    v,
                )
            })
            .filter(|(n, _)| {
                n != "trusted.overlay.opaque"
                    || lowers.iter().any(|l| sys::lstat(&l.join(&rel)).is_ok())
            })
            .collect();
        if !xs.is_empty() {
            let _ = write!(line, " xattrs={xs:?}");
        }
        out.insert(rel, line);
    }
    out
}

/// Panic with the differences between two upper views.
pub fn assert_uppers_eq(
    what: &str,
    a_name: &str,
    a: &BTreeMap<PathBuf, String>,
    b_name: &str,
    b: &BTreeMap<PathBuf, String>,
) {
    if a == b {
        return;
    }
    let mut out = String::new();
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let _ = writeln!(
                out,
                "/{}:\n    {a_name}: {x:?}\n    {b_name}: {y:?}",
                k.display()
            );
        }
    }
    panic!("{what}: upper directories differ:\n{out}");
}
