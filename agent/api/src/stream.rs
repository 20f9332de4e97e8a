//! The interactive stream of `POST /v1/run` and `POST /v1/bottles/{name}/exec`.
//!
//! The client asks for an HTTP/1.1 upgrade (`Connection: upgrade`, `Upgrade:`
//! [`STREAM_PROTOCOL`]) on a request whose JSON body is the [`RunRequest`](crate::RunRequest)
//! or [`ExecRequest`]. Errors before the process starts are ordinary JSON errors; once it runs,
//! the agent answers `101 Switching Protocols` and the connection carries frames both ways:
//!
//! - agent → client: [`RunFrame`](crate::RunFrame)s (stdout, stderr, error, and the final exit);
//! - client → agent: [`InputFrame`]s (stdin data, stdin EOF, terminal size).
//!
//! Both directions are binary-safe and bounded: a data frame carries at most
//! [`MAX_INPUT_FRAME_DATA`] bytes, a header line at most [`MAX_INPUT_FRAME_LINE`].
//! The client closing the connection means it is gone: a foreground process is then killed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `Upgrade:` token of the interactive stream.
pub const STREAM_PROTOCOL: &str = "bottle-stream/1";
/// The largest stdin frame either side produces or accepts.
pub const MAX_INPUT_FRAME_DATA: usize = 64 * 1024;
/// The longest input header line.
pub const MAX_INPUT_FRAME_LINE: usize = 64;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// `POST /v1/bottles/{name}/exec`: run one more process in a bottle's running workload, in
/// its namespaces, cgroup, user and seccomp profile. Always streamed (upgrade).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command; required.
    pub args: Vec<String>,
    /// Extra environment on top of the workload's. Values travel only in this body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A terminal of this size (`-t`); pipes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// One unit of the client → agent direction.
///
/// Encoding: `0 <len>\n<len bytes>` (stdin data), `eof\n` (stdin closed),
/// `resize <rows> <cols>\n` (terminal size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFrame {
    Stdin(Vec<u8>),
    Eof,
    Resize(TtySize),
}

impl InputFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Stdin(data) => {
                let mut out = format!("0 {}\n", data.len()).into_bytes();
                out.extend_from_slice(data);
                out
            }
            Self::Eof => b"eof\n".to_vec(),
            Self::Resize(s) => format!("resize {} {}\n", s.rows, s.cols).into_bytes(),
        }
    }
}

/// Incremental, bounded decoder of [`InputFrame`]s.
#[derive(Debug, Default)]
pub struct InputFrameDecoder {
    buf: Vec<u8>,
}

impl InputFrameDecoder {
    /// Adds bytes; the caller reads at most a frame's worth before taking frames out, so the
    /// buffer stays bounded by one frame plus one read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, `Err` on a malformed
    /// stream.
    pub fn next_frame(&mut self) -> Result<Option<InputFrame>, String> {
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_INPUT_FRAME_LINE {
                return Err("input stream: header line too long".into());
            }
            return Ok(None);
        };
        if nl > MAX_INPUT_FRAME_LINE {
            return Err("input stream: header line too long".into());
        }
        let header = String::from_utf8_lossy(&self.buf[..nl]).into_owned();
        let mut words = header.split(' ');
        let frame = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("0"), Some(len), None, None) => {
                let len: usize = len
                    .parse()
                    .map_err(|_| format!("input stream: bad length in {header:?}"))?;
                if len > MAX_INPUT_FRAME_DATA {
                    return Err(format!("input stream: frame of {len} bytes is too large"));
                }
                if self.buf.len() < nl + 1 + len {
                    return Ok(None);
                }
                let data = self.buf[nl + 1..nl + 1 + len].to_vec();
                self.buf.drain(..nl + 1 + len);
                return Ok(Some(InputFrame::Stdin(data)));
            }
            (Some("eof"), None, None, None) => InputFrame::Eof,
            (Some("resize"), Some(rows), Some(cols), None) => {
                let bad = || format!("input stream: bad size in {header:?}");
                InputFrame::Resize(TtySize {
                    rows: rows.parse().map_err(|_| bad())?,
                    cols: cols.parse().map_err(|_| bad())?,
                })
            }
            _ => return Err(format!("input stream: unknown frame {header:?}")),
        };
        self.buf.drain(..=nl);
        Ok(Some(frame))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn input_frames_round_trip_in_any_split() {
        let frames = vec![
            InputFrame::Stdin(b"hello\n\x00\xff".to_vec()),
            InputFrame::Resize(TtySize {
                rows: 40,
                cols: 132,
            }),
            InputFrame::Stdin(Vec::new()),
            InputFrame::Eof,
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(InputFrame::encode).collect();
        for split in 0..bytes.len() {
            let mut d = InputFrameDecoder::default();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split at {split}");
        }
    }

    #[test]
    fn input_frames_are_bounded() {
        let mut d = InputFrameDecoder::default();
        d.push(format!("0 {}\n", MAX_INPUT_FRAME_DATA + 1).as_bytes());
        assert!(d.next_frame().is_err());
        let mut d = InputFrameDecoder::default();
        d.push(&[b'x'; MAX_INPUT_FRAME_LINE + 1]);
        assert!(d.next_frame().is_err());
        let mut d = InputFrameDecoder::default();
        d.push(b"resize 1 x\n");
        assert!(d.next_frame().is_err());
        let mut d = InputFrameDecoder::default();
        d.push(b"signal 9\n");
        assert!(d.next_frame().is_err());
    }
}
