//! The boot-timer marker, in the spirit of Firecracker's: the guest writes a magic byte to a
//! port when it reaches a point worth timing (first instruction, agent ready), and the VMM
//! records how long after VM creation that was, in wall time and in the VMM process's own CPU
//! time. From Linux user space the agent writes it through `/dev/port` (offset 0x440).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The port; unused on a PC and outside every range Linux probes.
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// The magic byte (the value Firecracker's boot timer uses).
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// One marker the guest wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTimerReading {
    /// Wall time since VM creation started.
    pub since_create: Duration,
    /// CPU time (user + system) the whole VMM process had used at that moment.
    pub process_cpu: Duration,
}

/// Collects the readings of one VM.
#[derive(Debug)]
pub struct BootTimer {
    created: Instant,
    readings: Mutex<Vec<BootTimerReading>>,
}

impl BootTimer {
    /// A timer counting from `created`.
    pub fn new(created: Instant) -> Self {
        BootTimer {
            created,
            readings: Mutex::new(Vec::new()),
        }
    }

    /// A guest write; anything but the magic byte is ignored.
    pub fn write(&self, value: u8) {
        if value != BOOT_TIMER_MAGIC {
            return;
        }
        let reading = BootTimerReading {
            since_create: self.created.elapsed(),
            process_cpu: process_cpu_time(),
        };
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reading);
    }

    /// The readings, oldest first.
    pub fn readings(&self) -> Vec<BootTimerReading> {
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// User + system CPU time of this process so far.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_PROCESS_CPUTIME_ID is always
    // supported on Linux; the call only writes into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_the_magic_byte_with_growing_times() {
        let t = BootTimer::new(Instant::now());
        t.write(0);
        t.write(BOOT_TIMER_MAGIC + 1);
        assert!(t.readings().is_empty());
        t.write(BOOT_TIMER_MAGIC);
        std::thread::sleep(Duration::from_millis(2));
        t.write(BOOT_TIMER_MAGIC);
        let r = t.readings();
        assert_eq!(r.len(), 2);
        assert!(r[1].since_create >= r[0].since_create + Duration::from_millis(2));
        assert!(r[1].process_cpu >= r[0].process_cpu);
        assert!(r[0].process_cpu > Duration::ZERO);
    }
}
