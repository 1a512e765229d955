//! `runner`: runs CI pipelines with every step in a throwaway sandbox.

mod agent;
mod cli;
mod cmd;
mod config;
mod jobrun;
mod mask;
mod metrics;
mod paths;

use clap::Parser;

/// jemalloc, not musl's own malloc: musl's returns memory to the kernel as soon as a small
/// group of blocks empties and maps fresh pages for the next (~120 mmap/munmap calls in a
/// one-step `runner exec`), and it serialises every thread on one lock. A one-step
/// `runner exec` takes the same time with either (measured A/B); the coordinator ingested
/// 64 KiB log patches at 152 MB/s with jemalloc, 103 MB/s with musl's (docs/benchmarks.md).
/// jemalloc's regions come from plain `mmap`, so their addresses are randomised like the
/// rest; mimalloc, also tried, reserves its arena at a fixed address (heap ASLR lost).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start. One arena: a second thread otherwise sets up an
/// arena of its own on its first allocation (~50 page faults, 0.3 ms of a one-step
/// `runner exec`, measured A/B); threads still allocate from their own caches without locking,
/// and the coordinator's throughput did not change (docs/benchmarks.md).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

fn main() {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `runner exec` runs on one thread: its jobs mostly wait (on sandboxes, pipes, timers),
    // the terminal has a thread of its own and blocking work goes to the blocking pool, so
    // worker threads would only add their start-up and cross-thread wake-ups (about 0.5 ms
    // of a one-step run, measured). The long-lived server and agent use every core.
    let mut builder = match cli.command {
        cli::Command::Exec(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(cmd::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line with the whole cause chain: what failed and why.
            eprintln!("error: {e:#}");
            1
        }
    };
    // Whatever the command started is finished and torn down inside `dispatch` (sandboxes,
    // VMs, workspaces, servers: their owners are dropped there, blocking tasks awaited). What
    // is left is the runtime's idle threads: shutting it down would wake and join them one by
    // one, pure latency at the end of a short command such as a one-step `runner exec`.
    // `exit` still flushes stdout.
    std::process::exit(i32::from(code))
}
