//! The command line: argv sorted into `-o` groups, flags and positional
//! words; each group split into options for `params`, the words handed to
//! `branches`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::branches::build_request;
use super::params::{Options, apply_option};
use super::{MountRequest, one_line};

/// Parses a mount command line (argv without the program name) in any of the
/// accepted syntaxes. Paths are resolved against the current directory.
pub fn parse_mount_args(args: &[OsString]) -> Result<MountRequest, String> {
    let cwd = std::env::current_dir().ok();
    parse_with_cwd(args, cwd.as_deref())
}

/// `parse_mount_args` with an explicit working directory, so tests need not
/// change the process-wide one.
pub(super) fn parse_with_cwd(
    args: &[OsString],
    cwd: Option<&Path>,
) -> Result<MountRequest, String> {
    parse_line(args, cwd).map_err(one_line)
}

fn parse_line(args: &[OsString], cwd: Option<&Path>) -> Result<MountRequest, String> {
    let (opts, positionals) = read_options(args)?;
    build_request(opts, &positionals, cwd)
}

/// Every option of the line applied, path values still raw (escaped and
/// unresolved), and the positional words: what `build_request` starts from.
pub(super) fn read_options(args: &[OsString]) -> Result<(Options, Vec<OsString>), String> {
    let line = scan_args(args)?;
    let mut opts = Options::default();
    opts.req.foreground = line.foreground || line.debug;
    opts.req.debug = line.debug;
    for group in &line.option_groups {
        for opt in split_options(group) {
            apply_option(&opt, &mut opts)?;
        }
    }
    Ok((opts, line.positionals))
}

// ---------------------------------------------------------------------------
// argv

/// argv sorted into `-o` groups, flags and positional words.
#[derive(Default)]
struct CommandLine {
    option_groups: Vec<Vec<u8>>,
    positionals: Vec<OsString>,
    foreground: bool,
    debug: bool,
}

fn scan_args(args: &[OsString]) -> Result<CommandLine, String> {
    let mut line = CommandLine::default();
    let mut iter = args.iter();
    let mut only_positionals = false;
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        if only_positionals || !bytes.starts_with(b"-") || bytes == b"-" {
            line.positionals.push(arg.clone());
            continue;
        }
        match bytes {
            b"--" => only_positionals = true,
            b"-o" => {
                let group = iter.next().ok_or("option -o needs a value")?;
                line.option_groups.push(group.as_bytes().to_vec());
            }
            b"-f" => line.foreground = true,
            b"-d" => line.debug = true,
            // Help is answered elsewhere; libfuse helpers also accept -s (single thread).
            b"-h" | b"--help" | b"-s" => {}
            _ if bytes.starts_with(b"-o") => line.option_groups.push(bytes[2..].to_vec()),
            _ => return Err(format!("unknown option '{}'", arg.to_string_lossy())),
        }
    }
    Ok(line)
}

/// Splits one `-o` group at commas. Empty options vanish. `\,` is a literal comma;
/// other backslash escapes are kept for the value's own parser (lowerdir's `\:`).
/// Commas inside double quotes do not split, because SELinux contexts such as
/// `context="system_u:object_r:container_file_t:s0:c1,c2"` contain them.
fn split_options(group: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut bytes = group.iter().copied();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' => match bytes.next() {
                Some(b',') => cur.push(b','),
                Some(next) => cur.extend([b'\\', next]),
                None => cur.push(b'\\'),
            },
            b'"' => {
                quoted = !quoted;
                cur.push(c);
            }
            b',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::testing::*;

    #[test]
    fn option_splitting() {
        let split = |s: &str| -> Vec<String> {
            split_options(s.as_bytes())
                .into_iter()
                .map(|o| String::from_utf8(o).unwrap())
                .collect()
        };
        assert_eq!(split(",,a,,b=1,"), ["a", "b=1"]);
        assert_eq!(split("x=a\\,b,y"), ["x=a,b", "y"]);
        assert_eq!(split("x=a\\:b\\\\,y"), ["x=a\\:b\\\\", "y"]);
        assert_eq!(
            split("context=\"u:r:t:s0:c1,c2\",ro"),
            ["context=\"u:r:t:s0:c1,c2\"", "ro"]
        );
        assert!(split(",,,").is_empty());
    }
    #[test]
    fn mount_fuse_style_source_is_ignored() {
        let t = Tree::new();
        let req = parse(&["overlay", &t.s("mnt"), "-o", &t.overlay_opts()]).unwrap();
        assert_eq!(req.mountpoint, t.p("mnt"));
        assert_eq!(req.branches.len(), 3);
    }
    #[test]
    fn repeated_glued_and_trailing_options_accumulate() {
        let t = Tree::new();
        let lower = format!("-olowerdir={}", t.s("l1"));
        let upper = format!("upperdir={}", t.s("u"));
        let work = format!("workdir={}", t.s("w"));
        let req = parse(&[&lower, &t.s("mnt"), "-o", &upper, "-o", &work, "-o", "ro"]).unwrap();
        assert_eq!(req.branches, vec![rw(t.p("u")), ro(t.p("l1"))]);
        assert!(req.read_only);
    }
    #[test]
    fn foreground_and_debug_flags() {
        let t = Tree::new();
        let opts = t.overlay_opts();
        let req = parse(&["-f", "-o", &opts, &t.s("mnt")]).unwrap();
        assert!(req.foreground && !req.debug);
        let req = parse(&["-d", "-o", &opts, &t.s("mnt")]).unwrap();
        assert!(req.foreground && req.debug);
        let req = parse(&["-o", &format!("{opts},debug"), &t.s("mnt")]).unwrap();
        assert!(req.foreground && req.debug);
        let req = parse(&["-h", "-o", &opts, "--", &t.s("mnt")]).unwrap();
        assert_eq!(req.mountpoint, t.p("mnt"));
    }
}
