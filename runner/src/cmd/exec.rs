//! `runner exec`: plan a pipeline file and either print the plan (`--dry-run`) or run it here
//! (`exec_run`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use pipelines::{Isolation, PlanOptions};

use super::{dry_run, exec_run, validate, Context};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  runner exec --dry-run                         plan .runner.yml for a push to the current branch
  runner exec --dry-run --json ci.yml           the plan as JSON (documented in docs/pipeline.md)
  runner exec --job test --event pull_request   run `test` and the jobs it needs
  runner exec --isolation vm --secret TOKEN     every step in a VM; TOKEN's value from the environment")]
pub struct Args {
    /// Pipeline file
    #[arg(value_name = "FILE", default_value = ".runner.yml")]
    pub file: PathBuf,
    /// Print the plan (jobs in order, matrix expanded, effective settings) without running anything
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Only this job and the jobs it needs; a job name or a matrix instance such as
    /// "build (arch=amd64)". Repeat for several
    #[arg(long = "job", short = 'j', value_name = "NAME")]
    pub jobs: Vec<String>,
    /// With --dry-run: print the plan as a JSON document
    #[arg(long)]
    pub json: bool,
    /// Run every step with this isolation, whatever the file says
    #[arg(long, value_enum, value_name = "KIND")]
    pub isolation: Option<IsolationArg>,
    /// The event `if:` conditions see
    #[arg(long, value_enum, default_value_t = Event::Push)]
    pub event: Event,
    /// The branch `if:` conditions see [default: the branch checked out where FILE is, if any]
    #[arg(long, value_name = "B")]
    pub branch: Option<String>,
    /// A variable: `vars.K` in `if:` conditions and K in every step's environment. Repeatable
    #[arg(long = "var", value_name = "K=V", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// How many jobs may run at once [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub parallel: Option<NonZeroUsize>,
    /// Prefix every output line with the time since its step started
    #[arg(long)]
    pub timestamps: bool,
    /// Source tree the jobs see as their workspace [default: the directory holding FILE]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Mount the workspace read-write into the steps instead of giving each job a copy
    #[arg(long)]
    pub bind_workspace: bool,
    /// A secret for steps that list it: NAME=VALUE, or NAME to take the value from the
    /// environment variable NAME (keeps it out of `ps`). Repeatable
    #[arg(long = "secret", value_name = "NAME[=VALUE]", value_parser = parse_secret)]
    pub secrets: Vec<(String, String)>,
    /// Read secrets from a file of NAME=VALUE lines
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    Container,
    Vm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Event {
    Push,
    #[value(name = "pull_request", alias = "pull-request")]
    PullRequest,
    Manual,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Manual => "manual",
        }
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not K=V"))?;
    if !valid_name(k) {
        return Err(format!(
            "`{k}` is not a valid variable name (letters, digits, _)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_secret(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(_) => parse_var(s),
        None if valid_name(s) => std::env::var(s)
            .map(|v| (s.to_string(), v))
            .map_err(|_| format!("--secret {s}: the environment variable {s} is not set")),
        None => Err(format!("`{s}` is not a valid secret name")),
    }
}

impl Args {
    pub fn plan_options(&self) -> PlanOptions {
        let dir = self
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        PlanOptions {
            event: self.event.as_str().to_string(),
            branch: self
                .branch
                .clone()
                .or_else(|| git_branch(dir))
                .unwrap_or_default(),
            vars: self.vars.iter().cloned().collect::<BTreeMap<_, _>>(),
            jobs: self.jobs.clone(),
            isolation: self.isolation.map(|i| match i {
                IsolationArg::Container => Isolation::Container,
                IsolationArg::Vm => Isolation::Vm,
            }),
        }
    }
}

/// The branch checked out in the git work tree holding `dir`, read from `HEAD` (no `git`
/// binary needed). `None` outside a work tree or on a detached HEAD.
pub fn git_branch(dir: &Path) -> Option<String> {
    let start = std::fs::canonicalize(dir).ok()?;
    for d in start.ancestors() {
        let dot_git = d.join(".git");
        let git_dir = if dot_git.is_dir() {
            dot_git
        } else if dot_git.is_file() {
            // A linked work tree: `.git` is a file "gitdir: <path>".
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
            if target.is_absolute() {
                target
            } else {
                d.join(target)
            }
        } else {
            continue;
        };
        let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
        return head
            .trim()
            .strip_prefix("ref: refs/heads/")
            .map(str::to_string);
    }
    None
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    if args.json && !args.dry_run {
        eprintln!("error: --json prints the plan and needs --dry-run");
        return Ok(2);
    }
    let opts = args.plan_options();
    let plan = match pipelines::plan_file(&args.file, &opts) {
        Ok(plan) => plan,
        Err(diags) => {
            validate::report(&args.file, &diags);
            return Ok(2);
        }
    };
    if args.dry_run {
        let out = if args.json {
            dry_run::json(&plan)?
        } else {
            dry_run::text(&plan, &args.file, &opts)
        };
        print!("{out}");
        return Ok(0);
    }
    exec_run::run_pipeline(ctx, args, plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_and_secrets_parse() {
        assert_eq!(parse_var("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_var("A").is_err());
        assert!(parse_var("1A=x").is_err());
        assert_eq!(parse_secret("T=v"), Ok(("T".into(), "v".into())));
        assert!(parse_secret("RUNNER_SURELY_UNSET_VARIABLE_XYZ").is_err());
        assert!(parse_secret("bad-name").is_err());
    }

    #[test]
    fn git_branch_reads_head_of_plain_and_linked_work_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/feature/x\n").unwrap();
        assert_eq!(git_branch(&repo.join("sub")).as_deref(), Some("feature/x"));

        let linked = tmp.path().join("linked");
        std::fs::create_dir_all(repo.join(".git/worktrees/l")).unwrap();
        std::fs::write(repo.join(".git/worktrees/l/HEAD"), "ref: refs/heads/wt\n").unwrap();
        std::fs::create_dir_all(&linked).unwrap();
        let gitdir = repo.join(".git/worktrees/l");
        std::fs::write(
            linked.join(".git"),
            format!("gitdir: {}\n", gitdir.display()),
        )
        .unwrap();
        assert_eq!(git_branch(&linked).as_deref(), Some("wt"));

        std::fs::write(repo.join(".git/HEAD"), "0123456789abcdef\n").unwrap();
        assert_eq!(git_branch(&repo), None);
    }
}
