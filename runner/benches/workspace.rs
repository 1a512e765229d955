//! What it costs to give a job its own workspace: a copy of the source tree (our `copy_tree`,
//! `copy_file_range` under the hood) against an overlay snapshot (one mount), on the same tree
//! in one run. Needs root for the snapshot.
//!
//!     cargo bench -p runner --bench workspace -- [SOURCE_DIR]
//!
//! SOURCE_DIR defaults to this repository, `target/` included (a Rust checkout as users have
//! it). Prints the median of several runs of each, page cache warm.

// The included files' unit tests are not part of a benchmark build.
#![allow(unused_imports)]

#[allow(dead_code)]
#[path = "../src/cmd/exec_run/snapshot.rs"]
mod snapshot;
#[allow(dead_code)]
#[path = "../src/cmd/exec_run/workspace.rs"]
mod workspace;

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let source = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .canonicalize()
        .expect("source dir");
    // On the same filesystem as a default data dir would be.
    let scratch = tempfile::Builder::new()
        .prefix("runner-bench-ws")
        .tempdir_in("/var/tmp")
        .expect("scratch dir");
    let mut copies = Vec::new();
    let mut stats = None;
    for i in 0..3 {
        let dst = scratch.path().join(format!("copy{i}"));
        std::fs::create_dir_all(&dst).unwrap();
        let t = Instant::now();
        stats = Some(workspace::copy_tree(&source, &dst, scratch.path()).expect("copy"));
        copies.push(t.elapsed());
        workspace::remove_tree(&dst).unwrap();
    }
    let stats = stats.unwrap();
    let copy = median(copies);
    println!(
        "source {}: {} files, {:.1} MiB",
        source.display(),
        stats.files,
        stats.bytes as f64 / 1048576.0
    );
    println!(
        "copy_tree:        median {:>10.1} ms (3 runs)",
        copy.as_secs_f64() * 1e3
    );
    // The peer: coreutils `cp -a` (what a shell script or act's `docker cp` amounts to).
    let mut cps = Vec::new();
    for i in 0..3 {
        let dst = scratch.path().join(format!("cp{i}"));
        let t = Instant::now();
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg(&dst)
            .status()
            .expect("run cp")
            .success();
        cps.push(t.elapsed());
        assert!(ok, "cp -a failed");
        workspace::remove_tree(&dst).unwrap();
    }
    println!(
        "cp -a (peer):     median {:>10.1} ms (3 runs)",
        median(cps).as_secs_f64() * 1e3
    );
    if !nix::unistd::geteuid().is_root() {
        println!("overlay snapshot: not measured (needs root)");
        return;
    }
    let mut snaps = Vec::new();
    for i in 0..15 {
        let job = scratch.path().join(format!("snap{i}"));
        let dirs = workspace::JobDirs {
            merged: job.join("ws"),
            upper: job.join("upper"),
            work: job.join("work"),
        };
        let t = Instant::now();
        snapshot::mount_snapshot(&source, &dirs).expect("overlay mount");
        dirs.remove().expect("unmount and remove");
        snaps.push(t.elapsed());
        workspace::remove_tree(&job).unwrap();
    }
    let snap = median(snaps);
    println!(
        "overlay snapshot: median {:>10.3} ms (15 runs, mount + unmount + remove)",
        snap.as_secs_f64() * 1e3
    );
    println!(
        "copy / snapshot:  {:.0}x",
        copy.as_secs_f64() / snap.as_secs_f64()
    );
}
