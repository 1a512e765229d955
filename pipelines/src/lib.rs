//! Pipeline YAML: model, validation with precise locations, and planning.
#![forbid(unsafe_code)]

mod decode;
pub mod diagnostic;
mod expr;
mod graph;
mod keys;
mod matrix;
pub mod model;
pub mod plan;
mod planner;
pub mod schema;
mod template;
pub mod units;
mod yaml;

use std::collections::BTreeMap;
use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use plan::{Image, Isolation, Network, Plan, PlannedJob, PlannedStep, Resources, Shell};
pub use planner::{Validated, DEFAULT_TIMEOUT, DEFAULT_WORKDIR};
pub use yaml::Pos;

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
    let source = read(path)?;
    plan_str(&source, &name, opts)
}

/// Parse, validate and plan pipeline YAML; `file` names it in diagnostics.
pub fn plan_str(source: &str, file: &str, opts: &PlanOptions) -> Result<Plan, Diagnostics> {
    let validated = validate_str(source, file)?;
    planner::plan(&validated, opts)
}

/// Parse and validate a pipeline file without planning it (`runner validate`).
pub fn validate_file(path: &Path) -> Result<Validated, Diagnostics> {
    let name = path.display().to_string();
    let source = read(path)?;
    validate_str(&source, &name)
}

/// Parse and validate pipeline YAML: every problem found, in file order, or the checked model.
pub fn validate_str(source: &str, file: &str) -> Result<Validated, Diagnostics> {
    let mut d = decode::Decoder::new(file);
    let (root, yaml_errors) = yaml::parse_lenient(source);
    for e in yaml_errors {
        // The scanner's words for a tab are cryptic; say what to do about it.
        let line = source
            .lines()
            .nth(e.pos.line.saturating_sub(1))
            .unwrap_or("");
        let tab_indent = line.trim_start_matches(' ').starts_with('\t');
        let hint = if e.message.starts_with("YAML syntax") && tab_indent {
            Some("indent with spaces: YAML does not allow tabs for indentation".into())
        } else {
            e.hint
        };
        d.error(e.pos, "", e.message, hint);
    }
    let Some(root) = root else {
        if d.diags.is_empty() {
            d.error(
                Pos::new(1, 1),
                "",
                "the file is empty",
                Some("a pipeline needs `jobs:` with at least one job; see docs/pipeline.md".into()),
            );
        }
        return Err(finish(d.diags));
    };
    let Some(pipeline) = d.pipeline(&root) else {
        return Err(finish(d.diags));
    };
    check_secrets_not_in_env(&pipeline, &mut d);
    let needs = graph::check_needs(&pipeline, &mut d);
    let order = match graph::order(&needs) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle
                .iter()
                .chain(cycle.first())
                .map(|&j| pipeline.jobs[j].name.value.as_str())
                .collect();
            let first = &pipeline.jobs[cycle[0]];
            let next = names[1];
            let (pos, path) = first
                .needs
                .iter()
                .enumerate()
                .find(|(_, n)| n.value == next)
                .map(|(i, n)| (n.pos, format!("jobs.{}.needs[{i}]", first.name.value)))
                .unwrap_or((first.name.pos, format!("jobs.{}", first.name.value)));
            d.error(
                pos,
                &path,
                format!("`needs` forms a cycle: {}", names.join(" -> ")),
                Some("remove one of these needs so the jobs can run in some order".into()),
            );
            Vec::new()
        }
    };
    if !d.diags.is_empty() {
        return Err(finish(d.diags));
    }
    Ok(Validated {
        file: file.to_string(),
        pipeline,
        needs,
        order,
    })
}

/// Diagnostics in file order, each once.
fn finish(mut diags: Vec<Diagnostic>) -> Diagnostics {
    diags.sort_by_key(|d| (d.line, d.column));
    diags.dedup();
    Diagnostics(diags)
}

fn read(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|e| {
        let hint = (e.kind() == std::io::ErrorKind::NotFound).then(|| {
            "give the pipeline file as an argument, or create .runner.yml (see examples/)"
                .to_string()
        });
        Diagnostics(vec![Diagnostic {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
            hint,
        }])
    })
}

/// A name listed in a step's `secrets` must not also be set in an `env` the step sees: the
/// value would be in the file, and which one wins would be a surprise.
fn check_secrets_not_in_env(p: &model::Pipeline, d: &mut decode::Decoder) {
    for job in &p.jobs {
        for step in &job.steps {
            for (name, (pos, path)) in step.secrets.iter().zip(&step.secrets_at) {
                let level = if step.env.contains_key(name) {
                    "the step's"
                } else if job.env.contains_key(name) {
                    "the job's"
                } else if p.env.contains_key(name) {
                    "the pipeline's"
                } else {
                    continue;
                };
                d.error(
                    *pos,
                    path,
                    format!("`{name}` is a secret of this step and is also set in {level} `env`"),
                    Some("secret values come from the runner; remove it from `env`".into()),
                );
            }
        }
    }
}
