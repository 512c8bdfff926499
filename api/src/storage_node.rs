//! StorageNode: one node's storage pools as its agent reports them.
//!
//! The object is named after the node and carries no intent, only facts: the agent of that
//! node writes `status` through the status subresource, everyone else reads it. `spec` is
//! empty and exists because a custom resource needs one.
//!
//! Printer columns turn `kubectl get storagenodes` (`kubectl get sn`) into a capacity table.
//! JSONPath cannot sum over `status.pools[]`, so the agent also writes node totals
//! ([`StorageNodeStatus::refresh_totals`]) and the columns read those.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use stowage_core::ledger::{Bytes, Driver, NodeState, PoolState};

/// `spec` of a StorageNode: empty. What a node offers is configured on its agent and
/// reported in `status`; nothing about a node is requested through the API.
// Each `printcolumn(...)` repeats `type_ = ...`; clippy's `duplicated_attributes` reads that
// as a duplicate (a false positive on kube's column lists).
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "StorageNode",
    plural = "storagenodes",
    shortname = "sn",
    status = "StorageNodeStatus",
    derive = "PartialEq",
    doc = "The storage pools of one node (named after the node), as its stowage agent reports them.",
    printcolumn(
        name = "Ready",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "Whether every pool on the node can take volumes"
    ),
    printcolumn(
        name = "Pools",
        type_ = "integer",
        json_path = ".status.poolCount",
        description = "Number of pools"
    ),
    printcolumn(
        name = "Volumes",
        type_ = "integer",
        json_path = ".status.volumes",
        description = "Volumes over all pools"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacity",
        description = "Allocatable capacity over all pools (capacity less the reserves)"
    ),
    printcolumn(
        name = "Allocated",
        type_ = "string",
        json_path = ".status.allocated",
        description = "Promised to LocalVolumes"
    ),
    printcolumn(
        name = "Used%",
        type_ = "integer",
        json_path = ".status.usedPercent",
        description = "Allocated as a percentage of allocatable"
    ),
    printcolumn(
        name = "Free",
        type_ = "string",
        json_path = ".status.free",
        description = "Free on the filesystems"
    ),
    printcolumn(
        name = "CapacityBytes",
        type_ = "integer",
        json_path = ".status.capacityBytes",
        description = "Bytes of capacity over all pools",
        priority = 1
    ),
    printcolumn(
        name = "AllocatableBytes",
        type_ = "integer",
        json_path = ".status.allocatableBytes",
        description = "Capacity less the reserves, in bytes",
        priority = 1
    ),
    printcolumn(
        name = "AllocatedBytes",
        type_ = "integer",
        json_path = ".status.allocatedBytes",
        description = "Bytes promised to LocalVolumes",
        priority = 1
    ),
    printcolumn(
        name = "AvailableBytes",
        type_ = "integer",
        json_path = ".status.availableBytes",
        description = "Bytes free on the filesystems",
        priority = 1
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.heartbeatTime",
        description = "When the agent last reported"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct StorageNodeSpec {}

/// `status` of a StorageNode, written only by that node's agent.
///
/// The node totals (`capacityBytes` … `ready`) summarise `pools` for the printer columns;
/// the ledger reads the pools, never the totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeStatus {
    /// The node's pools.
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    /// When the agent last wrote this status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub heartbeat_time: Option<String>,
    /// Version of the agent that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Number of pools.
    #[serde(default)]
    pub pool_count: u64,
    /// Sum of the pools' `capacityBytes`.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Sum of the pools' `allocatableBytes`.
    #[serde(default)]
    pub allocatable_bytes: u64,
    /// Sum of the pools' `allocatedBytes`.
    #[serde(default)]
    pub allocated_bytes: u64,
    /// Sum of the pools' `availableBytes`.
    #[serde(default)]
    pub available_bytes: u64,
    /// Sum of the pools' `volumes`.
    #[serde(default)]
    pub volumes: u64,
    /// The node has at least one pool and every pool is ready.
    #[serde(default)]
    pub ready: bool,
    /// `allocatableBytes` for people (`250Gi`, `1.5Ti`): the printer columns show these,
    /// `kubectl get sn -o wide` the exact bytes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// `allocatedBytes` for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<String>,
    /// `availableBytes` for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<String>,
    /// `allocatedBytes` as a whole percentage of `allocatableBytes` (0 when nothing is
    /// allocatable).
    #[serde(default)]
    pub used_percent: u64,
}

/// One pool in a StorageNode's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Pool name, unique on the node.
    pub name: String,
    /// `hostpath` or `btrfs`.
    #[serde(default)]
    pub driver: String,
    /// Where the pool lives on the node.
    #[serde(default)]
    pub path: String,
    /// Size of the pool's filesystem (after any configured cap).
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Capacity less the configured reserve; for a btrfs pool also no more than its free
    /// space plus what its live volumes hold, less what it keeps outside them (archives,
    /// orphans).
    #[serde(default)]
    pub allocatable_bytes: u64,
    /// Sum of the sizes of the pool's LocalVolumes.
    #[serde(default)]
    pub allocated_bytes: u64,
    /// The filesystem's free space.
    #[serde(default)]
    pub available_bytes: u64,
    /// Number of volumes in the pool.
    #[serde(default)]
    pub volumes: u64,
    /// Volumes on disk that no LocalVolume claims.
    #[serde(default)]
    pub orphans: u64,
    /// Whether the agent can make volumes in the pool.
    #[serde(default)]
    pub ready: bool,
    /// Why the pool is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PoolStatus {
    /// The pool as the ledger sees it. An unknown driver is treated as `hostpath`, the one
    /// that cannot enforce sizes, so the physical free space still caps placements.
    pub fn to_pool_state(&self) -> PoolState {
        let capacity = Bytes(self.capacity_bytes);
        let mut p = PoolState::new(
            self.name.as_str(),
            self.driver.parse().unwrap_or(Driver::Hostpath),
            capacity,
        );
        p.reserve = capacity.saturating_sub(Bytes(self.allocatable_bytes));
        p.allocated = Bytes(self.allocated_bytes);
        p.available = Some(Bytes(self.available_bytes));
        p.ready = self.ready;
        p.message = self.message.clone();
        p
    }
}

impl StorageNodeStatus {
    /// Recomputes the node totals from `pools`. The agent calls this before every write, so
    /// the printer columns never disagree with the pools. Sums saturate: a column that shows
    /// `u64::MAX` is wrong, but a wrapped one would look plausible.
    pub fn refresh_totals(&mut self) {
        let sum =
            |f: fn(&PoolStatus) -> u64| self.pools.iter().map(f).fold(0u64, u64::saturating_add);
        let pool_count = u64::try_from(self.pools.len()).unwrap_or(u64::MAX);
        let capacity_bytes = sum(|p| p.capacity_bytes);
        let allocatable_bytes = sum(|p| p.allocatable_bytes);
        let allocated_bytes = sum(|p| p.allocated_bytes);
        let available_bytes = sum(|p| p.available_bytes);
        let volumes = sum(|p| p.volumes);
        let ready = !self.pools.is_empty() && self.pools.iter().all(|p| p.ready);
        self.pool_count = pool_count;
        self.capacity_bytes = capacity_bytes;
        self.allocatable_bytes = allocatable_bytes;
        self.allocated_bytes = allocated_bytes;
        self.available_bytes = available_bytes;
        self.volumes = volumes;
        self.ready = ready;
        self.capacity = Some(Bytes(allocatable_bytes).to_string());
        self.allocated = Some(Bytes(allocated_bytes).to_string());
        self.free = Some(Bytes(available_bytes).to_string());
        self.used_percent = if allocatable_bytes == 0 {
            0
        } else {
            let pct = u128::from(allocated_bytes) * 100 / u128::from(allocatable_bytes);
            u64::try_from(pct).unwrap_or(u64::MAX)
        };
    }

    /// The node as the ledger sees it, given how long ago the agent reported.
    pub fn to_node_state(&self, name: &str, heartbeat_age: Option<Duration>) -> NodeState {
        let mut n = NodeState::new(
            name,
            self.pools.iter().map(PoolStatus::to_pool_state).collect(),
        );
        n.heartbeat_age = heartbeat_age;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status_translates_reserve_and_physical_space() {
        let s: PoolStatus = serde_json::from_value(serde_json::json!({
            "name": "default", "driver": "btrfs", "path": "/var/lib/stowage",
            "capacityBytes": 1000, "allocatableBytes": 900, "allocatedBytes": 100,
            "availableBytes": 700, "volumes": 2, "ready": true
        }))
        .unwrap();
        let p = s.to_pool_state();
        assert_eq!(p.driver, Driver::Btrfs);
        assert_eq!(p.reserve, Bytes(100));
        assert_eq!(p.allocatable(), Bytes(900));
        assert_eq!(p.free(), Bytes(800));
        assert_eq!(serde_json::to_value(&s).unwrap()["capacityBytes"], 1000);
    }

    fn pool(name: &str, capacity: u64, ready: bool) -> PoolStatus {
        PoolStatus {
            name: name.into(),
            driver: "hostpath".into(),
            path: format!("/var/lib/stowage/{name}"),
            capacity_bytes: capacity,
            allocatable_bytes: capacity - 10,
            allocated_bytes: 20,
            available_bytes: capacity - 30,
            volumes: 2,
            orphans: 0,
            ready,
            message: None,
        }
    }

    #[test]
    fn totals_sum_the_pools_and_ready_needs_every_pool() {
        let mut s = StorageNodeStatus {
            pools: vec![pool("a", 1000, true), pool("b", 500, true)],
            ..Default::default()
        };
        s.refresh_totals();
        assert_eq!(
            (s.pool_count, s.capacity_bytes, s.allocatable_bytes),
            (2, 1500, 1480)
        );
        assert_eq!(
            (s.allocated_bytes, s.available_bytes, s.volumes),
            (40, 1440, 4)
        );
        assert!(s.ready);

        s.pools[1].ready = false;
        s.refresh_totals();
        assert!(!s.ready);

        s.pools.clear();
        s.refresh_totals();
        assert_eq!(s.pool_count, 0);
        assert!(!s.ready, "a node without pools cannot take volumes");
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let mut s = StorageNodeStatus {
            pools: vec![pool("a", u64::MAX, true), pool("b", 1000, true)],
            ..Default::default()
        };
        s.refresh_totals();
        assert_eq!(s.capacity_bytes, u64::MAX);
    }

    #[test]
    fn storage_node_round_trips_with_the_documented_keys() {
        let mut status = StorageNodeStatus {
            pools: vec![pool("default", 1000, true)],
            heartbeat_time: Some("2025-01-02T03:04:05Z".into()),
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        };
        status.refresh_totals();
        let mut node = StorageNode::new("n1", StorageNodeSpec {});
        node.status = Some(status);

        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["apiVersion"], "stowage.io/v1alpha1");
        assert_eq!(json["kind"], "StorageNode");
        let st = &json["status"];
        for key in [
            "capacityBytes",
            "allocatableBytes",
            "allocatedBytes",
            "availableBytes",
            "volumes",
            "ready",
            "heartbeatTime",
            "agentVersion",
            "poolCount",
        ] {
            assert!(st.get(key).is_some(), "status.{key} missing in {st}");
        }
        let p = &st["pools"][0];
        for key in [
            "name",
            "driver",
            "path",
            "capacityBytes",
            "allocatableBytes",
            "allocatedBytes",
            "availableBytes",
            "volumes",
            "orphans",
            "ready",
        ] {
            assert!(p.get(key).is_some(), "pools[0].{key} missing in {p}");
        }
        let back: StorageNode = serde_json::from_value(json).unwrap();
        assert_eq!(back, node);
    }

    #[test]
    fn status_written_before_the_totals_existed_still_reads() {
        let s: StorageNodeStatus = serde_json::from_value(serde_json::json!({
            "pools": [{"name": "default"}], "heartbeatTime": "2025-01-02T03:04:05Z"
        }))
        .unwrap();
        assert_eq!(s.capacity_bytes, 0);
        assert_eq!(s.pools[0].name, "default");
    }

    #[test]
    fn totals_carry_sizes_for_people_and_the_share_used() {
        let pool = |allocatable: u64, allocated: u64, available: u64| PoolStatus {
            allocatable_bytes: allocatable,
            allocated_bytes: allocated,
            available_bytes: available,
            ..PoolStatus::default()
        };
        let mut status = StorageNodeStatus {
            pools: vec![
                pool(250 << 30, 100 << 30, 200 << 30),
                pool(270_553_174_016, 0, 1 << 40),
            ],
            ..StorageNodeStatus::default()
        };
        status.refresh_totals();
        assert_eq!(status.capacity.as_deref(), Some("502Gi"));
        assert_eq!(status.allocated.as_deref(), Some("100Gi"));
        assert_eq!(status.free.as_deref(), Some("1.2Ti"));
        assert_eq!(status.used_percent, 19);
        let mut empty = StorageNodeStatus::default();
        empty.refresh_totals();
        assert_eq!(empty.used_percent, 0);
        assert_eq!(empty.capacity.as_deref(), Some("0"));
    }
}
