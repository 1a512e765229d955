//! Talking to one registry through `oci-client`: resolve a reference to a platform manifest
//! (walking image indexes / manifest lists), fetch small blobs whole and layers as streams.
//! Everything fetched is checked against its digest here or by the caller.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::{Arch, ImageIndex, ImageManifest, Os};

use super::auth::{AuthError, RegistryConfig};
use super::reference::ImageRef;
use super::verify::{self, Digest, VerifyError};

const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Manifests and configs are small; anything bigger is refused before it is read whole.
const MAX_SMALL_BLOB: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} refused access to {reference}: {hint}")]
    Unauthorized {
        registry: String,
        reference: String,
        hint: String,
    },
    #[error("{0} not found in its registry")]
    NotFound(String),
    #[error("{reference}: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error("{reference} has no linux/{arch} image (it offers: {offered})")]
    NoPlatform {
        reference: String,
        arch: String,
        offered: String,
    },
    #[error("registry {registry}: {source}")]
    Transport {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A reference resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// What the reference pointed at: an index's digest for a multi-platform image.
    pub top_digest: Digest,
    /// The platform manifest's digest.
    pub digest: Digest,
    pub manifest: ImageManifest,
}

pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
    auth_source: String,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// rustls needs a process-wide crypto provider; ring is the one compiled in. Installing
/// twice is harmless (the second call reports the first is in place).
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RegistryClient {
    pub fn new(r: &ImageRef, cfg: &RegistryConfig) -> Result<Self, RegistryError> {
        ensure_crypto_provider();
        let (auth, auth_source) = cfg.auth_for(r)?;
        let protocol = if cfg.use_http(r) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            max_concurrent_download: 4,
            ..Default::default()
        });
        Ok(RegistryClient {
            client,
            auth,
            auth_source,
        })
    }

    /// The auth the client uses; pushes in tests share it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn login(&self, r: &ImageRef) {
        self.client
            .store_auth_if_needed(r.registry_host(), &self.auth)
            .await;
    }

    /// What the reference currently points at, by a HEAD request.
    pub async fn head_digest(&self, r: &ImageRef) -> Result<Digest, RegistryError> {
        self.login(r).await;
        let d = self
            .client
            .fetch_manifest_digest(r.oci(), &self.auth)
            .await
            .map_err(|e| self.map_err(r, e))?;
        Ok(Digest::parse(&d)?)
    }

    /// Fetch the manifest `r` names, choosing linux/<host arch> from an index.
    pub async fn resolve(&self, r: &ImageRef) -> Result<ResolvedManifest, RegistryError> {
        self.login(r).await;
        let (body, top) = self.raw_manifest(r).await?;
        let kind = manifest_kind(&body).map_err(|reason| RegistryError::BadManifest {
            reference: r.to_string(),
            reason,
        })?;
        if kind == Kind::Manifest {
            return Ok(ResolvedManifest {
                top_digest: top.clone(),
                digest: top,
                manifest: parse_manifest(r, &body)?,
            });
        }
        let index: ImageIndex =
            serde_json::from_slice(&body).map_err(|e| RegistryError::BadManifest {
                reference: r.to_string(),
                reason: format!("invalid image index: {e}"),
            })?;
        let chosen = pick_platform(r, &index)?;
        let pinned = r.with_digest(&chosen);
        let (body, digest) = self.raw_manifest(&pinned).await?;
        if manifest_kind(&body).ok() != Some(Kind::Manifest) {
            return Err(RegistryError::BadManifest {
                reference: pinned.to_string(),
                reason:
                    "an index entry is not an image manifest (nested indexes are not supported)"
                        .into(),
            });
        }
        Ok(ResolvedManifest {
            top_digest: top,
            digest,
            manifest: parse_manifest(&pinned, &body)?,
        })
    }

    async fn raw_manifest(&self, r: &ImageRef) -> Result<(Bytes, Digest), RegistryError> {
        let (body, digest) = self
            .client
            .pull_manifest_raw(r.oci(), &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.map_err(r, e))?;
        // oci-client compares against the header and the reference; hash it ourselves too,
        // since the header is the registry's word and a tag carries no digest.
        let actual = Digest::of(&body);
        let claimed = Digest::parse(&digest)?;
        if actual != claimed || r.digest().is_some_and(|d| d != actual) {
            return Err(VerifyError::Mismatch {
                expected: r.digest().unwrap_or(claimed).to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok((body, actual))
    }

    /// A small blob (image config) read whole and verified.
    pub async fn small_blob(
        &self,
        r: &ImageRef,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size > MAX_SMALL_BLOB {
            return Err(RegistryError::BadManifest {
                reference: r.to_string(),
                reason: format!("config blob {digest} is {size} bytes, too big for a config"),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        let d = digest.to_string();
        self.client
            .pull_blob(r.oci(), d.as_str(), &mut out)
            .await
            .map_err(|e| self.map_err(r, e))?;
        verify::check(&out, digest, Some(size))?;
        Ok(out)
    }

    /// A layer blob as a byte stream; the caller verifies digest and size as it consumes it.
    pub async fn blob_stream(
        &self,
        r: &ImageRef,
        digest: &Digest,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RegistryError> {
        let d = digest.to_string();
        let s = self
            .client
            .pull_blob_stream(r.oci(), d.as_str())
            .await
            .map_err(|e| self.map_err(r, e))?;
        Ok(s.stream)
    }

    fn map_err(&self, r: &ImageRef, e: OciDistributionError) -> RegistryError {
        let unauthorized = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|x| {
                    format!("{:?}", x.code)
                        .to_uppercase()
                        .contains("UNAUTHORIZED")
                        || format!("{:?}", x.code).to_uppercase().contains("DENIED")
                })
            }
            _ => false,
        };
        if unauthorized {
            let hint = match self.auth {
                RegistryAuth::Anonymous => format!(
                    "it requires credentials and none were found; add them under \
                     [registries.credentials.\"{}\"] in the runner config or `docker login` \
                     ({})",
                    r.registry(),
                    e
                ),
                _ => format!(
                    "the credentials from {} were rejected ({e})",
                    self.auth_source
                ),
            };
            return RegistryError::Unauthorized {
                registry: r.registry().into(),
                reference: r.to_string(),
                hint,
            };
        }
        let not_found = match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 404,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|x| format!("{:?}", x.code).to_uppercase().contains("UNKNOWN")),
            _ => false,
        };
        if not_found {
            return RegistryError::NotFound(r.to_string());
        }
        RegistryError::Transport {
            registry: r.registry().into(),
            source: e,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

fn manifest_kind(body: &[u8]) -> Result<Kind, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if v.get("schemaVersion").and_then(|s| s.as_i64()) == Some(1) {
        return Err("Docker schema 1 manifests are not supported; re-push the image".into());
    }
    let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    if media == OCI_IMAGE_INDEX_MEDIA_TYPE
        || media == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        || (media.is_empty() && v.get("manifests").is_some())
    {
        return Ok(Kind::Index);
    }
    if v.get("layers").is_some() && v.get("config").is_some() {
        return Ok(Kind::Manifest);
    }
    Err(format!(
        "not an image manifest or index (mediaType {media:?})"
    ))
}

pub(crate) fn parse_manifest(r: &ImageRef, body: &[u8]) -> Result<ImageManifest, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::BadManifest {
        reference: r.to_string(),
        reason: format!("invalid image manifest: {e}"),
    })
}

/// linux/<host arch> from an index: an exact variant-less match first, then any variant.
pub(crate) fn pick_platform(r: &ImageRef, index: &ImageIndex) -> Result<Digest, RegistryError> {
    let want_arch = Arch::default();
    let mut offered = Vec::new();
    let mut fallback = None;
    for m in index.manifests() {
        let Some(p) = m.platform() else { continue };
        offered.push(format!("{}/{}", p.os(), p.architecture()));
        if *p.os() == Os::Linux && *p.architecture() == want_arch {
            if p.variant().is_none() {
                return Ok(Digest::parse(m.digest().as_ref())?);
            }
            fallback.get_or_insert_with(|| m.digest().to_string());
        }
    }
    match fallback {
        Some(d) => Ok(Digest::parse(&d)?),
        None => Err(RegistryError::NoPlatform {
            reference: r.to_string(),
            arch: want_arch.to_string(),
            offered: if offered.is_empty() {
                "no platforms listed".into()
            } else {
                offered.join(", ")
            },
        }),
    }
}
