//! `runner exec --dry-run`: the plan for people (text) and for programs (JSON).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use pipelines::units::{format_duration, format_size};
use pipelines::{Image, Isolation, Network, Plan, PlanOptions, PlannedStep, Shell};

/// The plan as the JSON document described in docs/pipeline.md.
pub fn json(plan: &Plan) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(plan)? + "\n")
}

/// Stage of each job: 1 for jobs that need nothing, else one more than the latest need. Jobs
/// in one stage do not depend on each other, so they may run in parallel.
pub fn stages(plan: &Plan) -> Vec<usize> {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(plan.jobs.len());
    for job in &plan.jobs {
        let stage = 1 + job
            .needs
            .iter()
            .filter_map(|n| by_id.get(n.as_str()))
            .max()
            .copied()
            .unwrap_or(0);
        by_id.insert(&job.id, stage);
        out.push(stage);
    }
    out
}

pub fn text(plan: &Plan, file: &Path, opts: &PlanOptions) -> String {
    let mut o = String::new();
    let stage_of = stages(plan);
    let n_stages = stage_of.iter().max().copied().unwrap_or(0);
    let skipped = plan.jobs.iter().filter(|j| j.skipped.is_some()).count();
    let branch = if opts.branch.is_empty() {
        "(none)"
    } else {
        &opts.branch
    };
    let _ = writeln!(
        o,
        "pipeline {} ({}) for event {}, branch {}",
        plan.name,
        file.display(),
        opts.event,
        branch
    );
    let _ = writeln!(
        o,
        "{} {} ({} skipped) in {} {}; jobs in one stage may run in parallel",
        plan.jobs.len(),
        if plan.jobs.len() == 1 { "job" } else { "jobs" },
        skipped,
        n_stages,
        if n_stages == 1 { "stage" } else { "stages" },
    );
    o.push('\n');
    for stage in 1..=n_stages {
        let ids: Vec<String> = plan
            .jobs
            .iter()
            .zip(&stage_of)
            .filter(|(_, s)| **s == stage)
            .map(|(j, _)| {
                if j.skipped.is_some() {
                    format!("{} (skipped)", j.id)
                } else {
                    j.id.clone()
                }
            })
            .collect();
        let _ = writeln!(o, "stage {stage}: {}", ids.join(", "));
    }
    for job in &plan.jobs {
        o.push('\n');
        let _ = writeln!(o, "job {}", job.id);
        if !job.needs.is_empty() {
            let _ = writeln!(o, "  needs      {}", job.needs.join(", "));
        }
        if !job.matrix.is_empty() {
            let m: Vec<String> = job.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(o, "  matrix     {}", m.join(", "));
        }
        if let Some(reason) = &job.skipped {
            let _ = writeln!(o, "  skipped    {reason}");
            continue;
        }
        let mut line = format!("  timeout    {}", format_duration(job.timeout));
        if job.retry > 0 {
            let _ = write!(line, ", retry {}", job.retry);
        }
        if job.allow_failure {
            line.push_str(", allowed to fail");
        }
        let _ = writeln!(o, "{line}");
        // Variables every step shares are shown once, on the job; a step shows the rest.
        let common: BTreeMap<&str, &str> = match job.steps.split_first() {
            Some((first, rest)) => first
                .env
                .iter()
                .filter(|(k, v)| rest.iter().all(|s| s.env.get(*k) == Some(*v)))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            None => BTreeMap::new(),
        };
        env_lines(&mut o, "  ", common.iter().map(|(k, v)| (*k, *v)));
        for (i, step) in job.steps.iter().enumerate() {
            step_text(&mut o, i + 1, step, &common);
        }
    }
    o
}

fn step_text(o: &mut String, n: usize, s: &PlannedStep, common: &BTreeMap<&str, &str>) {
    if s.name == format!("step {n}") {
        let _ = writeln!(o, "  step {n}");
    } else {
        let _ = writeln!(o, "  step {n}: {}", s.name);
    }
    let image = match &s.image {
        Image::Host => "host (the host's root filesystem, read-only)".to_string(),
        Image::Oci(r) => r.clone(),
    };
    let isolation = match s.isolation {
        Isolation::Container => "container",
        Isolation::Vm => "vm",
    };
    let shell = match s.shell {
        Shell::Sh => "sh",
        Shell::Bash => "bash",
    };
    let network = match s.network {
        Network::None => "none",
        Network::Host => "host",
        Network::Bridge => "bridge",
    };
    let _ = writeln!(o, "    image      {image}");
    let _ = writeln!(o, "    isolation  {isolation}");
    let _ = writeln!(o, "    shell      {shell}");
    let _ = writeln!(o, "    workdir    {}", s.workdir);
    let _ = writeln!(o, "    timeout    {}", format_duration(s.timeout));
    let _ = writeln!(o, "    network    {network}");
    let mut res = Vec::new();
    if let Some(c) = s.resources.cpus {
        res.push(format!("cpus {c}"));
    }
    if let Some(m) = s.resources.memory {
        res.push(format!("memory {}", format_size(m)));
    }
    if let Some(p) = s.resources.pids {
        res.push(format!("pids {p}"));
    }
    if res.is_empty() {
        res.push("no limits set".into());
    }
    let _ = writeln!(o, "    resources  {}", res.join(", "));
    if s.continue_on_error {
        let _ = writeln!(o, "    on error   continue");
    }
    if !s.secrets.is_empty() {
        let _ = writeln!(
            o,
            "    secrets    {} (names only; values come from the runner)",
            s.secrets.join(", ")
        );
    }
    let own = s
        .env
        .iter()
        .filter(|(k, v)| common.get(k.as_str()) != Some(&v.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()));
    env_lines(o, "    ", own);
    for (i, line) in s.run.lines().enumerate() {
        let label = if i == 0 { "run" } else { "" };
        let _ = writeln!(o, "    {label:<10} {line}");
    }
}

/// `env        K=V` then one variable per line, aligned under the first.
fn env_lines<'a>(o: &mut String, indent: &str, vars: impl Iterator<Item = (&'a str, &'a str)>) {
    for (i, (k, v)) in vars.enumerate() {
        let label = if i == 0 { "env" } else { "" };
        let _ = writeln!(o, "{indent}{label:<10} {k}={}", v.escape_debug());
    }
}
