//! What more than one benchmark builds the same way.

use stowage::api::storage_node::{PoolStatus, StorageNodeStatus};

/// A gibibyte.
pub const GI: u64 = 1 << 30;

/// The status an agent reports for a node with one 2 TiB btrfs pool `default`, half of it
/// allocated, that reported at `now` (RFC 3339): the node every placement benchmark places
/// on.
pub fn half_full_node_status(now: &str) -> StorageNodeStatus {
    let capacity = 2 * 1024 * GI;
    let mut status = StorageNodeStatus {
        pools: vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            path: "/var/lib/stowage/default".into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity - capacity / 20,
            allocated_bytes: capacity / 2,
            available_bytes: capacity / 2,
            volumes: 10,
            ready: true,
            ..Default::default()
        }],
        heartbeat_time: Some(now.to_string()),
        agent_version: Some("0.1.0".into()),
        ..Default::default()
    };
    status.refresh_totals();
    status
}
