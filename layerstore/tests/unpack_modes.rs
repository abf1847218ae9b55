//! The two forms of a layer tree: overlay format (root) and the rootless form
//! (`.wh.` files kept, owners and modes in `user.containers.override_stat`).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use layerstore::unpack::{UnpackOptions, unpack};

fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o555);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_data(&mut h, "dir", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4711);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h.set_size(5);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hi"[..])])
        .unwrap();
    b.append_data(&mut h, "dir/prog", &b"12345"[..]).unwrap();
    for name in ["dir/.wh.gone", "dir/sub/.wh..wh..opq"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "null", std::io::empty()).unwrap();
    b.into_inner().unwrap()
}

fn xattr(p: &Path, name: &str) -> Option<String> {
    let mut v = [0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    Some(String::from_utf8_lossy(&v[..n]).into_owned())
}

#[test]
fn rootless_form_keeps_markers_and_overrides() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    fs::create_dir(&dest).unwrap();
    let got = unpack(&layer_tar()[..], &dest, UnpackOptions { privileged: false }).unwrap();
    assert_eq!(got.diff_id, layerstore::Digest::of_bytes(&layer_tar()));
    assert!(dest.join("dir/.wh.gone").is_file());
    assert!(dest.join("dir/sub/.wh..wh..opq").is_file());
    assert_eq!(
        xattr(&dest.join("dir/prog"), "user.containers.override_stat").as_deref(),
        Some("1000:1001:04711")
    );
    assert_eq!(
        xattr(&dest.join("dir"), "user.containers.override_stat").as_deref(),
        Some("1000:1000:0555")
    );
    assert_eq!(
        xattr(&dest.join("dir/prog"), "user.note").as_deref(),
        Some("hi")
    );
    let null = fs::symlink_metadata(dest.join("null")).unwrap();
    assert!(null.is_file());
    assert_eq!(
        xattr(&dest.join("null"), "user.containers.override_stat").as_deref(),
        Some("0:0:0666:char-1-3")
    );
    // The owner can still read and walk everything (and remove it).
    assert_eq!(
        fs::metadata(dest.join("dir")).unwrap().mode() & 0o700,
        0o700
    );
    assert_eq!(
        fs::metadata(dest.join("dir/prog")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::metadata(dest.join("dir")).unwrap().mtime(),
        1_600_000_000
    );
}

#[test]
fn privileged_form_is_overlay_format() {
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "needs root under CI=true"
        );
        eprintln!("SKIPPED: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    fs::create_dir(&dest).unwrap();
    unpack(&layer_tar()[..], &dest, UnpackOptions { privileged: true }).unwrap();
    let wh = fs::symlink_metadata(dest.join("dir/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dest.join("dir/.wh.gone").exists());
    assert_eq!(
        xattr(&dest.join("dir/sub"), "trusted.overlay.opaque").as_deref(),
        Some("y")
    );
    let prog = fs::metadata(dest.join("dir/prog")).unwrap();
    assert_eq!(
        (prog.uid(), prog.gid(), prog.mode() & 0o7777),
        (1000, 1001, 0o4711)
    );
    assert_eq!(
        fs::metadata(dest.join("dir")).unwrap().mode() & 0o7777,
        0o555
    );
    let null = fs::symlink_metadata(dest.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
}

#[test]
fn rootless_tree_round_trips_through_diff() {
    // A layer unpacked without privilege, written back as a tar by `diff`,
    // unpacked as root: the same owners, modes, device and whiteouts.
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "needs root under CI=true"
        );
        eprintln!("SKIPPED: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let rootless = t.path().join("rootless");
    fs::create_dir(&rootless).unwrap();
    unpack(
        &layer_tar()[..],
        &rootless,
        UnpackOptions { privileged: false },
    )
    .unwrap();
    let opts = layerstore::diff::DiffOptions::overlay(Vec::new());
    let layer = layerstore::diff::tree_to_layer(&rootless, t.path(), &opts).unwrap();
    let back = t.path().join("back");
    fs::create_dir(&back).unwrap();
    let got = unpack(
        fs::File::open(&layer.path).unwrap(),
        &back,
        UnpackOptions { privileged: true },
    )
    .unwrap();
    assert_eq!(got.diff_id, layer.diff_id);
    let prog = fs::metadata(back.join("dir/prog")).unwrap();
    assert_eq!(
        (prog.uid(), prog.gid(), prog.mode() & 0o7777),
        (1000, 1001, 0o4711)
    );
    assert_eq!(
        xattr(&back.join("dir/prog"), "user.note").as_deref(),
        Some("hi")
    );
    assert!(xattr(&back.join("dir/prog"), "user.containers.override_stat").is_none());
    let null = fs::symlink_metadata(back.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    let wh = fs::symlink_metadata(back.join("dir/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr(&back.join("dir/sub"), "trusted.overlay.opaque").as_deref(),
        Some("y")
    );
    assert_eq!(
        fs::metadata(back.join("dir")).unwrap().mode() & 0o7777,
        0o555
    );
}
