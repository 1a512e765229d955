//! Registry settings (the runner config's `[registries]` section) and credentials: the
//! runner's own config first, then Docker's `config.json` (`auths`, `credHelpers`,
//! `credsStore`), else anonymous.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use super::reference::ImageRef;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials for {registry} in {source_name}: {reason}")]
    Bad {
        registry: String,
        source_name: String,
        reason: String,
    },
}

/// When a step's image is fetched from its registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Use the stored image when the reference (tag or digest) was pulled before; contact the
    /// registry only for references never seen. Fast and offline-friendly, like GitLab's
    /// `if-not-present`; a moved tag is picked up by `runner image pull`.
    #[default]
    IfNotPresent,
    /// Ask the registry what the tag points to every time (one HEAD request when unchanged).
    Always,
    /// Never contact a registry: images must be pulled or imported beforehand.
    Never,
}

/// `[registries]` in the runner's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`, as written in image references) reached over plain
    /// http. Loopback registries (127.0.0.1, localhost) always are.
    pub insecure: Vec<String>,
    /// When steps pull their images.
    pub pull_policy: PullPolicy,
    /// Credentials per registry (`host[:port]`; `docker.io` for Docker Hub).
    pub credentials: BTreeMap<String, Credential>,
    /// Docker's config file; default `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// One registry's credentials.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credential {
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read the password from this environment variable instead (keeps it out of the file).
    pub password_env: Option<String>,
    /// A bearer token sent as is (`Authorization: Bearer ...`).
    pub token: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryConfig {
    /// Whether `r`'s registry may be reached over http (and must be: a registry marked
    /// insecure is assumed to speak plain http, as Docker's `insecure-registries` does for
    /// loopback).
    pub fn use_http(&self, r: &ImageRef) -> bool {
        r.is_loopback() || self.insecure.iter().any(|h| h == r.registry())
    }

    /// Credentials for `r`'s registry, and where they came from (for error messages).
    pub fn auth_for(&self, r: &ImageRef) -> Result<(RegistryAuth, String), AuthError> {
        let registry = r.registry();
        if let Some(c) = self.credentials.get(registry) {
            return Ok((credential_auth(registry, c)?, "the runner config".into()));
        }
        let path = self.docker_config_path();
        if let Some(path) = path {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let name = path.display().to_string();
                let cfg: DockerConfig =
                    serde_json::from_str(&text).map_err(|e| AuthError::Bad {
                        registry: registry.into(),
                        source_name: name.clone(),
                        reason: format!("invalid JSON: {e}"),
                    })?;
                if let Some(auth) = cfg.lookup(registry, &name)? {
                    return Ok((auth, name));
                }
            }
        }
        Ok((RegistryAuth::Anonymous, "nowhere (anonymous)".into()))
    }

    fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

fn credential_auth(registry: &str, c: &Credential) -> Result<RegistryAuth, AuthError> {
    let bad = |reason: &str| AuthError::Bad {
        registry: registry.into(),
        source_name: "the runner config".into(),
        reason: reason.into(),
    };
    if let Some(t) = &c.token {
        return Ok(RegistryAuth::Bearer(t.clone()));
    }
    let user = c
        .username
        .clone()
        .ok_or_else(|| bad("`username` is missing"))?;
    let password = match (&c.password, &c.password_env) {
        (Some(p), _) => p.clone(),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| bad(&format!("environment variable {var} is not set")))?,
        (None, None) => return Err(bad("`password` or `password_env` is missing")),
    };
    Ok(RegistryAuth::Basic(user, password))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerConfig {
    auths: BTreeMap<String, DockerAuth>,
    #[serde(rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

impl DockerConfig {
    /// Docker keys Hub credentials by its legacy v1 URL, others by host with or without a
    /// scheme.
    fn keys(registry: &str) -> Vec<String> {
        let mut keys = vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
            format!("https://{registry}/v2/"),
        ];
        if registry == "docker.io" {
            keys.insert(0, "https://index.docker.io/v1/".into());
            keys.push("index.docker.io".into());
        }
        keys
    }

    fn lookup(&self, registry: &str, file: &str) -> Result<Option<RegistryAuth>, AuthError> {
        let keys = Self::keys(registry);
        let bad = |reason: String| AuthError::Bad {
            registry: registry.into(),
            source_name: file.into(),
            reason,
        };
        if let Some(helper) = keys.iter().find_map(|k| self.cred_helpers.get(k)) {
            return cred_helper(helper, &keys[0]).map_err(bad);
        }
        if let Some(a) = keys.iter().find_map(|k| self.auths.get(k)) {
            if let Some(t) = &a.registrytoken {
                return Ok(Some(RegistryAuth::Bearer(t.clone())));
            }
            if let (Some(u), Some(p)) = (&a.username, &a.password) {
                return Ok(Some(RegistryAuth::Basic(u.clone(), p.clone())));
            }
            if let Some(enc) = &a.auth {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(enc.trim())
                    .map_err(|e| bad(format!("`auth` is not base64: {e}")))?;
                let text = String::from_utf8(raw).map_err(|_| bad("`auth` is not UTF-8".into()))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad("`auth` is not user:password".into()))?;
                return Ok(Some(RegistryAuth::Basic(u.into(), p.into())));
            }
        }
        if let Some(store) = &self.creds_store {
            return cred_helper(store, &keys[0]).map_err(bad);
        }
        Ok(None)
    }
}

/// Ask `docker-credential-<helper> get` for `server`'s credentials (Docker's helper protocol:
/// server URL on stdin, JSON `{Username, Secret}` on stdout). "not found" means anonymous.
fn cred_helper(helper: &str, server: &str) -> Result<Option<RegistryAuth>, String> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.to_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(format!("{program} failed: {}", msg.trim()));
    }
    let o: Out = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{program} printed invalid JSON: {e}"))?;
    Ok(Some(RegistryAuth::Basic(o.username, o.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with_docker(json: &str) -> (RegistryConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        let cfg = RegistryConfig {
            docker_config: Some(path),
            ..Default::default()
        };
        (cfg, dir)
    }

    #[test]
    fn docker_config_auth_field_and_hub_key() {
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let (cfg, _d) = cfg_with_docker(&format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{enc}"}},
                 "reg.example:5000":{{"username":"bob","password":"pw"}}}}}}"#
        ));
        let hub = ImageRef::parse("alpine").unwrap();
        assert_eq!(
            cfg.auth_for(&hub).unwrap().0,
            RegistryAuth::Basic("alice".into(), "s3cret".into())
        );
        let other = ImageRef::parse("reg.example:5000/x:1").unwrap();
        assert_eq!(
            cfg.auth_for(&other).unwrap().0,
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
        let none = ImageRef::parse("ghcr.io/a/b").unwrap();
        assert_eq!(cfg.auth_for(&none).unwrap().0, RegistryAuth::Anonymous);
    }

    #[test]
    fn runner_config_wins_and_reports_missing_pieces() {
        let (mut cfg, _d) =
            cfg_with_docker(r#"{"auths":{"r.io":{"username":"d","password":"d"}}}"#);
        cfg.credentials.insert(
            "r.io".into(),
            Credential {
                username: Some("ci".into()),
                password: Some("pw".into()),
                ..Default::default()
            },
        );
        let r = ImageRef::parse("r.io/x").unwrap();
        assert_eq!(
            cfg.auth_for(&r).unwrap().0,
            RegistryAuth::Basic("ci".into(), "pw".into())
        );
        cfg.credentials.get_mut("r.io").unwrap().password = None;
        let err = cfg.auth_for(&r).unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn http_only_for_loopback_and_insecure() {
        let cfg = RegistryConfig {
            insecure: vec!["lan:5000".into()],
            ..Default::default()
        };
        assert!(cfg.use_http(&ImageRef::parse("127.0.0.1:5000/a").unwrap()));
        assert!(cfg.use_http(&ImageRef::parse("localhost:5000/a").unwrap()));
        assert!(cfg.use_http(&ImageRef::parse("lan:5000/a").unwrap()));
        assert!(!cfg.use_http(&ImageRef::parse("lan:5001/a").unwrap()));
        assert!(!cfg.use_http(&ImageRef::parse("ghcr.io/a").unwrap()));
    }

    #[test]
    fn toml_section_parses() {
        let cfg: RegistryConfig = toml_like();
        assert_eq!(cfg.pull_policy, PullPolicy::Always);
    }

    fn toml_like() -> RegistryConfig {
        serde_json::from_str(
            r#"{"insecure":["a:1"],"pull_policy":"always",
                "credentials":{"a:1":{"username":"u","password_env":"X"}}}"#,
        )
        .unwrap()
    }
}
