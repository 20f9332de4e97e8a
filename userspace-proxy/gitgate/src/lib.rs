//! `bottle-gitgate`: the git-gate. Per bottle, per configured repo, a bare mirror served
//! over git's smart HTTP on `gateway:9420`.
//!
//! * **Fetch-through**: every ref advertisement (the first request of a clone, fetch or
//!   push) first fetches the upstream into the mirror with the host-held credential (SSH key
//!   from memory, pinned host key; or an HTTPS token). If that fails the client's request
//!   fails with the reason: the gate never serves stale data.
//! * **Push**: the pack goes into a quarantine repository (borrowing the mirror's objects);
//!   each ref update is checked against the repo's ref policy, then only the commits it
//!   introduces are scanned with the bottle's DLP engine ([`scan`]). Clean updates are pushed
//!   upstream: over SSH the client's own pack is streamed as it is ([`sendpack`], when
//!   [`packcheck`] finds nothing in it that no pushed ref reaches), else libgit2 re-packs;
//!   only what the upstream accepts enters the mirror. Refusals reach the client as
//!   `ng` reasons and `remote:` lines.
//!
//! The pack protocol itself runs in `git upload-pack --stateless-rpc` and
//! `git index-pack`; repository management, fetch, revwalk, diff and the fallback push go
//! through libgit2.

pub mod gate;
pub mod packcheck;
pub mod pktline;
pub mod refpolicy;
pub mod scan;
pub mod sendpack;
pub mod server;
pub mod stats;
pub mod upstream;

pub use gate::{open_mirrors, GateContext, GateLimits, GitGate, RulesFn};
