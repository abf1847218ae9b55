//! The origin of a copied-up object, as kernel overlayfs stores it in
//! `overlay.origin`: `struct ovl_fb`, the lower filesystem's UUID and the
//! object's file handle. Its hex form names the object's entry in the
//! hard-link index (`index/<origin as hex>`, the kernel's `index=on` layout).

/// `struct file_handle`'s type and payload, as `name_to_handle_at` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

/// `OVL_FH_MAGIC`.
pub const MAGIC: u8 = 0xfb;
/// Bytes before the handle: version, magic, len, flags, type, `uuid[16]`.
pub const HEADER_LEN: usize = 21;
/// `OVL_FH_FLAG_BIG_ENDIAN`: the handle was made on a big-endian machine.
const FLAG_BIG_ENDIAN: u8 = 1;

/// `struct ovl_fb`: version, magic, len, flags, type, `uuid[16]`, fid. The
/// length fits one byte: a kernel handle is at most 128 bytes
/// (`MAX_HANDLE_SZ`).
pub fn encode(uuid: &[u8; 16], handle: &FileHandle) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + handle.bytes.len());
    v.push(0);
    v.push(MAGIC);
    v.push((HEADER_LEN + handle.bytes.len()) as u8);
    v.push(if cfg!(target_endian = "big") {
        FLAG_BIG_ENDIAN
    } else {
        0
    });
    v.push(handle.handle_type as u8);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&handle.bytes);
    v
}

/// The UUID and handle of an `overlay.origin` value, or None for anything
/// but a version-0 `struct ovl_fb` of the length it says.
pub fn parse(v: &[u8]) -> Option<([u8; 16], FileHandle)> {
    if v.len() < HEADER_LEN || v[0] != 0 || v[1] != MAGIC || v[2] as usize != v.len() {
        return None;
    }
    let uuid: [u8; 16] = v[5..21].try_into().ok()?;
    Some((
        uuid,
        FileHandle {
            handle_type: i32::from(v[4]),
            bytes: v[HEADER_LEN..].to_vec(),
        },
    ))
}

/// The name of an origin's entry in the hard-link index: its bytes in
/// lowercase hex.
pub fn index_name(origin: &[u8]) -> String {
    origin.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> FileHandle {
        FileHandle {
            handle_type: 1,
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    #[test]
    fn origin_round_trips_and_rejects_garbage() {
        let h = handle();
        let v = encode(&[7; 16], &h);
        assert_eq!(v.len(), 29);
        let (uuid, back) = parse(&v).expect("parses");
        assert_eq!(uuid, [7; 16]);
        assert_eq!(back, h);
        assert!(parse(&v[..20]).is_none());
        let mut bad = v.clone();
        bad[1] = 0;
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn origin_bytes_are_struct_ovl_fb() {
        let uuid: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let v = encode(&uuid, &handle());
        let flags = if cfg!(target_endian = "big") { 1 } else { 0 };
        let mut want = vec![0, 0xfb, 29, flags, 1];
        want.extend_from_slice(&uuid);
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(v, want);
    }

    #[test]
    fn malformed_origins_are_refused() {
        let v = encode(&[7; 16], &handle());
        let mut version = v.clone();
        version[0] = 1;
        assert!(parse(&version).is_none());
        let mut long = v.clone();
        long.push(0);
        assert!(parse(&long).is_none());
        let mut len = v.clone();
        len[2] = 28;
        assert!(parse(&len).is_none());
        assert!(parse(&[]).is_none());
        // A header alone is an empty handle, as the kernel's length check allows.
        let empty = encode(
            &[0; 16],
            &FileHandle {
                handle_type: 0,
                bytes: vec![],
            },
        );
        assert_eq!(empty.len(), HEADER_LEN);
        assert_eq!(parse(&empty).map(|(_, h)| h.bytes.len()), Some(0));
    }

    #[test]
    fn index_names_are_lowercase_hex() {
        assert_eq!(index_name(&[0x00, 0xfb, 0x1d, 0xab]), "00fb1dab");
        assert_eq!(index_name(&[]), "");
        let v = encode(&[0xff; 16], &handle());
        let flags = if cfg!(target_endian = "big") {
            "01"
        } else {
            "00"
        };
        let want = format!("00fb1d{flags}01{}0102030405060708", "ff".repeat(16));
        assert_eq!(index_name(&v), want);
    }
}
