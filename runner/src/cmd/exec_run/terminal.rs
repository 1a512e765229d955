//! What `runner exec` shows: each job's steps live, line by line, prefixed by the job so that
//! parallel jobs stay readable; a header when a step starts (job, step, sandbox) and a line when
//! it ends; optional timestamps (time since the step started); colours only on a terminal (and never with `NO_COLOR`);
//! and the final summary table.
//!
//! ```text
//! build  ▶ compile · container (overlayfs, cgroup v1), image host
//! build  │ building...
//! build  ✓ compile · 0.31s
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use executors::{StepResult, Stream};
use pipelines::Plan;

use super::schedule::{JobOutcome, Notice};
use crate::jobrun::{JobEvent, JobStatus};

#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
    pub timestamps: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const CYAN: &str = "36";

/// What the printer is told, from all jobs at once.
#[derive(Debug)]
pub enum Message {
    Event {
        job: usize,
        event: JobEvent,
    },
    Notice(Notice),
    /// A line from the runner about a job (workspace copied, ...).
    Info {
        job: usize,
        text: String,
    },
}

/// Turns messages into terminal lines. Output of a step is split into lines per stream, and a
/// line's unfinished end waits for the rest (or for the step's end).
pub struct Printer<W: Write> {
    out: W,
    style: Style,
    /// Job ids, padded to the same width.
    labels: Vec<String>,
    steps: Vec<Vec<String>>,
    /// Jobs with `allow_failure`, whose failure is reported as allowed.
    allowed: Vec<bool>,
    partial: HashMap<(usize, usize, StreamKey), (SystemTime, Vec<u8>)>,
    /// When each running step started, for `--timestamps`.
    started: HashMap<(usize, usize), SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StreamKey {
    Out,
    Err,
    Sys,
}

impl From<Stream> for StreamKey {
    fn from(s: Stream) -> Self {
        match s {
            Stream::Stdout => StreamKey::Out,
            Stream::Stderr => StreamKey::Err,
            Stream::System => StreamKey::Sys,
        }
    }
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, style: Style, plan: &Plan) -> Self {
        let width = plan
            .jobs
            .iter()
            .map(|j| j.id.chars().count())
            .max()
            .unwrap_or(0);
        Printer {
            out,
            style,
            labels: plan
                .jobs
                .iter()
                .map(|j| format!("{:<width$}", j.id))
                .collect(),
            steps: plan
                .jobs
                .iter()
                .map(|j| j.steps.iter().map(|s| s.name.clone()).collect())
                .collect(),
            allowed: plan.jobs.iter().map(|j| j.allow_failure).collect(),
            partial: HashMap::new(),
            started: HashMap::new(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn handle(&mut self, msg: Message) {
        match msg {
            Message::Event { job, event } => self.event(job, event),
            Message::Notice(n) => self.notice(n),
            Message::Info { job, text } => {
                let line = self.style.paint(DIM, &text);
                self.line(job, None, "»", &line);
            }
        }
        let _ = self.out.flush();
    }

    fn event(&mut self, job: usize, event: JobEvent) {
        match event {
            JobEvent::StepStarted {
                index,
                name,
                sandbox,
            } => {
                let text = format!(
                    "{} {}",
                    self.style.paint(BOLD, &name),
                    self.style.paint(DIM, &format!("· {sandbox}"))
                );
                let mark = self.style.paint(CYAN, "▶");
                let now = SystemTime::now();
                self.started.insert((job, index), now);
                self.line(job, Some((index, now)), &mark, &text);
            }
            JobEvent::Output { index, chunk } => {
                let key = (job, index, StreamKey::from(chunk.stream));
                let entry = self
                    .partial
                    .entry(key)
                    .or_insert_with(|| (chunk.timestamp, Vec::new()));
                if entry.1.is_empty() {
                    entry.0 = chunk.timestamp;
                }
                entry.1.extend_from_slice(&chunk.data);
                let (ts, buf) = (entry.0, std::mem::take(&mut entry.1));
                let mut rest: &[u8] = &buf;
                let mut ts = ts;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    self.output_line(key, ts, &rest[..nl]);
                    rest = &rest[nl + 1..];
                    ts = chunk.timestamp;
                }
                if !rest.is_empty() {
                    self.partial.insert(key, (ts, rest.to_vec()));
                } else {
                    self.partial.remove(&key);
                }
            }
            JobEvent::StepFinished { index, result } => {
                self.flush_step(job, index);
                let name = self
                    .steps
                    .get(job)
                    .and_then(|s| s.get(index))
                    .cloned()
                    .unwrap_or_default();
                let (mark, code) = if result.success() {
                    ("✓", GREEN)
                } else {
                    ("✗", RED)
                };
                let text = format!(
                    "{} · {} {}",
                    self.style.paint(BOLD, &name),
                    self.style.paint(code, &step_status(&result, false)),
                    self.style
                        .paint(DIM, &format!("in {}", duration(result.duration))),
                );
                let mark = self.style.paint(code, mark);
                self.line(job, Some((index, SystemTime::now())), &mark, &text);
                self.started.remove(&(job, index));
            }
        }
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Skipped { job, reason } => {
                let text = self.style.paint(YELLOW, &format!("skipped: {reason}"));
                self.line(job, None, "-", &text);
            }
            Notice::Retrying { job, attempt, of } => {
                let text = self
                    .style
                    .paint(YELLOW, &format!("retrying (attempt {attempt} of {of})"));
                self.line(job, None, "↻", &text);
            }
            Notice::Finished { job, status } => {
                let allowed = self.allowed.get(job).copied().unwrap_or(false)
                    && matches!(status, JobStatus::Failed | JobStatus::TimedOut);
                let code = match status {
                    JobStatus::Success => GREEN,
                    JobStatus::Skipped => YELLOW,
                    _ if allowed => YELLOW,
                    _ => RED,
                };
                let text = format!(
                    "job {}{}",
                    status_word(status),
                    if allowed { " (allowed to fail)" } else { "" }
                );
                let text = self.style.paint(code, &text);
                self.line(job, None, "■", &text);
            }
        }
    }

    fn output_line(&mut self, key: (usize, usize, StreamKey), ts: SystemTime, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let (mark, text) = match key.2 {
            StreamKey::Out => ("│".to_string(), text.to_string()),
            StreamKey::Err => (self.style.paint(RED, "│"), text.to_string()),
            StreamKey::Sys => (self.style.paint(CYAN, "»"), self.style.paint(CYAN, text)),
        };
        self.line(key.0, Some((key.1, ts)), &mark, &text);
    }

    /// Print what is left of a step's unfinished lines.
    fn flush_step(&mut self, job: usize, index: usize) {
        for k in [StreamKey::Out, StreamKey::Err, StreamKey::Sys] {
            if let Some((ts, buf)) = self.partial.remove(&(job, index, k)) {
                self.output_line((job, index, k), ts, &buf);
            }
        }
    }

    /// One line for `job`; `at` is the step and the time the line is about, for
    /// `--timestamps` (lines outside a step get a blank stamp).
    fn line(&mut self, job: usize, at: Option<(usize, SystemTime)>, mark: &str, text: &str) {
        let label = self.labels.get(job).map(String::as_str).unwrap_or("?");
        let label = self.style.paint(BOLD, label);
        let stamp = if self.style.timestamps {
            let since = at.and_then(|(index, t)| {
                let start = self.started.get(&(job, index))?;
                Some(t.duration_since(*start).unwrap_or_default())
            });
            match since {
                Some(d) => format!("{} ", self.style.paint(DIM, &elapsed(d))),
                None => format!("{:9} ", ""),
            }
        } else {
            String::new()
        };
        let _ = writeln!(self.out, "{stamp}{label} {mark} {text}");
    }
}

/// `MM:SS.mmm` (minutes keep counting past 59).
pub fn elapsed(d: Duration) -> String {
    format!(
        "{:02}:{:02}.{:03}",
        d.as_secs() / 60,
        d.as_secs() % 60,
        d.subsec_millis()
    )
}

pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.2}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// `success`, `failed (exit 2)`, `timed out`, `killed: out of memory`, ...
fn step_status(r: &StepResult, allowed: bool) -> String {
    let s = if r.success() {
        return "success".into();
    } else if r.cancelled {
        "cancelled".to_string()
    } else if r.timed_out {
        "timed out".to_string()
    } else if r.oom_killed {
        "killed: out of memory".to_string()
    } else if let Some(sig) = r.signal {
        format!("failed (signal {sig})")
    } else if let Some(code) = r.exit_code {
        format!("failed (exit {code})")
    } else {
        "failed (sandbox error)".to_string()
    };
    if allowed {
        format!("{s}, allowed")
    } else {
        s
    }
}

/// The table printed at the end: one row per step (steps that never ran say so), one row for
/// a job that did not run at all, and a count line.
pub fn summary(plan: &Plan, outcomes: &[JobOutcome], style: Style, elapsed: Duration) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut codes: Vec<&str> = Vec::new();
    for (job, o) in plan.jobs.iter().zip(outcomes) {
        let label = if o.attempts > 1 {
            format!("{} (attempt {})", job.id, o.attempts)
        } else {
            job.id.clone()
        };
        if o.attempts == 0 {
            let why = o.reason.clone().unwrap_or_default();
            rows.push([
                label,
                "-".into(),
                format!("{}: {why}", status_word(o.status)),
                "-".into(),
            ]);
            codes.push(if o.status == JobStatus::Skipped {
                YELLOW
            } else {
                RED
            });
            continue;
        }
        for (i, step) in job.steps.iter().enumerate() {
            let (status, took, code) = match o.results.get(i) {
                Some(r) => {
                    let allowed = !r.success() && (step.continue_on_error || job.allow_failure);
                    let code = if r.success() {
                        GREEN
                    } else if allowed {
                        YELLOW
                    } else {
                        RED
                    };
                    (step_status(r, allowed), duration(r.duration), code)
                }
                None => ("not run".to_string(), "-".to_string(), DIM),
            };
            rows.push([label.clone(), step.name.clone(), status, took]);
            codes.push(code);
        }
        if job.steps.is_empty() || (o.results.is_empty() && o.status != JobStatus::Success) {
            rows.push([
                label,
                "-".into(),
                format!("job {}", status_word(o.status)),
                "-".into(),
            ]);
            codes.push(RED);
        }
    }
    let head = ["JOB", "STEP", "STATUS", "DURATION"].map(String::from);
    let mut w = head.clone().map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let fmt_row = |r: &[String; 4], code: Option<&str>| {
        let status = format!("{:<w2$}", r[2], w2 = w[2]);
        let status = match code {
            Some(c) => style.paint(c, &status),
            None => status,
        };
        format!(
            "{:<w0$}  {:<w1$}  {status}  {}",
            r[0],
            r[1],
            r[3],
            w0 = w[0],
            w1 = w[1]
        )
        .trim_end()
        .to_string()
    };
    let mut out = String::from("\n");
    out.push_str(&style.paint(BOLD, &fmt_row(&head, None)));
    out.push('\n');
    for (r, code) in rows.iter().zip(codes) {
        out.push_str(&fmt_row(r, Some(code)));
        out.push('\n');
    }
    let count = |f: &dyn Fn(&JobOutcome, &pipelines::PlannedJob) -> bool| {
        outcomes
            .iter()
            .zip(&plan.jobs)
            .filter(|(o, j)| f(o, j))
            .count()
    };
    let ok = count(&|o, _| o.status == JobStatus::Success);
    let failed = count(&|o, j| is_failure(o.status) && !j.allow_failure);
    let allowed = count(&|o, j| is_failure(o.status) && j.allow_failure);
    let cancelled = count(&|o, _| o.status == JobStatus::Cancelled);
    let skipped = count(&|o, _| o.status == JobStatus::Skipped);
    let mut parts = vec![format!("{ok} succeeded"), format!("{failed} failed")];
    if allowed > 0 {
        parts.push(format!("{allowed} failed (allowed)"));
    }
    if cancelled > 0 {
        parts.push(format!("{cancelled} cancelled"));
    }
    parts.push(format!("{skipped} skipped"));
    let n = plan.jobs.len();
    out.push_str(&format!(
        "{n} {}: {} in {}\n",
        if n == 1 { "job" } else { "jobs" },
        parts.join(", "),
        duration(elapsed)
    ));
    out
}

fn is_failure(s: JobStatus) -> bool {
    matches!(
        s,
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Cancelled
    )
}

fn status_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Success => "success",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::TimedOut => "timed out",
        JobStatus::Skipped => "skipped",
    }
}

#[cfg(test)]
mod tests;
