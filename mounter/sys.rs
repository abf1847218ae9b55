//! The runner's only `unsafe`: `fork`, `unshare`, `_exit`, the signal mask,
//! `close_range` and the ioctl that brings up a loopback device, wrapped so
//! that callers stay safe Rust.

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

/// Bring the loopback device up: in a new network namespace it starts down.
pub fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: `socket` takes no pointers; the descriptor it returns is owned
    // at once, so it is closed on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain C data for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid `ifreq` that outlives the call; SIOCGIFFLAGS
    // writes only its flags field.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the union's `ifru_flags` member.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A thread's signal mask, as it was before [`block_signals`].
pub struct SignalMask(libc::sigset_t);

/// Block `signals` for this thread (they stay pending); the previous mask.
pub fn block_signals(signals: &[i32]) -> io::Result<SignalMask> {
    // SAFETY: `sigset_t` is plain C data; `sigemptyset` initializes it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid, live for the calls, and initialized by
    // `sigemptyset` / filled by `pthread_sigmask` before being read.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            if libc::sigaddset(&mut set, *s) != 0 {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) {
            0 => Ok(SignalMask(old)),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Put back a mask saved by [`block_signals`]; pending signals arrive now.
pub fn restore_signals(mask: &SignalMask) -> io::Result<()> {
    // SAFETY: `mask.0` is a mask filled by `pthread_sigmask`.
    match unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Mark every descriptor from `first` up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11+), so that an exec keeps only those
/// below it.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: `close_range` takes no pointers; with CLOSE_RANGE_CLOEXEC it
    // closes nothing, so no descriptor owned elsewhere in this process is
    // invalidated.
    let r = unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
