//! `TokenServer`: the Bearer token service a registry with `auth: token:`
//! sends its clients to (the Docker token protocol). A client that gets 401
//! with `WWW-Authenticate: Bearer realm=…` asks `GET REALM?service=…&scope=…`
//! here, with Basic credentials; it gets a JWT (ES256) granting the scopes
//! it asked for when the credentials are right, one granting nothing when
//! it sent none (as Docker Hub answers anonymous clients), and 401 when
//! they are wrong. The JWT carries its signing certificate in `x5c`; the
//! registry trusts it because that certificate is its `rootcertbundle`.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The `service` and `issuer` the registry is configured with.
pub const SERVICE: &str = "unionmount-test-registry";
pub const ISSUER: &str = "unionmount-test-token-server";

/// What signs the tokens: the key, and its self-signed certificate (DER,
/// base64) for the `x5c` header.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    x5c: String,
}

/// A token server on 127.0.0.1 at a free port, for one user; stops on Drop.
pub struct TokenServer {
    addr: String,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Make a signing key and its certificate (written to `dir/token.crt`,
    /// the registry's `rootcertbundle`) and start serving.
    pub fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate().expect("token key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("token cert params")
            .self_signed(&key)
            .expect("token certificate");
        let cert_path = dir.join("token.crt");
        std::fs::write(&cert_path, cert.pem()).expect("write token.crt");
        let signer = Arc::new(Signer {
            key: jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
            x5c: STANDARD.encode(cert.der()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let addr = listener.local_addr().expect("address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
        let accept = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (signer, basic) = (signer.clone(), basic.clone());
                    // A client hanging up early has nothing to tell the test.
                    std::thread::spawn(move || {
                        let _ = serve(conn, &signer, &basic);
                    });
                }
            })
        };
        TokenServer {
            addr,
            cert: cert_path,
            stop,
            accept: Some(accept),
        }
    }

    /// "http://127.0.0.1:PORT/token": the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry trusts tokens by.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One request: read its head, answer with a token or 401, close.
fn serve(conn: TcpStream, signer: &Signer, basic: &str) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_string());
        }
    }
    let target = first.split(' ').nth(1).unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let (status, body) = match auth.as_deref() {
        Some(a) if a != basic => (401, json!({"errors": [{"code": "UNAUTHORIZED"}]})),
        given => {
            let access = if given.is_some() {
                scopes(query)
            } else {
                vec![]
            };
            let token = sign(signer, &access);
            (
                200,
                json!({"token": token, "access_token": token, "expires_in": 300}),
            )
        }
    };
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The `scope=TYPE:NAME:ACTIONS` parameters (each may hold several, by
/// spaces), as `access` claims.
fn scopes(query: &str) -> Vec<Value> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').collect();
            Some(json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect()
}

/// A JWT for the registry: our issuer, its service, `access`, 5 minutes.
fn sign(signer: &Signer, access: &[Value]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({
        "iss": ISSUER,
        "sub": "tester",
        "aud": SERVICE,
        "iat": now,
        "nbf": now - 10,
        "exp": now + 300,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![signer.x5c.clone()]);
    jsonwebtoken::encode(&header, &claims, &signer.key).expect("sign a token")
}
