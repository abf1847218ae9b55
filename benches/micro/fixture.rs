//! Small trees for the benchmarks: files, whiteouts and opaque directories in
//! kernel overlayfs form as root, in the OCI `.wh.` form otherwise (both are
//! read by the union and the store).

use std::path::Path;

use rustix::fs::{FileType, Mode, XattrFlags};

/// Full-size fixtures under `cargo bench` (which passes `--bench`); a tenth
/// of the files when `cargo test` runs each benchmark once to see it work.
pub fn scaled(n: usize) -> usize {
    if std::env::args().any(|a| a == "--bench") {
        n
    } else {
        (n / 10).max(1)
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A temporary directory for one fixture.
pub fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("unionmount-bench-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("{what}: making a temporary directory: {e}"))
}

/// A file of `len` bytes (varied by `seed`, so content differs between files).
pub fn file(path: &Path, len: usize, seed: usize) {
    let byte = b'a' + (seed % 26) as u8;
    std::fs::write(path, vec![byte; len])
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

/// Hide `name` in `parent` from the layers below.
pub fn whiteout(parent: &Path, name: &str) {
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            parent.join(name),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap_or_else(|e| panic!("whiteout {name} in {}: {e}", parent.display()));
    } else {
        file(&parent.join(format!(".wh.{name}")), 0, 0);
    }
}

/// Make `path` (a directory) hide the same directory in the layers below.
pub fn opaque(path: &Path) {
    if is_root() {
        rustix::fs::setxattr(path, "trusted.overlay.opaque", b"y", XattrFlags::empty())
            .unwrap_or_else(|e| panic!("opaque {}: {e}", path.display()));
    } else {
        file(&path.join(".wh..wh..opq"), 0, 0);
    }
}
