//! What a node's pools hold: capacity, reserve, allocated and reserved bytes, and the
//! resulting free space that every placement decision reads.
//!
//! ```text
//!   capacity ─┬─ reserve (kept free for the system, from the agent's pool config)
//!             └─ allocatable ─┬─ allocated (sum of the pool's LocalVolumes)
//!                             ├─ reserved  (claims with selected-node here, no LocalVolume yet)
//!                             └─ free      (what a new claim may take)
//! ```
//!
//! For a driver that cannot enforce sizes (`hostpath`), volumes may write past their claim,
//! so `free` is also capped by the filesystem's real free space less the reserve. For
//! `btrfs` the agent caps the `allocatable` it reports instead, by the free space plus what
//! the pool's live volumes hold, less the data the pool keeps outside them
//! (`agent::report::btrfs_allocatable`), so this ledger leaves it as reported.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{Bytes, NodeName, PoolName, QuantityError};

/// How a pool makes volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Driver {
    /// A plain directory per volume. Sizes are bookkeeping only: nothing stops a volume from
    /// writing past its claim, so the ledger also watches the filesystem's real free space.
    #[default]
    Hostpath,
    /// A btrfs subvolume per volume with a qgroup limit equal to the claim: sizes are enforced.
    Btrfs,
}

impl Driver {
    /// Whether the driver stops a volume from growing past its size.
    #[inline]
    pub const fn enforces_size(self) -> bool {
        matches!(self, Driver::Btrfs)
    }

    /// The driver's name as written in pool configs and StorageNode status.
    #[inline]
    pub const fn as_str(self) -> &'static str {
        match self {
            Driver::Hostpath => "hostpath",
            Driver::Btrfs => "btrfs",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hostpath" => Ok(Driver::Hostpath),
            "btrfs" => Ok(Driver::Btrfs),
            other => Err(format!(
                "unknown driver {other:?}; use \"hostpath\" or \"btrfs\""
            )),
        }
    }
}

/// Space a pool keeps back from volumes: a fixed size or a share of the capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reserve {
    /// A fixed number of bytes.
    Bytes(Bytes),
    /// Hundredths of a percent of the capacity (`5%` is 500), so that no float decides a size.
    BasisPoints(u32),
    /// Nothing kept back.
    #[default]
    None,
}

impl Reserve {
    /// The reserve in bytes for a pool of `capacity`, never more than the capacity.
    #[inline]
    pub fn resolve(self, capacity: Bytes) -> Bytes {
        let bytes = match self {
            Reserve::None => Bytes::ZERO,
            Reserve::Bytes(b) => b,
            Reserve::BasisPoints(bp) => {
                let v = u128::from(capacity.0) * u128::from(bp) / 10_000;
                Bytes(u64::try_from(v).unwrap_or(u64::MAX))
            }
        };
        bytes.min(capacity)
    }
}

impl FromStr for Reserve {
    type Err = QuantityError;

    /// `10Gi`, `1073741824`, `5%` or `2.5%` (at most two decimals, at most 100%).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let Some(pct) = t.strip_suffix('%') else {
            return Ok(match t.parse::<Bytes>()? {
                Bytes::ZERO => Reserve::None,
                b => Reserve::Bytes(b),
            });
        };
        let malformed = || QuantityError::Malformed(s.to_string());
        if pct.trim_start().starts_with('-') {
            return Err(QuantityError::Negative(s.to_string()));
        }
        let (int, frac) = pct.split_once('.').unwrap_or((pct, ""));
        if int.is_empty() && frac.is_empty()
            || frac.len() > 2
            || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        {
            return Err(malformed());
        }
        let int: u32 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| malformed())?
        };
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| malformed())?;
        let bp = int.checked_mul(100).and_then(|v| v.checked_add(frac));
        match bp {
            Some(0) => Ok(Reserve::None),
            Some(bp) if bp <= 10_000 => Ok(Reserve::BasisPoints(bp)),
            _ => Err(QuantityError::PercentTooLarge(s.to_string())),
        }
    }
}

/// One pool on one node, as the ledger sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolState {
    /// The pool's name.
    pub name: PoolName,
    /// How the pool makes volumes.
    pub driver: Driver,
    /// Size of the pool (after any configured cap).
    pub capacity: Bytes,
    /// Bytes kept back from volumes.
    pub reserve: Bytes,
    /// Sum of the sizes of the pool's volumes.
    pub allocated: Bytes,
    /// Sum of the requests of claims placed on this node's pool that have no volume yet.
    pub reserved: Bytes,
    /// The filesystem's real free space, where known. Caps `free` for drivers that cannot
    /// enforce sizes.
    pub available: Option<Bytes>,
    /// Whether the agent can make volumes in the pool.
    pub ready: bool,
    /// Why the pool is not ready, when it is not.
    pub message: Option<String>,
}

impl PoolState {
    /// A ready, empty pool of `capacity` bytes with no reserve.
    #[inline]
    pub fn new(name: impl Into<PoolName>, driver: Driver, capacity: Bytes) -> Self {
        Self {
            name: name.into(),
            driver,
            capacity,
            reserve: Bytes::ZERO,
            allocated: Bytes::ZERO,
            reserved: Bytes::ZERO,
            available: None,
            ready: true,
            message: None,
        }
    }

    /// Capacity less the reserve.
    #[inline]
    pub fn allocatable(&self) -> Bytes {
        self.capacity.saturating_sub(self.reserve)
    }

    /// Allocated plus reserved: what is promised to claims.
    #[inline]
    pub fn committed(&self) -> Bytes {
        self.allocated.saturating_add(self.reserved)
    }

    /// What a new claim may still take from this pool.
    #[inline]
    pub fn free(&self) -> Bytes {
        let by_ledger = self.allocatable().saturating_sub(self.committed());
        match (self.driver.enforces_size(), self.available) {
            (false, Some(available)) => by_ledger.min(available.saturating_sub(self.reserve)),
            _ => by_ledger,
        }
    }

    /// Promised share of the allocatable space, in `0.0..=1.0`.
    #[inline]
    pub fn utilization(&self) -> f64 {
        self.committed().ratio(self.allocatable())
    }
}

/// One node's pools and how fresh its report is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name.
    pub name: NodeName,
    /// The node's pools, in any order; names are unique.
    pub pools: Vec<PoolState>,
    /// Time since the agent last reported, or `None` if it never did.
    pub heartbeat_age: Option<Duration>,
    /// Whether the agent reports itself ready.
    pub ready: bool,
}

impl NodeState {
    /// A ready node that reported just now.
    #[inline]
    pub fn new(name: impl Into<NodeName>, pools: Vec<PoolState>) -> Self {
        Self {
            name: name.into(),
            pools,
            heartbeat_age: Some(Duration::ZERO),
            ready: true,
        }
    }

    /// The pool called `name`.
    #[inline]
    pub fn pool(&self, name: &str) -> Option<&PoolState> {
        self.pools.iter().find(|p| p.name.as_str() == name)
    }

    /// The pool called `name`, mutably.
    #[inline]
    pub fn pool_mut(&mut self, name: &str) -> Option<&mut PoolState> {
        self.pools.iter_mut().find(|p| p.name.as_str() == name)
    }

    /// Sum of the pools' allocatable bytes.
    #[inline]
    pub fn allocatable(&self) -> Bytes {
        self.pools
            .iter()
            .fold(Bytes::ZERO, |acc, p| acc.saturating_add(p.allocatable()))
    }

    /// Sum of the pools' allocated and reserved bytes.
    #[inline]
    pub fn committed(&self) -> Bytes {
        self.pools
            .iter()
            .fold(Bytes::ZERO, |acc, p| acc.saturating_add(p.committed()))
    }

    /// Promised share of the node's allocatable space, in `0.0..=1.0`.
    #[inline]
    pub fn utilization(&self) -> f64 {
        self.committed().ratio(self.allocatable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_is_allocatable_less_allocated_and_reserved() {
        let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(100));
        p.reserve = Bytes::gib(10);
        p.allocated = Bytes::gib(50);
        p.reserved = Bytes::gib(15);
        assert_eq!(p.allocatable(), Bytes::gib(90));
        assert_eq!(p.free(), Bytes::gib(25));
        p.available = Some(Bytes::gib(1));
        assert_eq!(
            p.free(),
            Bytes::gib(25),
            "btrfs enforces sizes; the agent caps its allocatable by the disk, not the ledger"
        );
    }

    #[test]
    fn hostpath_free_space_is_capped_by_the_filesystem_less_the_reserve() {
        let mut p = PoolState::new("default", Driver::Hostpath, Bytes::gib(100));
        p.reserve = Bytes::gib(10);
        p.available = Some(Bytes::gib(30));
        assert_eq!(p.free(), Bytes::gib(20));
        p.available = Some(Bytes::gib(5));
        assert_eq!(p.free(), Bytes::ZERO);
    }

    #[test]
    fn overcommitted_pool_has_no_free_space_rather_than_wrapping() {
        let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(10));
        p.allocated = Bytes::gib(20);
        assert_eq!(p.free(), Bytes::ZERO);
        assert!((p.utilization() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn reserve_parses_bytes_and_percent() {
        assert_eq!("5%".parse(), Ok(Reserve::BasisPoints(500)));
        assert_eq!("2.5%".parse(), Ok(Reserve::BasisPoints(250)));
        assert_eq!("0%".parse(), Ok(Reserve::None));
        assert_eq!("10Gi".parse(), Ok(Reserve::Bytes(Bytes::gib(10))));
        assert_eq!(
            Reserve::BasisPoints(500).resolve(Bytes::gib(200)),
            Bytes::gib(10)
        );
        assert_eq!(
            Reserve::Bytes(Bytes::gib(500)).resolve(Bytes::gib(200)),
            Bytes::gib(200)
        );
        for bad in ["101%", "-5%", "5.555%", "%", "x%", "1.2.3%"] {
            assert!(bad.parse::<Reserve>().is_err(), "{bad}");
        }
    }

    #[test]
    fn drivers_parse_by_name_only() {
        assert_eq!("btrfs".parse(), Ok(Driver::Btrfs));
        assert_eq!("hostpath".parse(), Ok(Driver::Hostpath));
        assert!("lvm".parse::<Driver>().unwrap_err().contains("hostpath"));
    }
}
