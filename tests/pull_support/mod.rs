//! The loopback registry of tests/registry_pull.rs and its helpers: a
//! docker-registry started at a free port (plain, or TLS with htpasswd),
//! stopped by pid; a proxy that cuts connections or hides Range headers;
//! the store-side checks the tests share. Kept beside that one test file
//! (not in tests/support/) until the shared registry fixtures exist.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use layerstore::serde_json::{self, Value};

use crate::support;
use crate::support::store::*;

/// A docker-registry on 127.0.0.1 at a free port, with its storage and log
/// in a directory of the test; stopped by pid when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, "", "")
    }

    /// With TLS (a self-signed certificate for 127.0.0.1) and htpasswd Basic
    /// auth: user `tester`, password `secret`.
    pub fn start_tls_auth(dir: &Path) -> Registry {
        sh(&format!(
            "cd {} && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
             -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null",
            dir.display()
        ));
        // bcrypt of "secret" (cost 4): docker-registry reads only bcrypt.
        fs::write(
            dir.join("htpasswd"),
            "tester:$2b$04$sEj7glkDuU04c5oXxotG4.ZLiI1ZwH5AUI7cUKT2J6i88jrYHBLfq\n",
        )
        .unwrap();
        let d = dir.display();
        Registry::start_with(
            dir,
            &format!("auth:\n  htpasswd:\n    realm: test\n    path: {d}/htpasswd\n"),
            &format!("  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n"),
        )
    }

    pub fn start_with(dir: &Path, top: &str, http: &str) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = dir.join("registry-data");
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{top}http:\n  addr: 127.0.0.1:{port}\n{http}",
                data.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry {
            child,
            port,
            data,
            log,
        };
        let up = support::wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "docker-registry did not listen: {}", reg.log_text());
        reg
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Access-log lines (one per request).
    pub fn requests(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("\"GET /v2") || l.contains("\"HEAD /v2"))
            // Ours only, not skopeo's pushes.
            .filter(|l| l.contains("unionmount/"))
            .map(str::to_string)
            .collect()
    }

    /// Where the registry keeps blob `hex`.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// PUT an OCI manifest as `repo:tag` (what skopeo would refuse to send).
    pub fn put_manifest(&self, repo_tag: &str, body: &[u8]) {
        use std::io::{Read, Write};
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!(
            "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr(),
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }

    /// skopeo pushes `src` (a skopeo source) as `repo:tag`, digests as they are.
    pub fn push(&self, src: &str, repo_tag: &str, all: bool) {
        let mut c = Command::new("skopeo");
        c.args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if all {
            c.arg("--all");
        }
        c.arg(src)
            .arg(format!("docker://{}/{repo_tag}", self.addr()));
        run(&mut c);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ready(test: &str) -> bool {
    need_root(test) && need_tools(test, &["umoci", "skopeo", "docker-registry"])
}

/// `image ls --format json` entry named `name`.
pub fn listed(env: &Env, name: &str) -> Value {
    let v: Value = serde_json::from_str(&env.um(&["image", "ls", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .clone()
}

/// Mount the image with unionmount and compare with `want`.
pub fn assert_mounted_tree(env: &Env, image: &str, want: &Path, name: &str) {
    let mnt = env.path().join(format!("mnt-{name}"));
    fs::create_dir_all(&mnt).unwrap();
    env.um(&["image", "mount", image, &mnt.display().to_string()]);
    let _m = UnionMount(mnt.clone());
    assert_same_tree(&mnt, want);
}

/// A unionmount mount, unmounted on drop.
pub struct UnionMount(pub PathBuf);

impl Drop for UnionMount {
    fn drop(&mut self) {
        let ok = Command::new(bin())
            .arg("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            unmount(&self.0);
        }
    }
}

/// The layer blobs of manifest `tag` in OCI layout `oci`.
pub fn layout_manifest(oci: &Path, tag: &str) -> Value {
    let idx: Value = serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let d = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m: Value =
        serde_json::from_slice(&fs::read(oci.join("blobs/sha256").join(&d[7..])).unwrap()).unwrap();
    serde_json::json!({"digest": d, "manifest": m})
}

pub fn partial_files(env: &Env) -> Vec<String> {
    fs::read_dir(env.store().join("partial"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP proxy in front of the registry that cuts a connection once it
/// has passed `cut_after` bytes to the client, `cuts` times in all (then
/// it forwards whole).
pub struct CuttingProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    /// With `strip_range`, requests lose their Range header (renamed), as
    /// a registry or proxy without Range support would ignore it.
    pub fn start(upstream: u16, cut_after: u64, cuts: usize, strip_range: bool) -> CuttingProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicUsize::new(cuts));
        let st = stop.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = (&c2).read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if strip_range {
                            rename_range_header(&mut buf[..n]);
                        }
                        if (&s2).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let left = left.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16384];
                    let mut sent = 0u64;
                    loop {
                        let n = match (&server).read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if (&client).write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        if sent > cut_after
                            && left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| {
                                    x.checked_sub(1)
                                })
                                .is_ok()
                        {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, stop }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `\r\nRange:` → `\r\nX-nop:` (same length) in a request's bytes.
pub fn rename_range_header(b: &mut [u8]) {
    let pat = b"\r\nrange:";
    for i in 0..b.len().saturating_sub(pat.len() - 1) {
        if b[i..i + pat.len()].eq_ignore_ascii_case(pat) {
            b[i + 2..i + pat.len()].copy_from_slice(b"x-nop:");
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
