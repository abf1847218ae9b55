//! Progress reports for long operations (imports, unpacking, commits).
//!
//! The library only counts bytes and tells an [`Observer`]; drawing is the
//! caller's business (the CLI draws a bar on a terminal). Without an observer
//! nothing is reported.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Receives progress reports. One task runs at a time: `start`, any number
/// of `advance`, then `finish`.
pub trait Observer: Send + Sync {
    /// A task begins: what is being done, and how many bytes it will take if
    /// that is known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `done` bytes of the current task are done.
    fn advance(&self, done: u64);
    /// The current task is over (done, failed or abandoned).
    fn finish(&self);
}

/// Bytes between two reports.
const STEP: u64 = 256 << 10;

/// An optional progress observer.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Observer>>);

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

impl Progress {
    pub fn new(observer: Arc<dyn Observer>) -> Self {
        Progress(Some(observer))
    }

    /// Count the bytes read through `r`: one task, `total` bytes if known.
    pub fn reader<R: Read>(&self, what: &str, total: Option<u64>, r: R) -> Counting<R> {
        Counting::new(self, what, total, r)
    }

    /// Count the bytes written through `w`: one task, `total` bytes if known.
    pub fn writer<W: Write>(&self, what: &str, total: Option<u64>, w: W) -> Counting<W> {
        Counting::new(self, what, total, w)
    }
}

/// A reader or writer that reports its byte count; its task ends when it is
/// dropped (or unwrapped).
pub struct Counting<T> {
    inner: T,
    task: Task,
}

/// One task's count; tells the observer it is over when dropped.
struct Task {
    observer: Option<Arc<dyn Observer>>,
    done: u64,
    next: u64,
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(o) = &self.observer {
            o.advance(self.done);
            o.finish();
        }
    }
}

impl<T> Counting<T> {
    fn new(p: &Progress, what: &str, total: Option<u64>, inner: T) -> Self {
        if let Some(o) = &p.0 {
            o.start(what, total);
        }
        Counting {
            inner,
            task: Task {
                observer: p.0.clone(),
                done: 0,
                next: STEP,
            },
        }
    }

    fn count(&mut self, n: usize) {
        let t = &mut self.task;
        t.done += n as u64;
        if t.done >= t.next {
            t.next = t.done + STEP;
            if let Some(o) = &t.observer {
                o.advance(t.done);
            }
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.task.done
    }

    /// End the task; the wrapped reader or writer.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The length of a file, as the total of a task that reads it whole.
pub fn file_len(f: &std::fs::File) -> Option<u64> {
    f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Observer for Log {
        fn start(&self, what: &str, total: Option<u64>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("start {what} {total:?}"));
        }
        fn advance(&self, done: u64) {
            self.0.lock().unwrap().push(format!("at {done}"));
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".into());
        }
    }

    #[test]
    fn one_task_per_reader_with_steps_and_an_end() {
        let log = Arc::new(Log::default());
        let p = Progress::new(log.clone());
        let data = vec![0u8; (3 * STEP as usize) + 5];
        {
            let mut r = p.reader("x", Some(data.len() as u64), &data[..]);
            io::copy(&mut r, &mut io::sink()).unwrap();
            assert_eq!(r.done(), data.len() as u64);
        }
        let log = log.0.lock().unwrap();
        assert_eq!(
            log.first().unwrap(),
            &format!("start x Some({})", data.len())
        );
        assert_eq!(log.last().unwrap(), "finish");
        assert_eq!(log[log.len() - 2], format!("at {}", data.len()));
        assert!(log.len() >= 5, "{log:?}");
    }

    #[test]
    fn off_by_default() {
        let p = Progress::default();
        let mut w = p.writer("y", None, Vec::new());
        w.write_all(b"abc").unwrap();
        assert_eq!(w.done(), 3);
    }
}
