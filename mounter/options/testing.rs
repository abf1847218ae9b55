//! Fixtures shared by the option tests: a tree of directories to mount and
//! short ways to parse a command line, and the property tests' settings.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;

use proptest::test_runner::Config as ProptestConfig;
use tempfile::TempDir;

use super::{Branch, MountRequest, parse_mount_args};

/// A temporary tree with lowers, an upper, a workdir and a mountpoint.
pub(super) struct Tree {
    _tmp: TempDir,
    pub(super) root: PathBuf,
}

impl Tree {
    pub(super) fn new() -> Tree {
        let tmp = TempDir::new().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        for dir in ["l1", "l2", "u", "w", "mnt"] {
            fs::create_dir(root.join(dir)).unwrap();
        }
        Tree { _tmp: tmp, root }
    }

    pub(super) fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Absolute path as a string, for building command lines.
    pub(super) fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }

    pub(super) fn overlay_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.s("l1"),
            self.s("l2"),
            self.s("u"),
            self.s("w")
        )
    }
}

pub(super) fn args(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

pub(super) fn parse(words: &[&str]) -> Result<MountRequest, String> {
    parse_mount_args(&args(words))
}

pub(super) fn ro(path: PathBuf) -> Branch {
    Branch {
        path,
        writable: false,
    }
}

pub(super) fn rw(path: PathBuf) -> Branch {
    Branch {
        path,
        writable: true,
    }
}

pub(super) fn err(words: &[&str]) -> String {
    parse(words).unwrap_err()
}

pub(super) fn overlay_request(t: &Tree) -> MountRequest {
    MountRequest {
        mountpoint: t.p("mnt"),
        branches: vec![rw(t.p("u")), ro(t.p("l1")), ro(t.p("l2"))],
        workdir: Some(t.p("w")),
        cow: true,
        ..MountRequest::default()
    }
}

/// Proptest settings: `UNIONMOUNT_FUZZ_CASES` cases if set, else
/// `ci_cases`; no failure files written into the tree.
pub(super) fn config(ci_cases: u32) -> ProptestConfig {
    let cases = std::env::var("UNIONMOUNT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
