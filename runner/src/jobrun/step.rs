//! One step through its executor, with its output masked on the way out.

use std::sync::Arc;
use std::time::Instant;

use executors::{Executor, LogChunk, PreparedJob, StepResult, StepSpec, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{JobEvent, Log, DRAIN_GRACE};
use crate::mask::MaskStream;

/// Run `spec` and forward its output, masked, as `JobEvent::Output`s for step `index`. A
/// sandbox that fails to build or run is reported in the log and as a failed result (no exit
/// code), never as an error of the job runner.
pub(super) async fn run(
    exec: &Arc<dyn Executor>,
    job: &PreparedJob,
    spec: &StepSpec,
    index: usize,
    log: &Log<'_>,
    cancel: &CancellationToken,
) -> StepResult {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<LogChunk>(256);
    let mut out = Streams::new(log, index);
    let step = exec.run_step(job, spec, tx, cancel.child_token());
    tokio::pin!(step);
    let result = loop {
        tokio::select! {
            r = &mut step => break r,
            Some(chunk) = rx.recv() => out.forward(chunk).await,
        }
    };
    // The executor returned, so its sender is gone once its readers finished; take what is
    // still queued. A backend that leaks a sender must not hang the job: give up after a grace.
    let drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(drain_until, rx.recv()).await {
        out.forward(chunk).await;
    }
    out.finish().await;
    match result {
        Ok(r) => r,
        Err(e) => {
            log.system(
                index,
                &format!("error: the {} sandbox failed: {e}", exec.name()),
            )
            .await;
            StepResult {
                duration: started.elapsed(),
                cancelled: cancel.is_cancelled(),
                ..StepResult::default()
            }
        }
    }
}

/// One masking state per stream: a secret split between two stdout chunks is still found,
/// and interleaved stderr does not break it up.
struct Streams<'a, 'b> {
    log: &'a Log<'b>,
    index: usize,
    streams: [(Stream, MaskStream); 3],
}

impl<'a, 'b> Streams<'a, 'b> {
    fn new(log: &'a Log<'b>, index: usize) -> Self {
        let m = &log.masker;
        Streams {
            log,
            index,
            streams: [
                (Stream::Stdout, m.stream()),
                (Stream::Stderr, m.stream()),
                (Stream::System, m.stream()),
            ],
        }
    }

    async fn forward(&mut self, chunk: LogChunk) {
        let Some((_, s)) = self.streams.iter_mut().find(|(k, _)| *k == chunk.stream) else {
            return;
        };
        let data = s.push(&chunk.data);
        self.emit(chunk.stream, chunk.timestamp, data).await;
    }

    async fn finish(&mut self) {
        for i in 0..self.streams.len() {
            let (stream, s) = &mut self.streams[i];
            let stream = *stream;
            let data = s.finish();
            self.emit(stream, std::time::SystemTime::now(), data).await;
        }
    }

    async fn emit(&self, stream: Stream, timestamp: std::time::SystemTime, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.log
            .send(JobEvent::Output {
                index: self.index,
                chunk: LogChunk {
                    stream,
                    timestamp,
                    data,
                },
            })
            .await;
    }
}
