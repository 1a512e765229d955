//! Job logs: one append-only file per job attempt under `<data>/logs/`. The file is the truth
//! about how much log the coordinator holds (its length), so a coordinator killed mid-write
//! comes back with a consistent length and the runner resumes from there. Followers wait on a
//! per-job `Notify` that fires on every append and every state change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Notify;

use protocol::{plan_patch, ContentRange, PatchPlan};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The patch starts past what is held.
    #[error("range starts at {start} but the log holds {size} bytes")]
    Gap { start: u64, size: u64 },
    #[error("Content-Range says {expected} bytes but the body has {got}")]
    Length { expected: u64, got: u64 },
    #[error("log file: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Default)]
struct JobLog {
    /// Serialises appends to one job's file; holds the open file and its length once used,
    /// so an append is one write, not an open, a stat and a write.
    lock: tokio::sync::Mutex<Option<OpenLog>>,
}

struct OpenLog {
    file: Arc<std::fs::File>,
    size: u64,
    /// sha256 of everything appended since the file was created, so the final checksum needs
    /// no second read; `None` when the file already held bytes when opened (after a restart).
    hasher: Option<sha2::Sha256>,
}

impl std::fmt::Debug for OpenLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenLog").field("size", &self.size).finish()
    }
}

#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    logs: Mutex<HashMap<(i64, u32), Arc<JobLog>>>,
    notifies: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl LogStore {
    pub fn new(dir: PathBuf) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(&dir)?;
        Ok(LogStore {
            dir,
            logs: Mutex::default(),
            notifies: Mutex::default(),
        })
    }

    pub fn path(&self, job: i64, attempt: u32) -> PathBuf {
        self.dir.join(format!("{job}.{attempt}.log"))
    }

    fn job_log(&self, job: i64, attempt: u32) -> Arc<JobLog> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.entry((job, attempt)).or_default().clone()
    }

    /// The notifier followers of `job` wait on.
    pub fn notify(&self, job: i64) -> Arc<Notify> {
        let mut n = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        n.entry(job).or_default().clone()
    }

    /// Wakes followers (after an append or a state change).
    pub fn wake(&self, job: i64) {
        self.notify(job).notify_waiters();
    }

    pub async fn size(&self, job: i64, attempt: u32) -> std::io::Result<u64> {
        match tokio::fs::metadata(self.path(job, attempt)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Applies a patch (idempotently); returns the sizes before and after.
    pub async fn append(
        &self,
        job: i64,
        attempt: u32,
        range: ContentRange,
        body: bytes::Bytes,
    ) -> Result<(u64, u64), LogError> {
        if range.len() != body.len() as u64 {
            return Err(LogError::Length {
                expected: range.len(),
                got: body.len() as u64,
            });
        }
        let log = self.job_log(job, attempt);
        let mut guard = log.lock.lock().await;
        if guard.is_none() {
            let path = self.path(job, attempt);
            let opened = tokio::task::spawn_blocking(move || {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                let size = file.metadata()?.len();
                use sha2::Digest as _;
                Ok::<_, std::io::Error>(OpenLog {
                    file: Arc::new(file),
                    size,
                    hasher: (size == 0).then(sha2::Sha256::new),
                })
            })
            .await
            .map_err(std::io::Error::other)??;
            *guard = Some(opened);
        }
        let Some(open) = guard.as_mut() else {
            unreachable!("opened above")
        };
        let size = open.size;
        let skip = match plan_patch(size, range) {
            PatchPlan::Gap => {
                return Err(LogError::Gap {
                    start: range.start,
                    size,
                })
            }
            PatchPlan::Duplicate => return Ok((size, size)),
            PatchPlan::Append { skip } => skip as usize,
        };
        let file = open.file.clone();
        let data = body.slice(skip..);
        let n = data.len() as u64;
        let mut hasher = open.hasher.take();
        let (written, hasher) = tokio::task::spawn_blocking(move || {
            let r = (&*file).write_all(&data);
            if let (Ok(()), Some(h)) = (&r, hasher.as_mut()) {
                use sha2::Digest as _;
                h.update(&data);
            }
            (r, hasher)
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Err(e) = written {
            // A partial write leaves the length unknown: read it again next time.
            *guard = None;
            return Err(e.into());
        }
        open.hasher = hasher;
        open.size += n;
        let new = open.size;
        drop(guard);
        self.wake(job);
        Ok((size, new))
    }

    /// Forgets the open file of a job attempt that ended.
    pub fn close(&self, job: i64, attempt: u32) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.remove(&(job, attempt));
    }

    /// Up to `max` bytes from `offset`.
    pub async fn read(
        &self,
        job: i64,
        attempt: u32,
        offset: u64,
        max: usize,
    ) -> std::io::Result<Vec<u8>> {
        let mut f = match tokio::fs::File::open(self.path(job, attempt)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    /// `sha256:<hex>` and length of the whole log.
    pub async fn checksum(&self, job: i64, attempt: u32) -> std::io::Result<(String, u64)> {
        use sha2::Digest as _;
        {
            let log = self.job_log(job, attempt);
            let guard = log.lock.lock().await;
            if let Some(OpenLog {
                hasher: Some(h),
                size,
                ..
            }) = guard.as_ref()
            {
                return Ok((
                    format!("sha256:{}", hex::encode(h.clone().finalize())),
                    *size,
                ));
            }
        }
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        match tokio::fs::File::open(self.path(job, attempt)).await {
            Ok(mut f) => {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), len))
    }

    /// Drops the log (the runner resends it from 0 after a checksum mismatch).
    pub async fn reset(&self, job: i64, attempt: u32) -> std::io::Result<()> {
        let log = self.job_log(job, attempt);
        let mut guard = log.lock.lock().await;
        *guard = None;
        match tokio::fs::remove_file(self.path(job, attempt)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::checksum_of;

    fn r(start: u64, body: &[u8]) -> ContentRange {
        ContentRange::for_body(start, body.len() as u64)
    }

    #[tokio::test]
    async fn append_is_idempotent_and_refuses_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::new(dir.path().join("logs")).unwrap();
        assert_eq!(
            s.append(1, 1, r(0, b"hello "), bytes::Bytes::from_static(b"hello "))
                .await
                .unwrap()
                .1,
            6
        );
        // The same patch again (lost answer, resend): accepted once.
        assert_eq!(
            s.append(1, 1, r(0, b"hello "), bytes::Bytes::from_static(b"hello "))
                .await
                .unwrap()
                .1,
            6
        );
        // An overlapping resend: only the new tail lands.
        assert_eq!(
            s.append(
                1,
                1,
                r(3, b"lo world"),
                bytes::Bytes::from_static(b"lo world")
            )
            .await
            .unwrap(),
            (6, 11)
        );
        // A gap: refused with the current size.
        match s
            .append(1, 1, r(20, b"x"), bytes::Bytes::from_static(b"x"))
            .await
        {
            Err(LogError::Gap { size: 11, .. }) => {}
            other => panic!("expected a gap, got {other:?}"),
        }
        // A range that does not match the body.
        assert!(matches!(
            s.append(
                1,
                1,
                ContentRange { start: 11, end: 20 },
                bytes::Bytes::from_static(b"x")
            )
            .await,
            Err(LogError::Length { .. })
        ));
        assert_eq!(s.read(1, 1, 0, 100).await.unwrap(), b"hello world");
        assert_eq!(s.read(1, 1, 6, 3).await.unwrap(), b"wor");
        let (sum, len) = s.checksum(1, 1).await.unwrap();
        assert_eq!((sum.clone(), len), (checksum_of(b"hello world"), 11));
        // A coordinator restarted on the same files reads the file instead: same answer.
        let again = LogStore::new(dir.path().join("logs")).unwrap();
        assert_eq!(again.checksum(1, 1).await.unwrap(), (sum, 11));
        // Attempts are separate logs.
        assert_eq!(s.size(1, 2).await.unwrap(), 0);
        s.reset(1, 1).await.unwrap();
        assert_eq!(s.size(1, 1).await.unwrap(), 0);
    }
}
