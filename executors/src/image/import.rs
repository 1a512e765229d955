//! Images from files, for hosts without registry access: an OCI image layout directory, or a
//! tarball of one, or a `docker save` tarball (`manifest.json` + config + layer tars).
//! Layers go through the same verify-and-unpack path as pulled ones.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::reference::ImageRef;
use super::registry::{parse_manifest, pick_platform};
use super::store::{
    decompressor, image_record, ImageStore, LayerRecord, NoProgress, PullOutcome, StoreError,
};
use super::unpack;
use super::verify::{self, Digest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Import every image in `path`; `tag` names it (required when the archive has no name,
    /// and only allowed for a single image).
    pub async fn import(
        &self,
        path: &Path,
        tag: Option<&str>,
    ) -> Result<Vec<PullOutcome>, StoreError> {
        let bad = |reason: String| StoreError::BadImage {
            reference: path.display().to_string(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        // Shared like a pull: `prune` must not clear the extraction dir under us.
        let _shared = self.lock("store.lock", false).await?;
        let _extracted;
        let dir = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let t = tempfile::Builder::new()
                .prefix("import-")
                .tempdir_in(self.root().join("tmp"))
                .map_err(|e| bad(e.to_string()))?;
            let (src, dest) = (path.to_path_buf(), t.path().to_path_buf());
            tokio::task::spawn_blocking(move || {
                let f = fs::File::open(&src)?;
                let r = decompressor(f)?;
                unpack::unpack(r, &dest).map_err(io::Error::other)
            })
            .await
            .map_err(|e| bad(e.to_string()))?
            .map_err(|e| bad(format!("cannot extract the archive: {e}")))?;
            _extracted = t;
            _extracted.path().to_path_buf()
        };
        let tag = tag.map(ImageRef::parse).transpose()?;
        if dir.join("manifest.json").is_file() {
            self.import_docker(&dir, tag).await
        } else if dir.join("index.json").is_file() {
            self.import_oci(&dir, tag).await
        } else {
            Err(bad(
                "neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)"
                    .into(),
            ))
        }
    }

    async fn import_docker(
        &self,
        dir: &Path,
        tag: Option<ImageRef>,
    ) -> Result<Vec<PullOutcome>, StoreError> {
        let bad = |reason: String| StoreError::BadImage {
            reference: dir.display().to_string(),
            reason,
        };
        let text = fs::read(dir.join("manifest.json")).map_err(|e| bad(e.to_string()))?;
        let entries: Vec<DockerEntry> = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("invalid manifest.json: {e}")))?;
        if tag.is_some() && entries.len() != 1 {
            return Err(bad(format!(
                "--tag needs one image, the archive has {}",
                entries.len()
            )));
        }
        let mut outs = Vec::new();
        for e in entries {
            let mut names = match &tag {
                Some(t) => vec![t.clone()],
                None => e
                    .repo_tags
                    .iter()
                    .flatten()
                    .map(|t| ImageRef::parse(t))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if names.is_empty() {
                return Err(bad("an image in the archive has no name; pass --tag".into()));
            }
            let config = fs::read(inside(dir, &e.config)?).map_err(|x| bad(x.to_string()))?;
            let config_digest = Digest::of(&config);
            let mut layers = Vec::new();
            for l in &e.layers {
                let p = inside(dir, l)?;
                let size = fs::metadata(&p).map_err(|x| bad(x.to_string()))?.len();
                let digest = hash_file(&p).await.map_err(|x| bad(x.to_string()))?;
                layers.push((
                    p,
                    LayerRecord {
                        digest: digest.to_string(),
                        size,
                        media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
                    },
                ));
            }
            // docker save carries no manifest: make the one a registry push would.
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(),
                    "size": config.len(),
                },
                "layers": layers.iter().map(|(_, l)| serde_json::json!({
                    "mediaType": l.media_type, "digest": l.digest, "size": l.size,
                })).collect::<Vec<_>>(),
            });
            let digest = Digest::of(manifest.to_string().as_bytes());
            let first = names.remove(0);
            outs.push(
                self.store_imported(
                    &first,
                    &names,
                    &digest,
                    &digest,
                    &config_digest,
                    &config,
                    layers,
                )
                .await?,
            );
        }
        Ok(outs)
    }

    async fn import_oci(
        &self,
        dir: &Path,
        tag: Option<ImageRef>,
    ) -> Result<Vec<PullOutcome>, StoreError> {
        let bad = |reason: String| StoreError::BadImage {
            reference: dir.display().to_string(),
            reason,
        };
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(
            &fs::read(dir.join("index.json")).map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(format!("invalid index.json: {e}")))?;
        if tag.is_some() && index.manifests().len() != 1 {
            return Err(bad(format!(
                "--tag needs one image, the layout has {}",
                index.manifests().len()
            )));
        }
        let mut outs = Vec::new();
        for desc in index.manifests() {
            let ann = desc.annotations().clone().unwrap_or_default();
            let name = match &tag {
                Some(t) => t.clone(),
                None => {
                    let n = ann
                        .get(CONTAINERD_NAME)
                        .or_else(|| ann.get(REF_NAME).filter(|n| n.contains(['/', ':'])))
                        .ok_or_else(|| {
                            bad("an image in the layout has no full name; pass --tag".into())
                        })?;
                    ImageRef::parse(n)?
                }
            };
            let top = Digest::parse(desc.digest().as_ref())?;
            let mut body = read_blob(dir, &top, Some(desc.size()))?;
            let mut digest = top.clone();
            if serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some())
            {
                let idx: oci_spec::image::ImageIndex = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("invalid nested index: {e}")))?;
                digest = pick_platform(&name, &idx)?;
                body = read_blob(dir, &digest, None)?;
            }
            let manifest = parse_manifest(&name, &body)?;
            let cd = Digest::parse(manifest.config().digest().as_ref())?;
            let config = read_blob(dir, &cd, Some(manifest.config().size()))?;
            let mut layers = Vec::new();
            for l in manifest.layers() {
                let d = Digest::parse(l.digest().as_ref())?;
                layers.push((
                    blob_path(dir, &d),
                    LayerRecord {
                        digest: d.to_string(),
                        size: l.size(),
                        media_type: l.media_type().to_string(),
                    },
                ));
            }
            outs.push(
                self.store_imported(&name, &[], &top, &digest, &cd, &config, layers)
                    .await?,
            );
        }
        Ok(outs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_imported(
        &self,
        name: &ImageRef,
        more_names: &[ImageRef],
        top: &Digest,
        digest: &Digest,
        config_digest: &Digest,
        config: &[u8],
        layers: Vec<(PathBuf, LayerRecord)>,
    ) -> Result<PullOutcome, StoreError> {
        let record = image_record(
            name,
            digest,
            config_digest,
            config,
            layers.iter().map(|(_, l)| l.clone()).collect(),
        )?;
        let mut downloaded = Vec::new();
        let mut reused = Vec::new();
        for (path, l) in layers {
            let fresh = self
                .ensure_layer(&l, &NoProgress, |d| async move {
                    file_stream(path).await.map_err(|e| StoreError::Layer {
                        digest: d.to_string(),
                        reason: e.to_string(),
                    })
                })
                .await?;
            if fresh {
                downloaded.push(l.digest.clone());
            } else {
                reused.push(l.digest.clone());
            }
        }
        self.write_record(&record)?;
        for n in std::iter::once(name).chain(more_names) {
            self.write_ref(n, &top.to_string(), &record.digest)?;
        }
        Ok(PullOutcome {
            reference: name.to_string(),
            record,
            downloaded,
            reused,
            contacted_registry: false,
        })
    }
}

/// A path named inside an archive, refused if it leaves the archive's directory.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, StoreError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(StoreError::BadImage {
            reference: dir.display().to_string(),
            reason: format!("archive names a file outside itself: {rel:?}"),
        });
    }
    Ok(dir.join(p))
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

fn read_blob(dir: &Path, d: &Digest, size: Option<u64>) -> Result<Vec<u8>, StoreError> {
    let p = blob_path(dir, d);
    let data = fs::read(&p).map_err(|e| StoreError::BadImage {
        reference: dir.display().to_string(),
        reason: format!("blob {d}: {e}"),
    })?;
    verify::check(&data, d, size).map_err(|source| StoreError::Verify {
        digest: d.to_string(),
        source,
    })?;
    Ok(data)
}

async fn hash_file(p: &Path) -> io::Result<Digest> {
    let p = p.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        use std::io::Read as _;
        let mut h = sha2::Sha256::new();
        let mut f = fs::File::open(&p)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Digest::parse(&format!("sha256:{}", hex::encode(h.finalize()))).map_err(io::Error::other)
    })
    .await
    .map_err(io::Error::other)?
}

async fn file_stream(
    path: PathBuf,
) -> io::Result<std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>> {
    let f = tokio::fs::File::open(&path).await?;
    Ok(Box::pin(futures_util::stream::try_unfold(
        f,
        |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), f)))
        },
    )))
}
