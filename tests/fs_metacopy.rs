//! Metadata-only copy-up (`-o metacopy=on`), compared with kernel overlayfs
//! mounted `metacopy=on`: chown, chmod, utimes and xattr changes of a lower
//! file put a sparse file marked `overlay.metacopy` in the upper (no data
//! copied), reads still give the lower's data, and the first open for
//! writing brings the data up into that file and drops the mark. Either
//! implementation reads the other's upper. Without the option nothing
//! changes: data is copied as before.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use support::sys;
use support::{Both, Impl, Layer, Meta, Setup};

const KERNEL_METACOPY: &str = ",metacopy=on,redirect_dir=on";
const UNION_METACOPY: &str = ",metacopy=on";
const MIB: usize = 1 << 20;

fn lower() -> Layer {
    Layer::new()
        .dir("d")
        .file_with(
            "d/big",
            support::pattern(2 * MIB, 1),
            Meta::mode(0o644).owner(10, 20),
        )
        .xattr("d/big", "user.k", "v")
        .file("d/small", "small file\n")
        .file("d/other", support::pattern(300_000, 2))
        .file("d/empty", "")
        .symlink("d/link", "big")
        .dir("e")
}

fn fixture() -> Option<Both> {
    Both::setup(
        Setup::new(vec![lower()])
            .kernel_extra(KERNEL_METACOPY)
            .union_extra(UNION_METACOPY),
    )
}

/// The raw upper file on a side: is it marked metacopy, and how many bytes
/// of data does it hold on disk?
fn upper_file(upper: &Path, rel: &str) -> (bool, u64) {
    let p = upper.join(rel);
    let marked = sys::lgetxattr(&p, "trusted.overlay.metacopy").is_ok();
    let st = sys::lstat(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (marked, st.st_blocks as u64 * 512)
}

/// Both uppers hold `rel` as a metadata-only copy: marked, no data blocks.
#[track_caller]
fn assert_metadata_only(b: &Both, rel: &str) {
    for side in b.sides() {
        let (marked, bytes) = upper_file(&side.upper, rel);
        assert!(
            marked,
            "{}: {rel} in the upper is not marked metacopy",
            side.name
        );
        // An xattr block may be counted; the 2 MiB of data must not be.
        assert!(
            bytes <= 8192,
            "{}: {rel} in the upper holds {bytes} bytes: its data was copied",
            side.name
        );
    }
}

/// Both uppers hold `rel` with its data and without the mark.
#[track_caller]
fn assert_data_copied(b: &Both, rel: &str, len: u64) {
    for side in b.sides() {
        let (marked, bytes) = upper_file(&side.upper, rel);
        assert!(!marked, "{}: {rel} is still marked metacopy", side.name);
        assert!(
            bytes >= len,
            "{}: {rel} in the upper holds {bytes} of its {len} bytes",
            side.name
        );
    }
}

fn stat_of(p: &Path) -> std::io::Result<(u32, u32, u32, u64, i64, u64)> {
    let m = fs::symlink_metadata(p)?;
    Ok((m.uid(), m.gid(), m.mode(), m.size(), m.mtime(), m.blocks()))
}

#[test]
fn metadata_changes_copy_up_no_data() {
    let Some(b) = fixture() else { return };
    b.ok("chown", |m| sys::lchown(&m.join("d/big"), 1000, 1001));
    b.ok("chmod", |m| sys::chmod(&m.join("d/other"), 0o600));
    b.ok("utimes", |m| {
        sys::lutimes(&m.join("d/small"), (1_500_000_000, 0), (1_500_000_001, 0))
    });
    b.ok("setxattr", |m| {
        sys::lsetxattr(&m.join("d/big"), "user.new", b"1")
    });
    assert_metadata_only(&b, "d/big");
    assert_metadata_only(&b, "d/other");
    assert_metadata_only(&b, "d/small");
    // Reads give the lower's data; stat shows the new owner and mode with
    // the lower's block count (du sees the data where it is).
    for rel in ["d/big", "d/other", "d/small", "d/link"] {
        b.ok(&format!("read {rel}"), |m| support::read(&m.join(rel)));
        b.ok(&format!("stat {rel}"), |m| stat_of(&m.join(rel)));
    }
    b.ok("xattrs", |m| sys::xattrs(&m.join("d/big")));
    b.check_trees("after metadata changes");
    b.check_uppers("after metadata changes");
}

#[test]
fn first_write_brings_the_data_up() {
    let Some(mut b) = fixture() else { return };
    b.ok("chown", |m| sys::lchown(&m.join("d/big"), 1000, 1001));
    b.ok("chmod small", |m| sys::chmod(&m.join("d/small"), 0o640));
    b.ok("chmod other", |m| sys::chmod(&m.join("d/other"), 0o640));
    assert_metadata_only(&b, "d/big");
    // Opening for writing without writing copies the data, keeps the times.
    b.ok("open rdwr", |m| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("d/big"))
            .map(|_| ())
    });
    assert_data_copied(&b, "d/big", 2 * MIB as u64);
    // Kernel overlayfs leaves the time of its data copy as the file's mtime
    // (it writes the data into the upper file and does not set the times
    // back); unionmount keeps the lower's, as every other copy-up does,
    // since nothing changed the file.
    let no_mtime = |m: &Path| {
        stat_of(&m.join("d/big")).map(|(u, g, mode, size, _, blocks)| (u, g, mode, size, blocks))
    };
    b.ok("stat after open", no_mtime);
    let lower_mtime = fs::symlink_metadata(b.u.lowers[0].join("d/big"))
        .unwrap()
        .mtime();
    if !support::subject_is_kernel() {
        assert_eq!(
            fs::symlink_metadata(b.u.p("d/big")).unwrap().mtime(),
            lower_mtime,
            "a data copy-up changed the file's mtime"
        );
    }
    b.ok("append", |m| support::append(&m.join("d/big"), b"tail"));
    b.ok("read after append", |m| support::read(&m.join("d/big")));
    // An open that truncates needs no data.
    b.ok("truncating write", |m| {
        support::write(&m.join("d/small"), b"new")
    });
    b.ok("read truncated", |m| support::read(&m.join("d/small")));
    // truncate(2) keeps the head of the data.
    b.ok("truncate", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("d/other"))
            .and_then(|f| f.set_len(1000))
    });
    b.ok("read other", |m| support::read(&m.join("d/other")));
    assert_data_copied(&b, "d/other", 1000);
    b.check_trees("after writes");
    b.check_trees_after_kernel_remount("after writes");
}

#[test]
fn a_reader_opened_before_goes_on_reading_the_same_bytes() {
    let Some(b) = fixture() else { return };
    let open = |m: &Path| fs::File::open(m.join("d/big"));
    let mut rk = open(&b.k.mnt).unwrap();
    let mut ru = open(&b.u.mnt).unwrap();
    b.ok("chown", |m| sys::lchown(&m.join("d/big"), 7, 7));
    let head = |f: &mut fs::File| {
        let mut buf = vec![0u8; 4096];
        f.read_exact(&mut buf).map(|()| buf)
    };
    assert_eq!(head(&mut rk).unwrap(), head(&mut ru).unwrap());
    // fstat through the early descriptor shows the new owner.
    assert_eq!(
        (rk.metadata().unwrap().uid(), rk.metadata().unwrap().size()),
        (ru.metadata().unwrap().uid(), ru.metadata().unwrap().size())
    );
    b.ok("overwrite the start", |m| {
        let mut f = fs::OpenOptions::new().write(true).open(m.join("d/big"))?;
        f.write_all(b"CHANGED")
    });
    let rest = |f: &mut fs::File| {
        let mut v = Vec::new();
        f.read_to_end(&mut v).map(|_| v.len())
    };
    assert_eq!(rest(&mut rk).unwrap(), rest(&mut ru).unwrap());
    // A descriptor opened now reads the written data.
    b.ok("read after write", |m| support::read(&m.join("d/big")));
}

#[test]
fn rename_and_link_of_a_metadata_only_copy() {
    let Some(mut b) = fixture() else { return };
    b.ok("chown big", |m| sys::lchown(&m.join("d/big"), 3, 3));
    b.ok("chown other", |m| sys::lchown(&m.join("d/other"), 4, 4));
    b.ok("rename", |m| fs::rename(m.join("d/big"), m.join("e/moved")));
    b.ok("link", |m| {
        fs::hard_link(m.join("d/other"), m.join("e/linked"))
    });
    for rel in ["e/moved", "e/linked", "d/other"] {
        b.ok(&format!("read {rel}"), |m| support::read(&m.join(rel)));
        b.ok(&format!("owner {rel}"), |m| {
            fs::symlink_metadata(m.join(rel)).map(|md| (md.uid(), md.nlink()))
        });
    }
    b.err("old name", libc::ENOENT, |m| stat_of(&m.join("d/big")));
    b.ok("unlink", |m| fs::remove_file(m.join("d/other")));
    b.ok("read link after unlink", |m| {
        support::read(&m.join("e/linked"))
    });
    b.check_trees("after rename and link");
    b.check_trees_after_kernel_remount("after rename and link");
}

#[test]
fn unlink_of_a_metadata_only_copy_leaves_a_whiteout() {
    let Some(mut b) = fixture() else { return };
    b.ok("chmod", |m| sys::chmod(&m.join("d/big"), 0o600));
    b.ok("unlink", |m| fs::remove_file(m.join("d/big")));
    b.err("gone", libc::ENOENT, |m| stat_of(&m.join("d/big")));
    b.check_uppers("after unlink");
    b.check_trees_after_kernel_remount("after unlink");
}

/// Each implementation reads the metadata-only copies the other wrote, and
/// writes them whole.
#[test]
fn uppers_cross_between_kernel_and_unionmount() {
    let Some(mut b) = fixture() else { return };
    // Kernel-made copies, read by unionmount.
    b.u.unmount();
    b.u.mount_as(Impl::Kernel);
    b.ok("chown by kernel", |m| {
        sys::lchown(&m.join("d/big"), 1000, 1000)
    });
    b.ok("chmod by kernel", |m| sys::chmod(&m.join("d/other"), 0o600));
    assert_metadata_only(&b, "d/big");
    b.u.unmount();
    b.u.mount();
    b.ok("read kernel's copy", |m| support::read(&m.join("d/big")));
    b.ok("stat kernel's copy", |m| stat_of(&m.join("d/big")));
    b.ok("append to kernel's copy", |m| {
        support::append(&m.join("d/other"), b"+")
    });
    b.ok("read after append", |m| support::read(&m.join("d/other")));
    assert_data_copied(&b, "d/other", 300_000);
    b.check_trees("unionmount over the kernel's copies");
    // unionmount's copies, read by the kernel.
    b.ok("chown by unionmount", |m| {
        sys::lchown(&m.join("d/small"), 5, 5)
    });
    assert_metadata_only(&b, "d/small");
    b.check_trees_after_kernel_remount("kernel over unionmount's copies");
}

/// Without the option (the default, as in kernel overlayfs) a chown copies
/// the data: the upper stays readable by a kernel mounted without metacopy.
#[test]
fn without_the_option_data_is_copied() {
    let Some(mut b) = Both::new(vec![lower()]) else {
        return;
    };
    b.ok("chown", |m| sys::lchown(&m.join("d/big"), 1000, 1001));
    assert_data_copied(&b, "d/big", 2 * MIB as u64);
    b.check_trees_after_kernel_remount("chown without metacopy");
}

/// chown -R of a tree of lower files grows the upper by its directories and
/// inodes, not by its data.
#[test]
fn chown_of_a_tree_copies_no_data() {
    let mut layer = Layer::new().dir("t");
    for i in 0..16 {
        layer = layer.file(&format!("t/f{i}"), support::pattern(MIB, i as u8));
    }
    let Some(b) = Both::setup(
        Setup::new(vec![layer])
            .kernel_extra(KERNEL_METACOPY)
            .union_extra(UNION_METACOPY),
    ) else {
        return;
    };
    b.ok("chown -R", |m| {
        let status = std::process::Command::new("chown")
            .args(["-R", "1234:1234"])
            .arg(m.join("t"))
            .status()?;
        Ok(status.success())
    });
    for side in b.sides() {
        let bytes: u64 = sys::files_under(&side.upper)
            .iter()
            .map(|p| sys::lstat(p).unwrap().st_blocks as u64 * 512)
            .sum();
        assert!(
            bytes < 16 * 8192,
            "{}: the upper holds {bytes} bytes after chown -R of 16 MiB",
            side.name
        );
    }
    b.ok("read all", |m| {
        (0..16)
            .map(|i| support::read(&m.join(format!("t/f{i}"))))
            .collect::<std::io::Result<Vec<_>>>()
    });
    b.check_trees("after chown -R");
}

#[test]
fn odd_option_values_are_refused() {
    if !support::require_mounts() {
        return;
    }
    let s = support::Scratch::new();
    let [l, u, w, m] = s.dirs(["l", "u", "w", "m"]);
    let out = std::process::Command::new(support::bin())
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},metacopy=yes",
            l.display(),
            u.display(),
            w.display()
        ))
        .arg(&m)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metacopy") && err.trim().lines().count() == 1,
        "stderr: {err}"
    );
    assert!(!support::is_mounted(&m));
}

/// A file keeps its inode number through the metadata-only copy-up, a
/// remount by either implementation, and the data's copy-up, as it does
/// through an ordinary copy-up.
#[test]
fn st_ino_stays_through_copy_ups_and_remounts() {
    let Some(mut b) = fixture() else { return };
    let inos =
        |b: &Both| [b.k.p("d/big"), b.u.p("d/big")].map(|p| fs::symlink_metadata(p).unwrap().ino());
    let before = inos(&b);
    b.ok("chown", |m| sys::lchown(&m.join("d/big"), 9, 9));
    assert_eq!(inos(&b), before, "after the metadata-only copy-up");
    b.u.remount();
    assert_eq!(inos(&b), before, "after a remount");
    b.ok("readdir d_ino", |m| {
        fs::read_dir(m.join("d")).map(|rd| {
            let mut v: Vec<(String, u64)> = rd
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().to_string_lossy().into_owned(), e.ino())
                })
                .collect();
            v.sort();
            // d_ino of each entry equals its st_ino.
            v.iter()
                .all(|(n, ino)| fs::symlink_metadata(m.join("d").join(n)).unwrap().ino() == *ino)
        })
    });
    b.u.unmount();
    b.u.mount_as(Impl::Kernel);
    assert_eq!(inos(&b), before, "under the kernel");
    b.u.unmount();
    b.u.mount();
    b.ok("append", |m| support::append(&m.join("d/big"), b"!"));
    assert_data_copied(&b, "d/big", 2 * MIB as u64);
    assert_eq!(inos(&b), before, "after the data's copy-up");
    b.u.remount();
    assert_eq!(inos(&b), before, "after the data's copy-up and a remount");
}
