//! Hard links and extended attributes through the union.

use super::*;

#[test]
fn a_hard_link_to_a_lower_file_shares_its_data() {
    let b = Branches::new(1);
    write(b.lower(0).join("f"), "lower data");
    let u = b.union(XattrNs::User);

    let (f, _) = u.lookup(ROOT, name("f")).unwrap();
    let (linked, st) = u.link(f.id, ROOT, name("g")).unwrap();
    assert_eq!(st.st_nlink, 2);

    let opened = u.open(&linked, OFlags::WRONLY).unwrap();
    u.write(opened.fh, 0, b"LINKED").unwrap(); // over "lower "
    u.release(opened.fh);

    assert_eq!(read_through(&u, "f"), "LINKEDdata");
    let upper_f = rustix::fs::lstat(b.upper().join("f")).unwrap();
    let upper_g = rustix::fs::lstat(b.upper().join("g")).unwrap();
    assert_eq!(upper_f.st_ino, upper_g.st_ino, "one inode in the upper");
    assert_eq!(
        fs::read_to_string(b.lower(0).join("f")).unwrap(),
        "lower data"
    );
}

#[test]
fn an_xattr_set_through_the_union_lands_on_the_upper() {
    let b = Branches::new(1);
    write(b.lower(0).join("f"), "lower data");
    let u = b.union(XattrNs::User);

    let (f, _) = u.lookup(ROOT, name("f")).unwrap();
    u.setxattr(&f, "user.test", b"value", 0).unwrap();

    assert_eq!(u.getxattr(&f, "user.test").unwrap(), b"value");
    let upper_f = b.upper().join("f");
    assert_eq!(
        xattr_of(&upper_f, "user.test").as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(xattr_of(&b.lower(0).join("f"), "user.test"), None);
    assert_eq!(fs::read_to_string(&upper_f).unwrap(), "lower data");
}

#[test]
fn overlay_xattrs_of_the_union_are_not_shown_through_it() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/f"), "");
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    u.unlink(d, name("f")).unwrap();
    u.rmdir(ROOT, name("d")).unwrap();
    let made = u
        .create(ROOT, name("d"), NewObject::Dir { mode: 0o755 }, caller())
        .unwrap();

    assert!(xattr_of(&b.upper().join("d"), "user.overlay.opaque").is_some());
    let names = u.listxattr(&made.node).unwrap();
    assert!(
        !names
            .split(|&c| c == 0)
            .any(|n| n.starts_with(b"user.overlay.")),
        "listxattr shows the union's own markers: {names:?}"
    );
}
