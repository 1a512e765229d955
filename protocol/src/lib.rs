//! Wire types of the runner protocol (docs/protocol.md), shared by the coordinator and the
//! agent so both ends agree by construction. Field names are the protocol: change them only
//! together with the document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header carrying the server's log length on log answers (GitLab's `Range: 0-<size>`).
pub const RANGE: &str = "range";
/// Largest log patch the coordinator accepts, in bytes.
pub const MAX_PATCH_BYTES: usize = 4 << 20;

/// Every 4xx/5xx answer has this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /api/v1/runners`: trade a registration token for a runner id and token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub token: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// `container`, `vm`: what this host is willing to run.
    #[serde(default)]
    pub isolations: Vec<String>,
    #[serde(default = "one")]
    pub concurrent: u32,
    #[serde(default)]
    pub version: String,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub id: i64,
    /// Shown once; the coordinator keeps only its sha256.
    pub token: String,
    /// Effective labels and isolations (the registration token may add or restrict).
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
}

/// `POST /api/v1/jobs/request`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobRequestBody {
    /// How long the coordinator may hold the request when no job is ready (capped by the
    /// server, 30 s by default).
    #[serde(default)]
    pub wait_secs: Option<f64>,
}

impl JobRequestBody {
    /// How long to hold the request: `wait_secs` when it is a usable number of seconds, at
    /// most `cap` (the server's poll timeout, also the answer to no or a nonsensical value).
    /// A client's number is hostile: NaN, negative, infinite or too big for a `Duration`
    /// (1e300) must not reach `Duration::from_secs_f64`, which panics on them.
    pub fn wait(&self, cap: std::time::Duration) -> std::time::Duration {
        self.wait_secs
            .filter(|w| w.is_finite() && *w >= 0.0)
            .and_then(|w| std::time::Duration::try_from_secs_f64(w).ok())
            .map_or(cap, |w| w.min(cap))
    }
}

/// The answer to a job request (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPayload {
    /// Coordinator-wide job id.
    pub id: i64,
    /// 1 for the first try, +1 per retry.
    pub attempt: u32,
    pub run_id: i64,
    /// Authorises the job's own endpoints until the job ends.
    pub token: String,
    pub job: pipelines::PlannedJob,
    /// Values of the secrets the job's steps name; nothing else.
    pub secrets: BTreeMap<String, String>,
    /// Send a heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// Relative URL of the source tree (tar.gz), authorised by the job token.
    pub source: String,
}

/// Job state as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the jobs it needs.
    Created,
    /// Queued: ready for a runner.
    Pending,
    Running,
    Success,
    Failed,
    Cancelled,
    Skipped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "created",
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Success => "success",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "created" => JobState::Created,
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "success" => JobState::Success,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "skipped" => JobState::Skipped,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Success | JobState::Failed | JobState::Cancelled | JobState::Skipped
        )
    }
}

/// What the runner should do with a job, carried on log and heartbeat answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobControl {
    Running,
    /// Cancel the job now and report it `cancelled`.
    Cancel,
}

/// Body of 202 on `PATCH .../log` and of 200 on `POST .../heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobAck {
    /// Bytes of log the coordinator holds.
    pub size: u64,
    pub control: JobControl,
}

/// Body of 416 on `PATCH .../log` and 412 on `PUT`: where the runner resumes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewindBody {
    pub error: String,
    pub size: u64,
}

/// How a job ended, as the runner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Success,
    Failed,
    Cancelled,
    TimedOut,
}

/// One step's result in the final report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub name: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration_ms: u64,
}

/// `PUT /api/v1/jobs/{id}`: the final state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishRequest {
    pub status: FinalStatus,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepReport>,
    /// `sha256:<hex>` of the whole log.
    pub checksum: String,
    /// Length of the whole log.
    pub log_size: u64,
}

/// A job as users see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    /// The plan's job id, e.g. `build (arch=amd64)`.
    pub name: String,
    pub state: JobState,
    pub attempt: u32,
    pub runner_id: Option<i64>,
    pub failure_reason: Option<String>,
    pub allow_failure: bool,
    pub steps: Vec<StepReport>,
    pub log_size: u64,
    /// What a runner needs to take the job: these labels, these isolations.
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
}

/// A run as users see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub event: String,
    pub branch: String,
    pub created: i64,
    pub jobs: Vec<JobView>,
}

/// Metadata part of `POST /api/v1/runs` (multipart: `meta` JSON, `source` tar.gz).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubmitMeta {
    /// Pipeline YAML, planned on the coordinator.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// File name shown in diagnostics.
    #[serde(default)]
    pub file: String,
    /// A plan made elsewhere (`runner exec --dry-run --json`), instead of `pipeline`.
    #[serde(default)]
    pub plan: Option<pipelines::Plan>,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Secrets for this run only; never returned by any endpoint.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub id: i64,
    pub jobs: Vec<JobView>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub labels: Vec<String>,
    /// Isolations runners registered with this token may accept (empty: any).
    #[serde(default)]
    pub isolations: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerView {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
    pub concurrent: u32,
    pub paused: bool,
    /// `online`, `offline` (no contact within the heartbeat timeout) or `paused`.
    pub status: String,
    pub running_jobs: u32,
}

/// An inclusive byte range `start-end` from a `Content-Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    /// Inclusive; `end + 1 - start` is the body length.
    pub end: u64,
}

impl ContentRange {
    /// Accepts `start-end`, `bytes start-end` and `bytes start-end/total` (total ignored).
    pub fn parse(header: &str) -> Option<ContentRange> {
        let s = header.trim();
        let s = s.strip_prefix("bytes").map(str::trim_start).unwrap_or(s);
        let s = s.split('/').next()?;
        let (a, b) = s.split_once('-')?;
        let start: u64 = a.trim().parse().ok()?;
        let end: u64 = b.trim().parse().ok()?;
        // The length (`end - start + 1`) must fit: `0-18446744073709551615` would overflow.
        end.checked_sub(start)?.checked_add(1)?;
        Some(ContentRange { start, end })
    }

    /// The range of `len > 0` bytes starting at `start`.
    pub fn for_body(start: u64, len: u64) -> ContentRange {
        ContentRange {
            start,
            end: start + len.max(1) - 1,
        }
    }

    /// Bytes in the range (an inclusive range is never empty, hence no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn header(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }
}

/// What the coordinator does with a patch, given how much log it already holds. This is the
/// idempotence rule: bytes already held are skipped, a gap is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchPlan {
    /// Append `body[skip..]`.
    Append { skip: u64 },
    /// Everything in the body is already held.
    Duplicate,
    /// The patch starts past the end: answer 416 with the current size.
    Gap,
}

pub fn plan_patch(held: u64, range: ContentRange) -> PatchPlan {
    if range.start > held {
        PatchPlan::Gap
    } else if range.end < held {
        PatchPlan::Duplicate
    } else {
        PatchPlan::Append {
            skip: held - range.start,
        }
    }
}

/// `sha256:<hex>` of `data`.
pub fn checksum_of(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let r = ContentRange { start: 0, end: 9 };
        assert_eq!(ContentRange::parse("0-9"), Some(r));
        assert_eq!(ContentRange::parse("bytes 0-9"), Some(r));
        assert_eq!(ContentRange::parse("bytes 0-9/*"), Some(r));
        assert_eq!(ContentRange::parse(" 0 - 9 "), Some(r));
        assert_eq!(r.len(), 10);
        assert_eq!(r.header(), "0-9");
        assert_eq!(ContentRange::for_body(10, 5).header(), "10-14");
    }

    #[test]
    fn content_range_rejects_garbage() {
        for bad in ["", "9-0", "a-b", "5", "-5", "1-", "bytes", "0-9-10"] {
            assert_eq!(ContentRange::parse(bad), None, "{bad:?}");
        }
    }

    /// Found by fuzz/fuzz_targets/protocol.rs: a range whose length does not fit in a u64
    /// overflowed `len()` (a panic in debug; in release a length of 0, which let an empty body
    /// through to a slice past its end).
    #[test]
    fn content_range_refuses_a_length_that_does_not_fit() {
        assert_eq!(ContentRange::parse("0-18446744073709551615"), None);
        let r = ContentRange::parse("1-18446744073709551615").unwrap();
        assert_eq!(r.len(), u64::MAX);
    }

    /// Found by fuzz/fuzz_targets/protocol.rs: `{"wait_secs": 1e300}` passed the finite and
    /// non-negative checks and panicked in `Duration::from_secs_f64`.
    #[test]
    fn a_job_request_wait_is_capped_and_never_panics() {
        let cap = std::time::Duration::from_secs(30);
        let wait = |w: Option<f64>| JobRequestBody { wait_secs: w }.wait(cap);
        assert_eq!(wait(Some(2.5)), std::time::Duration::from_millis(2500));
        assert_eq!(wait(Some(0.0)), std::time::Duration::ZERO);
        for odd in [
            None,
            Some(1e300),
            Some(f64::MAX),
            Some(f64::INFINITY),
            Some(f64::NAN),
            Some(-1.0),
            Some(1e9),
        ] {
            assert_eq!(wait(odd), cap, "{odd:?}");
        }
    }

    #[test]
    fn patch_plan_is_idempotent_and_refuses_gaps() {
        let r = |s, e| ContentRange { start: s, end: e };
        // Next bytes exactly.
        assert_eq!(plan_patch(10, r(10, 19)), PatchPlan::Append { skip: 0 });
        // A resend overlapping what is held: only the new tail is appended.
        assert_eq!(plan_patch(15, r(10, 19)), PatchPlan::Append { skip: 5 });
        // A resend of bytes fully held: accepted, nothing written.
        assert_eq!(plan_patch(20, r(10, 19)), PatchPlan::Duplicate);
        assert_eq!(plan_patch(20, r(0, 0)), PatchPlan::Duplicate);
        // A gap: the runner must rewind.
        assert_eq!(plan_patch(10, r(11, 19)), PatchPlan::Gap);
        assert_eq!(plan_patch(0, r(1, 1)), PatchPlan::Gap);
    }

    #[test]
    fn checksum_format() {
        assert_eq!(
            checksum_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
