//! Confinement of tar paths to the layer. Pure logic. (What names and xattr
//! names mean in a layer is the `ondisk` crate's.)

/// Split a tar path into components, confined to the layer: a leading `/` is
/// dropped (the path is taken relative to the layer root), `.` and empty
/// components are skipped, `..` and NUL bytes are refused. An empty result is
/// the layer root itself.
pub fn split_path(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c if c.len() > 255 => return Err("name longer than 255 bytes"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_confines_paths() {
        assert_eq!(split_path(b"./a/b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            split_path(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert_eq!(split_path(b"a//./b").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(split_path(b"./").unwrap().is_empty());
        assert!(split_path(b"").unwrap().is_empty());
        assert!(split_path(b"../x").is_err());
        assert!(split_path(b"a/../../x").is_err());
        assert!(split_path(b"a/..").is_err());
        assert!(split_path(b"a\0b").is_err());
        assert!(split_path(&[b'x'; 256]).is_err());
        assert!(split_path(b"..a/b..").is_ok());
    }
}
