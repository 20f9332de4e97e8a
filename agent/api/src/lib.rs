//! Wire types shared by the `bottle` client and the `bottle-agent` daemon.
//!
//! This crate is the contract between the two: request and response bodies of the
//! versioned HTTP/JSON API (`/v1/...`), the stable error codes, and the validation rules
//! both sides apply (bottle names, egress policy shape). It carries no Linux-only or async
//! dependency so the client builds on macOS.

pub mod error;
pub mod gitgate;
pub mod images;
pub mod name;
pub mod policy;
pub mod provision;
pub mod stream;
pub mod types;

pub use error::{ApiError, ErrorCode};
pub use name::{validate_name, NameError};
pub use stream::{
    ExecRequest, InputFrame, InputFrameDecoder, TtySize, MAX_INPUT_FRAME_DATA, STREAM_PROTOCOL,
};
pub use types::*;

/// Version prefix of every API path.
pub const API_PREFIX: &str = "/v1";

/// Largest request body the agent accepts, in bytes. Bigger bodies get `body_too_large`.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Environment variable that overrides the agent socket path for the client.
pub const HOST_ENV: &str = "BOTTLE_HOST";

/// Default path of the agent's API socket.
pub const DEFAULT_SOCKET: &str = "/run/bottle/agent.sock";
