//! The runner's only `unsafe`: `fork`, `unshare` and `_exit`, wrapped so that
//! callers stay safe Rust.

use std::io;

use rustix::process::Pid;
use rustix::thread::UnshareFlags;

/// Which side of a [`fork`] we are on.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// How many threads this process has (`/proc/self/task`).
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork()`, refused unless this process has a single thread.
///
/// With one thread, no other thread can hold a lock (the allocator's, stdio's)
/// at the moment of the fork, so the child may go on running ordinary Rust
/// code before it execs or exits.
pub fn fork() -> io::Result<Forked> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "fork: refusing to fork a process with more than one thread",
        ));
    }
    // SAFETY: the process is single-threaded (checked just above, and nothing
    // between the check and the call starts a thread), so the child inherits
    // no lock held by a thread that does not exist in it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::other("fork returned an invalid pid")),
    }
}

/// `unshare(flags)` for namespaces and the filesystem context. `FILES` is
/// refused: it is the flag that makes the call unsafe.
pub fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: without `FILES` the descriptor table stays shared, so no thread
    // can observe descriptors from a table it does not use; the namespace
    // flags only change what later system calls see.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// End this process at once: no destructors, no atexit handlers, no flushing
/// of buffers shared with the parent (for a forked child that did not exec).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}
