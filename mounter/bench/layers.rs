//! The lower layers every target gets: a generated tree over three layers
//! (whiteouts, an opaque directory, a few big files) or one given directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use rustix::fs::{FileType, Mode, XattrFlags};

use super::workload::run_cmd;

const MIB: u64 = 1 << 20;

/// How big the generated tree is.
pub struct Sizes {
    pub dirs: usize,
    pub files_per_dir: usize,
    pub big: u64,
    pub medium: u64,
    pub rand_reads: usize,
}

impl Sizes {
    pub fn new(quick: bool, scale: f64) -> Sizes {
        let (dirs, big, medium, rand_reads) = if quick {
            (20.0, 8.0 * MIB as f64, MIB as f64, 2000.0)
        } else {
            (1000.0, 256.0 * MIB as f64, 16.0 * MIB as f64, 20000.0)
        };
        let n = |x: f64| ((x * scale).round() as u64).max(1);
        Sizes {
            dirs: n(dirs) as usize,
            files_per_dir: 20,
            big: n(big),
            medium: n(medium),
            rand_reads: rand_reads as usize,
        }
    }
}

/// The layers and the names the workloads use, relative to a target's root.
pub struct Layers {
    /// Lower directories, top first.
    pub lowers: Vec<PathBuf>,
    /// A populated directory the tree workloads (chown, rm, rename) act on.
    pub tree: PathBuf,
    /// A big file in a lower layer.
    pub big: PathBuf,
    pub big_size: u64,
    /// A tar of many small files, for the untar workload.
    pub tarball: PathBuf,
    files: usize,
    generated: bool,
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
        write_big(&mid.join("medium1.bin"), s.medium)?;
        write_big(&top.join("medium2.bin"), s.medium)?;
        let tarball = base.join("untar.tar");
        tar_of(bottom, "src", &tarball)?;
        Ok(Layers {
            lowers,
            tree: PathBuf::from("src"),
            big: PathBuf::from("big.bin"),
            big_size: s.big,
            tarball,
            files,
            generated: true,
        })
    }

    /// One given directory as the only lower; the tree is its top-level
    /// directory holding the most files, the big file its largest file.
    pub fn from_dir(dir: &Path, base: &Path) -> anyhow::Result<Layers> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--lower {}", dir.display()))?;
        let mut best_tree: Option<(usize, PathBuf)> = None;
        let mut big: Option<(u64, PathBuf)> = None;
        let mut files = 0;
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel = PathBuf::from(e.file_name());
            let mut n = 0;
            walk(&dir, &rel, &mut n, &mut big)?;
            files += n;
            if e.file_type()?.is_dir() && best_tree.as_ref().is_none_or(|(m, _)| n > *m) {
                best_tree = Some((n, rel));
            }
        }
        let Some((_, tree)) = best_tree else {
            bail!("--lower {}: no directory in it to work on", dir.display());
        };
        let Some((big_size, big)) = big else {
            bail!("--lower {}: no regular file in it", dir.display());
        };
        let tarball = base.join("untar.tar");
        tar_of(&dir, &tree.to_string_lossy(), &tarball)?;
        Ok(Layers {
            lowers: vec![dir],
            tree,
            big,
            big_size,
            tarball,
            files,
            generated: false,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {} over {} layer(s); big file {} MiB",
            self.files,
            if self.generated { "files" } else { "entries" },
            self.lowers.len(),
            self.big_size / MIB
        )
    }

    /// A plain directory holding the merged view (for the `dir` target):
    /// copied out of a read-only kernel overlayfs of the layers.
    pub fn merged_copy(&self, base: &Path) -> anyhow::Result<PathBuf> {
        let out = base.join("merged");
        fs::create_dir(&out)?;
        if let [only] = self.lowers.as_slice() {
            run_cmd(Command::new("cp").arg("-a").arg(only.join(".")).arg(&out))?;
            return Ok(out);
        }
        let mnt = base.join("merged-src");
        fs::create_dir(&mnt)?;
        run_cmd(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={}",
                    super::target::join_lowers(&self.lowers)?
                ))
                .arg(&mnt),
        )
        .context("mounting the layers to copy the merged view for the dir target")?;
        let copied = run_cmd(Command::new("cp").arg("-a").arg(mnt.join(".")).arg(&out));
        super::tmp::remove_tree(&mnt);
        copied?;
        Ok(out)
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
