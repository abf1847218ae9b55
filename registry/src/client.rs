//! Connecting to a registry: the oci-client `Client` (TLS, plain HTTP) and
//! its credentials. Shared by pull and push.
//!
//! TLS is verified by default. A registry is *insecure* when the command
//! says `--tls-verify=false` or when it is on loopback (`localhost`,
//! 127.0.0.0/8, `::1`), which Docker trusts the same way. For an insecure
//! registry we do what Docker does for its insecure registries: HTTPS
//! without verifying the certificate first, and plain HTTP if HTTPS cannot
//! be spoken at all (connection or handshake failure, not an HTTP answer).

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use crate::auth::AuthFiles;
use crate::reference::Reference;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `Some(false)`: `--tls-verify=false`. `None`: verify, except on loopback.
    pub tls_verify: Option<bool>,
    /// Where credentials are looked up (`None`: as podman and Docker do).
    pub auth_files: Option<AuthFiles>,
}

/// One way of speaking to a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with the certificate checked.
    Https,
    /// HTTPS with any certificate (insecure registries only).
    HttpsUnverified,
    /// Plain HTTP (insecure registries only).
    Http,
}

impl Options {
    /// The registry may be reached without a verified certificate.
    pub fn insecure(&self, r: &Reference) -> bool {
        self.tls_verify == Some(false) || self.tls_verify.is_none() && r.is_loopback()
    }

    /// The transports to try, in order.
    pub fn transports(&self, r: &Reference) -> Vec<Transport> {
        if self.insecure(r) {
            vec![Transport::HttpsUnverified, Transport::Http]
        } else {
            vec![Transport::Https]
        }
    }

    /// The credentials for `r`'s registry, if any file has them.
    pub fn credentials(&self, r: &Reference) -> Result<RegistryAuth, String> {
        let files = self.auth_files.clone().unwrap_or_else(AuthFiles::from_env);
        match files.lookup(&r.registry).map_err(|e| e.to_string())? {
            Some((u, p)) => Ok(RegistryAuth::Basic(u, p)),
            None => Ok(RegistryAuth::Anonymous),
        }
    }
}

/// A client for `registry` over `t`.
pub fn build(registry: &str, t: Transport) -> Client {
    let cfg = ClientConfig {
        protocol: match t {
            Transport::Http => ClientProtocol::HttpsExcept(vec![registry.to_string()]),
            _ => ClientProtocol::Https,
        },
        accept_invalid_certificates: t == Transport::HttpsUnverified,
        // We pick from indexes ourselves (see `platform`).
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        user_agent: concat!("unionmount/", env!("CARGO_PKG_VERSION")),
        // One streamed PUT a blob: chunked uploads cost a round trip (and
        // a registry-side append) every 4 MiB.
        use_monolithic_push: true,
        ..Default::default()
    };
    Client::new(cfg)
}

/// A client that has reached the registry and authenticated (if asked).
pub struct Session {
    pub client: Client,
    pub transport: Transport,
    pub auth: RegistryAuth,
    pub reference: oci_client::Reference,
}

/// Reach `r`'s registry: try each transport, keep the first that answers
/// `/v2/`, and authenticate for `op` with the stored credentials.
pub async fn connect(
    r: &Reference,
    op: RegistryOperation,
    opts: &Options,
) -> Result<Session, String> {
    connect_as(r, op, opts, opts.credentials(r)?).await
}

/// `connect` with the given credentials.
pub async fn connect_as(
    r: &Reference,
    op: RegistryOperation,
    opts: &Options,
    auth: RegistryAuth,
) -> Result<Session, String> {
    let reference = r.to_oci();
    let mut errors = Vec::new();
    for t in opts.transports(r) {
        let client = build(&r.registry, t);
        match client.auth(&reference, &auth, op).await {
            Ok(_) => {
                return Ok(Session {
                    client,
                    transport: t,
                    auth,
                    reference,
                });
            }
            // An HTTP answer (bad credentials): another transport won't help.
            Err(e @ oci_client::errors::OciDistributionError::AuthenticationFailure(_)) => {
                return Err(format!(
                    "registry {}: authentication failed: {}",
                    r.registry,
                    one_line(&auth_reason(&e))
                ));
            }
            Err(e) => errors.push(format!("{}: {}", scheme(t), error_chain(&e))),
        }
    }
    Err(format!(
        "registry {}: cannot connect: {}",
        r.registry,
        errors.join("; ")
    ))
}

fn scheme(t: Transport) -> &'static str {
    match t {
        Transport::Http => "http",
        _ => "https",
    }
}

fn auth_reason(e: &oci_client::errors::OciDistributionError) -> String {
    match e {
        oci_client::errors::OciDistributionError::AuthenticationFailure(s)
            if !s.trim().is_empty() =>
        {
            s.clone()
        }
        _ => "refused".to_string(),
    }
}

/// An error and its sources on one line (reqwest hides the useful part,
/// "connection refused", in the source chain).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    one_line(&out)
}

/// Text fit for one line of an error message.
pub fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    if s.chars().count() > 500 {
        out.push('…');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn tls_is_verified_except_loopback_or_when_asked() {
        let d = Options::default();
        assert_eq!(d.transports(&r("docker.io/alpine")), [Transport::Https]);
        assert_eq!(d.transports(&r("reg.example:5000/a")), [Transport::Https]);
        for lo in [
            "127.0.0.1:5000/a",
            "localhost/a",
            "127.9.9.9/a",
            "[::1]:1/a",
        ] {
            assert_eq!(
                d.transports(&r(lo)),
                [Transport::HttpsUnverified, Transport::Http],
                "{lo}"
            );
        }
        let off = Options {
            tls_verify: Some(false),
            ..Default::default()
        };
        assert!(off.insecure(&r("reg.example/a")));
        let on = Options {
            tls_verify: Some(true),
            ..Default::default()
        };
        assert_eq!(on.transports(&r("127.0.0.1:5000/a")), [Transport::Https]);
    }

    #[test]
    fn credentials_come_from_the_auth_files() {
        let t = tempfile::tempdir().unwrap();
        let files = AuthFiles {
            podman: Some(t.path().join("auth.json")),
            docker: None,
        };
        let opts = Options {
            auth_files: Some(files.clone()),
            ..Default::default()
        };
        assert!(matches!(
            opts.credentials(&r("reg.example/a")).unwrap(),
            RegistryAuth::Anonymous
        ));
        files.store("reg.example", "u", "p").unwrap();
        match opts.credentials(&r("reg.example/a")).unwrap() {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("u", "p")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_one_line() {
        // A port nobody listens on: both transports fail, one line says why.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect(
            &r(&format!("127.0.0.1:{port}/x")),
            RegistryOperation::Pull,
            &Options::default(),
        )
        .await
        .err()
        .unwrap();
        assert!(
            e.contains("cannot connect") && e.contains("http:") && !e.contains('\n'),
            "{e}"
        );
    }
}
