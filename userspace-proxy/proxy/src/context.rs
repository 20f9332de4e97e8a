//! Everything the services of one bottle share.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::ca::BottleCa;
use crate::http::ProxyBody;
use crate::policy::PolicyHandle;
use crate::stats::L7Stats;
use crate::upstream::Connector;

/// Upstream TLS settings shared by every bottle: one config offering h2 and http/1.1, one
/// offering only http/1.1 (WebSocket upgrades need an HTTP/1.1 connection).
#[derive(Clone)]
pub struct UpstreamTrust {
    pub any: Arc<ClientConfig>,
    pub http1: Arc<ClientConfig>,
}

impl UpstreamTrust {
    pub fn new(extra_ca_pems: &[Vec<u8>]) -> Result<Self, crate::upstream::UpstreamError> {
        Ok(Self {
            any: crate::upstream::client_config(extra_ca_pems, &[b"h2", b"http/1.1"])?,
            http1: crate::upstream::client_config(extra_ca_pems, &[b"http/1.1"])?,
        })
    }
}

/// Limits per bottle, so one bottle cannot starve another.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections (all services) open at once.
    pub max_connections: usize,
    /// Idle upstream connections kept per host.
    pub pool_idle_per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            pool_idle_per_host: 32,
        }
    }
}

pub struct BottleContext {
    pub name: String,
    pub id: String,
    pub gateway: Ipv4Addr,
    /// The only peer the services answer: a connection from anywhere else (a host process
    /// trying to borrow the bottle's credentials) is dropped.
    pub bottle_addr: Ipv4Addr,
    pub policy: PolicyHandle,
    pub ca: Arc<BottleCa>,
    pub tls_server: Arc<ServerConfig>,
    pub client: Client<Connector, ProxyBody>,
    pub client_h1: Client<Connector, ProxyBody>,
    pub stats: Arc<L7Stats>,
    pub audit: Arc<AuditLog>,
    pub conn_limit: Arc<Semaphore>,
}

impl std::fmt::Debug for BottleContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BottleContext")
            .field("name", &self.name)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

fn client(connector: Connector, limits: Limits) -> Client<Connector, ProxyBody> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(limits.pool_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

impl BottleContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        id: &str,
        gateway: Ipv4Addr,
        bottle_addr: Ipv4Addr,
        policy: PolicyHandle,
        ca: Arc<BottleCa>,
        trust: &UpstreamTrust,
        audit: Arc<AuditLog>,
        limits: Limits,
    ) -> Result<Arc<Self>, rustls::Error> {
        let tls_server = crate::tls::server_config(policy.clone(), ca.clone())?;
        let connector = |tls: &Arc<ClientConfig>| Connector {
            policy: policy.clone(),
            tls: tls.clone(),
        };
        Ok(Arc::new(Self {
            name: name.to_string(),
            id: id.to_string(),
            gateway,
            bottle_addr,
            client: client(connector(&trust.any), limits),
            client_h1: client(connector(&trust.http1), limits),
            policy,
            ca,
            tls_server,
            stats: Arc::new(L7Stats::default()),
            audit,
            conn_limit: Arc::new(Semaphore::new(limits.max_connections)),
        }))
    }
}
