//! The mount table of this process's mount namespace, as
//! `/proc/self/mountinfo` gives it (proc(5)): who is mounted where, with which
//! device and filesystem type.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount (field 1).
    pub id: u64,
    /// `major:minor` of the filesystem (field 3): for FUSE, the connection.
    pub dev: String,
    /// Where it is mounted, escapes decoded (field 5).
    pub mount_point: PathBuf,
    /// The filesystem type (`fuse`, `fuse.NAME`, `overlay`, `ext4`…).
    pub fs_type: String,
}

impl MountEntry {
    /// Does unmounting this mount's last copy end a process or free an
    /// upper? FUSE mounts keep their daemon serving, overlay mounts keep
    /// their upper and workdir in use.
    pub fn holds_a_daemon_or_upper(&self) -> bool {
        self.fs_type == "fuse"
            || self.fs_type == "fuseblk"
            || self.fs_type.starts_with("fuse.")
            || self.fs_type == "overlay"
    }
}

/// This mount namespace's table; empty without a readable /proc.
pub fn read() -> Vec<MountEntry> {
    std::fs::read("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Parse a mountinfo table; lines that do not have the expected shape are skipped.
pub fn parse(table: &[u8]) -> Vec<MountEntry> {
    table
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // Optional fields (4..) end with a lone "-"; the type follows it.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    Some(MountEntry {
        id: std::str::from_utf8(fields[0]).ok()?.parse().ok()?,
        dev: String::from_utf8_lossy(fields.get(2)?).into_owned(),
        mount_point: PathBuf::from(OsString::from_vec(decode_field(fields.get(4)?))),
        fs_type: String::from_utf8_lossy(fields.get(sep + 1)?).into_owned(),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040` `\011` `\012` `\134`.
pub fn decode_field(field: &[u8]) -> Vec<u8> {
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

    const TABLE: &[u8] = b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
45 27 0:40 / /var/tmp/a\\040b/mnt rw,relatime shared:7 master:1 - fuse unionmount rw,user_id=0\n\
46 27 0:41 / /run/o rw - overlay overlay rw,lowerdir=/l\n\
garbage line\n";

    #[test]
    fn fields_with_optional_tags_and_escapes() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].id, 45);
        assert_eq!(t[1].dev, "0:40");
        assert_eq!(t[1].mount_point, PathBuf::from("/var/tmp/a b/mnt"));
        assert_eq!(t[1].fs_type, "fuse");
        assert_eq!(t[2].fs_type, "overlay");
    }

    #[test]
    fn which_mounts_hold_a_daemon_or_an_upper() {
        let kinds: Vec<bool> = parse(TABLE)
            .iter()
            .map(MountEntry::holds_a_daemon_or_upper)
            .collect();
        assert_eq!(kinds, [false, true, true]);
    }
}
