//! Egress policy, in the shape of a bot-bottle manifest's `egress` block so a user can paste
//! one, plus bottle's own `connect_to`.
//!
//! ```yaml
//! routes:
//!   - host: api.example.com          # exact (case-insensitive) or *.example.com
//!     path_allowlist: ["/v1/"]       # optional path prefixes
//!     auth: {scheme: Bearer, token_ref: EXAMPLE_TOKEN}
//!     pipelock: {tls_passthrough: false, ssrf_ip_allowlist: ["10.1.0.0/16"]}
//!     connect_to: "10.1.0.5:443"     # dial this instead of resolving the host
//! ```
//!
//! Validation lives here so the client (manifests, `--egress FILE`) and the agent refuse the
//! same things with the same words.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A bottle's egress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One allowed upstream host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_allowlist: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelock: Option<Pipelock>,
    /// bottle's own: dial this `IP:PORT` instead of resolving `host`; the upstream
    /// certificate is still verified against `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_to: Option<String>,
    /// Reserved by bot-bottle; must be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Credential the proxy injects on this route. The bottle never sees the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    pub scheme: AuthScheme,
    /// Name of the host environment variable that holds the token.
    pub token_ref: String,
}

/// `Authorization` scheme: `Bearer`, or `token` (Gitea's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthScheme {
    Bearer,
    #[serde(rename = "token")]
    Token,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Token => "token",
        }
    }
}

/// bot-bottle's pipelock options, kept under the same key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipelock {
    /// Check SNI, then splice bytes to the upstream without terminating TLS.
    #[serde(default)]
    pub tls_passthrough: bool,
    /// Private or otherwise internal upstream ranges this route may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssrf_ip_allowlist: Vec<String>,
}

/// One problem found in a policy; `route` is the index in `routes` when it applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", route.map(|i| format!("egress.routes[{i}]: ")).unwrap_or_default())]
pub struct PolicyError {
    pub route: Option<usize>,
    pub message: String,
}

/// How a route's `host` matches names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Any name ending in `.suffix`, not the suffix itself.
    Wildcard(String),
}

impl HostPattern {
    /// Parses and validates a route host. Refuses bare `*`, wildcards over a public suffix
    /// (`*.com`, `*.co.uk`), IP literals, ports and anything that is not a DNS name.
    pub fn parse(host: &str) -> Result<Self, String> {
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err("host is empty".into());
        }
        if lower == "*" {
            return Err("host '*' would allow everything; list the hosts the bottle needs".into());
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            validate_dns_name(suffix).map_err(|e| format!("host {host:?}: {e}"))?;
            if is_public_suffix(suffix) {
                return Err(format!(
                    "host {host:?} is a wildcard over the public suffix {suffix:?}; \
                     name a registrable domain, e.g. *.example.{suffix}"
                ));
            }
            return Ok(Self::Wildcard(suffix.to_string()));
        }
        if lower.contains('*') {
            return Err(format!(
                "host {host:?}: '*' is only allowed as the whole first label, as in *.example.com"
            ));
        }
        validate_dns_name(&lower).map_err(|e| format!("host {host:?}: {e}"))?;
        Ok(Self::Exact(lower))
    }

    /// Whether `name` (any case, optional trailing dot) matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            Self::Exact(host) => name.eq_ignore_ascii_case(host),
            Self::Wildcard(suffix) => {
                name.len() > suffix.len() + 1
                    && name.is_char_boundary(name.len() - suffix.len() - 1)
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("name is longer than 253 characters".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address is not a host name; use connect_to to dial an address".into());
    }
    if !name.contains('.') {
        return Err("a single-label name is not allowed; use a fully qualified name".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "label {label:?} is not a valid DNS label (letters, digits, '-', 1-63 chars)"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a public suffix (an ICANN or private entry of the Public Suffix List).
pub fn is_public_suffix(name: &str) -> bool {
    use psl::Psl as _;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match psl::List.suffix(name.as_bytes()) {
        Some(suffix) => suffix.as_bytes() == name.as_bytes(),
        None => false,
    }
}

impl EgressPolicy {
    /// Checks every rule bot-bottle checks, plus bottle's own. Returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let mut err = |message: String| {
                errors.push(PolicyError {
                    route: Some(i),
                    message,
                })
            };
            match HostPattern::parse(&route.host) {
                Ok(pattern) => {
                    let key = match &pattern {
                        HostPattern::Exact(h) => h.clone(),
                        HostPattern::Wildcard(s) => format!("*.{s}"),
                    };
                    if !seen.insert(key.clone()) {
                        err(format!(
                            "host {key:?} appears in more than one route; merge them"
                        ));
                    }
                }
                Err(message) => err(message),
            }
            for prefix in &route.path_allowlist {
                if !prefix.starts_with('/') {
                    err(format!(
                        "path_allowlist entry {prefix:?} must start with '/'"
                    ));
                }
            }
            if let Some(auth) = &route.auth {
                if !is_env_name(&auth.token_ref) {
                    err(format!(
                        "auth.token_ref {:?} must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                        auth.token_ref
                    ));
                }
            }
            if let Some(pipelock) = &route.pipelock {
                if pipelock.tls_passthrough && route.auth.is_some() {
                    err(
                        "tls_passthrough and auth cannot both be set: a passthrough route \
                         never sees the request, so it cannot inject a credential"
                            .into(),
                    );
                }
                if pipelock.tls_passthrough && !route.path_allowlist.is_empty() {
                    err(
                        "tls_passthrough and path_allowlist cannot both be set: a passthrough \
                         route never sees the path"
                            .into(),
                    );
                }
                for cidr in &pipelock.ssrf_ip_allowlist {
                    if parse_cidr(cidr).is_none() {
                        err(format!(
                            "ssrf_ip_allowlist entry {cidr:?} is not a CIDR like 10.0.0.0/8 or 127.0.0.1/32"
                        ));
                    }
                }
            }
            if let Some(target) = &route.connect_to {
                if target.parse::<SocketAddr>().is_err() {
                    err(format!(
                        "connect_to {target:?} must be IP:PORT, e.g. 10.1.0.5:443"
                    ));
                }
            }
            if route.role.as_deref().is_some_and(|r| !r.is_empty()) {
                err("role is reserved and must be empty".into());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Whether `s` is a valid environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses `ADDR/LEN` (IPv4 or IPv6); a bare address means a single host.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<std::net::IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<std::net::IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn route(host: &str) -> Route {
        Route {
            host: host.into(),
            ..Route::default()
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("API.Example.com.").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("A.B.EXAMPLE.COM"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("*.co.uk").is_err());
        assert!(
            HostPattern::parse("*.github.io").is_err(),
            "private PSL entries count"
        );
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("10.0.0.1").is_err());
        assert!(HostPattern::parse("localhost").is_err());
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert!(HostPattern::parse("example.com:443").is_err());
    }

    #[test]
    fn policy_validation_collects_every_error() {
        let mut bad = route("*.example.com");
        bad.auth = Some(RouteAuth {
            scheme: AuthScheme::Bearer,
            token_ref: "BAD-NAME".into(),
        });
        bad.pipelock = Some(Pipelock {
            tls_passthrough: true,
            ssrf_ip_allowlist: vec!["10.0.0.0/33".into()],
        });
        bad.path_allowlist = vec!["v1/".into()];
        bad.connect_to = Some("nowhere".into());
        bad.role = Some("x".into());
        let policy = EgressPolicy {
            routes: vec![route("a.example.com"), route("A.example.com"), bad],
        };
        let errors = policy.validate().unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[0].starts_with("egress.routes[1]: host \"a.example.com\" appears"));
        assert_eq!(
            errors.iter().filter(|e| e.route == Some(2)).count(),
            7,
            "{text:#?}"
        );
    }

    #[test]
    fn good_policy_passes_and_parses_from_json() {
        let policy: EgressPolicy = serde_json::from_str(
            r#"{"routes":[{"host":"api.example.com","path_allowlist":["/v1/"],
                "auth":{"scheme":"token","token_ref":"GITEA_TOKEN"},
                "pipelock":{"ssrf_ip_allowlist":["10.9.0.0/16"]},
                "connect_to":"10.9.0.1:443"}]}"#,
        )
        .unwrap();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(
            policy.routes[0].auth.as_ref().unwrap().scheme,
            AuthScheme::Token
        );
        let unknown =
            serde_json::from_str::<EgressPolicy>(r#"{"routes":[{"host":"a.b","hots":1}]}"#);
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `hots`"));
    }
}
