//! Helpers for the layer store tests (`tests/store_*.rs`): the binary, real
//! tools (umoci, skopeo, busybox), fixture images, tree comparison, kernel
//! overlayfs mounts as the reference for merging layers.
#![allow(dead_code)]

pub mod fuzz;
pub mod hostile;
pub mod rawtar;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use super::{bin, under_ci as ci};

/// True when running as root. Under CI=true a missing privilege fails the test.
pub fn need_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        !ci(),
        "{test}: needs root, and CI=true: failing instead of skipping"
    );
    eprintln!("{test}: SKIPPED (needs root)");
    false
}

/// True when `tool` is on PATH. Under CI=true a missing tool fails the test.
pub fn need_tools(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            assert!(
                !ci(),
                "{test}: needs {t} (installed by .ci/run), and CI=true: failing instead of skipping"
            );
            eprintln!("{test}: SKIPPED (needs {t})");
            return false;
        }
    }
    true
}

/// Run a command; panic with its output unless it succeeds. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-ec").arg(script))
}

/// A temporary directory with a store in it.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("store-test")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    /// `unionmount ARGS` with this store; the raw output.
    pub fn um_out<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        Command::new(bin())
            .args(args)
            .env("UNIONMOUNT_STORE", self.store())
            .output()
            .expect("running unionmount")
    }
    /// `unionmount ARGS`, which must succeed; its stdout.
    pub fn um<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.um_out(args);
        assert!(
            out.status.success(),
            "unionmount {:?} failed:\n{}{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// `unionmount ARGS`, which must fail with one line on stderr; that line.
    pub fn um_fail<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.um_out(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "expected failure, got success: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "expected one line of error, got:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        err
    }
    /// Make the (empty) store, as a command that writes an image would;
    /// other commands do not make one.
    pub fn init_store(&self) {
        drop(layerstore::Store::open(&self.store()).expect("making the store"));
    }
    /// The id `image ls` shows for the image named `name` (12 hex digits).
    pub fn short_id(&self, name: &str) -> String {
        let v: layerstore::serde_json::Value =
            layerstore::serde_json::from_str(&self.um(&["image", "ls", "--format", "json"]))
                .expect("image ls JSON");
        let id = v
            .as_array()
            .expect("a list")
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no image {name} in {v}"))["id"]
            .as_str()
            .expect("id")
            .to_string();
        id["sha256:".len().."sha256:".len() + 12].to_string()
    }
    /// Layer directories of an image, bottom first (from `image inspect`).
    pub fn layer_dirs(&self, image: &str) -> Vec<PathBuf> {
        let v: layerstore::serde_json::Value =
            layerstore::serde_json::from_str(&self.um(&["image", "inspect", image]))
                .expect("inspect JSON");
        v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| PathBuf::from(l["dir"].as_str().expect("dir")))
            .collect()
    }
    /// The `image ls --format json` entries.
    pub fn images(&self) -> Vec<layerstore::serde_json::Value> {
        let ls = self.um(&["image", "ls", "--format", "json"]);
        match layerstore::serde_json::from_str(&ls) {
            Ok(layerstore::serde_json::Value::Array(v)) => v,
            _ => panic!("image ls JSON is not a list: {ls}"),
        }
    }
    /// The `image ls --format json` entry of the image named `name`.
    pub fn listed(&self, name: &str) -> layerstore::serde_json::Value {
        let all = self.images();
        all.iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no image {name} in {all:?}"))
    }
    /// Names of the files in the store's `partial/` (unfinished downloads).
    pub fn partial_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store().join("partial"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    /// `image fsck` finds nothing wrong (`what` says when, for the message).
    pub fn assert_fsck_clean(&self, what: &str) {
        let out = self.um(&["image", "fsck"]);
        assert!(out.contains("clean"), "{what}: {out}");
    }
    /// No image, no blob, no layer directory in the store.
    pub fn assert_nothing_stored(&self, what: &str) {
        assert_eq!(self.contents(), (vec![], vec![]), "{what}: nothing stored");
        assert!(self.images().is_empty(), "{what}: {:?}", self.images());
    }
    /// Mount `image` with `unionmount image mount` and compare with `want`
    /// (`label` names the mount point).
    pub fn assert_mounted_tree(&self, image: &str, want: &Path, label: &str) {
        let mnt = self.path().join(format!("mnt-{label}"));
        fs::create_dir_all(&mnt).expect("mkdir mount point");
        self.um(&["image", "mount", image, &mnt.display().to_string()]);
        let _m = UnionMount(mnt.clone());
        assert_same_tree(&mnt, want);
    }
    /// Names of the store's blobs and layers (to check that nothing was stored).
    pub fn contents(&self) -> (Vec<String>, Vec<String>) {
        let names = |d: PathBuf| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(d)
                .map(|r| {
                    r.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        (
            names(self.store().join("blobs/sha256")),
            names(self.store().join("layers")),
        )
    }
}

/// A busybox-static root filesystem at `dir`.
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed");
    fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    // Another test thread that forks while the copy is open for writing holds
    // it open until its exec: running the copy can fail with "Text file busy"
    // for that moment.
    for attempt in 0.. {
        let mut c = Command::new("chroot");
        c.arg(dir).args(["/bin/busybox", "--install", "-s"]);
        let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Text file busy") && attempt < 20,
            "{c:?} failed ({}): {err}",
            out.status
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fs::write(dir.join("etc/hostname"), "test\n").expect("write");
}

/// The fixture of CLIENTS.md: OCI layout `oci` with v1 (busybox rootfs plus
/// some files), v2 (deletes a file and a directory, replaces a directory by a
/// file), v3 (a hand-made opaque layer); `ref` is `umoci unpack` of v3.
pub struct Fixture {
    pub oci: PathBuf,
    pub reference: PathBuf,
}

pub fn umoci_fixture(t: &Path) -> Fixture {
    fixture_with(t, true)
}

/// `umoci_fixture` without its user xattr and without the directory v2
/// replaces by a file: umoci writes that as the file followed by a
/// whiteout under it (`replaced`, `replaced/.wh.r`), which podman 4.3
/// refuses to apply ("unlinkat /replaced/r: not a directory") even
/// straight from umoci's own layout.
pub fn podman_fixture(t: &Path) -> Fixture {
    fixture_with(t, false)
}

fn fixture_with(t: &Path, full: bool) -> Fixture {
    let (xattr, replace) = if full {
        (
            "setfattr -n user.note -v hello b/rootfs/some/file 2>/dev/null || true",
            "rm -rf b/rootfs/replaced && echo now-a-file > b/rootfs/replaced",
        )
    } else {
        (":", ":")
    };
    let rootfs = t.join("rootfs");
    busybox_rootfs(&rootfs);
    sh(&format!(
        r#"cd {t}
        umoci init --layout oci
        umoci new --image oci:empty
        umoci unpack --image oci:empty b >/dev/null
        cp -a rootfs/. b/rootfs/
        mkdir -p b/rootfs/some/dir b/rootfs/gone/sub b/rootfs/replaced
        echo hi > b/rootfs/some/file
        echo x > b/rootfs/some/dir/x
        echo g > b/rootfs/gone/sub/g
        echo r > b/rootfs/replaced/r
        ln b/rootfs/some/file b/rootfs/some/hardlink
        ln -s ../some/file b/rootfs/etc/symlink
        mkfifo b/rootfs/tmp/fifo
        chown 1000:1001 b/rootfs/some/dir/x
        chmod 4750 b/rootfs/some/dir/x
        {xattr}
        umoci repack --image oci:v1 b
        rm -rf b
        umoci unpack --image oci:v1 b >/dev/null
        rm b/rootfs/some/file
        rm -rf b/rootfs/gone
        {replace}
        umoci repack --image oci:v2 b
        mkdir -p l3/some/dir
        : > l3/some/dir/.wh..wh..opq
        echo new > l3/some/dir/y
        tar -C l3 --numeric-owner -cf l3.tar some
        umoci raw add-layer --image oci:v2 --tag v3 l3.tar
        umoci unpack --image oci:v3 ref >/dev/null
        "#,
        t = t.display()
    ));
    Fixture {
        oci: t.join("oci"),
        reference: t.join("ref/rootfs"),
    }
}

/// Description of every object under `root`: type, mode, owner, size,
/// content hash or link target, user xattrs.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read_dir").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "symlink -> {}",
                fs::read_link(&p).expect("readlink").display()
            )
        } else if ft.is_file() {
            let mut h = String::new();
            let mut f = fs::File::open(&p).expect("open");
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).expect("read");
            h.push_str(&format!("file {} bytes {:x}", buf.len(), simple_hash(&buf)));
            h
        } else if ft.is_fifo() {
            "fifo".into()
        } else if ft.is_char_device() {
            format!("char {}", m.rdev())
        } else {
            "other".into()
        };
        let mut xattrs = Vec::new();
        if !ft.is_symlink()
            && let Ok(list) = xattr_list(&p)
        {
            xattrs = list
                .into_iter()
                .filter(|n| n.starts_with("user."))
                .collect();
        }
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.insert(
            rel,
            format!(
                "{what} mode={mode:o} owner={}:{} xattrs={xattrs:?}",
                m.uid(),
                m.gid()
            ),
        );
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

fn xattr_list(p: &Path) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::listxattr(p, &mut buf[..])?;
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn simple_hash(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart in a test.
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Assert two trees are the same, listing the differences.
pub fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (tree(got), tree(want));
    let mut diffs = Vec::new();
    for (k, v) in &w {
        match g.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(gv) if gv != v => diffs.push(format!("differs {k}: got {gv}, want {v}")),
            _ => {}
        }
    }
    for (k, v) in &g {
        if !w.contains_key(k) {
            diffs.push(format!("extra {k}: {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} vs {}:\n{}",
        got.display(),
        want.display(),
        diffs.join("\n")
    );
}

/// A unionmount mount, unmounted on drop.
pub struct UnionMount(pub PathBuf);

impl Drop for UnionMount {
    fn drop(&mut self) {
        let ok = Command::new(bin())
            .arg("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            unmount(&self.0);
        }
    }
}

/// A kernel overlayfs mount, unmounted on drop.
pub struct OverlayMount {
    pub path: PathBuf,
}

impl OverlayMount {
    /// Mount `lowers` (bottom first), optionally with an upper and work dir.
    pub fn new(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, mnt: &Path) -> OverlayMount {
        Self::with_options(lowers, upper, mnt, "")
    }

    /// The same with extra mount options (`,metacopy=on`…).
    pub fn with_options(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        mnt: &Path,
        extra: &str,
    ) -> OverlayMount {
        fs::create_dir_all(mnt).expect("mkdir mnt");
        let l: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let mut opts = format!("lowerdir={}", l.join(":"));
        match upper {
            Some((u, w)) => opts.push_str(&format!(
                ",upperdir={},workdir={},redirect_dir=on",
                u.display(),
                w.display()
            )),
            None => opts.push_str(",ro"),
        }
        opts.push_str(extra);
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt));
        OverlayMount {
            path: mnt.to_path_buf(),
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// Unmount, retrying while the mount is busy, lazily as a last resort.
pub fn unmount(path: &Path) {
    for _ in 0..20 {
        let quiet = |c: &mut Command| c.stderr(std::process::Stdio::null()).status();
        if quiet(Command::new("umount").arg(path)).is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(path).status();
}

/// Every path under `dir` (to check nothing was written somewhere).
pub fn all_paths(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if dir.is_dir() {
        for (k, _) in tree(dir) {
            out.push(k);
        }
    }
    out
}
