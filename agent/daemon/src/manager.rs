//! Owns every bottle: create, remove, freeze, stats, and re-adoption after a restart.
//!
//! One teardown path serves both `rm` and the rollback of a failed create, so a half-made
//! bottle is cleaned up exactly like a whole one. Teardown deletes the veth first: once it is
//! gone no packet can flow, so removing the datapath programs afterwards never opens a gap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bottle_api::{
    validate_name, ApiError, BottleInfo, BottleState, BottleStats, CreateBottle, Drops, ErrorCode,
    KernelCounters, Traffic, WorkloadInfo, WorkloadStatus,
};
use bottle_ebpf::maps::{BottleCounters, DropReason};
use rand::Rng;
use rtnetlink::Handle;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::config::AgentConfig;
use crate::datapath::{AttachMode, BottleDatapath, Datapath, DatapathError};
use crate::ipam::{Block, Ipam, IpamError};
use crate::launch;
use crate::logfile;
use crate::netns::{self, NetnsError};
use crate::network::{self, NetworkError};
use crate::paths::{KILL_SWITCH_FILE, WORKLOAD_LOG};
use crate::services::{ServiceSettings, Services, ServicesError, StoredPolicy};
use crate::spare::{self, Spare, SpareJob};
use crate::state::{self, Metadata, StateError, WorkloadRecord};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    InvalidName(#[from] bottle_api::NameError),
    #[error("a bottle named {0:?} already exists; pick another name or remove it first")]
    NameTaken(String),
    #[error("no bottle named {0:?}")]
    NotFound(String),
    #[error("bottle {0:?} belongs to another user")]
    NotOwner(String),
    #[error("only root may use the kill switch")]
    NotRoot,
    #[error("invalid egress policy: {0}")]
    InvalidPolicy(String),
    #[error("invalid git-gate: {0}")]
    InvalidGitGate(#[from] bottle_api::gitgate::GitGateError),
    #[error("bottle {0:?} has no git-gate repos; create it with --git-gate")]
    NoGitGate(String),
    #[error(transparent)]
    Pool(#[from] IpamError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("could not remove every part of bottle {name:?}: {failures}")]
    Teardown { name: String, failures: String },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Services(#[from] ServicesError),
    #[error("bottle {0:?} has no running services (see the agent log)")]
    NoServices(String),
    #[error("{action} the workload of bottle {name:?}: {source}")]
    Workload {
        action: &'static str,
        name: String,
        #[source]
        source: launch::LaunchError,
    },
}

pub type Result<T> = std::result::Result<T, ManagerError>;

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::InvalidName(_) => ErrorCode::InvalidName,
            ManagerError::NameTaken(_) => ErrorCode::NameTaken,
            ManagerError::NotFound(_) => ErrorCode::NotFound,
            ManagerError::NotOwner(_) | ManagerError::NotRoot => ErrorCode::Forbidden,
            ManagerError::InvalidPolicy(_)
            | ManagerError::InvalidGitGate(_)
            | ManagerError::Services(ServicesError::Policy(_)) => ErrorCode::InvalidPolicy,
            ManagerError::NoGitGate(_) => ErrorCode::Conflict,
            ManagerError::NoServices(_) => ErrorCode::Conflict,
            ManagerError::Pool(IpamError::Exhausted { .. }) => ErrorCode::PoolExhausted,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Who is calling, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
}

impl Caller {
    pub fn is_root(self) -> bool {
        self.uid == 0
    }
}

struct Bottle {
    meta: Metadata,
    ifindex: u32,
    block: Option<Block>,
    /// DNS and egress proxy; `None` only when they failed to start (the bottle then reaches
    /// nothing).
    services: Option<Services>,
}

/// Names of a bottle's kernel objects, derived from its id.
struct Names {
    netns: String,
    host: String,
}

/// A bottle id decided ahead of its create ([`Manager::reserve`]).
#[derive(Debug)]
pub struct Reserved {
    id: String,
    spare: Option<Spare>,
    workload: Option<WorkloadRecord>,
    agent: Option<bottle_api::provision::AgentMeta>,
}

impl Reserved {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The workload about to be launched into the bottle, recorded with its first metadata
    /// (so a successor finds it if this agent dies halfway; see `run`).
    pub fn with_workload(
        mut self,
        record: WorkloadRecord,
        agent: Option<bottle_api::provision::AgentMeta>,
    ) -> Self {
        self.workload = Some(record);
        self.agent = agent;
        self
    }
}

pub struct Manager {
    config: AgentConfig,
    datapath: Datapath,
    netlink: Handle,
    ipam: Ipam,
    bottles: BTreeMap<String, Bottle>,
    trust: bottle_proxy::UpstreamTrust,
    /// Networks ready for the next creates (see `spare`).
    spares: Vec<Spare>,
    /// Ids of spares being made off the lock.
    making: BTreeSet<String>,
    /// Wakes the task that makes spares (`spare::keep`).
    spares_wanted: Arc<Notify>,
    /// Woken whenever a spare being made is finished (ready or failed).
    spare_finished: Arc<Notify>,
    /// Address blocks of removed bottles whose veth the kernel has since deleted (see
    /// [`Drain`]); returned to the pool at the next create.
    freed_blocks: Arc<std::sync::Mutex<Vec<u32>>>,
    /// Drains still waiting for their veth (see [`Drain`]), awaited when the agent stops.
    drains: Vec<tokio::task::JoinHandle<()>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl Manager {
    pub fn new(
        config: AgentConfig,
        datapath: Datapath,
        netlink: Handle,
        trust: bottle_proxy::UpstreamTrust,
    ) -> Self {
        let ipam = Ipam::new(config.pool, config.bottle_prefix_len);
        Self {
            config,
            datapath,
            netlink,
            ipam,
            bottles: BTreeMap::new(),
            trust,
            spares: Vec::new(),
            making: BTreeSet::new(),
            spares_wanted: Arc::new(Notify::new()),
            spare_finished: Arc::new(Notify::new()),
            freed_blocks: Arc::default(),
            drains: Vec::new(),
        }
    }

    /// Waits (bounded by each drain's own timeout) until every removed bottle's veth is gone
    /// and its pins and block released; for a stopping agent, which would otherwise leave a
    /// removed spare's link pins behind.
    pub async fn finish_drains(&mut self) {
        for drain in std::mem::take(&mut self.drains) {
            let _ = drain.await;
        }
    }

    /// An address block; with the pool full but a removed bottle's veth still being deleted
    /// by the kernel, waits (bounded) for that block to come back rather than failing.
    async fn allocate_block(&mut self) -> Result<crate::ipam::Block> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            self.reclaim_blocks();
            match self.ipam.allocate() {
                Ok(block) => return Ok(block),
                Err(e) => {
                    let draining = self.drains.iter().any(|d| !d.is_finished());
                    if !draining || std::time::Instant::now() >= deadline {
                        return Err(e.into());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        }
    }

    /// Wakes the task that makes spare networks (after a create that took one).
    pub fn want_spares(&self) {
        self.spares_wanted.notify_one();
    }

    /// Returns to the pool the blocks whose veths are gone.
    fn reclaim_blocks(&mut self) {
        let freed = std::mem::take(
            &mut *self
                .freed_blocks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for index in freed {
            self.ipam.release(index);
        }
    }

    fn settings(&self) -> ServiceSettings<'_> {
        ServiceSettings {
            state_dir: &self.config.state_dir,
            trust: &self.trust,
            audit_max_bytes: self.config.audit_max_bytes,
            upstream_hosts: &self.config.upstream_hosts,
            limits: bottle_proxy::Limits {
                max_connections: self.config.max_connections_per_bottle,
                ..bottle_proxy::Limits::default()
            },
        }
    }

    fn names(&self, id: &str) -> Names {
        Names {
            netns: format!("{}{id}", self.config.netns_prefix),
            host: format!("{}{id}", self.config.veth_prefix),
        }
    }

    fn info(&self, b: &Bottle) -> BottleInfo {
        let m = &b.meta;
        BottleInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            owner_uid: m.owner_uid,
            created_at: m.created_at,
            launcher: m.launcher.clone(),
            state: if m.frozen {
                BottleState::Frozen
            } else {
                BottleState::Ready
            },
            netns: m.netns.clone(),
            host_interface: m.host_interface.clone(),
            bottle_address: m.bottle_address,
            gateway_address: m.gateway_address,
            prefix_len: m.prefix_len,
            allowed_ports: self
                .config
                .service_ports
                .iter()
                .map(ToString::to_string)
                .collect(),
            egress_hosts: b
                .services
                .as_ref()
                .map(|s| s.stored.hosts())
                .unwrap_or_default(),
            workload: m.workload.as_ref().map(|w| {
                let (cpu_ns, memory_bytes) = if w.exit_code.is_none() {
                    launch::usage(&m.id)
                } else {
                    (None, None)
                };
                WorkloadInfo {
                    image: w.image.clone(),
                    status: if w.exit_code.is_some() {
                        WorkloadStatus::Exited
                    } else {
                        WorkloadStatus::Running
                    },
                    exit_code: w.exit_code,
                    cpu_ns,
                    memory_bytes,
                }
            }),
            agent: m.agent.clone(),
        }
    }

    /// The bottle called `name` if the caller may see it.
    fn visible(&self, caller: Caller, name: &str) -> Result<&Bottle> {
        let bottle = self
            .bottles
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if !caller.is_root() && bottle.meta.owner_uid != caller.uid {
            return Err(ManagerError::NotOwner(name.into()));
        }
        Ok(bottle)
    }

    pub fn list(&self, caller: Caller) -> Vec<BottleInfo> {
        self.bottles
            .values()
            .filter(|b| caller.is_root() || b.meta.owner_uid == caller.uid)
            .map(|b| self.info(b))
            .collect()
    }

    pub fn get(&self, caller: Caller, name: &str) -> Result<BottleInfo> {
        Ok(self.info(self.visible(caller, name)?))
    }

    fn new_id(&self) -> String {
        let mut rng = rand::thread_rng();
        loop {
            let id = format!("{:08x}", rng.gen::<u32>());
            let taken = self.bottles.values().any(|b| b.meta.id == id)
                || self.making.contains(&id)
                || self.spares.iter().any(|s| s.id == id)
                || netns::exists(&self.names(&id).netns)
                || state::bottle_dir(&self.config.state_dir, &id).exists();
            if !taken {
                return id;
            }
        }
    }

    pub async fn create(&mut self, caller: Caller, req: CreateBottle) -> Result<BottleInfo> {
        self.create_with(caller, req, "none").await
    }

    /// `create`, recording which launcher will own the bottle's workload. A launcher about to
    /// start a workload asks for the next spare itself once the workload runs
    /// ([`Self::want_spares`]), so that making it does not compete with the runtime for the
    /// host's CPUs and RTNL.
    pub async fn create_with(
        &mut self,
        caller: Caller,
        req: CreateBottle,
        launcher: &str,
    ) -> Result<BottleInfo> {
        let reserved = self.reserve();
        self.create_reserved(caller, req, launcher, reserved).await
    }

    /// Decides the next bottle's id (a spare's, if one is ready) before `create_reserved`
    /// makes it, so a launcher can prepare the workload's rootfs, which is keyed by the id,
    /// while the network part is made. Nobody else can take the id while the caller holds
    /// the manager; a create that fails puts the spare back.
    pub fn reserve(&mut self) -> Reserved {
        match self.spares.pop() {
            Some(spare) => Reserved {
                id: spare.id.clone(),
                spare: Some(spare),
                workload: None,
                agent: None,
            },
            None => Reserved {
                id: self.new_id(),
                spare: None,
                workload: None,
                agent: None,
            },
        }
    }

    /// `create_with` for an id from [`Self::reserve`].
    pub async fn create_reserved(
        &mut self,
        caller: Caller,
        req: CreateBottle,
        launcher: &str,
        reserved: Reserved,
    ) -> Result<BottleInfo> {
        let Reserved {
            id,
            spare,
            workload,
            agent,
        } = reserved;
        let spare_block = spare.as_ref().map(|s| s.block);
        let (stored, compiled, gate, block) = match self.check_and_allocate(&req, spare_block).await
        {
            Ok(checked) => checked,
            Err(e) => {
                self.spares.extend(spare);
                return Err(e);
            }
        };
        // A spare network's id becomes the bottle's. The next spare is made once this create
        // is done (below): making one holds the kernel's RTNL lock through RCU grace
        // periods, and this bottle's links coming up need that lock too.
        let took_spare = spare.is_some();
        let name = req.name.unwrap_or_else(|| format!("bottle-{id}"));
        if self.bottles.contains_key(&name) {
            // Only a generated name someone already chose by hand gets here. A spare goes
            // back with its block.
            if spare.is_none() {
                self.ipam.release(block.index);
            }
            self.spares.extend(spare);
            return Err(ManagerError::NameTaken(name));
        }
        let names = self.names(&id);
        let meta = Metadata {
            id: id.clone(),
            name: name.clone(),
            owner_uid: caller.uid,
            created_at: now_secs(),
            launcher: launcher.into(),
            netns: names.netns.clone(),
            host_interface: names.host.clone(),
            bottle_address: block.bottle,
            gateway_address: block.gateway,
            prefix_len: block.prefix_len,
            frozen: false,
            workload,
            agent,
        };
        let mut ifindex = None;
        let built = self
            .build(
                &meta,
                &names,
                &mut ifindex,
                spare.map(|s| s.ifindex),
                stored,
                compiled,
                &gate.keys,
            )
            .await;
        if took_spare && launcher == "none" {
            self.spares_wanted.notify_one();
        }
        match built {
            Ok(services) => {
                let bottle = Bottle {
                    meta,
                    ifindex: ifindex.unwrap_or_default(),
                    block: Some(block),
                    services: Some(services),
                };
                let info = self.info(&bottle);
                info!(bottle = %name, id = %id, address = %block.bottle, "created");
                self.bottles.insert(name, bottle);
                Ok(info)
            }
            Err(e) => {
                warn!(bottle = %name, error = %e, "create failed; rolling back");
                let failures = self
                    .teardown(&meta, ifindex, false, Some(block.index))
                    .await;
                if !failures.is_empty() {
                    error!(bottle = %name, failures = %failures.join("; "), "rollback incomplete");
                }
                Err(e)
            }
        }
    }

    /// Everything about a create request that can be refused before anything is made (the
    /// policy is compiled first, so a bad one costs nothing), then its address block: the
    /// spare's, if it took one.
    async fn check_and_allocate(
        &mut self,
        req: &CreateBottle,
        spare_block: Option<Block>,
    ) -> Result<(
        StoredPolicy,
        bottle_proxy::CompiledPolicy,
        bottle_api::gitgate::GitGateConfig,
        Block,
    )> {
        let mut stored = StoredPolicy::new(req.egress.clone(), req.dlp.as_ref());
        let gate = req.git_gate.clone().unwrap_or_default();
        bottle_api::gitgate::validate(&gate)?;
        stored.git_gate = req.git_gate.as_ref().map(|g| g.spec.clone());
        let secret_values = req
            .dlp
            .as_ref()
            .map(|d| d.secret_values.clone())
            .unwrap_or_default();
        let compiled = stored.compile(&req.secrets, secret_values, &self.config.upstream_hosts)?;
        if let Some(name) = &req.name {
            validate_name(name)?;
            if self.bottles.contains_key(name) {
                return Err(ManagerError::NameTaken(name.clone()));
            }
        }
        let block = match spare_block {
            Some(block) => block,
            None => self.allocate_block().await?,
        };
        Ok((stored, compiled, gate, block))
    }

    /// Makes every kernel object of a bottle (or takes them from a spare: `spare` is its
    /// veth's index), then starts its services. `ifindex` is filled in as soon as the veth
    /// exists so a rollback can find the map entries.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each part distinct"
    )]
    async fn build(
        &mut self,
        meta: &Metadata,
        names: &Names,
        ifindex: &mut Option<u32>,
        spare: Option<u32>,
        stored: StoredPolicy,
        compiled: bottle_proxy::CompiledPolicy,
        gate_keys: &BTreeMap<String, bottle_api::gitgate::IdentityKey>,
    ) -> Result<Services> {
        let started = std::time::Instant::now();
        let step = |what: &str| debug!(bottle = %meta.name, step = what, elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), "create");
        match spare {
            Some(index) => {
                // The programs are attached already and drop everything until the policy
                // exists; both ends are still down.
                *ifindex = Some(index);
                let ports = self.config.service_ports.clone();
                self.datapath.install(&BottleDatapath {
                    ifindex: index,
                    bottle: meta.bottle_address,
                    gateway: meta.gateway_address,
                    frozen: meta.frozen,
                    ports: &ports,
                })?;
                step("spare, policy");
            }
            None => {
                let netns_name = names.netns.clone();
                tokio::task::spawn_blocking(move || netns::create(&netns_name)).await??;
                step("netns");
                self.veth_and_datapath(meta, names, ifindex).await?;
                step("veth, datapath");
            }
        }
        // A spare's ends are addressed and up already, its resolv.conf written.
        if spare.is_none() {
            network::configure(
                &self.netlink,
                &names.host,
                ifindex.unwrap_or_default(),
                &names.netns,
                meta.bottle_address,
                meta.gateway_address,
                meta.prefix_len,
            )
            .await?;
            step("inside");
        }
        state::save(&self.config.state_dir, meta)?;
        stored.save(&self.config.state_dir, &meta.id)?;
        step("state");
        let services = Services::start(
            meta,
            &self.settings(),
            stored,
            Some(compiled),
            true,
            gate_keys,
        )
        .await?;
        step("services");
        Ok(services)
    }

    /// The veth pair (peer created inside the namespace), then the policy and programs,
    /// attached before either end is up. `ifindex` is set as soon as the veth exists.
    async fn veth_and_datapath(
        &mut self,
        meta: &Metadata,
        names: &Names,
        ifindex: &mut Option<u32>,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        let index = network::create_veth_into(&self.netlink, &names.host, &names.netns).await?;
        *ifindex = Some(index);
        debug!(bottle = %meta.name, veth_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX), "veth made");
        let ports = self.config.service_ports.clone();
        let dp = BottleDatapath {
            ifindex: index,
            bottle: meta.bottle_address,
            gateway: meta.gateway_address,
            frozen: meta.frozen,
            ports: &ports,
        };
        let t = std::time::Instant::now();
        self.datapath.install(&dp)?;
        let installed = t.elapsed();
        self.datapath.attach(&meta.id, &names.host)?;
        debug!(bottle = %meta.name, install_us = u64::try_from(installed.as_micros()).unwrap_or(u64::MAX), attach_us = u64::try_from((t.elapsed() - installed).as_micros()).unwrap_or(u64::MAX), "datapath attached");
        Ok(())
    }

    /// Wakes the task that makes spares (`spare::keep`).
    pub fn spares_wanted(&self) -> Arc<Notify> {
        self.spares_wanted.clone()
    }

    /// The next spare to make, if fewer than `spare_networks` are ready or being made and
    /// the pool has a block to spare. A spare never takes the last free block: a create that
    /// arrives while the spare is still being made (and cannot take it) makes its own
    /// network with that block, so a spare never makes a create fail on an exhausted pool;
    /// the next create takes the spare's block with the spare.
    pub fn start_spare(&mut self) -> Option<SpareJob> {
        if self.spares.len() + self.making.len() >= self.config.spare_networks {
            return None;
        }
        self.reclaim_blocks();
        if self.ipam.free() < 2 {
            debug!(
                free = self.ipam.free(),
                "no address block to spare for a spare network"
            );
            return None;
        }
        let block = match self.ipam.allocate() {
            Ok(block) => block,
            Err(e) => {
                debug!(error = %e, "no address block for a spare network");
                return None;
            }
        };
        let id = self.new_id();
        self.making.insert(id.clone());
        let names = self.names(&id);
        Some(SpareJob {
            id,
            netns: names.netns,
            host: names.host,
            netlink: self.netlink.clone(),
            attacher: self.datapath.attacher(),
            block,
        })
    }

    /// Keeps a made spare, or removes what a failed one left.
    pub async fn finish_spare(
        &mut self,
        job: &SpareJob,
        ifindex: Option<u32>,
        result: spare::Result<u32>,
    ) {
        self.making.remove(&job.id);
        match result {
            Ok(ifindex) => {
                self.spares.push(Spare {
                    id: job.id.clone(),
                    ifindex,
                    block: job.block,
                });
                debug!(id = %job.id, "spare network ready");
            }
            Err(_) => self.remove_spare(&job.id, ifindex, job.block).await,
        }
        self.spare_finished.notify_waiters();
    }

    /// When no spare is ready but one is being made: what wakes its waiter once it is
    /// finished. A create is better off waiting for it than making its network beside it
    /// (the same work, competing for the CPUs and the kernel's RTNL).
    pub fn spare_coming(&self) -> Option<Arc<Notify>> {
        (self.spares.is_empty() && !self.making.is_empty()).then(|| self.spare_finished.clone())
    }

    /// Makes no more spares; true while one is still being made.
    pub fn stop_spares(&mut self) -> bool {
        self.config.spare_networks = 0;
        !self.making.is_empty()
    }

    /// Removes every ready spare (a stopping agent leaves none behind).
    pub async fn remove_spares(&mut self) {
        for s in std::mem::take(&mut self.spares) {
            self.remove_spare(&s.id, Some(s.ifindex), s.block).await;
        }
    }

    /// Removes a spare; its block returns to the pool once its veth is gone.
    async fn remove_spare(&mut self, id: &str, ifindex: Option<u32>, block: Block) {
        let names = self.names(id);
        let meta = Metadata {
            id: id.into(),
            name: format!("spare-{id}"),
            owner_uid: 0,
            created_at: 0,
            launcher: "none".into(),
            netns: names.netns,
            host_interface: names.host,
            bottle_address: std::net::Ipv4Addr::UNSPECIFIED,
            gateway_address: std::net::Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            frozen: true,
            workload: None,
            agent: None,
        };
        let failures = self
            .teardown(&meta, ifindex, false, Some(block.index))
            .await;
        if !failures.is_empty() {
            error!(id = %id, failures = %failures.join("; "), "spare network removal incomplete");
        }
    }

    /// Removes whatever exists of a bottle, in an order that never lets traffic through
    /// unfiltered. Returns what could not be removed.
    ///
    /// The veth is not deleted here: dropping the namespace lets the kernel delete it, with
    /// the veth pair inside, on its own (as it does for a plain `runc run`'s namespace).
    /// Deleting a veth waits out RCU grace periods in the kernel, 20-50 ms here, which every
    /// `bottle run --rm` would otherwise spend. Until the kernel is done, the host end has no
    /// policy entry (its programs drop everything), nothing lives in the namespace, and its
    /// link pins and address block stay taken; a [`Drain`] releases them when it is gone (and
    /// deletes the namespace's `/etc/netns` entry meanwhile).
    ///
    /// `exited`: the workload's init has been reaped. It ran in its own PID namespace, whose
    /// other processes the kernel kills before the init can be reaped, so no process of the
    /// workload is left: its leftovers (runc's record, cgroup, rootfs mounts) are then removed
    /// while the network goes, not before it.
    async fn teardown(
        &mut self,
        meta: &Metadata,
        ifindex: Option<u32>,
        exited: bool,
        block: Option<u32>,
    ) -> Vec<String> {
        let started = std::time::Instant::now();
        let step = |what: &str| debug!(bottle = %meta.name, step = what, elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), "teardown");
        let mut failures = Vec::new();
        // The workload first (runc delete --force, then its rootfs): it must not outlive its
        // network, and the overlay can only be unmounted once its processes are gone. Run
        // whatever the recorded launcher, so a crash before the metadata said "runc" leaves
        // nothing behind either.
        let (run_dir, id) = (self.config.run_dir.clone(), meta.id.clone());
        let workload = tokio::task::spawn_blocking(move || {
            let mut f = launch::cleanup(&run_dir, &id);
            f.extend(launch::remove_home(&run_dir, &id));
            f
        });
        let mut workload = Some(workload);
        if !exited {
            if let Some(w) = workload.take() {
                match w.await {
                    Ok(f) => failures.extend(f),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            step("workload");
        }
        // From here the programs drop everything on the host end.
        let ports = self.config.service_ports.clone();
        failures.extend(self.datapath.withdraw(ifindex, &ports));
        step("policy");
        // A namespace whose name is already gone (an orphan's) may still be held by
        // something, keeping its veth alive: that veth is deleted here.
        if !netns::exists(&meta.netns) {
            if let Err(e) = network::delete_link(&self.netlink, &meta.host_interface).await {
                failures.push(e.to_string());
            }
            step("veth");
        }
        // The workload's overlay is unmounted before the namespace goes: an unmount waits
        // much longer while the kernel is tearing a namespace down.
        if let Some(w) = workload.take() {
            match w.await {
                Ok(f) => failures.extend(f),
                Err(e) => failures.push(e.to_string()),
            }
            step("workload (exited)");
        }
        let netns_name = meta.netns.clone();
        match tokio::task::spawn_blocking(move || netns::remove(&netns_name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
        step("netns");
        if let Err(e) = crate::workspace::remove(&self.config.state_dir, &meta.id) {
            failures.push(e);
        }
        step("workspace");
        if let Err(e) = state::remove_bottle_dir(&self.config.state_dir, &meta.id) {
            failures.push(e);
        }
        step("state");
        let drain = Drain {
            netlink: self.netlink.clone(),
            netns: meta.netns.clone(),
            host_interface: meta.host_interface.clone(),
            pins: self.datapath.link_dir(&meta.id),
            block,
            freed_blocks: self.freed_blocks.clone(),
        };
        self.drains.retain(|d| !d.is_finished());
        self.drains.push(tokio::spawn(drain.run()));
        failures
    }

    /// `remove`, but only if `name` still is the bottle with this id: a `bottle run --rm`
    /// finishing after its bottle was removed (and the name reused) must not remove the new one.
    pub async fn remove_if_id(&mut self, caller: Caller, name: &str, id: &str) -> Result<()> {
        match self.bottles.get(name) {
            Some(b) if b.meta.id == id => self.remove_with(caller, name, false).await,
            _ => Ok(()),
        }
    }

    /// [`Self::remove_if_id`] for a run whose workload's init has been reaped: its cleanup
    /// overlaps the network's removal (see [`Self::teardown`]).
    pub async fn remove_exited(&mut self, caller: Caller, name: &str, id: &str) -> Result<()> {
        match self.bottles.get(name) {
            Some(b) if b.meta.id == id => self.remove_with(caller, name, true).await,
            _ => Ok(()),
        }
    }

    /// Where workloads' runtime files live (runc root, rootfs, bundles).
    pub fn run_dir(&self) -> std::path::PathBuf {
        self.config.run_dir.clone()
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.clone()
    }

    pub fn image_dir(&self) -> std::path::PathBuf {
        self.config.image_dir()
    }

    pub async fn remove(&mut self, caller: Caller, name: &str) -> Result<()> {
        self.remove_with(caller, name, false).await
    }

    async fn remove_with(&mut self, caller: Caller, name: &str, exited: bool) -> Result<()> {
        self.visible(caller, name)?;
        let Some(mut bottle) = self.bottles.remove(name) else {
            return Err(ManagerError::NotFound(name.into()));
        };
        // Services first: nothing answers the bottle any more.
        let t = std::time::Instant::now();
        drop(bottle.services.take());
        debug!(bottle = %name, services_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX), "services stopped");
        let block = bottle.block.map(|b| b.index);
        let failures = self
            .teardown(&bottle.meta, Some(bottle.ifindex), exited, block)
            .await;
        if failures.is_empty() {
            info!(bottle = %name, id = %bottle.meta.id, "removed");
            Ok(())
        } else {
            let failures = failures.join("; ");
            warn!(bottle = %name, %failures, "removal incomplete");
            Err(ManagerError::Teardown {
                name: name.into(),
                failures,
            })
        }
    }

    /// Freezes or thaws a bottle: its network (the datapath drops everything) and its
    /// workload's processes (the cgroup freezer, through `runc pause`/`resume`). Freezing
    /// stops the network first and thawing starts it last, so a half-done change leaves the
    /// bottle cut off rather than open.
    pub async fn set_frozen(
        &mut self,
        caller: Caller,
        name: &str,
        frozen: bool,
    ) -> Result<BottleInfo> {
        if !frozen {
            self.pause_workload(caller, name, false).await?;
        }
        let info = self.set_network_frozen(caller, name, frozen)?;
        if frozen {
            self.pause_workload(caller, name, true).await?;
        }
        Ok(info)
    }

    async fn pause_workload(&self, caller: Caller, name: &str, paused: bool) -> Result<()> {
        let id = self.visible(caller, name)?.meta.id.clone();
        let run_dir = self.config.run_dir.clone();
        tokio::task::spawn_blocking(move || launch::set_paused(&run_dir, &id, paused))
            .await?
            .map(drop)
            .map_err(|source| ManagerError::Workload {
                action: if paused { "freezing" } else { "thawing" },
                name: name.to_owned(),
                source,
            })
    }

    fn set_network_frozen(
        &mut self,
        caller: Caller,
        name: &str,
        frozen: bool,
    ) -> Result<BottleInfo> {
        self.visible(caller, name)?;
        let ports = self.config.service_ports.clone();
        let Some(bottle) = self.bottles.get_mut(name) else {
            return Err(ManagerError::NotFound(name.into()));
        };
        let mut meta = bottle.meta.clone();
        meta.frozen = frozen;
        // Persist first when unfreezing (a crash then leaves it frozen: fail closed), apply
        // first when freezing.
        let dp = BottleDatapath {
            ifindex: bottle.ifindex,
            bottle: meta.bottle_address,
            gateway: meta.gateway_address,
            frozen,
            ports: &ports,
        };
        if frozen {
            self.datapath.set_policy(&dp)?;
            state::save(&self.config.state_dir, &meta)?;
        } else {
            state::save(&self.config.state_dir, &meta)?;
            self.datapath.set_policy(&dp)?;
        }
        bottle.meta = meta;
        info!(bottle = %name, frozen, "freeze state changed");
        let bottle = self.visible(caller, name)?;
        Ok(self.info(bottle))
    }

    fn stats_of(&self, b: &Bottle) -> BottleStats {
        let c = self.datapath.counters(b.ifindex).unwrap_or_default();
        BottleStats {
            name: b.meta.name.clone(),
            id: b.meta.id.clone(),
            sampled_at_ms: now_millis(),
            kernel: kernel_counters(&c),
            l7: b.services.as_ref().map(Services::l7).unwrap_or_default(),
        }
    }

    /// Replaces a bottle's egress policy: new requests see it at once, open ones finish
    /// under the old one.
    pub fn set_policy(
        &mut self,
        caller: Caller,
        name: &str,
        req: bottle_api::SetPolicy,
    ) -> Result<BottleInfo> {
        self.visible(caller, name)?;
        let mut stored = StoredPolicy::new(Some(req.egress), req.dlp.as_ref());
        let secret_values = req.dlp.map(|d| d.secret_values).unwrap_or_default();
        let compiled = stored.compile(&req.secrets, secret_values, &self.config.upstream_hosts)?;
        let state_dir = self.config.state_dir.clone();
        // The git-gate block is not part of the egress policy; it stays.
        stored.git_gate = self
            .bottles
            .get(name)
            .and_then(|b| b.services.as_ref())
            .and_then(|s| s.stored.git_gate.clone());
        let bottle = self
            .bottles
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        let services = bottle
            .services
            .as_mut()
            .ok_or_else(|| ManagerError::NoServices(name.into()))?;
        stored.save(&state_dir, &bottle.meta.id)?;
        services.replace_policy(stored, compiled);
        info!(bottle = %name, "egress policy replaced");
        let bottle = self.visible(caller, name)?;
        Ok(self.info(bottle))
    }

    /// Supplies the git-gate's keys again (they live in memory only, so an agent restart
    /// loses them). The repos must be the bottle's; their settings are not changed.
    pub fn set_git_gate_keys(
        &mut self,
        caller: Caller,
        name: &str,
        req: bottle_api::gitgate::GitGateConfig,
    ) -> Result<BottleInfo> {
        self.visible(caller, name)?;
        let bottle = self
            .bottles
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        let services = bottle
            .services
            .as_ref()
            .ok_or_else(|| ManagerError::NoServices(name.into()))?;
        let mut check = req.clone();
        check.spec = services.stored.git_gate.clone().unwrap_or_default();
        bottle_api::gitgate::validate(&check)?;
        if !services.set_gate_keys(&req.keys) {
            return Err(ManagerError::NoGitGate(name.into()));
        }
        info!(bottle = %name, repos = req.keys.len(), "git-gate keys supplied");
        let bottle = self.visible(caller, name)?;
        Ok(self.info(bottle))
    }

    /// The bottle's CA certificate (PEM), for launchers and users.
    pub fn ca_pem(&self, caller: Caller, name: &str) -> Result<String> {
        let bottle = self.visible(caller, name)?;
        let services = bottle
            .services
            .as_ref()
            .ok_or_else(|| ManagerError::NoServices(name.into()))?;
        Ok(services.ctx.ca.cert_pem().to_string())
    }

    /// Up to `max` bytes (whole lines) of the audit log from `offset`; returns (bytes, start,
    /// file size). An offset past the end (after a rotation) restarts from 0.
    pub fn audit(
        &self,
        caller: Caller,
        name: &str,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64, u64)> {
        let bottle = self.visible(caller, name)?;
        // Lines are written by a background thread; let it catch up (bounded).
        if let Some(services) = &bottle.services {
            services
                .ctx
                .audit
                .flush(std::time::Duration::from_millis(500));
        }
        let path = state::bottle_dir(&self.config.state_dir, &bottle.meta.id)
            .join(bottle_proxy::audit::AUDIT_FILE);
        Ok(logfile::read_chunk(&path, offset, max, true))
    }

    /// Up to `max` bytes of the workload's log from `offset`, as [`audit`](Self::audit), and
    /// whether the workload still runs.
    pub fn workload_log(
        &self,
        caller: Caller,
        name: &str,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64, u64, bool)> {
        let bottle = self.visible(caller, name)?;
        let running = bottle
            .meta
            .workload
            .as_ref()
            .is_some_and(|w| w.exit_code.is_none());
        let path = self.workload_log_path(&bottle.meta.id);
        let (bytes, start, size) = logfile::read_chunk(&path, offset, max, false);
        Ok((bytes, start, size, running))
    }

    /// Where a bottle's workload output is kept.
    pub fn workload_log_path(&self, id: &str) -> std::path::PathBuf {
        state::bottle_dir(&self.config.state_dir, id).join(WORKLOAD_LOG)
    }

    /// Records the workload of bottle `name` if it still is the bottle with this id (a run
    /// ending after its bottle was removed and the name reused must not touch the new one).
    pub fn record_workload(&mut self, name: &str, id: &str, record: WorkloadRecord) -> Result<()> {
        self.record_workload_with(name, id, record, None)
    }

    /// [`Self::record_workload`], also recording the manifest agent (kept when `None`) and
    /// that runc launched it (a bottle made by `bottle create` says `none` until then).
    pub fn record_workload_with(
        &mut self,
        name: &str,
        id: &str,
        record: WorkloadRecord,
        agent: Option<bottle_api::provision::AgentMeta>,
    ) -> Result<()> {
        let Some(bottle) = self.bottles.get_mut(name).filter(|b| b.meta.id == id) else {
            return Ok(());
        };
        let mut meta = bottle.meta.clone();
        meta.workload = Some(record);
        meta.launcher = "runc".into();
        if agent.is_some() {
            meta.agent = agent;
        }
        state::save(&self.config.state_dir, &meta)?;
        bottle.meta = meta;
        Ok(())
    }

    pub fn stats(&self, caller: Caller, name: &str) -> Result<BottleStats> {
        Ok(self.stats_of(self.visible(caller, name)?))
    }

    pub fn all_stats(&self, caller: Caller) -> Vec<BottleStats> {
        self.bottles
            .values()
            .filter(|b| caller.is_root() || b.meta.owner_uid == caller.uid)
            .map(|b| self.stats_of(b))
            .collect()
    }

    pub fn kill_switch(&self, caller: Caller) -> Result<bool> {
        if !caller.is_root() {
            return Err(ManagerError::NotRoot);
        }
        Ok(self.datapath.kill_switch()?)
    }

    pub fn set_kill_switch(&mut self, caller: Caller, engaged: bool) -> Result<bool> {
        if !caller.is_root() {
            return Err(ManagerError::NotRoot);
        }
        let marker = self.config.state_dir.join(KILL_SWITCH_FILE);
        if engaged {
            self.datapath.set_kill_switch(true)?;
            state::write_atomic(&marker, b"engaged\n")?;
            warn!("kill switch engaged: every bottle drops all traffic");
        } else {
            match std::fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Write {
                        path: marker,
                        source,
                    }
                    .into())
                }
            }
            self.datapath.set_kill_switch(false)?;
            info!("kill switch released");
        }
        Ok(engaged)
    }

    /// Rebuilds the agent's view from state after a start: re-adopts every bottle whose
    /// namespace and veth still exist, tears down the rest, and removes orphans that no state
    /// claims. Each action is logged.
    pub async fn adopt(&mut self) {
        let marker = self.config.state_dir.join(KILL_SWITCH_FILE);
        if marker.exists() {
            if let Err(e) = self.datapath.set_kill_switch(true) {
                error!(error = %e, "cannot re-engage the kill switch");
            }
        }
        let image_dir = self.config.image_dir();
        for dir in state::bottle_dirs(&self.config.state_dir) {
            // The image cache may live in the state directory; it is not a bottle, nor are
            // the workspaces and the trash.
            if dir == image_dir
                || dir == crate::workspace::root(&self.config.state_dir)
                || dir == crate::trash::dir(&self.config.state_dir)
            {
                continue;
            }
            let meta = match state::load(&dir) {
                Ok(meta) => meta,
                Err(e) => {
                    error!(error = %e, "skipping unreadable bottle state; fix or remove it by hand");
                    continue;
                }
            };
            let ifindex = match network::link_index(&self.netlink, &meta.host_interface).await {
                Ok(i) => i,
                Err(e) => {
                    error!(bottle = %meta.name, error = %e, "cannot look up veth; leaving state alone");
                    continue;
                }
            };
            let reason = match (netns::exists(&meta.netns), ifindex) {
                (false, _) => Some("its network namespace is gone"),
                (true, None) => Some("its veth is gone"),
                (true, Some(_)) => None,
            };
            if let Some(reason) = reason {
                warn!(bottle = %meta.name, id = %meta.id, reason, "removing orphaned bottle state");
                let failures = self.teardown(&meta, ifindex, false, None).await;
                if !failures.is_empty() {
                    error!(bottle = %meta.name, failures = %failures.join("; "), "orphan removal incomplete");
                }
                continue;
            }
            let ifindex = ifindex.unwrap_or_default();
            let block = match self.ipam.reserve(meta.bottle_address) {
                Ok(block) => Some(block),
                Err(e) => {
                    warn!(bottle = %meta.name, error = %e, "address outside the configured pool; keeping it");
                    None
                }
            };
            let ports = self.config.service_ports.clone();
            let dp = BottleDatapath {
                ifindex,
                bottle: meta.bottle_address,
                gateway: meta.gateway_address,
                frozen: meta.frozen,
                ports: &ports,
            };
            if let Err(e) = self.datapath.install(&dp) {
                error!(bottle = %meta.name, error = %e, "cannot restore datapath policy");
            }
            if self.datapath.mode() == AttachMode::Clsact {
                // Replaces the filters' programs with this run's (or attaches them if gone).
                if let Err(e) = self.datapath.attach(&meta.id, &meta.host_interface) {
                    error!(bottle = %meta.name, error = %e, "cannot re-attach datapath");
                }
            } else if !self.datapath.links_pinned(&meta.id) {
                warn!(bottle = %meta.name, "datapath links missing; re-attaching");
                let _ = self.datapath.uninstall(&meta.id, None, &[]);
                if let Err(e) = self.datapath.attach(&meta.id, &meta.host_interface) {
                    error!(bottle = %meta.name, error = %e, "cannot re-attach datapath; freezing");
                }
            }
            let services = match StoredPolicy::load(&self.config.state_dir, &meta.id) {
                Ok(stored) => {
                    // git-gate keys were in memory only: the gate fails closed until they
                    // are supplied again.
                    match Services::start(
                        &meta,
                        &self.settings(),
                        stored,
                        None,
                        false,
                        &BTreeMap::new(),
                    )
                    .await
                    {
                        Ok(s) => Some(s),
                        Err(e) => {
                            error!(bottle = %meta.name, error = %e, "cannot restart services; the bottle reaches nothing");
                            None
                        }
                    }
                }
                Err(e) => {
                    error!(bottle = %meta.name, error = %e, "cannot read stored policy; the bottle reaches nothing");
                    None
                }
            };
            info!(bottle = %meta.name, id = %meta.id, "re-adopted");
            self.bottles.insert(
                meta.name.clone(),
                Bottle {
                    meta,
                    ifindex,
                    block,
                    services,
                },
            );
        }
        self.remove_orphans().await;
    }

    async fn remove_orphans(&mut self) {
        let ids: BTreeSet<String> = self.bottles.values().map(|b| b.meta.id.clone()).collect();
        let id_of = |name: &str, prefix: &str| id_from_name(name, prefix);
        for ns in netns::etc_with_prefix(&self.config.netns_prefix) {
            if id_of(&ns, &self.config.netns_prefix).is_some_and(|id| !ids.contains(&id)) {
                let _ = netns::remove_etc(&ns);
            }
        }
        for ns in netns::list_with_prefix(&self.config.netns_prefix) {
            if id_of(&ns, &self.config.netns_prefix).is_some_and(|id| !ids.contains(&id)) {
                warn!(netns = %ns, "removing orphaned network namespace");
                if let Err(e) = netns::remove(&ns) {
                    error!(netns = %ns, error = %e, "cannot remove orphan");
                }
            }
        }
        match network::links_with_prefix(&self.netlink, &self.config.veth_prefix).await {
            Ok(links) => {
                for link in links {
                    if id_of(&link, &self.config.veth_prefix).is_some_and(|id| !ids.contains(&id)) {
                        warn!(veth = %link, "removing orphaned veth");
                        if let Err(e) = network::delete_link(&self.netlink, &link).await {
                            error!(veth = %link, error = %e, "cannot remove orphan");
                        }
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot list links to find orphans"),
        }
        for id in self.datapath.pinned_ids() {
            if !ids.contains(&id) {
                warn!(id = %id, "removing orphaned datapath pins");
                for failure in self.datapath.uninstall(&id, None, &[]) {
                    error!(id = %id, failure = %failure, "cannot remove orphan pins");
                }
            }
        }
        for id in launch::home_ids(&self.config.run_dir) {
            if !ids.contains(&id) {
                warn!(id = %id, "removing orphaned workload home");
                for failure in launch::remove_home(&self.config.run_dir, &id) {
                    error!(id = %id, failure = %failure, "cannot remove orphan home");
                }
            }
        }
        for id in crate::workspace::bottle_ids(&self.config.state_dir) {
            if !ids.contains(&id) {
                warn!(id = %id, "removing orphaned workspace");
                if let Err(e) = crate::workspace::remove(&self.config.state_dir, &id) {
                    error!(id = %id, error = %e, "cannot remove orphan");
                }
            }
        }
        let live: BTreeSet<u32> = self.bottles.values().map(|b| b.ifindex).collect();
        for ifindex in self.datapath.policy_ifindexes() {
            if !live.contains(&ifindex) {
                warn!(ifindex, "removing stale datapath map entries");
                self.datapath.remove_stale(ifindex);
            }
        }
    }

    /// Host ifindexes of this agent's bottles (their routes are ours, not conflicts).
    pub fn own_ifindexes(&self) -> Vec<u32> {
        self.bottles.values().map(|b| b.ifindex).collect()
    }
}

/// The bottle id in one of this agent's names: `<prefix><8 hex>` or, for a veth peer left in
/// the host namespace, `<prefix><8 hex>p`. Anything else is not ours, even if it shares the
/// prefix, and is never touched.
fn id_from_name(name: &str, prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    let id = rest.strip_suffix('p').unwrap_or(rest);
    (id.len() == 8
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| id.to_string())
}

fn kernel_counters(c: &BottleCounters) -> KernelCounters {
    KernelCounters {
        from_bottle: Traffic {
            packets: c.from_bottle_packets,
            bytes: c.from_bottle_bytes,
        },
        to_bottle: Traffic {
            packets: c.to_bottle_packets,
            bytes: c.to_bottle_bytes,
        },
        drops: Drops {
            spoofed: c.drop_count(DropReason::Spoofed),
            not_gateway: c.drop_count(DropReason::NotGateway),
            port_denied: c.drop_count(DropReason::PortDenied),
            ipv6: c.drop_count(DropReason::Ipv6),
            frozen: c.drop_count(DropReason::Frozen),
            kill_switch: c.drop_count(DropReason::KillSwitch),
            other: c.drop_count(DropReason::Other),
        },
    }
}

/// How long the kernel gets to delete a dropped namespace's veth before the agent deletes it
/// itself (something still holds the namespace).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a removed bottle leaves until the kernel has deleted its veth: the host end's link
/// pins (so a tcx program keeps dropping for as long as the interface exists) and its
/// address block (so no new bottle gets the same gateway address on a second interface).
struct Drain {
    netlink: Handle,
    /// Its `/etc/netns/<netns>` goes here too: a file deletion on the host's disk that no
    /// removal needs to wait for (a restarted agent removes what is left, see
    /// `remove_orphans`).
    netns: String,
    host_interface: String,
    pins: std::path::PathBuf,
    block: Option<u32>,
    freed_blocks: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl Drain {
    async fn run(self) {
        let started = std::time::Instant::now();
        let netns_name = self.netns.clone();
        let removed = tokio::task::spawn_blocking(move || netns::remove_etc(&netns_name))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = removed {
            error!(netns = %self.netns, error = %e, "cannot remove /etc/netns entry");
        }
        let mut pause = std::time::Duration::from_millis(2);
        let gone = loop {
            match network::link_index(&self.netlink, &self.host_interface).await {
                Ok(None) => break true,
                Ok(Some(_)) if started.elapsed() < DRAIN_TIMEOUT => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                found => {
                    if let Err(e) = &found {
                        warn!(veth = %self.host_interface, error = %e, "cannot tell whether a removed bottle's veth is gone; deleting it");
                    } else {
                        warn!(veth = %self.host_interface, "a removed bottle's namespace is still held after {DRAIN_TIMEOUT:?}; deleting its veth");
                    }
                    match network::delete_link(&self.netlink, &self.host_interface).await {
                        Ok(()) => break true,
                        Err(e) => {
                            error!(veth = %self.host_interface, error = %e, "cannot delete a removed bottle's veth; its address block stays taken until the agent restarts");
                            break false;
                        }
                    }
                }
            }
        };
        if let Err(e) = crate::datapath::remove_link_pins(&self.pins) {
            error!(veth = %self.host_interface, problem = %e, "removing a bottle's link pins");
        }
        if let (true, Some(index)) = (gone, self.block) {
            self.freed_blocks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(index);
        }
        debug!(veth = %self.host_interface, elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), gone, "veth drained");
    }
}

#[cfg(test)]
mod tests {
    use super::id_from_name;

    #[test]
    fn only_exact_generated_names_are_ours() {
        assert_eq!(
            id_from_name("btl-0a1b2c3d", "btl-").as_deref(),
            Some("0a1b2c3d")
        );
        assert_eq!(
            id_from_name("btl-0a1b2c3dp", "btl-").as_deref(),
            Some("0a1b2c3d")
        );
        assert_eq!(
            id_from_name("bottle-0a1b2c3d", "bottle-").as_deref(),
            Some("0a1b2c3d")
        );
        for foreign in [
            "btl-inet",
            "btl-0a1b2c3",
            "btl-0a1b2c3d4",
            "btl-0A1B2C3D",
            "btl-0a1b2c3dx",
            "bt-0a1b2c3d",
            "btl-0a1b2c3g",
        ] {
            assert_eq!(id_from_name(foreign, "btl-"), None, "{foreign}");
        }
    }
}
