//! The union core driven in-process, without FUSE or a mount: a `Union` over
//! temporary branches, called as the FUSE adapter calls it, and the branches
//! checked on disk afterwards. Union semantics can so be checked on a
//! developer's laptop without root or `/dev/fuse`; the few checks that need
//! root (character-device whiteouts) skip without it, and fail under CI.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, RenameFlags};
use rustix::io::Errno;
use unionfs::dir::{Caller, NewObject};
use unionfs::{BranchConfig, Config, IdMap, Union, XattrNs};

/// The root directory's node id (FUSE's root inode number).
const ROOT: u64 = 1;

/// The caller is this process, as when a user works in their own mount.
fn caller() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        umask: 0o022,
    }
}

/// Temporary branches: `layers[0]` is the upper, the rest lowers, top first.
struct Branches {
    _tmp: tempfile::TempDir,
    layers: Vec<PathBuf>,
    work: PathBuf,
}

impl Branches {
    fn new(lowers: usize) -> Branches {
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..=lowers)
            .map(|i| tmp.path().join(format!("layer{i}")))
            .collect();
        let work = tmp.path().join("work");
        for dir in layers.iter().chain([&work]) {
            fs::create_dir(dir).unwrap();
        }
        Branches {
            _tmp: tmp,
            layers,
            work,
        }
    }

    fn upper(&self) -> &Path {
        &self.layers[0]
    }

    fn lower(&self, n: usize) -> &Path {
        &self.layers[n + 1]
    }

    /// A copy-on-write union over these branches, overlay xattrs in `ns`.
    fn union(&self, ns: XattrNs) -> Union {
        let branches = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, path)| BranchConfig {
                path: path.clone(),
                writable: i == 0,
            })
            .collect();
        Union::new(Config {
            branches,
            workdir: Some(self.work.clone()),
            cow: true,
            xattr_ns: ns,
            uids: IdMap::default(),
            gids: IdMap::default(),
            volatile: false,
            metacopy: false,
        })
        .unwrap()
    }
}

fn write(path: impl AsRef<Path>, data: &str) {
    let path = path.as_ref();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Look `path` (slash-separated, relative) up from the root, one name at a time.
fn lookup_path(u: &Union, path: &str) -> Result<u64, Errno> {
    let mut id = ROOT;
    for part in path.split('/') {
        id = u.lookup(id, name(part))?.0.id;
    }
    Ok(id)
}

/// The whole content of the file at `path` in the union, read through a handle.
fn read_through(u: &Union, path: &str) -> String {
    let (parent, leaf) = split(path);
    let (node, _) = u
        .lookup(lookup_path_or_root(u, parent), name(leaf))
        .unwrap();
    let opened = u.open(&node, OFlags::RDONLY).unwrap();
    let data = u.read(opened.fh, 0, 1 << 16).unwrap();
    u.release(opened.fh);
    String::from_utf8(data).unwrap()
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn lookup_path_or_root(u: &Union, dir: &str) -> u64 {
    if dir.is_empty() {
        ROOT
    } else {
        lookup_path(u, dir).unwrap()
    }
}

/// The names a full listing of directory `id` shows, without "." and "..".
fn listing(u: &Union, id: u64) -> Vec<String> {
    let page = u.listing_page(id, 0).unwrap();
    let mut names: Vec<String> = page.entries[page.start..]
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn xattr_of(path: &Path, key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, key, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(Errno::NODATA) => None,
        Err(e) => panic!("getxattr {key} on {}: {e}", path.display()),
    }
}

fn is_chardev_0_0(path: &Path) -> bool {
    let st = rustix::fs::lstat(path).unwrap();
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// An xattr whiteout (kernel 6.7+): an empty file marked `overlay.whiteout`,
/// in a directory marked `overlay.opaque=x` (the kernel looks only there).
fn is_xattr_whiteout(path: &Path) -> bool {
    let st = rustix::fs::lstat(path).unwrap();
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_size == 0
        && xattr_of(path, "user.overlay.whiteout").is_some()
        && xattr_of(path.parent().unwrap(), "user.overlay.opaque").as_deref() == Some(b"x")
}

/// Whether a test that needs root may run: under CI, not being root fails it.
fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (character-device whiteouts), and CI=true");
    }
    eprintln!("skipping {test}: needs root");
    false
}

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
