//! Agent configuration (`/etc/bottle/agent.toml`). Every setting has a default, so an absent
//! file means "defaults"; an unknown key is an error so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};

use crate::paths;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// Transport of a gateway service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// IANA protocol number, as the datapath sees it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// A gateway port bottles may reach, written `tcp/443` or `udp/53`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{proto}/{}", self.port)
    }
}

impl FromStr for ServicePort {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("service port {s:?} must look like tcp/443 or udp/53");
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Self { proto, port })
    }
}

impl<'de> Deserialize<'de> for ServicePort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything the agent can be told at start.
/// The OCI runtime `bottle run` drives (looked up in `PATH`). `crun` suits hosts with pure
/// cgroup v2; `runc` (Debian 12's 1.1) is the default and the one tested on cgroup v1/hybrid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    #[default]
    Runc,
    Crun,
}

impl Runtime {
    /// The executable's name, which is also its Debian package's.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Crun => "crun",
        }
    }
}

/// How the datapath's programs are attached to each bottle's host-side veth.
///
/// `clsact` (default): a clsact qdisc with both programs as the first filters (priority 1).
/// `tcx` (kernel 6.6+): pinned tcx links, first in the tcx chain. Both stay attached while
/// the agent is down. tcx costs two RCU grace periods under the kernel's RTNL lock whenever a
/// veth with links goes away (30-50 ms here, during which no other interface can be changed),
/// and more at attach; clsact does not, so it is the default (see decision 0005).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    #[default]
    Clsact,
    Tcx,
}

/// Bound on `spare_networks`: each spare holds a namespace and a veth.
pub const MAX_SPARE_NETWORKS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// API socket (mode 0660, group `socket_group` when it exists).
    pub socket: PathBuf,
    pub socket_group: String,
    /// Persistent per-bottle state: `<state_dir>/<id>/metadata.json`.
    pub state_dir: PathBuf,
    /// Runtime files (lock, per-bottle runtime data).
    pub run_dir: PathBuf,
    /// bpffs directory for maps (`maps/`) and per-bottle links (`<id>/`).
    pub bpf_pin_root: PathBuf,
    /// Address pool, split into one block per bottle.
    pub pool: Ipv4Net,
    /// Prefix length of each bottle's block (30 gives 4 addresses: net, gateway, bottle, bcast).
    pub bottle_prefix_len: u8,
    /// Gateway ports every bottle may reach: the agent's own services.
    pub service_ports: Vec<ServicePort>,
    /// Names: netns `<netns_prefix><id>`, host-side veth `<veth_prefix><id>`. Only names with
    /// these prefixes are ever treated as this agent's orphans.
    pub netns_prefix: String,
    pub veth_prefix: String,
    /// Default tracing filter when `RUST_LOG` is not set.
    pub log: String,
    /// PEM files of CAs the egress proxy and the git-gate (HTTPS upstreams) trust, besides the
    /// system roots.
    pub upstream_ca_files: Vec<PathBuf>,
    /// Where the proxy dials a host whose route has no `connect_to` of its own, e.g.
    /// `"api.anthropic.com" = "10.0.0.5:443"` (split-horizon networks, test upstreams). The
    /// operator's word: the address is also let past that route's SSRF check.
    pub upstream_hosts: BTreeMap<String, SocketAddr>,
    /// Size at which a bottle's audit log rotates (two old generations are kept).
    pub audit_max_bytes: u64,
    /// Connections one bottle may hold open to its services at once.
    pub max_connections_per_bottle: usize,
    /// The image cache `bottle run` uses; `<state_dir>/images` when absent (so
    /// `/var/lib/bottle/images` by default).
    pub image_dir: Option<PathBuf>,
    /// `runc` (default) or `crun`.
    pub runtime: Runtime,
    /// Networks kept ready for the next bottles (netns, veth, both programs attached, no
    /// address and no policy: the datapath drops everything). Making one costs the kernel
    /// RCU grace periods, so a `create` that finds one ready skips them; 0 turns this off.
    pub spare_networks: usize,
    /// `clsact` (default) or `tcx`: see [`TcAttach`].
    pub tc_attach: TcAttach,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(paths::DEFAULT_SOCKET),
            socket_group: paths::DEFAULT_SOCKET_GROUP.into(),
            state_dir: PathBuf::from(paths::DEFAULT_STATE_DIR),
            run_dir: PathBuf::from(paths::DEFAULT_RUN_DIR),
            bpf_pin_root: PathBuf::from(bottle_ebpf::PIN_ROOT),
            pool: Ipv4Net::new(std::net::Ipv4Addr::new(10, 213, 0, 0), 16).unwrap_or_default(),
            bottle_prefix_len: 30,
            service_ports: paths::DEFAULT_SERVICE_PORTS
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            netns_prefix: "bottle-".into(),
            veth_prefix: "btl-".into(),
            log: "info".into(),
            upstream_ca_files: Vec::new(),
            upstream_hosts: BTreeMap::new(),
            audit_max_bytes: 16 * 1024 * 1024,
            max_connections_per_bottle: 512,
            image_dir: None,
            runtime: Runtime::default(),
            spare_networks: 1,
            tc_attach: TcAttach::default(),
        }
    }
}

impl AgentConfig {
    /// Where the image cache lives (see `image_dir`).
    pub fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join(paths::DEFAULT_IMAGE_SUBDIR))
    }

    /// Reads `path`; a missing file at the default location means defaults, a missing file
    /// named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(host) = self
            .upstream_hosts
            .keys()
            .find(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "upstream_hosts: {host:?} must be a host name in lower case"
            ));
        }
        if self.bottle_prefix_len > 30 || self.bottle_prefix_len < self.pool.prefix_len() {
            return Err(format!(
                "bottle_prefix_len {} must be between the pool's prefix ({}) and 30",
                self.bottle_prefix_len,
                self.pool.prefix_len()
            ));
        }
        // veth names are at most 15 bytes; ids are 8 hex digits.
        if self.veth_prefix.len() > 7 || self.veth_prefix.is_empty() {
            return Err("veth_prefix must be 1-7 characters (interface names max 15)".into());
        }
        if self.netns_prefix.is_empty() || self.netns_prefix.contains('/') {
            return Err("netns_prefix must be non-empty and contain no '/'".into());
        }
        if self.spare_networks > MAX_SPARE_NETWORKS {
            return Err(format!(
                "spare_networks {} is more than {MAX_SPARE_NETWORKS}",
                self.spare_networks
            ));
        }
        if self.service_ports.is_empty() {
            return Err("service_ports is empty: bottles could reach nothing".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("agent.toml");
        let c = AgentConfig::load(&missing, false).unwrap();
        assert_eq!(c.pool.to_string(), "10.213.0.0/16");
        assert!(c.service_ports.contains(&"udp/53".parse().unwrap()));
        assert!(AgentConfig::load(&missing, true).is_err());

        std::fs::write(
            &missing,
            "pool = \"10.99.0.0/24\"\nservice_ports = [\"tcp/7000\"]\n",
        )
        .unwrap();
        let c = AgentConfig::load(&missing, true).unwrap();
        assert_eq!(c.pool.to_string(), "10.99.0.0/24");
        assert_eq!(c.service_ports.len(), 1);

        std::fs::write(
            &missing,
            "pool = \"10.99.0.0/24\"\nbottle_prefix_len = 20\n",
        )
        .unwrap();
        let e = AgentConfig::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("bottle_prefix_len 20"), "{e}");

        std::fs::write(&missing, "sockt = \"/x\"\n").unwrap();
        let e = AgentConfig::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("unknown field `sockt`"), "{e}");

        std::fs::write(&missing, "service_ports = [\"sctp/1\"]\n").unwrap();
        let e = AgentConfig::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("must look like tcp/443"), "{e}");

        std::fs::write(&missing, "spare_networks = 17\n").unwrap();
        let e = AgentConfig::load(&missing, true).unwrap_err().to_string();
        assert!(e.contains("spare_networks 17 is more than 16"), "{e}");
    }

    #[test]
    fn one_spare_network_by_default() {
        assert_eq!(AgentConfig::default().spare_networks, 1);
    }
}
