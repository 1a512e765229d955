//! A minimal in-process microVM on KVM and the rust-vmm crates.
//!
//! ```text
//! VmConfig --Vm::new--> Vm (KVM VM, memory, loaded guest, devices, configured vCPUs)
//!          --Vm::run--> RunReport (how it ended, boot-timer readings)
//! ```
//!
//! Layout: [`kvm`] (what KVM this host has), [`vm`] (VM-wide state), [`memory`] (RAM and the
//! e820 map), [`boot`] (kernel, command line, initrd, zero page), [`cpu`] (CPUID, MSRs,
//! long-mode registers, LAPIC), [`vcpu`] (one thread per vCPU), [`devices`] (serial, i8042,
//! boot timer).

pub mod boot;
pub mod cpu;
pub mod devices;
pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;

pub use boot::GuestImage;
pub use devices::{BootTimerReading, InputError, SerialInput, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use kvm::KvmKind;
pub use vcpu::VmEnd;

use devices::Devices;
use memory::GuestMemory;
use vcpu::Event;

/// Most vCPUs we create (the APIC IDs fit the legacy 8-bit field with room to spare).
pub const MAX_VCPUS: u8 = 64;

/// Everything needed to build a VM.
pub struct VmConfig {
    /// What to run.
    pub image: GuestImage,
    /// Kernel command line (also written for raw images, which may read it).
    pub cmdline: String,
    /// Optional initrd, placed at the top of low memory.
    pub initrd: Option<PathBuf>,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs (1..=MAX_VCPUS).
    pub vcpus: u8,
    /// Where the guest's serial console (COM1) output goes.
    pub serial: Box<dyn Write + Send>,
    /// A second UART (COM2, 0x2f8, IRQ 3) for a guest agent: where its output goes. Input
    /// goes in through [`Vm::agent_input`].
    pub agent: Option<Box<dyn Write + Send>>,
    /// A raw disk image the guest sees read-only as a virtio block device (`/dev/vda`), found
    /// through ACPI (virtio-mmio, `LNRO0005`).
    pub root_disk: Option<PathBuf>,
    /// Stop the VM after this long (None: run until the guest ends it or `StopHandle::stop`).
    pub timeout: Option<Duration>,
}

impl VmConfig {
    /// A config for `image` with one vCPU, 128 MiB, no command line, output discarded.
    pub fn new(image: GuestImage) -> Self {
        VmConfig {
            image,
            cmdline: String::new(),
            initrd: None,
            mem_mib: 128,
            vcpus: 1,
            serial: Box::new(std::io::sink()),
            agent: None,
            root_disk: None,
            timeout: None,
        }
    }
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("image", &self.image)
            .field("cmdline", &self.cmdline)
            .field("initrd", &self.initrd)
            .field("mem_mib", &self.mem_mib)
            .field("vcpus", &self.vcpus)
            .field("agent", &self.agent.is_some())
            .field("root_disk", &self.root_disk)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Errors building or running a VM. Each variant says which stage failed.
#[derive(Debug, Error)]
pub enum Error {
    /// KVM is missing, unusable, or cannot run this guest.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// Guest memory could not be laid out or allocated.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// The guest could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Cpu(#[from] cpu::Error),
    /// A device could not be set up.
    #[error(transparent)]
    Devices(#[from] devices::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU {0} failed: {1}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    /// Bad vCPU count.
    #[error("a VM needs 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    /// A thread could not be started or the kick handler installed.
    #[error("cannot start vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How the VM ended (the first vCPU to end decides).
    pub end: VmEnd,
    /// Boot-timer markers the guest wrote, oldest first.
    pub boot_times: Vec<BootTimerReading>,
    /// Time to build the VM (KVM VM, memory, loading, vCPU setup), from `Vm::new` start.
    pub build_time: Duration,
    /// Time from VM creation start until every vCPU thread was gone.
    pub total_time: Duration,
}

/// Stops a running VM from another thread (cancel).
#[derive(Clone, Debug)]
pub struct StopHandle {
    events: Sender<Event>,
}

impl StopHandle {
    /// Asks the VM to stop; `run` then returns `VmEnd::Stopped`.
    pub fn stop(&self) {
        let _ = self.events.send(Event::Stop);
    }
}

/// A built VM, ready to run. Dropping it (or finishing `run`) frees everything: the vCPU and VM
/// file descriptors close and the guest memory is unmapped.
pub struct Vm {
    // Field order is drop order: vCPUs and devices before the VM fd, memory last.
    vcpus: Vec<(u8, VcpuFd)>,
    devices: Arc<Devices>,
    _vm: VmFd,
    mem: GuestMemory,
    created: Instant,
    build_time: Duration,
    timeout: Option<Duration>,
    events: (Sender<Event>, Receiver<Event>),
    /// Set when the VM stops: vCPU threads leave, serial inputs give up.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("build_time", &self.build_time)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Builds the VM: checks KVM (refusing a Linux kernel on PVM), allocates memory, creates
    /// the VM with its irqchip and PIT, loads the guest, wires the devices, creates and
    /// configures the vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        let created = Instant::now();
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(Error::VcpuCount(config.vcpus));
        }
        if matches!(config.image, GuestImage::Kernel(_)) {
            kvm::check_boots_linux()?;
        }
        let kvm = kvm::open()?;
        let mem = memory::allocate(config.mem_mib)?;
        // Creating the VM is mostly waiting in the kernel (memory-slot and irqchip setup wait
        // for RCU grace periods); copying a kernel and initrd is mostly page faults. Neither
        // needs the other, so they overlap.
        let (vm, loaded) = std::thread::scope(|s| {
            let creating = std::thread::Builder::new()
                .name("vm-create".into())
                .spawn_scoped(s, || vm::create(&kvm, &mem));
            let platform = boot::Platform {
                mem_mib: config.mem_mib,
                cpus: config.vcpus,
                agent_uart: config.agent.is_some(),
                block_device: config.root_disk.is_some(),
            };
            let loaded = boot::load(
                &mem,
                platform,
                &config.image,
                &config.cmdline,
                config.initrd.as_deref(),
            )
            .map_err(Error::from)
            .and_then(|l| Ok((l, cpu::write_boot_tables(&mem)?)));
            let vm = match creating {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to spare: create it here, after loading.
                Err(_) => vm::create(&kvm, &mem),
            };
            (vm, loaded)
        });
        let vm = vm?;
        let (loaded, cr3) = loaded?;
        let device_config = devices::DeviceConfig {
            console_out: config.serial,
            agent_out: config.agent,
            root_disk: config.root_disk.as_deref(),
        };
        let devices = Arc::new(Devices::new(&vm, &mem, device_config, created)?);
        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(id.into())
                .map_err(|e| Error::CreateVcpu(id, e))?;
            cpu::configure(&kvm, &fd, id, config.vcpus, loaded.entry, cr3)?;
            vcpus.push((id, fd));
        }
        Ok(Vm {
            vcpus,
            devices,
            _vm: vm,
            mem,
            created,
            build_time: created.elapsed(),
            timeout: config.timeout,
            events: mpsc::channel(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Feeds the guest's console (COM1) input.
    pub fn console_input(&self) -> SerialInput {
        SerialInput::new(self.devices.console().clone(), self.stop.clone())
    }

    /// Feeds the agent UART (COM2), if the config asked for one.
    pub fn agent_input(&self) -> Option<SerialInput> {
        let port = self.devices.agent()?.clone();
        Some(SerialInput::new(port, self.stop.clone()))
    }

    /// A handle that stops this VM while `run` is in progress.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            events: self.events.0.clone(),
        }
    }

    /// The guest's memory (for inspection after or before a run).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Runs the VM until a vCPU ends it, the timeout passes or `StopHandle::stop` is called,
    /// then stops every vCPU and tears the VM down.
    pub fn run(mut self) -> Result<RunReport, Error> {
        vcpu::install_kick_handler().map_err(Error::Thread)?;
        let stop = self.stop.clone();
        let mut threads = Vec::new();
        for (id, fd) in std::mem::take(&mut self.vcpus) {
            let (devices, flag, events) =
                (self.devices.clone(), stop.clone(), self.events.0.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(id, fd, devices, flag, events));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let _ = stop_all(&stop, &threads);
                    return Err(Error::Thread(e));
                }
            }
        }
        let waited = self.wait(threads.len());
        let all_stopped = stop_all(&stop, &threads);
        for t in threads.into_iter().filter(|t| t.is_finished()) {
            // Join only reaps finished threads. A panicked vCPU thread already reported
            // nothing, and the VM is over either way.
            let _ = t.join();
        }
        let end = match waited {
            _ if !all_stopped => VmEnd::Error(format!(
                "a vCPU thread did not stop within {STOP_GRACE:?} (blocked in a serial sink?); \
                 it was left to finish on its own"
            )),
            Waited::Ended(end) => end,
            Waited::Stopped => VmEnd::Stopped,
            // A guest whose boot vCPU sleeps in HLT with interrupts off has finished (or hung)
            // rather than run out of time: say so.
            Waited::TimedOut => match self.boot_vcpu_end() {
                Some(VmEnd::Halt) => VmEnd::Halt,
                _ => VmEnd::TimedOut,
            },
        };
        self.devices.flush_serial();
        let boot_times = self.devices.boot_times();
        let (created, build_time) = (self.created, self.build_time);
        drop(self);
        Ok(RunReport {
            end,
            boot_times,
            build_time,
            total_time: created.elapsed(),
        })
    }

    /// How vCPU 0 reported its end, from the events left after all vCPUs stopped.
    fn boot_vcpu_end(&self) -> Option<VmEnd> {
        self.events.1.try_iter().find_map(|e| match e {
            Event::Ended(e) if e.id == 0 => Some(e.end),
            _ => None,
        })
    }

    /// Waits for the first vCPU to end, a stop request, or the timeout.
    fn wait(&self, running: usize) -> Waited {
        if running == 0 {
            return Waited::Stopped;
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let event = match deadline {
            Some(d) => match self
                .events
                .1
                .recv_timeout(d.saturating_duration_since(Instant::now()))
            {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => return Waited::TimedOut,
                Err(RecvTimeoutError::Disconnected) => Event::Stop,
            },
            // We hold a sender ourselves, so recv only fails if that is gone, which cannot be.
            None => self.events.1.recv().unwrap_or(Event::Stop),
        };
        match event {
            Event::Ended(e) => Waited::Ended(e.end),
            Event::Stop => Waited::Stopped,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Whether or not it ran: serial inputs must stop waiting for a reader.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What ended the wait for a running VM.
enum Waited {
    /// A vCPU ended the VM.
    Ended(VmEnd),
    /// `StopHandle::stop`.
    Stopped,
    /// The configured timeout.
    TimedOut,
}

/// How long `run` waits for vCPU threads to stop before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Sets the stop flag and kicks every vCPU thread until it has left KVM_RUN and finished;
/// false if one is still busy after `STOP_GRACE` (stuck writing to a blocked serial sink: the
/// kick interrupts KVM_RUN, not the sink). Kicking repeats because a signal that lands just
/// before a thread re-enters KVM_RUN is lost.
fn stop_all(stop: &AtomicBool, threads: &[JoinHandle<()>]) -> bool {
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + STOP_GRACE;
    while threads.iter().any(|t| !t.is_finished()) {
        if Instant::now() > deadline {
            return false;
        }
        for t in threads.iter().filter(|t| !t.is_finished()) {
            vcpu::kick(t);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}
