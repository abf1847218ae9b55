//! `overlay.redirect`: where the lower content of a renamed directory (or
//! of a metacopy file) is. An absolute value (`/a/b`) names a path from the
//! root of every branch below; a relative one a name beside the lower
//! directories of the parent.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a redirect value names.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect<'a> {
    /// A path from each branch's root (the value without its leading `/`).
    Absolute(&'a Path),
    /// A path beside the parent's lower directories.
    Relative(&'a Path),
}

/// Read a redirect value.
pub fn parse(v: &[u8]) -> Redirect<'_> {
    let p = Path::new(OsStr::from_bytes(v));
    match p.strip_prefix("/") {
        Ok(abs) => Redirect::Absolute(abs),
        Err(_) => Redirect::Relative(p),
    }
}

/// The redirect naming `path` (relative to a branch root) from the root, as
/// a directory moved away from it records.
pub fn absolute(path: &[u8]) -> Vec<u8> {
    [b"/", path].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_values_start_with_a_slash() {
        assert_eq!(absolute(b"a/b"), b"/a/b");
        assert_eq!(absolute(b""), b"/");
        assert_eq!(parse(b"/a/b"), Redirect::Absolute(Path::new("a/b")));
        assert_eq!(parse(&absolute(b"x")), Redirect::Absolute(Path::new("x")));
        assert_eq!(parse(b"/"), Redirect::Absolute(Path::new("")));
    }

    #[test]
    fn other_values_are_relative() {
        assert_eq!(parse(b"b"), Redirect::Relative(Path::new("b")));
        assert_eq!(parse(b"a/b"), Redirect::Relative(Path::new("a/b")));
        assert_eq!(parse(b""), Redirect::Relative(Path::new("")));
    }

    #[test]
    fn paths_are_read_as_paths() {
        // Repeated and trailing slashes are one separator, as for any path.
        assert_eq!(parse(b"//a/"), Redirect::Absolute(Path::new("a")));
        let Redirect::Absolute(p) = parse(b"/a//b/") else {
            panic!("absolute");
        };
        assert_eq!(p.as_os_str().as_bytes(), b"a//b");
        assert_eq!(p.components().count(), 2);
    }
}
