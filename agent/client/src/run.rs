//! `bottle run` and `bottle exec`: argument parsing helpers and the client side of the
//! interactive stream (`bottle_api::stream`): stdin in, output out, `-t` with a raw terminal
//! that follows resizes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use bottle_api::{
    BottleInfo, ErrorCode, ExecRequest, InputFrame, RunFrame, RunFrameDecoder, RunRequest,
    StopRequest, TtySize,
};
use http_body_util::BodyExt;

use crate::http::{Client, ClientError};
use crate::term;

/// How long the agent may take to create the bottle and start the workload (an image import
/// from a path included) before the client gives up.
const START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("the connection to bottle-agent ended before the workload's exit status: {0}")]
    Lost(String),
    #[error("cannot write the workload's output: {0}")]
    Output(#[from] std::io::Error),
}

/// `-e NAME=value`, or `-e NAME` to pass this shell's value (as `docker run -e` does).
pub fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>, RunError> {
    let mut env = BTreeMap::new();
    for item in items {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => {
                let v = std::env::var(item).map_err(|_| {
                    RunError::Usage(format!("-e {item}: ${item} is not set in this environment"))
                })?;
                (item.clone(), v)
            }
        };
        if name.is_empty() {
            return Err(RunError::Usage(format!("-e {item:?}: empty variable name")));
        }
        env.insert(name, value);
    }
    Ok(env)
}

/// `512m`, `2g`, `1048576`, `64MiB`: binary units, case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, RunError> {
    let bad = || RunError::Usage(format!("--memory {s:?}: use a size such as 512m or 2g"));
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// How long reading a JSON answer may take once its head has arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs `body` and decodes the JSON answer, waiting up to `head_timeout` for it.
async fn post_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    body: &impl serde::Serialize,
    head_timeout: Duration,
) -> Result<T, RunError> {
    let body = client.stream(path, body, head_timeout).await?;
    let bytes = tokio::time::timeout(BODY_TIMEOUT, body.collect())
        .await
        .map_err(|_| ClientError::Timeout(BODY_TIMEOUT))?
        .map_err(|e| RunError::Lost(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::Client(ClientError::Protocol(format!("unexpected response: {e}"))))
}

/// `run --detach`: returns the bottle once its workload has started.
pub async fn detached(client: &Client, req: &RunRequest) -> Result<BottleInfo, RunError> {
    post_json(client, "/v1/run", req, START_TIMEOUT).await
}

/// `stop`: returns once the workload has exited (the agent bounds the wait by the grace
/// period plus a fixed time for SIGKILL to take).
pub async fn stop(client: &Client, name: &str, time_secs: u64) -> Result<BottleInfo, RunError> {
    let wait = Duration::from_secs(time_secs.saturating_add(60));
    let req = StopRequest {
        time_secs: Some(time_secs),
    };
    post_json(client, &format!("/v1/bottles/{name}/stop"), &req, wait).await
}

/// How the client's terminal takes part in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// Pipes: stdin is forwarded until its EOF, stdout and stderr kept apart.
    Pipes,
    /// `-t`: the process gets a PTY of our size; our terminal goes raw for the session and
    /// follows resizes.
    Tty,
}

impl Terminal {
    /// `-t` needs a terminal on stdin; returns its size.
    pub fn size(self) -> Result<Option<TtySize>, RunError> {
        match self {
            Self::Pipes => Ok(None),
            Self::Tty => {
                let stdin = std::io::stdin();
                if !std::io::IsTerminal::is_terminal(&stdin) {
                    return Err(RunError::Usage(
                        "-t needs a terminal on stdin (drop -t to pipe input)".into(),
                    ));
                }
                Ok(Some(
                    term::size(stdin.as_fd()).unwrap_or(TtySize { rows: 24, cols: 80 }),
                ))
            }
        }
    }
}

/// `run` in the foreground: streams stdin in and the output out, returns the workload's exit
/// code. A command missing from the image is exit 127, as in a shell.
pub async fn run(client: &Client, req: &RunRequest, terminal: Terminal) -> Result<i32, RunError> {
    interactive(client, "/v1/run", req, terminal).await
}

/// `exec`: the same session with one more process in a running bottle.
pub async fn exec(
    client: &Client,
    name: &str,
    req: &ExecRequest,
    terminal: Terminal,
) -> Result<i32, RunError> {
    interactive(client, &format!("/v1/bottles/{name}/exec"), req, terminal).await
}

async fn interactive(
    client: &Client,
    path: &str,
    req: &impl serde::Serialize,
    terminal: Terminal,
) -> Result<i32, RunError> {
    let upgraded = match client.upgrade(path, req, START_TIMEOUT).await {
        Ok(u) => u,
        Err(ClientError::Api(e)) if e.code == ErrorCode::CommandNotFound => {
            eprintln!("bottle: {}", e.message);
            return Ok(127);
        }
        Err(e) => return Err(e.into()),
    };
    // The signals that end the session are caught before the terminal goes raw, so none
    // can kill us with the terminal left raw.
    let signals = Signals::install()?;
    // Raw only once the process runs, so errors before it print normally; restored when
    // this guard drops, whichever way the session ends.
    let raw = match terminal {
        Terminal::Tty => Some(term::RawMode::enter()?),
        Terminal::Pipes => None,
    };
    let result = session(upgraded, terminal, signals).await;
    drop(raw);
    result
}

/// SIGWINCH, and the signals that end a session (with the shell's `128 + n`).
struct Signals {
    winch: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            winch: signal(SignalKind::window_change())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

/// Bytes of stdin per frame.
const STDIN_CHUNK: usize = 32 * 1024;

async fn session(
    upgraded: hyper::upgrade::Upgraded,
    terminal: Terminal,
    mut signals: Signals,
) -> Result<i32, RunError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    let (tx, mut frames) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    // Writes our input frames; the only writer of the connection.
    let writer = tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        // Keep the connection open for the output: dropping the write half does not close it.
        std::future::pending::<()>().await;
    });
    // Stdin on a plain thread: a blocking read must not keep the process from exiting.
    let stdin_tx = tx.clone();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.blocking_send(InputFrame::Eof.encode());
                        return;
                    }
                    Ok(n) => {
                        let frame = InputFrame::Stdin(buf[..n].to_vec()).encode();
                        if stdin_tx.blocking_send(frame).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    let mut decoder = RunFrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    // A raw terminal does not turn "\n" into "\r\n".
    let nl = if terminal == Terminal::Tty {
        "\r\n"
    } else {
        "\n"
    };
    let result = loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = match n {
                    Ok(0) => break Err(RunError::Lost("end of stream".into())),
                    Err(e) => break Err(RunError::Lost(e.to_string())),
                    Ok(n) => n,
                };
                decoder.push(&buf[..n]);
                let mut exit = None;
                while let Some(f) = decoder.next_frame().map_err(RunError::Lost)? {
                    match f {
                        RunFrame::Stdout(b) => {
                            stdout.write_all(&b)?;
                            stdout.flush()?;
                        }
                        RunFrame::Stderr(b) => {
                            stderr.write_all(&b)?;
                            stderr.flush()?;
                        }
                        RunFrame::Error(m) => write!(stderr, "bottle: {m}{nl}")?,
                        RunFrame::Exit { code, reason } => {
                            if let Some(r) = reason {
                                write!(stderr, "bottle: exited with {code}: {r}{nl}")?;
                            }
                            exit = Some(code);
                            break;
                        }
                    }
                }
                if let Some(code) = exit {
                    break Ok(code);
                }
            }
            _ = signals.winch.recv(), if terminal == Terminal::Tty => {
                if let Some(size) = term::size(std::io::stdin().as_fd()) {
                    let _ = tx.send(InputFrame::Resize(size).encode()).await;
                }
            }
            // Leaving closes the connection, which stops a foreground workload (a detached
            // one is not attached here).
            _ = signals.int.recv() => break Ok(130),
            _ = signals.term.recv() => break Ok(143),
            _ = signals.hup.recv() => break Ok(129),
            _ = signals.quit.recv() => break Ok(131),
        }
    };
    writer.abort();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10kb").unwrap(), 10 << 10);
        assert!(parse_size("").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("-1m").is_err());
    }

    #[test]
    fn env_items() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
        assert!(parse_env(&["=v".into()]).is_err());
        assert!(parse_env(&["BOTTLE_TEST_SURELY_UNSET_VAR".into()]).is_err());
    }
}
