//! Address blocks for bottles, carved out of the agent's pool.
//!
//! Block `i` of a pool with per-bottle prefix `/p` spans `pool + i * 2^(32-p)`; its first
//! usable address is the gateway (host side), the second the bottle (`eth0`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("every address block in {pool} is in use ({capacity} bottles); remove a bottle or configure a larger pool")]
    Exhausted { pool: Ipv4Net, capacity: u32 },
    #[error("address {addr} is not a bottle address of pool {pool}")]
    Foreign { addr: Ipv4Addr, pool: Ipv4Net },
}

/// One bottle's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: u32,
    pub gateway: Ipv4Addr,
    pub bottle: Ipv4Addr,
    pub prefix_len: u8,
}

/// Allocator over a pool. Not persistent itself: the agent rebuilds it from bottle state.
#[derive(Debug)]
pub struct Ipam {
    pool: Ipv4Net,
    prefix_len: u8,
    used: BTreeSet<u32>,
}

impl Ipam {
    pub fn new(pool: Ipv4Net, prefix_len: u8) -> Self {
        Self {
            pool: pool.trunc(),
            prefix_len,
            used: BTreeSet::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        1u32 << (self.prefix_len - self.pool.prefix_len())
    }

    /// Blocks not in use.
    pub fn free(&self) -> u32 {
        let used = u32::try_from(self.used.len()).unwrap_or(u32::MAX);
        self.capacity().saturating_sub(used)
    }

    fn block_size(&self) -> u32 {
        1u32 << (32 - self.prefix_len)
    }

    fn block(&self, index: u32) -> Block {
        let base = u32::from(self.pool.network()) + index * self.block_size();
        Block {
            index,
            gateway: Ipv4Addr::from(base + 1),
            bottle: Ipv4Addr::from(base + 2),
            prefix_len: self.prefix_len,
        }
    }

    /// Takes the lowest free block.
    pub fn allocate(&mut self) -> Result<Block, IpamError> {
        let capacity = self.capacity();
        let index = (0..capacity)
            .find(|i| !self.used.contains(i))
            .ok_or(IpamError::Exhausted {
                pool: self.pool,
                capacity,
            })?;
        self.used.insert(index);
        Ok(self.block(index))
    }

    /// Marks the block holding `bottle` as used (re-adoption after restart).
    pub fn reserve(&mut self, bottle: Ipv4Addr) -> Result<Block, IpamError> {
        let foreign = IpamError::Foreign {
            addr: bottle,
            pool: self.pool,
        };
        if !self.pool.contains(&bottle) {
            return Err(foreign);
        }
        let index = (u32::from(bottle) - u32::from(self.pool.network())) / self.block_size();
        let block = self.block(index);
        if block.bottle != bottle {
            return Err(foreign);
        }
        self.used.insert(index);
        Ok(block)
    }

    pub fn release(&mut self, index: u32) {
        self.used.remove(&index);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_exhausts() {
        let mut ipam = Ipam::new("10.213.0.0/29".parse().unwrap(), 30);
        assert_eq!(ipam.capacity(), 2);
        assert_eq!(ipam.free(), 2);
        let a = ipam.allocate().unwrap();
        assert_eq!(ipam.free(), 1);
        assert_eq!(
            (a.gateway, a.bottle),
            ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap())
        );
        let b = ipam.allocate().unwrap();
        assert_eq!(b.gateway, "10.213.0.5".parse::<Ipv4Addr>().unwrap());
        assert!(matches!(
            ipam.allocate(),
            Err(IpamError::Exhausted { capacity: 2, .. })
        ));
        assert_eq!(ipam.free(), 0);
        ipam.release(a.index);
        assert_eq!(ipam.free(), 1);
        assert_eq!(ipam.allocate().unwrap(), a);
    }

    #[test]
    fn reserve_rebuilds_after_restart() {
        let mut ipam = Ipam::new("10.213.0.0/16".parse().unwrap(), 30);
        let block = ipam.reserve("10.213.0.6".parse().unwrap()).unwrap();
        assert_eq!(block.index, 1);
        assert_eq!(ipam.allocate().unwrap().index, 0);
        assert_eq!(ipam.allocate().unwrap().index, 2);
        assert!(
            ipam.reserve("10.213.0.5".parse().unwrap()).is_err(),
            "gateway is not a bottle address"
        );
        assert!(ipam.reserve("10.9.0.2".parse().unwrap()).is_err());
    }
}
