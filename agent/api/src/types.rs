//! Request and response bodies of the `/v1` API.
//!
//! Endpoints (all JSON, on the agent's Unix socket):
//!
//! | method & path                      | body in                | body out            |
//! |------------------------------------|------------------------|---------------------|
//! | `GET /v1/version`                  |                        | [`VersionInfo`]     |
//! | `GET /v1/bottles`                  |                        | `[BottleInfo]`      |
//! | `POST /v1/bottles`                 | [`CreateBottle`]       | [`BottleInfo`]      |
//! | `GET /v1/bottles/{name}`           |                        | [`BottleInfo`]      |
//! | `DELETE /v1/bottles/{name}`        |                        | `204`               |
//! | `POST /v1/bottles/{name}/freeze`   |                        | [`BottleInfo`]      |
//! | `POST /v1/bottles/{name}/unfreeze` |                        | [`BottleInfo`]      |
//! | `GET /v1/bottles/{name}/stats`     |                        | [`BottleStats`]     |
//! | `GET /v1/stats`                    |                        | `[BottleStats]`     |
//! | `PUT /v1/bottles/{name}/policy`    | [`SetPolicy`]          | [`BottleInfo`]      |
//! | `GET /v1/bottles/{name}/ca`        |                        | CA certificate, PEM |
//! | `GET /v1/bottles/{name}/audit`     | `?offset=N`            | audit log bytes     |
//! | `GET /v1/kill-switch`              |                        | [`KillSwitch`]      |
//! | `PUT /v1/kill-switch`              | [`KillSwitch`]         | [`KillSwitch`]      |
//!
//! Every request body rejects unknown fields, so a typo is an error rather than a silently
//! ignored setting.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::policy::EgressPolicy;

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub api: String,
    pub agent_version: String,
}

/// `POST /v1/bottles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBottle {
    /// Bottle name; the agent picks one (`bottle-<id>`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Egress policy in the shape of a bot-bottle manifest's `egress` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
    /// Values of the host environment variables the policy's `token_ref`s name, read by the
    /// client from its environment. The agent keeps them in memory only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// DLP settings for this bottle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlp: Option<DlpSettings>,
}

/// `PUT /v1/bottles/{name}/policy`: replaces the egress policy atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    pub egress: EgressPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlp: Option<DlpSettings>,
}

/// DLP behaviour of one bottle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpSettings {
    /// `block` (default): refuse a request with a hit; `warn`: let it through, log the hit.
    #[serde(default)]
    pub mode: DlpMode,
    /// gitleaks-format TOML rules (the file's content, read by the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_toml: Option<String>,
    /// Host values to find verbatim (and encoded) in anything that leaves, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_values: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlpMode {
    #[default]
    Block,
    Warn,
}

/// Lifecycle state of a bottle as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BottleState {
    /// Network is up and enforced; no workload is attached yet.
    Ready,
    /// All traffic is dropped by the datapath until unfrozen.
    Frozen,
}

/// One bottle, as `ls` and `inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BottleInfo {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Which launcher owns the workload (`none` until something is launched).
    pub launcher: String,
    pub state: BottleState,
    pub netns: String,
    pub host_interface: String,
    pub bottle_address: Ipv4Addr,
    pub gateway_address: Ipv4Addr,
    pub prefix_len: u8,
    /// Gateway ports the bottle may reach, as `proto/port` (e.g. `tcp/443`).
    pub allowed_ports: Vec<String>,
    /// Hosts of the egress policy's routes (no credentials).
    #[serde(default)]
    pub egress_hosts: Vec<String>,
}

/// Packet and byte totals for one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Packets the datapath dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Source address is not the bottle's own.
    pub spoofed: u64,
    /// Destination (from the bottle) or source (towards it) is not the gateway.
    pub not_gateway: u64,
    /// To the gateway, but on a port the bottle's policy does not allow.
    pub port_denied: u64,
    /// Any IPv6 packet.
    pub ipv6: u64,
    /// The bottle is frozen.
    pub frozen: u64,
    /// The host-wide kill switch is engaged.
    pub kill_switch: u64,
    /// Anything else: unknown protocols, ICMP other than echo, fragments, malformed headers.
    pub other: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.spoofed
            + self.not_gateway
            + self.port_denied
            + self.ipv6
            + self.frozen
            + self.kill_switch
            + self.other
    }

    /// `(reason, count)` pairs in a stable order, for display.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("spoofed", self.spoofed),
            ("not_gateway", self.not_gateway),
            ("port_denied", self.port_denied),
            ("ipv6", self.ipv6),
            ("frozen", self.frozen),
            ("kill_switch", self.kill_switch),
            ("other", self.other),
        ]
    }
}

/// What the kernel datapath counted for one bottle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// Packets the bottle sent that the datapath let through.
    pub from_bottle: Traffic,
    /// Packets delivered to the bottle.
    pub to_bottle: Traffic,
    pub drops: Drops,
}

/// `GET /v1/bottles/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BottleStats {
    pub name: String,
    pub id: String,
    /// Milliseconds since the Unix epoch when the counters were read, for rate computation.
    pub sampled_at_ms: u64,
    pub kernel: KernelCounters,
    /// What the agent's services counted (proxy, DNS, DLP).
    #[serde(default)]
    pub l7: L7Counters,
}

/// Requests and bytes to one upstream host with one decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTraffic {
    pub host: String,
    /// `allowed`, `denied`, `dlp_blocked`, `dlp_warned`, `error`.
    pub decision: String,
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What the bottle's DNS server answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounters {
    pub queries: u64,
    /// Allowlisted names (answered with the gateway).
    pub answered: u64,
    /// Everything else (NXDOMAIN).
    pub refused: u64,
}

/// The services' counters for one bottle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Counters {
    pub http: Vec<HostTraffic>,
    pub dns: DnsCounters,
    /// DLP hits by rule id.
    pub dlp_hits: BTreeMap<String, u64>,
}

/// `GET|PUT /v1/kill-switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitch {
    pub engaged: bool,
}
