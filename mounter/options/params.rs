//! `-o` options, one at a time, into `Options`: flags, valued options and
//! the values' own syntaxes (numbers, on/off, id mappings). Path values are
//! kept raw for `branches`.

use std::str::FromStr;
use std::time::Duration;

use super::{IdMapping, MountRequest};

/// Options collected so far; the raw path values wait until all options are in,
/// because `chroot=` may come after the branches it applies to.
#[derive(Default)]
pub(super) struct Options {
    pub(super) req: MountRequest,
    pub(super) lowerdir: Option<Vec<u8>>,
    pub(super) upperdir: Option<Vec<u8>>,
    pub(super) workdir: Option<Vec<u8>>,
    pub(super) chroot: Option<Vec<u8>>,
    pub(super) cow: bool,
    pub(super) ro: bool,
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

pub(super) fn apply_option(opt: &[u8], opts: &mut Options) -> Result<(), String> {
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
        "atime" => req.noatime = false,
        "noatime" => req.noatime = true,
        "diratime" => req.nodiratime = false,
        "nodiratime" => req.nodiratime = true,
        "strictatime" => req.strictatime = true,
        "nostrictatime" => req.strictatime = false,
        "lazytime" => req.lazytime = true,
        "nolazytime" => req.lazytime = false,
        "sync" => req.sync = true,
        "async" => req.sync = false,
        "dirsync" => req.dirsync = true,
        "nosymfollow" => req.nosymfollow = true,
        "symfollow" => req.nosymfollow = false,
        "io_uring" => req.io_uring = Some(true),
        "noio_uring" => req.io_uring = Some(false),
        "lower_passthrough" => req.lower_passthrough = true,
        "nolower_passthrough" => req.lower_passthrough = false,
        // The kernel's defaults, or no meaning for this mount: relatime is
        // what a mount gets without noatime or strictatime; Linux has no
        // mandatory locks; i_version and message levels are the kernel's.
        "relatime" | "norelatime" | "defaults" | "mand" | "nomand" | "silent" | "loud"
        | "iversion" | "noiversion" => {}
        "allow_other" => req.allow_other = true,
        "allow_root" => req.allow_root = true,
        "default_permissions" => req.default_permissions = true,
        "auto_unmount" => req.auto_unmount = true,
        // Accepted for compatibility; nothing here depends on them.
        "noacl" | "statfs_omit_ro" | "hide_meta_files" | "direct_io" | "kernel_cache"
        | "use_ino" | "nonempty" | "big_writes" => {}
        _ if VALUED.contains(&name) => return Err(format!("option '{name}' needs a value")),
        _ => return ignore_unknown(name, None, opts),
    }
    Ok(())
}

/// As fuse-overlayfs, an unknown option is ignored (the caller warns once),
/// unless ignoring it could change what is mounted: one that looks like a
/// misspelt known option, or whose value is a path.
fn ignore_unknown(name: &str, value: Option<&[u8]>, opts: &mut Options) -> Result<(), String> {
    if let Some(known) = close_known_option(name) {
        return Err(format!("unknown option '{name}' (did you mean '{known}'?)"));
    }
    if value.is_some_and(|v| v.contains(&b'/')) {
        return Err(format!("unknown option '{name}' with a path value"));
    }
    opts.req.ignored_options.push(name.to_string());
    Ok(())
}

/// Options whose loss would change what is mounted or who may write it.
const SEMANTIC: &[&str] = &[
    "lowerdir",
    "upperdir",
    "workdir",
    "chroot",
    "uidmapping",
    "gidmapping",
    "squash_to_uid",
    "squash_to_gid",
    "squash_to_root",
    "volatile",
    "userxattr",
    "metacopy",
    "noexec",
    "nosuid",
    "nodev",
    "noatime",
    "default_permissions",
    "allow_other",
];

/// A known option `name` is one or two edits away from (a likely typo).
fn close_known_option(name: &str) -> Option<&'static str> {
    let limit = if name.len() < 6 { 1 } else { 2 };
    SEMANTIC
        .iter()
        .copied()
        .find(|known| strsim::damerau_levenshtein(name, known) <= limit)
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
        _ if is_known_flag(name) => {
            return Err(format!("option '{name}' takes no value"));
        }
        _ => return ignore_unknown(name, Some(value), opts),
    }
    Ok(())
}

/// A flag: applying it to a scratch set takes it, and ignores nothing.
fn is_known_flag(name: &str) -> bool {
    let mut scratch = Options::default();
    apply_flag(name, &mut scratch).is_ok() && scratch.req.ignored_options.is_empty()
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
pub(super) fn parse_id_mappings(name: &str, value: &[u8]) -> Result<Vec<IdMapping>, String> {
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
pub(super) const MAX_ID_END: u64 = u32::MAX as u64;

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

pub(super) fn range_end(start: u32, count: u32) -> u64 {
    u64::from(start) + u64::from(count)
}

/// Whether two `(start, count)` id ranges share an id.
pub(super) fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    range_end(a.0, a.1) > u64::from(b.0) && range_end(b.0, b.1) > u64::from(a.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::testing::*;

    #[test]
    fn ro_option_makes_read_only_even_with_upper() {
        let t = Tree::new();
        let opts = format!("{},ro", t.overlay_opts());
        assert!(parse(&["-o", &opts, &t.s("mnt")]).unwrap().read_only);
        let opts = format!("ro,{},rw", t.overlay_opts());
        assert!(!parse(&["-o", &opts, &t.s("mnt")]).unwrap().read_only);
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
            noatime,diratime,nodiratime,norelatime,nostrictatime,strictatime,nolazytime,\
            lazytime,async,sync,dirsync,symfollow,nosymfollow,mand,nomand,silent,loud,iversion,noiversion,defaults,\
            allow_other,allow_root,default_permissions,fsname=myfs,subtype=um,\
            max_write=131072,auto_unmount,cow,statfs_omit_ro,hide_meta_files,\
            max_files=4096,direct_io,kernel_cache,use_ino,nonempty,big_writes,noio_uring,lower_passthrough";
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
        assert!(req.nodiratime && req.strictatime && req.lazytime && req.sync && req.dirsync);
        assert!(req.nosymfollow);
        assert!(req.ignored_options.is_empty(), "{:?}", req.ignored_options);
        assert!(req.allow_other && req.allow_root && req.default_permissions);
        assert!(req.auto_unmount && !req.read_only);
        assert_eq!(req.fsname.as_deref(), Some("myfs"));
        assert_eq!(req.subtype.as_deref(), Some("um"));
        assert_eq!(req.max_write, Some(131072));
    }
    #[test]
    fn unknown_options_are_ignored_as_fuse_overlayfs_does() {
        let t = Tree::new();
        let opts = format!("{},foo,bar=1,x-systemd.automount,_netdev", t.overlay_opts());
        let req = parse(&["-o", &opts, &t.s("mnt")]).unwrap();
        assert_eq!(
            req.ignored_options,
            ["foo", "bar", "x-systemd.automount", "_netdev"]
        );
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
    #[test]
    fn option_errors() {
        let t = Tree::new();
        let mnt = t.s("mnt");
        let with = |extra: &str| err(&["-o", &format!("{},{extra}", t.overlay_opts()), &mnt]);
        assert_eq!(
            with("uperdir=x"),
            "unknown option 'uperdir' (did you mean 'upperdir'?)"
        );
        assert_eq!(
            with("lowredir=x"),
            "unknown option 'lowredir' (did you mean 'lowerdir'?)"
        );
        assert_eq!(
            with("noexex"),
            "unknown option 'noexex' (did you mean 'noexec'?)"
        );
        assert_eq!(
            with("upper=/somewhere"),
            "unknown option 'upper' with a path value"
        );
        assert_eq!(with("sync=1"), "option 'sync' takes no value");
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
}
