//! Image references, parsed and normalized by Docker's rules (`busybox` →
//! `docker.io/library/busybox:latest`), so every name a pod spec may use maps to one key.

use std::fmt;

use crate::runtime::{Result, RuntimeError};

/// The registry Docker assumes when a name has none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy host name, normalized to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A fully qualified image reference: `domain/path[:tag][@digest]`. Without a tag and a
/// digest, parsing adds `:latest`, so `tag` or `digest` is always set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host, with its port if any (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub path: String,
    pub tag: Option<String>,
    /// `algorithm:hex` (only `sha256` is accepted).
    pub digest: Option<String>,
}

/// Normalizes a reference by Docker's rules: `busybox` → `docker.io/library/busybox:latest`,
/// `localhost:5000/x` keeps its host, `name@sha256:…` keeps the digest (and gets no tag).
pub fn normalize_reference(reference: &str) -> Result<String> {
    Ok(ImageReference::parse(reference)?.to_string())
}

fn invalid(reference: &str, why: impl fmt::Display) -> RuntimeError {
    RuntimeError::Image {
        reference: reference.to_string(),
        message: format!("invalid reference format: {why}"),
    }
}

impl ImageReference {
    /// Parses and normalizes `reference`; errors name what is wrong with it.
    pub fn parse(reference: &str) -> Result<Self> {
        let s = reference.trim();
        if s.is_empty() {
            return Err(invalid(reference, "empty reference"));
        }
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            validate_digest(d).map_err(|why| invalid(reference, why))?;
        }
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(t) = tag {
            if !is_valid_tag(t) {
                return Err(invalid(reference, format_args!("invalid tag {t:?}")));
            }
        }
        if name.is_empty() {
            return Err(invalid(reference, "missing repository name"));
        }
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(
                reference,
                "repository name must not be more than 255 characters",
            ));
        }
        let (domain, path) = split_domain(name);
        if !is_valid_domain(&domain) {
            return Err(invalid(
                reference,
                format_args!("invalid registry host {domain:?}"),
            ));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                reference,
                format_args!("repository name ({path}) must be lowercase"),
            ));
        }
        if !is_valid_path(&path) {
            return Err(invalid(
                reference,
                format_args!("invalid repository name {path:?}"),
            ));
        }
        if domain == DEFAULT_DOMAIN && path.len() == 64 + OFFICIAL_REPO_PREFIX.len() {
            let bare = &path[OFFICIAL_REPO_PREFIX.len()..];
            if path.starts_with(OFFICIAL_REPO_PREFIX) && is_hex(bare) {
                return Err(invalid(
                    reference,
                    format_args!("repository name ({bare}) cannot be a 64-byte hexadecimal string"),
                ));
            }
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(ImageReference {
            domain,
            path,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `domain/path`, what a registry calls the repository.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The reference Docker prints: `busybox:latest` for Docker Hub's official images,
    /// `user/app:v1` for other Hub images, unchanged elsewhere.
    pub fn familiar(&self) -> String {
        let name = if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_REPO_PREFIX)
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.repository()
        };
        with_suffixes(name, self.tag.as_deref(), self.digest.as_deref())
    }

    /// `repository@digest`, the pinned form recorded as a repo digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.repository(), digest)
    }
}

fn with_suffixes(mut name: String, tag: Option<&str>, digest: Option<&str>) -> String {
    if let Some(t) = tag {
        name.push(':');
        name.push_str(t);
    }
    if let Some(d) = digest {
        name.push('@');
        name.push_str(d);
    }
    name
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&with_suffixes(
            self.repository(),
            self.tag.as_deref(),
            self.digest.as_deref(),
        ))
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry host only if it has a
/// `.` or a `:`, is `localhost`, or has upper-case letters (which a path may not have).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_REPO_PREFIX}{path}");
    }
    (domain, path)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:` followed by 64 lower-case hex digits.
pub(crate) fn validate_digest(d: &str) -> std::result::Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && is_hex(hex) => Ok(()),
        Some(("sha256", _)) => Err(format!(
            "invalid digest {d:?}: sha256 needs 64 lower-case hex digits"
        )),
        Some((alg, _)) => Err(format!("unsupported digest algorithm {alg:?}")),
        None => Err(format!("invalid digest {d:?}")),
    }
}

/// `[\w][\w.-]{0,127}`.
fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A host name or IP (IPv6 in brackets), with an optional numeric port.
fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|label| {
                    let b = label.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                })
        }
    }
}

/// Path components `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` separated by `/`.
fn is_valid_path(path: &str) -> bool {
    path.split('/').all(|component| {
        let b = component.as_bytes();
        if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if is_alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__', or one or more '-'.
            let start = i;
            while i < b.len() && !is_alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
            if !ok {
                return false;
            }
        }
        true
    })
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let table: &[(&str, String)] = &[
            ("busybox", "docker.io/library/busybox:latest".into()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".into()),
            ("library/busybox", "docker.io/library/busybox:latest".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1".into(),
            ),
            ("user/app", "docker.io/user/app:latest".into()),
            ("user/team/app:v2", "docker.io/user/team/app:v2".into()),
            ("localhost/app", "localhost/app:latest".into()),
            ("localhost:5000/app:dev", "localhost:5000/app:dev".into()),
            ("127.0.0.1:5000/x/y", "127.0.0.1:5000/x/y:latest".into()),
            ("[::1]:5000/app", "[::1]:5000/app:latest".into()),
            (
                "registry.k8s.io/pause:3.10",
                "registry.k8s.io/pause:3.10".into(),
            ),
            (
                "quay.io/a-b/c__d.e:1.0_rc-1",
                "quay.io/a-b/c__d.e:1.0_rc-1".into(),
            ),
            (
                &format!("busybox@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                &format!("busybox:1.36@{D}"),
                format!("docker.io/library/busybox:1.36@{D}"),
            ),
            (
                &format!("localhost:5000/app@{D}"),
                format!("localhost:5000/app@{D}"),
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                &normalize_reference(input).unwrap(),
                want,
                "normalizing {input}"
            );
        }
    }

    #[test]
    fn rejects_invalid_references() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "/busybox",
            "busybox/",
            "bad..name",
            "bad_-name",
            "host:port/x",
            "[::1/app",
            ":tag",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let err = normalize_reference(bad).expect_err(bad);
            assert!(
                err.to_string().contains("invalid reference format"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn familiar_names() {
        let r = ImageReference::parse("busybox").unwrap();
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.repository(), "docker.io/library/busybox");
        assert_eq!(
            ImageReference::parse("user/app:1").unwrap().familiar(),
            "user/app:1"
        );
        assert_eq!(
            ImageReference::parse("localhost:5000/app")
                .unwrap()
                .familiar(),
            "localhost:5000/app:latest"
        );
        assert_eq!(r.with_digest(D), format!("docker.io/library/busybox@{D}"));
    }
}
