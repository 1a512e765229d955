//! Planning: defaults and overrides, environment precedence, matrix instances, conditions and
//! skips, `--job` selection with the jobs it needs, and order.

use std::collections::BTreeMap;
use std::time::Duration;

use pipelines::{plan_str, Image, Isolation, Network, Plan, PlanOptions, Shell};

fn plan(src: &str, opts: &PlanOptions) -> Plan {
    plan_str(src, "ci.yml", opts).unwrap_or_else(|d| panic!("{d}"))
}

fn push_to(branch: &str) -> PlanOptions {
    PlanOptions {
        event: "push".into(),
        branch: branch.into(),
        ..PlanOptions::default()
    }
}

fn ids(p: &Plan) -> Vec<&str> {
    p.jobs.iter().map(|j| j.id.as_str()).collect()
}

const LAYERS: &str = "\
name: layers
env: {A: top, B: top, C: top, D: top}
defaults:
  image: 127.0.0.1:5000/busybox:latest
  isolation: container
  timeout: 10m
  resources: {memory: 1G, pids: 100}
jobs:
  j:
    env: {B: job, C: job}
    isolation: vm
    network: host
    resources: {cpus: 2}
    steps:
      - name: first
        run: echo 1
        env: {C: step}
      - name: second
        run: echo 2
        image: host
        isolation: container
        shell: bash
        workdir: /src
        timeout: 90s
        resources: {memory: 256MiB}
        continue_on_error: true
        secrets: [TOKEN]
";

#[test]
fn defaults_job_and_step_settings_layer_field_by_field() {
    let p = plan(LAYERS, &push_to("main"));
    assert_eq!(p.name, "layers");
    let j = &p.jobs[0];
    assert_eq!(j.timeout, Duration::from_secs(600));
    let (first, second) = (&j.steps[0], &j.steps[1]);

    assert_eq!(
        first.image,
        Image::Oci("127.0.0.1:5000/busybox:latest".into())
    );
    assert_eq!(first.isolation, Isolation::Vm);
    assert_eq!(first.shell, Shell::Sh);
    assert_eq!(first.workdir, "/workspace");
    assert_eq!(first.timeout, Duration::from_secs(600));
    assert_eq!(first.network, Network::Host);
    assert_eq!(first.resources.cpus, Some(2.0));
    assert_eq!(first.resources.memory, Some(1 << 30));
    assert_eq!(first.resources.pids, Some(100));
    assert!(!first.continue_on_error);
    assert!(first.secrets.is_empty());

    assert_eq!(second.image, Image::Host);
    assert_eq!(second.isolation, Isolation::Container);
    assert_eq!(second.shell, Shell::Bash);
    assert_eq!(second.workdir, "/src");
    assert_eq!(second.timeout, Duration::from_secs(90));
    assert_eq!(second.resources.memory, Some(256 << 20));
    assert_eq!(second.resources.cpus, Some(2.0));
    assert!(second.continue_on_error);
    assert_eq!(second.secrets, ["TOKEN"]);
}

#[test]
fn environment_precedence_is_pipeline_job_matrix_step_vars() {
    let src = "\
env: {A: top, B: top, C: top, MATRIX_OS: top}
jobs:
  j:
    matrix: {os: [linux]}
    env: {B: job, C: job}
    steps:
      - run: x
        env: {C: step, D: step}
";
    let opts = PlanOptions {
        vars: BTreeMap::from([("D".to_string(), "var".to_string())]),
        ..push_to("dev")
    };
    let p = plan(src, &opts);
    let env = &p.jobs[0].steps[0].env;
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("A"), Some("top"));
    assert_eq!(get("B"), Some("job"));
    assert_eq!(get("C"), Some("step"));
    assert_eq!(get("D"), Some("var"));
    assert_eq!(get("MATRIX_OS"), Some("linux"));
    assert_eq!(get("CI"), Some("true"));
    assert_eq!(get("RUNNER_JOB"), Some("j (os=linux)"));
    assert_eq!(get("RUNNER_BRANCH"), Some("dev"));
    assert_eq!(get("RUNNER_EVENT"), Some("push"));
    assert!(env.keys().all(|k| k != "TOKEN"));
}

#[test]
fn nothing_set_means_host_container_and_built_in_defaults() {
    let p = plan("jobs:\n  a:\n    steps: [make]\n", &PlanOptions::default());
    // No `name:`: the file's stem names the pipeline.
    assert_eq!(p.name, "ci");
    let s = &p.jobs[0].steps[0];
    assert_eq!((s.name.as_str(), s.run.as_str()), ("step 1", "make"));
    assert_eq!(s.image, Image::Host);
    assert_eq!(s.isolation, Isolation::Container);
    assert_eq!(s.network, Network::None);
    assert_eq!(s.timeout, pipelines::DEFAULT_TIMEOUT);
    assert_eq!(p.jobs[0].timeout, pipelines::DEFAULT_TIMEOUT);
    assert_eq!(s.resources, pipelines::Resources::default());
}

#[test]
fn isolation_override_wins_over_the_file() {
    let opts = PlanOptions {
        isolation: Some(Isolation::Vm),
        ..push_to("main")
    };
    let p = plan(LAYERS, &opts);
    assert!(p.jobs[0].steps.iter().all(|s| s.isolation == Isolation::Vm));
}

const DAG: &str = "\
jobs:
  deploy:
    needs: [test]
    if: branch == 'main' && event != 'pull_request'
    steps: [deploy]
  test:
    needs: [build, lint]
    steps: [test]
  build:
    matrix: {arch: [amd64, arm64]}
    if: matrix.arch == 'amd64' || vars.ALL == 'yes'
    steps: [build]
  lint:
    steps: [lint]
  docs:
    steps: [docs]
";

#[test]
fn order_is_topological_and_stable() {
    let p = plan(DAG, &push_to("main"));
    assert_eq!(
        ids(&p),
        [
            "build (arch=amd64)",
            "build (arch=arm64)",
            "lint",
            "test",
            "deploy",
            "docs"
        ]
    );
    assert_eq!(
        p.jobs[3].needs,
        ["build (arch=amd64)", "build (arch=arm64)", "lint"]
    );
    assert_eq!(
        p.jobs[0].matrix,
        BTreeMap::from([("arch".into(), "amd64".into())])
    );
    // The same input plans the same way every time.
    assert_eq!(plan(DAG, &push_to("main")), p);
}

#[test]
fn false_conditions_skip_and_skips_propagate() {
    let p = plan(DAG, &push_to("main"));
    let skipped: Vec<(&str, &str)> = p
        .jobs
        .iter()
        .filter_map(|j| j.skipped.as_deref().map(|r| (j.id.as_str(), r)))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "build (arch=arm64)",
                "`if: matrix.arch == 'amd64' || vars.ALL == 'yes'` is false (event=push, branch=main)"
            ),
            ("test", "it needs `build (arch=arm64)`, which is skipped"),
            ("deploy", "it needs `test`, which is skipped"),
        ]
    );

    let opts = PlanOptions {
        vars: BTreeMap::from([("ALL".to_string(), "yes".to_string())]),
        ..push_to("dev")
    };
    let p = plan(DAG, &opts);
    let deploy = p.jobs.iter().find(|j| j.name == "deploy").unwrap();
    assert_eq!(
        deploy.skipped.as_deref(),
        Some("`if: branch == 'main' && event != 'pull_request'` is false (event=push, branch=dev)")
    );
    assert!(p
        .jobs
        .iter()
        .filter(|j| j.name != "deploy")
        .all(|j| j.skipped.is_none()));
}

#[test]
fn job_selection_brings_what_it_needs() {
    let select = |jobs: &[&str]| {
        let opts = PlanOptions {
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            ..push_to("main")
        };
        plan_str(DAG, "ci.yml", &opts)
    };
    let p = select(&["test"]).unwrap();
    assert_eq!(
        ids(&p),
        ["build (arch=amd64)", "build (arch=arm64)", "lint", "test"]
    );
    let p = select(&["docs", "lint"]).unwrap();
    assert_eq!(ids(&p), ["lint", "docs"]);
    let p = select(&["build (arch=arm64)"]).unwrap();
    assert_eq!(ids(&p), ["build (arch=arm64)"]);

    let err = select(&["tset", "nope"]).unwrap_err().0;
    assert_eq!(err.len(), 2);
    assert_eq!(err[0].message, "--job tset: there is no such job");
    assert_eq!(err[0].hint.as_deref(), Some("did you mean `test`?"));
    assert_eq!((err[0].line, err[0].column), (2, 3));
    assert!(err[1]
        .hint
        .as_deref()
        .unwrap()
        .starts_with("jobs are: deploy, test"));
}

#[test]
fn json_round_trips_with_stable_field_names() {
    let p = plan(LAYERS, &push_to("main"));
    let json = serde_json::to_value(&p).unwrap();
    let step = &json["jobs"][0]["steps"][1];
    assert_eq!(step["image"], "host");
    assert_eq!(step["isolation"], "container");
    assert_eq!(step["timeout"], 90);
    assert_eq!(step["resources"]["memory"], 256 << 20);
    assert_eq!(step["secrets"], serde_json::json!(["TOKEN"]));
    assert_eq!(
        json["jobs"][0]["steps"][0]["image"]["oci"],
        "127.0.0.1:5000/busybox:latest"
    );
    assert_eq!(json["jobs"][0]["skipped"], serde_json::Value::Null);
    let back: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn anchors_and_merge_keys_work_like_gitlab_templates() {
    let src = "\
.base: &base
  image: 127.0.0.1:5000/busybox:latest
  timeout: 5m
jobs:
  a:
    <<: *base
    steps: [x]
";
    // Top-level keys starting with `.` hold templates and are not read themselves.
    let p = plan(src, &PlanOptions::default());
    assert_eq!(p.jobs[0].timeout, Duration::from_secs(300));
    assert_eq!(
        p.jobs[0].steps[0].image,
        Image::Oci("127.0.0.1:5000/busybox:latest".into())
    );
    let src = "\
defaults: &base
  image: 127.0.0.1:5000/busybox:latest
  timeout: 5m
jobs:
  a:
    <<: *base
    timeout: 7m
    steps: [x]
";
    let p = plan(src, &PlanOptions::default());
    assert_eq!(p.jobs[0].timeout, Duration::from_secs(420));
    assert_eq!(
        p.jobs[0].steps[0].image,
        Image::Oci("127.0.0.1:5000/busybox:latest".into())
    );
}

#[test]
fn image_templates_pick_an_image_per_matrix_instance() {
    let src = "\
jobs:
  test:
    matrix: {rust: ['1.85', '1.90']}
    image: 127.0.0.1:5000/rust:${{ matrix.rust }}
    steps:
      - run: cargo test
      - run: cargo fmt --check
        image: 127.0.0.1:5000/${{matrix.rust}}-tools:latest
";
    let p = plan(src, &PlanOptions::default());
    let images: Vec<String> = p
        .jobs
        .iter()
        .flat_map(|j| &j.steps)
        .map(|s| match &s.image {
            Image::Oci(r) => r.clone(),
            Image::Host => "host".into(),
        })
        .collect();
    assert_eq!(
        images,
        [
            "127.0.0.1:5000/rust:1.85",
            "127.0.0.1:5000/1.85-tools:latest",
            "127.0.0.1:5000/rust:1.90",
            "127.0.0.1:5000/1.90-tools:latest"
        ]
    );
}

#[test]
fn hidden_jobs_are_templates_and_do_not_run() {
    let src = "\
jobs:
  .defaults: &d
    image: 127.0.0.1:5000/busybox:latest
    steps: [echo template]
  .disabled:
    needs: [nowhere]
    steps: []
  real:
    <<: *d
";
    let p = plan(src, &PlanOptions::default());
    assert_eq!(ids(&p), ["real"]);
    assert_eq!(p.jobs[0].steps[0].run, "echo template");
    let err = plan_str(
        "jobs:\n  .only: {steps: [x]}\n",
        "ci.yml",
        &PlanOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.0[0].message, "`jobs` is empty");
}
