//! bottle's gateway services: everything that parses what a bottle sends.
//!
//! Per bottle, on its gateway address: a DNS server that answers only allowlisted names
//! ([`dns`]); a TLS-intercepting HTTPS proxy on 443, plain HTTP on 80 and an explicit proxy
//! on 3128 ([`listeners`], [`http`]), which apply the egress routes ([`policy`]): host and
//! path allowlists, credential injection, SSRF-safe upstream dialling ([`upstream`]) and DLP
//! scanning of everything that leaves. Leaf certificates come from the bottle's own CA
//! ([`ca`]). Every decision is counted ([`stats`]) and audited ([`audit`]).
//!
//! These are libraries: the agent owns their lifecycle, and they are testable without root.

pub mod audit;
pub mod ca;
pub mod context;
pub mod dns;
pub mod http;
pub mod listeners;
pub mod policy;
pub mod stats;
pub mod tls;
pub mod upstream;

pub use context::{BottleContext, Limits, UpstreamTrust};
pub use listeners::GatewayServices;
pub use policy::{CompiledPolicy, DlpMode, MissingSecrets, PolicyHandle, PolicyOptions};
