//! Image references as users write them, normalised the way Docker does
//! (`alpine` -> `docker.io/library/alpine:latest`). Parsing itself is `oci-spec`'s; this
//! module adds the canonical form used as a key in the store and the host:port used to pick
//! credentials and the insecure list.

use oci_client::Reference;

use super::verify::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: String },
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let invalid = |reason: String| ReferenceError::Invalid {
            reference: s.to_string(),
            reason,
        };
        if s.trim() != s || s.is_empty() {
            return Err(invalid("empty or surrounded by spaces".into()));
        }
        let inner = parse_reference(s).map_err(invalid)?;
        Ok(ImageRef { inner })
    }

    pub fn oci(&self) -> &Reference {
        &self.inner
    }

    /// `registry/repository:tag`, `registry/repository@digest` or both: the store's key.
    pub fn canonical(&self) -> String {
        self.inner.whole()
    }

    /// The registry as written (`docker.io`, `127.0.0.1:5000`): the key for credentials and
    /// the insecure list.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The host actually contacted (`index.docker.io` for Docker Hub).
    pub fn registry_host(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The pinned digest, if the reference has one (validated at parse time).
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            inner: Reference::with_digest(
                self.inner.registry().to_string(),
                self.inner.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// Loopback registries are always reachable over plain http: nothing crosses a network.
    pub fn is_loopback(&self) -> bool {
        let host = self.registry();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.")
    }
}

/// Docker's grammar (the `image-ref` crate), as an `oci-client` reference.
fn parse_reference(s: &str) -> Result<Reference, String> {
    let p = image_ref::parse(s)?;
    Ok(match (p.tag, p.digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(p.registry, p.repository, t, d),
        (None, Some(d)) => Reference::with_digest(p.registry, p.repository, d),
        (Some(t), None) => Reference::with_tag(p.registry, p.repository, t),
        (None, None) => Reference::with_tag(p.registry, p.repository, "latest".into()),
    })
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.canonical(), "docker.io/library/alpine:latest");
        assert_eq!(r.registry_host(), "index.docker.io");
        let r = ImageRef::parse("org/img:1.0").unwrap();
        assert_eq!(r.canonical(), "docker.io/org/img:1.0");
    }

    #[test]
    fn registries_ports_and_digests() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = ImageRef::parse(&format!("127.0.0.1:5000/busybox@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "busybox");
        assert_eq!(r.digest().unwrap().to_string(), d);
        assert!(r.is_loopback());
        let r = ImageRef::parse("ghcr.io/org/img:v1").unwrap();
        assert!(!r.is_loopback());
        assert_eq!(r.tag(), Some("v1"));
        assert!(ImageRef::parse("Bad Ref").is_err());
        assert!(ImageRef::parse("x@sha256:1234").is_err());
    }

    /// The hand-written parser agrees with oci-spec's regex on valid and invalid input.
    #[test]
    fn agrees_with_oci_spec() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let valid = [
            "alpine".to_string(),
            "alpine:3.20".into(),
            "library/alpine".into(),
            "org/img:v1.2-rc_3".into(),
            "ghcr.io/org/sub/img:tag".into(),
            "localhost/img".into(),
            "localhost:5000/a/b".into(),
            "127.0.0.1:5000/busybox:latest".into(),
            "my-registry.example.com:443/team/app__x.y-z:1".into(),
            "index.docker.io/library/debian:bookworm".into(),
            format!("busybox@{d}"),
            format!("quay.io/x/y:t@{d}"),
            "a--b/c:_t".into(),
        ];
        for r in &valid {
            let ours = ImageRef::parse(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            let theirs: Reference = r.parse().unwrap();
            let theirs = ImageRef { inner: theirs };
            assert_eq!(ours.canonical(), theirs.canonical(), "{r}");
        }
        let invalid = [
            "upper/Case",
            "a//b",
            "a/",
            "/a",
            "a:",
            "a:-tag",
            "a_-b",
            "a..b",
            "-a",
            "host:port/x",
            "a@sha256:zz",
            "a b",
        ];
        for r in invalid {
            assert!(ImageRef::parse(r).is_err(), "{r} accepted");
            assert!(r.parse::<Reference>().is_err(), "{r}: oci-spec accepts");
        }
    }
}
