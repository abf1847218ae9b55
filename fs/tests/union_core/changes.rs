//! Changes through the union: copy-up, unlink, mkdir, rename, create.

use super::*;

#[test]
fn writing_a_lower_file_copies_it_up_and_leaves_the_lower_alone() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/f"), "lower data");
    let u = b.union(XattrNs::User);

    let (node, _) = u.lookup(lookup_path(&u, "d").unwrap(), name("f")).unwrap();
    let opened = u.open(&node, OFlags::WRONLY).unwrap();
    assert_eq!(u.write(opened.fh, 0, b"UPPER").unwrap(), 5);
    u.release(opened.fh);

    assert_eq!(
        fs::read_to_string(b.upper().join("d/f")).unwrap(),
        "UPPER data"
    );
    assert_eq!(
        fs::read_to_string(b.lower(0).join("d/f")).unwrap(),
        "lower data"
    );
    assert_eq!(read_through(&u, "d/f"), "UPPER data");
}

#[test]
fn unlinking_a_lower_file_leaves_a_whiteout_in_the_upper() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/f"), "lower");
    write(b.lower(0).join("d/g"), "lower");
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    u.unlink(d, name("f")).unwrap();

    let wh = b.upper().join("d/f");
    if rustix::process::geteuid().is_root() {
        assert!(is_chardev_0_0(&wh), "as root a whiteout is a 0/0 device");
    } else {
        // Linux 5.8+ lets anyone make a 0/0 device; else the xattr form.
        assert!(is_chardev_0_0(&wh) || is_xattr_whiteout(&wh));
    }
    assert!(
        b.lower(0).join("d/f").exists(),
        "the lower is never changed"
    );
    assert_eq!(u.lookup(d, name("f")).err(), Some(Errno::NOENT));
    assert_eq!(listing(&u, d), ["g"]);
}

#[test]
fn mkdir_over_a_removed_lower_directory_is_opaque() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/old-child"), "lower");
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    u.unlink(d, name("old-child")).unwrap();
    u.rmdir(ROOT, name("d")).unwrap();
    assert_eq!(u.lookup(ROOT, name("d")).err(), Some(Errno::NOENT));
    u.create(ROOT, name("d"), NewObject::Dir { mode: 0o755 }, caller())
        .unwrap();

    let upper_d = b.upper().join("d");
    assert!(upper_d.is_dir());
    assert_eq!(
        xattr_of(&upper_d, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let d = lookup_path(&u, "d").unwrap();
    assert_eq!(listing(&u, d), Vec::<String>::new());
    assert_eq!(u.lookup(d, name("old-child")).err(), Some(Errno::NOENT));
    assert!(b.lower(0).join("d/old-child").exists());
}

#[test]
fn renaming_a_lower_file_moves_it_in_the_union_only() {
    let b = Branches::new(1);
    write(b.lower(0).join("old"), "lower data");
    let u = b.union(XattrNs::User);

    u.rename(ROOT, name("old"), ROOT, name("new"), RenameFlags::empty())
        .unwrap();

    assert_eq!(u.lookup(ROOT, name("old")).err(), Some(Errno::NOENT));
    assert_eq!(read_through(&u, "new"), "lower data");
    assert_eq!(listing(&u, ROOT), ["new"]);
    assert_eq!(
        fs::read_to_string(b.upper().join("new")).unwrap(),
        "lower data"
    );
    assert_eq!(
        fs::read_to_string(b.lower(0).join("old")).unwrap(),
        "lower data"
    );
}

#[test]
fn creating_a_file_puts_it_in_the_upper_only() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/old"), "lower");
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
    let made = u
        .create(
            d,
            name("new"),
            NewObject::File { mode: 0o644, flags },
            caller(),
        )
        .unwrap();
    let fh = u.adopt(&made.node, made.fd.expect("a created file comes open"));
    u.write(fh, 0, b"fresh").unwrap();
    u.release(fh);

    assert_eq!(
        fs::read_to_string(b.upper().join("d/new")).unwrap(),
        "fresh"
    );
    assert!(!b.lower(0).join("d/new").exists());
    assert_eq!(listing(&u, d), ["new", "old"]);
    let again = u.create(
        d,
        name("old"),
        NewObject::File { mode: 0o644, flags },
        caller(),
    );
    assert_eq!(
        again.err().map(|_| ()),
        Some(()),
        "O_EXCL over a lower name"
    );
}

#[test]
fn a_merged_directory_with_lower_children_is_not_empty() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/child"), "lower");
    fs::create_dir(b.upper().join("d")).unwrap();
    let u = b.union(XattrNs::User);

    assert_eq!(u.rmdir(ROOT, name("d")).err(), Some(Errno::NOTEMPTY));
    let d = lookup_path(&u, "d").unwrap();
    u.unlink(d, name("child")).unwrap();
    u.rmdir(ROOT, name("d")).unwrap();
    assert_eq!(u.lookup(ROOT, name("d")).err(), Some(Errno::NOENT));
    assert!(b.lower(0).join("d/child").exists());
}

#[test]
fn a_symlink_made_through_the_union_reads_back() {
    let b = Branches::new(1);
    let u = b.union(XattrNs::User);

    let target = Path::new("some/where");
    let made = u
        .create(ROOT, name("ln"), NewObject::Symlink { target }, caller())
        .unwrap();

    assert_eq!(u.readlink(&made.node).unwrap(), b"some/where");
    assert_eq!(fs::read_link(b.upper().join("ln")).unwrap(), target);
}
