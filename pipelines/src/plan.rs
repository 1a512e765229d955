//! The plan: what will run, fully resolved. This is the contract between `pipelines` and the
//! runner (local `exec`, the coordinator and the agent): defaults applied, matrix expanded,
//! `if` evaluated, jobs in a stable topological order. Its JSON form is what
//! `runner exec --dry-run --json` prints and what the coordinator ships to runners, so field
//! names are stable (see docs/pipeline.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The pipeline's `name`.
    pub name: String,
    /// Every job instance (matrix expanded), in a stable topological order: a job comes after
    /// everything it needs.
    pub jobs: Vec<PlannedJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// Unique in the plan: the job's key, plus the matrix values for a matrix instance,
    /// e.g. `build` or `build (arch=amd64)`.
    pub id: String,
    /// The job's key in `jobs:`.
    pub name: String,
    /// This instance's matrix values (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
    /// Ids of the job instances that must finish first.
    pub needs: Vec<String>,
    /// `Some(reason)` when the job will not run (its `if` is false in this context, or a job
    /// it needs is skipped).
    pub skipped: Option<String>,
    pub allow_failure: bool,
    pub retry: u32,
    /// Whole-job timeout.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    pub run: String,
    pub shell: Shell,
    pub image: Image,
    pub isolation: Isolation,
    /// Effective environment: pipeline, job, matrix (`MATRIX_*`? see docs) and step env merged.
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    pub network: Network,
    pub resources: Resources,
    pub continue_on_error: bool,
    /// Names only; values come from the runner at run time.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Image {
    /// The host's root filesystem, read-only under a throwaway layer.
    Host,
    /// An OCI image reference, as written.
    Oci(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Container,
    Vm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    Sh,
    Bash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Host,
    Bridge,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// Durations travel as whole seconds (a float for sub-second values) in JSON.
mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_u64(d.as_secs())
        } else {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
