//! How operator and user commands reach a coordinator: `--url` (or the URL `runner serve`
//! wrote in the data dir) and `--admin-token` (or the token file `runner serve` created in
//! the data dir), so local calls need neither.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{RequestBuilder, Response};

use super::Context;
use coordinator::{ADMIN_TOKEN_FILE, URL_FILE};
use protocol::ErrorBody;

#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Coordinator URL [default: the one `runner serve` recorded in the data dir]
    #[arg(long, env = "RUNNER_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Admin token [default: the `admin-token` file `runner serve` created in the data dir]
    #[arg(
        long,
        env = "RUNNER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub base: String,
    token: String,
    pub http: reqwest::Client,
}

impl Remote {
    pub fn new(ctx: &Context, args: &RemoteArgs) -> anyhow::Result<Remote> {
        let dir = &ctx.paths.data_dir.join("coordinator");
        let base = match &args.url {
            Some(u) => u.clone(),
            None => std::fs::read_to_string(dir.join(URL_FILE))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no coordinator URL: pass --url, or run this where `runner serve` runs \
                         (looked for {})",
                        dir.join(URL_FILE).display()
                    )
                })?,
        };
        let token = match &args.admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no admin token: pass --admin-token, or run this as the user of \
                         `runner serve` (looked for {})",
                        dir.join(ADMIN_TOKEN_FILE).display()
                    )
                })?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        Ok(Remote {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

/// Sends `req`; a non-2xx answer becomes an error carrying the coordinator's reason.
pub async fn send(req: RequestBuilder) -> anyhow::Result<Response> {
    send_checked(req.send().await.context("cannot reach the coordinator")?).await
}

/// A non-2xx answer becomes an error carrying the coordinator's reason.
pub async fn send_checked(resp: Response) -> anyhow::Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let reason = serde_json::from_slice::<ErrorBody>(&body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
    anyhow::bail!("coordinator answered {status}: {reason}")
}

/// Splits `a,b , c` into trimmed, non-empty items.
pub fn list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or("")
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// `K=V` into a pair.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// `println!` that stops quietly when stdout is closed (`runner runs ls | head`) instead of
/// panicking on the broken pipe.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use out;
