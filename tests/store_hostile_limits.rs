//! Hostile layer tars against the store's limits: setuid files and device
//! nodes without privilege (kept only in the override xattr, never on disk),
//! compression bombs stopped before they fill the disk, and zstd frames that
//! ask for huge windows.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use support::store::hostile::Hostile;
use support::store::rawtar::RawTar;
use support::store::*;

// ---------------------------------------------------------------------------
// Setuid files and device nodes without privilege

fn xattr(p: &Path, name: &str) -> Option<String> {
    let mut v = [0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    Some(String::from_utf8_lossy(&v[..n]).into_owned())
}

fn special_tar() -> Vec<u8> {
    RawTar::default()
        .file_mode("suid", b"#!/bin/sh\n", 0o4755)
        .file_mode("sgid", b"x", 0o2711)
        .file_mode("all", b"x", 0o7777)
        .entry(b"sgid-dir", b'5', b"", 0o3775, b"")
        .device("null", b'3', b"0000001", b"0000003", 0o666)
        .device("sda", b'4', b"0000010", b"0000000", 0o660)
        .device("fifo", b'6', b"", b"", 0o644)
        .device("wh", b'3', b"0000000", b"0000000", 0o600)
        .finish()
}

#[test]
fn without_privilege_setuid_bits_and_devices_exist_only_in_the_override() {
    use layerstore::unpack::{UnpackOptions, unpack};
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    let sentinel = t.path().join("sentinel");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("f"), "s").unwrap();
    unpack(
        &special_tar()[..],
        &dest,
        UnpackOptions { privileged: false },
    )
    .unwrap();
    // On disk: no setuid, setgid or sticky bit anywhere, no device node.
    for e in fs::read_dir(&dest).unwrap().flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(
            m.mode() & 0o7000,
            0,
            "{:?} keeps a special mode bit on disk: {:o}",
            e.file_name(),
            m.mode()
        );
        let ft = m.file_type();
        assert!(
            !ft.is_char_device() && !ft.is_block_device(),
            "{:?} is a device on disk",
            e.file_name()
        );
    }
    // In the override xattr, for a rootless mount to show.
    let ov = |n: &str| xattr(&dest.join(n), "user.containers.override_stat");
    assert_eq!(ov("suid").as_deref(), Some("0:0:04755"));
    assert_eq!(ov("sgid").as_deref(), Some("0:0:02711"));
    assert_eq!(ov("all").as_deref(), Some("0:0:07777"));
    assert_eq!(ov("sgid-dir").as_deref(), Some("0:0:03775"));
    assert_eq!(ov("null").as_deref(), Some("0:0:0666:char-1-3"));
    assert_eq!(ov("sda").as_deref(), Some("0:0:0660:block-8-0"));
    assert_eq!(ov("wh").as_deref(), Some("0:0:0600:char-0-0"));
    assert!(fs::metadata(dest.join("null")).unwrap().is_file());
    assert!(
        fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(all_paths(&sentinel), vec!["f".to_string()]);

    // As root, the privileged form keeps them for real.
    if !need_root("setuid_as_root") {
        return;
    }
    let dest = t.path().join("layer-root");
    fs::create_dir(&dest).unwrap();
    unpack(
        &special_tar()[..],
        &dest,
        UnpackOptions { privileged: true },
    )
    .unwrap();
    let m = |n: &str| fs::symlink_metadata(dest.join(n)).unwrap();
    assert_eq!(m("suid").mode() & 0o7777, 0o4755);
    assert_eq!(m("sgid").mode() & 0o7777, 0o2711);
    assert!(m("null").file_type().is_char_device());
    assert_eq!(m("null").rdev(), rustix::fs::makedev(1, 3));
    assert!(m("sda").file_type().is_block_device());
    assert_eq!(
        xattr(&dest.join("suid"), "user.containers.override_stat"),
        None
    );
}

#[test]
fn a_rootless_store_drops_setuid_and_devices_from_disk() {
    // The same through the store and the CLI run as an ordinary user: the
    // imported layer has no setuid file and no device node on disk.
    if !need_root("rootless_setuid") || !need_tools("rootless_setuid", &["setpriv"]) {
        return;
    }
    let env = Env::new();
    let t = env.path();
    let home = t.join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(t.join("s.tar"), special_tar()).unwrap();
    sh(&format!(
        "chown -R 65534:65534 {} && chmod 755 {} && chmod 644 {}/s.tar",
        home.display(),
        t.display(),
        t.display()
    ));
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["image", "import"])
        .arg(t.join("s.tar"))
        .args(["--tag", "s"])
        .env_remove("UNIONMOUNT_STORE")
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = home.join("data/unionmount/layers");
    let l = fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let m = |n: &str| fs::symlink_metadata(l.join(n)).unwrap();
    assert_eq!(m("suid").mode() & 0o7000, 0);
    assert_eq!(m("suid").uid(), 65534);
    assert!(m("null").is_file());
    assert!(m("sda").is_file());
    assert_eq!(
        xattr(&l.join("suid"), "user.containers.override_stat").as_deref(),
        Some("0:0:04755")
    );
}

// ---------------------------------------------------------------------------
// Compression bombs

/// A tar stream made on the fly: `files` entries of `each` zero bytes (so a
/// bomb is never held in memory here).
struct ZeroTar {
    files: u64,
    each: u64,
    /// Declared size of the first file, when it should lie bigger.
    first_declared: Option<u64>,
    next: u64,
    header: Vec<u8>,
    zeros: u64,
}

impl ZeroTar {
    fn new(files: u64, each: u64) -> ZeroTar {
        ZeroTar {
            files,
            each,
            first_declared: None,
            next: 0,
            header: Vec::new(),
            zeros: 0,
        }
    }
}

impl std::io::Read for ZeroTar {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.header.is_empty() {
            let n = out.len().min(self.header.len());
            out[..n].copy_from_slice(&self.header[..n]);
            self.header.drain(..n);
            return Ok(n);
        }
        if self.zeros > 0 {
            let n = out
                .len()
                .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
            out[..n].fill(0);
            self.zeros -= n as u64;
            return Ok(n);
        }
        let i = self.next;
        self.next += 1;
        if i < self.files {
            let declared = match (i, self.first_declared) {
                (0, Some(d)) => d,
                _ => self.each,
            };
            let mut h = RawTar::block(format!("zero{i}").as_bytes(), b'0', b"", 0, 0o644);
            // Base-256, so that any size fits.
            h[124] = 0x80;
            h[125..128].fill(0);
            h[128..136].copy_from_slice(&declared.to_be_bytes());
            let mut t = RawTar::default();
            t.push(h);
            self.header = t.finish();
            self.header.truncate(512);
            self.zeros = self.each.div_ceil(512) * 512;
        } else if i == self.files {
            self.zeros = 1024;
        } else {
            return Ok(0);
        }
        self.read(out)
    }
}

/// `tool ARGS` reading `input` on stdin; its stdout.
fn compress(tool: &[&str], mut input: impl std::io::Read + Send + 'static) -> Vec<u8> {
    let mut child = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::copy(&mut input, &mut stdin).map(|_| ()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool:?} failed");
    out.stdout
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={size},mode=0755 tmpfs {}",
            at.display()
        ));
        Tmpfs(at.to_path_buf())
    }

    fn used(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

#[test]
fn compression_bombs_stop_before_filling_the_disk() {
    // The store on a 32 MiB tmpfs; layers that expand to 4 GiB, 64 MiB and
    // 48 MiB (8 files of 6 MiB, each of which would fit alone). Each is
    // refused with a message saying it would not fit, not with ENOSPC: the
    // bound (1/20 of the filesystem stays free) acted before the disk filled.
    if !need_root("compression_bombs") || !need_tools("compression_bombs", &["gzip", "zstd"]) {
        return;
    }
    let env = Env::new();
    let tmpfs = Tmpfs::new(&env.store(), "32m");
    env.init_store();
    let outside = env.path().join("bombs");
    fs::create_dir(&outside).unwrap();
    let mut huge = ZeroTar::new(1, 1 << 20);
    huge.first_declared = Some(4 << 30);
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        ("gzip-declared-4g", compress(&["gzip", "-1", "-c"], huge)),
        (
            "gzip-64m",
            compress(&["gzip", "-1", "-c"], ZeroTar::new(1, 64 << 20)),
        ),
        (
            "zstd-8x6m",
            compress(&["zstd", "-q", "-1", "-c"], ZeroTar::new(8, 6 << 20)),
        ),
    ];
    for (name, bomb) in bombs {
        assert!(bomb.len() < 1 << 20, "{name}: {} bytes", bomb.len());
        let p = outside.join(format!("{name}.tar"));
        fs::write(&p, &bomb).unwrap();
        let before = env.contents();
        let err = env.um_fail(&["image", "import", p.to_str().unwrap(), "--tag", name]);
        assert!(err.contains("would not fit"), "{name}: {err}");
        assert!(err.contains("keeps"), "{name}: {err}");
        assert!(!err.contains("No space left"), "{name}: {err}");
        assert_eq!(env.contents(), before, "{name}: stored something");
        env.um(&["image", "ls"]);
        assert!(
            tmpfs.used() < 4 << 20,
            "{name}: {} bytes left on the store's filesystem",
            tmpfs.used()
        );
    }

    // `image load` of a gzip docker-archive holding a 64 MiB file: staging
    // the archive's files is bounded the same way.
    let mut t = RawTar::default()
        .file("manifest.json", b"[]")
        .tweaked(b"layer.tar", b'0', |b| {
            b[124..136].copy_from_slice(b"00400000000\0")
        });
    t.data(&[]);
    let head = t.finish();
    let head = head[..head.len() - 1024].to_vec();
    let archive = compress(
        &["gzip", "-1", "-c"],
        std::io::Cursor::new(head).chain(std::io::repeat(0).take((64 << 20) + 1024)),
    );
    let p = outside.join("archive-bomb.tar.gz");
    fs::write(&p, &archive).unwrap();
    let before = env.contents();
    let err = env.um_fail(&["image", "load", p.to_str().unwrap()]);
    assert!(err.contains("would not fit"), "{err}");
    assert_eq!(env.contents(), before);
    env.um(&["image", "ls"]);
    assert!(tmpfs.used() < 4 << 20, "{} bytes left", tmpfs.used());
    drop(tmpfs);
}

/// A zstd frame (raw block) of `data` declaring a 2^`window_log` window.
fn zstd_frame(window_log: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
    let bh = ((data.len() as u32) << 3) | 1;
    f.extend_from_slice(&bh.to_le_bytes()[..3]);
    f.extend_from_slice(data);
    f
}

#[test]
fn zstd_frames_asking_for_huge_windows_are_refused() {
    // The decoder would allocate the window the frame asks for: 2 GiB here.
    let h = Hostile::new();
    let tar = RawTar::default().file("f", b"x").finish();
    // The same frame with a 1 MiB window is an ordinary layer.
    let res = h.import("zstd-small-window", zstd_frame(20, &tar));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    h.refused(
        "zstd-window",
        zstd_frame(31, &tar),
        "window larger than 128 MiB",
    );
}
