//! Coordinator benchmarks over loopback against a real `runner serve` (release build):
//! log ingest throughput into the stored log, live-follow latency (PATCH -> follower), and
//! jobs dispatched per second with 50 runners long-polling at once.
//!
//!     cargo bench -p runner --bench coordinator
//!
//! Prints medians of several rounds. The agent side (step -> spool -> PATCH) is measured by
//! deploy/bench/coordinator.sh with real jobs.

#[path = "../../tests/support/coord.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn claim(h: &Http, runner: &str) -> (i64, String) {
    let (st, p) = h.request_job(runner, 5.0).await;
    assert_eq!(st, 201, "{p}");
    (
        p["id"].as_i64().unwrap(),
        p["token"].as_str().unwrap().to_string(),
    )
}

async fn one_job_run(h: &Http, s: &Server) -> i64 {
    h.submit_plan(
        &s.admin,
        plan(vec![job("a", &[], vec![step("s", "true", &[])])]),
        json!({}),
    )
    .await
}

/// MB/s of log appended with `patch`-byte patches, `total` bytes per round.
async fn ingest(s: &Server, h: &Http, runner: &str, patch: usize, total: usize) -> f64 {
    one_job_run(h, s).await;
    let (id, tok) = claim(h, runner).await;
    let chunk: Vec<u8> = (0..patch)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27])
        .collect();
    let t = Instant::now();
    let mut off = 0u64;
    while (off as usize) < total {
        let (st, _, _) = h.patch(id, &tok, off, &chunk).await;
        assert_eq!(st, 202);
        off += chunk.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    // Verify it all landed: the checksum must match.
    let mut whole = Vec::with_capacity(off as usize);
    while whole.len() < off as usize {
        whole.extend_from_slice(&chunk);
    }
    let (st, v) = h.finish(id, &tok, "success", &whole).await;
    assert_eq!(st, 200, "{v}");
    off as f64 / secs / 1e6
}

/// Latency (ms) from a PATCH being sent to its bytes reaching a `follow` reader.
async fn follow_latency(s: &Server, h: &Http, runner: &str, lines: usize) -> Vec<f64> {
    one_job_run(h, s).await;
    let (id, tok) = claim(h, runner).await;
    let resp = h
        .req(
            Method::GET,
            &format!("/api/v1/jobs/{id}/log?follow=true"),
            Some(&s.admin),
        )
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let epoch = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut lat = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let sent: f64 = String::from_utf8_lossy(&line).trim().parse().unwrap();
                lat.push(epoch.elapsed().as_secs_f64() * 1e3 - sent);
            }
        }
        lat
    });
    let mut off = 0u64;
    let mut all = Vec::new();
    for _ in 0..lines {
        let line = format!("{:.3}\n", epoch.elapsed().as_secs_f64() * 1e3);
        let (st, _, _) = h.patch(id, &tok, off, line.as_bytes()).await;
        assert_eq!(st, 202);
        off += line.len() as u64;
        all.extend_from_slice(line.as_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.finish(id, &tok, "success", &all).await.0, 200);
    reader.await.unwrap()
}

/// Jobs per second handed out and finished by `runners` runners long-polling at once.
async fn dispatch_rate(s: &Server, runners: usize, jobs: usize) -> (f64, f64) {
    let h = Http::new(&s.url);
    let mut tokens = Vec::new();
    for i in 0..runners {
        tokens.push(h.runner(&s.admin, &format!("bench-{i}"), &[], &[]).await);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut tasks = Vec::new();
    for t in tokens {
        let url = s.url.clone();
        let done = done.clone();
        let first = first.clone();
        tasks.push(tokio::spawn(async move {
            let h = Http::new(&url);
            while done.load(std::sync::atomic::Ordering::Relaxed) < jobs {
                let (st, p) = h.request_job(&t, 2.0).await;
                if st != 201 {
                    continue;
                }
                first.lock().unwrap().get_or_insert_with(Instant::now);
                let (id, tok) = (
                    p["id"].as_i64().unwrap(),
                    p["token"].as_str().unwrap().to_string(),
                );
                let (st, v) = h.finish(id, &tok, "success", b"").await;
                assert_eq!(st, 200, "{v}");
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Let every runner settle into its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plan_jobs: Vec<Value> = (0..jobs)
        .map(|i| job(&format!("j{i}"), &[], vec![step("s", "true", &[])]))
        .collect();
    let t = Instant::now();
    h.submit_plan(&s.admin, plan(plan_jobs), json!({})).await;
    for task in tasks {
        task.await.unwrap();
    }
    let total = t.elapsed().as_secs_f64();
    let to_first = first
        .lock()
        .unwrap()
        .unwrap()
        .duration_since(t)
        .as_secs_f64();
    (jobs as f64 / total, to_first * 1e3)
}

#[tokio::main]
async fn main() {
    std::env::set_var("COORD_TEST_LOG", "warn");
    let s = Server::start(60.0);
    let h = Http::new(&s.url);
    let runner = h.runner(&s.admin, "bench", &[], &[]).await;

    for (patch, label) in [(1 << 20, "1 MiB"), (64 << 10, "64 KiB")] {
        let mut r = Vec::new();
        for _ in 0..5 {
            r.push(ingest(&s, &h, &runner, patch, 256 << 20).await);
        }
        println!(
            "log ingest, {label} patches, 256 MiB per round: median {:.0} MB/s (rounds: {})",
            median(r.clone()),
            r.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let lat = follow_latency(&s, &h, &runner, 300).await;
    println!(
        "PATCH -> follow reader latency, {} lines: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );

    let mut rates = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let s = Server::start(60.0);
        let (rate, first) = dispatch_rate(&s, 50, 1000).await;
        rates.push(rate);
        firsts.push(first);
    }
    println!(
        "dispatch, 50 runners long-polling, 1000 jobs (claim + final state): median {:.0} jobs/s (rounds: {}); submit -> first job handed out: median {:.1} ms",
        median(rates.clone()), rates.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", "),
        median(firsts)
    );
}
