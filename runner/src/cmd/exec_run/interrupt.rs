//! Ctrl-C for `runner exec`: the first SIGINT (or a SIGTERM) cancels the run, which kills the
//! running steps, tears their sandboxes down and starts nothing new; the process then exits
//! with 130 (143 for SIGTERM). A second SIGINT exits at once, leaving whatever was still being
//! torn down to the reconciliation at the next start.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Watches SIGINT and SIGTERM for as long as it lives.
pub struct Interrupts {
    /// The signal that cancelled the run (0 while none did).
    signal: Arc<AtomicI32>,
    task: JoinHandle<()>,
}

impl Interrupts {
    pub fn watch(cancel: CancellationToken) -> std::io::Result<Interrupts> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let got = Arc::new(AtomicI32::new(0));
        let signal = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = int.recv() => libc_sig(nix::sys::signal::Signal::SIGINT),
                    Some(()) = term.recv() => libc_sig(nix::sys::signal::Signal::SIGTERM),
                    else => return,
                };
                if got.load(Ordering::SeqCst) == 0 {
                    got.store(sig, Ordering::SeqCst);
                    eprintln!(
                        "\nrunner: cancelling: stopping running steps and removing their \
                         sandboxes (press Ctrl-C again to exit at once)"
                    );
                    cancel.cancel();
                } else {
                    eprintln!(
                        "\nrunner: exiting without waiting; what is left is removed at the \
                         next start"
                    );
                    std::process::exit(130);
                }
            }
        });
        Ok(Interrupts { signal, task })
    }

    /// The exit code for a run that a signal cancelled: 128 + the signal number.
    pub fn exit_code(&self) -> Option<u8> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(128u8.saturating_add(s as u8)),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn libc_sig(s: nix::sys::signal::Signal) -> i32 {
    s as i32
}
