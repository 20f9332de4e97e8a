//! A minimal HTTP/1.1 client for the agent's Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bottle_api::ApiError;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// How long one API call may take before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a workspace upload may take (the agent allows 600 s for the body).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(660);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bottle-agent at {path}: {source}\n(is `sudo bottle-agent` running? set BOTTLE_HOST to use another socket)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to bottle-agent: {0}")]
    Protocol(String),
    #[error("bottle-agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent's own error, shown as it is.
    #[error("{}", .0.message)]
    Api(ApiError),
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Connects, sends one request and returns the response with its body unread.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        upgrade: bool,
    ) -> Result<http::Response<Incoming>, ClientError> {
        self.request_as(method, path, body, "application/json", upgrade)
            .await
    }

    /// [`Self::request`] with a body of another type (a workspace archive).
    async fn request_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &'static str,
        upgrade: bool,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://bottle-agent{path}"))
            .header(http::header::HOST, "bottle-agent");
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        if upgrade {
            builder = builder
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, bottle_api::STREAM_PROTOCOL);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let work = async {
            let resp = self.request(method, path, body, false).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| ClientError::Timeout(CALL_TIMEOUT))?
    }

    /// The agent's JSON error, or the raw answer when it is not one.
    fn error_of(status: StatusCode, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<ApiError>(bytes) {
            Ok(e) => ClientError::Api(e),
            Err(_) => {
                ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(bytes)))
            }
        }
    }

    fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(Self::error_of(status, bytes));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Protocol(format!("unexpected response: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, bytes) = self.call(Method::GET, path, None).await?;
        Self::decode(status, &bytes)
    }

    /// A GET whose answer is text (PEM).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, bytes) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Self::decode::<serde_json::Value>(status, &bytes).map(|_| String::new());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (status, bytes) = self.call(method, path, Some(body)).await?;
        Self::decode(status, &bytes)
    }

    /// POSTs `body` and returns the response body unread when the agent accepted it (a
    /// stream for `POST /v1/run`), or the agent's error. Only the wait for the response head
    /// is bounded (by `head_timeout`): what follows lasts as long as the workload.
    pub async fn stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        head_timeout: Duration,
    ) -> Result<Incoming, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let work = self.request(Method::POST, path, Some(body), false);
        let resp = tokio::time::timeout(head_timeout, work)
            .await
            .map_err(|_| ClientError::Timeout(head_timeout))??;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        Err(Self::error_answer(resp).await)
    }

    /// POSTs `body` asking for the interactive stream (`bottle_api::stream`) and returns the
    /// upgraded connection, or the agent's error. Only the wait for the answer is bounded.
    pub async fn upgrade<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        head_timeout: Duration,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let work = self.request(Method::POST, path, Some(body), true);
        let resp = tokio::time::timeout(head_timeout, work)
            .await
            .map_err(|_| ClientError::Timeout(head_timeout))??;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(Self::error_answer(resp).await);
        }
        tokio::time::timeout(CALL_TIMEOUT, hyper::upgrade::on(resp))
            .await
            .map_err(|_| ClientError::Timeout(CALL_TIMEOUT))?
            .map_err(|e| ClientError::Protocol(format!("upgrading the connection: {e}")))
    }

    /// The error an unwanted answer carries.
    async fn error_answer(resp: http::Response<Incoming>) -> ClientError {
        let status = resp.status();
        let bytes = match tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect()).await {
            Err(_) => return ClientError::Timeout(CALL_TIMEOUT),
            Ok(Err(e)) => return ClientError::Protocol(e.to_string()),
            Ok(Ok(b)) => b.to_bytes(),
        };
        Self::error_of(status, &bytes)
    }

    /// PUTs raw bytes (a workspace archive) and decodes the JSON answer. Bounded by
    /// [`UPLOAD_TIMEOUT`] rather than the usual call timeout.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, ClientError> {
        let work = async {
            let resp = self
                .request_as(Method::PUT, path, Some(bytes), "application/x-tar", false)
                .await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            Self::decode(status, &body)
        };
        tokio::time::timeout(UPLOAD_TIMEOUT, work)
            .await
            .map_err(|_| ClientError::Timeout(UPLOAD_TIMEOUT))?
    }

    /// A call whose success has no body (204).
    pub async fn call_empty(&self, method: Method, path: &str) -> Result<(), ClientError> {
        let (status, bytes) = self.call(method, path, None).await?;
        if status.is_success() {
            return Ok(());
        }
        Self::decode::<serde_json::Value>(status, &bytes).map(|_| ())
    }
}
