//! How good a fitting node is for a pod's demand, on the extender protocol's 0..=10 scale.
//!
//! Both policies look at the share of the demanded pools' allocatable space that would be
//! left free after the pod's claims are placed:
//!
//! ```text
//!   left  = Σ over demanded pools p of (free(p) − demand(p))
//!   whole = Σ over demanded pools p of allocatable(p)
//!   spread  = round(10 × left / whole)      most room left after placement wins
//!   binpack = 10 − spread                   least room left that still fits wins
//! ```
//!
//! A share, not an absolute size, because what the cluster's balance is judged by is
//! utilization: with absolute free space a 4 TiB node would take every claim until it had
//! no more room left than a 500 GiB node, and end 90 % full while the small one sat empty.
//! kube-scheduler multiplies the score by `weight × 10` and adds it to its own plugins'
//! scores; a score outside 0..=10 would silently dominate them, so it can never leave it.

use std::fmt;
use std::str::FromStr;

use super::{Bytes, Demand, NodeState};

/// The highest score the extender protocol allows (`MaxExtenderPriority`).
pub const MAX_SCORE: u8 = 10;

/// How a StorageClass wants its volumes placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Placement {
    /// Prefer the node with the most room left after placement: even utilization, and room
    /// for each volume to grow.
    #[default]
    Spread,
    /// Prefer the node with the least room left that still fits: keeps whole nodes free for
    /// large claims.
    Binpack,
}

impl Placement {
    /// The policy's name as written in a StorageClass's `placement` parameter.
    pub const fn as_str(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::Binpack => "binpack",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Placement::Spread),
            "binpack" => Ok(Placement::Binpack),
            other => Err(format!(
                "unknown placement {other:?}; use \"spread\" or \"binpack\""
            )),
        }
    }
}

/// The share of the demanded pools left free after placement, as `(left, whole)` in bytes.
/// `None` when the demand does not fit or asks for no pool.
fn room_after(node: &NodeState, demand: &Demand) -> Option<(u128, u128)> {
    let mut left: u128 = 0;
    let mut whole: u128 = 0;
    for (pool_name, needed) in demand.pools() {
        let pool = node.pool(pool_name.as_str())?;
        let after: Bytes = pool.free().checked_sub(needed)?;
        left += u128::from(after.0);
        whole += u128::from(pool.allocatable().0);
    }
    (whole > 0).then_some((left, whole))
}

/// The node's score for `demand` under `placement`, in `0..=MAX_SCORE`.
///
/// Nodes that cannot take the demand, and demands that ask for nothing, score 0: the
/// extender filters the former and stays neutral on the latter.
pub fn score(node: &NodeState, demand: &Demand, placement: Placement) -> u8 {
    let Some((left, whole)) = room_after(node, demand) else {
        return 0;
    };
    score_share(left, whole, placement)
}

/// The score of a node with `left` of `whole` bytes of the demanded pools free after
/// placement (`left <= whole`): the arithmetic of [`score`], for callers that
/// keep per-pool free and allocatable bytes in their own compact form.
///
/// `left` is the sum over the demanded pools of `free − demand` (every pool must fit), and
/// `whole` the sum of their allocatable bytes. A `whole` of zero scores 0, as in [`score`].
pub fn score_share(left: u128, whole: u128, placement: Placement) -> u8 {
    if whole == 0 {
        return 0;
    }
    // Rounded integer division; left <= whole, so the result is at most MAX_SCORE.
    let spread = (left * u128::from(MAX_SCORE) + whole / 2) / whole;
    let spread = u8::try_from(spread.min(u128::from(MAX_SCORE))).unwrap_or(MAX_SCORE);
    match placement {
        Placement::Spread => spread,
        Placement::Binpack => MAX_SCORE - spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Driver, PoolState};

    fn node(cap: u64, alloc: u64) -> NodeState {
        let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(cap));
        p.allocated = Bytes::gib(alloc);
        NodeState::new("n", vec![p])
    }

    fn demand(gib: u64) -> Demand {
        Demand::from_claims([("default", Bytes::gib(gib))]).unwrap()
    }

    #[test]
    fn spread_prefers_the_emptiest_node_and_binpack_the_fullest_that_fits() {
        let empty = node(100, 0);
        let half = node(100, 50);
        let nearly = node(100, 85);
        let d = demand(10);
        assert_eq!(score(&empty, &d, Placement::Spread), 9);
        assert_eq!(score(&half, &d, Placement::Spread), 4);
        assert_eq!(score(&nearly, &d, Placement::Spread), 1);
        assert_eq!(score(&empty, &d, Placement::Binpack), 1);
        assert_eq!(score(&nearly, &d, Placement::Binpack), 9);
    }

    #[test]
    fn spread_compares_shares_so_a_big_node_is_not_filled_first() {
        // 4 TiB node 80 % full vs 500 GiB node empty: the small one has less absolute room
        // but far more relative room.
        let big = node(4096, 3277);
        let small = node(500, 0);
        let d = demand(10);
        assert!(score(&small, &d, Placement::Spread) > score(&big, &d, Placement::Spread));
    }

    #[test]
    fn nodes_that_do_not_fit_and_empty_demands_score_zero() {
        assert_eq!(score(&node(100, 95), &demand(10), Placement::Spread), 0);
        assert_eq!(score(&node(100, 95), &demand(10), Placement::Binpack), 0);
        assert_eq!(score(&node(100, 0), &Demand::new(), Placement::Spread), 0);
    }

    #[test]
    fn placement_parses_by_name_only() {
        assert_eq!("spread".parse(), Ok(Placement::Spread));
        assert_eq!("binpack".parse(), Ok(Placement::Binpack));
        assert!("Spread".parse::<Placement>().is_err());
    }
}
