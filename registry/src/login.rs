//! `login` and `logout`: a credential is checked against the registry
//! before it is written to podman's (or Docker's) file, and removed from
//! both.

use std::path::PathBuf;

use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;

use crate::auth::AuthFiles;
use crate::client::{self, Options};
use crate::pull::manifest::describe;
use crate::reference::{DOCKER_HUB, Reference};

/// A repository nobody has: asking for its manifest with the credential
/// gives 401 when the credential is wrong, "unknown" when it is right.
const PROBE_REPO: &str = "unionmount/login-check";

/// `docker.io`, `https://reg:5000/v2/`, `index.docker.io` → the registry
/// host as the credential files key it.
pub fn registry_name(s: &str) -> Result<String, String> {
    let host = s
        .split_once("://")
        .map_or(s, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    // The same host rules as a reference's.
    Reference::parse(&format!("{host}/{PROBE_REPO}"))
        .ok()
        .filter(|r| r.registry == host)
        .map(|r| r.registry)
        .ok_or_else(|| format!("registry {s:?}: not a registry host[:port]"))
}

/// Check `user`/`pass` with the registry, then store them; returns the file.
pub fn login(registry: &str, user: &str, pass: &str, opts: &Options) -> Result<PathBuf, String> {
    let host = registry_name(registry)?;
    if user.is_empty() || user.contains(':') {
        return Err(format!(
            "login {host}: the user name must be non-empty, without ':'"
        ));
    }
    let r = Reference::parse(&format!("{host}/{PROBE_REPO}")).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("login: cannot start the network runtime: {e}"))?;
    rt.block_on(async {
        let auth = RegistryAuth::Basic(user.to_string(), pass.to_string());
        let s = client::connect_as(&r, RegistryOperation::Pull, opts, auth).await?;
        match s
            .client
            .pull_manifest_raw(&s.reference, &s.auth, &[layerstore::image::OCI_MANIFEST])
            .await
        {
            Err(e) if describe(&e).starts_with("unauthorized") => Err(format!(
                "login {host}: the registry refused user {user:?} (wrong user name or password)"
            )),
            _ => Ok(()),
        }
    })?;
    files(opts)
        .store(&host, user, pass)
        .map_err(|e| e.to_string())
}

/// Forget the credential for `registry`; false if there was none.
pub fn logout(registry: &str, opts: &Options) -> Result<bool, String> {
    let host = registry_name(registry)?;
    files(opts).remove(&host).map_err(|e| e.to_string())
}

fn files(opts: &Options) -> AuthFiles {
    opts.auth_files.clone().unwrap_or_else(AuthFiles::from_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_as_the_files_key_them() {
        assert_eq!(registry_name("docker.io").unwrap(), "docker.io");
        assert_eq!(
            registry_name("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(registry_name("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            registry_name("https://reg.example:443/v2/").unwrap(),
            "reg.example:443"
        );
        assert_eq!(registry_name("localhost").unwrap(), "localhost");
        for bad in ["", "bad host", "x:y"] {
            assert!(registry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_with_a_colon_is_refused_before_any_request() {
        let e = login("127.0.0.1:1", "a:b", "p", &Options::default()).unwrap_err();
        assert!(e.contains("user name"), "{e}");
    }
}
