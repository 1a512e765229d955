//! From a validated pipeline and a context (event, branch, vars, selected jobs) to the plan:
//! defaults applied, matrix instances laid out, conditions evaluated, jobs in order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::expr::Scope;
use crate::keys::did_you_mean;
use crate::model::{Job, Pipeline, Settings};
use crate::plan::{Image, Isolation, Network, Plan, PlannedJob, PlannedStep, Shell};
use crate::PlanOptions;

/// A job's timeout when neither it nor `defaults` sets one (GitLab's default too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// A validated pipeline ready to plan: the model plus its job order.
#[derive(Debug, Clone)]
pub struct Validated {
    pub file: String,
    pub pipeline: Pipeline,
    /// Per job, the indices of the jobs it needs.
    pub needs: Vec<Vec<usize>>,
    /// Job indices in stable topological order.
    pub order: Vec<usize>,
}

/// `build` or `build (arch=amd64)`.
pub fn instance_id(job: &str, label: &str) -> String {
    if label.is_empty() {
        job.to_string()
    } else {
        format!("{job} ({label})")
    }
}

fn labels(job: &Job) -> Vec<(String, BTreeMap<String, String>)> {
    if job.matrix.is_empty() {
        return vec![(String::new(), BTreeMap::new())];
    }
    job.matrix
        .iter()
        .map(|i| (i.label.clone(), i.values.iter().cloned().collect()))
        .collect()
}

/// Which instances `--job` selects: per job index, `None` for all of its instances.
fn select(
    v: &Validated,
    opts: &PlanOptions,
) -> Result<Vec<Option<Option<HashSet<String>>>>, Diagnostics> {
    let jobs = &v.pipeline.jobs;
    if opts.jobs.is_empty() {
        return Ok(vec![Some(None); jobs.len()]);
    }
    let mut chosen: Vec<Option<Option<HashSet<String>>>> = vec![None; jobs.len()];
    let mut errors = Vec::new();
    let mut queue = Vec::new();
    for want in &opts.jobs {
        if let Some(i) = jobs.iter().position(|j| &j.name.value == want) {
            chosen[i] = Some(None);
            queue.push(i);
            continue;
        }
        let by_id = jobs.iter().enumerate().find_map(|(i, j)| {
            labels(j)
                .into_iter()
                .find(|(l, _)| &instance_id(&j.name.value, l) == want)
                .map(|(l, _)| (i, l))
        });
        if let Some((i, label)) = by_id {
            match &mut chosen[i] {
                Some(Some(set)) => {
                    set.insert(label);
                }
                Some(None) => {}
                slot @ None => *slot = Some(Some(HashSet::from([label]))),
            }
            queue.push(i);
            continue;
        }
        let names = jobs.iter().map(|j| j.name.value.as_str());
        let hint = match did_you_mean(want, names) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!(
                "jobs are: {}",
                jobs.iter()
                    .map(|j| j.name.value.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        errors.push(Diagnostic {
            file: v.file.clone(),
            line: v.pipeline.jobs_pos.line,
            column: v.pipeline.jobs_pos.column,
            path: "jobs".into(),
            message: format!("--job {want}: there is no such job"),
            hint: Some(hint),
        });
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    // Everything a selected job needs comes too, all of its instances.
    while let Some(i) = queue.pop() {
        for &dep in &v.needs[i] {
            if chosen[dep] != Some(None) {
                chosen[dep] = Some(None);
                queue.push(dep);
            }
        }
    }
    Ok(chosen)
}

pub fn plan(v: &Validated, opts: &PlanOptions) -> Result<Plan, Diagnostics> {
    let p = &v.pipeline;
    let chosen = select(v, opts)?;
    let name = p.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&v.file)
            .file_stem()
            .map(|s| s.to_string_lossy().trim_start_matches('.').to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "pipeline".into())
    });
    // Ids of the planned instances of each job, and which of them are skipped.
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); p.jobs.len()];
    let mut skipped: HashSet<String> = HashSet::new();
    let mut jobs = Vec::new();
    for &j in &v.order {
        let Some(filter) = &chosen[j] else { continue };
        let job = &p.jobs[j];
        let settings = job.settings.over(&p.defaults);
        let needs: Vec<String> = v.needs[j].iter().flat_map(|&d| ids[d].clone()).collect();
        for (label, matrix) in labels(job) {
            if filter.as_ref().is_some_and(|f| !f.contains(&label)) {
                continue;
            }
            let id = instance_id(&job.name.value, &label);
            let scope = Scope {
                event: &opts.event,
                branch: &opts.branch,
                vars: Some(&opts.vars),
                matrix: Some(&matrix),
            };
            let reason = match (&job.condition, needs.iter().find(|n| skipped.contains(*n))) {
                (Some(c), _) if !c.expr.eval(&scope) => Some(format!(
                    "`if: {}` is false (event={}, branch={})",
                    c.source,
                    shown(&opts.event),
                    shown(&opts.branch)
                )),
                (_, Some(dep)) => Some(format!("it needs `{dep}`, which is skipped")),
                _ => None,
            };
            if reason.is_some() {
                skipped.insert(id.clone());
            }
            let timeout = settings.timeout.unwrap_or(DEFAULT_TIMEOUT);
            let mut base_env = BTreeMap::from([
                ("CI".to_string(), "true".to_string()),
                ("RUNNER_JOB".to_string(), id.clone()),
                ("RUNNER_EVENT".to_string(), opts.event.clone()),
                ("RUNNER_BRANCH".to_string(), opts.branch.clone()),
            ]);
            base_env.extend(p.env.clone());
            base_env.extend(job.env.clone());
            for (k, val) in &matrix {
                base_env.insert(format!("MATRIX_{}", k.to_ascii_uppercase()), val.clone());
            }
            let steps = job
                .steps
                .iter()
                .map(|s| {
                    let eff = s.settings.over(&Settings {
                        timeout: Some(timeout),
                        ..settings.clone()
                    });
                    let mut env = base_env.clone();
                    env.extend(s.env.clone());
                    env.extend(opts.vars.clone());
                    PlannedStep {
                        name: s.name.clone(),
                        run: s.run.clone(),
                        shell: eff.shell.unwrap_or(Shell::Sh),
                        image: match eff.image {
                            Some(Image::Oci(text)) if crate::template::is_template(&text) => {
                                Image::Oci(crate::template::substitute(&text, &matrix))
                            }
                            other => other.unwrap_or(Image::Host),
                        },
                        isolation: opts
                            .isolation
                            .or(eff.isolation)
                            .unwrap_or(Isolation::Container),
                        env,
                        workdir: eff.workdir.unwrap_or_else(|| DEFAULT_WORKDIR.into()),
                        timeout: eff.timeout.unwrap_or(timeout),
                        network: eff.network.unwrap_or(Network::None),
                        resources: eff.resources,
                        continue_on_error: s.continue_on_error,
                        secrets: s.secrets.clone(),
                    }
                })
                .collect();
            ids[j].push(id.clone());
            jobs.push(PlannedJob {
                id,
                name: job.name.value.clone(),
                matrix,
                needs: needs.clone(),
                skipped: reason,
                allow_failure: job.allow_failure,
                retry: job.retry,
                timeout,
                steps,
            });
        }
    }
    Ok(Plan { name, jobs })
}

fn shown(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}
