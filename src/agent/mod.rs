//! The node agent (`stowage agent`): its pools, the drivers that make volumes, the
//! LocalVolume reconciler and the StorageNode reporter.
//!
//! ```text
//!   pool       the pool config (YAML from a ConfigMap) and the probe: ready?, capacity, free
//!   path       VolumeName (pvc-<uuid> only), PoolRoot (canonical root, symlink checks, archive names)
//!   driver     hostpath (plain directories) and btrfs (subvolumes with qgroup limits),
//!              behind PoolDriver: idempotent create / delete / archive / grow / scan
//!   pool_set   the configured pools with their latest probe and open drivers
//!   reconcile  LocalVolume → plan → driver + status (kube-runtime Controller)
//!   report     StorageNode status: on every change and every heartbeat; orphans
//!   metrics    pool gauges, operation counters and latency
//!   role       AgentArgs and the wiring of the above
//! ```
//!
//! `pool`, `path` and `driver` know nothing of Kubernetes; the rest sits on top of them.

pub mod driver;
pub mod metrics;
pub mod path;
pub mod pool;
pub mod pool_set;
pub mod reconcile;
pub mod report;
pub mod role;

pub use driver::{Btrfs, Hostpath, PoolDriver, VolumeError};
pub use path::{NameError, PathError, PoolRoot, VolumeName};
pub use pool::{ConfigError, PoolConfig, PoolReport, PoolSpec, VolumeMode};
pub use role::{AgentArgs, StartError};
