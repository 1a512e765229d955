//! The default [`Store`]: one SQLite file in the data dir (rusqlite, SQLite compiled in, so
//! nothing to install). WAL mode: readers never block the writer, and a killed coordinator
//! loses at most the transaction in flight.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::store::{
    Finish, Job, NewJob, NewRun, Pending, RegToken, Result, Run, Runner, Store, StoreError,
};
use protocol::{JobState, StepReport};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reg_tokens(
  hash TEXT PRIMARY KEY, labels TEXT NOT NULL, isolations TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runners(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
  labels TEXT NOT NULL, isolations TEXT NOT NULL, concurrent INTEGER NOT NULL,
  paused INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, event TEXT NOT NULL,
  branch TEXT NOT NULL, secrets TEXT NOT NULL, created INTEGER NOT NULL, finished INTEGER);
CREATE TABLE IF NOT EXISTS jobs(
  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL,
  spec TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 1,
  runner_id INTEGER, token_hash TEXT UNIQUE, failure_reason TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0, steps TEXT NOT NULL DEFAULT '[]',
  checksum TEXT, log_size INTEGER NOT NULL DEFAULT 0,
  labels TEXT NOT NULL, isolations TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_id);
CREATE TABLE IF NOT EXISTS secrets(name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

const JOB_COLS: &str = "id, run_id, spec, state, attempt, runner_id, failure_reason, \
     cancel_requested, steps, checksum, log_size, labels, isolations";

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    #[cfg(test)]
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteStore> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A run's secrets are blanked when it ends and deleted secrets are gone: zero what they
        // leave in freed space instead of keeping it in the file (see `set_run_state`).
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async threads.
    async fn with<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite itself inconsistent (every
            // change is a transaction), so a poisoned lock is still usable.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising our own plain data types cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn state_of(s: &str) -> rusqlite::Result<JobState> {
    JobState::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown job state {s:?}").into(),
        )
    })
}

fn job_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        run_id: r.get(1)?,
        spec: from_json(&r.get::<_, String>(2)?)?,
        state: state_of(&r.get::<_, String>(3)?)?,
        attempt: r.get(4)?,
        runner_id: r.get(5)?,
        failure_reason: r.get(6)?,
        cancel_requested: r.get(7)?,
        steps: from_json::<Vec<StepReport>>(&r.get::<_, String>(8)?)?,
        checksum: r.get(9)?,
        log_size: r.get::<_, i64>(10)? as u64,
        labels: from_json(&r.get::<_, String>(11)?)?,
        isolations: from_json(&r.get::<_, String>(12)?)?,
    })
}

fn runner_row(r: &Row<'_>) -> rusqlite::Result<Runner> {
    Ok(Runner {
        id: r.get(0)?,
        name: r.get(1)?,
        labels: from_json(&r.get::<_, String>(2)?)?,
        isolations: from_json(&r.get::<_, String>(3)?)?,
        concurrent: r.get(4)?,
        paused: r.get(5)?,
    })
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        event: r.get(3)?,
        branch: r.get(4)?,
        secrets: from_json(&r.get::<_, String>(5)?)?,
        created: r.get(6)?,
    })
}

const RUNNER_COLS: &str = "id, name, labels, isolations, concurrent, paused";
const RUN_COLS: &str = "id, name, state, event, branch, secrets, created";

#[async_trait]
impl Store for SqliteStore {
    async fn create_reg_token(&self, hash: &str, token: &RegToken) -> Result<()> {
        let hash = hash.to_string();
        let (labels, isolations) = (to_json(&token.labels), to_json(&token.isolations));
        self.with(move |c| {
            c.execute(
                "INSERT INTO reg_tokens(hash, labels, isolations, created) VALUES (?1,?2,?3,?4)",
                params![hash, labels, isolations, now()],
            )?;
            Ok(())
        })
        .await
    }

    async fn reg_token(&self, hash: &str) -> Result<Option<RegToken>> {
        let hash = hash.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT labels, isolations FROM reg_tokens WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(RegToken {
                        labels: from_json(&r.get::<_, String>(0)?)?,
                        isolations: from_json(&r.get::<_, String>(1)?)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn create_runner(
        &self,
        name: &str,
        token_hash: &str,
        labels: &[String],
        isolations: &[String],
        concurrent: u32,
    ) -> Result<i64> {
        let (name, hash) = (name.to_string(), token_hash.to_string());
        let (labels, isolations) = (to_json(&labels), to_json(&isolations));
        self.with(move |c| {
            c.execute(
                "INSERT INTO runners(name, token_hash, labels, isolations, concurrent, created)
                 VALUES (?1,?2,?3,?4,?5,?6)",
                params![name, hash, labels, isolations, concurrent, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn runner_by_token(&self, hash: &str) -> Result<Option<Runner>> {
        let hash = hash.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {RUNNER_COLS} FROM runners WHERE token_hash = ?1"),
                [hash],
                runner_row,
            )
            .optional()?)
        })
        .await
    }

    async fn runners(&self) -> Result<Vec<Runner>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {RUNNER_COLS} FROM runners ORDER BY id"))?;
            let rows = st.query_map([], runner_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_runner_paused(&self, id: i64, paused: bool) -> Result<bool> {
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE runners SET paused = ?2 WHERE id = ?1",
                params![id, paused],
            )? == 1)
        })
        .await
    }

    async fn delete_runner(&self, id: i64) -> Result<bool> {
        self.with(move |c| Ok(c.execute("DELETE FROM runners WHERE id = ?1", [id])? == 1))
            .await
    }

    async fn create_run(&self, run: &NewRun, jobs: &[NewJob]) -> Result<i64> {
        let run = run.clone();
        let jobs = jobs.to_vec();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO runs(name, state, event, branch, secrets, created)
                 VALUES (?1, 'running', ?2, ?3, ?4, ?5)",
                params![
                    run.name,
                    run.event,
                    run.branch,
                    to_json(&run.secrets),
                    now()
                ],
            )?;
            let run_id = tx.last_insert_rowid();
            for (idx, j) in jobs.iter().enumerate() {
                tx.execute(
                    "INSERT INTO jobs(run_id, idx, spec, state, failure_reason, labels, isolations)
                     VALUES (?1,?2,?3,?4,?5,?6,?7)",
                    params![
                        run_id,
                        idx as i64,
                        to_json(&j.spec),
                        j.state.as_str(),
                        j.reason,
                        to_json(&j.labels),
                        to_json(&j.isolations)
                    ],
                )?;
            }
            tx.commit()?;
            Ok(run_id)
        })
        .await
    }

    async fn run(&self, id: i64) -> Result<Option<Run>> {
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [id],
                run_row,
            )
            .optional()?)
        })
        .await
    }

    async fn runs(&self, limit: u32) -> Result<Vec<Run>> {
        self.with(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = st.query_map([limit], run_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn active_runs(&self) -> Result<Vec<i64>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id FROM runs WHERE finished IS NULL ORDER BY id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn run_jobs(&self, run_id: i64) -> Result<Vec<Job>> {
        self.with(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE run_id = ?1 ORDER BY idx"
            ))?;
            let rows = st.query_map([run_id], job_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_run_state(&self, id: i64, state: &str, finished: bool) -> Result<()> {
        let state = state.to_string();
        self.with(move |c| {
            if finished {
                c.execute(
                    "UPDATE runs SET state = ?2, finished = ?3, secrets = '{}' WHERE id = ?1",
                    params![id, state, now()],
                )?;
                // The row with the secrets is still in the write-ahead log: copy the log into
                // the database (where secure_delete zeroes the old row) and empty it. Busy only
                // if another process reads the file; then the next finished run tries again.
                let busy: i64 =
                    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy != 0 {
                    tracing::warn!(run = id, "write-ahead log busy: a finished run's secrets stay in it until the next checkpoint");
                }
            } else {
                c.execute(
                    "UPDATE runs SET state = ?2 WHERE id = ?1",
                    params![id, state],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn job(&self, id: i64) -> Result<Option<Job>> {
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()?)
        })
        .await
    }

    async fn job_by_token(&self, hash: &str) -> Result<Option<Job>> {
        let hash = hash.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE token_hash = ?1"),
                [hash],
                job_row,
            )
            .optional()?)
        })
        .await
    }

    async fn pending(&self) -> Result<Vec<Pending>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, labels, isolations FROM jobs WHERE state = 'pending' ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Pending {
                    id: r.get(0)?,
                    labels: from_json(&r.get::<_, String>(1)?)?,
                    isolations: from_json(&r.get::<_, String>(2)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn claim(&self, job: i64, runner: i64, token_hash: &str) -> Result<bool> {
        let hash = token_hash.to_string();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET state = 'running', runner_id = ?2, token_hash = ?3,
                   cancel_requested = 0, log_size = 0, checksum = NULL, steps = '[]',
                   failure_reason = NULL
                 WHERE id = ?1 AND state = 'pending'",
                params![job, runner, hash],
            )? == 1)
        })
        .await
    }

    async fn transition(
        &self,
        job: i64,
        from: JobState,
        to: JobState,
        reason: Option<&str>,
    ) -> Result<bool> {
        let reason = reason.map(str::to_string);
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET state = ?3, failure_reason = COALESCE(?4, failure_reason)
                 WHERE id = ?1 AND state = ?2",
                params![job, from.as_str(), to.as_str(), reason],
            )? == 1)
        })
        .await
    }

    async fn transitions(
        &self,
        changes: &[(i64, JobState, JobState, Option<String>)],
    ) -> Result<Vec<bool>> {
        let changes = changes.to_vec();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(changes.len());
            {
                let mut st = tx.prepare(
                    "UPDATE jobs SET state = ?3, failure_reason = COALESCE(?4, failure_reason)
                     WHERE id = ?1 AND state = ?2",
                )?;
                for (job, from, to, reason) in &changes {
                    out.push(st.execute(params![job, from.as_str(), to.as_str(), reason])? == 1);
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn unsettled(&self, run_id: i64) -> Result<(u64, u64)> {
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT COALESCE(SUM(state = 'created'), 0),
                        COALESCE(SUM(state IN ('created', 'pending', 'running')), 0)
                 FROM jobs WHERE run_id = ?1",
                [run_id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }

    async fn finish(&self, job: i64, attempt: u32, f: &Finish) -> Result<bool> {
        let f = f.clone();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET state = ?3, failure_reason = ?4, steps = ?5, checksum = ?6,
                   log_size = ?7
                 WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
                params![
                    job,
                    attempt,
                    f.state.as_str(),
                    f.reason,
                    to_json(&f.steps),
                    f.checksum,
                    f.log_size as i64
                ],
            )? == 1)
        })
        .await
    }

    async fn requeue(&self, job: i64, attempt: u32, reason: &str) -> Result<bool> {
        let reason = reason.to_string();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET state = 'pending', attempt = attempt + 1, runner_id = NULL,
                   token_hash = NULL, failure_reason = ?3, cancel_requested = 0
                 WHERE id = ?1 AND attempt = ?2 AND state IN ('running', 'failed')",
                params![job, attempt, reason],
            )? == 1)
        })
        .await
    }

    async fn request_cancel(&self, job: i64) -> Result<()> {
        self.with(move |c| {
            c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [job])?;
            Ok(())
        })
        .await
    }

    async fn running(&self) -> Result<Vec<(i64, u32, i64)>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, attempt, runner_id FROM jobs
                 WHERE state = 'running' AND runner_id IS NOT NULL",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn job_counts(&self) -> Result<Vec<(JobState, u64)>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = st.query_map([], |r| {
                Ok((
                    state_of(&r.get::<_, String>(0)?)?,
                    r.get::<_, i64>(1)? as u64,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_secret(&self, name: &str, value: &str) -> Result<()> {
        let (name, value) = (name.to_string(), value.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO secrets(name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [name, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_secret(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.with(move |c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", [name])? == 1))
            .await
    }

    async fn secret_names(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT name FROM secrets ORDER BY name")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn secrets(&self, names: &[String]) -> Result<BTreeMap<String, String>> {
        let names = names.to_vec();
        self.with(move |c| {
            let mut out = BTreeMap::new();
            let mut st = c.prepare("SELECT value FROM secrets WHERE name = ?1")?;
            for n in names {
                if let Some(v) = st.query_row([&n], |r| r.get(0)).optional()? {
                    out.insert(n, v);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(id: &str) -> pipelines::PlannedJob {
        pipelines::PlannedJob {
            id: id.into(),
            name: id.into(),
            matrix: BTreeMap::new(),
            needs: vec![],
            skipped: None,
            allow_failure: false,
            retry: 0,
            timeout: Duration::from_secs(60),
            steps: vec![],
        }
    }

    fn new_job(id: &str) -> NewJob {
        NewJob {
            spec: job(id),
            state: JobState::Pending,
            reason: None,
            labels: vec!["linux".into()],
            isolations: vec!["container".into()],
        }
    }

    fn new_run() -> NewRun {
        NewRun {
            name: "p".into(),
            event: "push".into(),
            branch: "main".into(),
            secrets: BTreeMap::from([("TOKEN".into(), "s3cr3t-value".into())]),
        }
    }

    #[tokio::test]
    async fn run_and_jobs_round_trip() {
        let s = SqliteStore::in_memory().unwrap();
        let run = s
            .create_run(&new_run(), &[new_job("a"), new_job("b")])
            .await
            .unwrap();
        let jobs = s.run_jobs(run).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].spec.id, "a");
        assert_eq!(jobs[1].labels, vec!["linux".to_string()]);
        assert_eq!(jobs[0].attempt, 1);
        let r = s.run(run).await.unwrap().unwrap();
        assert_eq!(r.secrets["TOKEN"], "s3cr3t-value");
        assert_eq!(s.active_runs().await.unwrap(), vec![run]);
        s.set_run_state(run, "success", true).await.unwrap();
        // A finished run forgets its secrets.
        assert!(s.run(run).await.unwrap().unwrap().secrets.is_empty());
        assert!(s.active_runs().await.unwrap().is_empty());
    }

    /// Blanking the column is not enough: the row that held the secrets stays in the
    /// write-ahead log and in the freed space of its page unless both are cleared.
    #[tokio::test]
    async fn a_finished_runs_secrets_are_gone_from_the_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let s = SqliteStore::open(&path).unwrap();
        // Several runs and a stored secret that is deleted again, so that rows move and
        // pages are freed, not only rewritten in place.
        let mut runs = Vec::new();
        for _ in 0..20 {
            runs.push(s.create_run(&new_run(), &[new_job("a")]).await.unwrap());
        }
        s.set_secret("STORED", "deleted-s3cr3t-value")
            .await
            .unwrap();
        assert!(s.delete_secret("STORED").await.unwrap());
        for run in runs {
            s.set_run_state(run, "success", true).await.unwrap();
        }
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            for secret in ["s3cr3t-value", "deleted-s3cr3t-value"] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} is still in {}",
                    path.display()
                );
            }
        }
    }

    #[tokio::test]
    async fn claim_is_compare_and_set() {
        let s = SqliteStore::in_memory().unwrap();
        let run = s.create_run(&new_run(), &[new_job("a")]).await.unwrap();
        let id = s.run_jobs(run).await.unwrap()[0].id;
        assert_eq!(s.pending().await.unwrap().len(), 1);
        assert!(s.claim(id, 1, "h1").await.unwrap());
        // The second claimant loses.
        assert!(!s.claim(id, 2, "h2").await.unwrap());
        let j = s.job_by_token("h1").await.unwrap().unwrap();
        assert_eq!((j.state, j.runner_id), (JobState::Running, Some(1)));
        assert!(s.pending().await.unwrap().is_empty());
        assert_eq!(s.running().await.unwrap(), vec![(id, 1, 1)]);
        assert_eq!(s.unsettled(run).await.unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn batched_transitions_are_compare_and_set() {
        let s = SqliteStore::in_memory().unwrap();
        let mut a = new_job("a");
        a.state = JobState::Created;
        let run = s.create_run(&new_run(), &[a.clone(), a]).await.unwrap();
        assert_eq!(s.unsettled(run).await.unwrap(), (2, 2));
        let ids: Vec<i64> = s
            .run_jobs(run)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        let done = s
            .transitions(&[
                (ids[0], JobState::Created, JobState::Pending, None),
                (
                    ids[1],
                    JobState::Pending,
                    JobState::Skipped,
                    Some("x".into()),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(done, vec![true, false]);
        assert_eq!(s.unsettled(run).await.unwrap(), (1, 2));
    }

    #[tokio::test]
    async fn finish_requires_the_running_attempt() {
        let s = SqliteStore::in_memory().unwrap();
        let run = s.create_run(&new_run(), &[new_job("a")]).await.unwrap();
        let id = s.run_jobs(run).await.unwrap()[0].id;
        s.claim(id, 1, "h").await.unwrap();
        assert!(s.requeue(id, 1, "runner lost").await.unwrap());
        let j = s.job(id).await.unwrap().unwrap();
        assert_eq!(
            (
                j.state,
                j.attempt,
                s.job_by_token("h").await.unwrap().is_none()
            ),
            (JobState::Pending, 2, true)
        );
        let f = Finish {
            state: JobState::Success,
            reason: None,
            steps: vec![],
            checksum: "sha256:x".into(),
            log_size: 3,
        };
        // A late report of attempt 1 is refused.
        assert!(!s.finish(id, 1, &f).await.unwrap());
        s.claim(id, 2, "h2").await.unwrap();
        assert!(s.finish(id, 2, &f).await.unwrap());
        assert!(!s.finish(id, 2, &f).await.unwrap());
        let j = s.job(id).await.unwrap().unwrap();
        assert_eq!((j.state, j.log_size), (JobState::Success, 3));
    }

    #[tokio::test]
    async fn runners_tokens_and_secrets() {
        let s = SqliteStore::in_memory().unwrap();
        let t = RegToken {
            labels: vec!["gpu".into()],
            isolations: vec![],
        };
        s.create_reg_token("rh", &t).await.unwrap();
        assert_eq!(s.reg_token("rh").await.unwrap(), Some(t));
        assert_eq!(s.reg_token("nope").await.unwrap(), None);
        let id = s
            .create_runner("r1", "th", &["gpu".into()], &["container".into()], 2)
            .await
            .unwrap();
        assert_eq!(s.runner_by_token("th").await.unwrap().unwrap().id, id);
        assert!(s.set_runner_paused(id, true).await.unwrap());
        assert!(s.runners().await.unwrap()[0].paused);
        assert!(s.delete_runner(id).await.unwrap());
        assert!(!s.delete_runner(id).await.unwrap());
        s.set_secret("A", "one").await.unwrap();
        s.set_secret("A", "two").await.unwrap();
        assert_eq!(s.secret_names().await.unwrap(), vec!["A".to_string()]);
        let got = s.secrets(&["A".into(), "B".into()]).await.unwrap();
        assert_eq!(got, BTreeMap::from([("A".to_string(), "two".to_string())]));
    }
}
