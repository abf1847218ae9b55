//! `TamperProxy`: a small HTTP/1.1 proxy in front of a plain registry that
//! forwards every request, one per connection (it rewrites `Connection:
//! close` both ways), and can be told to misbehave for one blob: flip a byte
//! of it, cut the connection after N bytes of it, answer 404 for it; or to
//! ignore Range headers as a server without range support does; or hold a
//! blob's response after N bytes until the test lets it go on or cuts it
//! (a pull stopped at a known point, to kill the client or stop the
//! registry there). It records the requests it saw, with their Range
//! header, so a test can check that a client resumed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// No connection of a test waits longer than this on a silent peer.
const IDLE: Duration = Duration::from_secs(60);

/// What to do to a blob's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// GET: flip (xor 0xff) the middle byte of the response body
    FlipByte,
    /// GET: send the head and this many bytes of the body, then close the
    /// connection (the head still promises the whole length)
    CutAfter(u64),
    /// GET and HEAD: answer 404 BLOB_UNKNOWN without asking the registry
    NotFound,
    /// GET: send the head and this many bytes of the body, then hold the
    /// connection until `release()` (the rest follows) or `cut_stalled()`
    StallAfter(u64),
}

/// What `release()` and `cut_stalled()` tell held connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    Continue,
    Cut,
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    pub method: String,
    /// the request target, query included
    pub path: String,
    /// the client's Range header, if it sent one (even when ignored)
    pub range: Option<String>,
    /// the fault applied to this request
    pub fault: Option<Fault>,
}

struct Rule {
    digest: String,
    fault: Fault,
    /// None: every time
    left: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    ignore_ranges: bool,
    seen: Vec<ProxyRequest>,
    /// connections that have reached their stall point, ever
    stalled: usize,
    /// bumped by release()/cut_stalled(); a held connection waits for it
    resume_gen: u64,
    resume: Option<Resume>,
    stopping: bool,
}

/// What the accept loop and every connection share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a connection as held, then wait for the test's word.
    fn stall(&self) -> Resume {
        let mut st = self.lock();
        st.stalled += 1;
        let asked = st.resume_gen;
        self.changed.notify_all();
        while st.resume_gen == asked && !st.stopping {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stopping {
            Resume::Cut
        } else {
            st.resume.unwrap_or(Resume::Continue)
        }
    }
}

impl State {
    /// The fault for `method` on blob `digest`, counted as used.
    fn take_fault(&mut self, method: &str, digest: Option<&str>) -> Option<Fault> {
        let digest = digest?;
        let rule = self.rules.iter_mut().find(|r| {
            r.digest == digest
                && r.left != Some(0)
                && (method == "GET" || (method == "HEAD" && r.fault == Fault::NotFound))
        })?;
        if let Some(n) = &mut rule.left {
            *n -= 1;
        }
        Some(rule.fault)
    }
}

/// The proxy; on Drop it stops accepting and cuts held connections.
pub struct TamperProxy {
    addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TamperProxy {
    /// Listen on 127.0.0.1 at a free port and forward to `upstream`
    /// ("127.0.0.1:PORT" of a plain registry, e.g. `Registry::addr()`).
    pub fn start(upstream: &str) -> TamperProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (shared, stop, upstream) = (shared.clone(), stop.clone(), upstream.to_string());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (shared, upstream) = (shared.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        // A client or registry hanging up early is what
                        // some tests do on purpose: nothing to report.
                        let _ = serve(conn, &upstream, &shared);
                    });
                }
            })
        };
        TamperProxy {
            addr,
            shared,
            stop,
            accept: Some(accept),
        }
    }

    /// "127.0.0.1:PORT" of the proxy, as a reference's registry part.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// "PROXY:PORT/REPO:TAG" of `repo_tag`, for a client to go through it.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Apply `fault` to every request for blob `digest` ("sha256:…").
    pub fn fault(&self, digest: &str, fault: Fault) {
        self.add_rule(digest, fault, None);
    }

    /// Apply `fault` to the next `times` requests for blob `digest` only.
    pub fn fault_times(&self, digest: &str, fault: Fault, times: usize) {
        self.add_rule(digest, fault, Some(times));
    }

    /// Drop Range headers, so the registry sends whole blobs (200), as a
    /// server without range support does.
    pub fn ignore_ranges(&self, on: bool) {
        self.state().ignore_ranges = on;
    }

    /// Forget every fault and `ignore_ranges`; keep the request record.
    pub fn clear(&self) {
        let mut st = self.state();
        st.rules.clear();
        st.ignore_ranges = false;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.state().seen.clone()
    }

    fn add_rule(&self, digest: &str, fault: Fault, left: Option<usize>) {
        self.state().rules.push(Rule {
            digest: digest.to_string(),
            fault,
            left,
        });
    }

    /// Wait (up to 60 s) until `n` connections in all have been held by
    /// `StallAfter`; whether they were.
    pub fn wait_stalled(&self, n: usize) -> bool {
        let st = self.state();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, IDLE, |st| st.stalled < n)
            .unwrap_or_else(|e| e.into_inner());
        st.stalled >= n
    }

    /// Held connections go on: the rest of the body follows.
    pub fn release(&self) {
        self.resume(Resume::Continue);
    }

    /// Held connections are closed where they stand, mid-body.
    pub fn cut_stalled(&self) {
        self.resume(Resume::Cut);
    }

    fn resume(&self, how: Resume) {
        let mut st = self.state();
        st.resume_gen += 1;
        st.resume = Some(how);
        self.shared.changed.notify_all();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.state().stopping = true;
        self.shared.changed.notify_all();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A request or response head: the first line and the headers.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The head as sent on, without `drop` headers, with `Connection: close`.
    fn render(&self, drop: &[&str]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (n, v) in &self.headers {
            if !drop.iter().any(|d| n.eq_ignore_ascii_case(d)) {
                out += &format!("{n}: {v}\r\n");
            }
        }
        out += "Connection: close\r\n\r\n";
        out.into_bytes()
    }
}

/// Headers about this hop's connection, which the proxy sets itself.
const HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "expect"];

fn serve(client: TcpStream, upstream: &str, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(IDLE))?;
    client.set_write_timeout(Some(IDLE))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    // A TLS hello (containers/image tries https first on an insecure
    // registry): hang up, and the client falls back to plain HTTP.
    let first = from_client.fill_buf()?;
    if first.first().is_none_or(|b| *b == 0x16) {
        return Ok(());
    }
    let req = read_head(&mut from_client)?;
    let mut words = req.first.split(' ');
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let digest = blob_digest(&target);
    let (fault, ignore_ranges) = {
        let mut st = shared.lock();
        let fault = st.take_fault(&method, digest.as_deref());
        st.seen.push(ProxyRequest {
            method: method.clone(),
            path: target.clone(),
            range: req.get("range").map(String::from),
            fault,
        });
        (fault, st.ignore_ranges)
    };
    let mut client = client;
    if fault == Some(Fault::NotFound) {
        return not_found(&mut client, &method, digest.as_deref().unwrap_or_default());
    }
    let up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(IDLE))?;
    up.set_write_timeout(Some(IDLE))?;
    let mut to_up = up.try_clone()?;
    let mut drop_req: Vec<&str> = HOP.to_vec();
    if ignore_ranges {
        drop_req.push("range");
    }
    to_up.write_all(&req.render(&drop_req))?;
    copy_request_body(&mut from_client, &mut to_up, &req)?;
    let mut from_up = BufReader::new(up);
    let (status, len) = forward_response_head(&mut from_up, &mut client)?;
    let no_body = method == "HEAD" || status == 204 || status == 304;
    if !no_body {
        copy_response_body(&mut from_up, &mut client, len, fault, shared)?;
    }
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

/// The response head (after any 1xx ones), sent on to the client; its
/// status and Content-Length.
fn forward_response_head(
    from_up: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
) -> io::Result<(u16, Option<u64>)> {
    loop {
        let resp = read_head(from_up)?;
        let status: u16 = resp
            .first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {:?}", resp.first)))?;
        client.write_all(&resp.render(&["connection", "keep-alive"]))?;
        if !(100..200).contains(&status) {
            let len = resp.get("content-length").and_then(|v| v.parse().ok());
            return Ok((status, len));
        }
    }
}

/// The response body: exactly Content-Length bytes (with `fault` applied),
/// or, without one, everything until the registry closes.
fn copy_response_body(
    from_up: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
    len: Option<u64>,
    fault: Option<Fault>,
    shared: &Shared,
) -> io::Result<()> {
    let Some(len) = len else {
        io::copy(from_up, client)?;
        return Ok(());
    };
    let flip_at = (fault == Some(Fault::FlipByte) && len > 0).then_some(len / 2);
    let limit = match fault {
        Some(Fault::CutAfter(n)) => n.min(len),
        _ => len,
    };
    let mut stall_at = match fault {
        Some(Fault::StallAfter(n)) => Some(n.min(len)),
        _ => None,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    loop {
        if stall_at == Some(sent) {
            stall_at = None;
            client.flush()?;
            if shared.stall() == Resume::Cut {
                return Ok(());
            }
        }
        if sent >= limit {
            return Ok(());
        }
        let end = stall_at.unwrap_or(limit);
        let want = buf.len().min((end - sent) as usize);
        let n = from_up.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(());
        }
        if let Some(at) = flip_at
            && (sent..sent + n as u64).contains(&at)
        {
            buf[(at - sent) as usize] ^= 0xff;
        }
        client.write_all(&buf[..n])?;
        sent += n as u64;
    }
}

/// The request body: Content-Length bytes, or chunks as they come.
fn copy_request_body(
    from: &mut BufReader<TcpStream>,
    to: &mut TcpStream,
    req: &Head,
) -> io::Result<()> {
    if req
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        return copy_chunked(from, to);
    }
    let len: u64 = req
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let copied = io::copy(&mut from.by_ref().take(len), to)?;
    if copied < len {
        return Err(bad("request body cut short"));
    }
    Ok(())
}

/// Chunked framing passed on verbatim, up to and including the trailer.
fn copy_chunked(from: &mut BufReader<TcpStream>, to: &mut TcpStream) -> io::Result<()> {
    loop {
        let line = read_line(from)?;
        to.write_all(line.as_bytes())?;
        let size_hex = line.trim_end().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_hex.trim(), 16)
            .map_err(|_| bad(&format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailer lines, then the blank line that ends the body.
            loop {
                let t = read_line(from)?;
                to.write_all(t.as_bytes())?;
                if t == "\r\n" || t == "\n" {
                    return Ok(());
                }
            }
        }
        // The chunk and its CRLF.
        let copied = io::copy(&mut from.by_ref().take(size + 2), to)?;
        if copied < size + 2 {
            return Err(bad("chunk cut short"));
        }
    }
}

/// Answer 404 as the registry does for an unknown blob.
fn not_found(client: &mut TcpStream, method: &str, digest: &str) -> io::Result<()> {
    let body = format!(
        "{{\"errors\":[{{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown to registry\",\"detail\":\"{digest}\"}}]}}\n"
    );
    let head = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=utf-8\r\n\
         Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    if method != "HEAD" {
        client.write_all(body.as_bytes())?;
    }
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

/// "sha256:…" of a `/v2/NAME/blobs/DIGEST` target (not an upload).
fn blob_digest(target: &str) -> Option<String> {
    let path = target.split('?').next()?;
    let (_, digest) = path.rsplit_once("/blobs/")?;
    digest
        .contains(':')
        .then(|| digest.to_string())
        .filter(|_| !path.contains("/blobs/uploads"))
}

/// A head up to its blank line (at most 1 MiB).
fn read_head(from: &mut BufReader<TcpStream>) -> io::Result<Head> {
    let first = read_line(from)?.trim_end().to_string();
    if first.is_empty() {
        return Err(bad("no request or status line"));
    }
    let mut headers = Vec::new();
    let mut total = first.len();
    loop {
        let line = read_line(from)?;
        total += line.len();
        if total > 1 << 20 {
            return Err(bad("head over 1 MiB"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Head { first, headers })
}

/// One line with its line end; an error at end of stream.
fn read_line(from: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if from.read_line(&mut line)? == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(line)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
