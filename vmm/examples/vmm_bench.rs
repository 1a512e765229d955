//! Measures the microVM on a tiny guest: VMM start (process start to the guest's first
//! instruction, via the boot-timer port), VM create+teardown time, and the VMM's own resident
//! memory beyond guest memory. Build with `cargo build --release -p vmm --example vmm_bench`.
//!
//! Modes:
//! - `once`: one VM whose first instruction writes the boot-timer marker and then resets;
//!   prints the in-process figures. This is what hyperfine times as a whole process.
//! - `spawn N`: runs `once` N times as child processes and prints medians of process start to
//!   first guest instruction (wall and VMM CPU time).
//! - `loop N`: N create+run+teardown cycles in one process; medians.
//! - `rss MIB`: RSS of this process with a live VM of MIB MiB, minus the guest's own pages.
//! - `serial MIB`: guest-to-host throughput of the agent UART (COM2): the guest writes MIB MiB
//!   with one `out` per byte (an upper bound: Linux's 8250 driver also polls the line status).
//! - `load KERNEL [INITRD] [N]`: median time to load a kernel (and initrd) into fresh guest
//!   memory, as `Vm::new` does; needs no KVM, so it measures the Linux path on PVM hosts too.

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm::{GuestImage, RunReport, Vm, VmConfig, VmEnd, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};

/// Parent's CLOCK_MONOTONIC (ns) just before it spawned us, for `spawn` mode.
const T0_ENV: &str = "VMM_BENCH_T0_NS";

/// mov al, 123; mov dx, 0x440; out dx, al; mov al, 0xfe; out 0x64, al; hlt.
fn marker_then_reset() -> Vec<u8> {
    let [lo, hi] = BOOT_TIMER_PORT.to_le_bytes();
    vec![
        0xb0,
        BOOT_TIMER_MAGIC,
        0x66,
        0xba,
        lo,
        hi,
        0xee,
        0xb0,
        0xfe,
        0xe6,
        0x64,
        0xf4,
    ]
}

/// mov al, 123; mov dx, 0x440; out dx, al; then touch nothing and spin: jmp $.
fn marker_then_spin() -> Vec<u8> {
    let mut code = marker_then_reset();
    code.truncate(7);
    code.extend_from_slice(&[0xeb, 0xfe]);
    code
}

fn config(code: Vec<u8>, mem_mib: u64) -> VmConfig {
    let mut cfg = VmConfig::new(GuestImage::Raw(code));
    cfg.mem_mib = mem_mib;
    cfg.timeout = Some(Duration::from_secs(5));
    cfg
}

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn run_once(mem_mib: u64) -> Result<(RunReport, u128), String> {
    let before_ns = monotonic_ns();
    let report = Vm::new(config(marker_then_reset(), mem_mib))
        .and_then(Vm::run)
        .map_err(|e| e.to_string())?;
    if report.end != VmEnd::Reset || report.boot_times.is_empty() {
        return Err(format!("guest did not run as expected: {report:?}"));
    }
    Ok((report, before_ns))
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn once() -> Result<(), String> {
    let (report, before_ns) = run_once(128)?;
    let first = report.boot_times[0];
    let since_start = std::env::var(T0_ENV)
        .ok()
        .and_then(|t0| t0.parse::<u128>().ok())
        .map(|t0| (before_ns - t0) / 1000 + us(first.since_create));
    println!(
        "build_us={} first_insn_since_create_us={} cpu_at_first_insn_us={} total_us={} \
         process_start_to_first_insn_us={}",
        us(report.build_time),
        us(first.since_create),
        us(first.process_cpu),
        us(report.total_time),
        since_start.map_or("n/a".into(), |v| v.to_string()),
    );
    Ok(())
}

fn spawn(n: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (mut start, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let out = std::process::Command::new(&exe)
            .arg("once")
            .env(T0_ENV, monotonic_ns().to_string())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| -> Result<u128, String> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {name} in child output {text:?} {out:?}"))
        };
        start.push(field("process_start_to_first_insn_us")?);
        cpu.push(field("cpu_at_first_insn_us")?);
    }
    println!(
        "runs={n} median_process_start_to_first_insn_us={} median_vmm_cpu_at_first_insn_us={}",
        median(start),
        median(cpu)
    );
    Ok(())
}

fn cycles(n: usize) -> Result<(), String> {
    let (mut build, mut first, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let started = Instant::now();
        let (report, _) = run_once(128)?;
        build.push(us(report.build_time));
        first.push(us(report.boot_times[0].since_create));
        // Until Vm::run returned: the VM fd, vCPUs and guest memory are all gone by then.
        total.push(us(started.elapsed()));
    }
    println!(
        "runs={n} median_build_us={} median_first_insn_since_create_us={} \
         median_create_run_teardown_us={}",
        median(build),
        median(first),
        median(total)
    );
    Ok(())
}

/// Resident kB of this process, and of the mappings overlapping `ranges` (host addresses).
fn rss_kb(ranges: &[(usize, usize)]) -> Result<(u64, u64), String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(|e| e.to_string())?;
    let (mut total, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kb;
            if in_guest {
                guest += kb;
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    in_guest = ranges.iter().any(|&(s, e)| a < e && s < b);
                }
            }
        }
    }
    Ok((total, guest))
}

fn rss(mem_mib: u64) -> Result<(), String> {
    let (before, _) = rss_kb(&[])?;
    let vm = Vm::new(config(marker_then_spin(), mem_mib)).map_err(|e| e.to_string())?;
    let ranges: Vec<(usize, usize)> = vm
        .memory()
        .iter()
        .map(|r| (r.as_ptr() as usize, r.as_ptr() as usize + r.len() as usize))
        .collect();
    let stop = vm.stop_handle();
    let runner = std::thread::spawn(move || vm.run());
    // Let the guest run (it spins after its marker), then look.
    std::thread::sleep(Duration::from_millis(100));
    let (total, guest) = rss_kb(&ranges)?;
    stop.stop();
    let report = runner
        .join()
        .map_err(|_| "vm thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    if report.boot_times.is_empty() {
        return Err(format!("guest never ran: {report:?}"));
    }
    println!(
        "guest_mem_mib={mem_mib} process_rss_kb={total} guest_resident_kb={guest} \
         vmm_overhead_kb={} rss_before_vm_kb={before}",
        total - guest
    );
    Ok(())
}

fn load(kernel: &str, initrd: Option<&str>, n: usize) -> Result<(), String> {
    let image = GuestImage::Kernel(kernel.into());
    let mut times = Vec::new();
    for _ in 0..n {
        let mem = vmm::memory::allocate(256).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let platform = vmm::boot::Platform {
            mem_mib: 256,
            cpus: 1,
            agent_uart: false,
            block_device: false,
        };
        vmm::boot::load(
            &mem,
            platform,
            &image,
            "console=ttyS0",
            initrd.map(Path::new),
        )
        .map_err(|e| e.to_string())?;
        times.push(us(started.elapsed()));
    }
    println!("runs={n} median_kernel_load_us={}", median(times));
    Ok(())
}

/// Counts bytes written to it.
#[derive(Clone, Default)]
struct Counter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn serial(mib: u64) -> Result<(), String> {
    let bytes = (mib << 20) as u32;
    // mov dx, 0x2f8; mov ecx, bytes; again: out dx, al; dec ecx; jnz again; reset.
    let mut code = vec![0x66, 0xba, 0xf8, 0x02, 0xb9];
    code.extend_from_slice(&bytes.to_le_bytes());
    code.extend_from_slice(&[0xee, 0xff, 0xc9, 0x75, 0xfb, 0xb0, 0xfe, 0xe6, 0x64]);
    let counter = Counter::default();
    let mut cfg = config(code, 64);
    cfg.agent = Some(Box::new(counter.clone()));
    cfg.timeout = Some(Duration::from_secs(120));
    let vm = Vm::new(cfg).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let report = vm.run().map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let got = counter.0.load(std::sync::atomic::Ordering::Relaxed);
    if report.end != VmEnd::Reset || got != u64::from(bytes) {
        return Err(format!("guest sent {got} of {bytes} bytes: {report:?}"));
    }
    println!(
        "agent_uart_bytes={got} seconds={:.3} mib_per_s={:.2} exits_per_s={:.0}",
        took.as_secs_f64(),
        got as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| -> u64 {
        args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let result = match args.first().map(String::as_str) {
        Some("once") => once(),
        Some("spawn") => spawn(num(1, 20) as usize),
        Some("loop") => cycles(num(1, 50) as usize),
        Some("rss") => rss(num(1, 128)),
        Some("serial") => serial(num(1, 1)),
        Some("load") if args.len() >= 2 => load(
            &args[1],
            args.get(2)
                .map(String::as_str)
                .filter(|a| a.parse::<usize>().is_err()),
            args.last().and_then(|a| a.parse().ok()).unwrap_or(20),
        ),
        _ => Err(
            "usage: vmm_bench once | spawn N | loop N | rss MIB | serial MIB | load KERNEL [INITRD] [N]".into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("vmm_bench: {e}");
        std::process::exit(1);
    }
}
