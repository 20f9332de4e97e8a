//! The eBPF datapath as the agent sees it: load once, attach per bottle, edit maps.
//!
//! Programs are loaded once per agent run; maps are pinned by name under
//! `<pin_root>/maps`, so a new run re-opens the same maps and every counter and policy entry
//! survives a crash. Programs attach to each bottle's host-side veth either as clsact filters
//! (the default), which live with the interface, or as tcx links pinned under
//! `<pin_root>/<id>/`; both stay attached when the agent dies, so a bottle stays enforced
//! without us.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{ServicePort, TcAttach};
use crate::paths::{FROM_BOTTLE_LINK, MAPS_PIN_DIR, TO_BOTTLE_LINK};
use aya::maps::{Array, HashMap, MapData, PerCpuHashMap};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{
    self, NlOptions, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError,
};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use bottle_ebpf::maps::{
    BottleCounters, BottleGlobal, BottlePolicy, BottlePortKey, FLAG_FROZEN, GLOBAL_MAP, POLICY_MAP,
    PORTS_MAP, STATS_MAP,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the {object} eBPF object: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF object is missing {0}")]
    Missing(&'static str),
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot pin link at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("tc_attach = \"tcx\" needs Linux 6.6 or later; this kernel has no tcx: use tc_attach = \"clsact\"")]
    NoTcx,
    #[error("cannot add clsact qdisc to {ifname}: {source}")]
    Clsact {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, DatapathError>;

/// `BPF_NOEXIST` map update flag: create only.
const BPF_NOEXIST: u64 = 1;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        source: Box::new(source),
    }
}

fn prog_err(program: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        program,
        source: Box::new(source),
    }
}

/// How programs get attached (the agent config's `tc_attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links (kernel >= 6.6): pinned, first in the chain.
    Tcx,
    /// clsact qdisc + direct-action filters at priority 1, handle 1; live with the interface.
    Clsact,
}

/// Where our clsact filters sit: first (lowest priority number), at a fixed handle, so a
/// restarted agent finds and replaces its own filter instead of adding a second one.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: u32 = 1;

/// What one bottle's datapath entries hold.
#[derive(Debug, Clone)]
pub struct BottleDatapath<'a> {
    pub ifindex: u32,
    pub bottle: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub frozen: bool,
    pub ports: &'a [ServicePort],
}

/// The loaded programs, shared so that a spare network can be attached off the manager's
/// lock (an attach waits out an RCU grace period). The loaded objects own the programs;
/// dropping them would not detach pinned links, but new bottles need the programs loaded.
struct Programs {
    from_bottle: Ebpf,
    to_bottle: Ebpf,
}

/// Attaches both programs to an interface; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Attacher {
    programs: Arc<Mutex<Programs>>,
    pin_root: PathBuf,
    mode: AttachMode,
}

pub struct Datapath {
    attacher: Attacher,
    policy: HashMap<MapData, u32, BottlePolicy>,
    ports: HashMap<MapData, BottlePortKey, u8>,
    stats: PerCpuHashMap<MapData, u32, BottleCounters>,
    global: Array<MapData, BottleGlobal>,
    pin_root: PathBuf,
    mode: AttachMode,
}

impl Datapath {
    /// Loads both programs, re-opening pinned maps when they exist.
    pub fn load(pin_root: &Path, attach: TcAttach) -> Result<Self> {
        let maps_dir = pin_root.join(MAPS_PIN_DIR);
        std::fs::create_dir_all(&maps_dir).map_err(|source| DatapathError::PinDir {
            path: maps_dir.clone(),
            source,
        })?;
        let load = |object: &'static str, bytes: &[u8], program: &'static str| -> Result<Ebpf> {
            let mut ebpf = EbpfLoader::new()
                .map_pin_path(&maps_dir)
                .load(bytes)
                .map_err(|source| DatapathError::Load {
                    object,
                    source: Box::new(source),
                })?;
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or(DatapathError::Missing(program))?
                .try_into()
                .map_err(prog_err(program))?;
            prog.load().map_err(prog_err(program))?;
            Ok(ebpf)
        };
        let mut from_bottle = load(
            "from_bottle",
            bottle_ebpf::FROM_BOTTLE_OBJ,
            bottle_ebpf::FROM_BOTTLE_PROG,
        )?;
        let to_bottle = load(
            "to_bottle",
            bottle_ebpf::TO_BOTTLE_OBJ,
            bottle_ebpf::TO_BOTTLE_PROG,
        )?;
        let mut take = |name: &'static str| {
            from_bottle
                .take_map(name)
                .ok_or(DatapathError::Missing(name))
        };
        let policy = HashMap::try_from(take(POLICY_MAP)?).map_err(map_err(POLICY_MAP))?;
        let ports = HashMap::try_from(take(PORTS_MAP)?).map_err(map_err(PORTS_MAP))?;
        let stats = PerCpuHashMap::try_from(take(STATS_MAP)?).map_err(map_err(STATS_MAP))?;
        let global = Array::try_from(take(GLOBAL_MAP)?).map_err(map_err(GLOBAL_MAP))?;
        let mode = match attach {
            TcAttach::Clsact => AttachMode::Clsact,
            TcAttach::Tcx => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
                _ => return Err(DatapathError::NoTcx),
            },
        };
        Ok(Self {
            attacher: Attacher {
                programs: Arc::new(Mutex::new(Programs {
                    from_bottle,
                    to_bottle,
                })),
                pin_root: pin_root.to_path_buf(),
                mode,
            },
            policy,
            ports,
            stats,
            global,
            pin_root: pin_root.to_path_buf(),
            mode,
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Where a bottle's tcx links are pinned.
    pub fn link_dir(&self, id: &str) -> PathBuf {
        self.pin_root.join(id)
    }

    /// Writes the bottle's policy, ports and a zeroed counter entry (kept if it exists, so
    /// counters survive re-adoption).
    pub fn install(&mut self, b: &BottleDatapath<'_>) -> Result<()> {
        self.set_policy(b)?;
        for port in b.ports {
            let key = port_key(b.ifindex, port);
            self.ports.insert(key, 1, 0).map_err(map_err(PORTS_MAP))?;
        }
        // BPF_NOEXIST keeps an existing entry, so counters survive re-adoption. (aya 0.13's
        // per-CPU `get` reports a missing key as present, so it cannot be used to ask.)
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| DatapathError::Map {
            map: STATS_MAP,
            source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            })),
        })?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![BottleCounters::default(); cpus])
            .map_err(|io_error| DatapathError::Map {
                map: STATS_MAP,
                source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "per-cpu values",
                    io_error,
                })),
            })?;
        match self.stats.insert(b.ifindex, zeros, BPF_NOEXIST) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(map_err(STATS_MAP)(e)),
        }
        Ok(())
    }

    pub fn set_policy(&mut self, b: &BottleDatapath<'_>) -> Result<()> {
        let policy = BottlePolicy {
            bottle_addr: u32::from(b.bottle).to_be(),
            gateway_addr: u32::from(b.gateway).to_be(),
            flags: if b.frozen { FLAG_FROZEN } else { 0 },
            _pad: 0,
        };
        self.policy
            .insert(b.ifindex, policy, 0)
            .map_err(map_err(POLICY_MAP))
    }

    /// Attaches both programs to the host-side veth (see [`Attacher::attach`]).
    pub fn attach(&self, id: &str, ifname: &str) -> Result<()> {
        self.attacher.attach(id, ifname)
    }

    /// A handle that attaches programs without borrowing the datapath.
    pub fn attacher(&self) -> Attacher {
        self.attacher.clone()
    }

    /// Whether both of a bottle's links are still pinned (tcx), i.e. still enforcing.
    pub fn links_pinned(&self, id: &str) -> bool {
        if self.mode == AttachMode::Clsact {
            return true;
        }
        let dir = self.link_dir(id);
        [FROM_BOTTLE_LINK, TO_BOTTLE_LINK]
            .iter()
            .all(|name| PinnedLink::from_pin(dir.join(name)).is_ok())
    }

    /// Removes a bottle's map entries and link pins. Each step runs even if an earlier one
    /// failed; failures are returned for the caller to report.
    pub fn uninstall(
        &mut self,
        id: &str,
        ifindex: Option<u32>,
        ports: &[ServicePort],
    ) -> Vec<String> {
        let mut failures = self.withdraw(ifindex, ports);
        if let Err(e) = remove_link_pins(&self.link_dir(id)) {
            failures.push(e);
        }
        failures
    }

    /// Removes a bottle's map entries but keeps its links: with no policy entry the programs
    /// drop everything on that interface, as long as the interface exists.
    pub fn withdraw(&mut self, ifindex: Option<u32>, ports: &[ServicePort]) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(ifindex) = ifindex {
            for port in ports {
                if let Err(e) = self.ports.remove(&port_key(ifindex, port)) {
                    if !is_not_found(&e) {
                        failures.push(format!("remove port {port}: {e}"));
                    }
                }
            }
            if let Err(e) = self.policy.remove(&ifindex) {
                if !is_not_found(&e) {
                    failures.push(format!("remove policy: {e}"));
                }
            }
            if let Err(e) = self.stats.remove(&ifindex) {
                if !is_not_found(&e) {
                    failures.push(format!("remove counters: {e}"));
                }
            }
        }
        failures
    }

    /// Sums a bottle's per-CPU counters.
    pub fn counters(&self, ifindex: u32) -> Option<BottleCounters> {
        let per_cpu = self.stats.get(&ifindex, 0).ok()?;
        let mut total = BottleCounters::default();
        for cpu in per_cpu.iter() {
            total.accumulate(cpu);
        }
        Some(total)
    }

    pub fn kill_switch(&self) -> Result<bool> {
        let global = self.global.get(&0, 0).map_err(map_err(GLOBAL_MAP))?;
        Ok(global.kill_switch != 0)
    }

    pub fn set_kill_switch(&mut self, engaged: bool) -> Result<()> {
        let value = BottleGlobal {
            kill_switch: u32::from(engaged),
            _pad: 0,
        };
        self.global.set(0, value, 0).map_err(map_err(GLOBAL_MAP))
    }

    /// Every ifindex with a policy entry, to find stale ones after a restart.
    pub fn policy_ifindexes(&self) -> Vec<u32> {
        self.policy.keys().filter_map(|k| k.ok()).collect()
    }

    /// Pin directories of bottles (everything under the pin root but the maps).
    pub fn pinned_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.pin_root) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != MAPS_PIN_DIR)
            .collect()
    }

    /// Removes stale map entries for an ifindex no bottle owns (ports are found by scan).
    pub fn remove_stale(&mut self, ifindex: u32) {
        let stale_ports: Vec<BottlePortKey> = self
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.ifindex == ifindex)
            .collect();
        for key in stale_ports {
            let _ = self.ports.remove(&key);
        }
        let _ = self.policy.remove(&ifindex);
        let _ = self.stats.remove(&ifindex);
    }
}

impl Attacher {
    /// Attaches both programs to the host-side veth: first in the tcx chain with pinned links,
    /// or as the first clsact filters. Attaching where our filters already are replaces their
    /// programs atomically (a restarted agent's fresh ones), never leaving a gap.
    pub fn attach(&self, id: &str, ifname: &str) -> Result<()> {
        let mut programs = self
            .programs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let programs = &mut *programs;
        match self.mode {
            AttachMode::Tcx => {
                let dir = self.pin_root.join(id);
                std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                attach_tcx(
                    &mut programs.from_bottle,
                    bottle_ebpf::FROM_BOTTLE_PROG,
                    ifname,
                    TcAttachType::Ingress,
                    &dir.join(FROM_BOTTLE_LINK),
                )?;
                attach_tcx(
                    &mut programs.to_bottle,
                    bottle_ebpf::TO_BOTTLE_PROG,
                    ifname,
                    TcAttachType::Egress,
                    &dir.join(TO_BOTTLE_LINK),
                )
            }
            AttachMode::Clsact => {
                match tc::qdisc_add_clsact(ifname) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(source) => {
                        return Err(DatapathError::Clsact {
                            ifname: ifname.into(),
                            source,
                        })
                    }
                }
                attach_clsact(
                    &mut programs.from_bottle,
                    bottle_ebpf::FROM_BOTTLE_PROG,
                    ifname,
                    TcAttachType::Ingress,
                )?;
                attach_clsact(
                    &mut programs.to_bottle,
                    bottle_ebpf::TO_BOTTLE_PROG,
                    ifname,
                    TcAttachType::Egress,
                )
            }
        }
    }
}

fn port_key(ifindex: u32, port: &ServicePort) -> BottlePortKey {
    BottlePortKey {
        ifindex,
        port: port.port.to_be(),
        proto: port.proto.number(),
        _pad: 0,
    }
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::KeyNotFound)
        || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// Removes a bottle's link pin directory (detaching its tcx links, if the interface still
/// exists). Missing is fine.
pub fn remove_link_pins(dir: &Path) -> std::result::Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove pins {}: {e}", dir.display())),
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn attach_tcx(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let prog = program(ebpf, name)?;
    // First in the chain: a program ahead of ours returning "pass" would bypass enforcement.
    let link_id = prog
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(prog_err(name))?;
    let link = prog.take_link(link_id).map_err(prog_err(name))?;
    let fd_link: FdLink = link.try_into().map_err(|e| DatapathError::Pin {
        path: pin.into(),
        source: Box::new(e),
    })?;
    fd_link.pin(pin).map_err(|e| DatapathError::Pin {
        path: pin.into(),
        source: Box::new(e),
    })?;
    Ok(())
}

fn attach_clsact(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
) -> Result<()> {
    let prog = program(ebpf, name)?;
    let options = NlOptions {
        priority: CLSACT_PRIORITY,
        handle: CLSACT_HANDLE,
    };
    let link_id =
        match prog.attach_with_options(ifname, attach_type, TcAttachOptions::Netlink(options)) {
            Ok(id) => id,
            Err(aya::programs::ProgramError::TcError(TcError::NetlinkError { io_error }))
                if io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                let ours = SchedClassifierLink::attached(
                    ifname,
                    attach_type,
                    CLSACT_PRIORITY,
                    CLSACT_HANDLE,
                )
                .map_err(|io_error| prog_err(name)(TcError::NetlinkError { io_error }.into()))?;
                prog.attach_to_link(ours).map_err(prog_err(name))?
            }
            Err(e) => return Err(prog_err(name)(e)),
        };
    let link = prog.take_link(link_id).map_err(prog_err(name))?;
    // A netlink filter lives with the interface; dropping the link would detach it, so the
    // agent deliberately lets go of it. Deleting the veth removes the filter.
    std::mem::forget(link);
    Ok(())
}
