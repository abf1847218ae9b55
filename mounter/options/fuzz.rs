//! Hostile command lines, generated: escapes, separators, quotes, `=`, `:`,
//! empty components, huge values, NUL and non-UTF-8 bytes. Errors are one
//! line; what parses names exactly the directories that were meant, never a
//! neighbour whose name is a prefix of theirs. `UNIONMOUNT_FUZZ_CASES` sets
//! the number of cases (CI: a few hundred per property, well under a second).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;

use super::params::{MAX_ID_END, overlap, parse_id_mappings, range_end};
use super::parse::parse_with_cwd;
use super::testing::config;
use super::{Branch, MAX_ERROR, OverlayOptions, UpperDirs, os_path, validate};

/// Bytes that mean something to one of the parsers.
const SPECIAL: &[u8] = b":,=\\\" \t\n'$*";

/// A directory name: ordinary letters mixed with every special byte,
/// non-UTF-8 bytes and control characters; never `/`, NUL, `.` or `..`.
fn dir_name() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => prop::sample::select(b"abc".to_vec()),
            3 => prop::sample::select(SPECIAL.to_vec()),
            1 => 0x80u8..=0xff,
            1 => 1u8..0x20,
        ],
        1..12,
    )
    .prop_filter("a real name", |n| {
        n != b"." && n != b".." && !n.contains(&b'/')
    })
}

/// Escape a path for a `-o` value: the option splitter's `,` and quote,
/// the list separator `:`, and the escape itself.
fn escape_o(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p {
        if matches!(b, b':' | b',' | b'\\' | b'"') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Escape a path for a unionfs-fuse branch spec (a positional word).
fn escape_spec(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p {
        if matches!(b, b':' | b'=' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn os(b: Vec<u8>) -> OsString {
    OsString::from_vec(b)
}

/// A tree holding each named directory and, as decoys, every prefix of
/// its name that ends just before a special byte (what a wrong split
/// would find).
fn tree_with(names: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::TempDir::new().unwrap();
    let root = fs::canonicalize(t.path()).unwrap();
    for n in names {
        let _ = fs::create_dir(root.join(os_path(n)));
        for (i, b) in n.iter().enumerate() {
            if i > 0 && SPECIAL.contains(b) && &n[..i] != b"." && &n[..i] != b".." {
                let _ = fs::create_dir(root.join(os_path(&n[..i])));
            }
        }
    }
    fs::create_dir_all(root.join("mnt")).unwrap();
    (t, root)
}

fn abs(root: &Path, name: &[u8]) -> Vec<u8> {
    root.join(os_path(name)).into_os_string().into_vec()
}

fn check_error(e: &str) -> Result<(), TestCaseError> {
    prop_assert!(!e.is_empty());
    prop_assert!(
        !e.chars().any(char::is_control),
        "error not on one line: {e:?}"
    );
    prop_assert!(e.chars().count() <= MAX_ERROR + 1, "error too long");
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// lowerdir (and upperdir/workdir) values escaped as documented name
    /// exactly the directories given, in order.
    #[test]
    fn escaped_overlay_paths_round_trip(
        names in vec(dir_name(), 3..7),
        with_upper in any::<bool>(),
        relative in any::<bool>(),
    ) {
        let (_t, root) = tree_with(&names);
        let (lowers, rest) = if with_upper {
            names.split_at(names.len() - 2)
        } else {
            (&names[..], &names[..0])
        };
        let path = |n: &[u8]| if relative { n.to_vec() } else { abs(&root, n) };
        let mut opt = b"lowerdir=".to_vec();
        let list: Vec<Vec<u8>> = lowers.iter().map(|n| escape_o(&path(n))).collect();
        opt.extend(list.join(&b':'));
        if let [u, w] = rest {
            opt.extend(b",upperdir=");
            opt.extend(escape_o(&path(u)));
            opt.extend(b",workdir=");
            opt.extend(escape_o(&path(w)));
        }
        opt.extend(b",,ro,");
        let args = vec![os(b"-o".to_vec()), os(opt), os(b"mnt".to_vec())];
        let req = parse_with_cwd(&args, Some(&root));
        // Names that collide (the same name twice) are fine; a wrong
        // split or escape shows up as a different directory.
        let req = req.map_err(|e| TestCaseError::fail(format!("{args:?}: {e}")))?;
        let mut want: Vec<Branch> = Vec::new();
        if let [u, _] = rest {
            want.push(Branch { path: root.join(os_path(u)), writable: true });
        }
        want.extend(lowers.iter().map(|n| Branch { path: root.join(os_path(n)), writable: false }));
        prop_assert_eq!(&req.branches, &want);
        if let [_, w] = rest {
            prop_assert_eq!(req.workdir, Some(root.join(os_path(w))));
        }
        prop_assert_eq!(&req.mountpoint, &root.join("mnt"));
    }

    /// The encoder's output, parsed with every path resolved: the branches
    /// are exactly the directories given (upper first), so are the workdir
    /// and the flags.
    #[test]
    fn encoded_overlay_options_round_trip(
        names in vec(dir_name(), 3..7),
        with_upper in any::<bool>(),
        flags in any::<[bool; 4]>(),
    ) {
        let (_t, root) = tree_with(&names);
        let dir = |n: &[u8]| root.join(os_path(n));
        let (lowers, rest) = if with_upper {
            names.split_at(names.len() - 2)
        } else {
            (&names[..], &names[..0])
        };
        let [userxattr, metacopy, volatile, read_only] = flags;
        let req = OverlayOptions {
            lowers: lowers.iter().map(|n| dir(n)).collect(),
            upper: match rest {
                [u, w] => Some(UpperDirs { upper: dir(u), work: dir(w) }),
                _ => None,
            },
            userxattr,
            metacopy,
            volatile,
            read_only,
        };
        let encoded = req.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let args = vec![os(b"-o".to_vec()), encoded, os(b"mnt".to_vec())];
        let got = parse_with_cwd(&args, Some(&root))
            .map_err(|e| TestCaseError::fail(format!("{args:?}: {e}")))?;
        let mut want: Vec<Branch> = Vec::new();
        if let Some(u) = &req.upper {
            want.push(Branch { path: u.upper.clone(), writable: true });
        }
        want.extend(req.lowers.iter().map(|l| Branch { path: l.clone(), writable: false }));
        prop_assert_eq!(&got.branches, &want);
        prop_assert_eq!(got.workdir, req.upper.map(|u| u.work));
        prop_assert_eq!(
            (got.userxattr, got.metacopy, got.volatile),
            (userxattr, metacopy, volatile)
        );
        prop_assert_eq!(got.read_only, read_only || !with_upper);
    }

    /// The unionfs-fuse spec, escaped as documented, with modes.
    #[test]
    fn escaped_branch_specs_round_trip(
        names in vec((dir_name(), prop::option::of(prop::sample::select(vec!["RW", "ro", "Rw", "RO"]))), 1..5),
    ) {
        let (_t, root) = tree_with(&names.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
        let spec: Vec<Vec<u8>> = names
            .iter()
            .map(|(n, mode)| {
                let mut e = escape_spec(&abs(&root, n));
                if let Some(m) = mode {
                    e.push(b'=');
                    e.extend(m.as_bytes());
                }
                e
            })
            .collect();
        let args = vec![os(b"-o".to_vec()), os(b"cow".to_vec()), os(spec.join(&b':')), os(b"mnt".to_vec())];
        let req = parse_with_cwd(&args, Some(&root))
            .map_err(|e| TestCaseError::fail(format!("{args:?}: {e}")))?;
        let want: Vec<Branch> = names
            .iter()
            .map(|(n, m)| Branch {
                path: root.join(os_path(n)),
                writable: m.is_some_and(|m| m.eq_ignore_ascii_case("rw")),
            })
            .collect();
        prop_assert_eq!(req.branches, want);
    }

    /// Anything at all: never a panic, errors on one line, and whatever
    /// parses names directories of the tree (the only ones its words can
    /// reach) and passes or fails validation with one line too.
    #[test]
    fn hostile_command_lines_fail_cleanly(
        names in vec(dir_name(), 1..4),
        words in vec(
            vec(
                prop_oneof![
                    6 => prop::sample::select(vec![
                        "lowerdir=", "upperdir=", "workdir=", "chroot=", "-o", "-o", ",", ":",
                        "=", "\\", "\\:", "\\,", "\"", "=RW", "=RO", "cow", "ro", "uidmapping=",
                        "gidmapping=0:", "squash_to_uid=", "timeout=", "max_write=", "fsync=",
                        "xattr_permissions=", "fsname=", "--", "-f", "-x", "mnt", "",
                        "4294967295", "-1", "1e400", "NaN",
                    ])
                    .prop_map(|s| s.as_bytes().to_vec()),
                    3 => (0usize..4).prop_map(|i| vec![b'@', b'0' + i as u8]),
                    1 => vec(any::<u8>(), 0..6),
                    1 => (1usize..5).prop_map(|k| vec![b'x'; k * 20000]),
                    1 => Just(vec![0u8]),
                ],
                0..8,
            ),
            0..6,
        ),
    ) {
        let (_t, root) = tree_with(&names);
        // @N stands for the Nth directory's name (escaped or not).
        let args: Vec<OsString> = words
            .iter()
            .map(|w| {
                let mut out = Vec::new();
                for part in w {
                    // Random bytes may spell "@" and another byte too;
                    // only @0..@3 are placeholders.
                    if let [b'@', d @ b'0'..=b'3'] = part[..] {
                        let n = &names[usize::from(d - b'0') % names.len()];
                        out.extend(if d % 2 == 0 { escape_o(n) } else { n.clone() });
                    } else {
                        out.extend(part);
                    }
                }
                os(out)
            })
            .collect();
        match parse_with_cwd(&args, Some(&root)) {
            Err(e) => check_error(&e)?,
            Ok(req) => {
                let inside = |p: &Path| p.starts_with(&root);
                for b in &req.branches {
                    prop_assert!(inside(&b.path), "{args:?}: branch {:?}", b.path);
                    prop_assert!(b.path.is_dir());
                }
                if let Some(w) = &req.workdir {
                    prop_assert!(inside(w), "{args:?}: workdir {w:?}");
                }
                prop_assert!(inside(&req.mountpoint), "{args:?}: mountpoint {:?}", req.mountpoint);
                if let Err(e) = validate(&req) {
                    check_error(&e)?;
                }
            }
        }
    }

    /// Id mappings: accepted ones are non-empty, in range and disjoint on
    /// both sides; everything else is refused on one line.
    #[test]
    fn id_mappings_are_checked(nums in vec(prop_oneof![0u64..10, 0u64..70000, Just(u64::from(u32::MAX)), Just(1u64 << 33)], 0..10), junk in prop::option::of("[-+: a]")) {
        let mut text: Vec<String> = nums.iter().map(u64::to_string).collect();
        if let Some(j) = junk {
            text.push(j);
        }
        let value = text.join(":");
        match parse_id_mappings("uidmapping", value.as_bytes()) {
            Err(e) => check_error(&e)?,
            Ok(maps) => {
                prop_assert!(!maps.is_empty());
                for (i, m) in maps.iter().enumerate() {
                    prop_assert!(m.count > 0);
                    prop_assert!(range_end(m.inside, m.count) <= MAX_ID_END);
                    prop_assert!(range_end(m.outside, m.count) <= MAX_ID_END);
                    for o in &maps[..i] {
                        prop_assert!(!overlap((m.inside, m.count), (o.inside, o.count)));
                        prop_assert!(!overlap((m.outside, m.count), (o.outside, o.count)));
                    }
                }
            }
        }
    }
}

#[test]
fn errors_quote_hostile_values_on_one_line() {
    let t = tempfile::TempDir::new().unwrap();
    let args: Vec<OsString> = vec![
        "-o".into(),
        "lowerdir=/no\nsuch\u{1b}[2J".into(),
        t.path().into(),
    ];
    let e = parse_with_cwd(&args, Some(t.path())).unwrap_err();
    assert_eq!(
        e,
        "lowerdir /no\\nsuch\\u{1b}[2J: No such file or directory"
    );
    let huge = format!("lowerdir={}", "y".repeat(100_000));
    let e =
        parse_with_cwd(&["-o".into(), huge.into(), t.path().into()], Some(t.path())).unwrap_err();
    assert!(
        e.chars().count() <= MAX_ERROR + 1 && e.ends_with('…'),
        "{e}"
    );
}
