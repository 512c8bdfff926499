//! Drivers that make, remove and archive volume directories inside a pool.
//!
//! Every operation is idempotent: the reconciler calls it again after a crash or a retry,
//! and "already done" is success.

pub mod btrfs;
pub mod hostpath;

pub use btrfs::Btrfs;
pub use hostpath::Hostpath;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use super::path::{PathError, PoolRoot, VolumeName};
use super::pool::{PoolSpec, VolumeMode};
use crate::ledger::{Bytes, Driver};

/// The driver of one pool, chosen by the pool config's `driver`. The reconciler talks only
/// to this type; every method has the contract of the [`Hostpath`] method of the same name,
/// and [`Btrfs`] adds its refusals (a plain directory where a subvolume should be, nested
/// subvolumes on delete).
///
/// Keep one value per pool for the agent's lifetime rather than opening it per operation:
/// the btrfs driver retries removing stale qgroups from it.
#[derive(Clone, Debug)]
pub enum PoolDriver {
    /// Plain directories; sizes not enforced.
    Hostpath(Hostpath),
    /// btrfs subvolumes with a qgroup limit each; sizes enforced.
    Btrfs(Btrfs),
}

impl PoolDriver {
    /// Opens the driver for a configured pool. Fails when the pool root cannot be opened
    /// (missing, not a directory, not btrfs for the btrfs driver); the caller reports the
    /// pool not ready with that reason.
    pub fn open(spec: &PoolSpec) -> Result<Self, VolumeError> {
        let root = PoolRoot::open(&spec.path)?;
        match spec.driver {
            Driver::Hostpath => Ok(PoolDriver::Hostpath(Hostpath::new(root))),
            Driver::Btrfs => Ok(PoolDriver::Btrfs(Btrfs::open(root)?)),
        }
    }

    /// The pool root.
    pub fn root(&self) -> &PoolRoot {
        match self {
            PoolDriver::Hostpath(d) => d.root(),
            PoolDriver::Btrfs(d) => d.root(),
        }
    }

    /// See [`Hostpath::create`].
    pub fn create(
        &self,
        name: &VolumeName,
        size: Bytes,
        mode: VolumeMode,
    ) -> Result<PathBuf, VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.create(name, size, mode),
            PoolDriver::Btrfs(d) => d.create(name, size, mode),
        }
    }

    /// See [`Hostpath::delete`].
    pub fn delete(&self, name: &VolumeName) -> Result<(), VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.delete(name),
            PoolDriver::Btrfs(d) => d.delete(name),
        }
    }

    /// See [`Hostpath::archive`].
    pub fn archive(
        &self,
        name: &VolumeName,
        now: SystemTime,
    ) -> Result<Option<PathBuf>, VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.archive(name, now),
            PoolDriver::Btrfs(d) => d.archive(name, now),
        }
    }

    /// See [`Hostpath::discard_staging`].
    pub fn discard_staging(&self, name: &VolumeName) -> Result<(), VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.discard_staging(name),
            PoolDriver::Btrfs(d) => d.discard_staging(name),
        }
    }

    /// See [`Hostpath::grow`].
    pub fn grow(&self, name: &VolumeName, size: Bytes) -> Result<(), VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.grow(name, size),
            PoolDriver::Btrfs(d) => d.grow(name, size),
        }
    }

    /// See [`Hostpath::scan`]; btrfs also says what each volume and the pool's other
    /// subvolumes hold ([`Btrfs::survey`]).
    pub fn scan(&self) -> Result<Scan, VolumeError> {
        match self {
            PoolDriver::Hostpath(d) => d.scan().map(Scan::from),
            PoolDriver::Btrfs(d) => d.survey(),
        }
    }
}

/// What a scan found in a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The volumes, sorted.
    pub names: Vec<VolumeName>,
    /// What each volume holds, where the driver can tell: btrfs reads its qgroups'
    /// referenced bytes (subvolumes nested in a volume included); hostpath cannot tell.
    pub held: BTreeMap<VolumeName, Bytes>,
    /// What the pool's subvolumes that are not volumes hold (btrfs: archives, staging
    /// leftovers, other names); zero for hostpath.
    pub other: Bytes,
}

impl From<Vec<VolumeName>> for Scan {
    fn from(names: Vec<VolumeName>) -> Self {
        Scan {
            names,
            ..Scan::default()
        }
    }
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The path is unsafe or the filesystem refused.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Something other than a directory sits where the volume should be.
    #[error(
        "{path} exists but is not a directory; refusing to touch it (move it away by hand if it is not needed)"
    )]
    NotADirectory {
        /// The entry in the way.
        path: PathBuf,
    },
    /// A plain directory sits where a btrfs subvolume should be: the btrfs driver cannot
    /// limit its size, so it neither adopts nor deletes it.
    #[error(
        "{path} is a plain directory, not a btrfs subvolume, so its size cannot be limited; the btrfs driver neither adopts nor deletes it (move its data into a subvolume or remove it by hand)"
    )]
    NotASubvolume {
        /// The directory in the way.
        path: PathBuf,
    },
    /// The btrfs driver's pool is not on a btrfs filesystem.
    #[error(
        "pool directory {path} is not on a btrfs filesystem; mount a btrfs filesystem there or use driver hostpath"
    )]
    NotBtrfs {
        /// The pool root.
        path: PathBuf,
    },
    /// Subvolumes kept being made inside the volume while the ones found were destroyed
    /// (btrfs destroys a subvolume only once none is linked in it).
    #[error(
        "{path} still holds btrfs subvolumes made inside it after those found were destroyed: something is still making them there; the delete is retried (stop the workload, or delete them by hand with btrfs subvolume delete)"
    )]
    NestedSubvolume {
        /// The volume, or the nested subvolume in which one appeared.
        path: PathBuf,
    },
    /// A btrfs ioctl failed.
    #[error("cannot {op} {path} (btrfs ioctl){hint}")]
    Btrfs {
        /// What was being done, e.g. "set the qgroup limit of".
        op: &'static str,
        /// The subvolume (or pool root) operated on.
        path: PathBuf,
        /// What to do about it, if known (starts with "; "), else empty.
        hint: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The volume to act on does not exist.
    #[error("volume directory {path} does not exist")]
    Missing {
        /// Where the volume should be.
        path: PathBuf,
    },
}
