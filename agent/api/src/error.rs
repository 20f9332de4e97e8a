//! Errors as they travel over the wire: a stable machine code plus a human message.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Never renumber or rename one: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON for this endpoint (includes unknown fields).
    BadRequest,
    /// A bottle name does not match `^[a-z][a-z0-9-]{0,30}$`.
    InvalidName,
    /// Another bottle already has this name.
    NameTaken,
    /// No bottle with this name is visible to the caller.
    NotFound,
    /// The caller may not do this (not root, or not the bottle's owner).
    Forbidden,
    /// The request body exceeds the agent's limit.
    BodyTooLarge,
    /// Every address block in the pool is in use.
    PoolExhausted,
    /// The path or method does not exist in this API version.
    NoSuchEndpoint,
    /// The egress policy or another configuration block is invalid.
    InvalidPolicy,
    /// The bottle is in a state that does not allow this operation.
    Conflict,
    /// The command to run does not exist in the image (or is not executable); the client
    /// exits 127, as a shell does.
    CommandNotFound,
    /// The agent failed while doing something it should be able to do; see its log.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidName | Self::InvalidPolicy | Self::CommandNotFound => {
                400
            }
            Self::Forbidden => 403,
            Self::NotFound | Self::NoSuchEndpoint => 404,
            Self::NameTaken | Self::Conflict => 409,
            Self::BodyTooLarge => 413,
            Self::PoolExhausted => 503,
            Self::Internal => 500,
        }
    }
}

/// The JSON body of every error response: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
