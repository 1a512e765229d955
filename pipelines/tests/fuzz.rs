//! Property tests: no input makes the parser or planner panic, every error has a real place,
//! and planned jobs always come after what they need.

use std::collections::HashMap;

use pipelines::{plan_str, validate_str, PlanOptions};
use proptest::prelude::*;

const EXAMPLES: &[&str] = &[
    include_str!("../../examples/hello.yml"),
    include_str!("../../examples/matrix-dag.yml"),
    include_str!("../../examples/busybox.yml"),
];

/// Pieces of pipeline YAML, so that random sequences reach deep into the decoder rather than
/// failing at the first character.
const PIECES: &[&str] = &[
    "jobs:",
    "steps:",
    "needs:",
    "matrix:",
    "include:",
    "exclude:",
    "if:",
    "env:",
    "defaults:",
    "image:",
    "isolation:",
    "timeout:",
    "resources:",
    "memory:",
    "cpus:",
    "pids:",
    "run:",
    "name:",
    "secrets:",
    "retry:",
    "network:",
    "shell:",
    "workdir:",
    "<<:",
    "a:",
    "b:",
    "c:",
    "arch:",
    " host",
    " vm",
    " container",
    " 10m",
    " 1h30m",
    " 512MiB",
    " 0",
    " -1",
    " 1.5",
    " true",
    " ~",
    " x",
    " 'main'",
    " \"a\"",
    " [a, b]",
    " [a]",
    " {arch: a}",
    " []",
    " {}",
    " &t",
    " *t",
    " |",
    " >",
    "\n",
    "\n  ",
    "\n    ",
    "\n      ",
    "- ",
    "  ",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "#",
    "---",
    "\t",
    " branch == 'main'",
    " matrix.arch != 'a' && !(event)",
    " starts_with(branch, 'r')",
    " ((",
    " ==",
    " 127.0.0.1:5000/busybox:latest",
    " Bad:Ref",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..80).prop_map(|v| v.concat())
}

/// An example file with a few random edits at character boundaries.
fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(EXAMPLES),
        prop::collection::vec((any::<prop::sample::Index>(), 0usize..8, ".{0,6}"), 1..6),
    )
        .prop_map(|(src, edits)| {
            let mut s: Vec<char> = src.chars().collect();
            for (at, del, ins) in edits {
                let i = at.index(s.len() + 1);
                let end = (i + del).min(s.len());
                s.splice(i..end, ins.chars());
            }
            s.into_iter().collect()
        })
}

fn options() -> impl Strategy<Value = PlanOptions> {
    (
        prop::sample::select(&["push", "pull_request", "manual", ""][..]),
        "[a-z/]{0,8}",
        prop::collection::vec(
            prop::sample::select(&["a", "b", "build", "lint", "nope", "build (arch=amd64)"][..]),
            0..3,
        ),
    )
        .prop_map(|(event, branch, jobs)| PlanOptions {
            event: event.into(),
            branch,
            jobs: jobs.into_iter().map(str::to_string).collect(),
            ..PlanOptions::default()
        })
}

/// Validate and plan; on failure every diagnostic must point inside the file.
fn check(src: &str, opts: &PlanOptions) {
    // YAML counts \r\n, \r and \n as line breaks.
    let lines = src
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .split('\n')
        .count();
    if let Err(d) = validate_str(src, "f.yml") {
        assert!(!d.0.is_empty(), "an error without diagnostics");
        for e in &d.0 {
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "line {} of {lines}: {e}",
                e.line
            );
            assert!(e.column >= 1, "{e}");
            assert!(!e.message.is_empty());
        }
    }
    let _ = plan_str(src, "f.yml", opts);
}

proptest! {
    // 400 cases per property by default; PROPTEST_CASES=20000 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics(src in any::<String>()) {
        check(&src, &PlanOptions::default());
    }

    #[test]
    fn yaml_like_input_never_panics(src in yamlish(), opts in options()) {
        check(&src, &opts);
    }

    #[test]
    fn mutated_examples_never_panic(src in mutated(), opts in options()) {
        check(&src, &opts);
    }

    /// Random DAGs plan in an order where each job follows what it needs; adding a back edge
    /// makes a cycle that is reported by name.
    #[test]
    fn plans_respect_needs_and_cycles_are_named(
        edges in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..3), 1..12),
        back in any::<prop::sample::Index>(),
    ) {
        let n = edges.len();
        let mut needs: Vec<Vec<usize>> = Vec::new();
        for (i, e) in edges.iter().enumerate() {
            let mut mine: Vec<usize> = if i == 0 { Vec::new() } else { e.iter().map(|x| x.index(i)).collect() };
            mine.sort();
            mine.dedup();
            needs.push(mine);
        }
        // Write the jobs in reverse so order is not just file order.
        let render = |needs: &[Vec<usize>]| {
            let mut s = String::from("jobs:\n");
            for i in (0..n).rev() {
                let list: Vec<String> = needs[i].iter().map(|d| format!("j{d}")).collect();
                s.push_str(&format!("  j{i}:\n    needs: [{}]\n    steps: [x]\n", list.join(", ")));
            }
            s
        };
        let plan = plan_str(&render(&needs), "f.yml", &PlanOptions::default()).unwrap();
        let pos: HashMap<&str, usize> = plan.jobs.iter().enumerate().map(|(i, j)| (j.id.as_str(), i)).collect();
        prop_assert_eq!(plan.jobs.len(), n);
        for (i, job) in plan.jobs.iter().enumerate() {
            for need in &job.needs {
                prop_assert!(pos[need.as_str()] < i, "{} before its need {}", job.id, need);
            }
        }
        if n > 1 {
            // j0 needs the last job, which (transitively or not) may not need j0: only a cycle
            // if a path last -> ... -> j0 exists. Make one for sure: last needs j0 too.
            let last = n - 1;
            let from = back.index(last);
            let mut cyclic = needs.clone();
            if !cyclic[last].contains(&from) { cyclic[last].push(from); }
            cyclic[from].push(last);
            let err = validate_str(&render(&cyclic), "f.yml").unwrap_err();
            let msg = err.0.iter().find(|d| d.message.contains("forms a cycle"));
            prop_assert!(msg.is_some(), "{}", err);
        }
    }
}
