//! Pipeline YAML: model, validation with precise locations, and planning.
#![forbid(unsafe_code)]

pub mod diagnostic;
pub mod plan;

use std::collections::BTreeMap;
use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use plan::{Image, Isolation, Network, Plan, PlannedJob, PlannedStep, Resources, Shell};

/// The context a plan is made for: what `if` expressions see, and what the user selected.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `push`, `pull_request` or `manual`.
    pub event: String,
    pub branch: String,
    /// `--var K=V`: extra variables visible to `if` and added to every step's env.
    pub vars: BTreeMap<String, String>,
    /// `--job NAME`: only these jobs and what they need (all when empty).
    pub jobs: Vec<String>,
    /// `--isolation`: overrides every step's isolation.
    pub isolation: Option<Isolation>,
}

/// Parse, validate and plan a pipeline file.
pub fn plan_file(path: &Path, opts: &PlanOptions) -> Result<Plan, Diagnostics> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: name.clone(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
            hint: None,
        }])
    })?;
    plan_str(&source, &name, opts)
}

/// Parse, validate and plan pipeline YAML; `file` names it in diagnostics.
pub fn plan_str(_source: &str, file: &str, _opts: &PlanOptions) -> Result<Plan, Diagnostics> {
    // Filled in by the pipeline-format work (issue 2).
    Err(Diagnostics(vec![Diagnostic {
        file: file.to_string(),
        line: 1,
        column: 1,
        path: String::new(),
        message: "the pipeline parser is not implemented yet".into(),
        hint: None,
    }]))
}
