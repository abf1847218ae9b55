//! What keeps a container's processes in their box, applied by its pid 1
//! before the command runs: the switch into the union's root (`pivot_root`,
//! or a move of the union over `/` and a `chroot` where `pivot_root` cannot
//! work), the masked and read-only parts of `/proc` and `/sys` (Docker's
//! lists), the capabilities a container keeps (podman's default set), and no
//! descriptor of the runner's reaching the command.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, mount, mount_bind, mount_bind_recursive, mount_move};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// Set (to anything non-empty) in the runner's environment to skip
/// `pivot_root` and use the fallback; the tests use it to exercise the
/// fallback on an ordinary root filesystem.
pub const NO_PIVOT_ENV: &str = "UNIONMOUNT_NO_PIVOT";

/// How the container's root was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSwitch {
    PivotRoot,
    /// The union moved over `/` and `chroot` into it: the host's mounts are
    /// shadowed, not detached, so `CAP_SYS_CHROOT` is not kept.
    MoveChroot,
}

fn io<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(io::Error::from)
}

fn context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Make the union at `merged` (a mount point) the root of this mount
/// namespace. The host's root stays reachable at the returned path (the
/// container's `/proc`, which every container has and which gets the real
/// proc mount later) until the caller has made the mounts that need host
/// files and detaches it.
pub fn enter_root(merged: &Path) -> io::Result<(PathBuf, RootSwitch)> {
    std::env::set_current_dir(merged).map_err(context(&merged.display().to_string()))?;
    fs::create_dir_all("proc").map_err(context("creating /proc"))?;
    let forced = std::env::var_os(NO_PIVOT_ENV).is_some_and(|v| !v.is_empty());
    if !forced {
        match io(rustix::process::pivot_root(".", "proc")) {
            Ok(()) => {
                std::env::set_current_dir("/").map_err(context("chdir /"))?;
                return Ok((PathBuf::from("/proc"), RootSwitch::PivotRoot));
            }
            // The root is the initial ramfs (or otherwise cannot be
            // pivoted away from): fall back as runc's --no-pivot does.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::info!("pivot_root: {e}; using a move and chroot instead");
            }
            Err(e) => return Err(context("pivot_root")(e)),
        }
    }
    move_and_chroot()?;
    Ok((PathBuf::from("/proc"), RootSwitch::MoveChroot))
}

/// The fallback: the host's root is bound (recursively) on the union's
/// /proc, the union is moved over `/`, and `chroot` makes it the root.
/// What lies under the moved union (the host's mounts) is outside the
/// root: not reachable by path and not listed in mountinfo.
fn move_and_chroot() -> io::Result<()> {
    io(mount_bind_recursive("/", "proc")).map_err(context("binding the host's root"))?;
    io(mount_move(".", "/")).map_err(context("moving the union over /"))?;
    io(rustix::process::chroot(".")).map_err(context("chroot"))?;
    std::env::set_current_dir("/").map_err(context("chdir /"))
}

/// Paths hidden from the container: a directory gets an empty read-only
/// tmpfs, a file /dev/null (Docker's default masked paths).
const MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths the container may read but not write (Docker's default read-only paths).
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Mask and write-protect the sensitive parts of the container's fresh
/// `/proc` and `/sys` (both must be mounted, and `/dev/null` made).
pub fn protect_proc_and_sys() -> io::Result<()> {
    let hard = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for p in MASKED {
        let Ok(meta) = fs::symlink_metadata(p) else {
            continue;
        };
        let r = if meta.is_dir() {
            io(mount(
                "tmpfs",
                p,
                "tmpfs",
                hard | MountFlags::RDONLY,
                Some(c"size=0,mode=555"),
            ))
        } else {
            io(mount_bind("/dev/null", p))
        };
        r.map_err(context(&format!("masking {p}")))?;
    }
    for p in READ_ONLY {
        if fs::symlink_metadata(p).is_err() {
            continue;
        }
        io(mount_bind_recursive(p, p)).map_err(context(&format!("binding {p}")))?;
        remount_read_only(Path::new(p), hard).map_err(context(&format!("making {p} read-only")))?;
    }
    Ok(())
}

/// The capabilities a container's processes keep: podman's default set.
/// Not kept, among others: SYS_ADMIN (mounts: the masks above stay), MKNOD
/// (a device node of the host's disk), NET_ADMIN, SYS_PTRACE, SYS_MODULE,
/// SYS_BOOT, SYS_TIME.
pub fn kept_capabilities(switch: RootSwitch) -> CapabilitySet {
    let mut keep = CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FOWNER
        | CapabilitySet::FSETID
        | CapabilitySet::KILL
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETGID
        | CapabilitySet::SETPCAP
        | CapabilitySet::SETUID
        | CapabilitySet::SYS_CHROOT;
    if switch == RootSwitch::MoveChroot {
        // A chroot inside a chroot is the classic way back to the real root.
        keep.remove(CapabilitySet::SYS_CHROOT);
    }
    keep
}

/// The highest capability number this kernel knows (read while /proc is
/// the host's).
pub fn last_capability() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Take every capability not in `keep` out of the bounding set, so that no
/// exec (of a setuid-root file or as uid 0) can get it back. Before the
/// user switch: this needs CAP_SETPCAP.
pub fn limit_bounding_set(keep: CapabilitySet, last: u32) -> io::Result<()> {
    for n in 0..=last {
        let cap = CapabilitySet::from_bits_retain(1 << n);
        if keep.contains(cap) {
            continue;
        }
        match io(rustix::thread::remove_capability_from_bounding_set(cap)) {
            Ok(()) => {}
            // A capability newer than these headers: nothing to drop.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(context("dropping capabilities")(e)),
        }
    }
    Ok(())
}

/// After the user switch: the process's own capability sets limited to
/// `keep` (a non-root user has none left already), none inheritable.
pub fn limit_own_capabilities(keep: CapabilitySet) -> io::Result<()> {
    let now = io(rustix::thread::capabilities(None)).map_err(context("capget"))?;
    let sets = CapabilitySets {
        effective: now.effective & keep,
        permitted: now.permitted & keep,
        inheritable: CapabilitySet::empty(),
    };
    io(rustix::thread::set_capabilities(None, sets)).map_err(context("capset"))?;
    io(rustix::thread::clear_ambient_capability_set()).map_err(context("ambient capabilities"))
}

/// Make the bind mount at `path` read-only, keeping its other flags. In a
/// user namespace the flags of a mount that came from the host (nosuid,
/// nodev, noexec, its atime mode) are locked: a remount that drops any of
/// them is refused.
pub fn remount_read_only(path: &Path, extra: MountFlags) -> io::Result<()> {
    use rustix::fs::StatVfsMountFlags as F;
    let now = io(rustix::fs::statvfs(path))?.f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY | extra;
    for (have, keep) in [
        (F::NOSUID, MountFlags::NOSUID),
        (F::NODEV, MountFlags::NODEV),
        (F::NOEXEC, MountFlags::NOEXEC),
        (F::NOATIME, MountFlags::NOATIME),
        (F::NODIRATIME, MountFlags::NODIRATIME),
        (F::RELATIME, MountFlags::RELATIME),
    ] {
        if now.contains(have) {
            flags |= keep;
        }
    }
    io(rustix::mount::mount_remount(path, flags, ""))
}

/// Rootless: a new user namespace in which this process's user and group
/// are root, the only ids mapped (setgroups is denied, as the kernel
/// requires for a mapping written without privilege). Capabilities then
/// hold over the namespaces made after it, not over the host.
pub fn enter_user_namespace() -> io::Result<()> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    crate::sys::unshare(rustix::thread::UnshareFlags::NEWUSER)
        .map_err(context("creating a user namespace"))?;
    fs::write("/proc/self/setgroups", "deny").map_err(context("/proc/self/setgroups"))?;
    fs::write("/proc/self/uid_map", format!("0 {uid} 1\n")).map_err(context("uid_map"))?;
    fs::write("/proc/self/gid_map", format!("0 {gid} 1\n")).map_err(context("gid_map"))
}

/// Is this process in a user namespace other than the host's (a rootless
/// runner and its children)?
pub fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}
