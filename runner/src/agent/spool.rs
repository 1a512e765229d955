//! The spool: every job's log goes to disk first, and the uploader sends it from there. While
//! the coordinator is unreachable the log keeps growing here; when it comes back the uploader
//! resumes from the acknowledged offset. It also survives an agent restart, so a finished job
//! whose report did not get through is reported by the next `runner run`.

use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use protocol::FinishRequest;

/// What is needed to finish reporting a job after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpoolMeta {
    pub url: String,
    pub id: i64,
    pub attempt: u32,
    /// The job token (the spool is mode 0700 in a 0700 data dir).
    pub token: String,
}

pub struct Spool {
    dir: PathBuf,
    file: std::fs::File,
    size: AtomicU64,
    /// sha256 of the log so far, kept while appending so the final checksum needs no re-read.
    hasher: std::sync::Mutex<sha2::Sha256>,
    /// Fires after every append.
    pub notify: Notify,
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("size", &self.size())
            .finish()
    }
}

impl Spool {
    pub fn create(dir: PathBuf, meta: &SpoolMeta) -> std::io::Result<Spool> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut m = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("job.json"))?;
        m.write_all(&serde_json::to_vec(meta).map_err(std::io::Error::other)?)?;
        Self::open(dir).map(|(_, s)| s)
    }

    pub fn open(dir: PathBuf) -> std::io::Result<(SpoolMeta, Spool)> {
        let meta: SpoolMeta = serde_json::from_slice(&std::fs::read(dir.join("job.json"))?)
            .map_err(std::io::Error::other)?;
        let file = private_file(&dir.join("log"))?;
        let size = file.metadata()?.len();
        let spool = Spool {
            dir,
            file,
            size: AtomicU64::new(size),
            hasher: std::sync::Mutex::new(sha2::Digest::new()),
            notify: Notify::new(),
        };
        // A spool reopened after a restart: hash what it already holds.
        let (_, _) = spool.checksum_by_reading()?;
        Ok((meta, spool))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn append(&self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        // One writer per job; the lock keeps the hash and the length in step.
        let mut h = self.hasher.lock().unwrap_or_else(|p| p.into_inner());
        (&self.file).write_all(data)?;
        sha2::Digest::update(&mut *h, data);
        self.size.fetch_add(data.len() as u64, Ordering::AcqRel);
        drop(h);
        self.notify.notify_waiters();
        Ok(())
    }

    pub fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let end = self.size();
        let len = end.saturating_sub(offset).min(max as u64) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// `sha256:<hex>` and length of the whole log.
    pub fn checksum(&self) -> std::io::Result<(String, u64)> {
        use sha2::Digest as _;
        let h = self.hasher.lock().unwrap_or_else(|p| p.into_inner());
        let size = self.size();
        Ok((
            format!("sha256:{}", hex::encode(h.clone().finalize())),
            size,
        ))
    }

    /// Hashes the file from disk (and resets the running hash to it).
    fn checksum_by_reading(&self) -> std::io::Result<(String, u64)> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let size = self.size();
        let mut off = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while off < size {
            let n = ((size - off) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], off)?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        *self.hasher.lock().unwrap_or_else(|p| p.into_inner()) = h.clone();
        Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
    }

    pub fn write_final(&self, fin: &FinishRequest) -> std::io::Result<()> {
        self.file.sync_data()?;
        let tmp = self.dir.join("final.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(fin).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, self.dir.join("final.json"))
    }

    pub fn read_final(&self) -> Option<FinishRequest> {
        serde_json::from_slice(&std::fs::read(self.dir.join("final.json")).ok()?).ok()
    }

    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SpoolMeta {
            url: "http://x".into(),
            id: 7,
            attempt: 1,
            token: "job_t".into(),
        };
        let s = Spool::create(dir.path().join("7.1"), &meta).unwrap();
        s.append(b"hello ").unwrap();
        s.append(b"world").unwrap();
        assert_eq!(s.size(), 11);
        assert_eq!(s.read_at(6, 100).unwrap(), b"world");
        assert_eq!(s.read_at(0, 5).unwrap(), b"hello");
        assert!(s.read_final().is_none());
        let fin = FinishRequest {
            status: protocol::FinalStatus::Success,
            failure_reason: None,
            steps: vec![],
            checksum: s.checksum().unwrap().0,
            log_size: 11,
        };
        s.write_final(&fin).unwrap();
        drop(s);
        let (m, s) = Spool::open(dir.path().join("7.1")).unwrap();
        assert_eq!((m.id, m.token.as_str()), (7, "job_t"));
        assert_eq!(s.size(), 11);
        assert_eq!(
            s.checksum().unwrap().0,
            protocol::checksum_of(b"hello world")
        );
        assert_eq!(s.read_final().unwrap().log_size, 11);
        s.remove().unwrap();
        assert!(!dir.path().join("7.1").exists());
    }
}
