//! Image references, parsed and normalized as Docker and podman do
//! (distribution/reference's `ParseNormalizedNamed`):
//!
//! - the first `/`-separated part is a registry host when it holds `.` or
//!   `:`, is `localhost`, or has an upper-case letter; otherwise the
//!   registry is `docker.io`;
//! - `index.docker.io` is `docker.io`, and a one-part Docker Hub name is in
//!   `library/`;
//! - path components are lower case `[a-z0-9]+` joined by `.`, `_`, `__` or
//!   dashes; the whole name is at most 255 characters;
//! - a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest is
//!   `sha256:` and 64 lower-case hex digits; with neither, the tag is `latest`;
//!   with both, both are kept (the digest is what is pulled).

use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_HUB: &str = "index.docker.io";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path inside the registry (`library/alpine`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

/// Why a reference is refused (one line, naming the reference).
#[derive(Debug, thiserror::Error)]
#[error("reference {input:?}: {reason}")]
pub struct ParseError {
    pub input: String,
    pub reason: String,
}

impl Reference {
    /// Parse `s` as `docker pull` does.
    pub fn parse(s: &str) -> Result<Reference, ParseError> {
        let err = |reason: &str| ParseError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err(
                "cannot be a 64-digit hexadecimal string (that is an image id)",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(check_digest(d).map_err(|r| err(&r))?)),
            None => (s, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(t) = tag {
            check_tag(t).map_err(|r| err(&r))?;
        }
        let (registry, path) = split_domain(name);
        check_domain(&registry).map_err(|r| err(&r))?;
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository name must be lowercase"));
        }
        check_path(&path).map_err(|r| err(&r))?;
        if name.len() > NAME_MAX {
            return Err(err("repository name is longer than 255 characters"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag.map(str::to_string),
        };
        Ok(Reference {
            registry,
            repository: path,
            tag,
            digest,
        })
    }

    /// `registry/repository`, as Docker's `Name()`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker shows and accepts: no `docker.io/` and no
    /// `library/` for Docker Hub (`alpine`, `127.0.0.1:5000/img`).
    pub fn familiar_name(&self) -> String {
        if self.registry != DOCKER_HUB {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(r) if !r.contains('/') => r.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The tag the store gives a pulled image: `familiar_name:tag`, or
    /// nothing for a reference by digest only.
    pub fn store_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.familiar_name()))
    }

    /// The tag, else the digest: what the registry is asked for.
    pub fn tag_or_digest(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository with another tag (for `--all-tags`).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The host is a loopback one: `localhost`, `127.0.0.0/8` or `::1`
    /// (Docker trusts these without TLS).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    /// The reference in oci-client's form.
    pub fn to_oci(&self) -> oci_client::Reference {
        let (r, p) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => {
                oci_client::Reference::with_tag_and_digest(r, p, t.clone(), d.clone())
            }
            (_, Some(d)) => oci_client::Reference::with_digest(r, p, d.clone()),
            (t, None) => {
                oci_client::Reference::with_tag(r, p, t.clone().unwrap_or_else(|| "latest".into()))
            }
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `host[:port]` is loopback.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(r) => r.split(']').next().unwrap_or(""),
        None => registry.split(':').next().unwrap_or(""),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Split `name[:tag]`: a colon after the last `/` starts the tag (a colon
/// before it is a port).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    }
}

/// Docker's `splitDockerDomain`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == LEGACY_HUB {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

fn check_digest(d: &str) -> Result<String, String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {d:?} is not sha256:<hex>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {d:?} must be sha256: and 64 lower-case hex digits"
        ));
    }
    Ok(d.to_string())
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !t.is_empty()
        && t.len() <= TAG_MAX
        && t.starts_with(word)
        && t.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {t:?} (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')"
        ))
    }
}

fn check_domain(d: &str) -> Result<(), String> {
    let bad = || Err(format!("invalid registry host {d:?}"));
    let (host, port) = if let Some(r) = d.strip_prefix('[') {
        let Some((h, p)) = r.split_once(']') else {
            return bad();
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return bad();
        }
        if !p.is_empty() && !p.starts_with(':') {
            return bad();
        }
        (None, p.strip_prefix(':'))
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad();
    }
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(label_ok) {
            return bad();
        }
    }
    Ok(())
}

/// Components `[a-z0-9]+` joined by one `.`, one or two `_`, or dashes.
fn check_path(p: &str) -> Result<(), String> {
    for comp in p.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "invalid repository path component {comp:?} (lower-case letters and digits, joined by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_names_normalize() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            full("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            full("docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        // The first part is a path component, not a host: no dot, colon or capital.
        assert_eq!(full("a/b/c:t"), "docker.io/a/b/c:t");
        assert_eq!(full("test.com:tag"), "docker.io/library/test.com:tag");
    }

    #[test]
    fn hosts_ports_and_digests() {
        assert_eq!(full("localhost/img"), "localhost/img:latest");
        assert_eq!(full("127.0.0.1:5000/img:v3"), "127.0.0.1:5000/img:v3");
        assert_eq!(full("Reg.Example/x"), "Reg.Example/x:latest");
        assert_eq!(full("[::1]:5000/x:y"), "[::1]:5000/x:y");
        let r = Reference::parse(&format!("reg:5000/a/b@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D)));
        assert_eq!(r.tag_or_digest(), D);
        let both = Reference::parse(&format!("alpine:3@{D}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("3"));
        assert_eq!(both.digest.as_deref(), Some(D));
        assert_eq!(both.to_string(), format!("docker.io/library/alpine:3@{D}"));
    }

    #[test]
    fn familiar_names() {
        let t = |s: &str| Reference::parse(s).unwrap().store_tag();
        assert_eq!(
            t("docker.io/library/alpine").as_deref(),
            Some("alpine:latest")
        );
        assert_eq!(t("user/app:1").as_deref(), Some("user/app:1"));
        assert_eq!(
            t("127.0.0.1:5000/img:v3").as_deref(),
            Some("127.0.0.1:5000/img:v3")
        );
        assert_eq!(t(&format!("img@{D}")), None);
    }

    #[test]
    fn bad_references_are_one_line_errors() {
        for (s, why) in [
            ("", "empty"),
            ("Alpine", "lowercase"),
            ("docker.io/Library/x", "lowercase"),
            ("a//b", "component"),
            ("a/-b", "component"),
            ("a___b", "component"),
            ("img:-x", "tag"),
            ("img:", "tag"),
            ("img@sha256:abc", "digest"),
            ("img@md5:00", "digest"),
            ("host:port/x", "host"),
            ("-h.com/x", "host"),
            (&"a".repeat(256), "255"),
            (&"a".repeat(64)[..], "id"),
        ] {
            let e = Reference::parse(s).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains('\n'), "{s:?}: {e}");
        }
        assert!(Reference::parse(&format!("img:{}", "t".repeat(129))).is_err());
        assert!(Reference::parse("x/a__b.c-d---e/x_y").is_ok());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["docker.io", "128.0.0.1:5000", "localhost.example", "[::2]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn oci_form_keeps_both() {
        let o = Reference::parse(&format!("127.0.0.1:5000/a:t@{D}"))
            .unwrap()
            .to_oci();
        assert_eq!(o.registry(), "127.0.0.1:5000");
        assert_eq!(o.repository(), "a");
        assert_eq!(o.tag(), Some("t"));
        assert_eq!(o.digest(), Some(D));
    }
}
