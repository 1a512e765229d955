//! Secret masking throughput: how fast step output goes through the streaming masker, in
//! 64 KiB chunks (the size a step's pipe read gives), for 0, 2 and 20 secrets.
//!
//!     cargo bench -p runner --bench mask
//!
//! Prints the median of 7 runs over 256 MiB of build-log-like text for each case.

// The included files' unit tests are not part of a benchmark build.
#![allow(unused_imports)]

#[allow(dead_code)]
#[path = "../src/mask.rs"]
mod mask;

use std::time::{Duration, Instant};

const TOTAL: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
const RUNS: usize = 7;

fn main() {
    let line = b"   Compiling some-crate v1.2.3 (/workspace/crates/some-crate) warning: unused import `foo::bar`\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(CHUNK).collect();
    let two = [
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "postgres://user:pa55w0rd@db/x",
    ];
    let twenty: Vec<String> = (0..20)
        .map(|i| format!("secret-value-number-{i:03}-{}", i * 7919))
        .collect();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no secrets", vec![]),
        ("2 secrets", two.iter().map(|s| ("S", *s)).collect()),
        (
            "20 secrets",
            twenty.iter().map(|s| ("S", s.as_str())).collect(),
        ),
    ];
    println!(
        "masking {} MiB in {} KiB chunks, median of {RUNS} runs",
        TOTAL >> 20,
        CHUNK >> 10
    );
    for (name, secrets) in cases {
        let m = mask::Masker::new(secrets).expect("valid secrets");
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let mut s = m.stream();
                let start = Instant::now();
                let mut n = 0;
                for _ in 0..TOTAL / CHUNK {
                    n += s.push(&chunk).len();
                }
                n += s.finish().len();
                assert_eq!(n, TOTAL);
                start.elapsed()
            })
            .collect();
        times.sort();
        let median = times[RUNS / 2];
        let mbs = TOTAL as f64 / median.as_secs_f64() / 1e6;
        println!(
            "{name:>12}: {:>8.1} ms  {mbs:>8.0} MB/s",
            median.as_secs_f64() * 1e3
        );
    }
}
