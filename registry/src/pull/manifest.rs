//! Manifests and indexes from the registry, and the platform choice.

use layerstore::Digest;
use layerstore::image::{
    self, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, Index, Manifest, OCI_INDEX, OCI_MANIFEST,
};
use serde_json::Value;

use super::Ctx;
use crate::client::error_chain;
use crate::reference::Reference;

const ACCEPT: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `--platform`, or this machine.
    pub fn parse_or_host(s: Option<&str>) -> Result<Platform, String> {
        let Some(s) = s else {
            return Ok(Platform {
                os: "linux".into(),
                arch: image::host_arch().into(),
                variant: None,
            });
        };
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                arch: arch.into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.into(),
                arch: arch.into(),
                variant: Some(v.into()),
            }),
            _ => Err(format!(
                "--platform {s:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"
            )),
        }
    }

    fn of(v: &Value) -> Option<Platform> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Platform {
            os: s("os")?,
            arch: s("architecture")?,
            variant: s("variant").filter(|v| !v.is_empty()),
        })
    }

    /// `self` (what is asked) is served by `other` (an index entry): no
    /// variant asked takes any; arm64 `v8` is arm64.
    fn served_by(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.arch.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == other.os
            && self.arch == other.arch
            && (self.variant.is_none() || norm(self) == norm(other))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The image manifest a reference leads to.
pub struct Resolved {
    /// As the registry sent it (the store keeps it byte for byte).
    pub bytes: Vec<u8>,
    pub desc: Descriptor,
    pub manifest: Manifest,
    /// What the tag (or digest) points to: the index for a multi-platform image.
    pub repo_digest: Digest,
}

/// Fetch what `r` names; from an index, the manifest for `want`.
pub fn resolve(ctx: &Ctx, r: &Reference, want: &Platform) -> Result<Resolved, String> {
    let (bytes, digest) = fetch(ctx, &r.to_oci(), &r.to_string())?;
    if let Some(d) = &r.digest
        && &digest.to_string() != d
    {
        return Err(format!(
            "manifest {r}: digest mismatch: content is {digest}; refused"
        ));
    }
    let kind = media_type(&bytes, &format!("manifest {r}"))?;
    if !image::is_index(&kind) {
        return manifest(bytes, kind, digest.clone(), digest);
    }
    let what = format!("image index {r}");
    let idx: Index = image::parse_json(&bytes, &what).map_err(|e| e.to_string())?;
    let entry = pick(&idx, want, &what)?;
    let oref = oci_client::Reference::with_digest(
        r.registry.clone(),
        r.repository.clone(),
        entry.digest.to_string(),
    );
    let (mbytes, md) = fetch(ctx, &oref, &format!("manifest {}", entry.digest))?;
    if md != entry.digest {
        return Err(format!(
            "manifest {}: digest mismatch: content is {md}; refused",
            entry.digest
        ));
    }
    let mkind = media_type(&mbytes, &format!("manifest {md}"))?;
    if image::is_index(&mkind) {
        return Err(format!("{what}: nested indexes are not supported"));
    }
    manifest(mbytes, mkind, md, digest)
}

fn manifest(bytes: Vec<u8>, kind: String, d: Digest, repo: Digest) -> Result<Resolved, String> {
    let what = format!("manifest {d}");
    let m: Manifest = image::parse_json(&bytes, &what).map_err(|e| e.to_string())?;
    let desc = Descriptor::new(&kind, d, bytes.len() as u64);
    Ok(Resolved {
        bytes,
        desc,
        manifest: m,
        repo_digest: repo,
    })
}

/// The manifest of `want` in an index; one line listing what it has if none.
pub fn pick<'a>(idx: &'a Index, want: &Platform, what: &str) -> Result<&'a Descriptor, String> {
    let candidates: Vec<(&Descriptor, Platform)> = idx
        .manifests
        .iter()
        .filter(|d| image::is_manifest(&d.media_type))
        .filter_map(|d| d.platform.as_ref().and_then(Platform::of).map(|p| (d, p)))
        // Attestations and signatures are "unknown/unknown".
        .filter(|(_, p)| p.os != "unknown")
        .collect();
    if let Some((d, _)) = candidates.iter().find(|(_, p)| want.served_by(p)) {
        return Ok(d);
    }
    let have: Vec<String> = candidates.iter().map(|(_, p)| p.to_string()).collect();
    Err(format!(
        "{what}: no image for platform {want}; it has {}",
        if have.is_empty() {
            "no platforms".to_string()
        } else {
            have.join(", ")
        }
    ))
}

/// A manifest's media type: its `mediaType`, else told by its shape (OCI
/// makes the field optional).
fn media_type(bytes: &[u8], what: &str) -> Result<String, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{what}: bad JSON: {e}"))?;
    if v.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Err(format!(
            "{what}: Docker schema 1 manifests are not supported (deprecated since 2017)"
        ));
    }
    let kind = match v.get("mediaType").and_then(Value::as_str) {
        Some(k) => k.to_string(),
        None if v.get("manifests").is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    };
    if !image::is_index(&kind) && !image::is_manifest(&kind) {
        return Err(format!("{what}: unsupported media type {kind:?}"));
    }
    Ok(kind)
}

/// A manifest's bytes and the digest of those bytes.
fn fetch(ctx: &Ctx, r: &oci_client::Reference, what: &str) -> Result<(Vec<u8>, Digest), String> {
    let s = &ctx.session;
    let got = ctx
        .rt
        .block_on(s.client.pull_manifest_raw(r, &s.auth, ACCEPT));
    match got {
        Ok((bytes, _)) => {
            if bytes.len() as u64 > layerstore::blobs::MAX_JSON {
                return Err(format!("{what}: larger than 16 MiB"));
            }
            let d = Digest::of_bytes(&bytes);
            Ok((bytes.to_vec(), d))
        }
        Err(e) => Err(format!("{what}: {}", describe(&e))),
    }
}

/// Registry errors in the words a user needs.
pub fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(_) => "not found in the registry".to_string(),
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            "unauthorized: no or wrong credentials (use `unionmount login` or `podman login`)"
                .to_string()
        }
        E::ServerError { code: 401, .. } => {
            "unauthorized: no or wrong credentials (use `unionmount login` or `podman login`)"
                .to_string()
        }
        E::ServerError { code: 404, .. } => "not found in the registry".to_string(),
        E::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 401) => {
            "unauthorized: no or wrong credentials (use `unionmount login` or `podman login`)"
                .to_string()
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            "not found in the registry".to_string()
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            "unauthorized: no or wrong credentials (use `unionmount login` or `podman login`)"
                .to_string()
        }
        e => error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Index {
        let d = |n: u8, p: Value| {
            let mut x = Descriptor::new(OCI_MANIFEST, Digest::of_bytes(&[n]), 1);
            x.platform = Some(p);
            x
        };
        Index {
            manifests: vec![
                d(1, json!({"os": "linux", "architecture": "amd64"})),
                d(
                    2,
                    json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
                ),
                d(
                    3,
                    json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
                ),
                d(4, json!({"os": "unknown", "architecture": "unknown"})),
            ],
            ..Default::default()
        }
    }

    fn p(s: &str) -> Platform {
        Platform::parse_or_host(Some(s)).unwrap()
    }

    #[test]
    fn platforms_are_picked() {
        let idx = index();
        let got = |s: &str| pick(&idx, &p(s), "i").map(|d| d.digest.clone());
        assert_eq!(got("linux/amd64").unwrap(), Digest::of_bytes(&[1]));
        assert_eq!(got("linux/arm64").unwrap(), Digest::of_bytes(&[2]));
        assert_eq!(got("linux/arm64/v8").unwrap(), Digest::of_bytes(&[2]));
        assert_eq!(got("linux/arm/v7").unwrap(), Digest::of_bytes(&[3]));
        let e = got("linux/s390x").unwrap_err();
        assert_eq!(
            e,
            "i: no image for platform linux/s390x; it has linux/amd64, linux/arm64/v8, linux/arm/v7"
        );
        assert!(got("linux/arm/v6").is_err());
    }

    #[test]
    fn bad_platforms_and_media_types() {
        assert!(Platform::parse_or_host(Some("linux")).is_err());
        assert!(Platform::parse_or_host(Some("linux//x")).is_err());
        assert_eq!(Platform::parse_or_host(None).unwrap().os, "linux");
        assert!(
            media_type(br#"{"schemaVersion":1}"#, "m")
                .unwrap_err()
                .contains("schema 1")
        );
        assert_eq!(media_type(br#"{"manifests":[]}"#, "m").unwrap(), OCI_INDEX);
        assert_eq!(
            media_type(
                format!(r#"{{"mediaType":"{DOCKER_MANIFEST}"}}"#).as_bytes(),
                "m"
            )
            .unwrap(),
            DOCKER_MANIFEST
        );
        assert!(media_type(br#"{"mediaType":"x/y"}"#, "m").is_err());
    }
}
