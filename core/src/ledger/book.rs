//! The ledger of a whole cluster: every node's pools, and the operations that move bytes
//! between free, reserved and allocated without ever promising more than a pool has.

use std::collections::HashMap;

use super::{
    Bytes, Demand, FitOptions, NodeName, NodeState, Placement, PoolName, PoolState, Unfit, check,
    score,
};

/// Every known node's [`NodeState`], by name.
///
/// A hash map, not a B-tree: the extender looks up every candidate node of every pod, and
/// with thousands of similar names (`node-00001`…) the hash lookup measured more than twice
/// as fast (BENCHMARKS.md). Iteration sorts on the fly where order matters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    nodes: HashMap<NodeName, NodeState>,
}

/// The verdict of [`Ledger::filter`] for a list of candidate nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filtered<'a> {
    /// Candidates that can take the demand, in input order.
    pub passed: Vec<&'a str>,
    /// Candidates that cannot, each with its reason, in input order.
    pub failed: Vec<(&'a str, Unfit)>,
}

/// A ledger operation that could not be applied; the ledger is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The demand does not fit the node.
    #[error("node {node}: {reason}")]
    Unfit {
        /// The node.
        node: NodeName,
        /// Why it does not fit.
        reason: Unfit,
    },
    /// The ledger has no such node.
    #[error("node {0} is not in the ledger")]
    UnknownNode(NodeName),
    /// A commit or release of more than the pool holds: a bookkeeping bug upstream.
    #[error("node {node} pool {pool}: cannot take back {bytes} from {held}")]
    Underflow {
        /// The node.
        node: NodeName,
        /// The pool.
        pool: PoolName,
        /// What was to be taken back.
        bytes: Bytes,
        /// What the pool holds.
        held: Bytes,
    },
}

/// Which counter of a pool an operation moves bytes out of or into.
#[derive(Clone, Copy)]
enum Counter {
    Allocated,
    Reserved,
}

impl Counter {
    fn slot(self, p: &mut PoolState) -> &mut Bytes {
        match self {
            Counter::Allocated => &mut p.allocated,
            Counter::Reserved => &mut p.reserved,
        }
    }

    fn read(self, p: &PoolState) -> Bytes {
        match self {
            Counter::Allocated => p.allocated,
            Counter::Reserved => p.reserved,
        }
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a node.
    pub fn upsert(&mut self, node: NodeState) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Removes a node; returns it if it was there.
    pub fn remove(&mut self, name: &str) -> Option<NodeState> {
        self.nodes.remove(name)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    /// All nodes, in name order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeState> {
        let mut v: Vec<&NodeState> = self.nodes.values().collect();
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ledger has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `demand` fits node `name`; an unknown node is [`Unfit::NoReport`] unless the
    /// demand is empty.
    pub fn check(&self, name: &str, demand: &Demand, opts: &FitOptions) -> Result<(), Unfit> {
        match self.nodes.get(name) {
            Some(node) => check(node, demand, opts),
            None if demand.is_empty() => Ok(()),
            None => Err(Unfit::NoReport),
        }
    }

    /// Splits `candidates` into those that can take `demand` and those that cannot.
    pub fn filter<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a str>,
        demand: &Demand,
        opts: &FitOptions,
    ) -> Filtered<'a> {
        let mut out = Filtered::default();
        for name in candidates {
            match self.check(name, demand, opts) {
                Ok(()) => out.passed.push(name),
                Err(reason) => out.failed.push((name, reason)),
            }
        }
        out
    }

    /// Scores each candidate for `demand` under `placement`; unknown or unfit nodes score 0.
    pub fn prioritize<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a str>,
        demand: &Demand,
        placement: Placement,
    ) -> Vec<(&'a str, u8)> {
        candidates
            .into_iter()
            .map(|name| {
                let s = self
                    .nodes
                    .get(name)
                    .map_or(0, |n| score(n, demand, placement));
                (name, s)
            })
            .collect()
    }

    /// Holds `demand` on node `name` for claims that were placed there but have no volume
    /// yet. Fails, changing nothing, when it does not fit.
    pub fn reserve(
        &mut self,
        name: &str,
        demand: &Demand,
        opts: &FitOptions,
    ) -> Result<(), LedgerError> {
        self.add_checked(name, demand, opts, Counter::Reserved)
    }

    /// Allocates `demand` on node `name` directly (a volume made without a reservation).
    /// Fails, changing nothing, when it does not fit.
    pub fn allocate(
        &mut self,
        name: &str,
        demand: &Demand,
        opts: &FitOptions,
    ) -> Result<(), LedgerError> {
        self.add_checked(name, demand, opts, Counter::Allocated)
    }

    /// Turns a reservation into an allocation: the volume now exists.
    pub fn commit(&mut self, name: &str, demand: &Demand) -> Result<(), LedgerError> {
        self.take(name, demand, Counter::Reserved)?;
        let node = self.node_mut(name)?;
        for (pool, bytes) in demand.pools() {
            if let Some(p) = node.pool_mut(pool.as_str()) {
                p.allocated = p.allocated.saturating_add(bytes);
            }
        }
        Ok(())
    }

    /// Drops a reservation that will not become a volume.
    pub fn unreserve(&mut self, name: &str, demand: &Demand) -> Result<(), LedgerError> {
        self.take(name, demand, Counter::Reserved)
    }

    /// Frees allocated bytes: the volume was deleted.
    pub fn release(&mut self, name: &str, demand: &Demand) -> Result<(), LedgerError> {
        self.take(name, demand, Counter::Allocated)
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeState, LedgerError> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| LedgerError::UnknownNode(name.into()))
    }

    fn add_checked(
        &mut self,
        name: &str,
        demand: &Demand,
        opts: &FitOptions,
        counter: Counter,
    ) -> Result<(), LedgerError> {
        let node = self.node_mut(name)?;
        check(node, demand, opts).map_err(|reason| LedgerError::Unfit {
            node: name.into(),
            reason,
        })?;
        for (pool, bytes) in demand.pools() {
            if let Some(p) = node.pool_mut(pool.as_str()) {
                // `check` proved bytes <= free <= allocatable - committed, so no overflow.
                let slot = counter.slot(p);
                *slot = slot.saturating_add(bytes);
            }
        }
        Ok(())
    }

    /// Subtracts `demand` from one counter of every demanded pool, all or nothing.
    fn take(&mut self, name: &str, demand: &Demand, counter: Counter) -> Result<(), LedgerError> {
        let node = self.node_mut(name)?;
        for (pool, bytes) in demand.pools() {
            let held = node
                .pool(pool.as_str())
                .map_or(Bytes::ZERO, |p| counter.read(p));
            if held < bytes {
                return Err(LedgerError::Underflow {
                    node: name.into(),
                    pool: pool.clone(),
                    bytes,
                    held,
                });
            }
        }
        for (pool, bytes) in demand.pools() {
            if let Some(p) = node.pool_mut(pool.as_str()) {
                let slot = counter.slot(p);
                *slot = slot.saturating_sub(bytes);
            }
        }
        Ok(())
    }
}

impl FromIterator<NodeState> for Ledger {
    fn from_iter<I: IntoIterator<Item = NodeState>>(iter: I) -> Self {
        Self {
            nodes: iter.into_iter().map(|n| (n.name.clone(), n)).collect(),
        }
    }
}
