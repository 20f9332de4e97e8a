//! Every runtime path and file mode the agent uses, in one place.

pub const DEFAULT_CONFIG: &str = "/etc/bottle/agent.toml";
pub const DEFAULT_SOCKET: &str = bottle_api::DEFAULT_SOCKET;
pub const DEFAULT_SOCKET_GROUP: &str = "bottle";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bottle";
pub const DEFAULT_RUN_DIR: &str = "/run/bottle";

/// `ip netns` looks for named namespaces here.
pub const NETNS_DIR: &str = "/run/netns";
/// Per-namespace files `ip netns exec` bind-mounts (we write `resolv.conf`).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// The agent's own services on each bottle's gateway: DNS, HTTP, HTTPS, explicit proxy,
/// git-gate, supervise.
pub const DEFAULT_SERVICE_PORTS: &[&str] = &[
    "udp/53", "tcp/53", "tcp/80", "tcp/443", "tcp/3128", "tcp/9420", "tcp/9100",
];

/// The explicit (CONNECT) proxy on each bottle's gateway.
pub const PROXY_PORT: u16 = 3128;

/// API socket: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// State and runtime directories: root only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Files in state: root only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// File names inside a bottle's state directory and the pin root.
pub const METADATA_FILE: &str = "metadata.json";
/// The workload's stdout and stderr, in the bottle's state directory (0600, size-capped).
pub const WORKLOAD_LOG: &str = "workload.log";
pub const KILL_SWITCH_FILE: &str = "kill-switch";
pub const LOCK_FILE: &str = "agent.lock";
pub const MAPS_PIN_DIR: &str = "maps";
pub const FROM_BOTTLE_LINK: &str = "from_bottle_link";
pub const TO_BOTTLE_LINK: &str = "to_bottle_link";

/// Under `run_dir`: runc's state root (0700; container id = bottle id), the bottles' overlay
/// rootfs directories and their bundles. `run_dir` itself and `rootfs/` are 0711: runc's init
/// runs as the mapped container root and must traverse to the rootfs (nothing is listable).
pub const RUNC_DIR: &str = "runc";
pub const ROOTFS_DIR: &str = "rootfs";
pub const BUNDLES_DIR: &str = "bundles";
/// Workload homes (`homes/<id>`), kept across runs in one bottle, removed with the bottle.
pub const HOMES_DIR: &str = "homes";
/// Under `run_dir` (0700): removed bottles' directories waiting to be deleted (see `trash`).
pub const TRASH_DIR: &str = "trash";
/// Under `run_dir`: each bottle's pinned `--mount` sources (`mounts/<id>/<n>`, 0711).
pub const MOUNTS_DIR: &str = "mounts";
/// Under `state_dir`: bottles' workspaces (`workspaces/<id>/`, owned by the workload's mapped
/// ids) and pending uploads (`workspaces/uploads/`, root-only). `state_dir` and `workspaces/`
/// are 0711 so runc's init can reach a workspace (see `workspace`).
pub const WORKSPACES_DIR: &str = "workspaces";
pub const UPLOADS_DIR: &str = "uploads";
/// Mode of `run_dir`: traversable, not listable (see above).
pub const RUN_DIR_MODE: u32 = 0o711;
/// The runtime (looked up in PATH).
pub const RUNC_BINARY: &str = "runc";
/// Parent cgroup of every workload: `/bottle/<id>`.
pub const CGROUP_PARENT: &str = "/bottle";
/// Image cache under `state_dir` when `image_dir` is not configured.
pub const DEFAULT_IMAGE_SUBDIR: &str = "images";
