//! The metadata of a tar entry (owner, mode, time, xattrs): read from its
//! header and PAX records, and, without privilege, written as the
//! `user.containers.override_stat` value.

use std::ffi::CString;
use std::io::Read;

use ondisk::override_stat::OverrideStat;
use ondisk::xattr;
use rustix::fs::{FileType, Timespec, makedev};

use crate::{Error, Result};

/// Owner, mode, time and xattrs of an entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Meta {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
    pub(crate) mtime: Timespec,
    pub(crate) xattrs: Vec<(CString, Vec<u8>)>,
}

pub(super) fn without_xattrs(meta: Meta) -> Meta {
    Meta {
        xattrs: Vec::new(),
        ..meta
    }
}

/// The `user.containers.override_stat` value, as containers-storage writes it.
pub(super) fn override_value(meta: &Meta, dev: Option<(FileType, u32, u32)>) -> String {
    OverrideStat {
        uid: meta.uid,
        gid: meta.gid,
        mode: meta.mode & 0o7777,
        kind: dev.map(|(kind, major, minor)| (kind, makedev(major, minor))),
    }
    .format()
}

/// The override of a directory made because an entry needs it (root's, 0755,
/// as tar makes them).
pub(super) fn root_dir_override() -> String {
    OverrideStat {
        uid: 0,
        gid: 0,
        mode: 0o755,
        kind: None,
    }
    .format()
}

pub(crate) fn read_meta<R: Read>(e: &mut tar::Entry<'_, R>, entry: &str) -> Result<Meta> {
    let h = e.header();
    let bad = |what: &str| Error::entry(entry, format!("bad {what} in header"));
    // Empty numeric fields (all NUL) mean 0, as Go's archive/tar reads them.
    let mut uid = h.uid().unwrap_or(0);
    let mut gid = h.gid().unwrap_or(0);
    let mode = h.mode().map_err(|_| bad("mode"))?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    if let Ok(Some(pax)) = e.pax_extensions() {
        for ext in pax.flatten() {
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                let Some(stored) = xattr::layer_name(name) else {
                    continue;
                };
                let Ok(cname) = CString::new(stored) else {
                    return Err(Error::entry(entry, "xattr name contains a NUL byte"));
                };
                xattrs.push((cname, value.to_vec()));
            } else {
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => uid = text.parse().map_err(|_| bad("PAX uid"))?,
                    "gid" => gid = text.parse().map_err(|_| bad("PAX gid"))?,
                    "mtime" => mtime = parse_pax_time(text).ok_or_else(|| bad("PAX mtime"))?,
                    _ => {}
                }
            }
        }
    }
    let id = |v: u64, what: &str| match u32::try_from(v) {
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(Error::entry(entry, format!("{what} {v} out of range"))),
    };
    Ok(Meta {
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mode,
        mtime,
        xattrs,
    })
}

/// Parse a PAX time, `SECONDS[.FRACTION]`.
fn parse_pax_time(s: &str) -> Option<Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(Timespec { tv_sec, tv_nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        assert_eq!(parse_pax_time("12").unwrap().tv_sec, 12);
        assert!(parse_pax_time("x").is_none());
        assert!(parse_pax_time("1.x").is_none());
    }

    #[test]
    fn override_values() {
        let m = Meta {
            uid: 1,
            gid: 2,
            mode: 0o4755,
            ..Meta::default()
        };
        assert_eq!(override_value(&m, None), "1:2:04755");
        assert_eq!(
            override_value(&m, Some((FileType::CharacterDevice, 1, 3))),
            "1:2:04755:char-1-3"
        );
        assert_eq!(
            override_value(&m, Some((FileType::BlockDevice, 8, 0))),
            "1:2:04755:block-8-0"
        );
        assert_eq!(
            override_value(&m, Some((FileType::Fifo, 0, 0))),
            "1:2:04755:pipe"
        );
        assert_eq!(root_dir_override(), "0:0:0755");
    }
}
