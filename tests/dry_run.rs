//! End-to-end tests of `runner exec --dry-run`, `runner validate` and `runner schema`, run as
//! the user runs them: the real binary, real files, exit codes and output compared.
//!
//! Golden files: `tests/golden/<example>.txt` and `.json` hold the dry-run of every file in
//! `examples/`. After an intended change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p runner --test dry_run` and review the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn runner(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .current_dir(dir)
        // Keep the user's data and config out of the tests.
        .env("RUNNER_DATA_DIR", dir.join(".runner-test-data"))
        .env("RUNNER_CONFIG", dir.join(".runner-test-config.toml"))
        .output()
        .expect("run the runner binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "examples/ should hold at least three pipelines"
    );
    files
}

/// Compare with the golden file, or write it when UPDATE_GOLDEN is set.
fn golden(name: &str, actual: &str) -> Result<(), String> {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p runner --test dry_run",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the output at line {}:\n  golden: {:?}\n  actual: {:?}\n(UPDATE_GOLDEN=1 to accept)",
        path.display(),
        first + 1,
        expected.lines().nth(first),
        actual.lines().nth(first)
    ))
}

#[test]
fn dry_run_of_every_example_matches_its_golden_text_and_json() {
    let mut failures = Vec::new();
    for file in examples() {
        let rel = format!("examples/{}", file.file_name().unwrap().to_string_lossy());
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for json in [false, true] {
            let mut args = vec!["exec", "--dry-run", "--event", "push", "--branch", "main"];
            if json {
                args.push("--json");
            }
            args.push(&rel);
            let out = runner(&root(), &args);
            assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
            let ext = if json { "json" } else { "txt" };
            if let Err(e) = golden(&format!("{stem}.{ext}"), &stdout(&out)) {
                failures.push(e);
            }
            if json {
                // The JSON is the documented plan: it reads back into the contract type.
                let plan: pipelines::Plan = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("{rel}: the JSON plan does not parse: {e}"));
                assert!(!plan.jobs.is_empty());
            }
        }
        let out = runner(&root(), &["validate", &rel]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "validate {rel}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).contains(": ok:"), "{}", stdout(&out));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_text_plan_shows_stages_skips_and_secret_names_only() {
    let out = runner(
        &root(),
        &[
            "exec",
            "--dry-run",
            "--branch",
            "dev",
            "--var",
            "DEPLOY_TOKEN=not-a-secret-value",
            "examples/matrix-dag.yml",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("for event push, branch dev"), "{text}");
    assert!(
        text.contains("stage 1: lint, build (arch=amd64, profile=debug),"),
        "{text}"
    );
    assert!(text.contains("stage 3: deploy (skipped)"), "{text}");
    assert!(
        text.contains("skipped    `if: branch == 'main' && event != 'pull_request'` is false (event=push, branch=dev)"),
        "{text}"
    );
    // --var values are variables, shown; secrets are never values in the plan.
    assert!(text.contains("DEPLOY_TOKEN=not-a-secret-value"));
    let json = runner(
        &root(),
        &[
            "exec",
            "-n",
            "--json",
            "--branch",
            "main",
            "examples/matrix-dag.yml",
        ],
    );
    let plan: pipelines::Plan = serde_json::from_slice(&json.stdout).unwrap();
    let deploy = plan.jobs.iter().find(|j| j.name == "deploy").unwrap();
    assert_eq!(deploy.steps[0].secrets, ["DEPLOY_TOKEN"]);
    assert!(!deploy.steps[0].env.contains_key("DEPLOY_TOKEN"));
}

#[test]
fn job_selection_isolation_and_event_flags() {
    let args = [
        "exec",
        "-n",
        "--json",
        "--branch",
        "main",
        "--event",
        "pull_request",
        "--isolation",
        "vm",
        "--job",
        "test",
        "examples/matrix-dag.yml",
    ];
    let out = runner(&root(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: pipelines::Plan = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["build", "build", "build", "build", "test"]);
    assert!(plan
        .jobs
        .iter()
        .flat_map(|j| &j.steps)
        .all(|s| s.isolation == pipelines::Isolation::Vm));
    assert_eq!(plan.jobs[0].steps[0].env["RUNNER_EVENT"], "pull_request");

    let out = runner(
        &root(),
        &["exec", "-n", "--job", "tset", "examples/matrix-dag.yml"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--job tset: there is no such job"), "{err}");
    assert!(err.contains("did you mean `test`?"), "{err}");
}

#[test]
fn default_file_is_dot_runner_yml_and_branch_comes_from_git() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = runner(dir, &["exec", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(".runner.yml:1:1: cannot read the file"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("create .runner.yml"));

    std::fs::write(
        dir.join(".runner.yml"),
        "jobs:\n  only-main:\n    if: branch == 'release/1'\n    steps: [echo hi]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/release/1\n").unwrap();
    let out = runner(dir, &["exec", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("pipeline runner (.runner.yml) for event push, branch release/1"),
        "{text}"
    );
    assert!(text.contains("1 job (0 skipped)"), "{text}");
    let out = runner(dir, &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

const BAD: &str = "\
name: bad
defaults:
  isolation: containr
jobs:
  build:
    neds: [lint]
    steps:
      - run: make
        timeout: 10x
  lint:
    needs: [build]
    steps: []
";

#[test]
fn bad_pipelines_exit_2_with_every_problem_located() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.yml"), BAD).unwrap();
    for args in [
        &["validate", "bad.yml"][..],
        &["exec", "--dry-run", "bad.yml"][..],
    ] {
        let out = runner(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
        let err = stderr(&out);
        let expected = [
            "error: bad.yml:3:14: defaults.isolation: `containr` is not one of container | vm",
            "  = hint: did you mean `container`? valid: container | vm",
            "error: bad.yml:6:5: jobs.build.neds: unknown key `neds`",
            "  = hint: did you mean `needs`?",
            "error: bad.yml:9:18: jobs.build.steps[0].timeout: bad duration: `10x`: unknown unit `x`",
            " 9 |         timeout: 10x",
            "   |                  ^",
            "error: bad.yml:12:12: jobs.lint.steps: `steps` is empty",
            "4 problems in bad.yml",
        ];
        for line in expected {
            assert!(
                err.lines().any(|l| l == line),
                "missing `{line}` in:\n{err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
    }

    let out = runner(tmp.path(), &["validate", "--json", "bad.yml"]);
    assert_eq!(out.status.code(), Some(2));
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diags.as_array().unwrap().len(), 4);
    assert_eq!(diags[2]["line"], 9);
    assert_eq!(diags[2]["column"], 18);
    assert_eq!(diags[2]["path"], "jobs.build.steps[0].timeout");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let cases: [&[&str]; 5] = [
        &["exec", "--dry-run", "--var", "NOEQUALS", "x.yml"],
        &["exec", "--dry-run", "--isolation", "docker"],
        &["exec", "--dry-run", "--event", "tag"],
        &["exec", "--json", "examples/hello.yml"],
        &["exec", "--secret", "bad-name", "--dry-run"],
    ];
    for args in cases {
        let out = runner(&root(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("error:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn schema_is_json_schema_for_the_same_keys() {
    let out = runner(&root(), &["schema"]);
    assert!(out.status.success());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["required"], serde_json::json!(["jobs"]));
    let step = &s["$defs"]["step"]["oneOf"][0]["properties"];
    for key in [
        "run",
        "image",
        "isolation",
        "timeout",
        "network",
        "resources",
        "secrets",
    ] {
        assert!(
            step.get(key).is_some(),
            "step.{key} missing from the schema"
        );
    }
    assert_eq!(
        s["$defs"]["job"]["properties"]["isolation"]["enum"],
        serde_json::json!(["container", "vm"])
    );
}

#[test]
fn help_reads_well() {
    let out = runner(&root(), &["--help"]);
    assert!(out.status.success());
    let top = stdout(&out);
    for cmd in ["exec", "validate", "schema"] {
        assert!(top.contains(cmd), "{top}");
    }
    let out = runner(&root(), &["exec", "--help"]);
    let help = stdout(&out);
    for flag in [
        "--dry-run",
        "--job",
        "--json",
        "--isolation",
        "--event",
        "--branch",
        "--var",
        "--parallel",
        "--timestamps",
        "--workspace",
        "--bind-workspace",
        "--secret",
        "--secrets-file",
        "[default: .runner.yml]",
        "Examples:",
    ] {
        assert!(
            help.contains(flag),
            "`{flag}` missing from exec --help:\n{help}"
        );
    }
}

#[test]
fn validate_takes_several_files_and_fails_if_any_is_bad() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.yml"), BAD).unwrap();
    let hello = root().join("examples/hello.yml");
    let out = runner(
        tmp.path(),
        &["validate", hello.to_str().unwrap(), "bad.yml"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("hello.yml: ok: 1 job, 1 with the matrix expanded, 1 step"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("4 problems in bad.yml"),
        "{}",
        stderr(&out)
    );
    let out = runner(tmp.path(), &["validate", "--json", hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).trim(), "[]");
}

/// An independent validator (Python's `jsonschema`, draft 2020-12) checks that `runner schema`
/// is a valid schema, accepts every example and rejects what the parser rejects.
#[testkit::needs(python_module("yaml"), python_module("jsonschema"))]
#[test]
fn schema_accepts_the_examples_and_rejects_bad_input_in_a_real_validator() {
    let tmp = tempfile::tempdir().unwrap();
    let out = runner(&root(), &["schema"]);
    assert!(out.status.success());
    let schema = tmp.path().join("schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for f in sys.argv[2:]:
    errors = [e.message for e in v.iter_errors(yaml.safe_load(open(f)))]
    assert not errors, (f, errors)
bad = [
    "jobs: {a: {stpes: [x]}}",
    "jobs: {a: {steps: []}}",
    "jobs: {a: {steps: [{run: x, timeout: 10x}]}}",
    "jobs: {a: {steps: [{run: x, isolation: docker}]}}",
    "jobs: {a: {steps: [{run: x, resources: {memory: '512'}}]}}",
    "jobs: {a: {steps: [{name: x}]}}",
    "jobs: {'my job': {steps: [x]}}",
    "name: x",
]
for b in bad:
    assert list(v.iter_errors(yaml.safe_load(b))), "accepted: " + b
print("ok", len(sys.argv) - 2)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(&schema);
    for f in examples() {
        cmd.arg(f);
    }
    let out = cmd.output().expect("python3 is needed for this test");
    assert!(
        out.status.success(),
        "the schema check failed (is python3-jsonschema installed?):\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let expected = format!("ok {}", examples().len());
    assert!(stdout(&out).starts_with(&expected), "{}", stdout(&out));
}
