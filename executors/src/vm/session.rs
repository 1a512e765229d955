//! The host end of the agent protocol for one VM: wait for `Hello`, send the step and the
//! workspace, relay output, collect the workspace and the exit status.

use std::time::{Duration, Instant};

use guest_agent::protocol::{self, Exit, Hello, Kind, Run, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hypervisor::{RunningVm, VmControl};
use super::VmError;
use crate::{LogChunk, Stream};

type Frame = Result<(Kind, Vec<u8>), VmError>;

/// A booted VM whose agent said `Hello` and waits for its one step.
pub struct ReadyVm {
    pub hello: Hello,
    /// From the start of the hypervisor to `Hello`.
    pub boot_time: Duration,
    frames: mpsc::Receiver<Frame>,
    writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    control: Box<dyn VmControl>,
}

impl std::fmt::Debug for ReadyVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyVm")
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

/// Reads frames on its own task, so a timeout or cancel never cuts one in half.
fn spawn_reader(mut r: Box<dyn AsyncRead + Send + Unpin>) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let mut h = [0u8; protocol::HEADER_LEN];
            match r.read_exact(&mut h).await {
                Ok(_) => {}
                Err(_) => return, // End of stream: the VM is gone; the receiver sees None.
            }
            let frame = match protocol::parse_header(&h) {
                Ok((kind, len)) => {
                    let mut payload = vec![0u8; len];
                    match r.read_exact(&mut payload).await {
                        Ok(_) => Ok((kind, payload)),
                        Err(e) => Err(VmError::Channel(format!("cut-off frame: {e}"))),
                    }
                }
                Err(e) => Err(VmError::Channel(e.to_string())),
            };
            let fatal = frame.is_err();
            if tx.send(frame).await.is_err() || fatal {
                return;
            }
        }
    });
    rx
}

/// Wait for the agent of a freshly booted VM. Kills the VM on any failure.
pub async fn wait_ready(
    vm: RunningVm,
    started: Instant,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<ReadyVm, VmError> {
    let RunningVm {
        reader,
        writer,
        mut control,
    } = vm;
    let mut frames = spawn_reader(reader);
    let first = tokio::select! {
        f = frames.recv() => f,
        _ = tokio::time::sleep(timeout) => {
            control.kill().await;
            return Err(VmError::Boot(format!(
                "the guest agent did not start within {timeout:?}\n{}",
                control.diagnostics()
            )));
        }
        _ = cancel.cancelled() => {
            control.kill().await;
            return Err(VmError::Cancelled);
        }
    };
    let hello = match first {
        Some(Ok((Kind::Hello, payload))) => protocol::decode::<Hello>(Kind::Hello, &payload),
        Some(Ok((Kind::Error, msg))) => Err(protocol::ProtocolError::Io(std::io::Error::other(
            String::from_utf8_lossy(&msg).into_owned(),
        ))),
        Some(Ok((kind, _))) => Err(protocol::ProtocolError::Unexpected {
            expected: Kind::Hello,
            got: kind,
        }),
        Some(Err(e)) => Err(protocol::ProtocolError::Io(std::io::Error::other(
            e.to_string(),
        ))),
        None => Err(protocol::ProtocolError::Io(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
    };
    let hello = match hello {
        Ok(h) if h.version == PROTOCOL_VERSION => h,
        Ok(h) => {
            control.kill().await;
            return Err(VmError::Boot(format!(
                "guest agent speaks protocol {}, this runner {PROTOCOL_VERSION}: rebuild the initramfs",
                h.version
            )));
        }
        Err(e) => {
            // Let the process end so its last console lines are in the diagnostics.
            tokio::time::sleep(Duration::from_millis(50)).await;
            control.kill().await;
            return Err(VmError::Boot(format!("{e}\n{}", control.diagnostics())));
        }
    };
    Ok(ReadyVm {
        hello,
        boot_time: started.elapsed(),
        frames,
        writer,
        control,
    })
}

/// How a run on a VM ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub exit: Option<Exit>,
    /// Tar of the workspace as the step left it (absent if the step never finished).
    pub workspace: Option<Vec<u8>>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// When the exit status arrived (end of "run"); `None` if it never did.
    pub finished_at: Option<Instant>,
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Largest workspace tar accepted back from the guest.
    pub max_workspace: usize,
}

/// Run one step on `vm`, then kill the VM (it is used once).
pub async fn run(
    mut vm: ReadyVm,
    run: &Run,
    workspace: Option<Vec<u8>>,
    output: &mpsc::Sender<LogChunk>,
    limits: Limits,
    cancel: &CancellationToken,
) -> Result<Outcome, VmError> {
    let mut out = Outcome::default();
    let result = drive(&mut vm, run, workspace, output, limits, cancel, &mut out).await;
    vm.control.kill().await;
    match result {
        Err(VmError::Channel(msg)) => Err(VmError::Channel(format!(
            "{msg}\n{}",
            vm.control.diagnostics()
        ))),
        other => other.map(|()| out),
    }
}

async fn drive(
    vm: &mut ReadyVm,
    run: &Run,
    workspace: Option<Vec<u8>>,
    output: &mpsc::Sender<LogChunk>,
    limits: Limits,
    cancel: &CancellationToken,
    out: &mut Outcome,
) -> Result<(), VmError> {
    let Limits {
        timeout,
        max_workspace,
    } = limits;
    let writer = &mut vm.writer;
    let send = async move {
        let mut buf = Vec::new();
        protocol::write_json(&mut buf, Kind::Run, run).map_err(|e| e.to_string())?;
        if let Some(ws) = &workspace {
            for chunk in ws.chunks(protocol::CHUNK) {
                protocol::write_frame(&mut buf, Kind::WorkspaceIn, chunk)
                    .map_err(|e| e.to_string())?;
            }
            protocol::write_frame(&mut buf, Kind::WorkspaceInEnd, &[])
                .map_err(|e| e.to_string())?;
        }
        writer.write_all(&buf).await.map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())
    };
    tokio::pin!(send);
    let mut sending = true;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ws_out = Vec::new();
    loop {
        tokio::select! {
            r = &mut send, if sending => {
                sending = false;
                // A failed send means the VM went away; the reader reports why.
                if let Err(e) = r {
                    tracing::debug!("sending the step to the VM failed: {e}");
                }
            }
            f = vm.frames.recv() => {
                let (kind, payload) = match f {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => return Err(e),
                    None => return Err(VmError::Channel("the VM stopped before the step ended".into())),
                };
                match kind {
                    Kind::Stdout | Kind::Stderr => {
                        let stream = if kind == Kind::Stdout { Stream::Stdout } else { Stream::Stderr };
                        let _ = output.send(LogChunk::new(stream, payload)).await;
                    }
                    Kind::WorkspaceOut => {
                        // The guest's workspace lives in its RAM: a larger stream is a guest
                        // trying to exhaust the host's memory.
                        if ws_out.len() + payload.len() > max_workspace {
                            return Err(VmError::Workspace(format!(
                                "the guest sent more than {max_workspace} bytes of workspace"
                            )));
                        }
                        ws_out.extend_from_slice(&payload)
                    }
                    Kind::WorkspaceOutEnd => out.workspace = Some(std::mem::take(&mut ws_out)),
                    Kind::Exit => {
                        out.exit = Some(protocol::decode(Kind::Exit, &payload).map_err(|e| VmError::Channel(e.to_string()))?);
                        out.finished_at = Some(Instant::now());
                        return Ok(());
                    }
                    Kind::Error => {
                        return Err(VmError::Agent(String::from_utf8_lossy(&payload).into_owned()));
                    }
                    other => return Err(VmError::Channel(format!("unexpected {other:?} frame from the guest"))),
                }
            }
            _ = &mut deadline => { out.timed_out = true; return Ok(()); }
            _ = cancel.cancelled() => { out.cancelled = true; return Ok(()); }
        }
    }
}
