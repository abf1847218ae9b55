//! What a writable branch's filesystem can hold is tried at mount time, not
//! read from its name: ext4 and tmpfs hold everything; exFAT and FAT32,
//! through their FUSE drivers on images made for the test, lack most of it,
//! and an upper there is refused in one line naming the branch and what it
//! lacks, before anything is mounted.

mod support;

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use support::{Mount, Scratch, bin, is_mounted};
use unionfs::probe::Abilities;

/// Probe `dir` as the daemon probes its workdir: in a fresh subdirectory.
fn probe(dir: &Path) -> Abilities {
    let sub = dir.join("probe-here");
    fs::create_dir(&sub).unwrap();
    let fd = fs::File::open(&sub).unwrap();
    let found = Abilities::probe(fd.as_fd(), "trusted.overlay.probe").unwrap();
    drop(fd);
    let left: Vec<_> = fs::read_dir(&sub).unwrap().collect();
    assert!(left.is_empty(), "the probe left {left:?}");
    fs::remove_dir(&sub).unwrap();
    found
}

/// exFAT (exfatprogs, exfat-fuse) on a loop device, at `s/exfat`.
fn exfat(s: &Scratch) -> Option<Mount> {
    let driver = ["mount.exfat-fuse", "-o", "noatime"];
    fuse_branch(
        s,
        "exfat",
        &["mkfs.exfat"],
        &driver,
        true,
        "exfatprogs and exfat-fuse",
    )
}

/// FAT32 (dosfstools, fusefat) on its image, at `s/fat`.
fn fat32(s: &Scratch) -> Option<Mount> {
    let driver = ["fusefat", "-o", "rw+"];
    fuse_branch(
        s,
        "fat",
        &["mkfs.vfat", "-F", "32"],
        &driver,
        false,
        "dosfstools and fusefat",
    )
}

/// A 64 MiB filesystem at `s/<dir>` (see `Mount::fuse_fs`); None, after
/// saying why (a failure under CI=true), where it cannot be made.
fn fuse_branch(
    s: &Scratch,
    dir: &str,
    mkfs: &[&str],
    driver: &[&str],
    block: bool,
    packages: &str,
) -> Option<Mount> {
    let image = s.path().join(format!("{dir}.img"));
    match Mount::fuse_fs(&image, mkfs, 64 << 20, driver, block, &s.dir(dir)) {
        Ok(m) => Some(m),
        Err(e) => {
            let why = format!("{e} (./test installs {packages})");
            assert!(!support::can_run(&format!("a {dir} branch"), &[why]));
            None
        }
    }
}

/// What both FAT filesystems lack, as the probe must find it.
fn fat_like(refused_bytes: Vec<u8>) -> Abilities {
    Abilities {
        xattrs: false,
        whiteout_devices: false,
        fifos: false,
        symlinks: false,
        hard_links: false,
        owners: false,
        modes: false,
        case_sensitive: false,
        trailing_dots: true,
        nanosecond_times: false,
        refused_bytes,
        name_max: 255,
    }
}

/// The bytes FAT's long names refuse: controls and `"*:<>?\|`.
fn fat_refused(with_del: bool) -> Vec<u8> {
    let mut v: Vec<u8> = (1u8..0x20).collect();
    if with_del {
        v.push(0x7f);
    }
    v.extend_from_slice(b"\"*:<>?\\|");
    v
}

#[test]
fn ext4_and_tmpfs_hold_everything() {
    if !support::require_mounts() {
        return;
    }
    let s = Scratch::new();
    assert_eq!(
        probe(s.path()),
        Abilities::posix(),
        "the scratch filesystem"
    );
    let tmp = s.dir("tmpfs");
    let _t = Mount::tmpfs(&tmp, "size=4m").unwrap();
    assert_eq!(probe(&tmp), Abilities::posix(), "tmpfs");
}

#[test]
fn the_probe_finds_what_exfat_and_fat32_lack() {
    if !support::require_mounts() {
        return;
    }
    let s = Scratch::new();
    let Some(ex) = exfat(&s) else { return };
    let found = probe(&s.path().join("exfat"));
    assert_eq!(found, fat_like(found.refused_bytes.clone()), "exFAT");
    for b in fat_refused(false) {
        assert!(
            found.refused_bytes.contains(&b),
            "exFAT takes {b:#x}: {found:?}"
        );
    }
    drop(ex);
    let Some(fat) = fat32(&s) else { return };
    let found = probe(&s.path().join("fat"));
    assert_eq!(found, fat_like(found.refused_bytes.clone()), "FAT32");
    for b in fat_refused(false) {
        assert!(
            found.refused_bytes.contains(&b),
            "FAT32 takes {b:#x}: {found:?}"
        );
    }
    drop(fat);
}

/// `unionmount` with its upper and workdir in `fsdir`: the exit code and
/// stderr; the mountpoint must stay unmounted and the workdir's `work/` empty.
fn refused(s: &Scratch, fsdir: &Path) -> String {
    let [lower, mnt] = s.dirs(["lower", "mnt"]);
    fs::write(lower.join("f"), "lower\n").unwrap();
    let (upper, work) = (fsdir.join("upper"), fsdir.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let out = Command::new(bin())
        .args(["-o", &opts])
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if is_mounted(&mnt) {
        let _ = Command::new("umount").arg(&mnt).status();
        panic!("an upper on {} was mounted", fsdir.display());
    }
    assert!(!out.status.success(), "exit 0 for {}", fsdir.display());
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    let left: Vec<_> = fs::read_dir(work.join("work")).unwrap().collect();
    assert!(left.is_empty(), "the probe left {left:?}");
    err
}

#[test]
fn an_upper_on_exfat_or_fat32_is_refused_in_one_line() {
    if !support::require_mounts() {
        return;
    }
    let s = Scratch::new();
    let Some(ex) = exfat(&s) else { return };
    let err = refused(&s, &s.path().join("exfat"));
    let upper = s.path().join("exfat/upper");
    assert!(
        err.contains(&format!("{}: cannot be an upper", upper.display())),
        "{err}"
    );
    for lack in [
        "xattrs",
        "device nodes",
        "owners",
        "modes",
        "case-sensitive names",
    ] {
        assert!(err.contains(lack), "{lack} not named: {err}");
    }
    drop(ex);
    let Some(fat) = fat32(&s) else { return };
    let err = refused(&s, &s.path().join("fat"));
    assert!(err.contains("fat/upper: cannot be an upper"), "{err}");
    assert!(err.contains("names with \"*:<>?\\|"), "{err}");
    drop(fat);
}
