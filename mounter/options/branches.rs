//! Branches from the path values: the overlay syntax (lowerdir, upperdir,
//! workdir) or the unionfs-fuse one (`BRANCH=MODE:...`), backslash escapes
//! removed, every path made absolute and canonical.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::params::Options;
use super::{Branch, MountRequest, error_text, os_path};

pub(super) fn build_request(
    mut opts: Options,
    positionals: &[OsString],
    cwd: Option<&Path>,
) -> Result<MountRequest, String> {
    let chroot = match &opts.chroot {
        Some(raw) => Some(resolve(cwd, "chroot", &os_path(&unescape(raw)))?),
        None => None,
    };
    let paths = Resolver { cwd, chroot };
    let mountpoint = if opts.lowerdir.is_some() {
        overlay_branches(&mut opts, positionals, &paths)?
    } else {
        unionfs_branches(&mut opts, positionals, &paths)?
    };
    let mut req = opts.req;
    req.mountpoint = resolve(cwd, "mountpoint", Path::new(mountpoint))?;
    let writable = req.branches.iter().any(|b| b.writable);
    req.cow = writable && (opts.cow || req.workdir.is_some());
    req.read_only = opts.ro || !writable;
    Ok(req)
}

/// The overlay syntax: `[SRC] MNT`, branches from lowerdir/upperdir/workdir.
/// Returns the mountpoint argument.
fn overlay_branches<'a>(
    opts: &mut Options,
    positionals: &'a [OsString],
    paths: &Resolver,
) -> Result<&'a OsStr, String> {
    let mountpoint = match positionals {
        [] => return Err("no mountpoint given".into()),
        [mnt] | [_, mnt] => mnt,
        _ => return Err(too_many_positionals(positionals)),
    };
    let lowers = split_path_list("lowerdir", opts.lowerdir.as_deref().unwrap_or_default())?;
    if lowers.is_empty() {
        return Err("no lowerdir given".into());
    }
    match (&opts.upperdir, &opts.workdir) {
        (Some(_), None) => return Err("upperdir given without workdir".into()),
        (None, Some(_)) => return Err("workdir given without upperdir".into()),
        (Some(upper), Some(work)) => {
            let upper = paths.branch("upperdir", &unescape(upper))?;
            opts.req.branches.push(Branch {
                path: upper,
                writable: true,
            });
            opts.req.workdir = Some(paths.branch("workdir", &unescape(work))?);
        }
        (None, None) => {}
    }
    for lower in lowers {
        let path = paths.branch("lowerdir", &lower)?;
        opts.req.branches.push(Branch {
            path,
            writable: false,
        });
    }
    Ok(mountpoint)
}

/// The unionfs-fuse syntax: `BRANCH[=MODE]:BRANCH[=MODE]... MNT`.
/// A branch without `=MODE` is read-only, as in unionfs-fuse: nothing is written
/// unless a branch says `=RW`. Modes are case-insensitive.
fn unionfs_branches<'a>(
    opts: &mut Options,
    positionals: &'a [OsString],
    paths: &Resolver,
) -> Result<&'a OsStr, String> {
    if opts.upperdir.is_some() || opts.workdir.is_some() {
        return Err("no lowerdir given".into());
    }
    let (spec, mountpoint) = match positionals {
        [] | [_] => return Err("no lowerdir and no branches given".into()),
        [spec, mnt] => (spec, mnt),
        _ => return Err(too_many_positionals(positionals)),
    };
    for entry in split_unescaped(spec.as_bytes(), b':') {
        let branch = parse_unionfs_branch(&entry, paths)?;
        opts.req.branches.push(branch);
    }
    Ok(mountpoint)
}

fn too_many_positionals(positionals: &[OsString]) -> String {
    let words: Vec<_> = positionals.iter().map(|p| p.to_string_lossy()).collect();
    format!("more than one mountpoint given: {}", words.join(" "))
}

/// One `PATH[=RW|=RO]` entry, still escaped; the mode follows the last unescaped `=`.
fn parse_unionfs_branch(entry: &[u8], paths: &Resolver) -> Result<Branch, String> {
    let mut parts = split_unescaped(entry, b'=');
    let mode = if parts.len() > 1 { parts.pop() } else { None };
    let raw_path = parts.join(&b'=');
    let path = unescape(&raw_path);
    if path.is_empty() {
        return Err(format!(
            "empty branch in '{}'",
            String::from_utf8_lossy(entry)
        ));
    }
    let writable = match mode.as_deref().map(unescape) {
        None => false,
        Some(m) if m.eq_ignore_ascii_case(b"rw") => true,
        Some(m) if m.eq_ignore_ascii_case(b"ro") => false,
        Some(m) => {
            return Err(format!(
                "branch {}: unknown mode '{}' (expected RW or RO)",
                os_path(&path).display(),
                String::from_utf8_lossy(&m)
            ));
        }
    };
    let path = paths.branch("branch", &path)?;
    Ok(Branch { path, writable })
}

/// Splits at unescaped `sep`, keeping escapes intact for a later `unescape`.
fn split_unescaped(bytes: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut iter = bytes.iter().copied();
    while let Some(c) = iter.next() {
        if c == b'\\' {
            cur.push(c);
            cur.extend(iter.next());
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Removes backslash escapes the way the kernel's overlay does: `\X` is `X`.
pub(super) fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(c) = iter.next() {
        if c == b'\\' {
            out.extend(iter.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// A `:`-separated path list such as lowerdir's, unescaped. An empty entry is an
/// error: the kernel gives `::` a meaning (data-only layers) we do not support.
pub(super) fn split_path_list(what: &str, raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Vec<u8>> = split_unescaped(raw, b':')
        .iter()
        .map(|e| unescape(e))
        .collect();
    if entries.iter().any(Vec::is_empty) {
        return Err(format!(
            "{what}: empty path in '{}'",
            String::from_utf8_lossy(raw)
        ));
    }
    Ok(entries)
}

/// Turns branch paths into absolute canonical ones. With unionfs-fuse's
/// `chroot=DIR`, branch and work paths are taken inside DIR (symlinks in them are
/// still resolved against the real root, as we never chroot).
struct Resolver<'a> {
    cwd: Option<&'a Path>,
    chroot: Option<PathBuf>,
}

impl Resolver<'_> {
    fn branch(&self, what: &str, unescaped: &[u8]) -> Result<PathBuf, String> {
        let given = os_path(unescaped);
        if given.as_os_str().is_empty() {
            return Err(format!("{what}: empty path"));
        }
        match &self.chroot {
            Some(root) => {
                let inside = given.strip_prefix("/").unwrap_or(&given);
                canonical(&root.join(inside), what, &given)
            }
            None => resolve(self.cwd, what, &given),
        }
    }
}

/// Absolute, canonical form of a user-given path; errors name it as typed.
fn resolve(cwd: Option<&Path>, what: &str, given: &Path) -> Result<PathBuf, String> {
    if given.as_os_str().is_empty() {
        return Err(format!("{what}: empty path"));
    }
    if given.is_absolute() {
        return canonical(given, what, given);
    }
    match cwd {
        Some(cwd) => canonical(&cwd.join(given), what, given),
        None => Err(format!(
            "{what} {}: relative path, but the current directory is gone",
            given.display()
        )),
    }
}

fn canonical(path: &Path, what: &str, shown: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(path)
        .map_err(|e| format!("{what} {}: {}", shown.display(), error_text(&e)))
}

#[cfg(test)]
mod tests {
    use crate::options::parse::parse_with_cwd;
    use crate::options::testing::*;
    use std::fs;

    // --- syntaxes -----------------------------------------------------------

    #[test]
    fn overlay_syntax_puts_upper_first() {
        let t = Tree::new();
        let req = parse(&["-o", &t.overlay_opts(), &t.s("mnt")]).unwrap();
        assert_eq!(
            req.branches,
            vec![rw(t.p("u")), ro(t.p("l1")), ro(t.p("l2"))]
        );
        assert_eq!(req.workdir, Some(t.p("w")));
        assert_eq!(req.mountpoint, t.p("mnt"));
        assert!(req.cow);
        assert!(!req.read_only);
        assert!(!req.foreground && !req.debug);
    }
    #[test]
    fn overlay_without_upper_is_read_only() {
        let t = Tree::new();
        let opts = format!("lowerdir={}:{}", t.s("l1"), t.s("l2"));
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert_eq!(req.branches, vec![ro(t.p("l1")), ro(t.p("l2"))]);
        assert_eq!(req.workdir, None);
        assert!(req.read_only);
        assert!(!req.cow);
    }
    #[test]
    fn unionfs_syntax_with_modes() {
        let t = Tree::new();
        let spec = format!("{}=RW:{}=ro:{}", t.s("u"), t.s("l1"), t.s("l2"));
        let req = parse(&["-o", "cow", &spec, &t.s("mnt")]).unwrap();
        assert_eq!(
            req.branches,
            vec![rw(t.p("u")), ro(t.p("l1")), ro(t.p("l2"))]
        );
        assert!(req.cow);
        assert!(!req.read_only);
        assert_eq!(req.workdir, None);
    }

    #[test]
    fn unionfs_syntax_without_cow_or_writable_branch() {
        let t = Tree::new();
        let spec = format!("{}=rw:{}=RO", t.s("u"), t.s("l1"));
        let req = parse(&[&spec, &t.s("mnt")]).unwrap();
        assert!(!req.cow);
        assert!(!req.read_only);
        // cow with nothing writable has nowhere to copy to.
        let spec = format!("{}:{}=Ro", t.s("l1"), t.s("l2"));
        let req = parse(&["-o", "cow", &spec, &t.s("mnt")]).unwrap();
        assert!(!req.cow);
        assert!(req.read_only);
    }

    #[test]
    fn unionfs_unknown_mode() {
        let t = Tree::new();
        let spec = format!("{}=RX", t.s("l1"));
        assert_eq!(
            err(&[&spec, &t.s("mnt")]),
            format!(
                "branch {}: unknown mode 'RX' (expected RW or RO)",
                t.s("l1")
            )
        );
    }

    #[test]
    fn unionfs_escaped_equals_and_colon() {
        let t = Tree::new();
        fs::create_dir(t.p("a=b:c")).unwrap();
        let spec = format!("{}/a\\=b\\:c=RW", t.s(""));
        let req = parse(&[&spec, &t.s("mnt")]).unwrap();
        assert_eq!(req.branches, vec![rw(t.p("a=b:c"))]);
    }
    #[test]
    fn chroot_makes_branches_relative_to_it() {
        let t = Tree::new();
        let opts = format!("cow,chroot={}", t.s(""));
        let req = parse(&["-o", &opts, "/u=RW:l1", &t.s("mnt")]).unwrap();
        assert_eq!(req.branches, vec![rw(t.p("u")), ro(t.p("l1"))]);
        let opts = format!("chroot={},lowerdir=/l1,upperdir=u,workdir=/w", t.s(""));
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert_eq!(req.branches, vec![rw(t.p("u")), ro(t.p("l1"))]);
        assert_eq!(req.workdir, Some(t.p("w")));
    }
    // --- escapes, relative and symlinked paths, empty options ---------------

    #[test]
    fn lowerdir_escapes() {
        let t = Tree::new();
        for dir in ["a:b", "c\\d", "e,f"] {
            fs::create_dir(t.p(dir)).unwrap();
        }
        let opts = format!("lowerdir={0}/a\\:b:{0}/c\\\\d:{0}/e\\,f", t.root.display());
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert_eq!(
            req.branches,
            vec![ro(t.p("a:b")), ro(t.p("c\\d")), ro(t.p("e,f"))]
        );
    }
    #[test]
    fn relative_and_symlinked_lowerdirs_become_canonical() {
        let t = Tree::new();
        fs::create_dir(t.p("l")).unwrap();
        std::os::unix::fs::symlink("../l1", t.p("l/ID1")).unwrap();
        std::os::unix::fs::symlink(t.p("l2"), t.p("l/ID2")).unwrap();
        let opts = "lowerdir=l/ID1:l/ID2,upperdir=./u,workdir=w";
        let req = parse_with_cwd(&args(&["-o", opts, "mnt"]), Some(&t.root)).unwrap();
        assert_eq!(
            req.branches,
            vec![rw(t.p("u")), ro(t.p("l1")), ro(t.p("l2"))]
        );
        assert_eq!(req.workdir, Some(t.p("w")));
        assert_eq!(req.mountpoint, t.p("mnt"));
        let no_cwd = parse_with_cwd(&args(&["-o", opts, "mnt"]), None).unwrap_err();
        assert!(
            no_cwd.ends_with("relative path, but the current directory is gone"),
            "{no_cwd}"
        );
    }
    // --- parse errors -------------------------------------------------------

    #[test]
    fn mountpoint_errors() {
        let t = Tree::new();
        let opts = t.overlay_opts();
        assert_eq!(err(&["-o", &opts]), "no mountpoint given");
        let e = err(&["-o", &opts, "a", "b", &t.s("mnt")]);
        assert!(e.starts_with("more than one mountpoint given"), "{e}");
        let spec = t.s("l1");
        let e = err(&[&spec, "b", &t.s("mnt")]);
        assert!(e.starts_with("more than one mountpoint given"), "{e}");
        let missing = t.s("nope");
        assert_eq!(
            err(&["-o", &opts, &missing]),
            format!("mountpoint {missing}: No such file or directory")
        );
    }

    #[test]
    fn branch_errors() {
        let t = Tree::new();
        let mnt = t.s("mnt");
        assert_eq!(err(&[&mnt]), "no lowerdir and no branches given");
        assert_eq!(err(&[]), "no lowerdir and no branches given");
        let upper_only = format!("upperdir={},workdir={}", t.s("u"), t.s("w"));
        assert_eq!(err(&["-o", &upper_only, &mnt]), "no lowerdir given");
        assert_eq!(err(&["-o", "lowerdir=", &mnt]), "no lowerdir given");
        let e = err(&[
            "-o",
            &format!("lowerdir={}::{}", t.s("l1"), t.s("l2")),
            &mnt,
        ]);
        assert!(e.starts_with("lowerdir: empty path"), "{e}");
        let e = err(&[&format!("{}::{}", t.s("l1"), t.s("l2")), &mnt]);
        assert!(e.starts_with("empty branch"), "{e}");
        assert_eq!(
            err(&["-o", "lowerdir=/x/missing", &mnt]),
            "lowerdir /x/missing: No such file or directory"
        );
        assert_eq!(
            err(&["/x/missing=RW", &mnt]),
            "branch /x/missing: No such file or directory"
        );
    }

    #[test]
    fn upper_and_work_must_come_together() {
        let t = Tree::new();
        let mnt = t.s("mnt");
        let no_work = format!("lowerdir={},upperdir={}", t.s("l1"), t.s("u"));
        assert_eq!(
            err(&["-o", &no_work, &mnt]),
            "upperdir given without workdir"
        );
        let no_upper = format!("lowerdir={},workdir={}", t.s("l1"), t.s("w"));
        assert_eq!(
            err(&["-o", &no_upper, &mnt]),
            "workdir given without upperdir"
        );
        let missing = format!("{},upperdir=/x/gone", t.overlay_opts());
        assert_eq!(
            err(&["-o", &missing, &mnt]),
            "upperdir /x/gone: No such file or directory"
        );
    }
}
