//! What containerd mounts for a snapshot. An active snapshot over parents
//! is a `fuse3.unionmount` mount (containerd runs `mount.fuse3`, which
//! starts `unionmount SOURCE TARGET -o OPTIONS`, as it starts
//! fuse-overlayfs); one without parents is its directory, bound. A view of
//! one layer is that layer bound read-only; of several, a read-only union.

use std::path::Path;

use containerd_snapshots::api::types::Mount;

use crate::meta::Kind;

/// The mount type containerd passes to `mount.fuse3`.
pub const FUSE_TYPE: &str = "fuse3.unionmount";

/// The mounts of a snapshot of `kind` whose own directories are `fs` and
/// `work`, over the committed directories `lowers` (nearest first).
/// `extract`: a snapshot containerd unpacks a layer into (see
/// `is_extract`).
pub fn mounts(kind: Kind, fs: &Path, work: &Path, lowers: &[&Path], extract: bool) -> Vec<Mount> {
    let ro = kind == Kind::View;
    let mount = match (lowers, ro) {
        ([], _) => bind(fs, ro),
        ([one], true) => bind(one, true),
        (_, true) => union(vec![format!("lowerdir={}", join(lowers)), "ro".into()]),
        (_, false) => {
            let mut m = union(vec![
                format!("lowerdir={}", join(lowers)),
                format!("upperdir={}", fs.display()),
                format!("workdir={}", work.display()),
            ]);
            if extract {
                // containerd's diff applier recognizes an `overlay` mount
                // and writes the layer straight into its upperdir, with
                // whiteouts and opaque directories in the kernel's format
                // (ours), mounting nothing: as fast as its own overlayfs
                // snapshotter. Through the union it would pay a FUSE round
                // trip a file. Were it mounted, the kernel reads our format.
                m.r#type = "overlay".into();
                m.source = "overlay".into();
            }
            m
        }
    };
    vec![mount]
}

/// containerd names the snapshots it unpacks layers into
/// `extract-<unique> <chain id>` (its `snapshots.UnpackKeyFormat`), under
/// the `<namespace>/<n>/` prefix of its metadata store.
pub fn is_extract(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|k| k.starts_with("extract-"))
        || key.starts_with("extract-")
}

fn bind(dir: &Path, ro: bool) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

fn union(options: Vec<String>) -> Mount {
    Mount {
        r#type: FUSE_TYPE.into(),
        source: "unionmount".into(),
        target: String::new(),
        options,
    }
}

fn join(dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_the_mount_containerd_expects() {
        let (fs, work) = (Path::new("/s/3/fs"), Path::new("/s/3/work"));
        let (a, b) = (Path::new("/s/2/fs"), Path::new("/s/1/fs"));
        let m = &mounts(Kind::Active, fs, work, &[], false)[0];
        assert_eq!((m.r#type.as_str(), m.source.as_str()), ("bind", "/s/3/fs"));
        assert!(m.options.contains(&"rw".to_string()));
        let m = &mounts(Kind::Active, fs, work, &[a, b], false)[0];
        assert_eq!(m.r#type, FUSE_TYPE);
        assert_eq!(
            m.options,
            [
                "lowerdir=/s/2/fs:/s/1/fs",
                "upperdir=/s/3/fs",
                "workdir=/s/3/work"
            ]
        );
        let m = &mounts(Kind::View, fs, work, &[a], false)[0];
        assert_eq!((m.r#type.as_str(), m.source.as_str()), ("bind", "/s/2/fs"));
        assert!(m.options.contains(&"ro".to_string()));
        let m = &mounts(Kind::View, fs, work, &[a, b], false)[0];
        assert_eq!(m.options, ["lowerdir=/s/2/fs:/s/1/fs", "ro"]);
        // containerd's unpack: the same options as a kernel overlay mount.
        let m = &mounts(Kind::Active, fs, work, &[a, b], true)[0];
        assert_eq!((m.r#type.as_str(), m.options.len()), ("overlay", 3));
    }

    #[test]
    fn unpack_snapshots_are_told_by_containerds_key_format() {
        assert!(is_extract("test/1/extract-817125670-NyyP sha256:6ac6"));
        assert!(is_extract("extract-1-x sha256:6ac6"));
        assert!(!is_extract("test/3/t1"));
        assert!(!is_extract("test/3/my-extract-1"));
    }
}
