//! What a container cannot do (issue 6, runner part): reach the host's
//! filesystem (after `pivot_root`, and with the move + chroot fallback), keep
//! a descriptor of the host's, gain privilege through a setuid-root file, see
//! the host's processes, write to `/proc/sys`, `/sys` and the other read-only
//! parts of `/proc`, read the masked ones, or undo any of it.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use support::run::{Env, Out};

/// One line of `/proc/self/mountinfo`: mount point, options, type.
#[derive(Debug)]
struct MountLine {
    point: String,
    options: String,
    fstype: String,
}

fn mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountLine {
                point: f.get(4)?.to_string(),
                options: f.get(5)?.to_string(),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// The part of a script's output between `=== NAME` and the next marker.
fn section<'a>(out: &'a Out, name: &str) -> Vec<&'a str> {
    out.stdout
        .split("=== ")
        .find_map(|s| s.strip_prefix(name).map(|r| r.trim_start_matches('\n')))
        .unwrap_or_else(|| panic!("no section {name}: {out:?}"))
        .lines()
        .collect()
}

/// Every mount a container may have; anything else would be the host's.
fn allowed_mount(point: &str) -> bool {
    const FIXED: [&str; 10] = [
        "/",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/sys",
        "/proc",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/sys/devices/virtual/powercap",
    ];
    FIXED.contains(&point)
        || point == "/sys/firmware"
        || point.starts_with("/proc/")
        || ["null", "zero", "full", "random", "urandom", "tty"]
            .iter()
            .any(|d| point == format!("/dev/{d}"))
}

const ESCAPE_SCRIPT: &str = "echo '=== mounts'; cat /proc/self/mountinfo; \
     echo '=== fds'; ls /proc/1/fd; \
     echo '=== dotdot'; cd /../../..; pwd; ls -a /.. | tr '\\n' ' '; echo; ls -a / | tr '\\n' ' '; echo; \
     echo '=== host'; cat \"$HOST_FILE\" 2>/dev/null || echo unreachable; \
     echo '=== chroot'; chroot / true 2>/dev/null && echo chroot-ok || echo chroot-refused; \
     echo '=== end'";

/// Run the escape script in a container, with a descriptor of a host file
/// open (not close-on-exec) in the runner, and check that nothing of the
/// host is reachable. Returns the output for mode-specific checks.
fn check_host_out_of_reach(env: &Env, vars: &[(&str, &str)]) -> Out {
    let secret = env.root().join("host-secret");
    fs::write(&secret, "secret\n").unwrap();
    let leaked = fs::File::open(&secret).unwrap();
    // Inherited by every process this test starts from now on, the runner too.
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    let host_file = format!("HOST_FILE={}", secret.display());
    let out = env.um_env(
        vars,
        &[
            "run",
            "--rm",
            "-e",
            &host_file,
            "t",
            "--",
            "sh",
            "-c",
            ESCAPE_SCRIPT,
        ],
    );
    drop(leaked);
    assert_eq!(out.code, 0, "{out:?}");
    let mounts = mountinfo(&section(&out, "mounts").join("\n"));
    assert!(mounts.len() >= 10, "{mounts:?}");
    for m in &mounts {
        assert!(allowed_mount(&m.point), "host mount visible: {m:?}");
    }
    let roots: Vec<&MountLine> = mounts.iter().filter(|m| m.point == "/").collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert!(roots[0].fstype.starts_with("fuse"), "{roots:?}");
    // Only stdin, stdout and stderr: the runner's descriptors and the one
    // this test leaked stay outside.
    assert_eq!(section(&out, "fds"), ["0", "1", "2"], "{out:?}");
    let dotdot = section(&out, "dotdot");
    assert_eq!(dotdot[0], "/", "{out:?}");
    assert_eq!(dotdot[1], dotdot[2], "/.. is not /: {out:?}");
    assert!(dotdot[1].contains(" bin "), "{out:?}");
    assert_eq!(section(&out, "host"), ["unreachable"], "{out:?}");
    out
}

#[test]
fn host_is_out_of_reach_after_pivot_root() {
    let Some(env) = Env::new() else { return };
    let out = check_host_out_of_reach(&env, &[]);
    // pivot_root detached the host's root: chroot is harmless and kept.
    assert_eq!(section(&out, "chroot"), ["chroot-ok"], "{out:?}");
}

#[test]
fn host_is_out_of_reach_with_the_chroot_fallback() {
    let Some(env) = Env::new() else { return };
    let out = check_host_out_of_reach(&env, &[("UNIONMOUNT_NO_PIVOT", "1")]);
    // The host's mounts lie under the moved union: a chroot of its own is
    // the way back there, so the capability is not kept.
    assert_eq!(section(&out, "chroot"), ["chroot-refused"], "{out:?}");
    // The container works as usual: writes land in its upper.
    let out = env.um_env(
        &[("UNIONMOUNT_NO_PIVOT", "1")],
        &[
            "run",
            "--name",
            "f",
            "t",
            "--",
            "sh",
            "-c",
            "echo hi > /etc/new; cat /etc/motd",
        ],
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "orig\n"), "{out:?}");
    let dir = env.container_dir("f").unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("upper/etc/new")).unwrap(),
        "hi\n"
    );
    assert_eq!(env.um(&["rm", "f"]).code, 0);
    assert_eq!(env.host_mounts(), Vec::<String>::new());
}

/// A static x86_64 or aarch64 program that exits with `geteuid() & 255`
/// (busybox would not do: it drops a setuid privilege by itself).
fn euid_probe() -> Vec<u8> {
    let (machine, code): (u16, Vec<u8>) = match std::env::consts::ARCH {
        // mov eax, 107 (geteuid); syscall; mov edi, eax; mov eax, 60 (exit); syscall
        "x86_64" => (
            0x3e,
            vec![
                0xb8, 107, 0, 0, 0, 0x0f, 0x05, 0x89, 0xc7, 0xb8, 60, 0, 0, 0, 0x0f, 0x05,
            ],
        ),
        // mov x8, 175 (geteuid); svc 0; mov x8, 93 (exit); svc 0
        "aarch64" => (
            0xb7,
            [0xd28015e8u32, 0xd4000001, 0xd2800ba8, 0xd4000001]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
        ),
        other => panic!("no euid probe for {other}"),
    };
    let base: u64 = 0x40_0000;
    let total = (64 + 56 + code.len()) as u64;
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(16, 0);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(machine.to_le_bytes());
    elf.extend(1u32.to_le_bytes());
    elf.extend((base + 64 + 56).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend(half.to_le_bytes());
    }
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R+X
    for word in [0, base, base, total, total, 0x1000] {
        elf.extend(word.to_le_bytes());
    }
    elf.extend(code);
    elf
}

#[test]
fn setuid_root_gives_no_privilege() {
    let Some(env) = Env::new() else { return };
    let rootfs = env.root().join("rootfs");
    let probe = rootfs.join("bin/euid");
    fs::write(&probe, euid_probe()).unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = env.um(&["image", "import", rootfs.to_str().unwrap(), "--tag", "s"]);
    assert_eq!(out.code, 0, "{out:?}");
    let script = "ls -ln /bin/euid; grep ' / ' /proc/self/mountinfo; \
                  /bin/euid; echo euid=$?; grep -E '^(Uid|NoNewPrivs|CapEff):' /proc/self/status";
    // As root the probe reports 0, so its exit status is a real euid.
    let out = env.um(&["run", "--rm", "s", "--", "sh", "-c", "/bin/euid; echo $?"]);
    assert_eq!(out.stdout, "0\n", "{out:?}");
    let out = env.um(&[
        "run",
        "--rm",
        "-u",
        "1000:1000",
        "s",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The bit is there and the root mount honours it (no nosuid) ...
    assert!(
        lines[0].starts_with("-rwsr-xr-x") && lines[0].split_whitespace().nth(2) == Some("0"),
        "{out:?}"
    );
    let root_opts = lines[1].split(' ').nth(5).unwrap_or("");
    assert!(!root_opts.contains("nosuid"), "{out:?}");
    // ... and yet the probe runs with euid 1000 (1000 & 255 = 232).
    assert!(lines.contains(&"euid=232"), "{out:?}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out:?}");
    assert!(lines.contains(&"Uid:\t1000\t1000\t1000\t1000"), "{out:?}");
    assert!(lines.contains(&"CapEff:\t0000000000000000"), "{out:?}");
}

#[test]
fn proc_and_sys_are_fresh_masked_and_read_only() {
    let Some(env) = Env::new() else { return };
    let script = "echo '=== pids'; ls /proc | grep '^[0-9]'; \
         echo '=== mounts'; cat /proc/self/mountinfo; \
         echo '=== masked'; for f in /proc/kcore /proc/keys /proc/timer_list; do \
           if [ -e $f ]; then echo $f $(head -c 100 $f | wc -c); else echo $f absent; fi; done; \
         echo '=== writes'; \
         for f in /proc/sys/kernel/domainname /proc/sys/kernel/hostname /proc/sysrq-trigger /sys/kernel/uevent_helper; do \
           if [ -e $f ]; then (echo x > $f) 2>/dev/null && echo $f written || echo $f refused; fi; done; \
         touch /sys/x 2>/dev/null && echo /sys/x written || echo /sys/x refused; \
         echo '=== undo'; \
         umount /proc/sys 2>/dev/null && echo umount-ok || echo umount-refused; \
         umount /proc/timer_list 2>/dev/null && echo unmask-ok || echo unmask-refused; \
         mount -o remount,rw /sys 2>/dev/null && echo remount-ok || echo remount-refused; \
         mknod /tmp/disk b 8 0 2>/dev/null && echo mknod-ok || echo mknod-refused; \
         grep CapEff /proc/self/status; \
         echo '=== end'";
    let out = env.um(&["run", "--rm", "t", "--", "sh", "-c", script]);
    assert_eq!(out.code, 0, "{out:?}");
    // A proc of the container's pid namespace: sh (1) and the pipeline.
    let pids: Vec<u32> = section(&out, "pids")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        pids.contains(&1) && pids.iter().all(|p| *p < 10),
        "{pids:?}"
    );
    let mounts = mountinfo(&section(&out, "mounts").join("\n"));
    let find = |p: &str| mounts.iter().find(|m| m.point == p);
    let proc = find("/proc").expect("/proc mounted");
    assert_eq!(proc.fstype, "proc", "{proc:?}");
    let sys = find("/sys").expect("/sys mounted");
    assert!(sys.options.split(',').any(|o| o == "ro"), "{sys:?}");
    for p in ["/proc/sys", "/proc/irq", "/proc/bus", "/proc/sysrq-trigger"] {
        let exists_on_host = std::path::Path::new(p).exists();
        match find(p) {
            Some(m) => assert!(m.options.split(',').any(|o| o == "ro"), "{m:?}"),
            None => assert!(!exists_on_host, "{p} not read-only: {mounts:?}"),
        }
    }
    let mut masked = 0;
    for l in section(&out, "masked") {
        let (path, what) = l.split_once(' ').unwrap();
        if what != "absent" {
            assert_eq!(what, "0", "{path} readable: {out:?}");
            assert!(find(path).is_some(), "{path} not masked: {mounts:?}");
            masked += 1;
        }
    }
    assert!(masked >= 2, "{out:?}");
    let writes = section(&out, "writes");
    assert!(writes.len() >= 3, "{out:?}");
    assert!(writes.iter().all(|w| w.ends_with(" refused")), "{out:?}");
    let undo = section(&out, "undo");
    for want in [
        "umount-refused",
        "unmask-refused",
        "remount-refused",
        "mknod-refused",
    ] {
        assert!(undo.contains(&want), "{want}: {out:?}");
    }
    // Root in the container, without CAP_SYS_ADMIN (21) or CAP_MKNOD (27).
    let cap_eff = undo
        .iter()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("CapEff");
    assert_ne!(cap_eff, 0, "{out:?}");
    assert_eq!(cap_eff & (1 << 21 | 1 << 27), 0, "{cap_eff:x}");
}
