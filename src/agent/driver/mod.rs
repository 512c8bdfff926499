//! Drivers that make, remove and archive volume directories inside a pool.
//!
//! Every operation is idempotent: the reconciler calls it again after a crash or a retry,
//! and "already done" is success.

pub mod hostpath;

pub use hostpath::Hostpath;

use std::path::PathBuf;

use super::path::PathError;

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
    /// The volume to act on does not exist.
    #[error("volume directory {path} does not exist")]
    Missing {
        /// Where the volume should be.
        path: PathBuf,
    },
}
