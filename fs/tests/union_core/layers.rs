//! What the union shows: names through layers, whiteouts, opaque directories.

use super::*;

#[test]
fn lookup_finds_the_topmost_layer_and_lower_only_names() {
    let b = Branches::new(2);
    write(b.upper().join("both"), "upper");
    write(b.lower(0).join("both"), "middle");
    write(b.lower(1).join("both"), "bottom");
    write(b.lower(0).join("mid-only"), "middle");
    write(b.lower(1).join("dir/deep"), "bottom");
    let u = b.union(XattrNs::User);

    assert_eq!(read_through(&u, "both"), "upper");
    assert_eq!(read_through(&u, "mid-only"), "middle");
    assert_eq!(read_through(&u, "dir/deep"), "bottom");
    assert_eq!(u.lookup(ROOT, name("nowhere")).err(), Some(Errno::NOENT));
}

#[test]
fn an_xattr_whiteout_in_the_upper_hides_the_lower_name() {
    let b = Branches::new(1);
    write(b.lower(0).join("gone"), "lower");
    write(b.lower(0).join("kept"), "lower");
    let wh = b.upper().join("gone");
    fs::write(&wh, "").unwrap();
    rustix::fs::lsetxattr(
        &wh,
        "user.overlay.whiteout",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        b.upper(),
        "user.overlay.opaque",
        b"x",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let u = b.union(XattrNs::User);

    assert_eq!(u.lookup(ROOT, name("gone")).err(), Some(Errno::NOENT));
    assert_eq!(listing(&u, ROOT), ["kept"]);
}

#[test]
fn a_chardev_whiteout_in_the_upper_hides_the_lower_name() {
    if !have_root("a_chardev_whiteout_in_the_upper_hides_the_lower_name") {
        return;
    }
    let b = Branches::new(1);
    write(b.lower(0).join("gone"), "lower");
    write(b.lower(0).join("kept"), "lower");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        b.upper().join("gone"),
        FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let u = b.union(XattrNs::Trusted);

    assert_eq!(u.lookup(ROOT, name("gone")).err(), Some(Errno::NOENT));
    assert_eq!(listing(&u, ROOT), ["kept"]);
}

#[test]
fn an_opaque_upper_directory_hides_the_lower_children() {
    let b = Branches::new(1);
    write(b.lower(0).join("d/lower-child"), "lower");
    write(b.upper().join("d/upper-child"), "upper");
    rustix::fs::lsetxattr(
        b.upper().join("d"),
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    assert_eq!(u.lookup(d, name("lower-child")).err(), Some(Errno::NOENT));
    assert_eq!(listing(&u, d), ["upper-child"]);
}

#[test]
fn an_oci_whiteout_in_a_middle_layer_hides_the_name_below_and_itself() {
    let b = Branches::new(2);
    write(b.lower(0).join(".wh.gone"), "");
    write(b.lower(1).join("gone"), "bottom");
    write(b.lower(1).join("kept"), "bottom");
    let u = b.union(XattrNs::User);

    assert_eq!(u.lookup(ROOT, name("gone")).err(), Some(Errno::NOENT));
    assert_eq!(listing(&u, ROOT), ["kept"]);
}

#[test]
fn readdir_merges_the_layers_once_each_and_hides_whiteouts() {
    let b = Branches::new(2);
    write(b.upper().join("d/up"), "");
    write(b.upper().join("d/shared"), "");
    write(b.lower(0).join("d/shared"), "");
    write(b.lower(0).join("d/mid"), "");
    write(b.lower(0).join("d/.wh.hidden"), "");
    write(b.lower(1).join("d/hidden"), "");
    write(b.lower(1).join("d/bottom"), "");
    write(b.lower(1).join("d/removed"), "");
    let u = b.union(XattrNs::User);

    let d = lookup_path(&u, "d").unwrap();
    u.unlink(d, name("removed")).unwrap();
    assert_eq!(listing(&u, d), ["bottom", "mid", "shared", "up"]);
}

#[test]
fn an_upper_file_over_a_lower_directory_replaces_it() {
    let b = Branches::new(1);
    write(b.lower(0).join("x/child"), "lower");
    write(b.upper().join("x"), "upper file");
    let u = b.union(XattrNs::User);

    let (x, st) = u.lookup(ROOT, name("x")).unwrap();
    assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::RegularFile);
    assert_eq!(u.lookup(x.id, name("child")).err(), Some(Errno::NOTDIR));
    assert_eq!(read_through(&u, "x"), "upper file");
}

#[test]
fn a_listing_resumes_after_an_offset_without_repeats() {
    let b = Branches::new(1);
    for n in ["a", "b", "c"] {
        write(b.upper().join("d").join(n), "");
    }
    for n in ["c", "d", "e"] {
        write(b.lower(0).join("d").join(n), "");
    }
    let u = b.union(XattrNs::User);
    let d = lookup_path(&u, "d").unwrap();

    let first = u.listing_page(d, 0, false).unwrap();
    let entries = &first.entries[first.start..];
    let cut = entries.len() / 2;
    let rest = u.listing_page(d, entries[cut - 1].pos, false).unwrap();
    let mut names: Vec<_> = entries[..cut]
        .iter()
        .chain(&rest.entries[rest.start..])
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".", "..", "a", "b", "c", "d", "e"]);
}
