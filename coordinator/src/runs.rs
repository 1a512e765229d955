//! User endpoints (admin token): submit a run, list and show runs, cancel, read and follow logs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::AsyncWriteExt;

use super::admin::{admin, check_secret};
use super::error::{id, ApiError, ApiResult};
use super::store::{Job, NewJob, NewRun, Run};
use super::{dispatch, Coordinator};
use protocol::{JobState, JobView, RunView, SubmitMeta, SubmitResponse};

type App = State<Arc<Coordinator>>;

pub fn job_view(j: &Job) -> JobView {
    JobView {
        id: j.id,
        name: j.spec.id.clone(),
        state: j.state,
        attempt: j.attempt,
        runner_id: j.runner_id,
        failure_reason: j.failure_reason.clone(),
        allow_failure: j.spec.allow_failure,
        steps: j.steps.clone(),
        log_size: j.log_size,
        labels: j.labels.clone(),
        isolations: j.isolations.clone(),
    }
}

fn run_view(r: Run, jobs: &[Job]) -> RunView {
    RunView {
        id: r.id,
        name: r.name,
        state: r.state,
        event: r.event,
        branch: r.branch,
        created: r.created,
        jobs: jobs.iter().map(job_view).collect(),
    }
}

pub async fn submit(
    State(c): App,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    admin(&c, &headers)?;
    let mut form = form.map_err(|e| {
        ApiError::bad_request(format!(
            "expected multipart/form-data with `meta` (JSON) and `source` (tar.gz): {e}"
        ))
    })?;
    let mut meta: Option<SubmitMeta> = None;
    let tmp = c
        .settings
        .data_dir
        .join("sources")
        .join(format!(".upload-{}", super::auth::new_token("u")?));
    let mut have_source = false;
    let result = async {
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
        {
            match field.name().unwrap_or("") {
                "meta" => {
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::bad_request(format!("bad `meta` part: {e}")))?;
                    meta = Some(serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::bad_request(format!("invalid JSON in `meta`: {e}"))
                    })?);
                }
                "source" => {
                    let mut f = tokio::fs::File::create(&tmp).await?;
                    while let Some(chunk) = field
                        .chunk()
                        .await
                        .map_err(|e| ApiError::bad_request(format!("bad `source` part: {e}")))?
                    {
                        f.write_all(&chunk).await?;
                    }
                    f.flush().await?;
                    have_source = true;
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown form field {other:?}: expected `meta` and `source`"
                    )))
                }
            }
        }
        let meta = meta.ok_or_else(|| ApiError::bad_request("missing the `meta` part"))?;
        create_run(&c, meta, have_source.then_some(tmp.as_path())).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    let resp = result?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

async fn create_run(
    c: &Coordinator,
    meta: SubmitMeta,
    source: Option<&std::path::Path>,
) -> ApiResult<SubmitResponse> {
    let plan = match (meta.plan, meta.pipeline) {
        (Some(plan), _) => plan,
        (None, Some(yaml)) => {
            let opts = pipelines::PlanOptions {
                event: meta.event.clone(),
                branch: meta.branch.clone(),
                vars: meta.vars.clone(),
                ..Default::default()
            };
            let file = if meta.file.is_empty() {
                "pipeline.yml"
            } else {
                &meta.file
            };
            pipelines::plan_str(&yaml, file, &opts)
                .map_err(|d| ApiError::unprocessable(d.to_string().trim_end().to_string()))?
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "`meta` needs `pipeline` (YAML) or `plan` (JSON)",
            ))
        }
    };
    if plan.jobs.is_empty() {
        return Err(ApiError::unprocessable("the pipeline has no jobs"));
    }
    for (name, value) in &meta.secrets {
        check_secret(name, value)?;
    }
    let wanted: BTreeSet<&String> = plan
        .jobs
        .iter()
        .filter(|j| j.skipped.is_none())
        .flat_map(|j| j.steps.iter().flat_map(|s| s.secrets.iter()))
        .collect();
    let stored: BTreeSet<String> = c.store.secret_names().await?.into_iter().collect();
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|n| !meta.secrets.contains_key(**n) && !stored.contains(**n))
        .map(|n| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "secrets not set: {} (use `runner secret set NAME` or `runner submit --secret NAME=VALUE`)",
            missing.join(", ")
        )));
    }
    let jobs: Vec<NewJob> = plan
        .jobs
        .iter()
        .map(|j| NewJob {
            labels: dispatch::labels_of(j),
            isolations: dispatch::isolations_of(j),
            state: if j.skipped.is_some() {
                JobState::Skipped
            } else {
                JobState::Created
            },
            reason: j.skipped.clone(),
            spec: j.clone(),
        })
        .collect();
    let run = NewRun {
        name: plan.name.clone(),
        event: meta.event,
        branch: meta.branch,
        secrets: meta.secrets,
    };
    let run_id = c.store.create_run(&run, &jobs).await?;
    if let Some(src) = source {
        tokio::fs::rename(src, c.source_path(run_id)).await?;
    }
    tracing::info!(run = run_id, jobs = jobs.len(), "run submitted");
    c.progress(run_id).await?;
    let jobs = c.store.run_jobs(run_id).await?;
    Ok(SubmitResponse {
        id: run_id,
        jobs: jobs.iter().map(job_view).collect(),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
}

pub async fn list(
    State(c): App,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let mut out = Vec::new();
    for r in c.store.runs(limit).await? {
        let jobs = c.store.run_jobs(r.id).await?;
        out.push(run_view(r, &jobs));
    }
    Ok(Json(out))
}

pub async fn show(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let rid = id(&p)?;
    let r = c
        .store
        .run(rid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {rid}")))?;
    let jobs = c.store.run_jobs(rid).await?;
    Ok(Json(run_view(r, &jobs)))
}

pub async fn show_job(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let jid = id(&p)?;
    let j = c
        .store
        .job(jid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {jid}")))?;
    Ok(Json(job_view(&j)))
}

pub async fn cancel(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let rid = id(&p)?;
    c.store
        .run(rid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {rid}")))?;
    let jobs = c.store.run_jobs(rid).await?;
    let (now, ask) = dispatch::cancel(&jobs);
    for ch in now {
        c.store
            .transition(ch.job, ch.from, ch.to, ch.reason.as_deref())
            .await?;
        c.logs.wake(ch.job);
    }
    for j in &ask {
        c.store.request_cancel(*j).await?;
    }
    tracing::info!(run = rid, running = ask.len(), "run cancelled");
    c.progress(rid).await?;
    let r = c
        .store
        .run(rid)
        .await?
        .ok_or_else(|| ApiError::not_found("run vanished"))?;
    let jobs = c.store.run_jobs(rid).await?;
    Ok(Json(run_view(r, &jobs)))
}

#[derive(Debug, serde::Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/jobs/{id}/log?offset=N&follow=true`: the log from `offset`; with `follow`, a
/// chunked body that streams new bytes as they arrive and ends when the job does.
pub async fn read_log(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    admin(&c, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let jid = id(&p)?;
    let job = c
        .store
        .job(jid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {jid}")))?;
    let hdrs = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if !q.follow {
        let data = c.logs.read(jid, job.attempt, q.offset, usize::MAX).await?;
        return Ok((
            hdrs,
            [("x-job-state", job.state.as_str())],
            Body::from(data),
        )
            .into_response());
    }
    let follow = Follow {
        c: c.clone(),
        job: jid,
        attempt: job.attempt,
        offset: q.offset,
    };
    let stream = futures_util::stream::unfold(follow, |mut s| async move {
        s.next().await.map(|b| (Ok::<_, std::io::Error>(b), s))
    });
    Ok((hdrs, Body::from_stream(stream)).into_response())
}

struct Follow {
    c: Arc<Coordinator>,
    job: i64,
    attempt: u32,
    offset: u64,
}

impl Follow {
    /// The next piece of log, or `None` once the job has ended and everything was sent.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let notify = self.c.logs.notify(self.job);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let job = self.c.store.job(self.job).await.ok().flatten()?;
            if job.attempt != self.attempt {
                self.attempt = job.attempt;
                self.offset = 0;
                return Some(Bytes::from(format!(
                    "\n--- retry: attempt {} ---\n",
                    job.attempt
                )));
            }
            let data = self
                .c
                .logs
                .read(self.job, self.attempt, self.offset, 1 << 20)
                .await
                .ok()?;
            if !data.is_empty() {
                self.offset += data.len() as u64;
                return Some(Bytes::from(data));
            }
            if job.state.is_terminal() {
                return None;
            }
            let _ = tokio::time::timeout(Duration::from_secs(15), notified).await;
        }
    }
}
