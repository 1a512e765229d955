//! The content-addressed image store under `<data-dir>/images`:
//!
//! ```text
//! layers/sha256-<hex>/       one unpacked layer (overlayfs lower dir), keyed by blob digest
//! manifests/sha256-<hex>.json what an image is: its layers, env, working dir (by manifest digest)
//! refs/<reference>.json       what a reference (tag or digest) resolved to, and when
//! tmp/                        work in progress; never trusted, cleared by `prune`
//! locks/                      flock files: one per layer digest, plus `store.lock`
//! ```
//!
//! A layer appears under `layers/` only by an atomic rename of a fully unpacked and verified
//! temp dir, so a pull killed at any point leaves nothing a later run would trust. A per-digest
//! lock makes concurrent pulls of the same layer (threads or processes) download it once: the
//! second waits, then finds it present. Pulls hold `store.lock` shared; `prune` takes it
//! exclusively, so it never deletes a layer a pull is about to reference.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::auth::{PullPolicy, RegistryConfig};
use super::reference::{ImageRef, ReferenceError};
use super::registry::{RegistryClient, RegistryError};
use super::unpack::{self, UnpackError, UnpackStats};
use super::verify::{Digest, ReadError, VerifyError, VerifyingReader};

/// How many layers download and unpack at once.
const PARALLEL_LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("layer {digest}: {source}")]
    Verify {
        digest: String,
        #[source]
        source: VerifyError,
    },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Digest(#[from] VerifyError),
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    #[error("{0} is not in the local image store (pull policy `never`)")]
    NotPresent(String),
    #[error("no image {0} in the local store")]
    NoSuchImage(String),
    #[error("image {reference}: {reason}")]
    BadImage { reference: String, reason: String },
    #[error("image store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed); names the layer's directory.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// A stored image: one platform manifest and what a sandbox needs from its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Manifest digest.
    pub digest: String,
    pub config_digest: String,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub os: String,
    pub architecture: String,
}

impl ImageRecord {
    /// Compressed size of all layers, as registries report image sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What a reference last resolved to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefRecord {
    pub reference: String,
    /// What the reference pointed at in the registry (an index for multi-platform images).
    pub top_digest: String,
    /// The image manifest chosen for this host.
    pub digest: String,
    /// Seconds since the epoch of the last pull or check.
    pub updated: u64,
}

/// Progress of a pull, for a progress bar or a log line.
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The image's manifest is known; `layers` are about to be fetched.
    Resolved {
        reference: String,
        digest: String,
        layers: usize,
    },
    /// A layer was already in the store.
    LayerCached { digest: String, size: u64 },
    /// A layer download started.
    LayerStarted { digest: String, size: u64 },
    /// `done` bytes of a layer have arrived.
    LayerProgress { digest: String, done: u64 },
    /// A layer is verified and unpacked.
    LayerDone { digest: String, stats: UnpackStats },
}

pub trait PullProgress: Send + Sync {
    fn event(&self, event: PullEvent);
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn event(&self, _event: PullEvent) {}
}

/// The result of [`ImageStore::pull`].
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// Canonical reference.
    pub reference: String,
    pub record: ImageRecord,
    /// Layers this pull downloaded and unpacked.
    pub downloaded: Vec<String>,
    /// Layers found in the store.
    pub reused: Vec<String>,
    /// Whether the registry was contacted at all.
    pub contacted_registry: bool,
}

/// One line of `runner image ls`.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// `None` for an image no reference points to any more.
    pub reference: Option<String>,
    pub record: ImageRecord,
    pub updated: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub layers_removed: usize,
    pub temp_removed: usize,
    /// Unused by any stored image but kept: a running step still has them mounted.
    pub layers_in_use: usize,
}

/// The image store. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    config: Arc<RegistryConfig>,
}

impl ImageStore {
    /// Open (creating if needed) the store at `root`, normally `<data-dir>/images`.
    pub fn open(root: impl Into<PathBuf>, config: RegistryConfig) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        // Layers hold set-uid binaries and device nodes of arbitrary images: no other user
        // may reach them.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_err(&root))?;
        for sub in ["layers", "manifests", "refs", "tmp", "locks"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(ImageStore {
            root,
            config: Arc::new(config),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The directory of an unpacked layer.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        let name = Digest::parse(digest)
            .map(|d| d.file_name())
            .unwrap_or_else(|_| digest.replace(':', "-"));
        self.root.join("layers").join(name)
    }

    /// Layer directories of `record`, bottom first.
    pub fn layer_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.digest))
            .collect()
    }

    fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(format!("{}.json", digest.file_name()))
    }

    fn ref_path(&self, canonical: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", encode_ref(canonical)))
    }

    /// The stored image `reference` names, if it is complete (every layer present).
    pub fn lookup(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let r = ImageRef::parse(reference)?;
        Ok(self.local(&r).map(|(_, rec)| rec))
    }

    fn local(&self, r: &ImageRef) -> Option<(Option<RefRecord>, ImageRecord)> {
        let rref: Option<RefRecord> = read_json(&self.ref_path(&r.canonical()));
        let digest = match (&rref, r.digest()) {
            (Some(x), _) => Digest::parse(&x.digest).ok()?,
            (None, Some(d)) => d,
            (None, None) => return None,
        };
        let rec: ImageRecord = read_json(&self.manifest_path(&digest))?;
        if rec
            .layers
            .iter()
            .all(|l| self.layer_dir(&l.digest).is_dir())
        {
            Some((rref, rec))
        } else {
            None
        }
    }

    /// Make `reference` available locally according to `policy` and return it.
    /// `runner image pull` uses [`PullPolicy::Always`]; steps use the configured policy.
    pub async fn pull(
        &self,
        reference: &str,
        policy: PullPolicy,
        progress: &dyn PullProgress,
    ) -> Result<PullOutcome, StoreError> {
        let r = ImageRef::parse(reference)?;
        let local = self.local(&r);
        // A digest names immutable content: once stored, no policy needs the registry.
        if let Some((_, rec)) = &local {
            if r.digest().is_some() || policy != PullPolicy::Always {
                return Ok(self.cached(&r, rec.clone()));
            }
        }
        if policy == PullPolicy::Never {
            return Err(StoreError::NotPresent(r.to_string()));
        }
        let client = RegistryClient::new(&r, &self.config)?;
        if let Some((Some(rref), rec)) = &local {
            // `Always` on a tag: one HEAD tells whether it moved.
            if client.head_digest(&r).await?.to_string() == rref.top_digest {
                self.write_ref(&r, &rref.top_digest, &rec.digest)?;
                let mut out = self.cached(&r, rec.clone());
                out.contacted_registry = true;
                return Ok(out);
            }
        }
        let _shared = self.lock("store.lock", false).await?;
        let resolved = client.resolve(&r).await?;
        let pinned = r.with_digest(&resolved.digest);
        let config_desc = resolved.manifest.config();
        let config_digest =
            Digest::parse(config_desc.digest().as_ref()).map_err(|e| StoreError::BadImage {
                reference: r.to_string(),
                reason: e.to_string(),
            })?;
        let config = client
            .small_blob(&pinned, &config_digest, config_desc.size())
            .await?;
        let layers: Vec<LayerRecord> = resolved
            .manifest
            .layers()
            .iter()
            .map(|d| LayerRecord {
                digest: d.digest().to_string(),
                size: d.size(),
                media_type: d.media_type().to_string(),
            })
            .collect();
        let record = image_record(&r, &resolved.digest, &config_digest, &config, layers)?;
        progress.event(PullEvent::Resolved {
            reference: r.to_string(),
            digest: record.digest.clone(),
            layers: record.layers.len(),
        });

        let client = &client;
        let results: Vec<(String, bool)> = futures_util::stream::iter(record.layers.clone())
            .map(|l| {
                let pinned = &pinned;
                async move {
                    let fetched = self
                        .ensure_layer(&l, progress, |digest| async move {
                            client
                                .blob_stream(pinned, &digest)
                                .await
                                .map_err(StoreError::from)
                        })
                        .await?;
                    Ok::<_, StoreError>((l.digest, fetched))
                }
            })
            .buffered(PARALLEL_LAYERS)
            .try_collect()
            .await?;

        self.write_record(&record)?;
        self.write_ref(&r, &resolved.top_digest.to_string(), &record.digest)?;
        let (downloaded, reused) = results.into_iter().partition::<Vec<_>, _>(|(_, f)| *f);
        Ok(PullOutcome {
            reference: r.to_string(),
            record,
            downloaded: downloaded.into_iter().map(|(d, _)| d).collect(),
            reused: reused.into_iter().map(|(d, _)| d).collect(),
            contacted_registry: true,
        })
    }

    fn cached(&self, r: &ImageRef, record: ImageRecord) -> PullOutcome {
        PullOutcome {
            reference: r.to_string(),
            reused: record.layers.iter().map(|l| l.digest.clone()).collect(),
            record,
            downloaded: Vec::new(),
            contacted_registry: false,
        }
    }

    /// Make sure layer `l` is unpacked in the store, fetching its blob with `open` if not.
    /// Returns whether this call unpacked it.
    pub(crate) async fn ensure_layer<F, Fut, S>(
        &self,
        l: &LayerRecord,
        progress: &dyn PullProgress,
        open: F,
    ) -> Result<bool, StoreError>
    where
        F: FnOnce(Digest) -> Fut,
        Fut: std::future::Future<Output = Result<S, StoreError>>,
        S: futures_util::Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let digest = Digest::parse(&l.digest).map_err(|e| StoreError::Verify {
            digest: l.digest.clone(),
            source: e,
        })?;
        check_layer_type(&l.media_type, &l.digest)?;
        let dir = self.layer_dir(&l.digest);
        let cached = || {
            progress.event(PullEvent::LayerCached {
                digest: l.digest.clone(),
                size: l.size,
            });
            Ok(false)
        };
        if dir.is_dir() {
            return cached();
        }
        let _lock = self
            .lock(&format!("{}.lock", digest.file_name()), true)
            .await?;
        if dir.is_dir() {
            // Another pull finished it while we waited.
            return cached();
        }
        let tmp = self.root.join("tmp").join(digest.file_name());
        remove_all(&tmp).map_err(io_err(&tmp))?;
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        progress.event(PullEvent::LayerStarted {
            digest: l.digest.clone(),
            size: l.size,
        });
        let result = self.fill_layer(&digest, l, &tmp, progress, open).await;
        match result {
            Ok(stats) => {
                fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
                progress.event(PullEvent::LayerDone {
                    digest: l.digest.clone(),
                    stats,
                });
                Ok(true)
            }
            Err(e) => {
                // Keep nothing of a layer that failed verification or unpacking.
                let _ = remove_all(&tmp);
                Err(e)
            }
        }
    }

    async fn fill_layer<F, Fut, S>(
        &self,
        digest: &Digest,
        l: &LayerRecord,
        tmp: &Path,
        progress: &dyn PullProgress,
        open: F,
    ) -> Result<UnpackStats, StoreError>
    where
        F: FnOnce(Digest) -> Fut,
        Fut: std::future::Future<Output = Result<S, StoreError>>,
        S: futures_util::Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let mut stream = open(digest.clone()).await?;
        // Download and unpack overlap: the network side feeds a bounded channel, a blocking
        // thread hashes, decompresses and writes files as the bytes arrive.
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
        let (d, size, dest) = (digest.clone(), l.size, tmp.to_path_buf());
        let worker = tokio::task::spawn_blocking(move || {
            unpack_blob(
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                },
                d,
                size,
                &dest,
            )
        });
        let mut done = 0u64;
        let mut last_report = 0u64;
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if let Ok(b) = &chunk {
                done += b.len() as u64;
                if done - last_report >= 1 << 20 || done == size {
                    last_report = done;
                    progress.event(PullEvent::LayerProgress {
                        digest: l.digest.clone(),
                        done,
                    });
                }
            }
            if tx.send(chunk).await.is_err() || failed {
                break; // the unpacker stopped (and says why) or the download failed
            }
        }
        drop(tx);
        worker.await.map_err(|e| StoreError::Layer {
            digest: l.digest.clone(),
            reason: format!("unpack thread failed: {e}"),
        })?
    }

    pub(crate) async fn lock(
        &self,
        name: &str,
        exclusive: bool,
    ) -> Result<Flock<File>, StoreError> {
        let path = self.root.join("locks").join(name);
        let p2 = path.clone();
        let res = tokio::task::spawn_blocking(move || {
            let f = open_lock_file(&p2)?;
            let arg = if exclusive {
                FlockArg::LockExclusive
            } else {
                FlockArg::LockShared
            };
            Flock::lock(f, arg).map_err(|(_, e)| io::Error::from(e))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r);
        res.map_err(io_err(&path))
    }

    /// The lock file a step's use of layer `name` (a `layers/` entry) is recorded with.
    fn use_lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("use-{name}"))
    }

    fn open_use_lock(&self, name: &str) -> Result<File, StoreError> {
        let path = self.use_lock_path(name);
        open_lock_file(&path).map_err(io_err(&path))
    }

    /// Exclusive use of layer `name` for deleting it, unless a step holds it.
    fn try_use_lock(&self, name: &str) -> Result<Option<Flock<File>>, StoreError> {
        match Flock::lock(self.open_use_lock(name)?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io_err(&self.use_lock_path(name))(io::Error::from(e))),
        }
    }

    /// Shared locks on every layer of `record` for as long as the returned value lives, so
    /// that `prune` leaves them alone; then checks they are all still there (a `prune` that
    /// ran between the lookup and the locks may have removed them).
    /// With `wait` false, `None` when `prune` is deleting one of them right now (the caller
    /// then waits off its async runtime).
    pub fn lease(
        &self,
        record: &ImageRecord,
        wait: bool,
    ) -> Result<Option<Vec<Flock<File>>>, StoreError> {
        let mut held = Vec::with_capacity(record.layers.len());
        let how = if wait {
            FlockArg::LockShared
        } else {
            FlockArg::LockSharedNonblock
        };
        for dir in self.layer_dirs(record) {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let lock = match Flock::lock(self.open_use_lock(&name)?, how) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io_err(&self.use_lock_path(&name))(io::Error::from(e))),
            };
            held.push(lock);
            if !dir.is_dir() {
                return Err(StoreError::BadImage {
                    reference: record.digest.clone(),
                    reason: format!("layer {} was pruned; pull the image again", dir.display()),
                });
            }
        }
        Ok(Some(held))
    }

    pub(crate) fn write_record(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let d = Digest::parse(&rec.digest).map_err(|e| StoreError::BadImage {
            reference: rec.digest.clone(),
            reason: e.to_string(),
        })?;
        write_json(&self.manifest_path(&d), rec)
    }

    pub(crate) fn write_ref(
        &self,
        r: &ImageRef,
        top_digest: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let rec = RefRecord {
            reference: r.canonical(),
            top_digest: top_digest.to_string(),
            digest: digest.to_string(),
            updated: now(),
        };
        write_json(&self.ref_path(&r.canonical()), &rec)
    }

    /// Every stored image, by reference; images no reference names are listed once, unnamed.
    pub fn list(&self) -> Result<Vec<ListEntry>, StoreError> {
        let refs = self.refs()?;
        let mut named = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for r in refs {
            let Ok(d) = Digest::parse(&r.digest) else {
                continue;
            };
            if let Some(rec) = read_json::<ImageRecord>(&self.manifest_path(&d)) {
                named.insert(rec.digest.clone());
                out.push(ListEntry {
                    reference: Some(r.reference),
                    record: rec,
                    updated: Some(r.updated),
                });
            }
        }
        for rec in self.records()? {
            if !named.contains(&rec.digest) {
                out.push(ListEntry {
                    reference: None,
                    record: rec,
                    updated: None,
                });
            }
        }
        Ok(out)
    }

    fn refs(&self) -> Result<Vec<RefRecord>, StoreError> {
        read_dir_json(&self.root.join("refs"))
    }

    fn records(&self) -> Result<Vec<ImageRecord>, StoreError> {
        read_dir_json(&self.root.join("manifests"))
    }

    /// Forget `reference` (a tag, or a digest: then every reference to that image). The
    /// image's record goes when no reference is left; its layers stay until `prune`.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>, StoreError> {
        let r = ImageRef::parse(reference)?;
        let refs = self.refs()?;
        let mut removed = Vec::new();
        let mut digests = Vec::new();
        for rr in &refs {
            let by_digest = r
                .digest()
                .is_some_and(|d| d.to_string() == rr.digest || d.to_string() == rr.top_digest);
            if rr.reference == r.canonical() || by_digest {
                let p = self.ref_path(&rr.reference);
                fs::remove_file(&p).map_err(io_err(&p))?;
                removed.push(rr.reference.clone());
                digests.push(rr.digest.clone());
            }
        }
        if let Some(d) = r.digest() {
            digests.push(d.to_string());
        }
        let left = self.refs()?;
        for d in digests {
            let Ok(dg) = Digest::parse(&d) else { continue };
            let p = self.manifest_path(&dg);
            if p.exists() && !left.iter().any(|x| x.digest == d) {
                fs::remove_file(&p).map_err(io_err(&p))?;
                if removed.is_empty() {
                    removed.push(d);
                }
            }
        }
        if removed.is_empty() {
            return Err(StoreError::NoSuchImage(r.to_string()));
        }
        Ok(removed)
    }

    /// Delete layers no stored image uses, and leftovers of interrupted pulls.
    pub async fn prune(&self) -> Result<PruneReport, StoreError> {
        let _exclusive = self.lock("store.lock", true).await?;
        let used: std::collections::HashSet<PathBuf> = self
            .records()?
            .iter()
            .flat_map(|r| self.layer_dirs(r))
            .collect();
        let mut report = PruneReport::default();
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers).map_err(io_err(&layers))? {
            let p = e.map_err(io_err(&layers))?.path();
            if used.contains(&p) {
                continue;
            }
            // A step of an image removed since it started still has these mounted: deleting
            // under a live overlay is undefined. Its lease is a shared lock; ours is exclusive
            // and held while deleting, so a step resolving it meanwhile waits, then finds it
            // gone and says so.
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let Some(_excl) = self.try_use_lock(&name)? else {
                report.layers_in_use += 1;
                continue;
            };
            remove_all(&p).map_err(io_err(&p))?;
            report.layers_removed += 1;
        }
        // With the exclusive lock held no pull is running, so everything in tmp/ is debris.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let p = e.map_err(io_err(&tmp))?.path();
            remove_all(&p).map_err(io_err(&p))?;
            report.temp_removed += 1;
        }
        Ok(report)
    }
}

/// Open (creating it if need be) a file that is only ever flocked, never written.
fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Decompress (by magic number: gzip, zstd or plain tar), unpack, verify. On an unpack error
/// the rest of the blob is still hashed, so a corrupt blob is reported as corrupt.
pub(crate) fn unpack_blob<R: Read>(
    reader: R,
    digest: Digest,
    size: u64,
    dest: &Path,
) -> Result<UnpackStats, StoreError> {
    let name = digest.to_string();
    let mut v = VerifyingReader::new(reader, digest, Some(size));
    let result = decompressor(&mut v)
        .map_err(UnpackError::Read)
        .and_then(|r| unpack::unpack(r, dest));
    let verdict = v.finish();
    match (result, verdict) {
        (_, Err(ReadError::Verify(source))) => Err(StoreError::Verify {
            digest: name,
            source,
        }),
        (Err(source), _) => Err(StoreError::Unpack {
            digest: name,
            source,
        }),
        (Ok(_), Err(ReadError::Io(e))) => Err(StoreError::Layer {
            digest: name,
            reason: format!("download failed: {e}"),
        }),
        (Ok(stats), Ok(())) => Ok(stats),
    }
}

pub(crate) fn decompressor<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br)?)
    } else {
        Box::new(br)
    })
}

/// Only filesystem layers can be unpacked; artifacts (Helm charts, wasm) are refused by name.
fn check_layer_type(media_type: &str, digest: &str) -> Result<(), StoreError> {
    let ok =
        media_type.is_empty() || media_type.contains(".tar") || media_type.contains("rootfs.diff");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Layer {
            digest: digest.into(),
            reason: format!("media type {media_type} is not a filesystem layer"),
        })
    }
}

/// Blocking `Read` over the chunks the download task sends.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// The image config fields a sandbox needs. Read leniently: configs in the wild carry
/// nulls and extra fields that strict typed models reject.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfigFile {
    config: Option<RunConfig>,
    os: String,
    architecture: String,
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RunConfig {
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RootFs {
    diff_ids: Vec<String>,
}

pub(crate) fn image_record(
    r: &ImageRef,
    digest: &Digest,
    config_digest: &Digest,
    config: &[u8],
    layers: Vec<LayerRecord>,
) -> Result<ImageRecord, StoreError> {
    let bad = |reason: String| StoreError::BadImage {
        reference: r.to_string(),
        reason,
    };
    let cfg: ConfigFile =
        serde_json::from_slice(config).map_err(|e| bad(format!("invalid image config: {e}")))?;
    if let Some(rootfs) = &cfg.rootfs {
        if rootfs.diff_ids.len() != layers.len() {
            return Err(bad(format!(
                "manifest lists {} layers but the config {} diff_ids",
                layers.len(),
                rootfs.diff_ids.len()
            )));
        }
    }
    if !cfg.os.is_empty() && cfg.os != "linux" {
        return Err(bad(format!("it is a {} image, not linux", cfg.os)));
    }
    let run = cfg.config.unwrap_or_default();
    Ok(ImageRecord {
        digest: digest.to_string(),
        config_digest: config_digest.to_string(),
        layers,
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        os: cfg.os,
        architecture: cfg.architecture,
    })
}

/// A reference as a file name: `/` is the only byte a name cannot hold; `%` is escaped so
/// the mapping stays one-to-one.
fn encode_ref(canonical: &str) -> String {
    canonical.replace('%', "%25").replace('/', "%2F")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn read_dir_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(v) = read_json(&p) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Write `value` to `path` atomically: a temp file beside it (readers skip names not ending in
/// `.json`), then rename.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| io_err(path)(io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let t = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    fs::write(t.path(), body).map_err(io_err(t.path()))?;
    t.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

fn remove_all(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => fs::remove_file(p),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_are_one_to_one() {
        assert_eq!(encode_ref("a/b:c"), "a%2Fb:c");
        assert_ne!(encode_ref("a/b"), encode_ref("a%2Fb"));
    }

    #[test]
    fn lenient_config_and_layer_count_check() {
        let r = ImageRef::parse("x").unwrap();
        let d = Digest::of(b"m");
        let cfg = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/w","Cmd":null},
                       "rootfs":{"type":"layers","diff_ids":["sha256:00"]},"container_config":{}}"#;
        let l = LayerRecord {
            digest: d.to_string(),
            size: 1,
            media_type: String::new(),
        };
        let rec = image_record(&r, &d, &d, cfg, vec![l.clone()]).unwrap();
        assert_eq!(rec.env, vec!["A=1".to_string()]);
        assert_eq!(rec.working_dir.as_deref(), Some("/w"));
        assert!(image_record(&r, &d, &d, cfg, vec![l.clone(), l]).is_err());
    }
}
