//! The seam between the VM executor and whatever runs the VM. A backend boots a VM from a
//! [`VmSpec`] and hands back the agent channel as a byte stream plus a way to kill the VM;
//! everything above (protocol, workspace, pool) is shared. QEMU is one backend; the in-process
//! microVM (`vmm/`) is meant to be another.
//!
//! What the guest agent expects of a backend (see `docs/vm-protocol.md`):
//! - boot `kernel` with `initramfs` and the command line the backend builds plus
//!   `VmSpec::cmdline`; the agent is `/init`.
//! - the root disk read-only at `/dev/vda` (override: `runner.root=/dev/...`) behind virtio-mmio
//!   or virtio-pci (the initramfs carries `virtio_mmio`, `virtio_blk`, `virtio_console`).
//! - one byte stream to the agent: a virtio-serial port named `runner`, or any device named
//!   with `runner.chan=` (e.g. `/dev/ttyS1`, a second 8250 UART: the agent sets it raw).
//! - the VM ends when the guest powers off or resets (`panic=-1` makes a panic a reset).

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use super::VmError;

/// What to boot. Backends translate it into their own configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// bzImage of the guest kernel.
    pub kernel: PathBuf,
    /// newc initramfs whose `/init` is the guest agent.
    pub initramfs: PathBuf,
    /// Read-only raw disk with the image root; the guest sees it as `/dev/vda`.
    pub root_disk: PathBuf,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Give the guest a NIC behind user-mode NAT (otherwise it has loopback only).
    pub network: bool,
    /// Extra kernel command line words (after the backend's own).
    pub cmdline: Vec<String>,
}

/// A running VM. Dropping it must kill the VM as well (backends make sure of it), so no early
/// return can leak one.
pub struct RunningVm {
    /// Guest -> host half of the agent channel.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Host -> guest half of the agent channel.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub control: Box<dyn VmControl>,
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm").finish_non_exhaustive()
    }
}

/// Life-cycle control of a running VM.
#[async_trait]
pub trait VmControl: Send + Sync {
    /// Stop the VM at once and wait until it and everything it held (processes, files) are
    /// gone. Idempotent.
    async fn kill(&mut self);
    /// The last lines the guest console and the hypervisor printed, for error messages.
    fn diagnostics(&self) -> String;
}

/// A hypervisor backend.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// For the step header, e.g. `qemu, tcg`.
    fn describe(&self) -> String;
    /// Start a VM; returns as soon as it runs (the agent's `Hello` is awaited by the caller).
    async fn boot(&self, spec: &VmSpec) -> Result<RunningVm, VmError>;
}
