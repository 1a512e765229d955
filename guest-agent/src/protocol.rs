//! The byte protocol between the runner (host) and the guest agent, shared by both ends so they
//! cannot drift apart. Specified in `docs/vm-protocol.md`.
//!
//! Every message is a frame: a 1-byte kind, a 4-byte little-endian payload length, then the
//! payload. Control messages carry JSON; output and workspace data travel as raw bytes so a
//! build log is never re-encoded. The transport is any reliable byte stream (a virtio-serial
//! port under QEMU, a serial port under the microVM), so the framing has no alignment or
//! packet assumptions.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; the host refuses an agent with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest payload either side accepts. Output and tar data are cut into frames of at most
/// [`CHUNK`] bytes; the limit guards against a corrupt length allocating gigabytes.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Size the senders cut streamed data into.
pub const CHUNK: usize = 64 * 1024;

/// Header bytes before every payload.
pub const HEADER_LEN: usize = 5;

/// What a frame carries. Values below 0x10 go guest -> host, 0x10 and up host -> guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// JSON [`Hello`]: the agent is up and waits for a step.
    Hello = 0x01,
    /// Raw bytes the step wrote to stdout.
    Stdout = 0x02,
    /// Raw bytes the step wrote to stderr.
    Stderr = 0x03,
    /// JSON [`Exit`]: how the step ended. Always the last frame of a run.
    Exit = 0x04,
    /// Part of the tar stream of the workspace after the step.
    WorkspaceOut = 0x05,
    /// End of the workspace tar stream (empty payload).
    WorkspaceOutEnd = 0x06,
    /// UTF-8 message: the agent could not set up or run the step. Last frame of a run.
    Error = 0x07,
    /// JSON [`Run`]: the step to run.
    Run = 0x10,
    /// Part of the tar stream of the workspace before the step.
    WorkspaceIn = 0x11,
    /// End of the workspace tar stream (empty payload).
    WorkspaceInEnd = 0x12,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x02 => Kind::Stdout,
            0x03 => Kind::Stderr,
            0x04 => Kind::Exit,
            0x05 => Kind::WorkspaceOut,
            0x06 => Kind::WorkspaceOutEnd,
            0x07 => Kind::Error,
            0x10 => Kind::Run,
            0x11 => Kind::WorkspaceIn,
            0x12 => Kind::WorkspaceInEnd,
            _ => return None,
        })
    }
}

/// First frame from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Guest uptime when the agent became ready (from `/proc/uptime`), for boot breakdowns.
    pub uptime_ms: u64,
    /// Guest uptime when the agent started as init: the kernel's share of the boot.
    #[serde(default)]
    pub init_ms: u64,
    /// `uname -r` of the guest kernel.
    pub kernel: String,
}

/// The step, as the agent needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// argv of the step's process (shell and script), resolved inside the image root.
    pub argv: Vec<String>,
    /// The whole environment (image env, then the step's); nothing else is inherited.
    pub env: BTreeMap<String, String>,
    /// Absolute path of the workspace inside the guest, and the working directory.
    pub workdir: String,
    pub hostname: String,
    /// Configure the NIC (user-mode NAT) instead of loopback only.
    pub network: bool,
    /// Whether a workspace tar stream follows (`WorkspaceIn` ... `WorkspaceInEnd`).
    pub workspace: bool,
}

/// How the step's process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
    #[error("unknown frame kind 0x{0:02x} (agent and runner versions differ?)")]
    UnknownKind(u8),
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
    #[error("bad {kind:?} message: {source}")]
    Json {
        kind: Kind,
        source: serde_json::Error,
    },
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: Kind, got: Kind },
}

/// The 5-byte header of a frame.
pub fn header(kind: Kind, len: usize) -> Result<[u8; HEADER_LEN], ProtocolError> {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD)
        .ok_or(ProtocolError::TooLarge(u32::MAX))?;
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1..].copy_from_slice(&len.to_le_bytes());
    Ok(h)
}

/// Parse a header: the kind and the payload length.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(Kind, usize), ProtocolError> {
    let kind = Kind::from_byte(h[0]).ok_or(ProtocolError::UnknownKind(h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(len));
    }
    Ok((kind, len as usize))
}

/// Write one frame (header and payload in a single write where possible).
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), ProtocolError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header(kind, payload.len())?);
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Write a JSON message frame.
pub fn write_json<T: Serialize>(
    w: &mut impl Write,
    kind: Kind,
    msg: &T,
) -> Result<(), ProtocolError> {
    let payload = serde_json::to_vec(msg).map_err(|source| ProtocolError::Json { kind, source })?;
    write_frame(w, kind, &payload)
}

/// Read one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<(Kind, Vec<u8>)>, ProtocolError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len) = parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Decode the JSON payload of a frame of kind `kind`.
pub fn decode<T: for<'de> Deserialize<'de>>(
    kind: Kind,
    payload: &[u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(|source| ProtocolError::Json { kind, source })
}

/// A `Write` that cuts what it is given into frames of one kind: lets a tar builder stream
/// straight into the channel.
pub struct FrameWriter<'a, W: Write> {
    inner: &'a mut W,
    kind: Kind,
    buf: Vec<u8>,
}

impl<'a, W: Write> FrameWriter<'a, W> {
    pub fn new(inner: &'a mut W, kind: Kind) -> Self {
        FrameWriter {
            inner,
            kind,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(self.inner, self.kind, &self.buf).map_err(io::Error::other)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for FrameWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

/// A `Read` over the payloads of consecutive frames of kind `data`, ending at a frame of kind
/// `end`: lets a tar reader unpack straight from the channel.
pub struct FrameReader<'a, R: Read> {
    inner: &'a mut R,
    data: Kind,
    end: Kind,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<'a, R: Read> FrameReader<'a, R> {
    pub fn new(inner: &'a mut R, data: Kind, end: Kind) -> Self {
        FrameReader {
            inner,
            data,
            end,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Read through to the end frame, discarding data (after a partial consumer stopped).
    pub fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl<R: Read> Read for FrameReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match read_frame(self.inner).map_err(io::Error::other)? {
                Some((k, payload)) if k == self.data => {
                    self.buf = payload;
                    self.pos = 0;
                }
                Some((k, _)) if k == self.end => self.done = true,
                Some((k, _)) => {
                    return Err(io::Error::other(ProtocolError::Unexpected {
                        expected: self.data,
                        got: k,
                    }))
                }
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Stdout, b"hello").unwrap();
        write_json(
            &mut wire,
            Kind::Exit,
            &Exit {
                code: Some(3),
                signal: None,
            },
        )
        .unwrap();
        assert_eq!(&wire[..5], &[0x02, 5, 0, 0, 0]);
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((Kind::Stdout, b"hello".to_vec()))
        );
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(k, Kind::Exit);
        let e: Exit = decode(k, &p).unwrap();
        assert_eq!(e.code, Some(3));
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn rejects_unknown_kind_oversize_and_truncation() {
        assert!(matches!(
            read_frame(&mut &[0x7f, 0, 0, 0, 0][..]),
            Err(ProtocolError::UnknownKind(0x7f))
        ));
        assert!(matches!(
            read_frame(&mut &[0x02, 0xff, 0xff, 0xff, 0x7f][..]),
            Err(ProtocolError::TooLarge(_))
        ));
        assert!(read_frame(&mut &[0x02, 4, 0, 0, 0, b'a'][..]).is_err());
        assert!(read_frame(&mut &[0x02, 4][..]).is_err());
    }

    #[test]
    fn streams_cut_into_frames_and_reassemble() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        {
            let mut w = FrameWriter::new(&mut wire, Kind::WorkspaceIn);
            w.write_all(&data).unwrap();
            w.flush().unwrap();
        }
        write_frame(&mut wire, Kind::WorkspaceInEnd, &[]).unwrap();
        write_frame(&mut wire, Kind::Stdout, b"after").unwrap();
        let mut r = &wire[..];
        let mut back = Vec::new();
        FrameReader::new(&mut r, Kind::WorkspaceIn, Kind::WorkspaceInEnd)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // The reader stops at the end frame and leaves the next frame alone.
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((Kind::Stdout, b"after".to_vec()))
        );
    }

    #[test]
    fn stream_reader_rejects_interleaved_kinds() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Stdout, b"x").unwrap();
        let mut r = &wire[..];
        let mut out = Vec::new();
        assert!(
            FrameReader::new(&mut r, Kind::WorkspaceIn, Kind::WorkspaceInEnd)
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
