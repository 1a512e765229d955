//! Benchmark driver for the VM executor (used by `deploy/bench/vm.sh`).
//!
//! vm_bench DIR once          one cold `true` step (for hyperfine)
//! vm_bench DIR bare-args     the QEMU arguments of the same VM, with the agent told to power
//!                            off as soon as it runs (the bare-boot baseline), one per line
//! vm_bench DIR breakdown N   N cold `true` steps: median of each phase
//! vm_bench DIR script S    run script S once and print its output (debugging aid)
//! vm_bench DIR warm N        warm pool of 1: N steps, median start latency (call to first
//!                            output byte) and total
//!
//! DIR holds the busybox image layer, caches and workspace; the guest kernel comes from
//! $RUNNER_VM_KERNEL_DIR (default /var/lib/runner/vm/kernel), the agent from $RUNNER_VM_AGENT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use executors::vm::{host, kernel, rootfs, Accel, KvmKind, Qemu, VmConfig, VmExecutor, VmSpec};
use executors::{
    Executor, ExecutorError, ImageProvider, ImageSpec, JobSpec, LogChunk, Network, ResolvedImage,
    Shell, StepSpec, Stream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Busybox(PathBuf);

#[async_trait]
impl ImageProvider for Busybox {
    async fn resolve(
        &self,
        _reference: &str,
        _output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError> {
        Ok(ResolvedImage {
            digest: "sha256:bench-busybox".into(),
            layers: vec![self.0.clone()],
            env: vec![],
            working_dir: None,
            lease: Default::default(),
        })
    }
}

fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    if !layer.join("bin/busybox").exists() {
        for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
            std::fs::create_dir_all(layer.join(d)).expect("layer dir");
        }
        std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("/bin/busybox");
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet));
        }
    }
    layer
}

fn config(dir: &Path, warm_pool: usize) -> VmConfig {
    let mut c = VmConfig::with_data_dir(&dir.join("data"));
    c.kernel_dir = std::env::var_os("RUNNER_VM_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/runner/vm/kernel".into());
    if let Some(a) = std::env::var_os("RUNNER_VM_AGENT") {
        c.agent = a.into();
    }
    c.warm_pool = warm_pool;
    c
}

fn step(script: &str) -> StepSpec {
    StepSpec {
        name: "bench".into(),
        image: ImageSpec::Oci("busybox".into()),
        script: script.into(),
        shell: Shell::Sh,
        env: BTreeMap::new(),
        workdir: "/workspace".into(),
        timeout: Duration::from_secs(120),
        network: Network::None,
        resources: Default::default(),
    }
}

struct Sample {
    total: Duration,
    first_output: Option<Duration>,
    breakdown: String,
}

async fn run_once(exec: &VmExecutor, ws: &Path, script: &str) -> Sample {
    let job = exec
        .prepare(&JobSpec {
            id: "bench".into(),
            hostname: "bench".into(),
            workspace: ws.to_path_buf(),
        })
        .await
        .expect("prepare");
    let (tx, mut rx) = mpsc::channel::<LogChunk>(64);
    let start = Instant::now();
    let collect = tokio::spawn(async move {
        let (mut first, mut sys) = (None, String::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout if first.is_none() => first = Some(start.elapsed()),
                Stream::System => sys.push_str(&String::from_utf8_lossy(&c.data)),
                _ => {}
            }
        }
        (first, sys)
    });
    let r = exec
        .run_step(&job, &step(script), tx, CancellationToken::new())
        .await
        .expect("step");
    let total = start.elapsed();
    assert!(r.success(), "bench step failed: {r:?}");
    let (first_output, breakdown) = collect.await.expect("collector");
    Sample {
        total,
        first_output,
        breakdown,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Parse `vm: prepare disk A ms, boot B ms, run C ms, shutdown D ms`.
fn phases(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("usage: vm_bench DIR MODE [N]"));
    let mode = args.get(2).map(String::as_str).unwrap_or("once");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let layer = busybox_layer(&dir);
    let ws = dir.join("workspace");
    std::fs::create_dir_all(&ws).expect("workspace");
    let images = Arc::new(Busybox(layer.clone()));
    match mode {
        "once" => {
            let exec = VmExecutor::new(config(&dir, 0), images).expect("executor");
            run_once(&exec, &ws, "true").await;
        }
        "bare-args" => {
            let cfg = config(&dir, 0);
            let k = kernel::GuestKernel::find(&cfg.kernel_dir).expect("kernel");
            let initramfs = kernel::initramfs(&k, &cfg.agent, &cfg.cache_dir).expect("initramfs");
            let image = images
                .resolve("busybox", &mpsc::channel(1).0)
                .await
                .expect("image");
            let disk = rootfs::base_disk(&image, &cfg.cache_dir.join("disks")).expect("disk");
            let qemu = Qemu {
                binary: cfg.qemu.clone(),
                accel: Accel::for_host(KvmKind::detect()),
                tsc_khz: host::host_tsc_khz(),
            };
            let spec = VmSpec {
                kernel: k.vmlinuz,
                initramfs,
                root_disk: disk,
                cpus: cfg.cpus,
                memory_mib: cfg.memory_mib,
                network: false,
                cmdline: vec!["runner.bare".into()],
            };
            for a in qemu.args(&spec) {
                println!("{a}");
            }
        }
        "breakdown" => {
            let exec = VmExecutor::new(config(&dir, 0), images).expect("executor");
            let mut totals = Vec::new();
            let mut cols: Vec<Vec<Duration>> = vec![Vec::new(); 6];
            for _ in 0..n {
                let s = run_once(&exec, &ws, "true").await;
                totals.push(s.total);
                for (i, ms) in phases(&s.breakdown).into_iter().take(6).enumerate() {
                    cols[i].push(Duration::from_millis(ms));
                }
            }
            let m: Vec<u128> = cols.into_iter().map(|c| median(c).as_millis()).collect();
            println!(
                "cold step `true`, median of {n}: total {} ms = prepare disk {} ms + boot to agent ready {} ms + run {} ms + shutdown {} ms (+ workspace restore, bookkeeping); guest clock: agent started at {} ms, ready at {} ms",
                median(totals).as_millis(),
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
        }
        "warm" => {
            let exec = VmExecutor::new(config(&dir, 1), images).expect("executor");
            exec.warm("busybox").await.expect("warm");
            let (mut starts, mut totals) = (Vec::new(), Vec::new());
            for _ in 0..n {
                assert!(
                    exec.wait_pool_ready(Duration::from_secs(120)).await,
                    "pool did not refill"
                );
                let s = run_once(&exec, &ws, "echo started").await;
                assert!(s.breakdown.contains("warm pool"), "{}", s.breakdown);
                starts.push(s.first_output.expect("output"));
                totals.push(s.total);
            }
            println!(
                "warm pool step `echo started`, median of {n}: start latency (call to first output byte) {} ms, total {} ms",
                median(starts).as_millis(),
                median(totals).as_millis()
            );
        }
        "script" => {
            // Debugging aid: run the script given as the last argument and show its output.
            let exec = VmExecutor::new(config(&dir, 0), images).expect("executor");
            let job = exec
                .prepare(&JobSpec {
                    id: "dbg".into(),
                    hostname: "dbg".into(),
                    workspace: ws.clone(),
                })
                .await
                .expect("prepare");
            let (tx, mut rx) = mpsc::channel::<LogChunk>(64);
            let printer = tokio::spawn(async move {
                while let Some(c) = rx.recv().await {
                    print!("[{:?}] {}", c.stream, String::from_utf8_lossy(&c.data));
                }
            });
            let mut s = step(args.get(3).map(String::as_str).unwrap_or("true"));
            if std::env::var_os("VM_BENCH_NET").is_some() {
                s.network = Network::Bridge;
            }
            let r = exec.run_step(&job, &s, tx, CancellationToken::new()).await;
            printer.await.expect("printer");
            println!("{r:?}");
        }
        other => panic!("unknown mode {other}"),
    }
}
