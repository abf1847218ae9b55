//! The cost of one FUSE round trip through each transport the kernel
//! offers: the classic `/dev/fuse` read/write loop, and FUSE over io_uring
//! (Linux 6.14 and later; `/sys/module/fuse/parameters/enable_uring`).
//! Issue 17 asks for this measure before building an io_uring transport.
//!
//! `cargo bench --bench transport` times storms of GETATTR and LOOKUP round
//! trips (stat of a file whose attributes are never cached; stat of names
//! that do not exist), from one and from two client threads, through a
//! minimal server on each transport, mounts alternating; it prints the
//! median µs per round trip. Run as a test (`cargo test --all-targets`),
//! it checks each transport answers a short storm correctly and through
//! the path it says. Needs root; io_uring is switched on for the run and
//! the switch put back after.

mod abi;
mod server;

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use server::Mount;

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Dev,
    Uring,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Dev => "/dev/fuse read/write",
            Transport::Uring => "io_uring",
        }
    }
}

#[derive(Clone, Copy)]
enum Storm {
    Getattr,
    Lookup,
}

const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

/// Switches io_uring on for FUSE while alive, and back as it was after.
struct UringSwitch(Option<String>);

impl UringSwitch {
    fn on() -> Result<UringSwitch, String> {
        let was = std::fs::read_to_string(SWITCH)
            .map_err(|e| format!("{SWITCH}: {e} (a kernel without FUSE over io_uring)"))?;
        std::fs::write(SWITCH, "Y").map_err(|e| format!("{SWITCH}: {e} (needs root)"))?;
        Ok(UringSwitch(Some(was.trim().to_string())))
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Some(was) = self.0.take() {
            let _ = std::fs::write(SWITCH, was);
        }
    }
}

/// `calls` stats by each of `threads` clients; seconds of wall time.
fn storm(mnt: &Path, storm: Storm, threads: usize, calls: usize) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..calls {
                    let (path, want_ok) = match storm {
                        Storm::Getattr => (mnt.join("f"), true),
                        // A new name each time: nothing the kernel could cache.
                        Storm::Lookup => (mnt.join(format!("missing-{t}-{i}")), false),
                    };
                    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    // SAFETY: a valid path and stat buffer.
                    let rc = unsafe { libc::stat(c.as_ptr(), &mut st) };
                    if want_ok {
                        assert_eq!(rc, 0, "stat {}", path.display());
                        assert_eq!(st.st_size as u64, server::FILE_SIZE);
                        assert_eq!(st.st_ino, server::FILE_INO);
                    } else {
                        assert_eq!(rc, -1, "{} exists", path.display());
                        let e = std::io::Error::last_os_error().raw_os_error();
                        assert_eq!(e, Some(libc::ENOENT));
                    }
                }
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

/// Microseconds per round trip of one storm on a fresh mount, with the
/// share of the requests the chosen transport carried.
fn measure(dir: &Path, t: Transport, kind: Storm, threads: usize, calls: usize) -> (f64, f64) {
    let m = Mount::new(dir, t == Transport::Uring, 2).expect("mounting the probe");
    storm(&m.dir, kind, threads, calls / 10); // warm: dentries, queues
    let (dev0, ring0) = (
        m.served.dev.load(Ordering::Relaxed),
        m.served.ring.load(Ordering::Relaxed),
    );
    let secs = storm(&m.dir, kind, threads, calls);
    let dev = m.served.dev.load(Ordering::Relaxed) - dev0;
    let ring = m.served.ring.load(Ordering::Relaxed) - ring0;
    let (mine, total) = match t {
        Transport::Dev => (dev, dev + ring),
        Transport::Uring => (ring, dev + ring),
    };
    let total_calls = (threads * calls) as f64;
    assert!(
        total as f64 >= total_calls,
        "{} answered {total} requests for {total_calls} stats",
        t.name()
    );
    (secs * 1e6 / total_calls, mine as f64 / total as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !rustix::process::geteuid().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the transport probe needs root (FUSE mounts)");
        }
        eprintln!("transport: skipped, needs root");
        return;
    }
    let _switch = match UringSwitch::on() {
        Ok(s) => s,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{e}"),
        Err(e) => {
            eprintln!("transport: skipped: {e}");
            return;
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix("um-transport")
        .tempdir()
        .expect("a scratch directory");
    let dir = scratch.path();
    let (calls, rounds) = if bench { (200_000, 5) } else { (2_000, 1) };
    println!(
        "| round trip | clients | {} µs | {} µs | ratio |",
        Transport::Dev.name(),
        Transport::Uring.name()
    );
    println!("|---|---:|---:|---:|---:|");
    for (kind, label) in [(Storm::Getattr, "GETATTR"), (Storm::Lookup, "LOOKUP")] {
        for threads in [1, 2] {
            let (mut dev, mut uring) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                // Alternate which transport goes first.
                let order = if r % 2 == 0 {
                    [Transport::Dev, Transport::Uring]
                } else {
                    [Transport::Uring, Transport::Dev]
                };
                for t in order {
                    let (us, share) = measure(dir, t, kind, threads, calls);
                    assert!(
                        share > 0.99,
                        "{} carried only {:.1}% of the requests",
                        t.name(),
                        share * 100.0
                    );
                    match t {
                        Transport::Dev => dev.push(us),
                        Transport::Uring => uring.push(us),
                    }
                }
            }
            let (d, u) = (median(dev), median(uring));
            println!("| {label} | {threads} | {d:.2} | {u:.2} | {:.2}× |", d / u);
        }
    }
}
