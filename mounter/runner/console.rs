//! `run -t`: the container's terminal, made as runc makes it for podman and
//! Docker.
//!
//! Pid 1 opens a pseudo-terminal in the container's own devpts (so that
//! `tty` names `/dev/pts/0` inside), binds it on `/dev/console`, gives it the
//! size of the runner's terminal, sends the master to the runner over a
//! socket, then makes the slave its controlling terminal (as a session
//! leader: job control works) and its stdin, stdout and stderr. The runner
//! copies its stdin to the master (with `-i`) and the master to its stdout,
//! passes its terminal's size on at each SIGWINCH, and keeps its terminal in
//! raw mode while stdin is attached, restored when the run ends.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, ptsname, unlockpt};
use rustix::termios::{OptionalActions, Termios, Winsize, isatty, tcgetattr, tcsetattr};
use signal_hook::SigId;

fn io<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(io::Error::from)
}

fn context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The socket pair on which pid 1 sends the master: (the runner's end, pid 1's).
pub fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    io(socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ))
}

/// The terminal the runner was started on: its stdout, stdin or stderr,
/// the first that is a terminal.
fn host_terminal() -> Option<BorrowedFd<'static>> {
    [
        rustix::stdio::stdout(),
        rustix::stdio::stdin(),
        rustix::stdio::stderr(),
    ]
    .into_iter()
    .find(|fd| isatty(fd))
}

fn host_size() -> Option<Winsize> {
    host_terminal().and_then(|fd| rustix::termios::tcgetwinsize(fd).ok())
}

/// Pid 1, in the container's root with its `/dev` made and while its stdio
/// is still the runner's: a new terminal owned by the container's user,
/// its master sent on `sock`. The slave is returned, for [`attach`].
pub fn open(sock: OwnedFd, uid: u32, gid: u32) -> io::Result<OwnedFd> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = io(openpt(flags)).map_err(context("/dev/ptmx"))?;
    io(grantpt(&master).and_then(|()| unlockpt(&master))).map_err(context("unlocking the pty"))?;
    let slave = io(ioctl_tiocgptpeer(&master, flags)).map_err(context("opening the pty"))?;
    io(rustix::fs::fchown(
        &slave,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    ))
    .map_err(context("chown of the pty"))?;
    if let Some(size) = host_size() {
        io(rustix::termios::tcsetwinsize(&slave, size)).map_err(context("window size"))?;
    }
    bind_console(&master)?;
    send_fd(&sock, master.as_fd()).map_err(context("sending the pty to the runner"))?;
    Ok(slave)
}

/// `/dev/console` is the terminal too, as runc makes it.
fn bind_console(master: &OwnedFd) -> io::Result<()> {
    let name = io(ptsname(master, Vec::new())).map_err(context("ptsname"))?;
    let console = Path::new("/dev/console");
    File::create(console).map_err(context("/dev/console"))?;
    io(rustix::mount::mount_bind(name.as_c_str(), console)).map_err(context("/dev/console"))
}

/// Pid 1: a session of its own whose controlling terminal is `slave`, and
/// `slave` as stdin, stdout and stderr.
pub fn attach(slave: OwnedFd) -> io::Result<()> {
    io(rustix::process::setsid()).map_err(context("setsid"))?;
    io(rustix::process::ioctl_tiocsctty(&slave)).map_err(context("controlling terminal"))?;
    io(rustix::stdio::dup2_stdin(&slave)
        .and_then(|()| rustix::stdio::dup2_stdout(&slave))
        .and_then(|()| rustix::stdio::dup2_stderr(&slave)))
    .map_err(context("terminal as stdio"))
}

/// The child of `--init`: a process group of its own, in the terminal's
/// foreground (as tini does), so that the terminal's signals (^C) reach it
/// and not the init. SIGTTOU is held off meanwhile: a background group may
/// not take the terminal otherwise.
pub fn take_foreground() -> io::Result<()> {
    io(rustix::process::setpgid(None, None)).map_err(context("setpgid"))?;
    let mask = crate::sys::block_signals(&[libc::SIGTTOU])?;
    let r = io(rustix::termios::tcsetpgrp(
        rustix::stdio::stdin(),
        rustix::process::getpid(),
    ));
    crate::sys::restore_signals(&mask)?;
    r.map_err(context("tcsetpgrp"))
}

fn send_fd(sock: &OwnedFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    io(sendmsg(
        sock,
        &[IoSlice::new(b"m")],
        &mut cmsg,
        SendFlags::empty(),
    ))
    .map(drop)
}

/// The runner: the master pid 1 sends; none when pid 1 ended before it
/// could (its error comes on the error pipe).
pub fn receive(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = io(recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    ))?;
    if got.bytes == 0 {
        return Ok(None);
    }
    Ok(cmsg.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    }))
}

/// The runner's side of a container's terminal while the command runs.
///
/// No threads: a process that made a pid namespace with `unshare` cannot
/// start any. The runner's one thread polls the master, its stdin and a
/// pipe that its signal handlers write to.
pub struct Attached {
    /// None once hung up.
    master: Option<File>,
    /// The runner's own terminal (its stdout, stdin or stderr), if any.
    host: Option<BorrowedFd<'static>>,
    /// Stdin is still copied (`-i`, and no end of it seen).
    stdin: bool,
    /// The master still gives output (it reads EIO once no process holds
    /// the slave).
    output: bool,
    /// Woken by every watched signal, so that a poll ends for it.
    wake: UnixStream,
    wake_ids: Vec<SigId>,
    /// The runner's terminal as it was before raw mode.
    saved: Option<Termios>,
}

impl Attached {
    /// Attach the terminal whose master is `master`, stdin too when `stdin`,
    /// woken by the `signals` the runner handles. The runner's terminal
    /// (if stdin is one) goes into raw mode while stdin is attached, so that
    /// every key, ^C included, reaches the container's terminal.
    pub fn start(master: OwnedFd, stdin: bool, signals: &[i32]) -> io::Result<Attached> {
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        let mut wake_ids = Vec::new();
        for s in signals {
            wake_ids.push(signal_hook::low_level::pipe::register(
                *s,
                waker.try_clone()?,
            )?);
        }
        // Signals that came before the registration: the first poll looks.
        (&waker).write_all(b"w")?;
        Ok(Attached {
            master: Some(File::from(master)),
            host: host_terminal(),
            stdin,
            output: true,
            wake,
            wake_ids,
            saved: if stdin { raw_mode() } else { None },
        })
    }

    /// Copy between the terminal and the runner's stdio until a signal
    /// comes (SIGCHLD included: the command may have ended).
    pub fn relay_until_signal(&mut self) {
        let stdin = rustix::stdio::stdin();
        loop {
            let Some(master) = &self.master else {
                self.output = false;
                self.stdin = false;
                return wait_readable(&self.wake);
            };
            let mut fds = vec![PollFd::new(&self.wake, PollFlags::IN)];
            if self.output {
                fds.push(PollFd::new(master, PollFlags::IN));
            }
            if self.stdin {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            // Signals first: a resize that came before a key is made before
            // the key reaches the container.
            if ready[0] {
                return drain(&self.wake);
            }
            let mut at = ready.iter().copied().skip(1);
            if self.output && at.next() == Some(true) {
                self.output = self.copy_out();
            }
            if self.stdin && at.next() == Some(true) {
                self.stdin = self.copy_in();
            }
        }
    }

    /// The runner's terminal changed size (SIGWINCH): so does the
    /// container's, whose foreground process group the kernel tells.
    pub fn resize(&self) {
        if let (Some(m), Some(size)) = (&self.master, host_size()) {
            let _ = rustix::termios::tcsetwinsize(m, size);
        }
    }

    /// SIGHUP: if the runner's terminal is gone (it answers EIO once hung
    /// up), the container's hangs up too, as a terminal emulator's does
    /// when its window closes: its session gets SIGHUP from the kernel and
    /// reads end. A shell as pid 1 ignores a forwarded SIGHUP, not that.
    pub fn hang_up_if_gone(&mut self) {
        if let Some(fd) = self.host
            && tcgetattr(fd).err() == Some(rustix::io::Errno::IO)
        {
            self.master = None;
        }
    }

    /// After the command: the rest of what it wrote shown, the signal
    /// pipe taken away and the terminal restored (by the drop).
    pub fn finish(mut self) {
        while self.output {
            self.output = self.copy_out();
        }
    }

    /// One read of the master to stdout; false once it has no more.
    fn copy_out(&mut self) -> bool {
        let Some(mut master) = self.master.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 8192];
        match master.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                // Unbuffered: a prompt has no newline.
                let mut out = io::stdout().lock();
                let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
                true
            }
            Err(e) => e.kind() == io::ErrorKind::Interrupted,
        }
    }

    /// One read of stdin to the master; false at its end.
    fn copy_in(&mut self) -> bool {
        let Some(mut master) = self.master.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 8192];
        match rustix::io::read(rustix::stdio::stdin(), &mut buf) {
            Ok(0) => false,
            Ok(n) => master.write_all(&buf[..n]).is_ok(),
            Err(e) => e == rustix::io::Errno::INTR,
        }
    }
}

impl Drop for Attached {
    /// Also on an error or a panic: the user's terminal is never left raw.
    fn drop(&mut self) {
        for id in self.wake_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        if let Some(t) = &self.saved {
            let _ = tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, t);
        }
    }
}

/// Block until `wake` has something, and empty it.
fn wait_readable(wake: &UnixStream) {
    let mut fds = [PollFd::new(wake, PollFlags::IN)];
    let _ = rustix::event::poll(&mut fds, None);
    drain(wake);
}

fn drain(wake: &UnixStream) {
    let mut buf = [0u8; 64];
    while (&*wake).read(&mut buf).is_ok_and(|n| n > 0) {}
}

/// Raw mode on the runner's stdin if it is a terminal; how it was before.
fn raw_mode() -> Option<Termios> {
    let fd = rustix::stdio::stdin();
    if !isatty(fd) {
        return None;
    }
    let saved = tcgetattr(fd).ok()?;
    let mut raw = saved.clone();
    raw.make_raw();
    tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
    Some(saved)
}
