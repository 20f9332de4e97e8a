//! The interactive stream of `run` and `exec` (see `bottle_api::stream`): after the HTTP/1.1
//! upgrade, the workload's frames go out as they come while the client's input frames come in.
//!
//! Two halves, so neither direction can block the other: output is written by the serving
//! task; input is read by a second task and handed, through a small bounded channel, to a
//! dedicated thread that writes the process's stdin (a pipe or the PTY master) and may block
//! as long as the process does not read. The client closing its side ends the session, which
//! drops the output receiver: the process's reaper sees that and kills a foreground process.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;

use bottle_api::{InputFrame, InputFrameDecoder, MAX_INPUT_FRAME_DATA};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::run::Msg;

/// Stdin frames buffered for the writer thread.
const STDIN_FRAMES: usize = 16;

/// Where a session's input goes.
#[derive(Default)]
pub struct Input {
    /// The write end of the process's stdin pipe.
    pub stdin: Option<File>,
    /// The PTY master: stdin goes there, and resizes.
    pub console: Option<Arc<File>>,
}

/// A started process's output and input.
pub struct Session {
    pub rx: mpsc::Receiver<Msg>,
    pub input: Input,
}

/// Serves one upgraded connection until the exit frame is out or the client is gone.
pub async fn serve(on_upgrade: OnUpgrade, session: Session) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            // Dropping the session tells the reaper nobody listens.
            debug!(error = %e, "stream upgrade failed");
            return;
        }
    };
    let (rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    let (gone_tx, mut gone) = oneshot::channel::<()>();
    let input = tokio::spawn(read_input(rd, session.input, gone_tx));
    let mut rx = session.rx;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Frame(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Msg::End(b)) => {
                    let _ = wr.write_all(&b).await;
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    break;
                }
                None => break,
            },
            // Fires when the input half ended: the client closed the connection or broke
            // the protocol.
            _ = &mut gone => break,
        }
    }
    input.abort();
}

async fn read_input<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    input: Input,
    _gone: oneshot::Sender<()>,
) {
    let target = match (&input.console, input.stdin) {
        (Some(console), _) => console.try_clone().ok(),
        (None, stdin) => stdin,
    };
    let mut stdin = target.and_then(spawn_writer);
    let mut decoder = InputFrameDecoder::default();
    let mut buf = vec![0u8; MAX_INPUT_FRAME_DATA];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(InputFrame::Stdin(data))) => {
                    if let Some(tx) = &stdin {
                        if tx.send(data).await.is_err() {
                            // The process closed its stdin: the rest is dropped.
                            stdin = None;
                        }
                    }
                }
                // With a terminal the master stays open (it carries the output too).
                Ok(Some(InputFrame::Eof)) => {
                    if input.console.is_none() {
                        stdin = None;
                    }
                }
                Ok(Some(InputFrame::Resize(size))) => {
                    if let Some(console) = &input.console {
                        let set = bottle_launcher::console::set_size(
                            console.as_fd(),
                            size.rows,
                            size.cols,
                        );
                        if let Err(e) = set {
                            debug!(error = %e, "resize");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "client broke the stream protocol; ending the session");
                    return;
                }
            }
        }
    }
}

/// A thread that writes what it receives to `file` until the channel closes (then drops the
/// file, which is the EOF the process sees) or the process stops reading for good.
fn spawn_writer(mut file: File) -> Option<mpsc::Sender<Vec<u8>>> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STDIN_FRAMES);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            while let Some(data) = rx.blocking_recv() {
                if file.write_all(&data).is_err() {
                    return;
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            warn!(error = %e, "cannot start the stdin writer; stdin stays closed");
            None
        }
    }
}
