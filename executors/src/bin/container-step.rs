//! Runs one step through the container executor and exits with its status: a tool for the
//! benchmark (`deploy/bench/container.sh`) and for the crash-recovery test, which SIGKILLs it
//! mid-step. Not the user interface (that is `runner exec`).
//!
//! ```text
//! container-step --state DIR --workspace DIR [--rootfs DIR | --host] [--network none|host|bridge]
//!                [--memory BYTES] [--pids N] [--timeout SECS] [--repeat N] [--job ID] -- SCRIPT
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use executors::container::{ContainerConfig, ContainerExecutor, LocalDirImages};
use executors::{Executor, ImageSpec, JobSpec, Network, Resources, Shell, StepSpec};

struct Args {
    state: PathBuf,
    workspace: PathBuf,
    rootfs: Option<PathBuf>,
    network: Network,
    resources: Resources,
    timeout: Duration,
    repeat: u32,
    job: Option<String>,
    script: String,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        state: PathBuf::new(),
        workspace: PathBuf::new(),
        rootfs: None,
        network: Network::None,
        resources: Resources::default(),
        timeout: Duration::from_secs(3600),
        repeat: 1,
        job: None,
        script: String::new(),
    };
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--state" => a.state = it.next().ok_or("--state needs a directory")?.into(),
            "--workspace" => a.workspace = it.next().ok_or("--workspace needs a directory")?.into(),
            "--rootfs" => a.rootfs = Some(it.next().ok_or("--rootfs needs a directory")?.into()),
            "--host" => a.rootfs = None,
            "--network" => {
                a.network = match it.next().as_deref() {
                    Some("none") => Network::None,
                    Some("host") => Network::Host,
                    Some("bridge") => Network::Bridge,
                    other => return Err(format!("unknown network {other:?}")),
                }
            }
            "--memory" => a.resources.memory = Some(num(it.next(), "--memory")?),
            "--pids" => a.resources.pids = Some(num(it.next(), "--pids")?),
            "--timeout" => a.timeout = Duration::from_secs(num(it.next(), "--timeout")?),
            "--repeat" => a.repeat = num(it.next(), "--repeat")? as u32,
            "--job" => a.job = Some(it.next().ok_or("--job needs an id")?),
            "--" => {
                a.script = it.collect::<Vec<_>>().join(" ");
                break;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.state.as_os_str().is_empty() || a.workspace.as_os_str().is_empty() {
        return Err("--state and --workspace are required".into());
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("container-step: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("container-step: {e}");
            ExitCode::from(125)
        }
    }
}

async fn run(args: Args) -> Result<u8, Box<dyn std::error::Error>> {
    let mut images = LocalDirImages::new();
    let image = match &args.rootfs {
        Some(dir) => {
            images = images.with("local", dir);
            ImageSpec::Oci("local".into())
        }
        None => ImageSpec::Host,
    };
    let exec = ContainerExecutor::new(ContainerConfig::new(&args.state, Arc::new(images)))?;
    let job = JobSpec {
        id: args
            .job
            .clone()
            .unwrap_or_else(|| format!("container-step-{}", std::process::id())),
        hostname: "step".into(),
        workspace: args.workspace.clone(),
    };
    let prepared = exec.prepare(&job).await?;
    let step = StepSpec {
        name: "step".into(),
        image,
        script: args.script.clone(),
        shell: Shell::Sh,
        env: BTreeMap::new(),
        workdir: "/workspace".into(),
        timeout: args.timeout,
        network: args.network,
        resources: args.resources.clone(),
    };
    let mut code = 0;
    for _ in 0..args.repeat {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<executors::LogChunk>(64);
        // Plain blocking writes: a benchmark tool should not pay for tokio's stdio threads.
        let printer = tokio::spawn(async move {
            use std::io::Write;
            while let Some(chunk) = rx.recv().await {
                let _ = match chunk.stream {
                    executors::Stream::Stderr => std::io::stderr().write_all(&chunk.data),
                    _ => std::io::stdout().write_all(&chunk.data),
                };
            }
            let _ = std::io::stdout().flush();
        });
        let result = exec
            .run_step(
                &prepared,
                &step,
                tx,
                tokio_util::sync::CancellationToken::new(),
            )
            .await?;
        let _ = printer.await;
        code = match (result.exit_code, result.signal) {
            (Some(c), _) => c as u8,
            (None, Some(s)) => 128 + s as u8,
            _ => 1,
        };
    }
    exec.cleanup(&prepared).await?;
    Ok(code)
}
