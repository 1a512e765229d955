//! Turns job events into log text: a header line per step, the step's output as produced
//! (already masked by the job runner), a result line per step.

use crate::jobrun::JobEvent;

#[derive(Debug)]
pub struct Renderer {
    names: Vec<String>,
}

impl Renderer {
    pub fn new(job: &pipelines::PlannedJob) -> Renderer {
        Renderer {
            names: job.steps.iter().map(|s| s.name.clone()).collect(),
        }
    }

    pub fn render(&self, ev: &JobEvent) -> Vec<u8> {
        match ev {
            JobEvent::StepStarted {
                index,
                name,
                sandbox,
            } => format!(
                "==> step {}/{}: {name} [{sandbox}]\n",
                index + 1,
                self.names.len()
            )
            .into_bytes(),
            JobEvent::Output { chunk, .. } => chunk.data.clone(),
            JobEvent::StepFinished { index, result } => {
                let name = self.names.get(*index).map(String::as_str).unwrap_or("?");
                let how = if result.cancelled {
                    "cancelled".to_string()
                } else if result.timed_out {
                    "timed out".to_string()
                } else if result.oom_killed {
                    "killed: out of memory".to_string()
                } else if let Some(sig) = result.signal {
                    format!("killed by signal {sig}")
                } else {
                    format!("exit {}", result.exit_code.unwrap_or(-1))
                };
                format!(
                    "==> step {name}: {how} ({:.2}s)\n",
                    result.duration.as_secs_f64()
                )
                .into_bytes()
            }
        }
    }
}
