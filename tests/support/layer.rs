//! A small DSL to describe one layer directory and build it on disk.
//!
//! A `Layer` is a list of entries; `build(dir, dialect)` writes it. Whiteouts
//! and opaque directories are written in the chosen dialect, so the same
//! logical layer can be given to kernel overlayfs (which only reads its own
//! format) and to unionmount (which must read them all).
//!
//! Every entry, and every parent made implicitly, gets a fixed old mtime unless
//! told otherwise, so the two copies of a layer agree on timestamps and a
//! snapshot can tell "kept from the lower" from "touched by the test".

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::sys;

/// The mtime every built entry gets unless told otherwise.
pub const LAYER_MTIME: i64 = 1_500_000_000;

/// How whiteouts and opaque directories are written into a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// char 0/0 whiteouts, `trusted.overlay.opaque=y`
    Kernel,
    /// `.wh.NAME` files and `.wh..wh..opq` (OCI image layers)
    Oci,
    /// char 0/0 whiteouts, `user.overlay.opaque=y` (unprivileged overlayfs)
    UserXattr,
    /// char 0/0 whiteouts, `user.fuseoverlayfs.opaque=y`
    FuseOverlayfs,
    /// zero-size files with `trusted.overlay.whiteout`, parent dir
    /// `trusted.overlay.opaque=x`; opaque dirs `trusted.overlay.opaque=y`
    XattrWhiteout,
    /// zero-size files with `user.overlay.whiteout`, parent dir
    /// `user.overlay.opaque=x`; opaque dirs `user.overlay.opaque=y`
    UserXattrWhiteout,
}

impl Dialect {
    pub const ALL: [Dialect; 6] = [
        Dialect::Kernel,
        Dialect::Oci,
        Dialect::UserXattr,
        Dialect::FuseOverlayfs,
        Dialect::XattrWhiteout,
        Dialect::UserXattrWhiteout,
    ];
}

/// Owner, mode and mtime of an entry; `None` keeps the default.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<i64>,
}

impl Meta {
    pub fn mode(mode: u32) -> Meta {
        Meta {
            mode: Some(mode),
            ..Meta::default()
        }
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Meta {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }
    pub fn mtime(mut self, t: i64) -> Meta {
        self.mtime = Some(t);
        self
    }
}

#[derive(Debug, Clone)]
enum Node {
    File(PathBuf, Vec<u8>, Meta),
    /// size, then chunks of real data at offsets; the rest is holes
    Sparse(PathBuf, u64, Vec<(u64, Vec<u8>)>, Meta),
    Dir(PathBuf, Meta),
    Symlink(PathBuf, PathBuf),
    HardLink(PathBuf, PathBuf),
    Fifo(PathBuf, Meta),
    Socket(PathBuf, Meta),
    CharDev(PathBuf, u32, u32, Meta),
    Xattr(PathBuf, String, Vec<u8>),
    Whiteout(PathBuf),
    Opaque(PathBuf),
    /// a literal file named exactly so, never translated
    Raw(PathBuf, Vec<u8>),
}

/// One layer, described entry by entry. Parents are made as needed.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    nodes: Vec<Node>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    pub fn file(self, path: &str, data: impl AsRef<[u8]>) -> Layer {
        self.file_with(path, data, Meta::default())
    }

    pub fn file_with(mut self, path: &str, data: impl AsRef<[u8]>, meta: Meta) -> Layer {
        self.nodes
            .push(Node::File(path.into(), data.as_ref().to_vec(), meta));
        self
    }

    /// A sparse file of `size` bytes with data only in `chunks` (offset, bytes).
    pub fn sparse(mut self, path: &str, size: u64, chunks: &[(u64, &[u8])], meta: Meta) -> Layer {
        self.nodes.push(Node::Sparse(
            path.into(),
            size,
            chunks.iter().map(|(o, d)| (*o, d.to_vec())).collect(),
            meta,
        ));
        self
    }

    pub fn dir(self, path: &str) -> Layer {
        self.dir_with(path, Meta::default())
    }

    pub fn dir_with(mut self, path: &str, meta: Meta) -> Layer {
        self.nodes.push(Node::Dir(path.into(), meta));
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        self.nodes.push(Node::Symlink(path.into(), target.into()));
        self
    }

    /// `path` becomes another name of the already described `existing`.
    pub fn hardlink(mut self, path: &str, existing: &str) -> Layer {
        self.nodes
            .push(Node::HardLink(path.into(), existing.into()));
        self
    }

    pub fn fifo(mut self, path: &str) -> Layer {
        self.nodes.push(Node::Fifo(path.into(), Meta::default()));
        self
    }

    pub fn socket(mut self, path: &str) -> Layer {
        self.nodes.push(Node::Socket(path.into(), Meta::default()));
        self
    }

    pub fn chardev(mut self, path: &str, major: u32, minor: u32) -> Layer {
        self.nodes
            .push(Node::CharDev(path.into(), major, minor, Meta::default()));
        self
    }

    pub fn xattr(mut self, path: &str, name: &str, value: impl AsRef<[u8]>) -> Layer {
        self.nodes.push(Node::Xattr(
            path.into(),
            name.into(),
            value.as_ref().to_vec(),
        ));
        self
    }

    /// Hide `path` of the layers below.
    pub fn whiteout(mut self, path: &str) -> Layer {
        self.nodes.push(Node::Whiteout(path.into()));
        self
    }

    /// Make directory `path` (created if needed) hide what the layers below hold there.
    pub fn opaque(mut self, path: &str) -> Layer {
        self.nodes.push(Node::Opaque(path.into()));
        self
    }

    /// A file written exactly as named, whatever the dialect (e.g. a stray `.wh.x`).
    pub fn raw_file(mut self, path: &str, data: impl AsRef<[u8]>) -> Layer {
        self.nodes
            .push(Node::Raw(path.into(), data.as_ref().to_vec()));
        self
    }

    /// Write the layer into `root` (created if missing).
    pub fn build(&self, root: &Path, dialect: Dialect) {
        fs::create_dir_all(root).unwrap();
        let mut metas: Vec<(PathBuf, Meta)> = Vec::new();
        let mut made_dirs: Vec<PathBuf> = Vec::new();
        let mut xattrs: Vec<(PathBuf, String, Vec<u8>)> = Vec::new();
        let parent = |p: &Path, made: &mut Vec<PathBuf>| {
            let mut acc = root.to_path_buf();
            if let Some(par) = p.parent() {
                for c in par.components() {
                    acc.push(c);
                    if !acc.exists() {
                        fs::create_dir(&acc).unwrap();
                        sys::chmod(&acc, 0o755).unwrap();
                        made.push(acc.clone());
                    }
                }
            }
        };
        for node in &self.nodes {
            match node {
                Node::File(p, data, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    fs::write(&full, data).unwrap();
                    sys::chmod(&full, 0o644).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::Sparse(p, size, chunks, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    let mut f = fs::File::create(&full).unwrap();
                    f.set_len(*size).unwrap();
                    for (off, data) in chunks {
                        f.seek(SeekFrom::Start(*off)).unwrap();
                        f.write_all(data).unwrap();
                    }
                    f.sync_all().unwrap();
                    sys::chmod(&full, 0o644).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::Dir(p, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    if !full.exists() {
                        fs::create_dir(&full).unwrap();
                    }
                    sys::chmod(&full, 0o755).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::Symlink(p, target) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    symlink(target, &full).unwrap();
                    metas.push((full, Meta::default()));
                }
                Node::HardLink(p, existing) => {
                    parent(p, &mut made_dirs);
                    fs::hard_link(root.join(existing), root.join(p)).unwrap();
                }
                Node::Fifo(p, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    sys::mkfifo(&full, 0o644).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::Socket(p, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    sys::mknod(&full, libc::S_IFSOCK | 0o755, 0).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::CharDev(p, major, minor, meta) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    sys::mknod(&full, libc::S_IFCHR | 0o600, sys::makedev(*major, *minor)).unwrap();
                    metas.push((full, meta.clone()));
                }
                Node::Xattr(p, name, value) => {
                    // after owners are set: chown clears security.capability
                    xattrs.push((root.join(p), name.clone(), value.clone()));
                }
                Node::Raw(p, data) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    fs::write(&full, data).unwrap();
                    sys::chmod(&full, 0o644).unwrap();
                    metas.push((full, Meta::default()));
                }
                Node::Whiteout(p) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    let made = write_whiteout(&full, dialect);
                    metas.push((made, Meta::default()));
                }
                Node::Opaque(p) => {
                    parent(p, &mut made_dirs);
                    let full = root.join(p);
                    if !full.exists() {
                        fs::create_dir(&full).unwrap();
                        sys::chmod(&full, 0o755).unwrap();
                        metas.push((full.clone(), Meta::default()));
                    }
                    write_opaque(&full, dialect);
                }
            }
        }
        // Metadata last, deepest first, so creating children does not undo mtimes.
        for d in made_dirs {
            metas.push((d, Meta::default()));
        }
        metas.push((root.to_path_buf(), Meta::default()));
        metas.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, meta) in metas {
            if meta.uid.is_some() || meta.gid.is_some() {
                sys::lchown(&p, meta.uid.unwrap_or(0), meta.gid.unwrap_or(0)).unwrap();
            }
            if let Some(mode) = meta.mode {
                sys::chmod(&p, mode).unwrap();
            }
            let t = meta.mtime.unwrap_or(LAYER_MTIME);
            sys::lutimes(&p, (t, 0), (t, 0)).unwrap();
        }
        for (p, name, value) in xattrs {
            sys::lsetxattr(&p, &name, &value).unwrap();
        }
    }
}

/// Write a whiteout for `full`; returns the path actually created.
fn write_whiteout(full: &Path, dialect: Dialect) -> PathBuf {
    let dir = full.parent().unwrap();
    let name = full.file_name().unwrap().to_str().unwrap();
    match dialect {
        Dialect::Kernel | Dialect::UserXattr | Dialect::FuseOverlayfs => {
            sys::mknod(full, libc::S_IFCHR | 0o600, 0).unwrap();
            full.to_path_buf()
        }
        Dialect::Oci => {
            let wh = dir.join(format!(".wh.{name}"));
            fs::write(&wh, b"").unwrap();
            sys::chmod(&wh, 0o644).unwrap();
            wh
        }
        Dialect::XattrWhiteout | Dialect::UserXattrWhiteout => {
            let ns = if dialect == Dialect::XattrWhiteout {
                "trusted"
            } else {
                "user"
            };
            fs::write(full, b"").unwrap();
            sys::chmod(full, 0o644).unwrap();
            sys::lsetxattr(full, &format!("{ns}.overlay.whiteout"), b"").unwrap();
            // The containing directory says it holds xattr whiteouts, unless it is opaque already.
            let key = format!("{ns}.overlay.opaque");
            if sys::lgetxattr(dir, &key).is_err() {
                sys::lsetxattr(dir, &key, b"x").unwrap();
            }
            full.to_path_buf()
        }
    }
}

fn write_opaque(dir: &Path, dialect: Dialect) {
    match dialect {
        Dialect::Kernel | Dialect::XattrWhiteout => {
            sys::lsetxattr(dir, "trusted.overlay.opaque", b"y").unwrap()
        }
        Dialect::UserXattr | Dialect::UserXattrWhiteout => {
            sys::lsetxattr(dir, "user.overlay.opaque", b"y").unwrap()
        }
        Dialect::FuseOverlayfs => sys::lsetxattr(dir, "user.fuseoverlayfs.opaque", b"y").unwrap(),
        Dialect::Oci => {
            let m = dir.join(".wh..wh..opq");
            fs::write(&m, b"").unwrap();
            sys::chmod(&m, 0o644).unwrap();
        }
    }
}

/// Names that are markers of some dialect and must never be visible in a mount.
pub fn is_marker_name(name: &str) -> bool {
    name.starts_with(".wh.")
}
