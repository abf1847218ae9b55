//! The lower layers every target gets: a generated tree over three layers
//! (whiteouts, an opaque directory, a few big files), one given directory or
//! the unpacked layers of a store image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use rustix::fs::{FileType, Mode, XattrFlags};

use super::workload::run_cmd;
use crate::options::OverlayOptions;

const MIB: u64 = 1 << 20;

/// How big the generated tree and the big-file workloads are.
pub struct Sizes {
    pub dirs: usize,
    pub files_per_dir: usize,
    /// The file the sequential and random reads read.
    pub big: u64,
    /// The lower file the append copy-up appends to.
    pub append: u64,
    /// What the sequential write writes.
    pub write: u64,
    pub medium: u64,
    pub rand_reads: usize,
}

/// Default sizes at `--scale 1` (`--quick` divides them).
pub const DEFAULT_DIRS: f64 = 1000.0;
pub const DEFAULT_BIG: u64 = 2048 * MIB;
pub const DEFAULT_APPEND: u64 = 1024 * MIB;
pub const DEFAULT_WRITE: u64 = 1024 * MIB;

impl Sizes {
    /// What the run's filesystem must hold: the layers, a merged copy, and
    /// the uppers of a run (untar, copy-ups, the written file). A given
    /// tree's size is not known: then as much as the disk has.
    pub fn room(&self, given_tree: bool) -> super::scratch_fs::Room {
        let files = (self.dirs * self.files_per_dir) as u64;
        if given_tree {
            return super::scratch_fs::Room {
                bytes: None,
                inodes: 2 << 20,
            };
        }
        let big = self.big + self.append + self.medium + self.write;
        super::scratch_fs::Room {
            bytes: Some(4 * big + files * (64 << 10) + (4 << 30)),
            inodes: (files * 16).max(256 << 10),
        }
    }

    /// `tree_scale` multiplies the file count only (a big tree without
    /// bigger big files).
    pub fn new(quick: bool, scale: f64, tree_scale: f64) -> Sizes {
        let (dirs, big, append, write, medium, rand_reads) = if quick {
            (20.0, 8 * MIB, 4 * MIB, 8 * MIB, MIB, 2000)
        } else {
            (
                DEFAULT_DIRS,
                DEFAULT_BIG,
                DEFAULT_APPEND,
                DEFAULT_WRITE,
                16 * MIB,
                20000,
            )
        };
        let n = |x: f64| ((x * scale).round() as u64).max(1);
        let bytes = |x: u64| n(x as f64);
        Sizes {
            dirs: n(dirs * tree_scale) as usize,
            files_per_dir: 20,
            big: bytes(big),
            append: bytes(append),
            write: bytes(write),
            medium: bytes(medium),
            rand_reads,
        }
    }
}

/// The layers and the names the workloads use, relative to a target's root.
pub struct Layers {
    /// Lower directories, top first.
    pub lowers: Vec<PathBuf>,
    /// A populated directory the tree workloads (chown, rm, rename, git) act on.
    pub tree: PathBuf,
    /// A big file in a lower layer (the reads).
    pub big: PathBuf,
    pub big_size: u64,
    /// A big file in a lower layer (the append copy-up).
    pub append: PathBuf,
    pub append_size: u64,
    /// A tar of many small files, for the untar workload.
    pub tarball: PathBuf,
    files: usize,
    /// Where the layers come from, for the report (None: generated).
    source: Option<String>,
    /// An image's store, opened (shared) while the run uses its layers, so
    /// a prune waits rather than removing them.
    _store: Option<layerstore::Store>,
}

impl Layers {
    pub fn generate(s: &Sizes, base: &Path) -> anyhow::Result<Layers> {
        let lowers: Vec<PathBuf> = (0..3).map(|i| base.join(format!("layer{i}"))).collect();
        for l in &lowers {
            fs::create_dir_all(l.join("src")).with_context(|| format!("{}", l.display()))?;
        }
        let (top, mid, bottom) = (&lowers[0], &lowers[1], &lowers[2]);
        let mut files = 0;
        for d in 0..s.dirs {
            let dir = format!("src/d{d:04}");
            fs::create_dir_all(bottom.join(&dir))?;
            for f in 0..s.files_per_dir {
                let len = (d * 131 + f * 977) % 4096 + 1;
                write_small(&bottom.join(format!("{dir}/f{f:02}")), len, d + f)?;
                files += 1;
            }
            if d % 10 == 0 {
                // the middle layer overrides one file and adds one
                fs::create_dir_all(mid.join(&dir))?;
                write_small(&mid.join(format!("{dir}/f00")), 100, d)?;
                write_small(&mid.join(format!("{dir}/mid")), 200, d)?;
            }
            if d % 7 == 3 {
                fs::create_dir_all(mid.join(&dir))?;
                whiteout(&mid.join(format!("{dir}/f01")))?;
            }
            if d % 13 == 5 {
                fs::create_dir_all(top.join(&dir))?;
                whiteout(&top.join(format!("{dir}/f02")))?;
                write_small(&top.join(format!("{dir}/top")), 300, d)?;
            }
        }
        // an opaque directory in the middle layer hides the bottom's copy
        let opaque = mid.join("src/d0001");
        fs::create_dir_all(&opaque)?;
        rustix::fs::setxattr(&opaque, "trusted.overlay.opaque", b"y", XattrFlags::empty())
            .context("setting trusted.overlay.opaque (needs root)")?;
        write_small(&opaque.join("only"), 64, 1)?;
        // a whole directory whited out from the top
        if s.dirs > 2 {
            whiteout(&top.join("src/d0002"))?;
        }
        write_big(&bottom.join("big.bin"), s.big)?;
        write_big(&mid.join("append.bin"), s.append)?;
        write_big(&top.join("medium.bin"), s.medium)?;
        let tarball = base.join("untar.tar");
        tar_of(bottom, "src", &tarball)?;
        Ok(Layers {
            lowers,
            tree: PathBuf::from("src"),
            big: PathBuf::from("big.bin"),
            big_size: s.big,
            append: PathBuf::from("append.bin"),
            append_size: s.append,
            tarball,
            files,
            source: None,
            _store: None,
        })
    }

    /// One given directory as the only lower.
    pub fn from_dir(dir: &Path, base: &Path) -> anyhow::Result<Layers> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--lower {}", dir.display()))?;
        Layers::from_lowers(
            vec![dir.clone()],
            format!("--lower {}", dir.display()),
            base,
        )
    }

    /// The unpacked layers of a store image, top first, as `unionmount image
    /// mount` stacks them.
    pub fn from_image(store: &Path, name: &str, base: &Path) -> anyhow::Result<Layers> {
        // Store::open would make a new empty store where none is.
        if !store.join("index.json").is_file() {
            bail!(
                "--store {}: no layer store there (no index.json)",
                store.display()
            );
        }
        let s = layerstore::Store::open(store)?;
        let info = s.resolve(name)?;
        let mut dirs = s.layer_dirs(&info)?;
        if dirs.is_empty() {
            bail!("image {name}: has no layers");
        }
        dirs.reverse();
        let mut l = Layers::from_lowers(dirs, format!("image {name}"), base)?;
        l._store = Some(s);
        Ok(l)
    }

    /// Given lowers (top first): the tree is the top-level directory of the
    /// merged view holding the most entries, the big file its largest file
    /// (for the reads and the append alike).
    fn from_lowers(lowers: Vec<PathBuf>, source: String, base: &Path) -> anyhow::Result<Layers> {
        let view = MergedView::mount(&lowers, base)?;
        let dir = view.path();
        let mut best_tree: Option<(usize, PathBuf)> = None;
        let mut big: Option<(u64, PathBuf)> = None;
        let mut files = 0;
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel = PathBuf::from(e.file_name());
            let mut n = 0;
            walk(dir, &rel, &mut n, &mut big)?;
            files += n;
            if e.file_type()?.is_dir() && best_tree.as_ref().is_none_or(|(m, _)| n > *m) {
                best_tree = Some((n, rel));
            }
        }
        let Some((_, tree)) = best_tree else {
            bail!("{source}: no directory in it to work on");
        };
        let Some((big_size, big)) = big else {
            bail!("{source}: no regular file in it");
        };
        let tarball = base.join("untar.tar");
        tar_of(dir, &tree.to_string_lossy(), &tarball)?;
        drop(view);
        Ok(Layers {
            lowers,
            tree,
            append: big.clone(),
            append_size: big_size,
            big,
            big_size,
            tarball,
            files,
            source: Some(source),
            _store: None,
        })
    }

    /// One line for the report, with the sizes the big-file workloads use.
    pub fn describe(&self, s: &Sizes) -> String {
        let layers = self.lowers.len();
        match &self.source {
            None => format!(
                "{} files over {layers} layer(s); big file {}, append to {}, write {}",
                self.files,
                size(self.big_size),
                size(self.append_size),
                size(s.write),
            ),
            Some(src) => format!(
                "{src}: {} entries over {layers} layer(s); tree {}; big file {} ({}, also appended to); write {}",
                self.files,
                self.tree.display(),
                self.big.display(),
                size(self.big_size),
                size(s.write),
            ),
        }
    }

    /// A plain directory holding the merged view (for the `dir` target):
    /// copied out of a read-only kernel overlayfs of the layers.
    pub fn merged_copy(&self, base: &Path) -> anyhow::Result<PathBuf> {
        let out = base.join("merged");
        fs::create_dir(&out)?;
        let view = MergedView::mount(&self.lowers, base)
            .context("mounting the layers to copy the merged view for the dir target")?;
        run_cmd(
            Command::new("cp")
                .arg("-a")
                .arg(view.path().join("."))
                .arg(&out),
        )?;
        Ok(out)
    }
}

/// A size in MiB below 1 GiB (3 MiB), else in GiB (2 GiB, 1.5 GiB).
pub fn size(bytes: u64) -> String {
    if bytes >= 1024 * MIB {
        format!(
            "{} GiB",
            (bytes as f64 / (1024 * MIB) as f64 * 10.0).round() / 10.0
        )
    } else {
        format!("{} MiB", (bytes as f64 / MIB as f64 * 10.0).round() / 10.0)
    }
}

/// The merged view of lowers, read-only: the only lower itself, or a kernel
/// overlayfs of them unmounted (and removed) on Drop.
struct MergedView {
    path: PathBuf,
    mounted: bool,
}

impl MergedView {
    fn mount(lowers: &[PathBuf], base: &Path) -> anyhow::Result<MergedView> {
        if let [only] = lowers {
            return Ok(MergedView {
                path: only.clone(),
                mounted: false,
            });
        }
        let mnt = base.join("merged-view");
        fs::create_dir(&mnt)?;
        let view = MergedView {
            path: mnt,
            mounted: true,
        };
        let lowerdir = OverlayOptions {
            lowers: lowers.to_vec(),
            ..OverlayOptions::default()
        }
        .encode()?;
        run_cmd(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(lowerdir)
                .arg(&view.path),
        )
        .context("mounting the layers read-only with kernel overlayfs")?;
        Ok(view)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        if self.mounted {
            super::tmp::remove_tree(&self.path);
        }
    }
}

fn walk(
    root: &Path,
    rel: &Path,
    n: &mut usize,
    big: &mut Option<(u64, PathBuf)>,
) -> anyhow::Result<()> {
    let md = fs::symlink_metadata(root.join(rel))?;
    *n += 1;
    if md.is_file() && big.as_ref().is_none_or(|(s, _)| md.len() > *s) {
        *big = Some((md.len(), rel.to_path_buf()));
    }
    if md.is_dir() {
        for e in fs::read_dir(root.join(rel))? {
            walk(root, &rel.join(e?.file_name()), n, big)?;
        }
    }
    Ok(())
}

fn tar_of(dir: &Path, what: &str, out: &Path) -> anyhow::Result<()> {
    run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .arg(what),
    )
    .context("making the tarball for the untar workload")
}

fn write_small(path: &Path, len: usize, seed: usize) -> anyhow::Result<()> {
    let byte = b'a' + (seed % 26) as u8;
    fs::write(path, vec![byte; len]).with_context(|| format!("writing {}", path.display()))
}

fn whiteout(path: &Path) -> anyhow::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o000),
        0,
    )
    .with_context(|| format!("making whiteout {} (needs root)", path.display()))
}

/// A file of `len` bytes that does not compress or deduplicate trivially.
fn write_big(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut left = len;
    let mut i: u64 = 0;
    while left > 0 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
        i += 1;
    }
    f.flush()?;
    Ok(())
}
