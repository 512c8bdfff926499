//! The node agent's filesystem foundation: pool config and probing, safe paths, and the
//! drivers that make volume directories
//!
//! ```text
//!   pool    the pool config (YAML from a ConfigMap) and the probe: ready?, capacity, free
//!   path    VolumeName (pvc-<uuid> only), PoolRoot (canonical root, symlink checks, archive names)
//!   driver  hostpath (plain directories) and btrfs (subvolumes with qgroup limits), behind
//!           PoolDriver: idempotent create / delete / archive / grow / scan
//! ```
//!
//! No Kubernetes here: the reconciler and reporter sit on top.

pub mod driver;
pub mod path;
pub mod pool;

pub use driver::{Btrfs, Hostpath, PoolDriver, VolumeError};
pub use path::{NameError, PathError, PoolRoot, VolumeName};
pub use pool::{ConfigError, PoolConfig, PoolReport, PoolSpec, VolumeMode};
