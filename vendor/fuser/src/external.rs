//! unionmount patch: requests that reach the daemon another way than a read
//! of /dev/fuse (FUSE over io_uring), dispatched to the same filesystem as
//! the session's own loops, with the same access rule and reply objects.

use std::fmt;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::ll::Operation;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// Where the replies to externally received requests go.
pub trait ReplyTarget: Send + Sync + fmt::Debug + 'static {
    /// Send one whole reply: its `fuse_out_header`, then its body.
    fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()>;
}

/// Dispatches requests received outside the session's /dev/fuse loops.
pub struct Dispatcher<FS: Filesystem> {
    event_loop: SessionEventLoop<FS>,
}

impl<FS: Filesystem> Dispatcher<FS> {
    pub(crate) fn new(event_loop: SessionEventLoop<FS>) -> Self {
        Dispatcher { event_loop }
    }

    /// Dispatch one request laid out as a read of /dev/fuse gives it (the
    /// header, then the arguments), 8-byte aligned. Its reply goes to
    /// `target`. Returns false for FUSE_DESTROY: the session is over.
    pub fn dispatch(&self, request: &[u8], target: Arc<dyn ReplyTarget>) -> io::Result<bool> {
        let sender = self.event_loop.ch.sender();
        let Some(req) = RequestWithSender::with_target(sender, Some(target), request) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid FUSE request",
            ));
        };
        if let Ok(Operation::Destroy(_)) = req.request.operation() {
            req.reply::<ReplyEmpty>().ok();
            return Ok(false);
        }
        req.dispatch(&self.event_loop);
        Ok(true)
    }

    /// The session's /dev/fuse device, on which io_uring queues register.
    pub fn device(&self) -> BorrowedFd<'_> {
        self.event_loop.ch.as_fd()
    }
}

impl<FS: Filesystem> fmt::Debug for Dispatcher<FS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl<FS: Filesystem> Clone for Dispatcher<FS> {
    fn clone(&self) -> Self {
        Dispatcher::new(SessionEventLoop {
            thread_name: self.event_loop.thread_name.clone(),
            ch: self.event_loop.ch.clone(),
            filesystem: self.event_loop.filesystem.clone(),
            allowed: self.event_loop.allowed,
            session_owner: self.event_loop.session_owner,
        })
    }
}
