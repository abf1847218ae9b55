//! Progress reports for long operations (imports, unpacking, commits): a
//! callback with a description and a byte count, called every few MiB. The
//! CLI draws it on a terminal; the library stays quiet by default.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Called with what is being done and how many bytes are done so far.
pub type Report = Arc<dyn Fn(&str, u64) + Send + Sync>;

const STEP: u64 = 4 << 20;

/// An optional progress callback.
#[derive(Clone, Default)]
pub struct Progress(Option<Report>);

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
    pub fn new(report: Report) -> Self {
        Progress(Some(report))
    }

    /// Count the bytes read through `r`.
    pub fn reader<R: Read>(&self, what: &str, r: R) -> Counting<R> {
        Counting {
            inner: r,
            report: self.0.clone(),
            what: what.to_string(),
            done: 0,
            next: STEP,
        }
    }

    /// Count the bytes written through `w`.
    pub fn writer<W: Write>(&self, what: &str, w: W) -> Counting<W> {
        Counting {
            inner: w,
            report: self.0.clone(),
            what: what.to_string(),
            done: 0,
            next: STEP,
        }
    }
}

/// A reader or writer that reports its byte count.
pub struct Counting<T> {
    inner: T,
    report: Option<Report>,
    what: String,
    done: u64,
    next: u64,
}

impl<T> Counting<T> {
    fn count(&mut self, n: usize) {
        self.done += n as u64;
        if self.done >= self.next {
            self.next = self.done + STEP;
            if let Some(r) = &self.report {
                r(&self.what, self.done);
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn reports_every_step() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let p = Progress::new(Arc::new(move |w: &str, n| {
            s2.lock().unwrap().push((w.to_string(), n))
        }));
        let data = vec![0u8; (9 << 20) + 5];
        let mut r = p.reader("x", &data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|(w, _)| w == "x"));
    }
}
