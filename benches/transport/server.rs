//! The probe's filesystem and its two transports. The filesystem is as small
//! as a FUSE server can be, so that what is timed is the transport: a root
//! holding one file `f`, whose attributes are never cached (every stat of it
//! is a GETATTR round trip) while its name is (no LOOKUP per stat), and
//! names that do not exist, never cached either (every stat is a LOOKUP).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{IoUring, cqueue, squeue};
use unionfs::fuse::uring;

use crate::abi::{self, InHeader};

pub const FILE_INO: u64 = 2;
pub const FILE_SIZE: u64 = 4242;
/// Large enough for any request the kernel sends with our max_write.
const PAYLOAD: usize = 256 << 10;
const MAX_WRITE: u32 = 128 << 10;
/// Ring entries per queue: the storm has one request in flight per client.
const DEPTH: usize = 4;

/// Requests answered, by the path they came through.
#[derive(Default)]
pub struct Served {
    pub dev: AtomicU64,
    pub ring: AtomicU64,
}

fn attr(ino: u64) -> abi::Attr {
    let (mode, size, nlink) = if ino == 1 {
        (libc::S_IFDIR | 0o755, 0, 2)
    } else {
        (libc::S_IFREG | 0o644, FILE_SIZE, 1)
    };
    abi::Attr {
        ino,
        size,
        mode,
        nlink,
        blksize: 4096,
        ..Default::default()
    }
}

/// The answer to one request: Some(errno, body), or None when the kernel
/// wants no reply. `uring` says whether the INIT reply offers io_uring.
fn answer(h: &InHeader, op: &[u8], rest: &[u8], uring: bool) -> Option<(i32, Vec<u8>)> {
    match h.opcode {
        abi::INIT => {
            let i: abi::InitIn = abi::read(op);
            let mut flags = 0u64;
            if uring && i.flags & abi::INIT_EXT as u32 != 0 {
                flags |= abi::INIT_EXT | abi::OVER_IO_URING;
            }
            let out = abi::InitOut {
                major: 7,
                minor: i.minor,
                max_readahead: i.max_readahead,
                flags: flags as u32,
                flags2: (flags >> 32) as u32,
                max_background: 16,
                congestion_threshold: 12,
                max_write: MAX_WRITE,
                time_gran: 1,
                ..Default::default()
            };
            Some((0, abi::bytes(&out).to_vec()))
        }
        abi::LOOKUP => {
            let name = rest.split(|&b| b == 0).next().unwrap_or(&[]);
            if h.nodeid != 1 || name != b"f" {
                return Some((-libc::ENOENT, Vec::new()));
            }
            let out = abi::EntryOut {
                nodeid: FILE_INO,
                generation: 1,
                entry_valid: 3600,
                attr: attr(FILE_INO),
                ..Default::default()
            };
            Some((0, abi::bytes(&out).to_vec()))
        }
        abi::GETATTR => {
            let out = abi::AttrOut {
                attr: attr(h.nodeid),
                ..Default::default()
            };
            Some((0, abi::bytes(&out).to_vec()))
        }
        abi::FORGET | abi::BATCH_FORGET => None,
        abi::DESTROY => Some((0, Vec::new())),
        _ => Some((-libc::ENOSYS, Vec::new())),
    }
}

/// A mounted probe filesystem; Drop unmounts it and ends its threads.
pub struct Mount {
    pub dir: std::path::PathBuf,
    dev: Arc<File>,
    /// The connection's number (the mount's device minor).
    conn: u32,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub served: Arc<Served>,
}

impl Mount {
    /// Mount at `dir`, served by the /dev/fuse loop (`uring` false) or by
    /// one io_uring queue per possible CPU.
    pub fn new(dir: &Path, uring: bool, dev_threads: usize) -> std::io::Result<Mount> {
        let dev = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")?,
        );
        let opts = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            dev.as_raw_fd()
        ))
        .unwrap();
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"transport-probe".as_ptr(),
                target.as_ptr(),
                c"fuse.transport-probe".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let served = Arc::new(Served::default());
        let (init_tx, init_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for _ in 0..dev_threads {
            let (dev, served) = (dev.clone(), served.clone());
            let tx = Some(init_tx.clone());
            threads.push(std::thread::spawn(move || {
                dev_loop(&dev, &served, uring, tx)
            }));
        }
        // Not from a stat of the root: with io_uring offered, requests wait
        // until every queue is registered.
        let conn = connection_of(dir)?;
        let mut m = Mount {
            dir: dir.to_path_buf(),
            dev,
            conn,
            threads,
            served,
        };
        if uring {
            // Queues register once the INIT reply has enabled io_uring.
            init_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|_| std::io::Error::other("no FUSE_INIT"))?;
            let queues = uring::possible_cpus()?;
            for qid in 0..queues {
                let (fd, served) = (m.dev.as_raw_fd(), m.served.clone());
                let (tx, rx) = std::sync::mpsc::channel();
                m.threads.push(std::thread::spawn(move || {
                    ring_loop(fd, qid as u16, &served, tx)
                }));
                rx.recv()
                    .map_err(|_| std::io::Error::other("ring thread died"))??;
            }
        }
        Ok(m)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        // The unmount ends the connection, and every thread blocked on it
        // returns (ENODEV, or an error completion on the ring). Should one
        // not, abort this connection, and only this one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.threads.iter().any(|t| !t.is_finished()) {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{}/abort", self.conn), "1");
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The FUSE connection number of the mount at `dir`: its device minor,
/// from the mount table.
fn connection_of(dir: &Path) -> std::io::Result<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = dir.to_string_lossy();
    info.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[4] == want)
        .filter_map(|f| f[2].split_once(':')?.1.parse().ok())
        .next_back()
        .ok_or_else(|| std::io::Error::other("the probe mount is not in the mount table"))
}

/// The classic transport: read a request from /dev/fuse, write the reply.
fn dev_loop(
    dev: &File,
    served: &Served,
    uring: bool,
    init_done: Option<std::sync::mpsc::Sender<()>>,
) {
    let mut buf = vec![0u8; PAYLOAD + 4096];
    let mut reader = dev;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(_) => return,
        };
        let h: InHeader = abi::read(&buf[..n]);
        let body = &buf[size_of::<InHeader>()..n];
        let reply = answer(&h, body, body, uring);
        served.dev.fetch_add(1, Ordering::Relaxed);
        if let Some((error, out)) = reply {
            let head = abi::OutHeader {
                len: (size_of::<abi::OutHeader>() + out.len()) as u32,
                error,
                unique: h.unique,
            };
            let mut msg = abi::bytes(&head).to_vec();
            msg.extend_from_slice(&out);
            let mut writer = dev;
            let _ = writer.write(&msg);
        }
        if h.opcode == abi::INIT
            && let Some(tx) = &init_done
        {
            let _ = tx.send(());
        }
    }
}

/// One ring entry: its header and payload buffers, and the iovecs naming them.
struct Entry {
    header: Box<abi::ReqHeader>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

/// The io_uring transport for one queue: register DEPTH entries, then
/// answer each completed fetch with a commit that fetches the next.
fn ring_loop(
    fd: RawFd,
    qid: u16,
    served: &Served,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    uring::pin_to_cpu(qid as usize);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        match IoUring::builder().build((DEPTH * 2) as u32) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    let mut entries: Vec<Entry> = (0..DEPTH)
        .map(|_| {
            let mut header = Box::<abi::ReqHeader>::default();
            let mut payload = vec![0u8; PAYLOAD];
            let iov = Box::new([
                libc::iovec {
                    iov_base: (&mut *header as *mut abi::ReqHeader).cast(),
                    iov_len: size_of::<abi::ReqHeader>(),
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: PAYLOAD,
                },
            ]);
            Entry {
                header,
                payload,
                iov,
            }
        })
        .collect();
    for (i, e) in entries.iter().enumerate() {
        let sqe = uring::register_sqe(fd, qid, e.iov.as_ptr(), i as u64);
        // SAFETY: the entry's buffers live as long as the ring.
        unsafe { ring.submission().push(&sqe).expect("room for every entry") };
    }
    if let Err(e) = ring.submit() {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    loop {
        if ring.submit_and_wait(1).is_err() {
            return;
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (i, res) in done {
            if res < 0 {
                // ENOTCONN and friends: the connection is ending.
                return;
            }
            let e = &mut entries[i as usize];
            let h: InHeader = abi::read(&e.header.in_out);
            let n = (e.header.ent.payload_sz as usize).min(PAYLOAD);
            let (error, out) =
                answer(&h, &e.header.op_in, &e.payload[..n], true).unwrap_or((0, Vec::new()));
            served.ring.fetch_add(1, Ordering::Relaxed);
            let head = abi::OutHeader {
                len: (size_of::<abi::OutHeader>() + out.len()) as u32,
                error,
                unique: h.unique,
            };
            e.header.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(abi::bytes(&head));
            e.payload[..out.len()].copy_from_slice(&out);
            e.header.ent.payload_sz = out.len() as u32;
            let sqe = uring::commit_sqe(fd, qid, e.header.ent.commit_id, i);
            // SAFETY: as above.
            unsafe { ring.submission().push(&sqe).expect("one slot per entry") };
        }
    }
}
