//! The job's log text is exactly what `runner exec` prints for the job (its terminal printer,
//! without colours or timestamps), so a log read on the coordinator and a local run look the
//! same. Lines go straight into the spool.

use std::sync::{Arc, Mutex};

use super::spool::Spool;
use crate::cmd::exec_run::terminal::{Message, Printer, Style};
use crate::jobrun::JobEvent;

/// Collects the lines printed for one event; they go to the spool in one append (one write
/// per chunk of output rather than one per line).
#[derive(Default, Clone)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Renderer {
    printer: Printer<Lines>,
    lines: Lines,
    spool: Arc<Spool>,
}

impl Renderer {
    pub fn new(job: &pipelines::PlannedJob, spool: Arc<Spool>) -> Renderer {
        let plan = pipelines::Plan {
            name: String::new(),
            jobs: vec![job.clone()],
        };
        let style = Style {
            color: false,
            timestamps: false,
        };
        let lines = Lines::default();
        Renderer {
            printer: Printer::new(lines.clone(), style, &plan),
            lines,
            spool,
        }
    }

    /// Prints `event` into the spool.
    pub fn render(&mut self, event: JobEvent) -> std::io::Result<()> {
        self.printer.handle(Message::Event { job: 0, event });
        self.spool.append(&self.lines.take())
    }
}
