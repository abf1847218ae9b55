//! One ring entry: the buffers the kernel writes a request into and reads
//! its reply from, and the reply target fuser's reply objects write to.
//!
//! The kernel owns an entry's buffers from a REGISTER or COMMIT_AND_FETCH
//! until the completion that hands the next request over; the queue's
//! thread owns them from then until its next commit. A reply is written
//! straight into them (no copy of read data on the way back), so a request
//! is first copied out: its arguments would otherwise be overwritten by the
//! reply while fuser still borrows them.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use super::abi::{self, InHeader, OutHeader, ReqHeader};

const IN_HEADER: usize = size_of::<InHeader>();
const OUT_HEADER: usize = size_of::<OutHeader>();

/// The reply's states: the request is being dispatched, a reply is being
/// written, one was written, or one could not be (too big).
const OPEN: u8 = 0;
const WRITING: u8 = 1;
const SENT: u8 = 2;
const FAILED: u8 = 3;
/// Back with the kernel: a reply now would land in the next request.
const CLOSED: u8 = 4;

/// An entry's memory, fixed in place for as long as the kernel may use it.
pub(super) struct Entry {
    header: *mut ReqHeader,
    payload: *mut u8,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
    reply: Arc<EntryReply>,
}

impl Entry {
    pub(super) fn new(payload_len: usize) -> Entry {
        let header = Box::into_raw(Box::<ReqHeader>::default());
        let payload = Box::into_raw(vec![0u8; payload_len].into_boxed_slice()).cast::<u8>();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.cast(),
                iov_len: size_of::<ReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.cast(),
                iov_len: payload_len,
            },
        ]);
        let reply = Arc::new(EntryReply {
            header,
            payload,
            payload_len,
            state: AtomicU8::new(CLOSED),
            body_len: AtomicUsize::new(0),
        });
        Entry {
            header,
            payload,
            payload_len,
            iov,
            reply,
        }
    }

    /// The two iovecs a REGISTER names.
    pub(super) fn iovecs(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    /// The header of the request the kernel handed over, and the request
    /// laid out as a read of /dev/fuse gives it, in `scratch` (8-byte
    /// aligned); None if its lengths do not add up.
    pub(super) fn request<'a>(&self, scratch: &'a mut [u64]) -> (InHeader, Option<&'a [u8]>) {
        // SAFETY: the kernel has handed the entry over (see the module note).
        let h: InHeader = abi::read(unsafe { &(*self.header).in_out });
        (h, self.copy_request(&h, scratch))
    }

    fn copy_request<'a>(&self, h: &InHeader, scratch: &'a mut [u64]) -> Option<&'a [u8]> {
        // SAFETY: as above.
        let header = unsafe { &*self.header };
        let payload_sz = header.ent.payload_sz as usize;
        let total = h.len as usize;
        let op_len = total.checked_sub(IN_HEADER + payload_sz)?;
        // SAFETY: a u64 buffer read as bytes.
        let out = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), scratch.len() * 8)
        };
        if op_len > header.op_in.len() || payload_sz > self.payload_len || total > out.len() {
            return None;
        }
        // SAFETY: as above; payload_sz is within the payload buffer.
        let payload = unsafe { std::slice::from_raw_parts(self.payload, payload_sz) };
        out[..IN_HEADER].copy_from_slice(&header.in_out[..IN_HEADER]);
        out[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&header.op_in[..op_len]);
        out[IN_HEADER + op_len..total].copy_from_slice(payload);
        Some(&out[..total])
    }

    /// The reply target for the request being dispatched.
    pub(super) fn open_reply(&self) -> Arc<EntryReply> {
        self.reply.state.store(OPEN, Ordering::Release);
        self.reply.clone()
    }

    /// Close the reply before the entry goes back to the kernel; a request
    /// left unanswered (or answered with more than the buffer holds) gets
    /// EIO. Returns the commit id to send.
    pub(super) fn close_reply(&self, unique: u64) -> u64 {
        let state = loop {
            let s = self.reply.state.load(Ordering::Acquire);
            // A reply being written on another thread: let it finish.
            if s != WRITING
                && (self.reply.state)
                    .compare_exchange(s, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                break s;
            }
            std::hint::spin_loop();
        };
        // SAFETY: the reply is closed; the entry is ours until the commit.
        let header = unsafe { &mut *self.header };
        if state == SENT {
            header.ent.payload_sz = self.reply.body_len.load(Ordering::Acquire) as u32;
        } else {
            log::warn!("io_uring: request {unique} left without a reply; answering EIO");
            let out = OutHeader {
                len: OUT_HEADER as u32,
                error: -libc::EIO,
                unique,
            };
            header.in_out[..OUT_HEADER].copy_from_slice(abi::bytes(&out));
            header.ent.payload_sz = 0;
        }
        header.ent.commit_id
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`; the queue drops entries only once the
        // kernel is done with them.
        unsafe {
            drop(Box::from_raw(self.header));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload,
                self.payload_len,
            )));
        }
    }
}

/// Where fuser's reply objects write a reply: the entry's own buffers.
#[derive(Debug)]
pub(super) struct EntryReply {
    header: *mut ReqHeader,
    payload: *mut u8,
    payload_len: usize,
    state: AtomicU8,
    body_len: AtomicUsize,
}

// SAFETY: the buffers are written only by the one `send` that moves the
// state from OPEN to WRITING, and read by the queue only after it closed the
// state again.
unsafe impl Send for EntryReply {}
unsafe impl Sync for EntryReply {}

impl EntryReply {
    /// Copy a reply (out header, then body) into the entry: the header into
    /// its header area, the body into the payload. None if it does not fit.
    fn write(&self, data: &[IoSlice<'_>]) -> Option<usize> {
        // SAFETY: the caller holds the WRITING state.
        let (head, payload) = unsafe {
            (
                &mut (&mut (*self.header).in_out)[..OUT_HEADER],
                std::slice::from_raw_parts_mut(self.payload, self.payload_len),
            )
        };
        let mut at = 0;
        for slice in data {
            let mut s: &[u8] = slice;
            if at < OUT_HEADER {
                let k = s.len().min(OUT_HEADER - at);
                head[at..at + k].copy_from_slice(&s[..k]);
                (at, s) = (at + k, &s[k..]);
            }
            let body_at = at.saturating_sub(OUT_HEADER);
            payload
                .get_mut(body_at..body_at + s.len())?
                .copy_from_slice(s);
            at += s.len();
        }
        (at >= OUT_HEADER).then(|| at - OUT_HEADER)
    }
}

impl fuser::ReplyTarget for EntryReply {
    fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        if self
            .state
            .compare_exchange(OPEN, WRITING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::other(
                "io_uring: a reply after its entry went back to the kernel",
            ));
        }
        let written = self.write(data);
        self.body_len.store(written.unwrap_or(0), Ordering::Release);
        self.state.store(
            if written.is_some() { SENT } else { FAILED },
            Ordering::Release,
        );
        written
            .map(|_| ())
            .ok_or_else(|| io::Error::other("io_uring: a reply larger than the entry's buffer"))
    }
}
