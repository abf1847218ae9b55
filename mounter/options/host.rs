//! Host checks before mounting: branches and workdir are usable
//! directories, the workdir shares the upper's filesystem and mount, nothing
//! is nested in anything else, and the mountpoint is free (mountinfo).

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::Access;
use rustix::io::Errno;
use unionfs::mountinfo;

use super::{Branch, MountRequest, error_text, one_line};

/// Checks that the filesystem can be mounted safely as requested: branches are
/// readable directories (writable ones writable), the workdir is a writable
/// directory on the upper's filesystem and not nested with it, the mountpoint is
/// a directory not nested with any branch or the workdir, and nothing is mounted
/// on it yet. The first failure comes back as one line naming the object.
pub fn validate(req: &MountRequest) -> Result<(), String> {
    validate_request(req).map_err(one_line)
}

fn validate_request(req: &MountRequest) -> Result<(), String> {
    if req.branches.is_empty() {
        return Err("no branches given".into());
    }
    for branch in &req.branches {
        let what = if branch.writable { "upper" } else { "branch" };
        check_dir(what, &branch.path, branch.writable)?;
    }
    if let Some(work) = &req.workdir {
        check_workdir(work, &req.branches)?;
    }
    check_mountpoint(req)?;
    check_not_mounted(&req.mountpoint)
}

fn check_dir(what: &str, path: &Path, writable: bool) -> Result<(), String> {
    let fail = |reason: String| format!("{what} {}: {reason}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(error_text(&e)))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let errno_text = |e: Errno| error_text(&std::io::Error::from(e));
    rustix::fs::access(path, Access::READ_OK | Access::EXEC_OK)
        .map_err(|e| fail(format!("not readable ({})", errno_text(e))))?;
    if writable {
        rustix::fs::access(path, Access::WRITE_OK)
            .map_err(|e| fail(format!("not writable ({})", errno_text(e))))?;
    }
    Ok(())
}

/// The workdir must be able to `rename` into the upper (same filesystem), and
/// neither may contain the other, or copy-up would see its own staging files.
fn check_workdir(work: &Path, branches: &[Branch]) -> Result<(), String> {
    check_dir("workdir", work, true)?;
    let Some(upper) = branches.iter().find(|b| b.writable).map(|b| &b.path) else {
        return Err(format!(
            "workdir {}: given without an upper",
            work.display()
        ));
    };
    let (w, u) = (work.display(), upper.display());
    if work.starts_with(upper) {
        return Err(format!("workdir {w}: inside (or equal to) upper {u}"));
    }
    if upper.starts_with(work) {
        return Err(format!("upper {u}: inside workdir {w}"));
    }
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(work) != dev(upper) {
        return Err(format!(
            "workdir {w}: not on the same filesystem as upper {u}"
        ));
    }
    // Two bind mounts of one filesystem: rename(2) between them fails (EXDEV).
    if let (Some(a), Some(b)) = (mount_id(work), mount_id(upper))
        && a != b
    {
        return Err(format!(
            "workdir {w}: not on the same mount as upper {u} (a bind mount?)"
        ));
    }
    Ok(())
}

/// The id of the mount a path is on, where the kernel tells it (statx, 5.8+).
fn mount_id(p: &Path) -> Option<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = statx(CWD, p, AtFlags::empty(), StatxFlags::MNT_ID).ok()?;
    (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// Device and inode of a directory and of each of its ancestors: a
/// directory reached by two paths (a bind mount) is still the same one.
fn lineage(p: &Path) -> Vec<(u64, u64)> {
    p.ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// A mountpoint inside a branch, or a branch under the mountpoint, makes the
/// union look up through itself: FUSE overlays hang on that.
fn check_mountpoint(req: &MountRequest) -> Result<(), String> {
    let mnt = &req.mountpoint;
    let meta = std::fs::metadata(mnt)
        .map_err(|e| format!("mountpoint {}: {}", mnt.display(), error_text(&e)))?;
    if !meta.is_dir() {
        return Err(format!("mountpoint {}: not a directory", mnt.display()));
    }
    let branches = req.branches.iter().map(|b| {
        let what = if b.writable { "upper" } else { "branch" };
        (what, &b.path)
    });
    let work = req.workdir.iter().map(|w| ("workdir", w));
    let mnt_lineage = lineage(mnt);
    let mnt_id = identity(mnt);
    for (what, path) in branches.chain(work) {
        // By path, and by identity: a branch bind-mounted elsewhere is the
        // same directory under another name.
        let id = identity(path);
        if mnt.starts_with(path) || id.is_some_and(|id| mnt_lineage.contains(&id)) {
            return Err(format!(
                "mountpoint {}: inside {what} {}",
                mnt.display(),
                path.display()
            ));
        }
        if path.starts_with(mnt) || mnt_id.is_some_and(|m| lineage(path).contains(&m)) {
            return Err(format!(
                "{what} {}: inside mountpoint {}",
                path.display(),
                mnt.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a mountpoint that already has something mounted on it. Without a
/// readable `/proc/self/mountinfo` (no /proc) the check cannot be made and the
/// kernel's own mount call is left to complain.
fn check_not_mounted(mnt: &Path) -> Result<(), String> {
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return Ok(());
    };
    if mount_points(&table).any(|p| p == mnt.as_os_str().as_bytes()) {
        return Err(format!(
            "mountpoint {}: already mounted (busy)",
            mnt.display()
        ));
    }
    Ok(())
}

/// The mount points of a mountinfo table.
fn mount_points(table: &[u8]) -> impl Iterator<Item = Vec<u8>> {
    mountinfo::parse(table)
        .into_iter()
        .map(|m| m.mount_point.into_os_string().into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::os_path;
    use crate::options::testing::*;
    use std::fs;
    use tempfile::TempDir;

    #[test]
    fn validate_accepts_a_sane_request() {
        let t = Tree::new();
        validate(&overlay_request(&t)).unwrap();
        let req = parse(&["-o", &t.overlay_opts(), &t.s("mnt")]).unwrap();
        validate(&req).unwrap();
    }

    #[test]
    fn validate_refuses_non_directories() {
        let t = Tree::new();
        fs::write(t.p("file"), b"x").unwrap();
        let mut req = overlay_request(&t);
        req.branches[2] = ro(t.p("file"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("branch {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.workdir = Some(t.p("file"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("workdir {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("file");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: not a directory", t.s("file"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("gone");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: No such file or directory", t.s("gone"))
        );
        req.branches.clear();
        assert_eq!(validate(&req).unwrap_err(), "no branches given");
    }

    #[test]
    fn validate_refuses_unreadable_and_unwritable_when_not_root() {
        // Root passes every permission check, so this can only be seen unprivileged.
        if rustix::process::geteuid().is_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = Tree::new();
        fs::set_permissions(t.p("l2"), fs::Permissions::from_mode(0o000)).unwrap();
        let e = validate(&overlay_request(&t)).unwrap_err();
        assert!(
            e.starts_with(&format!("branch {}: not readable", t.s("l2"))),
            "{e}"
        );
        fs::set_permissions(t.p("l2"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(t.p("u"), fs::Permissions::from_mode(0o555)).unwrap();
        let e = validate(&overlay_request(&t)).unwrap_err();
        assert!(
            e.starts_with(&format!("upper {}: not writable", t.s("u"))),
            "{e}"
        );
    }

    #[test]
    fn validate_workdir_nesting() {
        let t = Tree::new();
        fs::create_dir(t.p("u/work")).unwrap();
        fs::create_dir(t.p("w/up")).unwrap();
        fs::create_dir(t.p("u2")).unwrap();
        let mut req = overlay_request(&t);
        req.workdir = Some(t.p("u/work"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!(
                "workdir {}: inside (or equal to) upper {}",
                t.s("u/work"),
                t.s("u")
            )
        );
        req.workdir = Some(t.p("u"));
        assert!(
            validate(&req)
                .unwrap_err()
                .contains("inside (or equal to) upper")
        );
        req.branches[0] = rw(t.p("w/up"));
        req.workdir = Some(t.p("w"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("upper {}: inside workdir {}", t.s("w/up"), t.s("w"))
        );
        // A shared string prefix is not nesting: `u2` is beside `u`.
        req.branches[0] = rw(t.p("u"));
        req.workdir = Some(t.p("u2"));
        validate(&req).unwrap();
    }

    #[test]
    fn validate_workdir_needs_an_upper() {
        let t = Tree::new();
        let mut req = overlay_request(&t);
        req.branches.remove(0);
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("workdir {}: given without an upper", t.s("w"))
        );
    }

    #[test]
    fn validate_workdir_on_another_filesystem() {
        let t = Tree::new();
        let Ok(shm) = TempDir::new_in("/dev/shm") else {
            return;
        };
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(&t.root) {
            return;
        }
        let mut req = overlay_request(&t);
        req.workdir = Some(shm.path().to_path_buf());
        let e = validate(&req).unwrap_err();
        assert!(e.contains("not on the same filesystem as upper"), "{e}");
    }

    #[test]
    fn validate_mountpoint_nesting() {
        let t = Tree::new();
        fs::create_dir(t.p("l1/m")).unwrap();
        fs::create_dir(t.p("mnt/w")).unwrap();
        fs::create_dir(t.p("mnt/l")).unwrap();
        let mut req = overlay_request(&t);
        req.mountpoint = t.p("l1/m");
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: inside branch {}", t.s("l1/m"), t.s("l1"))
        );
        req.mountpoint = t.p("u");
        assert!(validate(&req).unwrap_err().contains("inside upper"));
        req.mountpoint = t.p("w");
        assert!(validate(&req).unwrap_err().contains("inside workdir"));
        let mut req = overlay_request(&t);
        req.branches[2] = ro(t.p("mnt/l"));
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("branch {}: inside mountpoint {}", t.s("mnt/l"), t.s("mnt"))
        );
        let mut req = overlay_request(&t);
        req.mountpoint = t.root.clone();
        assert!(validate(&req).unwrap_err().contains("inside mountpoint"));
    }

    #[test]
    fn validate_refuses_a_busy_mountpoint() {
        let t = Tree::new();
        let table = fs::read("/proc/self/mountinfo").unwrap();
        // Any mounted directory that is neither an ancestor nor a descendant of the tree.
        let busy = mount_points(&table)
            .map(|p| os_path(&p))
            .find(|p| p.is_dir() && !t.root.starts_with(p) && !p.starts_with(&t.root));
        let Some(busy) = busy else {
            return;
        };
        let mut req = overlay_request(&t);
        req.mountpoint = busy.clone();
        assert_eq!(
            validate(&req).unwrap_err(),
            format!("mountpoint {}: already mounted (busy)", busy.display())
        );
    }
}
