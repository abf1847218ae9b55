//! FUSE over io_uring (Linux 6.14 and later, with the fuse module's
//! `enable_uring` switch on): requests come in and replies go out through
//! one io_uring queue per CPU instead of a read and a write of /dev/fuse
//! each. A queue's thread is pinned to its CPU, where the kernel puts the
//! requests of the processes running there, so a round trip stays on one
//! CPU. Forgets and interrupts still come on /dev/fuse (one classic loop
//! serves them). The union's handlers are the same either way: fuser's
//! dispatcher hands them reply objects that write into the ring entry.
//! The measurement behind it is in docs/performance.md.

pub mod abi;
mod entry;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use fuser::Dispatcher;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::UnionFuse;
use super::requests::Requests;
use entry::Entry;

/// Requests a queue holds at once. Its thread answers one at a time; the
/// others wait filled, so the kernel need not wait for a commit to hand the
/// next one over.
const DEPTH: usize = 4;

/// Whether the mount asks for io_uring in its INIT reply, and whether the
/// kernel offered it (the session reads that once INIT is done).
#[derive(Default)]
pub(super) struct Choice {
    pub(super) wanted: bool,
    pub(super) granted: Arc<AtomicBool>,
}

impl Choice {
    /// Ask for io_uring if wanted and offered (the kernel offers it only
    /// with `enable_uring` on).
    pub(super) fn ask(&self, config: &mut fuser::KernelConfig) {
        let granted = self.wanted
            && config
                .add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
        self.granted.store(granted, Ordering::Release);
    }
}

/// What `enable_uring` says, if the running kernel has the switch.
pub fn enabled_in_kernel() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y")
}

/// Can this process use io_uring at all? A kernel built without it, its
/// `io_uring_disabled` sysctl or a seccomp filter say no; asked before the
/// INIT reply commits the mount to the transport.
pub fn usable() -> bool {
    enabled_in_kernel() && Ring::builder().build(2).is_ok()
}

/// Ends the connection: for a transport that cannot serve it. Once INIT
/// has chosen io_uring the kernel holds every request until all queues are
/// registered and sends none elsewhere, so a queue that is missing or gone
/// would leave its CPU's callers waiting for ever.
pub(super) type Abort = Arc<dyn Fn() + Send + Sync>;

/// Start one queue per possible CPU, each registered before the next starts.
/// On failure, `abort` ends the connection, the queues already started are
/// joined, and the error names the queue. A queue that fails later aborts
/// too.
pub(super) fn start(
    dispatcher: Dispatcher<UnionFuse>,
    requests: Arc<Requests>,
    payload_len: usize,
    abort: Abort,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
    let mut threads = Vec::new();
    let started = possible_cpus().and_then(|queues| {
        for qid in 0..queues {
            let (ready, registered) = mpsc::channel();
            let queue = Queue {
                dispatcher: dispatcher.clone(),
                requests: requests.clone(),
                qid: qid as u16,
                payload_len,
                abort: abort.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("uring-{qid}"))
                    .spawn(move || queue.serve(ready))?,
            );
            registered
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the thread died")))
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring queue {qid}: {e}")))?;
        }
        Ok(())
    });
    match started {
        Ok(()) => Ok(threads),
        Err(e) => {
            abort();
            for t in threads {
                let _ = t.join();
            }
            Err(e)
        }
    }
}

/// The CPUs the kernel makes queues for: every possible one.
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = s.trim().rsplit(['-', ',']).next().unwrap_or("0");
    Ok(last.parse::<usize>().map_err(io::Error::other)? + 1)
}

/// One queue: its CPU's requests, answered on that CPU.
struct Queue {
    dispatcher: Dispatcher<UnionFuse>,
    requests: Arc<Requests>,
    qid: u16,
    payload_len: usize,
    abort: Abort,
}

impl Queue {
    /// Register the entries, say so on `ready`, then answer each request
    /// with a commit that fetches the next, until the connection ends.
    fn serve(self, ready: mpsc::Sender<io::Result<()>>) -> io::Result<()> {
        pin_to_cpu(self.qid as usize);
        let dev = self.dispatcher.device().as_raw_fd();
        let entries: Vec<Entry> = (0..DEPTH).map(|_| Entry::new(self.payload_len)).collect();
        let mut ring = match self.register(dev, &entries) {
            Ok(ring) => ring,
            Err(e) => {
                let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                // The kernel may hold some entries: never free their memory.
                std::mem::forget(entries);
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        let served = self.answer_until_closed(&mut ring, dev, &entries);
        if let Err(e) = &served {
            log::error!("io_uring queue {}: {e}; ending the connection", self.qid);
            (self.abort)();
            std::mem::forget(entries);
        }
        served
    }

    fn register(&self, dev: RawFd, entries: &[Entry]) -> io::Result<Ring> {
        let mut ring = IoUring::builder().build((DEPTH * 2) as u32)?;
        for (i, e) in entries.iter().enumerate() {
            let sqe = register_sqe(dev, self.qid, e.iovecs(), i as u64);
            // SAFETY: the entry's buffers stay put while the kernel has them.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        ring.submit()?;
        Ok(ring)
    }

    /// The loop. Every entry ends with an error completion once the
    /// connection goes (unmount or abort): then all are back, and the
    /// entries may be freed.
    fn answer_until_closed(
        &self,
        ring: &mut Ring,
        dev: RawFd,
        entries: &[Entry],
    ) -> io::Result<()> {
        // Requests are copied out of their entry into here (aligned).
        let mut scratch = vec![0u64; (self.payload_len + 512) / 8];
        let mut done = Vec::with_capacity(DEPTH);
        let mut live = entries.len();
        while live > 0 {
            match ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            done.extend(
                ring.completion()
                    .map(|c| (c.user_data() as usize, c.result())),
            );
            for (i, res) in done.drain(..) {
                if res < 0 {
                    // The connection ending, or an entry lost: then the
                    // others must end too (see `Abort`).
                    live -= 1;
                    let errno = -res;
                    if ![libc::ENOTCONN, libc::ECANCELED, libc::ENODEV].contains(&errno) {
                        let e = io::Error::from_raw_os_error(errno);
                        log::error!("io_uring queue {}: entry {i}: {e}", self.qid);
                        (self.abort)();
                    }
                    continue;
                }
                let commit_id = self.answer(&entries[i], &mut scratch);
                let sqe = commit_sqe(dev, self.qid, commit_id, i as u64);
                // SAFETY: as in `register`.
                unsafe { ring.submission().push(&sqe) }
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        Ok(())
    }

    /// Dispatch the entry's request; returns the commit id of its reply.
    fn answer(&self, entry: &Entry, scratch: &mut [u64]) -> u64 {
        let reply = entry.open_reply();
        self.requests.note_io_uring();
        let (h, request) = entry.request(scratch);
        log::debug!("io_uring queue {}: opcode {}", self.qid, h.opcode);
        match request {
            Some(request) => {
                if let Err(e) = self.dispatcher.dispatch(request, reply) {
                    log::warn!("io_uring: opcode {}: {e}", h.opcode);
                }
            }
            None => log::warn!(
                "io_uring queue {}: opcode {}: lengths that do not add up",
                self.qid,
                h.opcode
            ),
        }
        entry.close_reply(h.unique)
    }
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

fn uring_cmd(dev: RawFd, op: u32, cmd: abi::CmdReq, user_data: u64) -> squeue::Entry128 {
    let mut area = [0u8; 80];
    area[..size_of::<abi::CmdReq>()].copy_from_slice(abi::bytes(&cmd));
    opcode::UringCmd80::new(types::Fd(dev), op)
        .cmd(area)
        .build()
        .user_data(user_data)
}

/// COMMIT_AND_FETCH: the reply in the entry is for `commit_id`; fill the
/// entry with the next request.
pub fn commit_sqe(dev: RawFd, qid: u16, commit_id: u64, user_data: u64) -> squeue::Entry128 {
    let cmd = abi::CmdReq {
        commit_id,
        qid,
        ..Default::default()
    };
    uring_cmd(dev, abi::CMD_COMMIT_AND_FETCH, cmd, user_data)
}

/// REGISTER an entry, named by its two iovecs (header, payload): `addr`,
/// and `len` 2 as the kernel checks (the crate's builder has no setter).
pub fn register_sqe(
    dev: RawFd,
    qid: u16,
    iovecs: *const libc::iovec,
    user_data: u64,
) -> squeue::Entry128 {
    let cmd = abi::CmdReq {
        qid,
        ..Default::default()
    };
    let sqe = uring_cmd(dev, abi::CMD_REGISTER, cmd, user_data);
    // SAFETY: Entry128 is the 128-byte struct io_uring_sqe, where `addr` is
    // at byte 16 and `len` at byte 24.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[16..24].copy_from_slice(&(iovecs as u64).to_ne_bytes());
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Serve a queue from its own CPU, as the kernel fills it from there (an
/// unpinned queue measured slower than /dev/fuse). A CPU that is possible
/// but offline refuses; the queue then runs anywhere.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}
