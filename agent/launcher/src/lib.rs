//! Launching a bottle's workload: an OCI container run by runc inside the bottle's network
//! namespace.
//!
//! - [`bundle`]: the runtime config (`config.json`) from a typed [`BundleSpec`], built with
//!   oci-spec's builders and checked before it is written;
//! - [`rootfs`]: the bottle's overlay over the image cache, the mount points the bundle needs,
//!   the bottle's CA appended to the image's trust bundle (in the upper layer only);
//! - [`runc`]: a small driver for `runc` (or `crun`): every call bounded in time, nothing
//!   secret on any argv, the PTY master received over the console socket.

pub mod bundle;
pub mod console;
pub mod home;
pub mod nsexec;
pub mod rootfs;
pub mod runc;
pub mod seccomp;

pub use bundle::{BindMount, BundleError, BundleSpec, HomeSource, IdMap, Limits};
pub use console::{ConsoleError, ConsoleSocket};
pub use rootfs::{ImageUser, Rootfs, RootfsError, CA_ENV_VARS};
pub use runc::{
    Container, ContainerState, CreateOptions, ExecOptions, ProcessSpec, Runc, RuncError, Stats,
    Status, Stdio3,
};

/// Everything launching can fail with, gathered from the modules' own errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
