//! How long parsing, validating and planning take, against the floor of only scanning the YAML
//! (saphyr-parser's event stream, no tree). Prints medians; run with
//! `cargo bench -p pipelines --bench plan`.

use std::time::{Duration, Instant};

use pipelines::{plan_str, validate_str, PlanOptions};

/// A pipeline the size of a big monorepo's: `jobs` jobs in a chain of fan-outs, each with a
/// 2x2 matrix and three steps.
pub fn big_pipeline(jobs: usize) -> String {
    let mut s = String::from(
        "name: big\ndefaults:\n  image: 127.0.0.1:5000/busybox:latest\n  timeout: 30m\njobs:\n",
    );
    for i in 0..jobs {
        s.push_str(&format!("  job{i}:\n"));
        if i > 0 {
            s.push_str(&format!("    needs: [job{}]\n", (i - 1) / 2));
        }
        s.push_str("    matrix: {arch: [amd64, arm64], profile: [debug, release]}\n");
        s.push_str("    if: \"branch == 'main' || matrix.profile == 'debug'\"\n");
        s.push_str("    env: {A: \"1\", B: two}\n    steps:\n");
        for k in 0..3 {
            s.push_str(&format!(
                "      - name: s{k}\n        run: |\n          echo {i} {k}\n          make -j2\n        timeout: 5m\n        resources: {{cpus: 1, memory: 512MiB}}\n"
            ));
        }
    }
    s
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let opts = PlanOptions {
        event: "push".into(),
        branch: "main".into(),
        ..PlanOptions::default()
    };
    let inputs = [
        (
            "examples/hello.yml",
            include_str!("../../examples/hello.yml").to_string(),
        ),
        (
            "examples/matrix-dag.yml",
            include_str!("../../examples/matrix-dag.yml").to_string(),
        ),
        ("generated, 200 jobs x 4 = 800 instances", big_pipeline(200)),
    ];
    // BENCH_DUMP=FILE writes the generated pipeline, to time other tools on the same input.
    if let Some(path) = std::env::var_os("BENCH_DUMP") {
        std::fs::write(path, &inputs[2].1).expect("write BENCH_DUMP");
    }
    println!(
        "{:<42} {:>10} {:>12} {:>12} {:>8}",
        "input", "scan only", "validate", "plan", "plan/scan"
    );
    for (name, src) in &inputs {
        let runs = if src.len() > 10_000 { 31 } else { 501 };
        let scan = median(
            || {
                let n = saphyr_parser::Parser::new_from_str(src).count();
                std::hint::black_box(n);
            },
            runs,
        );
        let validate = median(
            || drop(std::hint::black_box(validate_str(src, "f.yml").unwrap())),
            runs,
        );
        let plan = median(
            || drop(std::hint::black_box(plan_str(src, "f.yml", &opts).unwrap())),
            runs,
        );
        println!(
            "{name:<42} {:>10.1?} {:>12.1?} {:>12.1?} {:>7.1}x",
            scan,
            validate,
            plan,
            plan.as_secs_f64() / scan.as_secs_f64()
        );
    }
}
