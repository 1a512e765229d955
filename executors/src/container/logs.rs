//! Streams a step's stdout and stderr to the caller while it runs, as [`LogChunk`]s.

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::executor::{LogChunk, Stream};

/// How much one read takes at most: a pipe's default capacity.
const PIPE_BUF: usize = 64 * 1024;

/// Read both pipes until both reach EOF (every process of the sandbox is gone), sending each
/// read as a chunk as soon as it arrives. A closed receiver does not stop the draining: the
/// step must never block on a full pipe.
pub async fn pump(stdout: OwnedFd, stderr: OwnedFd, tx: mpsc::Sender<LogChunk>) {
    let (Ok(mut out), Ok(mut err)) = (
        pipe::Receiver::from_owned_fd(stdout),
        pipe::Receiver::from_owned_fd(stderr),
    ) else {
        tracing::error!("cannot register the step's output pipes with the runtime");
        return;
    };
    // A pipe holds 64 KiB: one read can take all of it. The buffers are left uninitialised
    // (read_buf fills spare capacity): zeroing them would fault in 32 pages for every step,
    // ~60 us here, whether or not it prints anything.
    let mut buf_out = Vec::with_capacity(PIPE_BUF);
    let mut buf_err = Vec::with_capacity(PIPE_BUF);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        buf_out.clear();
        buf_err.clear();
        let (stream, n) = tokio::select! {
            r = out.read_buf(&mut buf_out), if out_open => (Stream::Stdout, r),
            r = err.read_buf(&mut buf_err), if err_open => (Stream::Stderr, r),
        };
        match n {
            Ok(0) | Err(_) => match stream {
                Stream::Stdout => out_open = false,
                _ => err_open = false,
            },
            Ok(_) => {
                let data = match stream {
                    Stream::Stdout => &buf_out[..],
                    _ => &buf_err[..],
                };
                let _ = tx.send(LogChunk::new(stream, data)).await;
            }
        }
    }
}
