//! The kernel structures FUSE over io_uring exchanges (protocol 7.42,
//! include/uapi/linux/fuse.h), and the request and reply headers they carry.

/// `FUSE_URING_CMD_REGISTER`: give the kernel an entry to fill.
pub const CMD_REGISTER: u32 = 1;
/// `FUSE_URING_CMD_COMMIT_AND_FETCH`: answer an entry's request, and take
/// the next one into it.
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_in_header`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

/// `struct fuse_out_header`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

/// `struct fuse_uring_ent_in_out`: the entry's bookkeeping.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct EntInOut {
    pub flags: u64,
    /// Names the request when its reply is committed.
    pub commit_id: u64,
    /// The bytes in the payload buffer, either way.
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: the in (or out) header, the opcode's own
/// argument structure, then the entry's bookkeeping. The request's other
/// arguments (names, data) are in the payload buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReqHeader {
    pub in_out: [u8; 128],
    pub op_in: [u8; 128],
    pub ent: EntInOut,
}

impl Default for ReqHeader {
    fn default() -> Self {
        ReqHeader {
            in_out: [0; 128],
            op_in: [0; 128],
            ent: EntInOut::default(),
        }
    }
}

/// `struct fuse_uring_cmd_req`, in the SQE's 80-byte command area.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

/// The bytes of a plain-data structure.
pub fn bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) structure of integers, read as bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A plain-data structure read from the start of `b` (zeros past its end).
pub fn read<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(size_of::<T>());
    // SAFETY: T is a repr(C) structure of integers; any bytes make one.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}
