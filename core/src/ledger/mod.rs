//! The capacity ledger: the one place that decides whether a pod's claims fit a node, why
//! not, and which fitting node is best.
//!
//! Pure code: no Kubernetes types, no I/O, no clock. The extender, the controller and
//! `stowage simulate` all call exactly these functions, so a placement the simulator shows
//! is the placement the cluster makes.
//!
//! ```text
//!  StorageNode status ─┐                         ┌─► filter:     fits / reason per node
//!  LocalVolumes ───────┼─► NodeState per node ──►│
//!  claims with a node ─┘   (capacity, reserve,   └─► prioritize: 0..=10 per node
//!                           allocated, reserved)        (spread | binpack)
//! ```
//!
//! ```
//! use stowage_core::ledger::{Bytes, Demand, Driver, FitOptions, Ledger, NodeState, Placement, PoolState};
//!
//! let mut small = PoolState::new("default", Driver::Btrfs, Bytes::gib(100));
//! small.allocated = Bytes::gib(90);
//! let big = PoolState::new("default", Driver::Btrfs, Bytes::gib(500));
//! let ledger: Ledger = [NodeState::new("a", vec![small]), NodeState::new("b", vec![big])]
//!     .into_iter()
//!     .collect();
//!
//! let demand = Demand::from_claims([("default", Bytes::gib(20))]).unwrap();
//! let verdict = ledger.filter(["a", "b"], &demand, &FitOptions::default());
//! assert_eq!(verdict.passed, ["b"]);
//! assert_eq!(
//!     verdict.failed[0].1.to_string(),
//!     "storage pool \"default\" has 10Gi free, the pod's claims need 20Gi"
//! );
//! assert_eq!(ledger.prioritize(["b"], &demand, Placement::Spread), [("b", 10)]);
//! ```

// An overflow or truncation in capacity arithmetic is an overcommit: forbid the silent kinds.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod book;
mod bytes;
mod capacity;
mod demand;
mod fit;
mod ids;
mod score;

#[cfg(test)]
mod tests;

pub use book::{Filtered, Ledger, LedgerError};
pub use bytes::{Bytes, MAX_BYTES, QuantityError};
pub use capacity::{Driver, NodeState, PoolState, Reserve};
pub use demand::{Demand, DemandOverflow};
pub use fit::{FitOptions, Shortfall, Unfit, check, check_aged};
pub use ids::{ClaimKey, NodeName, PoolName};
pub use score::{Best, MAX_SCORE, Placement, best, normalize, room_after, score, score_share};
