//! Image references as users write them (`alpine:3.20`, `ghcr.io/org/img@sha256:...`,
//! `127.0.0.1:5000/busybox:latest`), checked against Docker's grammar and normalised the way
//! Docker does. Hand-written rather than `oci-spec`'s regex, which costs about 30 ms of CPU to
//! compile in every process: both the pipeline validator (every `runner exec`) and the image
//! store (a warm pull has a 20 ms budget) parse references, and neither may depend on the
//! other, so the grammar lives here once. The image store's tests check it against `oci-spec`.
#![forbid(unsafe_code)]

/// A reference split into its parts, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000` (`index.docker.io` is written `docker.io`).
    pub registry: String,
    /// `library/alpine`, `org/img`.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, when pinned.
    pub digest: Option<String>,
}

/// Parse and normalise `s` (`alpine` -> `docker.io`, `library/alpine`, tag `latest`).
pub fn parse(s: &str) -> Result<Parts, String> {
    if s.is_empty() || s.trim() != s {
        return Err("empty or surrounded by spaces".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let (registry, path) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, remainder)
        }
        _ => ("docker.io", name),
    };
    if !valid_host(registry) {
        return Err(format!("invalid registry {registry:?}"));
    }
    let registry = if registry == "index.docker.io" {
        "docker.io"
    } else {
        registry
    };
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(format!(
            "invalid repository {path:?}: lowercase letters, digits and separators (. _ __ -) only"
        ));
    }
    let path = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if path.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    if let Some(t) = tag {
        let ok = t.len() <= 128
            && t.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(format!("invalid tag {t:?}"));
        }
    }
    if let Some(d) = digest {
        if !valid_digest(d) {
            return Err(format!(
                "invalid digest {d:?}: expected sha256: and 64 lowercase hex digits"
            ));
        }
    }
    Ok(Parts {
        registry: registry.to_string(),
        repository: path,
        // No tag and no digest means `latest`, as Docker does.
        tag: tag
            .map(str::to_string)
            .or_else(|| digest.is_none().then(|| "latest".to_string())),
        digest: digest.map(str::to_string),
    })
}

/// `sha256:` and 64 lowercase hex digits: the only digest the store verifies.
fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `host(.host)*(:port)?`, each label alphanumeric with inner dashes.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_normalised_as_docker_does() {
        let p = parse("alpine").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(p.tag.as_deref(), Some("latest"));
        assert_eq!(p.digest, None);
        let p = parse("127.0.0.1:5000/busybox:1").unwrap();
        assert_eq!(p.registry, "127.0.0.1:5000");
        assert_eq!(p.tag.as_deref(), Some("1"));
    }

    #[test]
    fn a_digest_alone_has_no_tag() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let p = parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(p.tag, None);
        assert_eq!(p.digest.as_deref(), Some(d));
        assert!(parse("busybox@sha256:1234").is_err());
        assert!(parse("busybox@sha512:abcd").is_err());
    }

    #[test]
    fn bad_input_says_why() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse(" a").unwrap_err().contains("spaces"));
        assert!(
            parse("Upper/x").is_ok(),
            "an uppercase first part is a registry host"
        );
        assert!(parse("upper/Case").unwrap_err().contains("repository"));
        assert!(parse("a:-tag").unwrap_err().contains("tag"));
    }
}
