//! The HTTP router and the runner side of the protocol (docs/protocol.md): register, job
//! request (long poll), source download, log append, heartbeat, final state.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::error::{id, json, ApiError, ApiResult};
use super::store::{Finish, Job, Runner};
use super::{admin, auth, dispatch, runs, Coordinator};
use protocol::{
    ContentRange, FinalStatus, FinishRequest, JobAck, JobControl, JobPayload, JobRequestBody,
    JobState, RegisterRequest, RegisterResponse, RewindBody, MAX_PATCH_BYTES, RANGE,
};

type App = State<Arc<Coordinator>>;

pub fn router(c: Arc<Coordinator>) -> Router {
    let upload = c.settings.max_upload;
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(admin::metrics))
        .route("/api/v1/runners", post(register).get(admin::list_runners))
        .route("/api/v1/runners/self", axum::routing::delete(unregister))
        .route(
            "/api/v1/runners/{id}",
            axum::routing::delete(admin::remove_runner),
        )
        .route("/api/v1/runners/{id}/pause", post(admin::pause_runner))
        .route("/api/v1/runners/{id}/resume", post(admin::resume_runner))
        .route("/api/v1/tokens", post(admin::create_token))
        .route("/api/v1/secrets", get(admin::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            put(admin::set_secret).delete(admin::delete_secret),
        )
        .route("/api/v1/jobs/request", post(request_job))
        .route("/api/v1/jobs/{id}", put(finish).get(runs::show_job))
        .route("/api/v1/jobs/{id}/source", get(source))
        .route("/api/v1/jobs/{id}/heartbeat", post(heartbeat))
        .route(
            "/api/v1/jobs/{id}/log",
            axum::routing::patch(append_log)
                .get(runs::read_log)
                .layer(DefaultBodyLimit::max(MAX_PATCH_BYTES + 1024)),
        )
        .route(
            "/api/v1/runs",
            post(runs::submit)
                .get(runs::list)
                .layer(DefaultBodyLimit::max(upload)),
        )
        .route("/api/v1/runs/{id}", get(runs::show))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(c)
}

/// The runner a runner token belongs to.
async fn runner_auth(c: &Coordinator, headers: &HeaderMap) -> ApiResult<Runner> {
    let token = auth::bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <runner token>`"))?;
    let runner = c
        .store
        .runner_by_token(&auth::hash(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid runner token"))?;
    c.saw_runner(runner.id);
    Ok(runner)
}

/// The job a job token belongs to; it must be the job in the path and still running unless
/// `ended_ok` (the final-state call may be repeated after it succeeded).
async fn job_auth(c: &Coordinator, headers: &HeaderMap, path_id: &str) -> ApiResult<Job> {
    let want = id(path_id)?;
    let token = auth::bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <job token>`"))?;
    let job = c
        .store
        .job_by_token(&auth::hash(token))
        .await?
        .filter(|j| j.id == want)
        .ok_or_else(|| ApiError::unauthorized("invalid job token for this job"))?;
    Ok(job)
}

fn require_running(job: &Job) -> ApiResult<()> {
    if job.state == JobState::Running {
        Ok(())
    } else {
        Err(ApiError::unauthorized(format!(
            "job token expired: the job ended ({}{})",
            job.state.as_str(),
            job.failure_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )))
    }
}

fn control(job: &Job) -> JobControl {
    if job.cancel_requested {
        JobControl::Cancel
    } else {
        JobControl::Running
    }
}

fn clean_list(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = v
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn register(State(c): App, body: Bytes) -> ApiResult<Response> {
    let req: RegisterRequest = json(&body)?;
    let reg = c
        .store
        .reg_token(&auth::hash(&req.token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid registration token"))?;
    for i in &req.isolations {
        if i != "container" && i != "vm" {
            return Err(ApiError::unprocessable(format!(
                "unknown isolation {i:?}: expected `container` or `vm`"
            )));
        }
    }
    if req.name.trim().is_empty() {
        return Err(ApiError::unprocessable("`name` must not be empty"));
    }
    let mut labels = req.labels.clone();
    labels.extend(reg.labels.iter().cloned());
    let labels = clean_list(&labels);
    let asked = if req.isolations.is_empty() {
        vec!["container".to_string()]
    } else {
        clean_list(&req.isolations)
    };
    // The registration token may restrict what its runners accept.
    let isolations: Vec<String> = asked
        .into_iter()
        .filter(|i| reg.isolations.is_empty() || reg.isolations.contains(i))
        .collect();
    let token = auth::new_token("rnr")?;
    let id = c
        .store
        .create_runner(
            req.name.trim(),
            &auth::hash(&token),
            &labels,
            &isolations,
            req.concurrent.max(1),
        )
        .await?;
    c.saw_runner(id);
    tracing::info!(runner = id, name = %req.name, ?labels, ?isolations, "runner registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            id,
            token,
            labels,
            isolations,
        }),
    )
        .into_response())
}

async fn unregister(State(c): App, headers: HeaderMap) -> ApiResult<StatusCode> {
    let r = runner_auth(&c, &headers).await?;
    c.store.delete_runner(r.id).await?;
    tracing::info!(runner = r.id, "runner unregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn request_job(State(c): App, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let runner = runner_auth(&c, &headers).await?;
    let req: JobRequestBody = json(&body)?;
    let wait = req.wait(c.settings.poll_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = c.queue.notified();
        tokio::pin!(notified);
        // Register interest before looking, so a job queued in between still wakes us.
        notified.as_mut().enable();
        if !runner.paused {
            if let Some(payload) = try_dispatch(&c, &runner).await? {
                return Ok((StatusCode::CREATED, Json(payload)).into_response());
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                c.saw_runner(runner.id);
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
    }
}

/// Claims the oldest queued job this runner fits, if any.
async fn try_dispatch(c: &Coordinator, runner: &Runner) -> ApiResult<Option<JobPayload>> {
    for p in c.store.pending().await? {
        if !dispatch::fits(runner, &p) {
            continue;
        }
        let token = auth::new_token("job")?;
        if !c.store.claim(p.id, runner.id, &auth::hash(&token)).await? {
            continue; // another runner was quicker
        }
        let Some(job) = c.store.job(p.id).await? else {
            continue;
        };
        c.saw_job(job.id, Some(runner.id));
        c.metrics.jobs_dispatched.inc();
        c.logs.wake(job.id);
        let secrets = job_secrets(c, &job).await?;
        tracing::info!(job = job.id, attempt = job.attempt, runner = runner.id, name = %job.spec.id, "job dispatched");
        let hb = (c.settings.heartbeat_timeout / 3).max(Duration::from_millis(100));
        return Ok(Some(JobPayload {
            id: job.id,
            attempt: job.attempt,
            run_id: job.run_id,
            token,
            source: format!("/api/v1/jobs/{}/source", job.id),
            job: job.spec,
            secrets,
            heartbeat_interval_ms: hb.as_millis() as u64,
        }));
    }
    Ok(None)
}

/// The values of the secrets the job's steps name: the run's own first, then stored ones.
async fn job_secrets(
    c: &Coordinator,
    job: &Job,
) -> ApiResult<std::collections::BTreeMap<String, String>> {
    let mut names: Vec<String> = job
        .spec
        .steps
        .iter()
        .flat_map(|s| s.secrets.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(Default::default());
    }
    let run_secrets = c
        .store
        .run(job.run_id)
        .await?
        .map(|r| r.secrets)
        .unwrap_or_default();
    let mut out = c.store.secrets(&names).await?;
    for n in &names {
        if let Some(v) = run_secrets.get(n) {
            out.insert(n.clone(), v.clone());
        }
    }
    Ok(out)
}

async fn source(State(c): App, Path(p): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let job = job_auth(&c, &headers, &p).await?;
    require_running(&job)?;
    c.saw_job(job.id, job.runner_id);
    let path = c.source_path(job.run_id);
    match tokio::fs::File::open(&path).await {
        Ok(f) => {
            let stream = tokio_util::io::ReaderStream::new(f);
            Ok((
                [(header::CONTENT_TYPE, "application/gzip")],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(e.into()),
    }
}

fn range_header(size: u64) -> [(&'static str, HeaderValue); 1] {
    // A number formatted as text is always a valid header value.
    let v = HeaderValue::from_str(&format!("0-{size}")).unwrap_or(HeaderValue::from_static("0-0"));
    [(RANGE, v)]
}

async fn append_log(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let job = job_auth(&c, &headers, &p).await?;
    require_running(&job)?;
    c.saw_job(job.id, job.runner_id);
    let range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse)
        .ok_or_else(|| {
            ApiError::bad_request("missing or invalid `Content-Range: <start>-<end>` (inclusive)")
        })?;
    match c.logs.append(job.id, job.attempt, range, body).await {
        Ok((before, size)) => {
            c.metrics.log_bytes.inc_by(size - before);
            Ok((
                StatusCode::ACCEPTED,
                range_header(size),
                Json(JobAck {
                    size,
                    control: control(&job),
                }),
            )
                .into_response())
        }
        Err(super::logs::LogError::Gap { size, start }) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            range_header(size),
            Json(RewindBody {
                error: format!(
                    "range starts at {start} but the log holds {size} bytes; resend from {size}"
                ),
                size,
            }),
        )
            .into_response()),
        Err(e @ super::logs::LogError::Length { .. }) => Err(ApiError::bad_request(e.to_string())),
        Err(super::logs::LogError::Io(e)) => Err(e.into()),
    }
}

async fn heartbeat(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = job_auth(&c, &headers, &p).await?;
    require_running(&job)?;
    c.saw_job(job.id, job.runner_id);
    let size = c.logs.size(job.id, job.attempt).await?;
    Ok((
        range_header(size),
        Json(JobAck {
            size,
            control: control(&job),
        }),
    )
        .into_response())
}

async fn finish(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let job = job_auth(&c, &headers, &p).await?;
    let req: FinishRequest = json(&body)?;
    if job.state != JobState::Running {
        // A repeat of a final state already recorded (the answer was lost): same answer.
        if job.checksum.as_deref() == Some(req.checksum.as_str()) {
            return Ok((StatusCode::OK, Json(serde_json::json!({}))).into_response());
        }
        require_running(&job)?;
    }
    c.saw_job(job.id, job.runner_id);
    let (checksum, size) = c.logs.checksum(job.id, job.attempt).await?;
    if size < req.log_size {
        // Not everything arrived yet: send the rest first.
        return Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            range_header(size),
            Json(RewindBody {
                error: format!(
                    "the log holds {size} of {} bytes; send the rest",
                    req.log_size
                ),
                size,
            }),
        )
            .into_response());
    }
    if checksum != req.checksum || size != req.log_size {
        tracing::warn!(job = job.id, ours = %checksum, theirs = %req.checksum, "log checksum mismatch; asking for a resend");
        c.logs.reset(job.id, job.attempt).await?;
        return Ok((
            StatusCode::PRECONDITION_FAILED,
            range_header(0),
            Json(RewindBody {
                error: format!(
                    "log checksum mismatch (coordinator {checksum}, {size} bytes); resend the log from 0"
                ),
                size: 0,
            }),
        )
            .into_response());
    }
    for s in &req.steps {
        c.metrics
            .step_seconds
            .observe(s.duration_ms as f64 / 1000.0);
    }
    let state = match req.status {
        FinalStatus::Success => JobState::Success,
        FinalStatus::Failed | FinalStatus::TimedOut => JobState::Failed,
        FinalStatus::Cancelled => JobState::Cancelled,
    };
    let reason = req.failure_reason.clone().or_else(|| match req.status {
        FinalStatus::TimedOut => Some("timed out".to_string()),
        _ => None,
    });
    let f = Finish {
        state,
        reason,
        steps: req.steps,
        checksum,
        log_size: size,
    };
    tracing::info!(
        job = job.id,
        attempt = job.attempt,
        state = state.as_str(),
        "job finished"
    );
    if state == JobState::Failed {
        c.fail_or_retry(&job, &f).await?;
    } else {
        c.store.finish(job.id, job.attempt, &f).await?;
        c.logs.close(job.id, job.attempt);
        c.logs.wake(job.id);
    }
    c.progress(job.run_id).await?;
    Ok((StatusCode::OK, Json(serde_json::json!({}))).into_response())
}
