//! Attribute changes and directory renames through the union.

use rustix::fs::XattrFlags;
use unionfs::SetAttr;

use super::*;

fn mode_of(path: &Path) -> u32 {
    rustix::fs::lstat(path).unwrap().st_mode & 0o7777
}

#[test]
fn chmod_of_a_lower_file_copies_it_up_with_its_data() {
    let b = Branches::new(1);
    write(b.lower(0).join("f"), "lower data");
    fs::set_permissions(
        b.lower(0).join("f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let u = b.union(XattrNs::User);

    let (f, _) = u.lookup(ROOT, name("f")).unwrap();
    let req = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let st = u.setattr(&f, &req).unwrap();

    assert_eq!(st.st_mode & 0o7777, 0o600);
    assert_eq!(mode_of(&b.upper().join("f")), 0o600);
    assert_eq!(mode_of(&b.lower(0).join("f")), 0o644);
    assert_eq!(
        fs::read_to_string(b.upper().join("f")).unwrap(),
        "lower data"
    );
}

#[test]
fn truncating_a_lower_file_changes_only_its_upper_copy() {
    let b = Branches::new(1);
    write(b.lower(0).join("f"), "lower data");
    let u = b.union(XattrNs::User);

    let (f, _) = u.lookup(ROOT, name("f")).unwrap();
    let req = SetAttr {
        size: Some(5),
        ..SetAttr::default()
    };
    assert_eq!(u.setattr(&f, &req).unwrap().st_size, 5);

    assert_eq!(read_through(&u, "f"), "lower");
    assert_eq!(fs::read_to_string(b.upper().join("f")).unwrap(), "lower");
    assert_eq!(
        fs::read_to_string(b.lower(0).join("f")).unwrap(),
        "lower data"
    );
}

#[test]
fn removing_a_lower_xattr_removes_it_from_the_upper_copy_only() {
    let b = Branches::new(1);
    let lower_f = b.lower(0).join("f");
    write(&lower_f, "lower data");
    rustix::fs::lsetxattr(&lower_f, "user.keep", b"1", XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(&lower_f, "user.drop", b"2", XattrFlags::empty()).unwrap();
    let u = b.union(XattrNs::User);

    let (f, _) = u.lookup(ROOT, name("f")).unwrap();
    assert_eq!(u.getxattr(&f, "user.drop").unwrap(), b"2");
    u.removexattr(&f, "user.drop").unwrap();

    assert_eq!(u.getxattr(&f, "user.drop").err(), Some(Errno::NODATA));
    assert_eq!(u.getxattr(&f, "user.keep").unwrap(), b"1");
    let upper_f = b.upper().join("f");
    assert_eq!(xattr_of(&upper_f, "user.drop"), None);
    assert_eq!(xattr_of(&upper_f, "user.keep").as_deref(), Some(&b"1"[..]));
    assert_eq!(xattr_of(&lower_f, "user.drop").as_deref(), Some(&b"2"[..]));
}

#[test]
fn rename_noreplace_over_a_lower_name_is_refused() {
    let b = Branches::new(1);
    write(b.lower(0).join("a"), "a");
    write(b.lower(0).join("b"), "b");
    let u = b.union(XattrNs::User);

    let done = u.rename(ROOT, name("a"), ROOT, name("b"), RenameFlags::NOREPLACE);
    assert_eq!(done.err(), Some(Errno::EXIST));
    assert_eq!(read_through(&u, "a"), "a");
    assert_eq!(read_through(&u, "b"), "b");
}

#[test]
fn renaming_a_lower_file_over_another_replaces_it() {
    let b = Branches::new(1);
    write(b.lower(0).join("a"), "a");
    write(b.lower(0).join("b"), "b");
    let u = b.union(XattrNs::User);

    u.rename(ROOT, name("a"), ROOT, name("b"), RenameFlags::empty())
        .unwrap();

    assert_eq!(u.lookup(ROOT, name("a")).err(), Some(Errno::NOENT));
    assert_eq!(read_through(&u, "b"), "a");
    assert_eq!(listing(&u, ROOT), ["b"]);
}

#[test]
fn renaming_a_lower_directory_keeps_its_children_by_redirect() {
    let b = Branches::new(1);
    write(b.lower(0).join("old/child"), "lower child");
    let u = b.union(XattrNs::User);

    u.rename(ROOT, name("old"), ROOT, name("new"), RenameFlags::empty())
        .unwrap();

    assert_eq!(u.lookup(ROOT, name("old")).err(), Some(Errno::NOENT));
    assert_eq!(read_through(&u, "new/child"), "lower child");
    let new = lookup_path(&u, "new").unwrap();
    assert_eq!(listing(&u, new), ["child"]);
    let redirect = xattr_of(&b.upper().join("new"), "user.overlay.redirect");
    assert_eq!(redirect.as_deref(), Some(&b"/old"[..]));
    assert!(!b.upper().join("new/child").exists(), "nothing copied");
    assert!(b.lower(0).join("old/child").exists());
}
