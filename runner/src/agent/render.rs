//! The job's log text is exactly what `runner exec` prints for the job (its terminal printer,
//! without colours or timestamps), so a log read on the coordinator and a local run look the
//! same. Lines go straight into the spool.

use std::sync::Arc;

use super::spool::Spool;
use crate::cmd::exec_run::terminal::{Message, Printer, Style};
use crate::jobrun::JobEvent;

/// `Write` into the spool (each printed line is one append, so it is sent at once).
pub struct SpoolWriter(pub Arc<Spool>);

impl std::io::Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(e) = self.0.append(buf) {
            tracing::error!(error = %e, "cannot write the job's log to the spool");
            return Err(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Renderer {
    printer: Printer<SpoolWriter>,
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
        Renderer {
            printer: Printer::new(SpoolWriter(spool), style, &plan),
        }
    }

    pub fn render(&mut self, event: JobEvent) {
        self.printer.handle(Message::Event { job: 0, event });
    }
}
