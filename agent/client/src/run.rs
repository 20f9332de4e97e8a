//! `bottle run`: argument parsing helpers and the client side of the `POST /v1/run` stream.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use bottle_api::{BottleInfo, RunFrame, RunFrameDecoder, RunRequest, StopRequest};
use http_body_util::BodyExt;

use crate::http::{Client, ClientError};

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

/// Sends the request, copies the workload's output to ours as it arrives, and returns the
/// workload's exit code.
pub async fn run(client: &Client, req: &RunRequest) -> Result<i32, RunError> {
    let mut body = client.stream("/v1/run", req, START_TIMEOUT).await?;
    let mut decoder = RunFrameDecoder::default();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    loop {
        let Some(frame) = body.frame().await else {
            return Err(RunError::Lost("end of stream".into()));
        };
        let frame = frame.map_err(|e| RunError::Lost(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
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
                RunFrame::Error(m) => writeln!(stderr, "bottle: {m}")?,
                RunFrame::Exit { code, reason } => {
                    if let Some(r) = reason {
                        writeln!(stderr, "bottle: workload exited with {code}: {r}")?;
                    }
                    return Ok(code);
                }
            }
        }
    }
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
