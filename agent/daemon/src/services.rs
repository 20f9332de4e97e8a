//! A bottle's userspace services (DNS, egress proxy) and the policy they enforce, as the
//! manager sees them: start, replace the policy, persist it (without secrets), restore.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bottle_api::gitgate::{GitGateSpec, IdentityKey};
use bottle_api::policy::EgressPolicy;
use bottle_api::{DlpMode as ApiDlpMode, DlpSettings};
use bottle_gitgate::{GateContext, GateLimits, GitGate};
use bottle_proxy::audit::AuditLog;
use bottle_proxy::ca::{BottleCa, CaError};
use bottle_proxy::policy::PolicyError;
use bottle_proxy::{
    BottleContext, CompiledPolicy, DlpMode, GatewayServices, Limits, MissingSecrets, PolicyHandle,
    PolicyOptions, UpstreamTrust,
};
use serde::{Deserialize, Serialize};

use crate::state::{self, Metadata, StateError};

pub const POLICY_FILE: &str = "policy.json";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("bottle CA: {0}")]
    Ca(#[from] CaError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Bind(#[from] bottle_proxy::listeners::BindError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Gate(#[from] bottle_gitgate::gate::GateError),
    #[error("{path} is not a valid stored policy: {source}")]
    Stored {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, ServicesError>;

/// What is stored of a policy: everything but secret values (those live in memory only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub egress: EgressPolicy,
    #[serde(default)]
    pub dlp: StoredDlp,
    /// The git-gate block (identity paths as the client gave them; never key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_gate: Option<GitGateSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredDlp {
    #[serde(default)]
    pub mode: ApiDlpMode,
    #[serde(default)]
    pub rules_toml: Option<String>,
}

impl StoredPolicy {
    pub fn new(egress: Option<EgressPolicy>, dlp: Option<&DlpSettings>) -> Self {
        Self {
            egress: egress.unwrap_or_default(),
            dlp: StoredDlp {
                mode: dlp.map(|d| d.mode).unwrap_or_default(),
                rules_toml: dlp.and_then(|d| d.rules_toml.clone()),
            },
            git_gate: None,
        }
    }

    fn options(&self, secret_values: BTreeMap<String, String>) -> PolicyOptions {
        PolicyOptions {
            dlp_mode: match self.dlp.mode {
                ApiDlpMode::Block => DlpMode::Block,
                ApiDlpMode::Warn => DlpMode::Warn,
            },
            dlp_rules_toml: self.dlp.rules_toml.clone(),
            extra_secrets: secret_values,
        }
    }

    /// The policy as the proxy enforces it: routes without a `connect_to` dial the
    /// operator's `upstream_hosts` address for their host, when it names one.
    fn effective(&self, upstream_hosts: &BTreeMap<String, SocketAddr>) -> EgressPolicy {
        let mut egress = self.egress.clone();
        for route in &mut egress.routes {
            if route.connect_to.is_some() {
                continue;
            }
            let Some(addr) = upstream_hosts.get(&route.host.to_ascii_lowercase()) else {
                continue;
            };
            route.connect_to = Some(addr.to_string());
            route
                .pipelock
                .get_or_insert_with(Default::default)
                .ssrf_ip_allowlist
                .push(format!(
                    "{}/{}",
                    addr.ip(),
                    if addr.is_ipv4() { 32 } else { 128 }
                ));
        }
        egress
    }

    /// Compiles with the secrets the user just sent: a missing one is an error.
    pub fn compile(
        &self,
        secrets: &BTreeMap<String, String>,
        secret_values: BTreeMap<String, String>,
        upstream_hosts: &BTreeMap<String, SocketAddr>,
    ) -> Result<CompiledPolicy> {
        Ok(CompiledPolicy::compile_with(
            &self.effective(upstream_hosts),
            secrets,
            &self.options(secret_values),
            MissingSecrets::Error,
        )?)
    }

    /// Compiles after a restart, when no secret is known: routes that need one refuse.
    fn compile_restored(
        &self,
        upstream_hosts: &BTreeMap<String, SocketAddr>,
    ) -> Result<CompiledPolicy> {
        Ok(CompiledPolicy::compile_with(
            &self.effective(upstream_hosts),
            &BTreeMap::new(),
            &self.options(BTreeMap::new()),
            MissingSecrets::Unavailable,
        )?)
    }

    pub fn save(&self, state_dir: &Path, id: &str) -> Result<()> {
        let path = state::bottle_dir(state_dir, id).join(POLICY_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| ServicesError::Stored {
            path: path.display().to_string(),
            source,
        })?;
        Ok(state::write_atomic(&path, &json)?)
    }

    pub fn load(state_dir: &Path, id: &str) -> Result<Self> {
        let path = state::bottle_dir(state_dir, id).join(POLICY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ServicesError::Stored {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Read { path, source }.into()),
        }
    }

    pub fn hosts(&self) -> Vec<String> {
        self.egress.routes.iter().map(|r| r.host.clone()).collect()
    }
}

/// The running services of one bottle; dropping it stops them.
pub struct Services {
    pub ctx: Arc<BottleContext>,
    pub stored: StoredPolicy,
    /// The git-gate, when the bottle has repos.
    pub gate: Option<GitGate>,
    _listeners: GatewayServices,
}

/// Shared settings for starting services.
pub struct ServiceSettings<'a> {
    pub state_dir: &'a Path,
    pub trust: &'a UpstreamTrust,
    pub audit_max_bytes: u64,
    pub limits: Limits,
    pub upstream_hosts: &'a BTreeMap<String, SocketAddr>,
}

impl Services {
    /// Starts the services of a bottle. `fresh` makes a new CA; otherwise the stored one is
    /// loaded.
    pub async fn start(
        meta: &Metadata,
        settings: &ServiceSettings<'_>,
        stored: StoredPolicy,
        policy: Option<CompiledPolicy>,
        fresh: bool,
        gate_keys: &BTreeMap<String, IdentityKey>,
    ) -> Result<Self> {
        let dir = state::bottle_dir(settings.state_dir, &meta.id);
        let ca = Arc::new(if fresh {
            BottleCa::create(&dir, &meta.id)?
        } else {
            BottleCa::load(&dir, &meta.id)?
        });
        // The launch's trust check asks for this leaf first; minting it now, off the launch's
        // path, takes ~0.5 ms out of it. The proxy finds it cached.
        let warm = ca.clone();
        tokio::task::spawn_blocking(move || {
            let _ = warm.leaf(bottle_proxy::tls::SELF_CHECK_HOST);
        });
        let policy = match policy {
            Some(p) => p,
            None => stored.compile_restored(settings.upstream_hosts)?,
        };
        let audit = Arc::new(AuditLog::open(&dir, settings.audit_max_bytes));
        let ctx = BottleContext::new(
            &meta.name,
            &meta.id,
            meta.gateway_address,
            meta.bottle_address,
            PolicyHandle::new(policy),
            ca,
            settings.trust,
            audit,
            settings.limits,
        )?;
        let listeners = GatewayServices::start(ctx.clone()).await?;
        let gate = match stored
            .git_gate
            .as_ref()
            .filter(|g| g.repos.as_ref().is_some_and(|r| !r.is_empty()))
        {
            Some(spec) => Some(start_gate(&ctx, &dir, spec, gate_keys).await?),
            None => None,
        };
        Ok(Self {
            ctx,
            stored,
            gate,
            _listeners: listeners,
        })
    }

    /// Hands the git-gate keys again (after an agent restart).
    pub fn set_gate_keys(&self, keys: &BTreeMap<String, IdentityKey>) -> bool {
        match &self.gate {
            Some(g) => {
                g.ctx.set_keys(keys);
                true
            }
            None => false,
        }
    }

    /// The services' counters, git-gate included.
    pub fn l7(&self) -> bottle_api::L7Counters {
        let mut l7 = self.ctx.stats.snapshot();
        if let Some(g) = &self.gate {
            l7.git = g.ctx.stats.snapshot();
        }
        l7
    }

    /// Swaps in a new policy for new requests; open connections keep theirs.
    pub fn replace_policy(&mut self, stored: StoredPolicy, policy: CompiledPolicy) {
        self.ctx.policy.replace(policy);
        self.stored = stored;
    }
}

/// Opens the mirrors under the bottle's state and starts the gate on `gateway:9420`. The DLP
/// rules are the bottle's current ones (built-ins, its known secrets, its gitleaks rules),
/// read at each push.
async fn start_gate(
    ctx: &Arc<BottleContext>,
    bottle_dir: &Path,
    spec: &GitGateSpec,
    keys: &BTreeMap<String, IdentityKey>,
) -> Result<GitGate> {
    let root = bottle_gitgate::gate::mirrors_dir(bottle_dir);
    let spec2 = spec.clone();
    let repos = tokio::task::spawn_blocking(move || bottle_gitgate::open_mirrors(&root, &spec2))
        .await
        .map_err(|_| {
            ServicesError::Gate(bottle_gitgate::gate::GateError::Mirror {
                repo: "(all)".into(),
                path: bottle_dir.display().to_string(),
                message: "mirror setup panicked".into(),
            })
        })??;
    let policy = ctx.policy.clone();
    let limits = GateLimits::default();
    let gate_ctx = Arc::new(GateContext {
        bottle: ctx.name.clone(),
        gateway: ctx.gateway,
        bottle_addr: ctx.bottle_addr,
        repos,
        rules: Arc::new(move || policy.current().dlp.clone()),
        audit: ctx.audit.clone(),
        stats: Arc::default(),
        conn_limit: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        limits,
    });
    gate_ctx.set_keys(keys);
    Ok(GitGate::start(gate_ctx).await?)
}
