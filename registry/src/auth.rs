//! Registry credentials in the files podman and Docker keep them in, so a
//! `podman login` or `docker login` is enough:
//!
//! - podman: `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`
//!   (root without `XDG_RUNTIME_DIR`: `/run/containers/0/auth.json`);
//! - Docker: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! Both are `{"auths": {"REGISTRY": {"auth": base64("user:pass")}}}` with
//! other fields we keep as they are. Lookups try podman's file first, as
//! podman does. `store` writes podman's file (Docker's when there is none),
//! through a temporary file and a rename, mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::reference::DOCKER_HUB;

/// Docker keeps Docker Hub's entry under its old v1 address.
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// A credential file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("credentials {path}: {reason}")]
pub struct AuthError {
    pub path: String,
    pub reason: String,
}

fn fail(path: &Path, reason: impl ToString) -> AuthError {
    AuthError {
        path: path.display().to_string(),
        reason: reason.to_string().replace('\n', " "),
    }
}

/// The credential files in the order they are consulted.
#[derive(Clone, Debug)]
pub struct AuthFiles {
    pub podman: Option<PathBuf>,
    pub docker: Option<PathBuf>,
}

impl AuthFiles {
    /// The files named by the environment, as podman and Docker find them.
    pub fn from_env() -> AuthFiles {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let podman = var("REGISTRY_AUTH_FILE").or_else(|| {
            var("XDG_RUNTIME_DIR")
                .map(|d| d.join("containers/auth.json"))
                .or_else(|| {
                    rustix::process::geteuid()
                        .is_root()
                        .then(|| PathBuf::from("/run/containers/0/auth.json"))
                })
        });
        let docker = var("DOCKER_CONFIG")
            .map(|d| d.join("config.json"))
            .or_else(|| var("HOME").map(|h| h.join(".docker/config.json")));
        AuthFiles { podman, docker }
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.podman.iter().chain(self.docker.iter())
    }

    /// The user name and password for `registry`, from the first file that
    /// has an entry for it.
    pub fn lookup(&self, registry: &str) -> Result<Option<(String, String)>, AuthError> {
        for path in self.all() {
            let Some(doc) = read(path)? else { continue };
            if let Some(entry) = find_entry(&doc, registry) {
                return decode(entry).map(Some).map_err(|r| fail(path, r));
            }
        }
        Ok(None)
    }

    /// Record a credential for `registry`.
    pub fn store(&self, registry: &str, user: &str, pass: &str) -> Result<PathBuf, AuthError> {
        let path = self
            .all()
            .next()
            .ok_or_else(|| {
                fail(
                    Path::new("auth.json"),
                    "no HOME, XDG_RUNTIME_DIR or REGISTRY_AUTH_FILE",
                )
            })?
            .clone();
        let mut doc = read(&path)?.unwrap_or_else(|| Value::Object(Map::new()));
        let auths = auths_mut(&mut doc).ok_or_else(|| fail(&path, "\"auths\" is not an object"))?;
        // Replace every spelling of this registry's key with the canonical one.
        auths.retain(|k, _| !key_matches(k, registry));
        let token = STANDARD.encode(format!("{user}:{pass}"));
        auths.insert(key_for(registry), serde_json::json!({ "auth": token }));
        write(&path, &doc)?;
        Ok(path)
    }

    /// Forget `registry` in every file; true if an entry was removed.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthError> {
        let mut removed = false;
        for path in self.all() {
            let Some(mut doc) = read(path)? else { continue };
            let Some(auths) = auths_mut(&mut doc) else {
                continue;
            };
            let before = auths.len();
            auths.retain(|k, _| !key_matches(k, registry));
            if auths.len() != before {
                write(path, &doc)?;
                removed = true;
            }
        }
        Ok(removed)
    }
}

/// `lookup` in the files the environment names.
pub fn lookup(registry: &str) -> Result<Option<(String, String)>, AuthError> {
    AuthFiles::from_env().lookup(registry)
}

/// `store` in the files the environment names.
pub fn store(registry: &str, user: &str, pass: &str) -> Result<PathBuf, AuthError> {
    AuthFiles::from_env().store(registry, user, pass)
}

/// `remove` from the files the environment names.
pub fn remove(registry: &str) -> Result<bool, AuthError> {
    AuthFiles::from_env().remove(registry)
}

fn key_for(registry: &str) -> String {
    if registry == DOCKER_HUB {
        HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// Keys may carry a scheme and a path (`https://reg:5000/v2/`); Docker Hub
/// has several names.
fn key_matches(key: &str, registry: &str) -> bool {
    let host = key
        .split_once("://")
        .map_or(key, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || hub(host) && hub(registry)
}

fn find_entry<'a>(doc: &'a Value, registry: &str) -> Option<&'a Value> {
    let auths = doc.get("auths")?.as_object()?;
    // An exact key first, then any spelling of the same host.
    auths.get(registry).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| key_matches(k, registry))
            .map(|(_, v)| v)
    })
}

fn decode(entry: &Value) -> Result<(String, String), String> {
    let b64 = entry
        .get("auth")
        .and_then(Value::as_str)
        .ok_or("entry has no \"auth\" field")?;
    let raw = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("\"auth\" is not base64: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| "\"auth\" is not UTF-8")?;
    let (u, p) = text
        .split_once(':')
        .ok_or("\"auth\" is not user:password")?;
    Ok((u.to_string(), p.to_string()))
}

fn auths_mut(doc: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = doc.as_object_mut()?;
    obj.entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

fn read(path: &Path) -> Result<Option<Value>, AuthError> {
    match fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| fail(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(path, e)),
    }
}

/// Replace `path` whole: a temporary file beside it (0600), then a rename.
fn write(path: &Path, doc: &Value) -> Result<(), AuthError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(dir, e))?;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("auth.json");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(doc).map_err(|e| fail(path, e))?;
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn files(dir: &Path) -> AuthFiles {
        AuthFiles {
            podman: Some(dir.join("run/containers/auth.json")),
            docker: Some(dir.join("home/.docker/config.json")),
        }
    }

    #[test]
    fn store_lookup_remove_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let f = files(t.path());
        assert_eq!(f.lookup("reg:5000").unwrap(), None);
        let p = f.store("reg:5000", "u", "p:w").unwrap();
        assert_eq!(p, f.podman.clone().unwrap());
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            f.lookup("reg:5000").unwrap(),
            Some(("u".into(), "p:w".into()))
        );
        let doc: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(doc["auths"]["reg:5000"]["auth"], STANDARD.encode("u:p:w"));
        assert!(f.remove("reg:5000").unwrap());
        assert_eq!(f.lookup("reg:5000").unwrap(), None);
        assert!(!f.remove("reg:5000").unwrap());
    }

    #[test]
    fn docker_file_and_key_spellings_are_read() {
        let t = tempfile::tempdir().unwrap();
        let f = files(t.path());
        let d = f.docker.clone().unwrap();
        fs::create_dir_all(d.parent().unwrap()).unwrap();
        let doc = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": STANDARD.encode("hub:pw")},
                "https://reg.example:443/v2/": {"auth": STANDARD.encode("r:s")},
            },
            "credsStore": "kept",
        });
        fs::write(&d, doc.to_string()).unwrap();
        assert_eq!(
            f.lookup("docker.io").unwrap(),
            Some(("hub".into(), "pw".into()))
        );
        assert_eq!(
            f.lookup("reg.example:443").unwrap(),
            Some(("r".into(), "s".into()))
        );
        // podman's file wins over Docker's.
        f.store("docker.io", "pod", "man").unwrap();
        assert_eq!(
            f.lookup("docker.io").unwrap(),
            Some(("pod".into(), "man".into()))
        );
        // remove clears both, and keeps the fields it does not know.
        assert!(f.remove("docker.io").unwrap());
        assert_eq!(f.lookup("docker.io").unwrap(), None);
        let kept: Value = serde_json::from_slice(&fs::read(&d).unwrap()).unwrap();
        assert_eq!(kept["credsStore"], "kept");
    }

    #[test]
    fn broken_files_are_one_line_errors() {
        let t = tempfile::tempdir().unwrap();
        let f = files(t.path());
        let p = f.podman.clone().unwrap();
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "{not json").unwrap();
        let e = f.lookup("x").unwrap_err().to_string();
        assert!(e.contains("auth.json") && !e.contains('\n'), "{e}");
        fs::write(&p, r#"{"auths":{"x":{"auth":"%%%"}}}"#).unwrap();
        assert!(f.lookup("x").unwrap_err().to_string().contains("base64"));
    }
}
