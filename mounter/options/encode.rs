//! The other direction: an overlay-syntax `-o` value written from typed
//! parts, so no caller builds `lowerdir=a:b` by hand. Every path is escaped
//! the way `parse`, `params` and `branches` read it back, which is also the
//! kernel overlayfs rule (`\X` stands for `X`): `\` `:` `,` and `"` get a
//! backslash. Any other byte, non-UTF-8 included, goes in as it is.

use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// An overlay mount to ask for: encodes to
/// `lowerdir=L1:L2[,upperdir=U,workdir=W][,userxattr][,metacopy=on][,volatile][,ro]`.
///
/// ```ignore
/// let opts = OverlayOptions {
///     lowers: layers_top_first,
///     upper: Some(UpperDirs { upper, work }),
///     userxattr: in_user_namespace,
///     ..OverlayOptions::default()
/// }
/// .encode()?;
/// Command::new(exe).arg("-o").arg(&opts).arg(mountpoint);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// The read-only layers, top first; at least one.
    pub lowers: Vec<PathBuf>,
    /// The writable layer and its workdir; `None` mounts the lowers alone.
    pub upper: Option<UpperDirs>,
    /// `userxattr`: overlay xattrs in `user.overlay.*` (a user namespace).
    pub userxattr: bool,
    /// `metacopy=on`: chown, chmod and xattr changes copy up metadata only.
    pub metacopy: bool,
    /// `volatile`: no syncs to the upper.
    pub volatile: bool,
    /// `ro`: read-only even with an upper.
    pub read_only: bool,
}

/// An upper directory and the workdir beside it (same filesystem), which
/// the overlay syntax only takes together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl OverlayOptions {
    /// The whole `-o` value. Fails, naming the path, on one no mount option
    /// can carry (empty, or holding a NUL byte), or when no lower is given.
    pub fn encode(&self) -> Result<OsString, EncodeError> {
        let mut out = b"lowerdir=".to_vec();
        out.extend(self.lowerdir()?.as_bytes());
        if let Some(UpperDirs { upper, work }) = &self.upper {
            out.extend(b",upperdir=");
            out.extend(escape("upperdir", upper)?);
            out.extend(b",workdir=");
            out.extend(escape("workdir", work)?);
        }
        let flags = [
            (self.userxattr, "userxattr"),
            (self.metacopy, "metacopy=on"),
            (self.volatile, "volatile"),
            (self.read_only, "ro"),
        ];
        for (_, flag) in flags.iter().filter(|(on, _)| *on) {
            out.push(b',');
            out.extend(flag.as_bytes());
        }
        Ok(OsString::from_vec(out))
    }

    /// The `lowerdir=` value alone (the lowers escaped, joined with `:`), for
    /// a command that writes the rest of its options itself.
    pub fn lowerdir(&self) -> Result<OsString, EncodeError> {
        if self.lowers.is_empty() {
            return Err(EncodeError::NoLowers);
        }
        let escaped = self
            .lowers
            .iter()
            .map(|l| escape("lowerdir", l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OsString::from_vec(escaped.join(&b':')))
    }
}

/// Why a request cannot be written as mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The overlay syntax needs at least one lower directory.
    NoLowers,
    /// `what` (lowerdir, upperdir, workdir) names a path options cannot carry.
    Path {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NoLowers => write!(f, "mount options: no lower directory given"),
            // Debug form: the path is quoted and a NUL or newline shows escaped.
            EncodeError::Path { what, path, reason } => {
                write!(f, "{what} {path:?}: {reason}, mount options cannot name it")
            }
        }
    }
}

impl Error for EncodeError {}

/// One path as an option value: a backslash before each byte the parser
/// would take for syntax (the option splitter's `,` and `"`, the list
/// separator `:`, the escape itself).
fn escape(what: &'static str, path: &Path) -> Result<Vec<u8>, EncodeError> {
    let bytes = path.as_os_str().as_bytes();
    let refuse = |reason| EncodeError::Path {
        what,
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(refuse("empty path"));
    }
    if bytes.contains(&0) {
        return Err(refuse("holds a NUL byte"));
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    for &b in bytes {
        if matches!(b, b'\\' | b':' | b',' | b'"') {
            out.push(b'\\');
        }
        out.push(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::ffi::{OsStr, OsString};
    use std::fs;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::PathBuf;

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::options::branches::{split_path_list, unescape};
    use crate::options::parse::read_options;
    use crate::options::testing::*;
    use crate::options::{os_path, parse_mount_args};

    /// Reads an encoded value back with the parser's own steps short of
    /// resolving the paths (which needs them to exist): argv scanning, option
    /// splitting and applying, the lowerdir list split, every value unescaped.
    fn decode(value: &OsStr) -> Result<OverlayOptions, String> {
        let args = [OsString::from("-o"), value.to_os_string(), "/mnt".into()];
        let (opts, _) = read_options(&args)?;
        let raw_lowers = opts.lowerdir.as_deref().unwrap_or_default();
        let lowers = split_path_list("lowerdir", raw_lowers)?;
        let upper = match (&opts.upperdir, &opts.workdir) {
            (Some(u), Some(w)) => Some(UpperDirs {
                upper: os_path(&unescape(u)),
                work: os_path(&unescape(w)),
            }),
            (None, None) => None,
            _ => return Err("upperdir and workdir not together".into()),
        };
        Ok(OverlayOptions {
            lowers: lowers.iter().map(|l| os_path(l)).collect(),
            upper,
            userxattr: opts.req.userxattr,
            metacopy: opts.req.metacopy,
            volatile: opts.req.volatile,
            read_only: opts.ro,
        })
    }

    fn lowers(paths: &[&str]) -> OverlayOptions {
        OverlayOptions {
            lowers: paths.iter().map(PathBuf::from).collect(),
            ..OverlayOptions::default()
        }
    }

    /// Names that mean something to one parser or another.
    const NASTY: &[&str] = &[
        "a:b", "c,d", "e\\f", "g=h i", "\"q\"", "x\\", "::", ",,", "\\:", "=RW", "l\\,m:n",
    ];

    #[test]
    fn escapes_what_the_parser_reads_as_syntax() {
        let mut req = lowers(&["/a:b", "/c,d", "/e\\f", "/q\"r", "/s=t u"]);
        req.upper = Some(UpperDirs {
            upper: "/up,per".into(),
            work: "/wo:rk".into(),
        });
        req.userxattr = true;
        assert_eq!(
            req.encode().unwrap(),
            "lowerdir=/a\\:b:/c\\,d:/e\\\\f:/q\\\"r:/s=t u,upperdir=/up\\,per,workdir=/wo\\:rk,userxattr"
        );
        assert_eq!(
            req.lowerdir().unwrap(),
            "/a\\:b:/c\\,d:/e\\\\f:/q\\\"r:/s=t u"
        );
    }

    #[test]
    fn flags_in_a_fixed_order() {
        let mut req = lowers(&["/l"]);
        assert_eq!(req.encode().unwrap(), "lowerdir=/l");
        req.metacopy = true;
        req.read_only = true;
        assert_eq!(req.encode().unwrap(), "lowerdir=/l,metacopy=on,ro");
        req.userxattr = true;
        req.volatile = true;
        assert_eq!(
            req.encode().unwrap(),
            "lowerdir=/l,userxattr,metacopy=on,volatile,ro"
        );
    }

    #[test]
    fn non_utf8_paths_go_through() {
        let odd = PathBuf::from(OsString::from_vec(b"/l\xff:\xfe".to_vec()));
        let req = OverlayOptions {
            lowers: vec![odd.clone()],
            ..OverlayOptions::default()
        };
        let encoded = req.encode().unwrap();
        assert_eq!(encoded.as_bytes(), b"lowerdir=/l\xff\\:\xfe");
        assert_eq!(decode(&encoded).unwrap(), req);
    }

    #[test]
    fn unrepresentable_requests_are_refused_naming_the_path() {
        let e = lowers(&["/ok", "/n\0ul"]).encode().unwrap_err();
        assert_eq!(
            e.to_string(),
            "lowerdir \"/n\\0ul\": holds a NUL byte, mount options cannot name it"
        );
        let e = lowers(&["/ok", ""]).encode().unwrap_err();
        assert_eq!(
            e.to_string(),
            "lowerdir \"\": empty path, mount options cannot name it"
        );
        let mut req = lowers(&["/ok"]);
        req.upper = Some(UpperDirs {
            upper: "/u".into(),
            work: "/w\0".into(),
        });
        let e = req.encode().unwrap_err();
        assert!(e.to_string().starts_with("workdir \"/w\\0\""), "{e}");
        assert_eq!(lowers(&[]).encode().unwrap_err(), EncodeError::NoLowers);
        assert_eq!(lowers(&[]).lowerdir().unwrap_err(), EncodeError::NoLowers);
    }

    #[test]
    fn nasty_names_round_trip_through_the_parser() {
        let req = OverlayOptions {
            lowers: NASTY
                .iter()
                .map(|n| PathBuf::from(format!("/{n}")))
                .collect(),
            upper: Some(UpperDirs {
                upper: "/u:p,\\".into(),
                work: "/w\"o=rk".into(),
            }),
            volatile: true,
            ..OverlayOptions::default()
        };
        assert_eq!(decode(&req.encode().unwrap()).unwrap(), req);
    }

    /// The full parse, paths resolved: the branches are exactly the
    /// directories named, upper first, and the flags come through.
    #[test]
    fn nasty_directories_mount_as_named() {
        let t = Tree::new();
        for n in NASTY {
            fs::create_dir(t.p(n)).unwrap();
        }
        fs::create_dir(t.p("u:p,\\")).unwrap();
        fs::create_dir(t.p("w\"o=rk")).unwrap();
        let req = OverlayOptions {
            lowers: NASTY.iter().map(|n| t.p(n)).collect(),
            upper: Some(UpperDirs {
                upper: t.p("u:p,\\"),
                work: t.p("w\"o=rk"),
            }),
            userxattr: true,
            metacopy: true,
            ..OverlayOptions::default()
        };
        let args = vec!["-o".into(), req.encode().unwrap(), t.p("mnt").into()];
        let parsed = parse_mount_args(&args).unwrap();
        let mut want = vec![rw(t.p("u:p,\\"))];
        want.extend(NASTY.iter().map(|n| ro(t.p(n))));
        assert_eq!(parsed.branches, want);
        assert_eq!(parsed.workdir, Some(t.p("w\"o=rk")));
        assert!(parsed.userxattr && parsed.metacopy && parsed.cow);
        assert!(!parsed.volatile && !parsed.read_only);
    }

    /// Any bytes but NUL, the parsers' special ones often.
    fn path() -> impl Strategy<Value = PathBuf> {
        vec(
            prop_oneof![
                3 => prop::sample::select(b":,\\=\" /\t\n'".to_vec()),
                3 => prop::sample::select(b"ab".to_vec()),
                2 => 1u8..=255,
            ],
            1..16,
        )
        .prop_map(|b| PathBuf::from(OsString::from_vec(b)))
    }

    fn request() -> impl Strategy<Value = OverlayOptions> {
        (
            vec(path(), 1..6),
            prop::option::of((path(), path())),
            any::<[bool; 4]>(),
        )
            .prop_map(
                |(lowers, upper, [userxattr, metacopy, volatile, read_only])| OverlayOptions {
                    lowers,
                    upper: upper.map(|(upper, work)| UpperDirs { upper, work }),
                    userxattr,
                    metacopy,
                    volatile,
                    read_only,
                },
            )
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Parsing the encoder's output gives back the same request: the
        /// lowers in order, the upper and workdir, the flags.
        #[test]
        fn parsing_the_encoding_gives_the_request_back(req in request()) {
            let encoded = req.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = decode(&encoded)
                .map_err(|e| TestCaseError::fail(format!("{encoded:?}: {e}")))?;
            prop_assert_eq!(back, req);
        }
    }
}
