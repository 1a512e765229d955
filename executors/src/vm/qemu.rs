//! QEMU backend: `qemu-system-x86_64 -M microvm`, KVM where the host's KVM can run a stock
//! kernel, TCG otherwise. The agent channel is a virtio-serial port wired to QEMU's stdio, so
//! a VM owns no socket or file on the host: killing the process releases everything.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::host::KvmKind;
use super::hypervisor::{Hypervisor, RunningVm, VmControl, VmSpec};
use super::VmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM only where it can boot an unmodified kernel: on a PVM host trying KVM first would
    /// only fail after a long wait.
    pub fn for_host(kvm: KvmKind) -> Accel {
        if kvm.can_boot_linux() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
    /// Host TSC rate, passed to a TCG guest that cannot calibrate it (see `host_tsc_khz`).
    pub tsc_khz: Option<u64>,
}

/// Lines of console/stderr output kept for error messages.
const DIAG_LINES: usize = 40;

impl Qemu {
    /// The full argument list for `spec` (a pure function: unit-tested, and printed by the
    /// benchmark so the bare-QEMU comparison boots exactly the same machine).
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let accel = match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
            "8250.nr_uarts=1".into(),
            "random.trust_cpu=on".into(),
        ];
        if self.accel == Accel::Tcg {
            if let Some(khz) = self.tsc_khz {
                cmdline.push(format!("tsc_early_khz={khz}"));
            }
        }
        cmdline.extend(spec.cmdline.iter().cloned());
        let mut a: Vec<String> = vec![
            "-M".into(),
            format!("microvm,accel={accel},pit=on,pic=on,rtc=on"),
            "-cpu".into(),
            if self.accel == Accel::Kvm {
                "host"
            } else {
                "qemu64"
            }
            .into(),
            "-smp".into(),
            spec.cpus.max(1).to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            // The guest console goes to QEMU's stderr, which we keep the tail of.
            "-serial".into(),
            "file:/dev/stderr".into(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initramfs.display().to_string(),
            "-append".into(),
            cmdline.join(" "),
            "-drive".into(),
            format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                spec.root_disk.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            "stdio,id=agent,signal=off".into(),
            "-device".into(),
            "virtserialport,chardev=agent,name=runner".into(),
        ];
        if spec.network {
            a.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-device,netdev=net0".into(),
            ]);
        }
        a
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn describe(&self) -> String {
        match self.accel {
            Accel::Kvm => "qemu, kvm".into(),
            Accel::Tcg => "qemu, tcg".into(),
        }
    }

    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(spec))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing is allocated in the child.
        unsafe {
            cmd.pre_exec(|| {
                // If the runner dies without cleaning up, the VM dies with it.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            VmError::Hypervisor(format!(
                "cannot start {}: {e} (install qemu-system-x86)",
                self.binary.display()
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(VmError::Hypervisor("qemu stdio not captured".into()));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let t = tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut q = t.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() == DIAG_LINES {
                    q.pop_front();
                }
                q.push_back(line);
            }
        });
        Ok(RunningVm {
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            control: Box::new(QemuControl {
                child,
                tail,
                stderr_task,
            }),
        })
    }
}

struct QemuControl {
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl VmControl for QemuControl {
    async fn kill(&mut self) {
        // SIGKILL and reap: nothing in the guest needs a clean shutdown (its disk is
        // read-only, the workspace came back over the channel already).
        let _ = self.child.kill().await;
        self.stderr_task.abort();
    }

    fn diagnostics(&self) -> String {
        let q = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for QemuControl {
    fn drop(&mut self) {
        self.stderr_task.abort();
        // kill_on_drop sends SIGKILL; tokio reaps the process in the background.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: bool) -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initrd".into(),
            root_disk: "/d/root.ext4".into(),
            cpus: 2,
            memory_mib: 256,
            network,
            cmdline: vec!["runner.x=1".into()],
        }
    }

    #[test]
    fn tcg_command_line() {
        let q = Qemu {
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            tsc_khz: Some(2_000_000),
        };
        let a = q.args(&spec(false)).join(" ");
        assert!(a.contains("microvm,accel=tcg"), "{a}");
        assert!(a.contains("-smp 2 -m 256M"), "{a}");
        assert!(a.contains("tsc_early_khz=2000000 runner.x=1"), "{a}");
        assert!(
            a.contains("file=/d/root.ext4,format=raw,if=none,readonly=on"),
            "{a}"
        );
        assert!(!a.contains("netdev"), "no NIC unless asked: {a}");
        let n = q.args(&spec(true)).join(" ");
        assert!(n.contains("-netdev user,id=net0"), "{n}");
    }

    #[test]
    fn pvm_hosts_get_tcg() {
        assert_eq!(Accel::for_host(KvmKind::Pvm), Accel::Tcg);
        assert_eq!(Accel::for_host(KvmKind::Absent), Accel::Tcg);
        assert_eq!(Accel::for_host(KvmKind::Hardware("kvm_intel")), Accel::Kvm);
        let k = Qemu {
            binary: "q".into(),
            accel: Accel::Kvm,
            tsc_khz: Some(1),
        };
        let a = k.args(&spec(false)).join(" ");
        assert!(a.contains("accel=kvm") && a.contains("-cpu host") && !a.contains("tsc_early"));
    }
}
