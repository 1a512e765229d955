//! The pipeline as written, after validation: typed values, with the positions that later
//! checks (needs, cycles, `--job`) still point at. Defaults are not applied yet; that is the
//! planner's work.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::expr::Expr;
use crate::plan::{Image, Isolation, Network, Resources, Shell};
use crate::yaml::Pos;

#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub name: Option<String>,
    pub env: BTreeMap<String, String>,
    pub defaults: Settings,
    pub jobs: Vec<Job>,
    /// Where `jobs:` is written (or the document start), for errors about the jobs as a whole.
    pub jobs_pos: Pos,
}

/// What `defaults`, a job and a step may each set; unset values are inherited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub image: Option<Image>,
    pub isolation: Option<Isolation>,
    pub timeout: Option<Duration>,
    pub shell: Option<Shell>,
    pub workdir: Option<String>,
    pub network: Option<Network>,
    pub resources: Resources,
}

impl Settings {
    /// `self` over `parent`: each value set here wins, field by field (resources too).
    pub fn over(&self, parent: &Settings) -> Settings {
        Settings {
            image: self.image.clone().or_else(|| parent.image.clone()),
            isolation: self.isolation.or(parent.isolation),
            timeout: self.timeout.or(parent.timeout),
            shell: self.shell.or(parent.shell),
            workdir: self.workdir.clone().or_else(|| parent.workdir.clone()),
            network: self.network.or(parent.network),
            resources: Resources {
                cpus: self.resources.cpus.or(parent.resources.cpus),
                memory: self.resources.memory.or(parent.resources.memory),
                pids: self.resources.pids.or(parent.resources.pids),
            },
        }
    }
}

/// One matrix combination: keys and values in the order written (axes first).
pub type Combo = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: Spanned<String>,
    pub needs: Vec<Spanned<String>>,
    pub env: BTreeMap<String, String>,
    /// Expanded matrix combinations; empty without a matrix.
    pub matrix: Vec<crate::matrix::Instance>,
    pub condition: Option<Condition>,
    pub allow_failure: bool,
    pub retry: u32,
    pub settings: Settings,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// As written, for "skipped: `...` is false".
    pub source: String,
    pub expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub run: String,
    pub settings: Settings,
    pub env: BTreeMap<String, String>,
    pub continue_on_error: bool,
    pub secrets: Vec<String>,
    /// Where each secret name is written (position, key path), in the order of `secrets`.
    pub secrets_at: Vec<(Pos, String)>,
}
