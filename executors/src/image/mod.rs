//! OCI images: pull from registries (or import from files), verify, and unpack into a
//! content-addressed layer store shared by the container and VM executors.
//!
//! - [`reference`]: what users write (`alpine:3.20`, `127.0.0.1:5000/x@sha256:...`)
//! - [`auth`]: the `[registries]` config section, credentials, http policy, pull policy
//! - [`registry`]: `oci-client` calls, index -> platform manifest
//! - [`verify`]: digests and a verifying reader
//! - [`unpack`]: one layer tar -> one directory, overlayfs-style, hostile input refused
//! - [`store`]: the on-disk store, locks, pull, ls/rm/prune
//! - [`import`]: OCI layout directories and `docker save` tarballs

pub mod auth;
pub mod import;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;
pub mod verify;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use auth::{Credential, PullPolicy, RegistryConfig};
pub use reference::ImageRef;
pub use store::{
    ImageRecord, ImageStore, ListEntry, NoProgress, PullEvent, PullOutcome, PullProgress,
    StoreError,
};

use crate::executor::{ExecutorError, ImageProvider, LayerLease, LogChunk, ResolvedImage, Stream};

/// Pull progress as `System` log lines of the step that needs the image.
struct LogProgress<'a> {
    output: &'a mpsc::Sender<LogChunk>,
}

impl PullProgress for LogProgress<'_> {
    fn event(&self, event: PullEvent) {
        let line = match event {
            PullEvent::Resolved {
                reference,
                digest,
                layers,
            } => format!("pulling {reference} ({digest}, {layers} layers)\n"),
            PullEvent::LayerStarted { digest, size } => {
                format!(
                    "  layer {} ({}) downloading\n",
                    short(&digest),
                    human_size(size)
                )
            }
            PullEvent::LayerDone { digest, stats } => format!(
                "  layer {} done ({} entries, {} unpacked)\n",
                short(&digest),
                stats.entries,
                human_size(stats.bytes)
            ),
            PullEvent::LayerCached { .. } | PullEvent::LayerProgress { .. } => return,
        };
        // Progress is best effort: a full log channel must not stall the pull.
        let _ = self.output.try_send(LogChunk::new(Stream::System, line));
    }
}

#[async_trait]
impl ImageProvider for ImageStore {
    async fn resolve(
        &self,
        reference: &str,
        output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError> {
        let progress = LogProgress { output };
        let out = self
            .pull(reference, self.config().pull_policy, &progress)
            .await
            .map_err(|e| ExecutorError::Backend(format!("image {reference}: {e}")))?;
        let failed =
            |e: &dyn std::fmt::Display| ExecutorError::Backend(format!("image {reference}: {e}"));
        let held = match self.lease(&out.record, false).map_err(|e| failed(&e))? {
            Some(held) => held,
            // `prune` holds one of the layers: wait for it off the runtime.
            None => {
                let (store, record) = (self.clone(), out.record.clone());
                tokio::task::spawn_blocking(move || store.lease(&record, true))
                    .await
                    .map_err(|e| failed(&e))?
                    .map_err(|e| failed(&e))?
                    .unwrap_or_default()
            }
        };
        Ok(ResolvedImage {
            layers: self.layer_dirs(&out.record),
            digest: out.record.digest,
            env: out.record.env,
            working_dir: out.record.working_dir,
            lease: LayerLease::new(held),
        })
    }
}

/// `sha256:0123456789ab...` -> `0123456789ab`.
pub fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|x| x.1).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Bytes for humans: `61.2 MB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests;
