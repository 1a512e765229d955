//! The agent's side of the runner protocol (docs/protocol.md), one method per endpoint.

use std::time::Duration;

use reqwest::StatusCode;

use protocol::{
    ContentRange, ErrorBody, FinishRequest, JobAck, JobPayload, JobRequestBody, RegisterRequest,
    RegisterResponse, RewindBody, RANGE,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, reset, timed out): worth retrying.
    #[error("coordinator unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The token is not (or no longer) valid.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The coordinator holds `size` bytes: continue from there.
    #[error("coordinator holds {0} bytes of log")]
    Rewind(u64),
    /// The whole log must be sent again from 0.
    #[error("log checksum mismatch")]
    Resend,
    #[error("coordinator answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl ClientError {
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

async fn error_of(resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let message = match resp.bytes().await {
        Ok(b) => serde_json::from_slice::<ErrorBody>(&b)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned()),
        Err(e) => e.to_string(),
    };
    if status == StatusCode::UNAUTHORIZED {
        ClientError::Unauthorized(message)
    } else {
        ClientError::Status {
            status: status.as_u16(),
            message,
        }
    }
}

async fn rewind_size(resp: reqwest::Response) -> u64 {
    let from_header = resp
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('-'))
        .and_then(|(_, end)| end.trim().parse().ok());
    match from_header {
        Some(n) => n,
        None => resp.json::<RewindBody>().await.map(|b| b.size).unwrap_or(0),
    }
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        let resp = self
            .http
            .post(self.url("/api/v1/runners"))
            .json(req)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of(resp).await);
        }
        resp.json().await.map_err(ClientError::Unreachable)
    }

    pub async fn unregister(&self, token: &str) -> Result<()> {
        let resp = self
            .http
            .delete(self.url("/api/v1/runners/self"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(())
    }

    /// Long-polls for a job; `None` when none came within `wait`.
    pub async fn request_job(&self, token: &str, wait: Duration) -> Result<Option<JobPayload>> {
        let resp = self
            .http
            .post(self.url("/api/v1/jobs/request"))
            .bearer_auth(token)
            .json(&JobRequestBody {
                wait_secs: Some(wait.as_secs_f64()),
            })
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        match resp.status() {
            StatusCode::CREATED => Ok(Some(resp.json().await.map_err(ClientError::Unreachable)?)),
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(error_of(resp).await),
        }
    }

    /// The source tarball, or `None` when the run has none.
    pub async fn source(&self, job: i64, token: &str) -> Result<Option<bytes::Bytes>> {
        let resp = self
            .http
            .get(self.url(&format!("/api/v1/jobs/{job}/source")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        match resp.status() {
            StatusCode::OK => Ok(Some(resp.bytes().await.map_err(ClientError::Unreachable)?)),
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(error_of(resp).await),
        }
    }

    /// Appends `data` at `start`; returns the coordinator's answer (its size and what to do).
    pub async fn patch_log(
        &self,
        job: i64,
        token: &str,
        start: u64,
        data: Vec<u8>,
    ) -> Result<JobAck> {
        let range = ContentRange::for_body(start, data.len() as u64);
        let resp = self
            .http
            .patch(self.url(&format!("/api/v1/jobs/{job}/log")))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_RANGE, range.header())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(data)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        match resp.status() {
            StatusCode::ACCEPTED => resp.json().await.map_err(ClientError::Unreachable),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(ClientError::Rewind(rewind_size(resp).await)),
            _ => Err(error_of(resp).await),
        }
    }

    pub async fn heartbeat(&self, job: i64, token: &str) -> Result<JobAck> {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/jobs/{job}/heartbeat")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        if resp.status() != StatusCode::OK {
            return Err(error_of(resp).await);
        }
        resp.json().await.map_err(ClientError::Unreachable)
    }

    pub async fn finish(&self, job: i64, token: &str, req: &FinishRequest) -> Result<()> {
        let resp = self
            .http
            .put(self.url(&format!("/api/v1/jobs/{job}")))
            .bearer_auth(token)
            .json(req)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        match resp.status() {
            StatusCode::OK => Ok(()),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(ClientError::Rewind(rewind_size(resp).await)),
            StatusCode::PRECONDITION_FAILED => Err(ClientError::Resend),
            _ => Err(error_of(resp).await),
        }
    }
}
