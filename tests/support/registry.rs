//! Registries on loopback for the registry tests: Debian's `docker-registry`
//! (the reference distribution server) started by the test on 127.0.0.1 at a
//! free port, with its storage, config and logs in a scratch directory.
//!
//! - `Registry::plain()`: plain HTTP; `Registry::tls_with_auth(user, pass)`:
//!   TLS with a certificate made by the test (a CA and a leaf for 127.0.0.1
//!   and localhost) and htpasswd Basic auth. Both stop by pid on Drop, even
//!   when the test panics, and `stop()`/`start()` restart on the same storage.
//! - `Registry::token_auth(user, pass)`: plain HTTP with Bearer token auth,
//!   its tokens from a `token::TokenServer` of the test.
//! - `requests()`: the requests the registry has answered so far, from its
//!   access log, so a test can assert that nothing touched the network.
//! - `proxy::TamperProxy`: an HTTP proxy in front of a plain registry that
//!   flips a byte of a blob, cuts a blob short, ignores Range, hides a blob,
//!   or holds a blob mid-body until the test lets it go on or cuts it.
//! - `images`: OCI layouts made with umoci (several layers, a whiteout, an
//!   opaque directory, a hard-link group; a two-platform index) and pushing
//!   them with skopeo.

pub mod images;
pub mod proxy;
pub mod token;

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use images::{
    MultiArch, multi_arch_index, multi_layer_oci, push_with_skopeo, push_with_skopeo_as,
};
pub use proxy::{Fault, ProxyRequest, TamperProxy};

use super::Scratch;
use super::mount::wait_until;

/// The tools every registry test needs (for `support::can_run`).
pub const TOOLS: &[&str] = &["docker-registry", "curl", "skopeo", "umoci", "tar"];

/// Root, `TOOLS` and `extra` (e.g. "podman"): true when all are there.
/// Under CI a missing one fails the test; elsewhere it is skipped.
#[must_use]
pub fn require(extra: &[&str]) -> bool {
    let mut tools = TOOLS.to_vec();
    tools.extend_from_slice(extra);
    super::can_run("this registry test", &missing(&tools))
}

/// Which of `tools` (plus root) this machine lacks, as `can_run` wants them.
pub fn missing(tools: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("{t} is not installed"));
        }
    }
    missing
}

/// A query the fixture adds to its own probes, so `requests()` can leave
/// them out (no real client sends it).
const PROBE: &str = "fixture-probe=";

/// One request the registry answered, from its access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// the request target as sent, query included
    pub path: String,
    pub status: u16,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.method, self.path, self.status)
    }
}

/// An answer of `Registry::get`.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// names lower-cased
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running (or stopped) `docker-registry` on 127.0.0.1. The process gets
/// SIGKILL should the thread that started it end first (a test killed
/// before its Drop ran): start and keep it in the test's own thread.
pub struct Registry {
    scratch: Scratch,
    port: u16,
    tls: bool,
    creds: Option<(String, String)>,
    /// with Bearer token auth: the server its clients get tokens from
    token: Option<token::TokenServer>,
    child: Option<Child>,
    probes: AtomicU64,
}

impl Registry {
    /// Plain HTTP, no auth, deletes enabled.
    pub fn plain() -> Registry {
        Registry::launch(false, None, false)
    }

    /// Plain HTTP with Bearer token auth: clients get tokens from a token
    /// server of the test, with Basic credentials of one user. (`get` and
    /// the other curl helpers send Basic credentials: they get 401 here.)
    pub fn token_auth(user: &str, pass: &str) -> Registry {
        Registry::launch(false, Some((user.to_string(), pass.to_string())), true)
    }

    /// TLS (certificate for 127.0.0.1 and localhost, signed by a CA made
    /// here: `ca_cert_path()`) and htpasswd Basic auth for one user.
    pub fn tls_with_auth(user: &str, pass: &str) -> Registry {
        Registry::launch(true, Some((user.to_string(), pass.to_string())), false)
    }

    fn launch(tls: bool, creds: Option<(String, String)>, bearer: bool) -> Registry {
        let scratch = Scratch::new();
        if tls {
            write_certs(&scratch.dir("certs"));
        }
        let mut token = None;
        if let Some((user, pass)) = &creds {
            if bearer {
                token = Some(token::TokenServer::start(scratch.path(), user, pass));
            } else {
                write_htpasswd(&scratch.path().join("htpasswd"), user, pass);
            }
        }
        let mut reg = Registry {
            scratch,
            port: 0,
            tls,
            creds,
            token,
            child: None,
            probes: AtomicU64::new(0),
        };
        // A port picked by binding port 0 can be taken again before the
        // registry binds it: pick another then.
        for _ in 0..5 {
            reg.port = free_port();
            match reg.spawn() {
                Ok(()) => return reg,
                Err(Spawn::PortTaken) => continue,
                Err(Spawn::Failed(why)) => panic!("docker-registry: {why}"),
            }
        }
        panic!("docker-registry: no free port after 5 tries")
    }

    /// "127.0.0.1:PORT", as a reference's registry part.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "127.0.0.1:PORT/REPO:TAG" (or "…/REPO@sha256:…") of `repo_tag`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT" or "https://…".
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user and password of a registry with auth.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The CA certificate (PEM) that signed the registry's certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(self.tls, "a plain registry has no certificate");
        self.cert_dir().join("ca.crt")
    }

    /// A directory holding only `ca.crt`: what `--cert-dir` of skopeo and
    /// podman (and containers' certs.d/HOST:PORT) expect.
    pub fn cert_dir(&self) -> PathBuf {
        assert!(self.tls, "a plain registry has no certificate");
        self.scratch.path().join("certs/trust")
    }

    /// The scratch directory: config.yml, storage/, access.log, registry.log.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Where the registry keeps repositories and blobs.
    pub fn storage_dir(&self) -> PathBuf {
        self.scratch.path().join("storage")
    }

    /// The registry's own log (startup, errors), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.scratch.path().join("registry.log")).unwrap_or_default()
    }

    /// skopeo options for reading from this registry: `--src-…`.
    pub fn skopeo_src_args(&self) -> Vec<String> {
        self.prefixed_args("--src-")
    }

    /// skopeo options for writing to this registry: `--dest-…`.
    pub fn skopeo_dest_args(&self) -> Vec<String> {
        self.prefixed_args("--dest-")
    }

    /// Options for podman pull/push/login and skopeo inspect/delete:
    /// `--tls-verify=false`, or `--cert-dir` and `--creds`.
    pub fn client_args(&self) -> Vec<String> {
        self.prefixed_args("--")
    }

    fn prefixed_args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        if self.tls {
            args.push(format!("{prefix}cert-dir={}", self.cert_dir().display()));
        } else {
            args.push(format!("{prefix}tls-verify=false"));
        }
        if let Some((u, p)) = self.creds() {
            args.push(format!("{prefix}creds={u}:{p}"));
        }
        args
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start again after `stop()`: same port, storage, certificate and users.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the registry is running already");
        // The port was ours a moment ago; only a stranger binding it in
        // between makes this fail, and then the test cannot go on.
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return,
                Err(Spawn::PortTaken) => std::thread::sleep(Duration::from_millis(100)),
                Err(Spawn::Failed(why)) => panic!("docker-registry restart: {why}"),
            }
        }
        panic!("docker-registry restart: port {} stays taken", self.port);
    }

    /// SIGTERM, then SIGKILL if it is still there after 10 s; always reaped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let exited = wait_until(Duration::from_secs(10), || {
            child.try_wait().is_ok_and(|s| s.is_some())
        });
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Every request the registry answered so far (the fixture's own probes
    /// left out), oldest first. It first sends a probe and waits for its log
    /// line, so a request a client finished before this call is in the list.
    pub fn requests(&self) -> Vec<Request> {
        let log = self.scratch.path().join("access.log");
        if self.child.is_some() {
            let n = self.probes.fetch_add(1, Ordering::Relaxed);
            let mark = format!("{PROBE}sync-{n}");
            let resp = self.curl("GET", &format!("/v2/?{mark}"), &[], false);
            assert!(
                resp.status != 0,
                "registry at {} is not answering",
                self.addr()
            );
            let seen = wait_until(Duration::from_secs(10), || {
                fs::read_to_string(&log).is_ok_and(|s| s.contains(&mark))
            });
            assert!(seen, "registry access log never showed {mark}");
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(parse_access_line)
            .filter(|r| !r.path.contains(PROBE))
            .collect()
    }

    /// GET `path` (e.g. "/v2/img/manifests/v1") with the registry's
    /// credentials and CA, `accept` as Accept headers.
    pub fn get(&self, path: &str, accept: &[&str]) -> Response {
        self.curl("GET", path, accept, true)
    }

    /// HEAD `path` with the registry's credentials and CA. Name the media
    /// types: the registry answers 404 for an OCI manifest not accepted.
    pub fn head(&self, path: &str, accept: &[&str]) -> Response {
        self.curl("HEAD", path, accept, true)
    }

    /// DELETE `path` with the registry's credentials and CA (deletes are
    /// enabled): `/v2/REPO/blobs/DIGEST` leaves a manifest whose blob is
    /// missing, `/v2/REPO/manifests/DIGEST` removes an image.
    pub fn delete(&self, path: &str) -> Response {
        self.curl("DELETE", path, &[], true)
    }

    /// GET `path` without credentials (a registry with auth answers 401).
    pub fn get_without_creds(&self, path: &str) -> Response {
        self.curl("GET", path, &[], false)
    }

    /// PUT `body` as `content_type` at `path` with the registry's
    /// credentials and CA: e.g. a manifest that skopeo would not send.
    pub fn put(&self, path: &str, content_type: &str, body: &[u8]) -> Response {
        let file = self.scratch.path().join("put-body");
        fs::write(&file, body).expect("write the PUT body");
        let mut cmd = self.curl_cmd("PUT", path, &[], true);
        cmd.args(["-H", &format!("Content-Type: {content_type}")])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()));
        parse_http_response(&cmd.output().expect("curl runs").stdout)
    }

    /// One request by curl; status 0 when nothing answered.
    fn curl(&self, method: &str, path: &str, accept: &[&str], creds: bool) -> Response {
        let out = self
            .curl_cmd(method, path, accept, creds)
            .output()
            .expect("curl runs");
        parse_http_response(&out.stdout)
    }

    fn curl_cmd(&self, method: &str, path: &str, accept: &[&str], creds: bool) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-D", "-", "--max-time", "30", "-X", method]);
        if method == "HEAD" {
            cmd.arg("-I");
        }
        if self.tls {
            cmd.arg("--cacert").arg(self.ca_cert_path());
        }
        if creds && let Some((u, p)) = self.creds() {
            cmd.args(["-u", &format!("{u}:{p}")]);
        }
        for a in accept {
            cmd.args(["-H", &format!("Accept: {a}")]);
        }
        cmd.arg(format!("{}{path}", self.url()));
        cmd
    }

    /// The registry's config.yml. A fixed secret keeps upload sessions
    /// valid across `stop()`/`start()`, and upload purging is off so a
    /// half-done upload stays for a test to resume. Foreign layers' urls
    /// are allowed (the registry refuses any by default), as registries
    /// that hold Windows images allow them.
    fn config(&self) -> String {
        let dir = self.scratch.path().display();
        let port = self.port;
        let mut yml = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {dir}/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
validation:
  manifests:
    urls:
      allow:
        - ^https?://
http:
  addr: 127.0.0.1:{port}
  secret: unionmount-test-fixture
"#
        );
        if self.tls {
            yml += &format!(
                "  tls:\n    certificate: {dir}/certs/server.crt\n    key: {dir}/certs/server.key\n"
            );
        }
        if let Some(t) = &self.token {
            yml += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm(),
                token::SERVICE,
                token::ISSUER,
                t.cert_path().display()
            );
        } else if self.creds.is_some() {
            yml += &format!(
                "auth:\n  htpasswd:\n    realm: unionmount-test\n    path: {dir}/htpasswd\n"
            );
        }
        yml
    }

    /// Start the process and wait until it answers `GET /v2/`.
    fn spawn(&mut self) -> Result<(), Spawn> {
        let dir = self.scratch.path().to_path_buf();
        let config = dir.join("config.yml");
        fs::write(&config, self.config()).expect("write registry config");
        // The access log goes to stdout, the rest to stderr; append, so a
        // restart keeps what the first run logged.
        let access = append_file(&dir.join("access.log"));
        let errlog_path = dir.join("registry.log");
        let log_len = fs::metadata(&errlog_path).map_or(0, |m| m.len());
        let errlog = append_file(&errlog_path);
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(access)
            .stderr(errlog);
        // Gone with the test thread that started it, should the test process
        // be killed before Drop runs.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Spawn::Failed(format!("cannot start: {e}")))?;
        let new_log = || {
            let all = fs::read(&errlog_path).unwrap_or_default();
            String::from_utf8_lossy(&all[log_len as usize..]).into_owned()
        };
        // It logs "listening on" once it holds the port: before that, an
        // answer could come from whoever else holds it.
        let listening = format!("listening on {}", self.addr());
        let mut exited = None;
        let up = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            new_log().contains(&listening)
                && self
                    .curl("GET", &format!("/v2/?{PROBE}ready"), &[], false)
                    .status
                    != 0
        });
        if let Some(status) = exited {
            let log = new_log();
            if log.contains("address already in use") {
                return Err(Spawn::PortTaken);
            }
            return Err(Spawn::Failed(format!("exited with {status}: {log}")));
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Spawn::Failed(format!(
                "not answering on {} after 30 s: {}",
                self.addr(),
                new_log()
            )));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Spawn {
    PortTaken,
    Failed(String),
}

fn append_file(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A port nothing listens on right now (bound to 0, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost:
/// `server.crt`/`server.key` for the registry, `trust/ca.crt` for clients.
fn write_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "unionmount test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("self-signed CA");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = leaf.signed_by(&key, &ca).expect("server certificate");
    fs::create_dir_all(dir.join("trust")).expect("mkdir certs/trust");
    fs::write(dir.join("trust/ca.crt"), ca.as_ref().pem()).expect("write ca.crt");
    fs::write(dir.join("server.crt"), cert.pem()).expect("write server.crt");
    fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
}

/// An htpasswd file with one bcrypt entry (the registry takes no other hash).
fn write_htpasswd(p: &Path, user: &str, pass: &str) {
    // The lowest cost: the registry checks it on every request.
    let hash = bcrypt::hash(pass, 4).expect("bcrypt");
    fs::write(p, format!("{user}:{hash}\n")).expect("write htpasswd");
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"` (combined log).
fn parse_access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once(" \"")?;
    let (req, rest) = rest.split_once("\" ")?;
    let mut words = req.split(' ');
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(Request {
        method,
        path,
        status,
    })
}

/// curl's `-D -` output: the head, a blank line, the body.
fn parse_http_response(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(end) = split else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// One plain-HTTP request by hand (std::net), with `Connection: close`, read
/// until the server closes: what arrived, even when the server hung up
/// early (the body is then shorter than its Content-Length says).
pub fn http_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req += &format!("{n}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    // A reset after a cut is how some tests end: keep what came before it.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse_http_response(&raw)
}
