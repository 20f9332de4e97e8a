//! A bottle's egress policy, compiled for the hot path, behind a handle that swaps atomically:
//! each request takes the policy current when it starts, so a replacement applies to new
//! requests and never disturbs one in flight.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use bottle_api::policy::{parse_cidr, EgressPolicy, HostPattern};
use bottle_dlp::{RuleSet, RuleSetBuilder};
use http::HeaderValue;
use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid egress policy: {0}")]
    Invalid(String),
    #[error(
        "auth.token_ref {0:?} has no value: set it in the environment of the `bottle` command"
    )]
    MissingSecret(String),
    #[error("DLP rules: {0}")]
    Dlp(#[from] bottle_dlp::DlpError),
}

pub type Result<T> = std::result::Result<T, PolicyError>;

/// What to do on a DLP hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DlpMode {
    /// Refuse the request (403).
    #[default]
    Block,
    /// Let it through and record the hit.
    Warn,
}

/// The credential a route injects. Its Debug never shows the value.
pub enum Credential {
    Present(HeaderValue),
    /// The value is gone (tokens live only in the agent's memory, and the agent restarted):
    /// requests on this route are refused until the policy is set again.
    Unavailable {
        token_ref: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Present(_) => f.write_str("Credential(<redacted>)"),
            Self::Unavailable { token_ref } => write!(f, "Credential(unavailable: {token_ref})"),
        }
    }
}

/// What to do with a route whose `token_ref` has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSecrets {
    /// Refuse the policy (a user setting it made a mistake).
    Error,
    /// Keep the route but refuse its requests (restored after an agent restart).
    Unavailable,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub pattern: HostPattern,
    /// The route's `host` as written, for logs and stats.
    pub host: String,
    pub path_allowlist: Vec<String>,
    pub credential: Option<Credential>,
    pub passthrough: bool,
    pub ssrf_allow: Vec<IpNet>,
    pub connect_to: Option<SocketAddr>,
}

impl CompiledRoute {
    pub fn path_allowed(&self, path: &str) -> bool {
        self.path_allowlist.is_empty() || self.path_allowlist.iter().any(|p| path.starts_with(p))
    }

    /// Whether an upstream address is acceptable: public, or explicitly allowlisted.
    pub fn upstream_ip_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.ssrf_allow.iter().any(|net| net.contains(&ip))
    }
}

/// Loopback, private, link-local, CGNAT, metadata, multicast, unspecified, documentation and
/// other special-purpose ranges: never an upstream unless a route allowlists them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64
        }
    }
}

/// Settings besides the routes.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    pub dlp_mode: DlpMode,
    /// gitleaks-format TOML rules, already read by the caller.
    pub dlp_rules_toml: Option<String>,
    /// Extra values to find verbatim (host env values marked secret), by name.
    pub extra_secrets: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct CompiledPolicy {
    routes: Vec<CompiledRoute>,
    pub dlp: Arc<RuleSet>,
    pub dlp_mode: DlpMode,
}

impl CompiledPolicy {
    /// Compiles `policy`; `secrets` maps each `token_ref` to its value. A route whose
    /// `token_ref` has no value is an error, so a typo never sends unauthenticated requests.
    pub fn compile(
        policy: &EgressPolicy,
        secrets: &BTreeMap<String, String>,
        options: &PolicyOptions,
    ) -> Result<Self> {
        Self::compile_with(policy, secrets, options, MissingSecrets::Error)
    }

    pub fn compile_with(
        policy: &EgressPolicy,
        secrets: &BTreeMap<String, String>,
        options: &PolicyOptions,
        missing: MissingSecrets,
    ) -> Result<Self> {
        policy.validate().map_err(|errors| {
            PolicyError::Invalid(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let mut dlp = RuleSetBuilder::new().with_builtin_rules();
        let mut routes = Vec::with_capacity(policy.routes.len());
        for route in &policy.routes {
            let pattern = HostPattern::parse(&route.host).map_err(PolicyError::Invalid)?;
            let credential = match &route.auth {
                None => None,
                Some(auth) => match secrets.get(&auth.token_ref) {
                    None if missing == MissingSecrets::Unavailable => {
                        Some(Credential::Unavailable {
                            token_ref: auth.token_ref.clone(),
                        })
                    }
                    None => return Err(PolicyError::MissingSecret(auth.token_ref.clone())),
                    Some(token) => {
                        // Too short to scan for without false hits: still injected, not scanned.
                        match dlp.add_secret(
                            &format!("route-secret:{}", auth.token_ref),
                            token.as_bytes(),
                        ) {
                            Ok(()) | Err(bottle_dlp::DlpError::Secret(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                        let mut value =
                            HeaderValue::from_str(&format!("{} {token}", auth.scheme.as_str()))
                                .map_err(|_| {
                                    PolicyError::Invalid(format!(
                                        "the value of {} cannot be sent in an HTTP header",
                                        auth.token_ref
                                    ))
                                })?;
                        value.set_sensitive(true);
                        Some(Credential::Present(value))
                    }
                },
            };
            let pipelock = route.pipelock.clone().unwrap_or_default();
            let ssrf_allow = pipelock
                .ssrf_ip_allowlist
                .iter()
                .filter_map(|c| parse_cidr(c))
                .filter_map(|(addr, len)| IpNet::new(addr, len).ok())
                .collect();
            routes.push(CompiledRoute {
                pattern,
                host: route.host.to_ascii_lowercase(),
                path_allowlist: route.path_allowlist.clone(),
                credential,
                passthrough: pipelock.tls_passthrough,
                ssrf_allow,
                connect_to: route.connect_to.as_deref().and_then(|c| c.parse().ok()),
            });
        }
        for (name, value) in &options.extra_secrets {
            match dlp.add_secret(&format!("host-secret:{name}"), value.as_bytes()) {
                Ok(()) | Err(bottle_dlp::DlpError::Secret(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(toml) = &options.dlp_rules_toml {
            dlp.add_gitleaks_toml(toml, "dlp rules")?;
        }
        Ok(Self {
            routes,
            dlp: Arc::new(dlp.build()?),
            dlp_mode: options.dlp_mode,
        })
    }

    /// A policy that allows nothing (a bottle created without `--egress`).
    pub fn deny_all() -> Result<Self> {
        Self::compile(
            &EgressPolicy::default(),
            &BTreeMap::new(),
            &PolicyOptions::default(),
        )
    }

    /// The route for `host`: an exact match wins over wildcards; among wildcards the longest
    /// suffix wins.
    pub fn lookup(&self, host: &str) -> Option<&CompiledRoute> {
        let host = host.trim_end_matches('.');
        let mut best: Option<(&CompiledRoute, usize)> = None;
        for route in &self.routes {
            if !route.pattern.matches(host) {
                continue;
            }
            let rank = match &route.pattern {
                HostPattern::Exact(_) => usize::MAX,
                HostPattern::Wildcard(suffix) => suffix.len(),
            };
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((route, rank));
            }
        }
        best.map(|(r, _)| r)
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }
}

/// The current policy of one bottle; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<RwLock<Arc<CompiledPolicy>>>);

impl PolicyHandle {
    pub fn new(policy: CompiledPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    pub fn current(&self) -> Arc<CompiledPolicy> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, policy: CompiledPolicy) {
        let new = Arc::new(policy);
        match self.0.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bottle_api::policy::{AuthScheme, Route, RouteAuth};

    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy {
            routes: vec![
                Route {
                    host: "*.example.com".into(),
                    ..Route::default()
                },
                Route {
                    host: "api.example.com".into(),
                    path_allowlist: vec!["/v1/".into()],
                    auth: Some(RouteAuth {
                        scheme: AuthScheme::Bearer,
                        token_ref: "API_TOKEN".into(),
                    }),
                    ..Route::default()
                },
            ],
        }
    }

    #[test]
    fn lookup_prefers_exact_then_longest_wildcard() {
        let secrets = BTreeMap::from([("API_TOKEN".to_string(), "tok-123456789".to_string())]);
        let p = CompiledPolicy::compile(&policy(), &secrets, &PolicyOptions::default()).unwrap();
        let api = p.lookup("API.example.com.").unwrap();
        assert_eq!(api.host, "api.example.com");
        assert!(api.path_allowed("/v1/models"));
        assert!(!api.path_allowed("/admin"));
        assert!(
            matches!(api.credential.as_ref().unwrap(), Credential::Present(v) if v == "Bearer tok-123456789")
        );
        assert!(!format!("{api:?}").contains("tok-123456789"));
        assert_eq!(p.lookup("cdn.example.com").unwrap().host, "*.example.com");
        assert!(p.lookup("example.com").is_none());
        assert!(p.lookup("example.org").is_none());
        // The route's own token is a DLP secret.
        assert!(!p.dlp.scan(b"leak tok-123456789 here").is_empty());
    }

    #[test]
    fn missing_token_value_is_an_error_or_unavailable_after_restart() {
        let e = CompiledPolicy::compile(&policy(), &BTreeMap::new(), &PolicyOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("API_TOKEN"), "{e}");
        let restored = CompiledPolicy::compile_with(
            &policy(),
            &BTreeMap::new(),
            &PolicyOptions::default(),
            MissingSecrets::Unavailable,
        )
        .unwrap();
        let route = restored.lookup("api.example.com").unwrap();
        assert!(matches!(
            route.credential,
            Some(Credential::Unavailable { .. })
        ));
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
        let mut r = CompiledPolicy::deny_all().unwrap();
        let _ = &mut r;
    }
}
