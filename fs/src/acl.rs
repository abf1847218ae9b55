//! POSIX ACL inheritance for objects made in the workdir.
//!
//! A new file or directory is made in the workdir and renamed into its upper
//! directory, so the upper filesystem never sees it created under its parent
//! and cannot apply the parent's default ACL. This module does what the
//! kernel's `posix_acl_create` does, on the xattr values: the new object's
//! access ACL is the parent's default ACL masked by the requested mode, its
//! mode follows from that ACL (the umask is not applied), and a directory
//! inherits the default ACL itself.

/// The default ACL of a directory, as stored.
pub const DEFAULT: &str = "system.posix_acl_default";
/// The access ACL of an object, as stored.
pub const ACCESS: &str = "system.posix_acl_access";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// What a new object gets from its parent's default ACL.
#[derive(Debug, PartialEq, Eq)]
pub struct Inherited {
    /// The object's permission bits (and the setuid/setgid/sticky bits asked for).
    pub mode: u32,
    /// Its access ACL, when the ACL says more than the mode bits.
    pub access: Option<Vec<u8>>,
    /// Its default ACL (directories only).
    pub default: Option<Vec<u8>>,
}

fn parse(value: &[u8]) -> Option<Vec<Entry>> {
    let (head, body) = value.split_at_checked(HEADER)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || body.len() % ENTRY != 0 {
        return None;
    }
    let entries: Vec<Entry> = body
        .chunks_exact(ENTRY)
        .map(|e| Entry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect();
    let has = |tag| entries.iter().any(|e| e.tag == tag);
    (has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER)).then_some(entries)
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

/// What an object of `mode` (umask not applied) made under a directory with
/// this default ACL gets; None when the value is not a valid ACL (then the
/// caller falls back to the umask, as if there were none).
pub fn inherit(default_acl: &[u8], mode: u32, is_dir: bool) -> Option<Inherited> {
    let mut acl = parse(default_acl)?;
    // posix_acl_create_masq: each class keeps only what the mode grants, and
    // the mode keeps only what the ACL grants.
    let mut bits = mode & 0o777;
    let mut equivalent = true;
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        let shift = match e.tag {
            USER_OBJ => 6,
            OTHER => 0,
            MASK => 3,
            GROUP_OBJ if !has_mask => 3,
            GROUP_OBJ => continue,
            USER | GROUP => {
                equivalent = false;
                continue;
            }
            _ => return None,
        };
        if e.tag == MASK {
            equivalent = false;
        }
        e.perm &= ((mode >> shift) & 7) as u16;
        bits &= (u32::from(e.perm) << shift) | !(0o7 << shift);
    }
    Some(Inherited {
        mode: (mode & !0o777) | bits,
        access: (!equivalent).then(|| encode(&acl)),
        default: is_dir.then(|| default_acl.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(
            &entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn a_named_user_entry_is_kept_and_the_group_bits_follow_the_mask() {
        // setfacl -d -m u:65534:rwx on a 0755 directory
        let default = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        let file = inherit(&default, 0o666, false).unwrap();
        assert_eq!(file.mode, 0o664);
        assert_eq!(
            file.access.unwrap(),
            acl(&[
                (USER_OBJ, 6, ANY),
                (USER, 7, 65534),
                (GROUP_OBJ, 5, ANY),
                (MASK, 6, ANY),
                (OTHER, 4, ANY),
            ])
        );
        assert_eq!(file.default, None);
        let dir = inherit(&default, 0o777, true).unwrap();
        assert_eq!(dir.mode, 0o775);
        assert_eq!(dir.default.unwrap(), default);
    }

    #[test]
    fn a_minimal_default_acl_only_narrows_the_mode() {
        let default = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 0, ANY)]);
        let file = inherit(&default, 0o4666, false).unwrap();
        assert_eq!(file.mode, 0o4600);
        assert_eq!(file.access, None);
    }

    #[test]
    fn invalid_values_are_not_acls() {
        assert_eq!(inherit(b"", 0o644, false), None);
        assert_eq!(inherit(&[1, 0, 0, 0], 0o644, false), None);
        assert_eq!(inherit(&acl(&[(USER_OBJ, 7, ANY)]), 0o644, false), None);
        let mut odd = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 0, ANY)]);
        odd.push(0);
        assert_eq!(inherit(&odd, 0o644, false), None);
    }
}
