//! Mount command lines in both syntaxes, parsed and checked before anything is mounted.
//!
//! fuse-overlayfs / kernel overlay: `-o lowerdir=A:B,upperdir=U,workdir=W MNT`
//! unionfs-fuse: `-o cow UPPER=RW:LOWER=RO MNT`
//! mount.fuse3: `SRC MNT -o OPTS` (SRC is ignored, as fuse-overlayfs does)
//!
//! Every path is made absolute and canonical here, at parse time, because the
//! daemon later changes directory to `/` and relative lowerdirs (containers-storage
//! passes `l/ID` symlinks relative to its working directory) would stop resolving.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rustix::fs::Access;
use rustix::io::Errno;

/// One branch of the union, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub path: PathBuf,
    pub writable: bool,
}

/// One range of an owner mapping: ids `inside..inside+count` seen in the mount are
/// `outside..outside+count` on disk (fuse-overlayfs `uidmapping=C:H:L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Everything a mount command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub mountpoint: PathBuf,
    /// Top first. With the overlay syntax: the upper (if any, writable) then the lowers.
    pub branches: Vec<Branch>,
    pub workdir: Option<PathBuf>,
    /// Copy up files of read-only branches on write (always on with an upperdir).
    /// Only ever true when some branch is writable.
    pub cow: bool,
    pub foreground: bool,
    pub debug: bool,
    pub uid_mapping: Vec<IdMapping>,
    pub gid_mapping: Vec<IdMapping>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub volatile: bool,
    /// `metacopy=on`: chown, chmod and xattr changes copy up metadata only.
    pub metacopy: bool,
    /// True with `-o ro` and whenever no branch is writable.
    pub read_only: bool,
    /// Overlay xattrs in `user.overlay.*` instead of `trusted.overlay.*`.
    pub userxattr: bool,
    pub fsname: Option<String>,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub max_write: Option<u32>,
    pub noatime: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// FUSE `allow_root`: root may use the mount besides the mounting user.
    pub allow_root: bool,
    /// FUSE `auto_unmount`: the kernel side unmounts if the daemon dies.
    pub auto_unmount: bool,
    /// FUSE `subtype=`: shown as `fuse.SUBTYPE` in the mount table.
    pub subtype: Option<String>,
    /// fuse-overlayfs `timeout=SECONDS`: entry and attribute cache lifetime.
    pub timeout: Option<Duration>,
    /// fuse-overlayfs `xattr_permissions=0|1|2` (0 = off, 1 = privileged, 2 = user
    /// namespace); stored, meaning left to the filesystem.
    pub xattr_permissions: u8,
}

/// Parses a mount command line (argv without the program name) in any of the
/// accepted syntaxes. Paths are resolved against the current directory.
pub fn parse_mount_args(args: &[OsString]) -> Result<MountRequest, String> {
    let cwd = std::env::current_dir().ok();
    parse_with_cwd(args, cwd.as_deref())
}

/// `parse_mount_args` with an explicit working directory, so tests need not
/// change the process-wide one.
fn parse_with_cwd(args: &[OsString], cwd: Option<&Path>) -> Result<MountRequest, String> {
    parse_line(args, cwd).map_err(one_line)
}

/// Longest error message, in characters: a huge option value is cut short.
const MAX_ERROR: usize = 2000;

/// An error fit for one line of stderr: the values and paths it quotes come
/// from the user and may hold newlines or escape sequences, which are shown
/// escaped; a huge value is cut.
fn one_line(msg: String) -> String {
    if !msg.chars().any(char::is_control) && msg.chars().count() <= MAX_ERROR {
        return msg;
    }
    let mut out = String::with_capacity(msg.len().min(MAX_ERROR));
    let mut n = 0;
    for c in msg.chars() {
        let shown: Vec<char> = if c.is_control() {
            c.escape_default().collect()
        } else {
            vec![c]
        };
        if n + shown.len() > MAX_ERROR {
            out.push('…');
            break;
        }
        n += shown.len();
        out.extend(shown);
    }
    out
}

fn parse_line(args: &[OsString], cwd: Option<&Path>) -> Result<MountRequest, String> {
    let line = scan_args(args)?;
    let mut opts = Options::default();
    opts.req.foreground = line.foreground || line.debug;
    opts.req.debug = line.debug;
    for group in &line.option_groups {
        for opt in split_options(group) {
            apply_option(&opt, &mut opts)?;
        }
    }
    build_request(opts, &line.positionals, cwd)
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

// ---------------------------------------------------------------------------
// -o options

/// Options collected so far; the raw path values wait until all options are in,
/// because `chroot=` may come after the branches it applies to.
#[derive(Default)]
struct Options {
    req: MountRequest,
    lowerdir: Option<Vec<u8>>,
    upperdir: Option<Vec<u8>>,
    workdir: Option<Vec<u8>>,
    chroot: Option<Vec<u8>>,
    cow: bool,
    ro: bool,
}

/// Options that take `=VALUE`; used to tell "needs a value" from "unknown".
const VALUED: &[&str] = &[
    "lowerdir",
    "upperdir",
    "workdir",
    "chroot",
    "uidmapping",
    "gidmapping",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "fsync",
    "timeout",
    "max_write",
    "max_files",
    "fsname",
    "subtype",
    "context",
    "redirect_dir",
    "index",
    "metacopy",
    "xino",
];

fn apply_option(opt: &[u8], opts: &mut Options) -> Result<(), String> {
    let (name, value) = match opt.iter().position(|&b| b == b'=') {
        Some(i) => (&opt[..i], Some(&opt[i + 1..])),
        None => (opt, None),
    };
    let name = std::str::from_utf8(name).map_err(|_| unknown_option(opt))?;
    match value {
        None => apply_flag(name, opts),
        Some(value) => apply_valued(name, value, opts),
    }
}

fn unknown_option(name: impl AsRef<[u8]>) -> String {
    format!(
        "unknown option '{}'",
        String::from_utf8_lossy(name.as_ref())
    )
}

fn apply_flag(name: &str, opts: &mut Options) -> Result<(), String> {
    let req = &mut opts.req;
    match name {
        "cow" => opts.cow = true,
        "ro" => opts.ro = true,
        "rw" => opts.ro = false,
        "squash_to_root" => req.squash_to_root = true,
        "volatile" => req.volatile = true,
        "userxattr" => req.userxattr = true,
        "debug" => {
            req.debug = true;
            req.foreground = true;
        }
        "dev" => req.nodev = false,
        "nodev" => req.nodev = true,
        "suid" => req.nosuid = false,
        "nosuid" => req.nosuid = true,
        "exec" => req.noexec = false,
        "noexec" => req.noexec = true,
        "atime" | "relatime" => req.noatime = false,
        "noatime" => req.noatime = true,
        "allow_other" => req.allow_other = true,
        "allow_root" => req.allow_root = true,
        "default_permissions" => req.default_permissions = true,
        "auto_unmount" => req.auto_unmount = true,
        // Accepted for compatibility; nothing here depends on them.
        "noacl" | "statfs_omit_ro" | "hide_meta_files" | "direct_io" | "kernel_cache"
        | "use_ino" | "nonempty" | "big_writes" => {}
        _ if VALUED.contains(&name) => return Err(format!("option '{name}' needs a value")),
        _ => return Err(unknown_option(name)),
    }
    Ok(())
}

fn apply_valued(name: &str, value: &[u8], opts: &mut Options) -> Result<(), String> {
    let req = &mut opts.req;
    match name {
        "lowerdir" => opts.lowerdir = Some(value.to_vec()),
        "upperdir" => opts.upperdir = Some(value.to_vec()),
        "workdir" => opts.workdir = Some(value.to_vec()),
        "chroot" => opts.chroot = Some(value.to_vec()),
        "uidmapping" => req.uid_mapping = parse_id_mappings(name, value)?,
        "gidmapping" => req.gid_mapping = parse_id_mappings(name, value)?,
        "squash_to_uid" => req.squash_to_uid = Some(parse_number(name, value)?),
        "squash_to_gid" => req.squash_to_gid = Some(parse_number(name, value)?),
        "max_write" => req.max_write = Some(parse_number(name, value)?),
        "xattr_permissions" => req.xattr_permissions = parse_xattr_permissions(value)?,
        "timeout" => req.timeout = Some(parse_timeout(value)?),
        "fsync" => apply_fsync(value, req)?,
        "metacopy" => req.metacopy = parse_on_off(name, value)?,
        "max_files" => {
            parse_number::<u64>(name, value)?;
        }
        "fsname" => req.fsname = Some(String::from_utf8_lossy(value).into_owned()),
        "subtype" => req.subtype = Some(String::from_utf8_lossy(value).into_owned()),
        // Kernel overlay and SELinux knobs: accepted so command lines written for
        // the kernel or fuse-overlayfs keep working; the union has one behaviour.
        "context" | "redirect_dir" | "index" | "xino" => {}
        // A flag given a value: applying it to a scratch set tells whether it exists.
        _ if apply_flag(name, &mut Options::default()).is_ok() => {
            return Err(format!("option '{name}' takes no value"));
        }
        _ => return Err(unknown_option(name)),
    }
    Ok(())
}

/// `on` or `off`, as kernel overlayfs spells its switches.
fn parse_on_off(name: &str, value: &[u8]) -> Result<bool, String> {
    match value {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(bad_value(name, value, "on or off")),
    }
}

/// `fsync=0` means the same as `volatile` in fuse-overlayfs.
fn apply_fsync(value: &[u8], req: &mut MountRequest) -> Result<(), String> {
    match value {
        b"0" => req.volatile = true,
        b"1" => {}
        _ => return Err(bad_value("fsync", value, "0 or 1")),
    }
    Ok(())
}

fn parse_xattr_permissions(value: &[u8]) -> Result<u8, String> {
    match parse_number::<u8>("xattr_permissions", value)? {
        n @ 0..=2 => Ok(n),
        _ => Err(bad_value("xattr_permissions", value, "0, 1 or 2")),
    }
}

fn parse_timeout(value: &[u8]) -> Result<Duration, String> {
    let secs: f64 = parse_number("timeout", value)?;
    Duration::try_from_secs_f64(secs).map_err(|_| bad_value("timeout", value, "seconds"))
}

fn parse_number<T: FromStr>(name: &str, value: &[u8]) -> Result<T, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| bad_value(name, value, "a number"))
}

fn bad_value(name: &str, value: &[u8], expected: &str) -> String {
    format!(
        "option '{name}': invalid value '{}', expected {expected}",
        String::from_utf8_lossy(value)
    )
}

/// Parses fuse-overlayfs `C:H:L[:C:H:L...]` (container id, host id, length).
/// Ranges must be non-empty, fit in 32 bits and not overlap on either side,
/// or the mapping would not be reversible.
fn parse_id_mappings(name: &str, value: &[u8]) -> Result<Vec<IdMapping>, String> {
    let malformed = || {
        format!(
            "option '{name}': malformed mapping '{}', expected CONTAINER:HOST:LENGTH[:...]",
            String::from_utf8_lossy(value)
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| malformed())?;
    let numbers = text
        .split(':')
        .map(|field| field.parse::<u32>().ok())
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(malformed)?;
    if numbers.len() % 3 != 0 {
        return Err(malformed());
    }
    let maps: Vec<IdMapping> = numbers
        .chunks_exact(3)
        .map(|c| IdMapping {
            inside: c[0],
            outside: c[1],
            count: c[2],
        })
        .collect();
    check_mappings(name, &maps)?;
    Ok(maps)
}

/// Id (u32)-1 means "no id" to the kernel, so a range may reach 4294967294 at most.
const MAX_ID_END: u64 = u32::MAX as u64;

fn check_mappings(name: &str, maps: &[IdMapping]) -> Result<(), String> {
    for (i, m) in maps.iter().enumerate() {
        if m.count == 0 {
            return Err(format!("option '{name}': mapping of length 0"));
        }
        if range_end(m.inside, m.count) > MAX_ID_END || range_end(m.outside, m.count) > MAX_ID_END {
            return Err(format!("option '{name}': mapping past id 4294967294"));
        }
        let clash = |o: &IdMapping| {
            overlap((m.inside, m.count), (o.inside, o.count))
                || overlap((m.outside, m.count), (o.outside, o.count))
        };
        if maps[..i].iter().any(clash) {
            return Err(format!("option '{name}': overlapping mappings"));
        }
    }
    Ok(())
}

fn range_end(start: u32, count: u32) -> u64 {
    u64::from(start) + u64::from(count)
}

/// Whether two `(start, count)` id ranges share an id.
fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    range_end(a.0, a.1) > u64::from(b.0) && range_end(b.0, b.1) > u64::from(a.0)
}

// ---------------------------------------------------------------------------
// branches and paths

fn build_request(
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
fn unescape(bytes: &[u8]) -> Vec<u8> {
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
fn split_path_list(what: &str, raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
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

fn os_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
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

/// `io::Error` text without the " (os error N)" tail, for one-line messages.
fn error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

// ---------------------------------------------------------------------------
// validate

/// Checks that the filesystem can be mounted safely as requested: branches are
/// readable directories (writable ones writable), the workdir is a writable
/// directory on the upper's filesystem and not nested with it, the mountpoint is
/// a directory not nested with any branch or the workdir, and nothing is mounted
/// on it yet. The first failure comes back as one line naming the object.
pub fn validate(req: &MountRequest) -> Result<(), String> {
    validate_request(req).map_err(one_line)
}

fn validate_request(req: &MountRequest) -> Result<(), String> {
    if req.branches.is_empty() {
        return Err("no branches given".into());
    }
    for branch in &req.branches {
        let what = if branch.writable { "upper" } else { "branch" };
        check_dir(what, &branch.path, branch.writable)?;
    }
    if let Some(work) = &req.workdir {
        check_workdir(work, &req.branches)?;
    }
    check_mountpoint(req)?;
    check_not_mounted(&req.mountpoint)
}

fn check_dir(what: &str, path: &Path, writable: bool) -> Result<(), String> {
    let fail = |reason: String| format!("{what} {}: {reason}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(error_text(&e)))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let errno_text = |e: Errno| error_text(&std::io::Error::from(e));
    rustix::fs::access(path, Access::READ_OK | Access::EXEC_OK)
        .map_err(|e| fail(format!("not readable ({})", errno_text(e))))?;
    if writable {
        rustix::fs::access(path, Access::WRITE_OK)
            .map_err(|e| fail(format!("not writable ({})", errno_text(e))))?;
    }
    Ok(())
}

/// The workdir must be able to `rename` into the upper (same filesystem), and
/// neither may contain the other, or copy-up would see its own staging files.
fn check_workdir(work: &Path, branches: &[Branch]) -> Result<(), String> {
    check_dir("workdir", work, true)?;
    let Some(upper) = branches.iter().find(|b| b.writable).map(|b| &b.path) else {
        return Err(format!(
            "workdir {}: given without an upper",
            work.display()
        ));
    };
    let (w, u) = (work.display(), upper.display());
    if work.starts_with(upper) {
        return Err(format!("workdir {w}: inside (or equal to) upper {u}"));
    }
    if upper.starts_with(work) {
        return Err(format!("upper {u}: inside workdir {w}"));
    }
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(work) != dev(upper) {
        return Err(format!(
            "workdir {w}: not on the same filesystem as upper {u}"
        ));
    }
    // Two bind mounts of one filesystem: rename(2) between them fails (EXDEV).
    if let (Some(a), Some(b)) = (mount_id(work), mount_id(upper))
        && a != b
    {
        return Err(format!(
            "workdir {w}: not on the same mount as upper {u} (a bind mount?)"
        ));
    }
    Ok(())
}

/// The id of the mount a path is on, where the kernel tells it (statx, 5.8+).
fn mount_id(p: &Path) -> Option<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = statx(CWD, p, AtFlags::empty(), StatxFlags::MNT_ID).ok()?;
    (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// Device and inode of a directory and of each of its ancestors: a
/// directory reached by two paths (a bind mount) is still the same one.
fn lineage(p: &Path) -> Vec<(u64, u64)> {
    p.ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// A mountpoint inside a branch, or a branch under the mountpoint, makes the
/// union look up through itself: FUSE overlays hang on that.
fn check_mountpoint(req: &MountRequest) -> Result<(), String> {
    let mnt = &req.mountpoint;
    let meta = std::fs::metadata(mnt)
        .map_err(|e| format!("mountpoint {}: {}", mnt.display(), error_text(&e)))?;
    if !meta.is_dir() {
        return Err(format!("mountpoint {}: not a directory", mnt.display()));
    }
    let branches = req.branches.iter().map(|b| {
        let what = if b.writable { "upper" } else { "branch" };
        (what, &b.path)
    });
    let work = req.workdir.iter().map(|w| ("workdir", w));
    let mnt_lineage = lineage(mnt);
    let mnt_id = identity(mnt);
    for (what, path) in branches.chain(work) {
        // By path, and by identity: a branch bind-mounted elsewhere is the
        // same directory under another name.
        let id = identity(path);
        if mnt.starts_with(path) || id.is_some_and(|id| mnt_lineage.contains(&id)) {
            return Err(format!(
                "mountpoint {}: inside {what} {}",
                mnt.display(),
                path.display()
            ));
        }
        if path.starts_with(mnt) || mnt_id.is_some_and(|m| lineage(path).contains(&m)) {
            return Err(format!(
                "{what} {}: inside mountpoint {}",
                path.display(),
                mnt.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a mountpoint that already has something mounted on it. Without a
/// readable `/proc/self/mountinfo` (no /proc) the check cannot be made and the
/// kernel's own mount call is left to complain.
fn check_not_mounted(mnt: &Path) -> Result<(), String> {
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return Ok(());
    };
    if mount_points(&table).any(|p| p == mnt.as_os_str().as_bytes()) {
        return Err(format!(
            "mountpoint {}: already mounted (busy)",
            mnt.display()
        ));
    }
    Ok(())
}

/// The mount points (field 5) of a mountinfo table, octal escapes decoded.
fn mount_points(table: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(decode_mount_field)
}

/// mountinfo writes space, tab, newline and backslash as `\040` `\011` `\012` `\134`.
fn decode_mount_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        match octal_escape(&field[i..]) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn octal_escape(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
            Some((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tempfile::TempDir;

    /// A temporary tree with lowers, an upper, a workdir and a mountpoint.
    struct Tree {
        _tmp: TempDir,
        root: PathBuf,
    }

    impl Tree {
        fn new() -> Tree {
            let tmp = TempDir::new().unwrap();
            let root = fs::canonicalize(tmp.path()).unwrap();
            for dir in ["l1", "l2", "u", "w", "mnt"] {
                fs::create_dir(root.join(dir)).unwrap();
            }
            Tree { _tmp: tmp, root }
        }

        fn p(&self, name: &str) -> PathBuf {
            self.root.join(name)
        }

        /// Absolute path as a string, for building command lines.
        fn s(&self, name: &str) -> String {
            self.p(name).to_str().unwrap().to_string()
        }

        fn overlay_opts(&self) -> String {
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                self.s("l1"),
                self.s("l2"),
                self.s("u"),
                self.s("w")
            )
        }
    }

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn parse(words: &[&str]) -> Result<MountRequest, String> {
        parse_mount_args(&args(words))
    }

    fn ro(path: PathBuf) -> Branch {
        Branch {
            path,
            writable: false,
        }
    }

    fn rw(path: PathBuf) -> Branch {
        Branch {
            path,
            writable: true,
        }
    }

    fn err(words: &[&str]) -> String {
        parse(words).unwrap_err()
    }

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
    fn ro_option_makes_read_only_even_with_upper() {
        let t = Tree::new();
        let opts = format!("{},ro", t.overlay_opts());
        assert!(parse(&["-o", &opts, &t.s("mnt")]).unwrap().read_only);
        let opts = format!("ro,{},rw", t.overlay_opts());
        assert!(!parse(&["-o", &opts, &t.s("mnt")]).unwrap().read_only);
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

    #[test]
    fn containers_storage_command_line() {
        let t = Tree::new();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},,volatile,context=\"system_u:object_r:container_file_t:s0:c1,c2\",",
            t.s("l1"),
            t.s("u"),
            t.s("w")
        );
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert!(req.volatile);
        assert_eq!(req.branches.len(), 2);
    }

    #[test]
    fn every_accepted_option() {
        let t = Tree::new();
        let extra = "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,\
            squash_to_root,squash_to_uid=5,squash_to_gid=6,xattr_permissions=2,\
            userxattr,context=x,noacl,fsync=0,timeout=1.5,redirect_dir=on,index=off,\
            metacopy=off,xino=auto,rw,dev,nodev,suid,nosuid,exec,noexec,atime,relatime,\
            noatime,allow_other,allow_root,default_permissions,fsname=myfs,subtype=um,\
            max_write=131072,auto_unmount,cow,statfs_omit_ro,hide_meta_files,\
            max_files=4096,direct_io,kernel_cache,use_ino,nonempty,big_writes";
        let opts = format!("{},{extra}", t.overlay_opts());
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert_eq!(
            req.uid_mapping,
            vec![
                IdMapping {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdMapping {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                },
            ]
        );
        assert_eq!(req.gid_mapping.len(), 1);
        assert!(req.squash_to_root && req.userxattr && req.volatile);
        assert_eq!((req.squash_to_uid, req.squash_to_gid), (Some(5), Some(6)));
        assert_eq!(req.xattr_permissions, 2);
        assert_eq!(req.timeout, Some(Duration::from_millis(1500)));
        assert!(req.nodev && req.nosuid && req.noexec && req.noatime);
        assert!(req.allow_other && req.allow_root && req.default_permissions);
        assert!(req.auto_unmount && !req.read_only);
        assert_eq!(req.fsname.as_deref(), Some("myfs"));
        assert_eq!(req.subtype.as_deref(), Some("um"));
        assert_eq!(req.max_write, Some(131072));
    }

    #[test]
    fn metacopy_is_off_unless_asked_for() {
        let t = Tree::new();
        let with = |v: &str| parse(&["-o", &format!("{},{v}", t.overlay_opts()), &t.s("mnt")]);
        assert!(!with("index=on").unwrap().metacopy);
        assert!(with("metacopy=on").unwrap().metacopy);
        assert!(!with("metacopy=on,metacopy=off").unwrap().metacopy);
        let err = with("metacopy=1").unwrap_err().to_string();
        assert!(
            err.contains("metacopy") && err.contains("on or off"),
            "{err}"
        );
    }

    #[test]
    fn fsync_one_is_not_volatile() {
        let t = Tree::new();
        let opts = format!("{},fsync=1", t.overlay_opts());
        assert!(!parse(&["-o", &opts, &t.s("mnt")]).unwrap().volatile);
    }

    // --- mappings -----------------------------------------------------------

    #[test]
    fn mapping_parsing() {
        let m = |s: &str| parse_id_mappings("uidmapping", s.as_bytes());
        assert_eq!(
            m("0:1000:1").unwrap(),
            vec![IdMapping {
                inside: 0,
                outside: 1000,
                count: 1
            }]
        );
        assert_eq!(m("0:1000:1:1:100000:65536").unwrap().len(), 2);
        assert_eq!(m("0:0:4294967295").unwrap().len(), 1);
        assert!(m("0:1:4294967295").unwrap_err().contains("past id"));
        for bad in [
            "",
            "0:1000",
            "0:1000:1:2",
            "a:b:c",
            "0:1000:-1",
            "0::1",
            "0:1:1,",
        ] {
            assert!(
                m(bad).unwrap_err().contains("malformed mapping"),
                "{bad:?} accepted"
            );
        }
        assert!(m("0:1000:0").unwrap_err().contains("length 0"));
        assert!(m("1:0:4294967295").unwrap_err().contains("past id"));
        assert!(m("0:1000:10:5:2000:1").unwrap_err().contains("overlapping"));
        assert!(
            m("0:1000:10:20:1005:1")
                .unwrap_err()
                .contains("overlapping")
        );
        assert!(m("0:1000:10:10:1010:10").is_ok());
    }

    #[test]
    fn malformed_mapping_on_command_line() {
        let t = Tree::new();
        let opts = format!("{},gidmapping=0:1", t.overlay_opts());
        let e = err(&["-o", &opts, &t.s("mnt")]);
        assert!(
            e.starts_with("option 'gidmapping': malformed mapping '0:1'"),
            "{e}"
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

    #[test]
    fn option_errors() {
        let t = Tree::new();
        let mnt = t.s("mnt");
        let with = |extra: &str| err(&["-o", &format!("{},{extra}", t.overlay_opts()), &mnt]);
        assert_eq!(with("foo"), "unknown option 'foo'");
        assert_eq!(with("foo=1"), "unknown option 'foo'");
        assert_eq!(with("cow=1"), "option 'cow' takes no value");
        assert_eq!(with("fsname"), "option 'fsname' needs a value");
        assert_eq!(
            with("max_write=big"),
            "option 'max_write': invalid value 'big', expected a number"
        );
        assert!(with("squash_to_uid=-1").starts_with("option 'squash_to_uid'"));
        assert!(with("squash_to_gid=").starts_with("option 'squash_to_gid'"));
        assert!(with("max_files=x").starts_with("option 'max_files'"));
        assert!(with("timeout=-1").starts_with("option 'timeout'"));
        assert!(with("xattr_permissions=3").starts_with("option 'xattr_permissions'"));
        assert!(with("fsync=2").starts_with("option 'fsync'"));
        assert_eq!(err(&["-x", &mnt]), "unknown option '-x'");
        assert_eq!(err(&[&mnt, "-o"]), "option -o needs a value");
    }

    // --- validate -----------------------------------------------------------

    fn overlay_request(t: &Tree) -> MountRequest {
        MountRequest {
            mountpoint: t.p("mnt"),
            branches: vec![rw(t.p("u")), ro(t.p("l1")), ro(t.p("l2"))],
            workdir: Some(t.p("w")),
            cow: true,
            ..MountRequest::default()
        }
    }

    #[test]
    fn validate_accepts_a_sane_request() {
        let t = Tree::new();
        validate(&overlay_request(&t)).unwrap();
        let req = parse(&["-o", &t.overlay_opts(), &t.s("mnt")]).unwrap();
        validate(&req).unwrap();
    }

    #[test]
    fn validate_refuses_non_directories() {
        let t = Tree::new();
        fs::write(t.p("file"), b"x").unwrap();
        let mut req = overlay_request(&t);
        req.branches[2] = ro(t.p("file"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("branch {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.workdir = Some(t.p("file"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("workdir {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("file");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("gone");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: No such file or directory", t.s("gone"))
        );
        req.branches.clear();
        assert_eq!(validate(&req).unwrap_err(), "no branches given");
    }

    #[test]
    fn validate_refuses_unreadable_and_unwritable_when_not_root() {
        // Root passes every permission check, so this can only be seen unprivileged.
        if rustix::process::geteuid().is_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = Tree::new();
        fs::set_permissions(t.p("l2"), fs::Permissions::from_mode(0o000)).unwrap();
        let e = validate(&overlay_request(&t)).unwrap_err();
        assert!(
            e.starts_with(&format!("branch {}: not readable", t.s("l2"))),
            "{e}"
        );
        fs::set_permissions(t.p("l2"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(t.p("u"), fs::Permissions::from_mode(0o555)).unwrap();
        let e = validate(&overlay_request(&t)).unwrap_err();
        assert!(
            e.starts_with(&format!("upper {}: not writable", t.s("u"))),
            "{e}"
        );
    }

    #[test]
    fn validate_workdir_nesting() {
        let t = Tree::new();
        fs::create_dir(t.p("u/work")).unwrap();
        fs::create_dir(t.p("w/up")).unwrap();
        fs::create_dir(t.p("u2")).unwrap();
        let mut req = overlay_request(&t);
        req.workdir = Some(t.p("u/work"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!(
                "workdir {}: inside (or equal to) upper {}",
                t.s("u/work"),
                t.s("u")
            )
        );
        req.workdir = Some(t.p("u"));
        assert!(
            validate(&req)
                .unwrap_err()
                .contains("inside (or equal to) upper")
        );
        req.branches[0] = rw(t.p("w/up"));
        req.workdir = Some(t.p("w"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("upper {}: inside workdir {}", t.s("w/up"), t.s("w"))
        );
        // A shared string prefix is not nesting: `u2` is beside `u`.
        req.branches[0] = rw(t.p("u"));
        req.workdir = Some(t.p("u2"));
        validate(&req).unwrap();
    }

    #[test]
    fn validate_workdir_needs_an_upper() {
        let t = Tree::new();
        let mut req = overlay_request(&t);
        req.branches.remove(0);
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("workdir {}: given without an upper", t.s("w"))
        );
    }

    #[test]
    fn validate_workdir_on_another_filesystem() {
        let t = Tree::new();
        let Ok(shm) = TempDir::new_in("/dev/shm") else {
            return;
        };
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(&t.root) {
            return;
        }
        let mut req = overlay_request(&t);
        req.workdir = Some(shm.path().to_path_buf());
        let e = validate(&req).unwrap_err();
        assert!(e.contains("not on the same filesystem as upper"), "{e}");
    }

    #[test]
    fn validate_mountpoint_nesting() {
        let t = Tree::new();
        fs::create_dir(t.p("l1/m")).unwrap();
        fs::create_dir(t.p("mnt/w")).unwrap();
        fs::create_dir(t.p("mnt/l")).unwrap();
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("l1/m");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: inside branch {}", t.s("l1/m"), t.s("l1"))
        );
        req.mountpoint = t.p("u");
        assert!(validate(&req).unwrap_err().contains("inside upper"));
        req.mountpoint = t.p("w");
        assert!(validate(&req).unwrap_err().contains("inside workdir"));
        let mut req = overlay_request(&t);
        req.branches[2] = ro(t.p("mnt/l"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("branch {}: inside mountpoint {}", t.s("mnt/l"), t.s("mnt"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.root.clone();
        assert!(validate(&req).unwrap_err().contains("inside mountpoint"));
    }

    #[test]
    fn validate_refuses_a_busy_mountpoint() {
        let t = Tree::new();
        let table = fs::read("/proc/self/mountinfo").unwrap();
        // Any mounted directory that is neither an ancestor nor a descendant of the tree.
        let busy = mount_points(&table)
            .map(|p| os_path(&p))
            .find(|p| p.is_dir() && !t.root.starts_with(p) && !p.starts_with(&t.root));
        let Some(busy) = busy else {
            return;
        };
        let mut req = overlay_request(&t);
        req.mountpoint = busy.clone();
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: already mounted (busy)", busy.display())
        );
    }

    #[test]
    fn mountinfo_decoding() {
        let table =
            b"36 35 98:0 /mnt1 /a\\040b\\011c\\134d rw,noatime master:1 - ext3 /dev/root rw\n\
            37 35 98:0 / /plain rw - tmpfs tmpfs rw\n";
        let points: Vec<Vec<u8>> = mount_points(table).collect();
        assert_eq!(points, vec![b"/a b\tc\\d".to_vec(), b"/plain".to_vec()]);
        assert_eq!(decode_mount_field(b"\\04x\\"), b"\\04x\\".to_vec());
    }
}

/// Hostile command lines, generated: escapes, separators, quotes, `=`, `:`,
/// empty components, huge values, NUL and non-UTF-8 bytes. Errors are one
/// line; what parses names exactly the directories that were meant, never a
/// neighbour whose name is a prefix of theirs. `UNIONMOUNT_FUZZ_CASES` sets
/// the number of cases (CI: a few hundred per property, well under a second).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::fs;
    use std::os::unix::ffi::OsStringExt;

    fn config(ci_cases: u32) -> ProptestConfig {
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
        let e = parse_with_cwd(&["-o".into(), huge.into(), t.path().into()], Some(t.path()))
            .unwrap_err();
        assert!(
            e.chars().count() <= MAX_ERROR + 1 && e.ends_with('…'),
            "{e}"
        );
    }
}
