//! What both modes share about a volume's life: what happens to its data when the volume
//! is deleted. The agent applies it to node-local volumes (the LocalVolume's
//! `spec.onDelete`), the NFS mode to claim directories (the class's `onDelete`, recorded on
//! the PV).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens to a volume's data when its LocalVolume is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Remove the data.
    #[default]
    Delete,
    /// Move the data aside (renamed, kept on the pool) and free the volume's name.
    Archive,
    /// Leave the data where it is; an administrator cleans up.
    Retain,
}
