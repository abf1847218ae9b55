//! Upper directory → layer tar (zstd, multithreaded), and `commit`.
//!
//! Only the upper is walked. Overlay whiteouts (character device 0/0) become
//! `.wh.NAME`, opaque directories (`trusted.overlay.opaque=y` or
//! `user.overlay.opaque=y`) get `.wh..wh..opq`, and a redirected directory
//! (`trusted.overlay.redirect`) is written as an opaque directory holding the
//! merged lower content it was renamed from plus its upper content. A
//! metacopy file takes its data from the lowers. Overlay's own xattrs are not
//! copied; the rootless `user.containers.override_stat` supplies owner and mode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ondisk::override_stat::{self, OverrideStat};
use ondisk::redirect::{self, Redirect};
use ondisk::whiteout;
use ondisk::xattr::{self, Key};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use serde_json::{Value, json};

use crate::digest::{Digest, HashingWriter};
use crate::image::{self, Descriptor, OCI_LAYER_ZSTD};
use crate::progress::Counting;
use crate::store::{Store, Txn, check_tag};
use crate::util::{create_unique, now_rfc3339};
use crate::{Context, Error, Result};

/// How to read the tree.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Read overlay markers (whiteouts, opaque, redirect, metacopy). Off for
    /// a plain root filesystem directory.
    pub overlay: bool,
    /// Lower layer directories, top first, for redirects and metacopy.
    pub lowers: Vec<PathBuf>,
    /// Reports compressed bytes written.
    pub progress: crate::progress::Progress,
}

impl DiffOptions {
    pub fn plain() -> Self {
        DiffOptions::default()
    }
    pub fn overlay(lowers: Vec<PathBuf>) -> Self {
        DiffOptions {
            overlay: true,
            lowers,
            progress: Default::default(),
        }
    }
}

/// A layer blob written into a staging directory.
#[derive(Debug)]
pub struct LayerFile {
    pub path: PathBuf,
    /// Digest and size of the compressed blob.
    pub digest: Digest,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
}

/// Write the tree at `dir` as a zstd layer tar into a new file in `tmp`.
pub fn tree_to_layer(dir: &Path, tmp: &Path, opts: &DiffOptions) -> Result<LayerFile> {
    let (file, path) = create_unique(tmp, "layer")?;
    let res = write_layer(dir, file, opts);
    match res {
        Ok((digest, size, diff_id)) => Ok(LayerFile {
            path,
            digest,
            size,
            diff_id,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

fn write_layer(dir: &Path, file: File, opts: &DiffOptions) -> Result<(Digest, u64, Digest)> {
    let what = || format!("layer from {}", dir.display());
    let counted = opts.progress.writer(
        "writing layer",
        None,
        BufWriter::with_capacity(1 << 20, file),
    );
    let outer = HashingWriter::new(counted);
    let mut enc = zstd::stream::write::Encoder::new(outer, 3).ctx(what)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    // Multithreading is an optimisation: a zstd built without it still works.
    let _ = enc.multithread(threads);
    let mut b = tar::Builder::new(HashingWriter::new(enc));
    b.follow_symlinks(false);
    let root = rustix::fs::open(dir, DIR_FLAGS, Mode::empty()).at(dir)?;
    let mut w = Walker {
        opts,
        upper: dir,
        links: HashMap::new(),
        lower_fds: Vec::new(),
        in_lower: false,
        renamed: HashMap::new(),
    };
    for l in &opts.lowers {
        w.lower_fds
            .push(rustix::fs::open(l, DIR_FLAGS, Mode::empty()).at(l)?);
    }
    w.dir_contents(root.as_fd(), b"", false, &mut b)?;
    let inner = b.into_inner().ctx(what)?;
    let (diff_id, _, enc) = inner.finish();
    let outer = enc.finish().ctx(what)?;
    let (digest, size, bw) = outer.finish();
    let file = bw
        .into_inner()
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx(what)?;
    file.sync_all().ctx(what)?;
    Ok((digest, size, diff_id))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

type Builder = tar::Builder<
    HashingWriter<zstd::stream::write::Encoder<'static, HashingWriter<Counting<BufWriter<File>>>>>,
>;

struct Walker<'a> {
    opts: &'a DiffOptions,
    upper: &'a Path,
    /// (dev, ino) of multiply linked files already written → their tar path.
    links: HashMap<(u64, u64), Vec<u8>>,
    lower_fds: Vec<OwnedFd>,
    /// Writing lower content (of a redirected directory): no overlay markers.
    in_lower: bool,
    /// Upper directories renamed from elsewhere → their lower path.
    renamed: HashMap<Vec<u8>, Vec<u8>>,
}

fn os(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}

/// Paths inside the layer are bytes: any name a filesystem holds.
fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = rel.to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// (parent, name) of a path.
fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    }
}

fn tar_path(rel: &[u8]) -> &Path {
    Path::new(os(rel))
}

/// Sorted names in a directory.
fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let dup = rustix::fs::openat(fd, ".", DIR_FLAGS, Mode::empty())?;
    let mut dir = Dir::new(dup)?;
    let mut names = Vec::new();
    while let Some(e) = dir.read() {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// All xattrs of an open file.
fn xattrs(fd: BorrowedFd<'_>) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 1 << 16];
    let Ok(n) = rustix::fs::flistxattr(fd, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 1 << 16];
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if let Ok(len) = rustix::fs::fgetxattr(fd, name, &mut value[..]) {
            out.push((name.to_string(), value[..len].to_vec()));
        }
    }
    out
}

fn get<'x>(xs: &'x [(String, Vec<u8>)], name: &str) -> Option<&'x [u8]> {
    xs.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// Overlay's view of an upper object's xattrs.
struct Marks {
    opaque: bool,
    redirect: Option<Vec<u8>>,
    metacopy: bool,
    /// A regular file marked `overlay.whiteout` (the kernel's whiteouts for
    /// nested and unprivileged overlays).
    whiteout: bool,
    /// Owner and mode from `user.containers.override_stat`.
    owner: Option<(u32, u32, u32)>,
    /// A device or fifo that a rootless upper keeps as a regular file, by
    /// the type in `user.containers.override_stat`.
    special: Option<(tar::EntryType, u32, u32)>,
    /// The xattrs to put in the tar.
    user: Vec<(String, Vec<u8>)>,
}

fn marks(xs: Vec<(String, Vec<u8>)>, overlay: bool) -> Marks {
    let any = |k: Key| k.names().into_iter().find_map(|n| get(&xs, n));
    let opaque = overlay && any(Key::Opaque) == Some(xattr::OPAQUE);
    let redirect = if overlay {
        any(Key::Redirect).map(<[u8]>::to_vec)
    } else {
        None
    };
    let metacopy = overlay && any(Key::Metacopy).is_some();
    let whiteout = overlay && any(Key::Whiteout).is_some();
    let over = get(&xs, override_stat::XATTR).and_then(OverrideStat::parse);
    let owner = over.map(|o| (o.uid, o.gid, o.mode));
    let special = over.as_ref().and_then(special_of);
    let user = xs
        .into_iter()
        .filter_map(|(k, v)| Some((xattr::tar_name(&k)?, v)))
        .collect();
    Marks {
        opaque,
        redirect,
        metacopy,
        whiteout,
        owner,
        special,
        user,
    }
}

/// The tar type of a device or fifo that a rootless upper keeps as a
/// regular file, by its override.
fn special_of(o: &OverrideStat) -> Option<(tar::EntryType, u32, u32)> {
    let (kind, rdev) = o.kind?;
    let t = match kind {
        FileType::CharacterDevice => tar::EntryType::Char,
        FileType::BlockDevice => tar::EntryType::Block,
        FileType::Fifo => tar::EntryType::Fifo,
        _ => return None,
    };
    Some((t, rustix::fs::major(rdev), rustix::fs::minor(rdev)))
}

fn header(kind: tar::EntryType, st: &Stat, owner: Option<(u32, u32, u32)>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    let (uid, gid, mode) = owner.unwrap_or((st.st_uid, st.st_gid, st.st_mode & 0o7777));
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

fn pax(b: &mut Builder, xs: &[(String, Vec<u8>)]) -> io::Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = xs
        .iter()
        .map(|(k, _)| format!("SCHILY.xattr.{k}"))
        .collect();
    b.append_pax_extensions(
        keys.iter()
            .map(String::as_str)
            .zip(xs.iter().map(|(_, v)| v.as_slice())),
    )
}

impl Walker<'_> {
    fn err(&self, rel: &[u8]) -> impl Fn(io::Error) -> Error + use<> {
        let what = self.upper.join(tar_path(rel)).display().to_string();
        move |e| Error::Io {
            what: what.clone(),
            error: e,
        }
    }

    /// Write the children of an upper directory. Inside an opaque directory
    /// whiteouts are left out: there is nothing below for them to hide.
    fn dir_contents(
        &mut self,
        fd: BorrowedFd<'_>,
        rel: &[u8],
        opaque: bool,
        b: &mut Builder,
    ) -> Result<()> {
        for name in list(fd).map_err(self.err(rel))? {
            self.entry(fd, &name, &join(rel, &name), opaque, b)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
        in_opaque: bool,
        b: &mut Builder,
    ) -> Result<()> {
        let e = self.err(rel);
        let st = rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| e(x.into()))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let overlay = self.opts.overlay && !self.in_lower;
        match ft {
            _ if overlay && whiteout::is_kernel_whiteout(ft, st.st_rdev) => {
                if in_opaque {
                    return Ok(());
                }
                self.whiteout(rel, &st, b)
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(parent, os(name), DIR_FLAGS, Mode::empty())
                    .map_err(|x| e(x.into()))?;
                let m = marks(xattrs(fd.as_fd()), overlay);
                pax(b, &m.user).map_err(&e)?;
                let mut h = header(tar::EntryType::Directory, &st, m.owner);
                b.append_data(&mut h, tar_path(rel), io::empty())
                    .map_err(&e)?;
                if m.opaque || m.redirect.is_some() {
                    let mut h = header(tar::EntryType::Regular, &st, Some((0, 0, 0)));
                    let marker = join(rel, whiteout::OPAQUE);
                    b.append_data(&mut h, tar_path(&marker), io::empty())
                        .map_err(&e)?;
                }
                if let Some(r) = &m.redirect {
                    let src = self.redirect_source(rel, r);
                    self.renamed.insert(rel.to_vec(), src.clone());
                    if self.lower_fds.is_empty() {
                        return Err(Error::invalid(
                            self.upper.join(tar_path(rel)).display().to_string(),
                            "directory redirect needs the lower layers: pass --from IMAGE",
                        ));
                    }
                    let upper_names: BTreeSet<Vec<u8>> =
                        list(fd.as_fd()).map_err(&e)?.into_iter().collect();
                    self.lower_contents(&src, rel, &upper_names, b)?;
                }
                self.dir_contents(fd.as_fd(), rel, m.opaque || m.redirect.is_some(), b)
            }
            FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    parent,
                    os(name),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| e(x.into()))?;
                let m = marks(xattrs(fd.as_fd()), overlay);
                if m.whiteout {
                    return if in_opaque {
                        Ok(())
                    } else {
                        self.whiteout(rel, &st, b)
                    };
                }
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key) {
                        let mut h = header(tar::EntryType::Link, &st, None);
                        return b
                            .append_link(&mut h, tar_path(rel), tar_path(first))
                            .map_err(e);
                    }
                    self.links.insert(key, rel.to_vec());
                }
                if let Some((kind, major, minor)) = m.special {
                    let mut h = header(kind, &st, m.owner);
                    let _ = h.set_device_major(major);
                    let _ = h.set_device_minor(minor);
                    return b.append_data(&mut h, tar_path(rel), io::empty()).map_err(e);
                }
                let mut data = File::from(fd);
                if m.metacopy {
                    let src = match m.redirect.as_deref() {
                        Some(r) => self.redirect_source(rel, r),
                        None => self.lower_path(rel),
                    };
                    data = self.lower_file(&src).ok_or_else(|| {
                        Error::invalid(
                            self.upper.join(tar_path(rel)).display().to_string(),
                            "metacopy file without its data in the lower layers (pass --from IMAGE)",
                        )
                    })?;
                }
                let len = data.metadata().map_err(&e)?.len();
                pax(b, &m.user).map_err(&e)?;
                let mut h = header(tar::EntryType::Regular, &st, m.owner);
                h.set_size(len);
                b.append_data(&mut h, tar_path(rel), io::Read::take(data, len))
                    .map_err(e)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(parent, os(name), Vec::new())
                    .map_err(|x| e(x.into()))?;
                let mut h = header(tar::EntryType::Symlink, &st, None);
                b.append_link(&mut h, tar_path(rel), os(target.as_bytes()))
                    .map_err(e)
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                let kind = match ft {
                    FileType::CharacterDevice => tar::EntryType::Char,
                    FileType::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = header(kind, &st, None);
                let _ = h.set_device_major(rustix::fs::major(st.st_rdev));
                let _ = h.set_device_minor(rustix::fs::minor(st.st_rdev));
                b.append_data(&mut h, tar_path(rel), io::empty()).map_err(e)
            }
            // Sockets do not belong in layers.
            _ => Ok(()),
        }
    }

    /// `.wh.NAME` for a deleted `rel`.
    fn whiteout(&self, rel: &[u8], st: &Stat, b: &mut Builder) -> Result<()> {
        let (parent, name) = split_last(rel);
        let wh = join(parent, &whiteout::whiteout_name(name));
        let mut h = header(tar::EntryType::Regular, st, Some((0, 0, 0)));
        b.append_data(&mut h, tar_path(&wh), io::empty())
            .map_err(self.err(rel))
    }

    /// Where the lower object of upper path `rel` is: the path itself, or
    /// below a directory that was renamed (redirected) from elsewhere.
    fn lower_path(&self, rel: &[u8]) -> Vec<u8> {
        let mut cut = rel.len();
        loop {
            let anc = &rel[..cut];
            if let Some(src) = self.renamed.get(anc) {
                return [src.as_slice(), &rel[cut..]].concat();
            }
            match anc.iter().rposition(|&b| b == b'/') {
                Some(i) => cut = i,
                None => return rel.to_vec(),
            }
        }
    }

    /// The lower path a redirect xattr on upper path `rel` names: absolute
    /// from the layer root, or a name beside the (lower of the) parent.
    fn redirect_source(&self, rel: &[u8], redirect: &[u8]) -> Vec<u8> {
        match redirect::parse(redirect) {
            Redirect::Absolute(abs) => abs.as_os_str().as_bytes().to_vec(),
            Redirect::Relative(r) => join(
                &self.lower_path(split_last(rel).0),
                r.as_os_str().as_bytes(),
            ),
        }
    }

    /// Open a path in a lower layer without following symlinks.
    fn open_in(&self, i: usize, rel: &[u8], flags: OFlags) -> Option<OwnedFd> {
        let fd = &self.lower_fds[i];
        if rel.is_empty() {
            return rustix::fs::openat(fd, ".", flags, Mode::empty()).ok();
        }
        rustix::fs::openat2(
            fd,
            os(rel),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .ok()
    }

    fn lower_stat(&self, i: usize, rel: &[u8]) -> Option<Stat> {
        if rel.is_empty() {
            return rustix::fs::fstat(&self.lower_fds[i]).ok();
        }
        rustix::fs::statat(&self.lower_fds[i], os(rel), AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// The topmost regular file at `rel` in the lowers.
    fn lower_file(&self, rel: &[u8]) -> Option<File> {
        for i in 0..self.lower_fds.len() {
            if let Some(st) = self.lower_stat(i, rel) {
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return None;
                }
                return self
                    .open_in(i, rel, OFlags::RDONLY | OFlags::NOFOLLOW)
                    .map(File::from);
            }
        }
        None
    }

    /// Merged children of `src` across the lowers: name → index of the lower
    /// that provides it (`None`: whited out).
    fn merged_children(&self, src: &[u8]) -> BTreeMap<Vec<u8>, Option<usize>> {
        let mut seen: BTreeMap<Vec<u8>, Option<usize>> = BTreeMap::new();
        for i in 0..self.lower_fds.len() {
            let Some(st) = self.lower_stat(i, src) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                break;
            }
            let Some(fd) = self.open_in(i, src, DIR_FLAGS) else {
                break;
            };
            let mut opaque = marks(xattrs(fd.as_fd()), true).opaque;
            for n in list(fd.as_fd()).unwrap_or_default() {
                if n == whiteout::OPAQUE {
                    opaque = true;
                    continue;
                }
                if let Some(t) = n.strip_prefix(whiteout::PREFIX) {
                    seen.entry(t.to_vec()).or_insert(None);
                    continue;
                }
                let whiteout = matches!(
                    rustix::fs::statat(&fd, os(&n), AtFlags::SYMLINK_NOFOLLOW),
                    Ok(s) if whiteout::is_kernel_whiteout(FileType::from_raw_mode(s.st_mode), s.st_rdev)
                );
                seen.entry(n)
                    .or_insert(if whiteout { None } else { Some(i) });
            }
            if opaque {
                break;
            }
        }
        seen
    }

    /// Write the merged lower content of `src` under `dest`, except `skip`.
    fn lower_contents(
        &mut self,
        src: &[u8],
        dest: &[u8],
        skip: &BTreeSet<Vec<u8>>,
        b: &mut Builder,
    ) -> Result<()> {
        for (name, at) in self.merged_children(src) {
            let Some(i) = at else { continue };
            if skip.contains(&name) {
                continue;
            }
            let s = join(src, &name);
            let d = join(dest, &name);
            let Some(pfd) = self.open_in(i, src, DIR_FLAGS) else {
                continue;
            };
            let is_dir = self
                .lower_stat(i, &s)
                .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
            // Lower objects are plain: no overlay markers of their own here.
            self.in_lower = true;
            let res = if is_dir {
                self.lower_dir_header(pfd.as_fd(), &name, &d, b)
            } else {
                self.entry(pfd.as_fd(), &name, &d, false, b)
            };
            self.in_lower = false;
            res?;
            if is_dir {
                self.lower_contents(&s, &d, &BTreeSet::new(), b)?;
            }
        }
        Ok(())
    }

    fn lower_dir_header(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        dest: &[u8],
        b: &mut Builder,
    ) -> Result<()> {
        let e = self.err(dest);
        let st = rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| e(x.into()))?;
        let fd = rustix::fs::openat(parent, os(name), DIR_FLAGS, Mode::empty())
            .map_err(|x| e(x.into()))?;
        let m = marks(xattrs(fd.as_fd()), false);
        pax(b, &m.user).map_err(&e)?;
        let mut h = header(tar::EntryType::Directory, &st, m.owner);
        b.append_data(&mut h, tar_path(dest), io::empty())
            .map_err(e)
    }
}

/// Turn an upper directory into a new image: the base image's layers (with
/// `from`) plus one layer holding the upper's changes; tagged `tag` if given.
pub fn commit(
    store: &Store,
    upper: &Path,
    tag: Option<&str>,
    from: Option<&str>,
) -> Result<Digest> {
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let base = from.map(|f| store.resolve(f)).transpose()?;
    let lowers = match &base {
        Some(info) => {
            let mut dirs = store.layer_dirs(info)?;
            dirs.reverse();
            dirs
        }
        None => Vec::new(),
    };
    let mut txn = Txn::new(store)?;
    let opts = DiffOptions {
        progress: store.progress().clone(),
        ..DiffOptions::overlay(lowers)
    };
    let layer = tree_to_layer(upper, txn.dir(), &opts)?;
    txn.add_staged(layer.path, layer.digest.clone());
    txn.unpack_layers(&[(layer.digest.clone(), layer.diff_id.clone())])?;
    let now = now_rfc3339();
    let (mut config, mut layers) = match &base {
        Some(info) => {
            let what = format!("config {}", info.manifest.config.digest);
            let bytes = store.blobs().read_verified(&info.manifest.config.digest)?;
            let v: Value = image::parse_json(&bytes, &what)?;
            (v, info.manifest.layers.clone())
        }
        None => {
            let mut v = image::new_config(&[], "");
            v["history"] = json!([]);
            (v, Vec::new())
        }
    };
    let cfg_err = || {
        Error::invalid(
            "base image config",
            "not a JSON object with rootfs.diff_ids",
        )
    };
    let obj = config.as_object_mut().ok_or_else(cfg_err)?;
    obj.insert("created".into(), json!(now));
    let ids = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}))
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(cfg_err)?;
    ids.push(json!(layer.diff_id));
    let hist = obj.entry("history").or_insert_with(|| json!([]));
    if let Some(h) = hist.as_array_mut() {
        h.push(
            json!({"created": now, "created_by": format!("unionmount commit {}", upper.display())}),
        );
    }
    layers.push(Descriptor::new(OCI_LAYER_ZSTD, layer.digest, layer.size));
    let md = image::store_image(&mut txn, &config, layers, tag)?;
    txn.commit()?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn override_special(v: &[u8]) -> Option<(tar::EntryType, u32, u32)> {
        special_of(&OverrideStat::parse(v)?)
    }

    fn parse_override(v: &[u8]) -> Option<(u32, u32, u32)> {
        marks(vec![(override_stat::XATTR.into(), v.to_vec())], true).owner
    }

    #[test]
    fn parses_override_types() {
        assert_eq!(
            override_special(b"0:0:0666:char-1-3"),
            Some((tar::EntryType::Char, 1, 3))
        );
        assert_eq!(
            override_special(b"0:0:0660:block-8-0"),
            Some((tar::EntryType::Block, 8, 0))
        );
        assert_eq!(
            override_special(b"0:0:0644:pipe"),
            Some((tar::EntryType::Fifo, 0, 0))
        );
        assert_eq!(override_special(b"0:0:0644"), None);
        assert_eq!(override_special(b"0:0:0644:file"), None);
        assert_eq!(override_special(b"0:0:0755:socket"), None);
    }

    #[test]
    fn parses_override_stat() {
        assert_eq!(parse_override(b"1:2:0755"), Some((1, 2, 0o755)));
        assert_eq!(parse_override(b"0:0:020644:char-1-3"), Some((0, 0, 0o644)));
        assert_eq!(parse_override(b"x"), None);
        // Only a whole value is an override, as the mount reads it.
        assert_eq!(parse_override(b"1:2:0755:bogus"), None);
    }

    #[test]
    fn maps_overlay_xattrs_back() {
        let m = marks(
            vec![
                ("trusted.overlay.opaque".into(), b"y".to_vec()),
                ("trusted.overlay.overlay.opaque".into(), b"user's".to_vec()),
                ("user.foo".into(), b"1".to_vec()),
                ("user.containers.override_stat".into(), b"5:6:0700".to_vec()),
            ],
            true,
        );
        assert!(m.opaque);
        assert_eq!(m.owner, Some((5, 6, 0o700)));
        assert_eq!(
            m.user,
            vec![
                ("trusted.overlay.opaque".to_string(), b"user's".to_vec()),
                ("user.foo".to_string(), b"1".to_vec())
            ]
        );
    }
}
