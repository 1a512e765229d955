//! The in-process microVM backend: the `vmm` crate drives KVM directly (no QEMU process), with
//! the guest kernel and initramfs, the root disk as a read-only virtio block device, and the
//! agent channel on the second UART (`/dev/ttyS1` in the guest, `runner.chan=`).
//!
//! Hardware KVM only: on PVM (`kvm_pvm`) an unmodified Linux guest cannot boot, and the backend
//! says so at once instead of timing out.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;

use super::host::KvmKind;
use super::hypervisor::{Hypervisor, RunningVm, VmControl, VmSpec};
use super::qemu::Qemu;
use super::VmError;

/// Bytes of console output kept for error messages.
const CONSOLE_TAIL: usize = 16 * 1024;
/// Lines of it shown in diagnostics.
const DIAG_LINES: usize = 40;

/// Which hypervisor runs the VMs (`[vm] backend` in the runner's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The microVM where KVM is hardware-backed (QEMU still serves steps that need a network),
    /// QEMU elsewhere (with KVM or TCG as the host allows).
    #[default]
    Auto,
    /// Always QEMU.
    Qemu,
    /// Always the microVM; refused where KVM cannot boot Linux.
    Microvm,
}

/// The hypervisor for `backend` on a host whose KVM is `kvm`; `qemu` is the QEMU backend
/// configured for this host.
pub fn select(backend: Backend, kvm: KvmKind, qemu: Qemu) -> Result<Arc<dyn Hypervisor>, VmError> {
    Ok(match backend {
        Backend::Qemu => Arc::new(qemu),
        Backend::Microvm => Arc::new(MicroVm::for_host(kvm)?),
        Backend::Auto => match MicroVm::for_host(kvm) {
            Ok(micro) => Arc::new(AutoBackend { micro, qemu }),
            Err(_) => Arc::new(qemu),
        },
    })
}

/// `auto` on hardware KVM: the microVM, and QEMU for steps that ask for a network, which the
/// microVM does not have yet.
struct AutoBackend {
    micro: MicroVm,
    qemu: Qemu,
}

#[async_trait]
impl Hypervisor for AutoBackend {
    fn describe(&self) -> String {
        format!(
            "microvm, kvm ({} for steps with a network)",
            self.qemu.describe()
        )
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        if spec.network {
            self.qemu.boot(spec).await
        } else {
            self.micro.boot(spec).await
        }
    }
}

/// The microVM backend.
#[derive(Debug, Clone, Default)]
pub struct MicroVm;

impl MicroVm {
    /// The backend, if this host's KVM can boot Linux; otherwise the reason it cannot.
    pub fn for_host(kvm: KvmKind) -> Result<MicroVm, VmError> {
        if kvm.can_boot_linux() {
            Ok(MicroVm)
        } else {
            Err(VmError::Hypervisor(format!(
                "the microvm backend needs hardware KVM (kvm_intel or kvm_amd), but /dev/kvm is \
                 {}: use the qemu backend ([vm] backend = \"qemu\", or \"auto\")",
                kvm.describe()
            )))
        }
    }

    /// The kernel command line for `spec` (a pure function, unit-tested).
    pub fn cmdline(spec: &VmSpec) -> String {
        let mut words: Vec<String> = [
            "console=ttyS0",
            "quiet",
            // A reboot or a panic ends the VM: the kernel pulses the i8042 reset line.
            "reboot=k",
            "panic=-1",
            "8250.nr_uarts=2",
            "runner.chan=/dev/ttyS1",
            "random.trust_cpu=on",
        ]
        .iter()
        .map(|w| w.to_string())
        .collect();
        words.extend(spec.cmdline.iter().cloned());
        words.join(" ")
    }
}

/// The last bytes the guest console printed.
#[derive(Clone, Default)]
struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl Write for ConsoleTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend(buf);
        let excess = tail.len().saturating_sub(CONSOLE_TAIL);
        tail.drain(..excess);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleTail {
    fn last_lines(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(DIAG_LINES)..].join("\n")
    }
}

type RunResult = Result<vmm::RunReport, vmm::Error>;

/// A running microVM: its thread, how to stop it, and the VMM's end of the agent channel.
struct Control {
    stop: vmm::StopHandle,
    thread: Option<JoinHandle<RunResult>>,
    channel: UnixStream,
    console: ConsoleTail,
    ended: Arc<Mutex<Option<String>>>,
}

impl Control {
    /// Stops the VM without waiting: the channel is shut so a vCPU blocked writing agent output
    /// wakes up, then the VMM is told to stop.
    fn stop_now(&self) {
        let _ = self.channel.shutdown(Shutdown::Both);
        self.stop.stop();
    }
}

#[async_trait]
impl VmControl for Control {
    async fn kill(&mut self) {
        self.stop_now();
        if let Some(thread) = self.thread.take() {
            let ended = self.ended.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let how = match thread.join() {
                    Ok(Ok(report)) => format!("{:?}", report.end),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the VMM thread panicked".into(),
                };
                *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
            })
            .await;
        }
    }

    fn diagnostics(&self) -> String {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = self.console.last_lines();
        if let Some(how) = ended {
            out.push_str(&format!("\nmicrovm: VM ended: {how}"));
        }
        out
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // The VM thread finishes on its own once stopped; nothing else is held.
        self.stop_now();
    }
}

#[async_trait]
impl Hypervisor for MicroVm {
    fn describe(&self) -> String {
        "microvm, kvm".into()
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        if spec.network {
            return Err(VmError::Hypervisor(
                "the microvm backend has no network device yet: run steps that need a network \
                 with the qemu backend"
                    .into(),
            ));
        }
        let spec = spec.clone();
        let console = ConsoleTail::default();
        let (host_end, vmm_end) =
            UnixStream::pair().map_err(|e| VmError::Channel(format!("socketpair: {e}")))?;
        let agent_out = vmm_end
            .try_clone()
            .map_err(|e| VmError::Channel(e.to_string()))?;
        let mut config = vmm::VmConfig::new(vmm::GuestImage::Kernel(spec.kernel.clone()));
        config.cmdline = MicroVm::cmdline(&spec);
        config.initrd = Some(spec.initramfs.clone());
        config.root_disk = Some(spec.root_disk.clone());
        config.mem_mib = spec.memory_mib;
        config.vcpus = u8::try_from(spec.cpus.clamp(1, u32::from(vmm::MAX_VCPUS))).unwrap_or(1);
        config.serial = Box::new(console.clone());
        config.agent = Some(Box::new(agent_out));
        // Building the VM reads the kernel and initramfs and waits on KVM: not on the runtime.
        let vm = tokio::task::spawn_blocking(move || vmm::Vm::new(config))
            .await
            .map_err(|e| VmError::Hypervisor(e.to_string()))?
            .map_err(|e| VmError::Hypervisor(e.to_string()))?;
        let input = vm
            .agent_input()
            .ok_or_else(|| VmError::Channel("no agent UART".into()))?;
        let stop = vm.stop_handle();
        let mut from_host = vmm_end
            .try_clone()
            .map_err(|e| VmError::Channel(e.to_string()))?;
        // Host -> guest: bytes the executor writes go into the UART's receive FIFO as the guest
        // drains it. Ends when either side is gone.
        std::thread::Builder::new()
            .name("microvm-agent-in".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from_host.read(&mut buf) {
                    if n == 0 || input.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| VmError::Hypervisor(format!("agent input thread: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("microvm".into())
            .spawn(move || vm.run())
            .map_err(|e| VmError::Hypervisor(format!("VM thread: {e}")))?;
        host_end
            .set_nonblocking(true)
            .map_err(|e| VmError::Channel(e.to_string()))?;
        let host = tokio::net::UnixStream::from_std(host_end)
            .map_err(|e| VmError::Channel(e.to_string()))?;
        let (reader, writer) = host.into_split();
        Ok(RunningVm {
            reader: Box::new(reader),
            writer: Box::new(writer),
            control: Box::new(Control {
                stop,
                thread: Some(thread),
                channel: vmm_end,
                console,
                ended: Arc::new(Mutex::new(None)),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            root_disk: "/d".into(),
            cpus: 2,
            memory_mib: 256,
            network: false,
            cmdline: vec!["runner.extra=1".into()],
        }
    }

    #[test]
    fn cmdline_puts_the_agent_on_the_second_uart_and_ends_the_vm_on_reboot() {
        let c = MicroVm::cmdline(&spec());
        for w in [
            "console=ttyS0",
            "runner.chan=/dev/ttyS1",
            "8250.nr_uarts=2",
            "reboot=k",
        ] {
            assert!(c.split(' ').any(|x| x == w), "{w} missing in {c}");
        }
        assert!(c.ends_with("runner.extra=1"));
    }

    #[test]
    fn pvm_and_missing_kvm_are_refused_with_the_reason() {
        for kind in [KvmKind::Pvm, KvmKind::Absent, KvmKind::Unknown] {
            let err = MicroVm::for_host(kind).unwrap_err().to_string();
            assert!(
                err.contains("hardware KVM") && err.contains("qemu"),
                "{err}"
            );
        }
        assert!(MicroVm::for_host(KvmKind::Hardware("kvm_intel")).is_ok());
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let mut t = ConsoleTail::default();
        for i in 0..100 {
            writeln!(t, "line {i}").unwrap();
        }
        let d = t.last_lines();
        assert!(d.starts_with("line 60") && d.ends_with("line 99"), "{d}");
    }

    fn qemu() -> Qemu {
        Qemu {
            binary: "qemu-system-x86_64".into(),
            accel: super::super::Accel::Tcg,
            tsc_khz: None,
        }
    }

    #[test]
    fn auto_picks_the_microvm_only_on_hardware_kvm_and_explicit_choices_are_kept() {
        let hw = KvmKind::Hardware("kvm_intel");
        let d = |b, k| select(b, k, qemu()).map(|h| h.describe());
        assert!(d(Backend::Auto, hw).unwrap().starts_with("microvm, kvm ("));
        assert_eq!(d(Backend::Auto, KvmKind::Pvm).unwrap(), "qemu, tcg");
        assert_eq!(d(Backend::Auto, KvmKind::Absent).unwrap(), "qemu, tcg");
        assert_eq!(d(Backend::Qemu, hw).unwrap(), "qemu, tcg");
        assert_eq!(d(Backend::Microvm, hw).unwrap(), "microvm, kvm");
        let err = d(Backend::Microvm, KvmKind::Pvm).unwrap_err().to_string();
        assert!(err.contains("kvm_pvm") || err.contains("PVM"), "{err}");
    }

    #[test]
    fn backend_names_in_config() {
        let b: Backend = serde_json::from_str("\"microvm\"").unwrap();
        assert_eq!(b, Backend::Microvm);
        assert_eq!(Backend::default(), Backend::Auto);
    }

    #[tokio::test]
    async fn network_is_refused_before_anything_starts() {
        let mut s = spec();
        s.network = true;
        let err = MicroVm.boot(&s).await.unwrap_err().to_string();
        assert!(err.contains("no network device"), "{err}");
    }

    // Where KVM is hardware-backed, tests/microvm.rs boots a real microVM instead.
    #[testkit::host(pvm_kvm)]
    #[tokio::test]
    async fn booting_linux_on_a_pvm_host_fails_at_once_with_the_reason() {
        let started = std::time::Instant::now();
        let err = MicroVm.boot(&spec()).await.unwrap_err().to_string();
        assert!(err.contains("kvm_pvm"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
