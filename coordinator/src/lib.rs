//! The coordinator (`runner serve`): holds pipelines, runs and jobs, hands jobs to runners
//! (`api.rs`: the runner protocol of docs/protocol.md), serves operators and users
//! (`admin.rs`, `runs.rs`), stores logs (`logs.rs`) and state (`store.rs` + `sqlite.rs`), and
//! declares runners lost when their jobs stop heartbeating.

pub mod admin;
pub mod api;
pub mod auth;
pub mod dispatch;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod runs;
pub mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::CoordinatorMetrics;
use logs::LogStore;
use protocol::JobState;
use store::{Finish, Store, StoreError};

/// Why the coordinator could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or directory of the data dir could not be made or read.
    #[error("{what} {path}: {source}")]
    DataDir {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {source}")]
    Database { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn data_dir_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::DataDir { what, path, source }
}

/// Name of the admin token file in the data dir (mode 0600), found by local CLI calls.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Name of the file holding the coordinator's URL, written at start-up.
pub const URL_FILE: &str = "coordinator-url";

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A running job not heard from for this long has lost its runner.
    pub heartbeat_timeout: Duration,
    /// Longest a job request is held open.
    pub poll_timeout: Duration,
    /// Largest accepted source upload.
    pub max_upload: usize,
}

/// Shared state of all request handlers.
pub struct Coordinator {
    pub store: Arc<dyn Store>,
    pub logs: LogStore,
    pub settings: Settings,
    admin_hash: String,
    /// Fires when jobs enter the queue (wakes long-polling runners).
    pub queue: Notify,
    /// Last contact per running job, and per runner (for `runners ls`).
    job_seen: Mutex<HashMap<i64, Instant>>,
    runner_seen: Mutex<HashMap<i64, Instant>>,
    started: Instant,
    /// One run advances at a time, so two finishing jobs cannot both queue a dependent.
    advance: tokio::sync::Mutex<()>,
    pub metrics: CoordinatorMetrics,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    /// Opens the store and logs in the data dir, creating the admin token on first start.
    pub async fn open(settings: Settings) -> Result<Arc<Coordinator>, ServeError> {
        let dir = &settings.data_dir;
        create_private_dir(dir)?;
        let store = sqlite::SqliteStore::open(&dir.join("coordinator.db")).map_err(|source| {
            ServeError::Database {
                path: dir.clone(),
                source,
            }
        })?;
        restrict(&dir.join("coordinator.db"))?;
        let admin = load_or_create_admin_token(dir)?;
        let logs = LogStore::new(dir.join("logs"))
            .map_err(data_dir_error("cannot create", &dir.join("logs")))?;
        std::fs::create_dir_all(dir.join("sources"))
            .map_err(data_dir_error("cannot create", &dir.join("sources")))?;
        Ok(Arc::new(Coordinator {
            store: Arc::new(store),
            logs,
            admin_hash: auth::hash(&admin),
            settings,
            queue: Notify::new(),
            job_seen: Mutex::default(),
            runner_seen: Mutex::default(),
            started: Instant::now(),
            advance: tokio::sync::Mutex::new(()),
            metrics: CoordinatorMetrics::new(),
        }))
    }

    pub fn is_admin(&self, token: &str) -> bool {
        auth::hash(token) == self.admin_hash
    }

    pub fn source_path(&self, run: i64) -> PathBuf {
        self.settings
            .data_dir
            .join("sources")
            .join(format!("{run}.tar.gz"))
    }

    pub fn saw_job(&self, job: i64, runner: Option<i64>) {
        let now = Instant::now();
        lock(&self.job_seen).insert(job, now);
        if let Some(r) = runner {
            lock(&self.runner_seen).insert(r, now);
        }
    }

    pub fn saw_runner(&self, runner: i64) {
        lock(&self.runner_seen).insert(runner, Instant::now());
    }

    /// Whether a runner was heard from within the heartbeat timeout.
    pub fn runner_online(&self, runner: i64) -> bool {
        lock(&self.runner_seen)
            .get(&runner)
            .is_some_and(|t| t.elapsed() < self.settings.heartbeat_timeout)
    }

    /// Applies the DAG rules to a run after any of its jobs changed.
    pub async fn progress(&self, run: i64) -> Result<(), store::StoreError> {
        let _one = self.advance.lock().await;
        // The common case, a job ending while others still run and none waits: nothing to do,
        // and no need to load the whole run.
        let (waiting, active) = self.store.unsettled(run).await?;
        if waiting == 0 && active > 0 {
            return Ok(());
        }
        let jobs = self.store.run_jobs(run).await?;
        let (changes, outcome) = dispatch::advance(&jobs);
        let batch: Vec<_> = changes
            .iter()
            .map(|c| (c.job, c.from, c.to, c.reason.clone()))
            .collect();
        let applied = self.store.transitions(&batch).await?;
        let mut queued = false;
        for (c, ok) in changes.iter().zip(applied) {
            if ok {
                queued |= c.to == JobState::Pending;
                self.logs.wake(c.job);
            }
        }
        if queued {
            self.queue.notify_waiters();
        }
        if let Some(state) = outcome {
            if let Some(r) = self.store.run(run).await? {
                if r.state == "running" {
                    tracing::info!(run, state, "run finished");
                    self.store.set_run_state(run, state, true).await?;
                }
            }
        }
        Ok(())
    }

    /// A job's attempt ended in failure: retry it if allowed, else record the failure.
    pub async fn fail_or_retry(
        &self,
        job: &store::Job,
        finish: &Finish,
    ) -> Result<(), store::StoreError> {
        if dispatch::should_retry(job) {
            let reason = format!(
                "attempt {} failed ({}); retrying",
                job.attempt,
                finish.reason.as_deref().unwrap_or("failed")
            );
            if self.store.requeue(job.id, job.attempt, &reason).await? {
                tracing::info!(job = job.id, attempt = job.attempt + 1, "job retried");
                self.queue.notify_waiters();
            }
        } else {
            self.store.finish(job.id, job.attempt, finish).await?;
        }
        lock(&self.job_seen).remove(&job.id);
        self.logs.close(job.id, job.attempt);
        self.logs.wake(job.id);
        Ok(())
    }

    /// Fails (or retries) running jobs whose runner has not been heard from in time.
    async fn reap(&self) -> Result<(), ServeError> {
        let timeout = self.settings.heartbeat_timeout;
        for (id, attempt, runner) in self.store.running().await? {
            let last = lock(&self.job_seen).get(&id).copied();
            // After a restart, every runner gets a full timeout to come back.
            let last = last.unwrap_or(self.started);
            if last.elapsed() <= timeout {
                continue;
            }
            let Some(job) = self.store.job(id).await? else {
                continue;
            };
            if job.state != JobState::Running || job.attempt != attempt {
                continue;
            }
            tracing::warn!(job = id, runner, "runner lost: no heartbeat in {timeout:?}");
            self.metrics.runners_lost.inc();
            let (checksum, log_size) = self.logs.checksum(id, attempt).await?;
            let finish = Finish {
                state: JobState::Failed,
                reason: Some(format!(
                    "runner lost: runner {runner} sent no heartbeat for {:.1} s",
                    timeout.as_secs_f64()
                )),
                steps: job.steps.clone(),
                checksum,
                log_size,
            };
            self.fail_or_retry(&job, &finish).await?;
            self.progress(job.run_id).await?;
        }
        Ok(())
    }

    /// Runs the lost-runner check until `stop`.
    pub async fn reaper(self: Arc<Self>, stop: CancellationToken) {
        let tick = (self.settings.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            if let Err(e) = self.reap().await {
                tracing::error!(error = %e, "lost-runner check failed");
            }
        }
    }

    /// Finishes runs that were mid-way when the coordinator stopped (e.g. a job finished just
    /// before a crash, its dependents not yet queued).
    pub async fn recover(&self) -> Result<(), store::StoreError> {
        for run in self.store.active_runs().await? {
            self.progress(run).await?;
        }
        Ok(())
    }
}

/// Binds, writes the URL file, and serves until SIGTERM/SIGINT.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let coord = Coordinator::open(settings.clone()).await?;
    coord.recover().await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let url_file = settings.data_dir.join(URL_FILE);
    std::fs::write(&url_file, &url).map_err(data_dir_error("cannot write", &url_file))?;
    println!("runner coordinator listening on {url}");
    println!(
        "admin token: {}",
        settings.data_dir.join(ADMIN_TOKEN_FILE).display()
    );
    tracing::info!(%url, data_dir = %settings.data_dir.display(), "coordinator started");
    let stop = CancellationToken::new();
    tokio::spawn(coord.clone().reaper(stop.clone()));
    let app = api::router(coord.clone());
    let shutdown = {
        let stop = stop.clone();
        async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("coordinator shutting down");
            stop.cancel();
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(data_dir_error("cannot create the data dir", dir))
}

/// Makes a file readable by its owner only.
fn restrict(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(data_dir_error("cannot restrict", path))
}

fn load_or_create_admin_token(dir: &Path) -> Result<String, ServeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(data_dir_error("cannot read", &path)(e)),
    }
    let token = auth::new_token("adm")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(data_dir_error("cannot create", &path))?;
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .map_err(data_dir_error("cannot write", &path))?;
    tracing::info!(path = %path.display(), "admin token created");
    Ok(token)
}
