//! `user.containers.override_stat`: where owner, mode and device type live
//! when the branch's filesystem could not take them (rootless), as
//! containers-storage and fuse-overlayfs write them.
//!
//! The value is `uid:gid:0mode[:type]`, the type one of `char-MAJ-MIN`,
//! `block-MAJ-MIN`, `pipe`, `socket`, `dir`, `file`, `symlink`. A value that
//! does not parse whole (an unknown type included) is no override at all.

use rustix::fs::{FileType, Stat};

/// The xattr's name.
pub const XATTR: &str = "user.containers.override_stat";

/// A parsed `user.containers.override_stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    /// The object's real type and device number, when its stand-in differs.
    pub kind: Option<(FileType, u64)>,
}

impl OverrideStat {
    pub fn parse(v: &[u8]) -> Option<OverrideStat> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()? & 0o7777;
        let kind = match it.next() {
            None => None,
            Some(k) => Some(parse_kind(k)?),
        };
        Some(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }

    /// The value to store. The type is written only for the objects a
    /// rootless branch keeps as an empty file (devices, fifos, sockets): a
    /// directory, file or symlink is its own stand-in.
    pub fn format(&self) -> String {
        let base = format!("{}:{}:0{:o}", self.uid, self.gid, self.mode & 0o7777);
        let (major, minor) = (
            rustix::fs::major(self.kind.map_or(0, |k| k.1)),
            rustix::fs::minor(self.kind.map_or(0, |k| k.1)),
        );
        match self.kind.map(|k| k.0) {
            Some(FileType::CharacterDevice) => format!("{base}:char-{major}-{minor}"),
            Some(FileType::BlockDevice) => format!("{base}:block-{major}-{minor}"),
            Some(FileType::Fifo) => format!("{base}:pipe"),
            Some(FileType::Socket) => format!("{base}:socket"),
            _ => base,
        }
    }

    /// Show `st` with the owner, mode and type recorded here.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let kind = self
            .kind
            .map_or(st.st_mode & libc::S_IFMT, |(k, _)| k.as_raw_mode());
        st.st_mode = kind | self.mode;
        if let Some((_, rdev)) = self.kind {
            st.st_rdev = rdev;
        }
    }
}

fn parse_kind(k: &str) -> Option<(FileType, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (ma, mi) = rest.split_once('-')?;
        Some(rustix::fs::makedev(ma.parse().ok()?, mi.parse().ok()?))
    };
    match k {
        "pipe" => Some((FileType::Fifo, 0)),
        "socket" => Some((FileType::Socket, 0)),
        "dir" => Some((FileType::Directory, 0)),
        "file" => Some((FileType::RegularFile, 0)),
        "symlink" => Some((FileType::Symlink, 0)),
        _ => {
            if let Some(rest) = k.strip_prefix("char-") {
                Some((FileType::CharacterDevice, dev(rest)?))
            } else if let Some(rest) = k.strip_prefix("block-") {
                Some((FileType::BlockDevice, dev(rest)?))
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::makedev;

    fn parse(v: &str) -> Option<OverrideStat> {
        OverrideStat::parse(v.as_bytes())
    }

    fn kind_of(v: &str) -> Option<(FileType, u64)> {
        parse(v).expect("parses").kind
    }

    #[test]
    fn the_name_is_the_containers_one() {
        assert_eq!(XATTR, "user.containers.override_stat");
    }

    #[test]
    fn owner_and_mode() {
        let o = parse("0:0:0755").expect("plain");
        assert_eq!((o.uid, o.gid, o.mode, o.kind), (0, 0, 0o755, None));
        let o = parse("1000:100:04750").expect("setuid");
        assert_eq!((o.uid, o.gid, o.mode), (1000, 100, 0o4750));
        // The type bits of a mode are dropped: the type is its own field.
        assert_eq!(parse("0:0:020644:char-1-3").expect("dev").mode, 0o644);
        let o = OverrideStat {
            uid: 1,
            gid: 2,
            mode: 0o4755,
            kind: None,
        };
        assert_eq!(o.format(), "1:2:04755");
        assert_eq!(parse(&o.format()), Some(o));
        let zero = OverrideStat { mode: 0, ..o };
        assert_eq!(zero.format(), "1:2:00");
        assert_eq!(parse("1:2:00"), Some(zero));
    }

    #[test]
    fn every_type_parses() {
        let char_dev = (FileType::CharacterDevice, makedev(4, 1));
        assert_eq!(kind_of("5:6:0620:char-4-1"), Some(char_dev));
        let block = (FileType::BlockDevice, makedev(8, 0));
        assert_eq!(kind_of("0:0:0660:block-8-0"), Some(block));
        assert_eq!(kind_of("0:0:0644:pipe"), Some((FileType::Fifo, 0)));
        assert_eq!(kind_of("0:0:0755:socket"), Some((FileType::Socket, 0)));
        assert_eq!(kind_of("0:0:0755:dir"), Some((FileType::Directory, 0)));
        assert_eq!(kind_of("0:0:0644:file"), Some((FileType::RegularFile, 0)));
        assert_eq!(kind_of("0:0:0777:symlink"), Some((FileType::Symlink, 0)));
        let big = (FileType::BlockDevice, makedev(259, 65536));
        assert_eq!(kind_of("0:0:0660:block-259-65536"), Some(big));
    }

    #[test]
    fn every_type_formats() {
        let with = |kind| {
            OverrideStat {
                uid: 5,
                gid: 6,
                mode: 0o620,
                kind: Some(kind),
            }
            .format()
        };
        let char_dev = (FileType::CharacterDevice, makedev(4, 1));
        assert_eq!(with(char_dev), "5:6:0620:char-4-1");
        let block = (FileType::BlockDevice, makedev(259, 65536));
        assert_eq!(with(block), "5:6:0620:block-259-65536");
        assert_eq!(with((FileType::Fifo, 0)), "5:6:0620:pipe");
        assert_eq!(with((FileType::Socket, 0)), "5:6:0620:socket");
        // A directory, file or symlink is its own stand-in.
        assert_eq!(with((FileType::Directory, 0)), "5:6:0620");
        assert_eq!(with((FileType::RegularFile, 0)), "5:6:0620");
        assert_eq!(with((FileType::Symlink, 0)), "5:6:0620");
        for v in [
            "5:6:0620:char-4-1",
            "5:6:0620:block-8-0",
            "5:6:0620:pipe",
            "5:6:0620:socket",
        ] {
            assert_eq!(parse(v).expect("parses").format(), v);
        }
    }

    #[test]
    fn malformed_values_are_no_override() {
        for v in [
            "",
            "x",
            "x:0:0644",
            "0:x:0644",
            "0:0:0x",
            "0:0:0899",
            "0:0",
            "0:0:",
            "-1:0:0644",
            "4294967296:0:0644",
            "0:0:0644:bogus",
            "0:0:0644:",
            "0:0:0644:char",
            "0:0:0644:char-1",
            "0:0:0644:char-1-x",
            "0:0:0644:char-1-3-4",
            "0:0:0644:block--3",
            "0:0:0644:pipe:x",
            "0:0:0644:Socket",
            " 0:0:0644",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
        assert_eq!(OverrideStat::parse(b"0:0:\xff"), None);
    }

    #[test]
    fn applies_owner_mode_and_type() {
        // Any stat will do: every field compared is set first.
        let mut st = rustix::fs::stat("/").expect("stat /");
        st.st_mode = FileType::RegularFile.as_raw_mode() | 0o600;
        (st.st_uid, st.st_gid, st.st_rdev) = (1000, 1000, 0);
        let plain = parse("0:0:0755").expect("plain");
        plain.apply(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (0, 0));
        assert_eq!(st.st_mode, FileType::RegularFile.as_raw_mode() | 0o755);
        let dev = parse("5:6:0620:char-4-1").expect("device");
        dev.apply(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (5, 6));
        assert_eq!(st.st_mode, FileType::CharacterDevice.as_raw_mode() | 0o620);
        assert_eq!(st.st_rdev, makedev(4, 1));
        let sock = parse("0:0:0755:socket").expect("socket");
        sock.apply(&mut st);
        assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::Socket);
    }
}
