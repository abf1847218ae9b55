//! The union core driven in-process, without FUSE or a mount: a `Union` over
//! temporary branches, called as the FUSE adapter calls it, and the branches
//! checked on disk afterwards. Union semantics can so be checked on a
//! developer's laptop without root or `/dev/fuse`; the few checks that need
//! root (character-device whiteouts) skip without it, and fail under CI.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, RenameFlags};
use rustix::io::Errno;
use unionfs::{Atime, BranchConfig, Caller, Config, IdMap, NewObject, Union, XattrNs};

mod attrs;
mod changes;
mod layers;
mod links_xattrs;

/// The root directory's node id (FUSE's root inode number).
const ROOT: u64 = 1;

/// The caller is this process, as when a user works in their own mount.
fn caller() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        umask: 0o022,
    }
}

/// Temporary branches: `layers[0]` is the upper, the rest lowers, top first.
struct Branches {
    _tmp: tempfile::TempDir,
    layers: Vec<PathBuf>,
    work: PathBuf,
}

impl Branches {
    fn new(lowers: usize) -> Branches {
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..=lowers)
            .map(|i| tmp.path().join(format!("layer{i}")))
            .collect();
        let work = tmp.path().join("work");
        for dir in layers.iter().chain([&work]) {
            fs::create_dir(dir).unwrap();
        }
        Branches {
            _tmp: tmp,
            layers,
            work,
        }
    }

    fn upper(&self) -> &Path {
        &self.layers[0]
    }

    fn lower(&self, n: usize) -> &Path {
        &self.layers[n + 1]
    }

    /// A copy-on-write union over these branches, overlay xattrs in `ns`.
    fn union(&self, ns: XattrNs) -> Union {
        let branches = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, path)| BranchConfig {
                path: path.clone(),
                writable: i == 0,
            })
            .collect();
        Union::new(Config {
            branches,
            workdir: Some(self.work.clone()),
            cow: true,
            xattr_ns: ns,
            uids: IdMap::default(),
            gids: IdMap::default(),
            volatile: false,
            metacopy: false,
            atime: Atime::Relative,
            nodiratime: false,
        })
        .unwrap()
    }
}

fn write(path: impl AsRef<Path>, data: &str) {
    let path = path.as_ref();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Look `path` (slash-separated, relative) up from the root, one name at a time.
fn lookup_path(u: &Union, path: &str) -> Result<u64, Errno> {
    let mut id = ROOT;
    for part in path.split('/') {
        id = u.lookup(id, name(part))?.0.id;
    }
    Ok(id)
}

/// The whole content of the file at `path` in the union, read through a handle.
fn read_through(u: &Union, path: &str) -> String {
    let (parent, leaf) = split(path);
    let (node, _) = u
        .lookup(lookup_path_or_root(u, parent), name(leaf))
        .unwrap();
    let opened = u.open(&node, OFlags::RDONLY).unwrap();
    let data = u.read(opened.fh, 0, 1 << 16).unwrap();
    u.release(opened.fh);
    String::from_utf8(data).unwrap()
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn lookup_path_or_root(u: &Union, dir: &str) -> u64 {
    if dir.is_empty() {
        ROOT
    } else {
        lookup_path(u, dir).unwrap()
    }
}

/// The names a full listing of directory `id` shows, without "." and "..".
fn listing(u: &Union, id: u64) -> Vec<String> {
    let page = u.listing_page(id, 0, false).unwrap();
    let mut names: Vec<String> = page.entries[page.start..]
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn xattr_of(path: &Path, key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, key, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(Errno::NODATA) => None,
        Err(e) => panic!("getxattr {key} on {}: {e}", path.display()),
    }
}

fn is_chardev_0_0(path: &Path) -> bool {
    let st = rustix::fs::lstat(path).unwrap();
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// An xattr whiteout (kernel 6.7+): an empty file marked `overlay.whiteout`,
/// in a directory marked `overlay.opaque=x` (the kernel looks only there).
fn is_xattr_whiteout(path: &Path) -> bool {
    let st = rustix::fs::lstat(path).unwrap();
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_size == 0
        && xattr_of(path, "user.overlay.whiteout").is_some()
        && xattr_of(path.parent().unwrap(), "user.overlay.opaque").as_deref() == Some(b"x")
}

/// Whether a test that needs root may run: under CI, not being root fails it.
fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (character-device whiteouts), and CI=true");
    }
    eprintln!("skipping {test}: needs root");
    false
}
