//! Load, part 2: an fsx-like file exerciser.
//!
//! `exerciser_on_a_lower_file`, `exerciser_on_an_upper_file`: an fsx-like
//! run of 5,000 reads, writes, truncates, fallocate (plain, KEEP_SIZE,
//! ZERO_RANGE), punched holes and MAP_SHARED mmap reads and writes (msync)
//! on one file, checked after every operation against a model, on kernel
//! overlayfs and on unionmount. The lower file is copied up by the first
//! write while a descriptor opened before stays open (so the file stays in
//! page-cache I/O); the upper file is opened fresh (FUSE passthrough).
//!
//! Long form: `UNIONMOUNT_LOAD_LONG=1 UNIONMOUNT_TEST_TIMEOUT=7200 cargo test
//! --test fs_exerciser -- --nocapture`: 100,000 operations per file and mount.
//! `UNIONMOUNT_LOAD_SEED=N` runs with another seed; `FS_LOAD_TRACE=1` prints
//! each operation as it goes.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use support::ops::{self, Rng};
use support::sys;
use support::{Both, Layer};

// ---------------------------------------------------------------------------
// 2. File exerciser.
// ---------------------------------------------------------------------------

const MAX_LEN: u64 = 256 * 1024;
const MAX_IO: u64 = 64 * 1024;

struct Exerciser {
    name: String,
    path: PathBuf,
    model: Vec<u8>,
    /// Opened read-only; for a lower file, before the first write copies it up.
    ro: Option<fs::File>,
    rw: Option<fs::File>,
    /// Keep `ro` for the whole run (the lower file: a descriptor from before
    /// the copy-up must see every later change).
    keep_ro: bool,
    /// A read-write descriptor was opened (a lower file is copied up).
    written: bool,
    rng: Rng,
    counts: BTreeMap<&'static str, u64>,
    history: VecDeque<String>,
}

fn map_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Exerciser {
    fn new(name: String, path: PathBuf, model: Vec<u8>, keep_ro: bool, seed: u64) -> Exerciser {
        let ro = Some(fs::File::open(&path).unwrap_or_else(|e| panic!("{name}: open: {e}")));
        Exerciser {
            name,
            path,
            model,
            ro,
            rw: None,
            keep_ro,
            written: false,
            rng: Rng::new(seed),
            counts: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }

    fn rw(&mut self) -> Result<&fs::File, String> {
        if self.rw.is_none() {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(map_err("open O_RDWR"))?;
            self.rw = Some(f);
            self.written = true;
        }
        Ok(self.rw.as_ref().unwrap())
    }

    /// A descriptor to read through: the read-only one or the read-write one.
    fn reader(&mut self) -> &fs::File {
        if self.ro.is_none() && self.rw.is_none() {
            self.ro = Some(fs::File::open(&self.path).unwrap());
        }
        let use_ro = self.rw.is_none() || (self.ro.is_some() && self.rng.percent(50));
        if use_ro {
            self.ro.as_ref().unwrap()
        } else {
            self.rw.as_ref().unwrap()
        }
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    /// Check `len` bytes at `off` read through every open descriptor.
    fn check_range(&self, off: u64, len: u64) -> Result<(), String> {
        let size = self.size();
        let end = (off + len).min(size);
        let want = if off < size {
            &self.model[off as usize..end as usize]
        } else {
            &[][..]
        };
        for (which, f) in [("read-only", &self.ro), ("read-write", &self.rw)] {
            let Some(f) = f else { continue };
            let st = f.metadata().map_err(map_err("fstat"))?;
            if st.len() != size {
                return Err(format!(
                    "fstat through the {which} descriptor: size {} (model {size})",
                    st.len()
                ));
            }
            let mut buf = vec![0u8; len as usize];
            let n = read_at_full(f, &mut buf, off).map_err(map_err("pread"))?;
            if buf[..n] != *want {
                let bad = buf[..n]
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(want.len()));
                return Err(format!(
                    "pread({off}, {len}) through the {which} descriptor: {n} bytes (model {}), \
                     first difference at offset {} (file {:?}, model {:?})",
                    want.len(),
                    off + bad as u64,
                    buf.get(bad),
                    want.get(bad)
                ));
            }
        }
        Ok(())
    }

    fn step(&mut self, i: u64) -> Result<(), String> {
        let size = self.size();
        let w = [15, 15, 6, 4, 4, 6, 4, 10, 10, 2, 3];
        let choice = self.rng.weighted(&w);
        let off = self.rng.below(MAX_LEN);
        let len = self.rng.range(1, MAX_IO + 1);
        let (kind, desc, check): (&'static str, String, Option<(u64, u64)>) = match choice {
            0 => {
                // mostly inside the file, sometimes past its end
                let off = self.rng.below(size + 4096);
                self.history.push_back(format!("{i}: read {off}+{len}"));
                ("read", format!("read {off}+{len}"), Some((off, len)))
            }
            1 => {
                let len = len.min(MAX_LEN - off).max(1);
                let data = ops::gen_data(self.rng.next_u64(), len as usize);
                let d = format!("write {off}+{len} (size {size})");
                self.history.push_back(format!("{i}: {d}"));
                self.rw()?
                    .write_all_at(&data, off)
                    .map_err(map_err("pwrite"))?;
                let end = (off + len) as usize;
                if end > self.model.len() {
                    self.model.resize(end, 0);
                }
                self.model[off as usize..end].copy_from_slice(&data);
                ("write", d, Some((off.saturating_sub(100), len + 200)))
            }
            2 => {
                let new = self.rng.below(MAX_LEN + 1);
                let d = format!("truncate {size} -> {new}");
                self.history.push_back(format!("{i}: {d}"));
                self.rw()?.set_len(new).map_err(map_err("ftruncate"))?;
                self.model.resize(new as usize, 0);
                let from = new.min(size).saturating_sub(100);
                ("truncate", d, Some((from, 4096 + 200)))
            }
            3..=6 => {
                let len = len.min(MAX_LEN - off).max(1);
                let (kind, mode) = match choice {
                    3 => ("fallocate", 0),
                    4 => ("fallocate keep-size", libc::FALLOC_FL_KEEP_SIZE),
                    5 => (
                        "punch hole",
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    ),
                    _ => {
                        if self.rng.percent(50) {
                            ("zero range", libc::FALLOC_FL_ZERO_RANGE)
                        } else {
                            (
                                "zero range keep-size",
                                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                            )
                        }
                    }
                };
                let d = format!("{kind} {off}+{len} (size {size})");
                self.history.push_back(format!("{i}: {d}"));
                let fd = self.rw()?.as_raw_fd();
                sys::fallocate(fd, mode, off as i64, len as i64).map_err(map_err(kind))?;
                let end = off + len;
                let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
                if !keep && end > size {
                    self.model.resize(end as usize, 0);
                }
                if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                    let zero_end = end.min(self.size());
                    if off < zero_end {
                        self.model[off as usize..zero_end as usize].fill(0);
                    }
                }
                (kind, d, Some((off.saturating_sub(100), len + 200)))
            }
            7 => {
                if size == 0 {
                    return self.bump("mmap read (empty file)");
                }
                let off = self.rng.below(size);
                let len = len.min(size - off);
                let d = format!("mmap read {off}+{len} (size {size})");
                self.history.push_back(format!("{i}: {d}"));
                // Kernel overlayfs maps the file a descriptor was opened on: a
                // lower file's read-only descriptor from before the copy-up
                // maps the old lower file (documented as non-standard). Map
                // through the read-write descriptor once there is one.
                let f = if self.keep_ro && self.written {
                    self.rw()?
                } else {
                    self.reader()
                };
                let got = mmap_read(f, size, off, len)?;
                let want = &self.model[off as usize..(off + len) as usize];
                if got != want {
                    let bad = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(format!(
                        "{d}: first difference at offset {} (mapped {}, model {})",
                        off + bad as u64,
                        got[bad],
                        want[bad]
                    ));
                }
                ("mmap read", d, None)
            }
            8 => {
                let len = len.min(MAX_LEN - off).max(1);
                let data = ops::gen_data(self.rng.next_u64(), len as usize);
                let d = format!("mmap write {off}+{len} (size {size})");
                self.history.push_back(format!("{i}: {d}"));
                let end = off + len;
                let f = self.rw()?;
                // As fsx does: a write past the end grows the file first.
                if end > size {
                    f.set_len(end)
                        .map_err(map_err("ftruncate before mmap write"))?;
                }
                let new_size = end.max(size);
                mmap_write(f, new_size, off, &data)?;
                self.model.resize(new_size as usize, 0);
                self.model[off as usize..end as usize].copy_from_slice(&data);
                ("mmap write", d, Some((off.saturating_sub(100), len + 200)))
            }
            9 => {
                self.history.push_back(format!("{i}: fsync"));
                self.reader().sync_all().map_err(map_err("fsync"))?;
                ("fsync", "fsync".into(), None)
            }
            _ => {
                self.history.push_back(format!("{i}: close and reopen"));
                self.rw = None;
                if !self.keep_ro {
                    self.ro = Some(fs::File::open(&self.path).map_err(map_err("reopen"))?);
                }
                (
                    "close/reopen",
                    "close and reopen".into(),
                    Some((0, MAX_LEN)),
                )
            }
        };
        if self.history.len() > 12 {
            self.history.pop_front();
        }
        if let Some((off, len)) = check {
            self.check_range(off, len)
                .map_err(|e| format!("after {desc}: {e}"))?;
        }
        if i % 64 == 63 {
            self.check_range(0, MAX_LEN + 1)
                .map_err(|e| format!("whole-file check after {desc}: {e}"))?;
        }
        self.bump(kind)
    }

    fn bump(&mut self, kind: &'static str) -> Result<(), String> {
        *self.counts.entry(kind).or_default() += 1;
        Ok(())
    }

    fn run(&mut self, n: u64) {
        eprintln!("{}: {n} operations", self.name);
        let trace = std::env::var_os("FS_LOAD_TRACE").is_some();
        for i in 0..n {
            if trace && let Some(last) = self.history.back() {
                eprintln!("{last}");
            }
            if let Err(e) = self.step(i) {
                panic!(
                    "{}: operation {i}: {e}\nlast operations:\n{}",
                    self.name,
                    self.history.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            }
        }
        // A fresh open reads the same.
        self.rw = None;
        if !self.keep_ro {
            self.ro = None;
        }
        let data = fs::read(&self.path).unwrap();
        assert!(
            data == self.model,
            "{}: a fresh open reads {} bytes that differ from the model ({} bytes)",
            self.name,
            data.len(),
            self.model.len()
        );
        eprintln!("{}: {n} operations: {:?}", self.name, self.counts);
    }
}

fn read_at_full(f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Map the first `size` bytes of `f` shared and read-only; copy `len` at `off`.
fn mmap_read(f: &fs::File, size: u64, off: u64, len: u64) -> Result<Vec<u8>, String> {
    // SAFETY: a fresh mapping of an open descriptor, read within its length,
    // unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap(PROT_READ, MAP_SHARED): {}",
                io::Error::last_os_error()
            ));
        }
        let s = std::slice::from_raw_parts((p as *const u8).add(off as usize), len as usize);
        let v = s.to_vec();
        libc::munmap(p, size as usize);
        Ok(v)
    }
}

/// Map the first `size` bytes of `f` shared and writable, write `data` at
/// `off`, msync(MS_SYNC), unmap.
fn mmap_write(f: &fs::File, size: u64, off: u64, data: &[u8]) -> Result<(), String> {
    // SAFETY: as above; the written range lies within the mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap(PROT_READ|PROT_WRITE, MAP_SHARED): {}",
                io::Error::last_os_error()
            ));
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off as usize), data.len());
        let r = libc::msync(p, size as usize, libc::MS_SYNC);
        let e = io::Error::last_os_error();
        libc::munmap(p, size as usize);
        if r != 0 {
            return Err(format!("msync: {e}"));
        }
    }
    Ok(())
}

fn exerciser_ops() -> u64 {
    if ops::load_long() { 100_000 } else { 5_000 }
}

/// A lower file with data and holes.
fn exerciser_lowers() -> Vec<Layer> {
    let a = support::pattern(70_000, 3);
    let b = support::pattern(30_000, 9);
    vec![
        Layer::new().dir("d"),
        Layer::new().sparse(
            "d/lower",
            200_000,
            &[(0, &a[..]), (170_000, &b[..])],
            support::Meta::default(),
        ),
    ]
}

#[test]
fn exerciser_on_a_lower_file() {
    let n = exerciser_ops();
    let Some(b) = Both::new(exerciser_lowers()) else {
        return;
    };
    let seed = ops::seed_from_env(ops::LOAD_SEED, 20_250_601);
    let mut model = vec![0u8; 200_000];
    model[..70_000].copy_from_slice(&support::pattern(70_000, 3));
    model[170_000..].copy_from_slice(&support::pattern(30_000, 9));
    for side in b.sides() {
        let name = format!("{}: lower file", side.name);
        let mut x = Exerciser::new(name, side.p("d/lower"), model.clone(), true, seed);
        x.run(n);
    }
    b.check_trees("after the exerciser");
}

#[test]
fn exerciser_on_an_upper_file() {
    let n = exerciser_ops();
    let Some(b) = Both::new(exerciser_lowers()) else {
        return;
    };
    let seed = ops::seed_from_env(ops::LOAD_SEED, 20_250_601) ^ 1;
    let model = support::pattern(100_000, 5);
    for side in b.sides() {
        let path = side.p("d/upper");
        fs::write(&path, &model).unwrap();
        let name = format!("{}: upper file", side.name);
        let mut x = Exerciser::new(name, path, model.clone(), false, seed);
        x.run(n);
    }
    b.check_trees("after the exerciser");
}

// ---------------------------------------------------------------------------
// 3. Memory and descriptors.
// ---------------------------------------------------------------------------
