//! One test per kind of bad input: each asserts the message, the line and column, the key path
//! and the hint, so a regression in where or how we report shows up here.

use pipelines::{validate_str, Diagnostic};

fn errors(src: &str) -> Vec<Diagnostic> {
    match validate_str(src, "p.yml") {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(d) => d.0,
    }
}

/// The single error, with its place.
fn only(src: &str) -> Diagnostic {
    let e = errors(src);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

#[track_caller]
fn at(d: &Diagnostic, line: usize, column: usize, path: &str, message: &str) {
    assert_eq!(
        (d.line, d.column, d.path.as_str()),
        (line, column, path),
        "{d}"
    );
    assert!(d.message.contains(message), "message: {d}");
    assert_eq!(d.file, "p.yml");
}

#[track_caller]
fn hint(d: &Diagnostic, text: &str) {
    let h = d.hint.as_deref().unwrap_or("");
    assert!(h.contains(text), "hint `{h}` lacks `{text}`");
}

#[test]
fn yaml_syntax() {
    let d = only("jobs:\n  a:\n    steps: [{run: x}\n  b: 1\n");
    assert!(d.message.starts_with("YAML syntax error"), "{d}");
    assert_eq!(d.path, "");
    assert!(d.line >= 3, "{d}");

    let d = only("jobs:\n\tbuild: {}\n");
    assert!(d.message.starts_with("YAML syntax error"), "{d}");
    assert_eq!(d.line, 2);
    hint(&d, "indent with spaces");
}

#[test]
fn empty_file_and_wrong_top_level() {
    let d = only("");
    at(&d, 1, 1, "", "the file is empty");
    let d = only("- a\n- b\n");
    at(
        &d,
        1,
        1,
        "",
        "expected a mapping with `jobs:` at the top, found a list",
    );
    let d = only("name: x\n");
    at(&d, 1, 1, "", "the pipeline has no `jobs:`");
}

#[test]
fn wrong_types() {
    let src = "\
jobs:
  a:
    retry: two
    allow_failure: yes
    env: [A]
    steps:
      - run: 42
        continue_on_error: 1
        secrets: TOKEN
";
    let e = errors(src);
    assert_eq!(e.len(), 6, "{e:#?}");
    at(
        &e[0],
        3,
        12,
        "jobs.a.retry",
        "expected a whole number from 0 to 10, found `two`",
    );
    at(
        &e[1],
        4,
        20,
        "jobs.a.allow_failure",
        "expected true or false, found a string",
    );
    hint(&e[1], "`yes` is text in YAML 1.2: write true or false");
    at(
        &e[2],
        5,
        10,
        "jobs.a.env",
        "expected a mapping of NAME: value, found a list",
    );
    at(
        &e[3],
        7,
        14,
        "jobs.a.steps[0].run",
        "expected a string, found a number",
    );
    at(
        &e[4],
        8,
        28,
        "jobs.a.steps[0].continue_on_error",
        "expected true or false, found a number",
    );
    at(
        &e[5],
        9,
        18,
        "jobs.a.steps[0].secrets",
        "expected a list of secret names",
    );
    let e = errors("jobs:\n  a:\n    steps:\n      - run: x\n        secrets: TOKEN\n");
    at(
        &e[0],
        5,
        18,
        "jobs.a.steps[0].secrets",
        "expected a list of secret names, found a string",
    );
    hint(&e[0], "values never go in the file");
}

#[test]
fn unknown_keys_are_located_with_hints() {
    let src = "\
jobs:
  build:
    stpes: []
    steps:
      - run: make
        imgae: host
        needs: [x]
        continue-on-error: true
        script: make
";
    let e = errors(src);
    assert_eq!(e.len(), 5, "{e:#?}");
    at(&e[0], 3, 5, "jobs.build.stpes", "unknown key `stpes`");
    hint(&e[0], "did you mean `steps`?");
    at(
        &e[1],
        6,
        9,
        "jobs.build.steps[0].imgae",
        "unknown key `imgae`",
    );
    hint(&e[1], "did you mean `image`?");
    at(
        &e[2],
        7,
        9,
        "jobs.build.steps[0].needs",
        "unknown key `needs`",
    );
    hint(&e[2], "`needs` belongs to a job, not a step");
    at(
        &e[3],
        8,
        9,
        "jobs.build.steps[0].continue-on-error",
        "unknown key",
    );
    hint(&e[3], "did you mean `continue_on_error`?");
    at(
        &e[4],
        9,
        9,
        "jobs.build.steps[0].script",
        "unknown key `script`",
    );
    hint(&e[4], "`- run: ...`");

    let d = only("name: x\njbos: {}\njobs: {a: {steps: [x]}}\n");
    at(&d, 2, 1, "jbos", "unknown key `jbos`");
    hint(&d, "did you mean `jobs`?");
}

#[test]
fn bad_durations() {
    let src = "\
defaults:
  timeout: 10
jobs:
  a:
    timeout: 1h30
    steps:
      - run: x
        timeout: 5 minutes
      - run: y
        timeout: 0s
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(
        &e[0],
        2,
        12,
        "defaults.timeout",
        "bad duration: `10` has no unit",
    );
    hint(&e[0], "90s, 10m, 1h30m");
    at(
        &e[1],
        5,
        14,
        "jobs.a.timeout",
        "bad duration: `1h30`: a number without a unit",
    );
    at(
        &e[2],
        8,
        18,
        "jobs.a.steps[0].timeout",
        "unknown unit `minutes`",
    );
    at(&e[3], 10, 18, "jobs.a.steps[1].timeout", "longer than zero");
}

#[test]
fn bad_sizes_and_resources() {
    let src = "\
jobs:
  a:
    resources: {memory: 512, pids: 0}
    steps:
      - run: x
        resources:
          memory: 1X
          cpus: -1
          disk: 1G
";
    let e = errors(src);
    assert_eq!(e.len(), 5, "{e:#?}");
    at(
        &e[0],
        3,
        25,
        "jobs.a.resources.memory",
        "bad size: `512` has no unit",
    );
    hint(&e[0], "512MiB");
    at(
        &e[1],
        3,
        36,
        "jobs.a.resources.pids",
        "expected a whole number from 1",
    );
    at(
        &e[2],
        7,
        19,
        "jobs.a.steps[0].resources.memory",
        "unknown unit `X`",
    );
    at(
        &e[3],
        8,
        17,
        "jobs.a.steps[0].resources.cpus",
        "expected a number of CPUs above 0",
    );
    at(
        &e[4],
        9,
        11,
        "jobs.a.steps[0].resources.disk",
        "unknown key `disk`",
    );
    hint(&e[4], "valid keys here: cpus, memory, pids");
}

#[test]
fn empty_or_missing_steps() {
    let d = only("jobs:\n  a:\n    steps: []\n");
    at(&d, 3, 12, "jobs.a.steps", "`steps` is empty");
    let d = only("jobs:\n  a:\n    env: {}\n");
    at(&d, 3, 5, "jobs.a", "the job has no `steps:`");
    let d = only("jobs:\n  a:\n    steps:\n      - name: x\n");
    at(&d, 4, 9, "jobs.a.steps[0]", "the step has no `run:`");
    let d = only("jobs: {}\n");
    at(&d, 1, 7, "jobs", "`jobs` is empty");
}

#[test]
fn duplicate_step_names() {
    let src = "\
jobs:
  a:
    steps:
      - name: build
        run: make
      - name: build
        run: make again
";
    let d = only(src);
    at(
        &d,
        6,
        15,
        "jobs.a.steps[1].name",
        "duplicate step name `build`",
    );
    hint(&d, "first used at line 4");
}

#[test]
fn duplicate_keys() {
    let d = only("jobs:\n  a:\n    steps: [x]\n  a:\n    steps: [y]\n");
    at(&d, 4, 3, "", "duplicate key `a`");
    hint(&d, "line 2");
}

#[test]
fn unknown_needs() {
    let src = "\
jobs:
  build:
    steps: [make]
  test:
    needs: [biuld, test]
    steps: [make test]
";
    let e = errors(src);
    assert_eq!(e.len(), 2, "{e:#?}");
    at(
        &e[0],
        5,
        13,
        "jobs.test.needs[0]",
        "`test` needs `biuld`, which is not a job",
    );
    hint(&e[0], "did you mean `build`?");
    at(&e[1], 5, 20, "jobs.test.needs[1]", "`test` needs itself");
}

#[test]
fn cyclic_needs_name_the_cycle() {
    let src = "\
jobs:
  setup:
    steps: [x]
  a:
    needs: [setup, c]
    steps: [x]
  b:
    needs: [a]
    steps: [x]
  c:
    needs: [b]
    steps: [x]
";
    let d = only(src);
    at(
        &d,
        5,
        20,
        "jobs.a.needs[1]",
        "`needs` forms a cycle: a -> c -> b -> a",
    );
}

#[test]
fn bad_image_references() {
    let src = "\
defaults:
  image: ''
jobs:
  a:
    image: Busybox:latest
    steps:
      - run: x
        image: 'busybox: latest'
      - run: y
        image: 127.0.0.1:5000/busybox@sha256:abc
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(&e[0], 2, 10, "defaults.image", "bad image reference ``");
    hint(&e[0], "127.0.0.1:5000/busybox:latest, or `host`");
    at(
        &e[1],
        5,
        12,
        "jobs.a.image",
        "bad image reference `Busybox:latest`",
    );
    at(
        &e[2],
        8,
        16,
        "jobs.a.steps[0].image",
        "bad image reference `busybox: latest`",
    );
    at(
        &e[3],
        10,
        16,
        "jobs.a.steps[1].image",
        "bad image reference",
    );
    hint(&e[1], "lowercase");
    hint(&e[2], "no spaces");
    hint(&e[3], "64 hex digits");
}

#[test]
fn bad_if_expressions() {
    let src = "\
jobs:
  a:
    if: branch = 'main'
    steps: [x]
  b:
    if: \"brnach == 'main' && (event == 'push'\"
    steps: [x]
  c:
    if: matrix.os == 'linux'
    steps: [x]
  d:
    if: [branch]
    steps: [x]
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(
        &e[0],
        3,
        16,
        "jobs.a.if",
        "bad condition: `=` is not an operator",
    );
    hint(&e[0], "compare with ==");
    // The first problem in b's condition: parsing stops at the missing `)`.
    at(
        &e[1],
        6,
        46,
        "jobs.b.if",
        "bad condition: expected `)`, found the end",
    );
    at(&e[2], 9, 9, "jobs.c.if", "unknown variable `matrix.os`");
    hint(&e[2], "this job has no matrix");
    at(
        &e[3],
        12,
        9,
        "jobs.d.if",
        "expected a condition, found a list",
    );

    let d = only("jobs:\n  a:\n    if: brnach == 'main'\n    steps: [x]\n");
    at(&d, 3, 9, "jobs.a.if", "unknown variable `brnach`");
    hint(&d, "did you mean `branch`?");
}

#[test]
fn matrix_entries_that_match_nothing() {
    let src = "\
jobs:
  a:
    matrix:
      arch: [amd64, arm64]
      os: [linux]
      exclude:
        - {arch: s390x}
        - {os: linux, ach: arm64}
      include:
        - {arch: riscv64, extra: 1}
        - {arch: amd64}
    steps: [x]
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(
        &e[0],
        7,
        11,
        "jobs.a.matrix.exclude[0]",
        "this exclude matches no combination",
    );
    hint(&e[0], "`arch` has no value `s390x`; it has amd64, arm64");
    at(
        &e[1],
        8,
        23,
        "jobs.a.matrix.exclude[1].ach",
        "`ach` is not a matrix axis",
    );
    hint(&e[1], "did you mean `arch`?");
    at(
        &e[2],
        10,
        11,
        "jobs.a.matrix.include[0]",
        "this include matches no combination",
    );
    hint(&e[2], "name every axis (arch, os)");
    at(
        &e[3],
        11,
        11,
        "jobs.a.matrix.include[1]",
        "only repeats combinations",
    );

    let d = only("jobs:\n  a:\n    matrix: {arch: amd64}\n    steps: [x]\n");
    at(
        &d,
        3,
        20,
        "jobs.a.matrix.arch",
        "expected a list of values, found a string",
    );
}

#[test]
fn isolation_shell_network_outside_the_set() {
    let src = "\
defaults:
  isolation: microvm
jobs:
  a:
    network: bridged
    steps:
      - run: x
        shell: zsh
        isolation: VM
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(
        &e[0],
        2,
        14,
        "defaults.isolation",
        "`microvm` is not one of container | vm",
    );
    at(
        &e[1],
        5,
        14,
        "jobs.a.network",
        "`bridged` is not one of none | host | bridge",
    );
    hint(&e[1], "did you mean `bridge`?");
    at(
        &e[2],
        8,
        16,
        "jobs.a.steps[0].shell",
        "`zsh` is not one of sh | bash",
    );
    at(
        &e[3],
        9,
        20,
        "jobs.a.steps[0].isolation",
        "`VM` is not one of container | vm",
    );
    hint(&e[3], "did you mean `vm`?");
}

#[test]
fn names_env_and_secrets() {
    let src = "\
env: {1BAD: x, GOOD: ~}
jobs:
  'my job':
    steps:
      - run: x
        secrets: [DEPLOY-TOKEN, A, A]
        workdir: relative/dir
";
    let e = errors(src);
    assert_eq!(e.len(), 6, "{e:#?}");
    at(
        &e[0],
        1,
        7,
        "env.1BAD",
        "`1BAD` is not a valid variable name",
    );
    at(&e[1], 1, 22, "env.GOOD", "the value is empty (null)");
    at(
        &e[2],
        3,
        3,
        "jobs.my job",
        "`my job` is not a valid job name",
    );
    at(
        &e[3],
        6,
        19,
        "jobs.my job.steps[0].secrets[0]",
        "`DEPLOY-TOKEN` is not a valid secret name",
    );
    at(
        &e[4],
        6,
        36,
        "jobs.my job.steps[0].secrets[2]",
        "`A` is listed twice",
    );
    at(
        &e[5],
        7,
        18,
        "jobs.my job.steps[0].workdir",
        "not an absolute path",
    );
}

#[test]
fn every_problem_is_reported_in_one_run_in_file_order() {
    let src = "\
version: 2
defaults: {timeout: 5, isolation: docker}
jobs:
  a:
    needs: [ghost]
    steps: []
  b:
    steps:
      - {name: s, run: x, network: wifi}
      - {name: s, run: y}
";
    let e = errors(src);
    let lines: Vec<usize> = e.iter().map(|d| d.line).collect();
    assert_eq!(lines, [1, 2, 2, 5, 6, 9, 10], "{e:#?}");
    let mut sorted = e.clone();
    sorted.sort_by_key(|d| (d.line, d.column));
    assert_eq!(sorted, e);
    // The one-line form is file:line:column: path: message (hint).
    assert_eq!(
        e[0].to_string(),
        "p.yml:1:10: version: unsupported version `2` (this runner reads version 1)"
    );
}

#[test]
fn bad_image_templates() {
    let src = "\
defaults:
  image: x:${{ matrix.a }}
jobs:
  a:
    image: busybox:${{ matrix.tag }}
    steps: [x]
  b:
    matrix: {tag: [ok, 'Not OK']}
    steps:
      - run: x
        image: busybox:${{ matrix.tag }}
      - run: y
        image: busybox:${{ env.TAG }}
";
    let e = errors(src);
    assert_eq!(e.len(), 4, "{e:#?}");
    at(
        &e[0],
        2,
        10,
        "defaults.image",
        "cannot be used in `defaults`",
    );
    at(&e[1], 5, 12, "jobs.a.image", "needs a matrix on this job");
    at(
        &e[2],
        11,
        16,
        "jobs.b.steps[0].image",
        "bad image reference `busybox:Not OK` for (tag=Not OK)",
    );
    at(
        &e[3],
        13,
        16,
        "jobs.b.steps[1].image",
        "only `${{ matrix.KEY }}` can be used here",
    );
}

#[test]
fn secrets_must_not_also_be_set_in_env() {
    let src = "\
env: {TOKEN: oops}
jobs:
  a:
    env: {KEY: also-oops}
    steps:
      - run: x
        env: {OTHER: fine}
        secrets: [OTHER, KEY, TOKEN, FINE]
";
    let e = errors(src);
    assert_eq!(e.len(), 3, "{e:#?}");
    at(
        &e[0],
        8,
        19,
        "jobs.a.steps[0].secrets[0]",
        "`OTHER` is a secret of this step and is also set in the step's `env`",
    );
    at(
        &e[1],
        8,
        26,
        "jobs.a.steps[0].secrets[1]",
        "also set in the job's `env`",
    );
    at(
        &e[2],
        8,
        31,
        "jobs.a.steps[0].secrets[2]",
        "also set in the pipeline's `env`",
    );
    hint(&e[2], "remove it from `env`");
}

#[test]
fn yaml_level_problems_do_not_hide_the_others() {
    let src = "\
jobs:
  a:
    steps: [x]
    steps: [y]
    retry: many
  b: !custom
    steps: [z]
";
    let e = errors(src);
    assert_eq!(e.len(), 3, "{e:#?}");
    at(&e[0], 4, 5, "", "duplicate key `steps`");
    at(&e[1], 5, 12, "jobs.a.retry", "expected a whole number");
    at(&e[2], 6, 6, "", "YAML tag `!custom` is not supported here");
}
