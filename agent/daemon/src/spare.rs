//! Spare networks: the slow part of a bottle's network, made ahead of time.
//!
//! Making a namespace and a veth, attaching both programs, addressing both ends and waiting
//! for their carrier costs a few milliseconds with clsact (20-30 ms more with tcx, whose
//! attaches wait out RCU grace periods). The agent keeps `spare_networks` (default 1) of them
//! ready: a namespace, the veth with its peer born inside as `eth0`, both programs attached
//! (tcx links pinned under the spare's id), and an address block from the pool with both ends
//! addressed, routed and up (and `/etc/netns/<netns>/resolv.conf` naming its gateway). Its
//! ifindex has no policy entry, so the datapath drops everything on it, ARP included, until
//! a bottle takes it. `create` takes one (its id and block become the bottle's), writes the
//! policy and starts the services, and a background task makes the next one, off the
//! manager's lock. A spare is made only while at least two blocks are free (see
//! `Manager::start_spare`).
//!
//! A spare has no state directory: to a restarted agent it is an orphan like any other and
//! is removed (`Manager::adopt`), and its block is free again (the pool is rebuilt from the
//! bottles' state). A stopping agent removes its spares itself. `ls` and `rm` only know
//! bottles, never spares.

use std::sync::Arc;

use rtnetlink::Handle;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::datapath::{Attacher, DatapathError};
use crate::ipam::Block;
use crate::manager::Manager;
use crate::netns::{self, NetnsError};
use crate::network::{self, NetworkError};

#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T> = std::result::Result<T, SpareError>;

/// A ready spare network.
#[derive(Debug, Clone)]
pub struct Spare {
    pub id: String,
    pub ifindex: u32,
    /// The addresses both ends have already.
    pub block: Block,
}

/// What making one spare needs, taken from the manager so the work runs off its lock.
pub struct SpareJob {
    pub id: String,
    pub netns: String,
    pub host: String,
    pub netlink: Handle,
    pub attacher: Attacher,
    pub block: Block,
}

impl SpareJob {
    /// Makes the spare. On failure, `ifindex` says whether the veth exists (for the
    /// rollback, which the manager does like any bottle's teardown).
    pub async fn build(&self, ifindex: &mut Option<u32>) -> Result<u32> {
        let started = std::time::Instant::now();
        let netns_name = self.netns.clone();
        tokio::task::spawn_blocking(move || netns::create(&netns_name)).await??;
        let index = network::create_veth_into(&self.netlink, &self.host, &self.netns).await?;
        *ifindex = Some(index);
        let (attacher, id, host) = (self.attacher.clone(), self.id.clone(), self.host.clone());
        tokio::task::spawn_blocking(move || attacher.attach(&id, &host)).await??;
        let b = &self.block;
        network::configure(
            &self.netlink,
            &self.host,
            index,
            &self.netns,
            b.bottle,
            b.gateway,
            b.prefix_len,
        )
        .await?;
        debug!(id = %self.id, elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), "spare network made");
        Ok(index)
    }
}

/// Runs for the agent's life: whenever the manager wants spares, makes them one at a time.
/// A failure is logged and not retried until the next `create` asks again, so a broken
/// host does not spin.
pub async fn keep(manager: Arc<Mutex<Manager>>) {
    let wanted = manager.lock().await.spares_wanted();
    loop {
        loop {
            let Some(job) = manager.lock().await.start_spare() else {
                break;
            };
            let mut ifindex = None;
            let result = job.build(&mut ifindex).await;
            let failed = result.is_err();
            if let Err(e) = &result {
                warn!(id = %job.id, error = %e, "cannot make a spare network; creates make their own");
            }
            manager
                .lock()
                .await
                .finish_spare(&job, ifindex, result)
                .await;
            if failed {
                break;
            }
        }
        wanted.notified().await;
    }
}
