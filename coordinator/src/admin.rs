//! Operator endpoints (admin token): registration tokens, runners, secrets, metrics.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::error::{id, json, ApiError, ApiResult};
use super::store::RegToken;
use super::{auth, Coordinator};
use protocol::{RunnerView, TokenRequest, TokenResponse};

type App = State<Arc<Coordinator>>;

/// Shortest secret accepted: masking a shorter one would blank out half the log.
pub const MIN_SECRET_LEN: usize = 4;

pub fn admin(c: &Coordinator, headers: &HeaderMap) -> ApiResult<()> {
    match auth::bearer(headers) {
        Some(t) if c.is_admin(t) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid admin token")),
        None => Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <admin token>`",
        )),
    }
}

pub async fn metrics(State(c): App) -> ApiResult<impl IntoResponse> {
    for (state, n) in c.store.job_counts().await? {
        c.metrics
            .jobs
            .get_or_create(&vec![("state".into(), state.as_str().into())])
            .set(n as i64);
    }
    let runners = c.store.runners().await?;
    let online = runners.iter().filter(|r| c.runner_online(r.id)).count();
    c.metrics.runners_online.set(online as i64);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics.render(),
    ))
}

pub async fn create_token(
    State(c): App,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let req: TokenRequest = json(&body)?;
    for i in &req.isolations {
        if i != "container" && i != "vm" {
            return Err(ApiError::unprocessable(format!(
                "unknown isolation {i:?}: expected `container` or `vm`"
            )));
        }
    }
    let token = auth::new_token("reg")?;
    c.store
        .create_reg_token(
            &auth::hash(&token),
            &RegToken {
                labels: req.labels,
                isolations: req.isolations,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token })))
}

pub async fn list_runners(State(c): App, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    let running = c.store.running().await?;
    let views: Vec<RunnerView> = c
        .store
        .runners()
        .await?
        .into_iter()
        .map(|r| RunnerView {
            running_jobs: running.iter().filter(|(_, _, rid)| *rid == r.id).count() as u32,
            status: if r.paused {
                "paused".into()
            } else if c.runner_online(r.id) {
                "online".into()
            } else {
                "offline".into()
            },
            id: r.id,
            name: r.name,
            labels: r.labels,
            isolations: r.isolations,
            concurrent: r.concurrent,
            paused: r.paused,
        })
        .collect();
    Ok(Json(views))
}

async fn set_paused(c: &Coordinator, headers: &HeaderMap, p: &str, paused: bool) -> ApiResult<()> {
    admin(c, headers)?;
    let rid = id(p)?;
    if !c.store.set_runner_paused(rid, paused).await? {
        return Err(ApiError::not_found(format!("no runner {rid}")));
    }
    Ok(())
}

pub async fn pause_runner(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    set_paused(&c, &headers, &p, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn resume_runner(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    set_paused(&c, &headers, &p, false).await?;
    c.queue.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_runner(
    State(c): App,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    admin(&c, &headers)?;
    let rid = id(&p)?;
    if !c.store.delete_runner(rid).await? {
        return Err(ApiError::not_found(format!("no runner {rid}")));
    }
    // Its running jobs stop heartbeating (their tokens still work until then, so a job the
    // runner is finishing is not thrown away); the lost-runner check handles the rest.
    Ok(StatusCode::NO_CONTENT)
}

pub fn valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn check_secret(name: &str, value: &str) -> ApiResult<()> {
    if !valid_secret_name(name) {
        return Err(ApiError::unprocessable(format!(
            "invalid secret name {name:?}: use letters, digits and `_`, not starting with a digit"
        )));
    }
    if value.chars().count() < MIN_SECRET_LEN {
        return Err(ApiError::unprocessable(format!(
            "secret {name} is shorter than {MIN_SECRET_LEN} characters; masking it would hide \
             unrelated log text, so it is refused"
        )));
    }
    Ok(())
}

pub async fn set_secret(
    State(c): App,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    admin(&c, &headers)?;
    let value = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::unprocessable("secret value must be UTF-8"))?;
    check_secret(&name, &value)?;
    c.store.set_secret(&name, &value).await?;
    tracing::info!(secret = %name, "secret set");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_secret(
    State(c): App,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    admin(&c, &headers)?;
    if !c.store.delete_secret(&name).await? {
        return Err(ApiError::not_found(format!("no secret {name}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Names only: no endpoint ever returns a secret's value.
pub async fn list_secrets(State(c): App, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    admin(&c, &headers)?;
    Ok(Json(c.store.secret_names().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules() {
        assert!(check_secret("API_KEY", "abcd").is_ok());
        assert!(check_secret("API_KEY", "abc").is_err());
        assert!(check_secret("1KEY", "abcdef").is_err());
        assert!(check_secret("A-B", "abcdef").is_err());
        assert!(check_secret("", "abcdef").is_err());
    }
}
