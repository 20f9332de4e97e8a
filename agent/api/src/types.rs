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
//! | `GET /v1/bottles/{name}/logs`      | `?offset=N`            | workload log bytes  |
//! | `POST /v1/bottles/{name}/stop`     | [`StopRequest`]        | [`BottleInfo`]      |
//! | `GET /v1/kill-switch`              |                        | [`KillSwitch`]      |
//! | `PUT /v1/kill-switch`              | [`KillSwitch`]         | [`KillSwitch`]      |
//! | `PUT /v1/workspaces`               | tar archive            | [`WorkspaceUpload`] |
//! | `POST /v1/run`                     | [`RunRequest`]         | [`RunFrame`] stream |
//! |                                    | (`detach: true`)       | [`BottleInfo`]      |
//! | `POST /v1/bottles/{name}/exec`     | [`ExecRequest`](crate::ExecRequest) | upgraded stream |
//!
//! `POST /v1/run` (not detached) and `exec` are upgraded to a bidirectional stream when the
//! client asks for it (see [`crate::stream`]); `run` without an upgrade streams the output
//! only, with stdin closed.
//!
//! Every request body rejects unknown fields, so a typo is an error rather than a silently
//! ignored setting.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::policy::EgressPolicy;
use crate::provision::{AgentMeta, HomeFile};

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
    /// git-gate repos and the keys to reach them (keys are kept in memory only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_gate: Option<crate::gitgate::GitGateConfig>,
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
    /// The workload launched in the bottle (`bottle run`), if any. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadInfo>,
    /// The manifest agent the bottle runs (`bottle run AGENT`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentMeta>,
}

impl BottleInfo {
    /// One word for `ls`: `frozen`, else the workload's `running` / `exited(CODE)`, else
    /// `ready`.
    pub fn display_state(&self) -> String {
        match (&self.state, &self.workload) {
            (BottleState::Frozen, _) => "frozen".into(),
            (_, Some(w)) => match (w.status, w.exit_code) {
                (WorkloadStatus::Running, _) => "running".into(),
                (WorkloadStatus::Exited, Some(code)) => format!("exited({code})"),
                (WorkloadStatus::Exited, None) => "exited(?)".into(),
            },
            (BottleState::Ready, None) => "ready".into(),
        }
    }
}

/// Whether a bottle's workload still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadStatus {
    Running,
    Exited,
}

/// A bottle's workload, as `ls` and `inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// The image as the run named it.
    pub image: String,
    pub status: WorkloadStatus,
    /// Set once the workload has exited (255 when its status could not be had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// CPU time used so far, in nanoseconds (while it runs; from its cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
    /// Memory in use now, in bytes (while it runs; from its cgroup, page cache included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// `POST /v1/bottles/{name}/stop`: SIGTERM, then SIGKILL after the grace period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds between SIGTERM and SIGKILL; the agent's default (10) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u64>,
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
    /// What the git-gate did.
    #[serde(default)]
    pub git: GitCounters,
}

/// The git-gate's counters for one bottle (ref updates are counted one by one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCounters {
    /// Fetches from the upstream (one before every clone/fetch/push the bottle starts).
    pub fetches: u64,
    pub fetch_failures: u64,
    pub refs_accepted: u64,
    /// Refused ref updates by reason (`secret`, `policy_force`, `upstream`, …).
    pub refs_rejected: BTreeMap<String, u64>,
    /// Bytes the bottle pushed into the gate / the gate sent the bottle.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `GET|PUT /v1/kill-switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitch {
    pub engaged: bool,
}

/// Resource limits of a `bottle run` workload (its cgroup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Maximum tasks (processes and threads); the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// CPUs' worth of time (`1.5` = 150 ms per 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// `POST /v1/run`: create a bottle, run one workload in it, stream its output.
///
/// With the upgrade of [`crate::stream`] the connection carries input too (stdin, and with
/// `tty` a terminal). Without it the response (200) is a stream of [`RunFrame`]s ending with
/// [`RunFrame::Exit`] and stdin is empty. Errors before the workload starts are ordinary JSON
/// errors (`command_not_found` when the command is not in the image).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The bottle to create, exactly as `POST /v1/bottles` takes it.
    #[serde(default)]
    pub create: CreateBottle,
    /// An image name or id in the agent's cache, or (root only) a path to import.
    pub image: String,
    /// The command; empty means the image's entrypoint and cmd.
    #[serde(default)]
    pub args: Vec<String>,
    /// A terminal of this size for the workload (`-t`, streamed runs only); pipes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<crate::stream::TtySize>,
    /// Extra environment. Values travel only in this body and the bundle's `config.json`
    /// (root-only), never on an argv.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: RunLimits,
    /// Remove the bottle once the workload has exited.
    #[serde(default)]
    pub remove: bool,
    /// Answer with the bottle's [`BottleInfo`] once the workload has started instead of
    /// streaming its output; the workload keeps running, its output goes to its log only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
    /// Run in this existing bottle (the caller's, with no workload running) instead of
    /// creating one; `create` must then be empty. Its home is kept from earlier runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottle: Option<String>,
    /// The home's path inside the bottle (kept across runs in one bottle); the image user's
    /// home when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The working directory inside the bottle (made when it lies in the home); the image's
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Files written into the workload's home before it starts (see [`HomeFile`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub home_files: Vec<HomeFile>,
    /// The manifest agent this run starts; recorded in the bottle's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentMeta>,
    /// An upload from `PUT /v1/workspaces` (`--cwd`): it becomes the bottle's writable
    /// `~/workspace`. Only the uploader may use it, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Host paths bound into the container (`--mount`); the caller must own each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<RunMount>,
}

/// `--mount HOST:GUEST[:ro]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMount {
    /// Absolute host path, without symlinks in it.
    pub host: String,
    /// Absolute path inside the container.
    pub guest: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// The largest tar archive `PUT /v1/workspaces` accepts.
pub const MAX_WORKSPACE_BYTES: u64 = 1 << 30;

/// `PUT /v1/workspaces`: the staged upload, to name in [`RunRequest::workspace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceUpload {
    pub id: String,
    /// Entries unpacked (files, directories, symlinks).
    pub entries: u64,
    /// Bytes of file content unpacked.
    pub bytes: u64,
}

/// One unit of the `POST /v1/run` response stream.
///
/// Encoding (binary-safe, so output needs no newline to be forwarded at once):
/// - `1 <len>\n<len bytes>`: workload stdout;
/// - `2 <len>\n<len bytes>`: workload stderr;
/// - `error <message>\n`: the agent could not do something (cleanup, say); informative;
/// - `exit <code>[ <reason>]\n`: the last frame; `reason` is e.g. `out of memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Error(String),
    Exit { code: i32, reason: Option<String> },
}

/// The longest header line a [`RunFrameDecoder`] accepts (an `error`/`exit` line included).
pub const MAX_RUN_FRAME_LINE: usize = 4096;
/// The largest data frame a [`RunFrameDecoder`] accepts.
pub const MAX_RUN_FRAME_DATA: usize = 1 << 20;

impl RunFrame {
    pub fn encode(&self) -> Vec<u8> {
        // Messages are single lines: a newline inside would end the frame early.
        let line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Self::Stdout(data) | Self::Stderr(data) => {
                let stream = if matches!(self, Self::Stdout(_)) {
                    1
                } else {
                    2
                };
                let mut out = format!("{stream} {}\n", data.len()).into_bytes();
                out.extend_from_slice(data);
                out
            }
            Self::Error(message) => {
                let mut m = line(message);
                m.truncate(MAX_RUN_FRAME_LINE - 16);
                format!("error {m}\n").into_bytes()
            }
            Self::Exit { code, reason } => match reason {
                Some(r) => format!("exit {code} {}\n", line(r)).into_bytes(),
                None => format!("exit {code}\n").into_bytes(),
            },
        }
    }
}

/// Incremental decoder of a [`RunFrame`] stream: feed bytes as they arrive with
/// [`push`](Self::push), take complete frames with [`next_frame`](Self::next_frame).
#[derive(Debug, Default)]
pub struct RunFrameDecoder {
    buf: Vec<u8>,
}

impl RunFrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, `Err` on a malformed
    /// stream.
    pub fn next_frame(&mut self) -> Result<Option<RunFrame>, String> {
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_RUN_FRAME_LINE {
                return Err("run stream: header line too long".into());
            }
            return Ok(None);
        };
        if nl > MAX_RUN_FRAME_LINE {
            return Err("run stream: header line too long".into());
        }
        let header = String::from_utf8_lossy(&self.buf[..nl]).into_owned();
        let (kind, rest) = header.split_once(' ').unwrap_or((header.as_str(), ""));
        let frame = match kind {
            "1" | "2" => {
                let len: usize = rest
                    .parse()
                    .map_err(|_| format!("run stream: bad length in {header:?}"))?;
                if len > MAX_RUN_FRAME_DATA {
                    return Err(format!("run stream: frame of {len} bytes is too large"));
                }
                if self.buf.len() < nl + 1 + len {
                    return Ok(None);
                }
                let data = self.buf[nl + 1..nl + 1 + len].to_vec();
                self.buf.drain(..nl + 1 + len);
                return Ok(Some(if kind == "1" {
                    RunFrame::Stdout(data)
                } else {
                    RunFrame::Stderr(data)
                }));
            }
            "error" => RunFrame::Error(rest.to_owned()),
            "exit" => {
                let (code, reason) = match rest.split_once(' ') {
                    Some((c, r)) => (c, Some(r.to_owned())),
                    None => (rest, None),
                };
                let code = code
                    .parse()
                    .map_err(|_| format!("run stream: bad exit code in {header:?}"))?;
                RunFrame::Exit { code, reason }
            }
            _ => return Err(format!("run stream: unknown frame {header:?}")),
        };
        self.buf.drain(..=nl);
        Ok(Some(frame))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod run_frame_tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = vec![
            RunFrame::Stdout(b"hello\nwor".to_vec()),
            RunFrame::Stderr(b"\x00\xffbinary".to_vec()),
            RunFrame::Stdout(Vec::new()),
            RunFrame::Error("cleanup\nfailed".into()),
            RunFrame::Exit {
                code: 137,
                reason: Some("out of memory".into()),
            },
            RunFrame::Exit {
                code: 0,
                reason: None,
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(RunFrame::encode).collect();
        let mut d = RunFrameDecoder::default();
        let mut got = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        let mut want = frames;
        want[3] = RunFrame::Error("cleanup failed".into());
        assert_eq!(got, want);
        let mut d = RunFrameDecoder::default();
        d.push(b"3 1\nx");
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn bottle_info_without_workload_still_parses_and_shows_state() {
        let old = r#"{"id":"0123abcd","name":"a","owner_uid":0,"created_at":1,"launcher":"none",
            "state":"ready","netns":"n","host_interface":"h","bottle_address":"10.0.0.2",
            "gateway_address":"10.0.0.1","prefix_len":30,"allowed_ports":[]}"#;
        let mut info: BottleInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.display_state(), "ready");
        assert!(!serde_json::to_string(&info).unwrap().contains("workload"));
        info.workload = Some(WorkloadInfo {
            image: "busybox".into(),
            status: WorkloadStatus::Running,
            exit_code: None,
            cpu_ns: Some(1),
            memory_bytes: None,
        });
        assert_eq!(info.display_state(), "running");
        info.workload = Some(WorkloadInfo {
            image: "busybox".into(),
            status: WorkloadStatus::Exited,
            exit_code: Some(143),
            cpu_ns: None,
            memory_bytes: None,
        });
        assert_eq!(info.display_state(), "exited(143)");
        info.state = BottleState::Frozen;
        assert_eq!(info.display_state(), "frozen");
        let r: RunRequest = serde_json::from_str(r#"{"image":"x"}"#).unwrap();
        assert!(!r.detach);
        assert!(!serde_json::to_string(&r).unwrap().contains("detach"));
    }

    #[test]
    fn run_request_refuses_unknown_fields() {
        let r: RunRequest = serde_json::from_str(r#"{"image":"x","args":["id"]}"#).unwrap();
        assert!(!r.remove && r.env.is_empty());
        assert!(serde_json::from_str::<RunRequest>(r#"{"image":"x","bogus":1}"#).is_err());
    }
}
