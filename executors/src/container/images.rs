//! Image sources that need no registry: a directory on this machine used as the single layer
//! of an image. Used by tests and benchmarks (with a busybox root built by
//! [`build_busybox_rootfs`]) until the OCI image store is wired in, and useful for air-gapped
//! hosts that keep unpacked root filesystems.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::executor::{ExecutorError, ImageProvider, LogChunk, ResolvedImage};

/// Maps image references to unpacked root filesystem directories.
#[derive(Debug, Clone, Default)]
pub struct LocalDirImages {
    images: BTreeMap<String, PathBuf>,
}

impl LocalDirImages {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `dir` as the image `reference`.
    pub fn with(mut self, reference: &str, dir: impl Into<PathBuf>) -> Self {
        self.images.insert(reference.to_string(), dir.into());
        self
    }
}

#[async_trait]
impl ImageProvider for LocalDirImages {
    async fn resolve(
        &self,
        reference: &str,
        _output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError> {
        let dir = self.images.get(reference).ok_or_else(|| {
            ExecutorError::Backend(format!(
                "image {reference:?} is not known here (local images: {})",
                self.images.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(ResolvedImage {
            digest: format!("dir:{}", dir.display()),
            layers: vec![dir.clone()],
            env: vec![],
            working_dir: None,
            lease: Default::default(),
        })
    }
}

/// Build a minimal root filesystem in `dir` from the host's static busybox: `/bin/busybox`
/// plus one symlink per applet, and the few files a shell expects.
pub fn build_busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "busybox not found (install busybox-static)",
            )
        })?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    let list = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join(applet);
        if applet == "bin/busybox" || link.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        std::os::unix::fs::symlink(target, link)?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(dir.join("etc/hostname"), "busybox\n")?;
    Ok(())
}
