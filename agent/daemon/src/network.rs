//! Links, addresses and routes of a bottle, made with rtnetlink.
//!
//! Host side: a veth named after the bottle id holding the gateway address. Inside the
//! bottle's namespace: `lo` up, the peer renamed to `eth0` with the bottle address, a default
//! route via the gateway, IPv6 off. The host never forwards: the datapath drops everything
//! not addressed to the gateway, and forwarding is also switched off on the host-side veth.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, IpVersion};

use crate::netns;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink: {action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("interface {0} not found")]
    NoSuchLink(String),
    #[error("cannot set {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("cannot start a runtime inside the namespace: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("writing /etc/netns/{netns}/resolv.conf: {source}")]
    ResolvConf {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, NetworkError>;

fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink {
        action,
        source: Box::new(source),
    }
}

/// Opens a netlink connection in the calling thread's namespace, driven by the current
/// tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Index of the interface called `name`, if it exists.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(source) => Err(NetworkError::Netlink {
            action: format!("look up {name}"),
            source: Box::new(source),
        }),
    }
}

/// Names of every interface whose name starts with `prefix`.
pub async fn links_with_prefix(handle: &Handle, prefix: &str) -> Result<Vec<String>> {
    let mut links = handle.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = links.try_next().await.map_err(nl("list links"))? {
        for attr in link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                if name.starts_with(prefix) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

/// Creates the veth pair with its peer born inside the bottle's namespace as `eth0`, and
/// returns the host side's index. Creating the peer in place avoids moving it later, which
/// costs the kernel an RCU grace period (15-30 ms here). Both ends start down.
pub async fn create_veth_into(handle: &Handle, host: &str, netns_name: &str) -> Result<u32> {
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo, LinkMessage};
    use std::os::fd::AsRawFd;
    let ns = netns::open(netns_name)?;
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName("eth0".into()));
    peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    let mut request = handle.link().add().name(host.to_string());
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
    request
        .execute()
        .await
        .map_err(nl(format!("create veth {host}")))?;
    drop(ns);
    link_index(handle, host)
        .await?
        .ok_or_else(|| NetworkError::NoSuchLink(host.to_string()))
}

/// Deletes an interface by name; already gone is fine.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(source) => Err(NetworkError::Netlink {
            action: format!("delete {name}"),
            source: Box::new(source),
        }),
    }
}

/// Host side: no IPv6, no forwarding, the gateway address, up.
async fn configure_host_side(
    handle: &Handle,
    ifname: &str,
    ifindex: u32,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    host_side_off(ifname)?;
    add_gateway(handle, ifindex, ifname, gateway, prefix_len).await?;
    set_up(handle, ifindex, ifname).await?;
    wait_oper_up(handle, ifindex, ifname).await
}

async fn add_gateway(
    handle: &Handle,
    ifindex: u32,
    ifname: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    handle
        .address()
        .add(ifindex, gateway.into(), prefix_len)
        .execute()
        .await
        .map_err(nl(format!("add {gateway}/{prefix_len} to {ifname}")))
}

/// A new network's addresses: both ends of its veth configured, each in its own namespace,
/// concurrently — the host end (no IPv6, no forwarding, the gateway address, up) here, the
/// inside (IPv6 off, `lo` up, `eth0` with the bottle address, the default route) on a thread
/// in the namespace — then `/etc/netns/<netns>/resolv.conf` naming the gateway. Returns once
/// both carriers are up.
pub async fn configure(
    handle: &Handle,
    ifname: &str,
    ifindex: u32,
    netns_name: &str,
    bottle: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    let inside = {
        let netns_name = netns_name.to_owned();
        tokio::task::spawn_blocking(move || {
            configure_inside(&netns_name, bottle, gateway, prefix_len)
        })
    };
    let host = configure_host_side(handle, ifname, ifindex, gateway, prefix_len).await;
    let inside = inside
        .await
        .map_err(|e| NetworkError::from(netns::NetnsError::Thread(e.to_string())));
    host?;
    inside??;
    netns::write_resolv_conf(netns_name, gateway).map_err(|source| NetworkError::ResolvConf {
        netns: netns_name.to_owned(),
        source,
    })
}

async fn add_address_and_route(
    handle: &Handle,
    eth: u32,
    bottle: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    handle
        .address()
        .add(eth, bottle.into(), prefix_len)
        .execute()
        .await
        .map_err(nl(format!("add {bottle}/{prefix_len} to eth0")))?;
    set_up(handle, eth, "eth0").await?;
    handle
        .route()
        .add()
        .v4()
        .gateway(gateway)
        .execute()
        .await
        .map_err(nl(format!("add default route via {gateway}")))?;
    wait_oper_up(handle, eth, "eth0").await
}

/// Inside the bottle: IPv6 off, `lo` up, `eth0` with the bottle address, up, default route
/// via the gateway. Runs on a dedicated thread inside the namespace.
fn configure_inside(
    netns_name: &str,
    bottle: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    in_netns(netns_name, move |handle| async move {
        set_up(&handle, index_of(&handle, "lo").await?, "lo").await?;
        let eth = index_of(&handle, "eth0").await?;
        add_address_and_route(&handle, eth, bottle, gateway, prefix_len).await
    })
}

/// The host end of a bottle's veth: no IPv6, no forwarding.
fn host_side_off(ifname: &str) -> Result<()> {
    write_sysctl(
        &format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    )?;
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"), "0")
}

/// Runs `f` with a netlink handle inside the namespace `netns_name`, with IPv6 turned off
/// there first: on a dedicated thread (see `netns::run_in`) with a runtime of its own.
fn in_netns<F, Fut>(netns_name: &str, f: F) -> Result<()>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    netns::run_in(netns_name, move || -> Result<()> {
        write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")?;
        write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetworkError::Runtime)?;
        rt.block_on(async move { f(connect()?).await })
    })?
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32> {
    link_index(handle, name)
        .await?
        .ok_or_else(|| NetworkError::NoSuchLink(name.into()))
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<()> {
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .map_err(nl(format!("set {name} up")))
}

/// Bound on [`wait_oper_up`].
const OPER_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits (bounded) until the kernel reports link `index` operationally up. A veth that was
/// just set up gets its carrier and queueing discipline asynchronously, from a kernel worker
/// that needs the RTNL lock; until then whatever is sent is dropped, and a lost first ARP
/// request costs the bottle's first connection a 1 s retransmission. Not coming up in time
/// is logged, not an error: the bottle is no less confined, only slower to start talking.
async fn wait_oper_up(handle: &Handle, index: u32, name: &str) -> Result<()> {
    use netlink_packet_route::link::State;
    let deadline = Instant::now() + OPER_UP_TIMEOUT;
    loop {
        let mut links = handle.link().get().match_index(index).execute();
        if let Some(link) = links
            .try_next()
            .await
            .map_err(nl(format!("look up {name}")))?
        {
            if link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(link = name, "link not operationally up after 2 s; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Host routes (any table) that overlap `pool`, other than default routes and routes through
/// this agent's own veths. Each is described as `DEST/LEN (table T)`.
pub async fn routes_overlapping(
    handle: &Handle,
    pool: Ipv4Net,
    own_ifindexes: &[u32],
) -> Result<Vec<String>> {
    let mut routes = handle.route().get(IpVersion::V4).execute();
    let mut overlapping = Vec::new();
    while let Some(route) = routes.try_next().await.map_err(nl("list routes"))? {
        let len = route.header.destination_prefix_length;
        if len == 0 {
            continue;
        }
        let mut dest = None;
        let mut oif = None;
        let mut table = u32::from(route.header.table);
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let Some(dest) = dest else { continue };
        if oif.is_some_and(|i| own_ifindexes.contains(&i)) {
            continue;
        }
        let Ok(net) = Ipv4Net::new(dest, len) else {
            continue;
        };
        if net.contains(&pool.network()) || pool.contains(&net.network()) {
            overlapping.push(format!("{net} (table {table})"));
        }
    }
    Ok(overlapping)
}

/// Writes a sysctl through /proc, in the calling thread's network namespace.
pub fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
        path: path.to_string(),
        source,
    })
}
