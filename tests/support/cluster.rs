//! Objects the component tests put in front of the controller or the extender when no real
//! agent runs.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use stowage::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};
use stowage_testkit::fixtures::node;

/// Node `name` and its StorageNode, whose status reports what an agent would: one ready
/// btrfs pool `default` of `capacity` bytes with nothing allocated, and a fresh heartbeat.
pub async fn reporting_node(
    client: &kube::Client,
    name: &str,
    capacity: u64,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node(name).build())
        .await?;
    report_storage_node(client, name, capacity).await
}

/// The StorageNode `name` with the status [`reporting_node`] describes, for a Node the
/// caller made (e.g. one whose hostname label differs from its name).
pub async fn report_storage_node(
    client: &kube::Client,
    name: &str,
    capacity: u64,
) -> anyhow::Result<()> {
    let storage_nodes: Api<StorageNode> = Api::all(client.clone());
    storage_nodes
        .create(
            &PostParams::default(),
            &StorageNode::new(name, StorageNodeSpec {}),
        )
        .await?;
    let mut status = StorageNodeStatus {
        pools: vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            // Where the in-test agents put volumes: `/pools/<pool>/<name>`.
            path: "/pools/default".into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity,
            allocated_bytes: 0,
            available_bytes: capacity,
            volumes: 0,
            orphans: 0,
            ready: true,
            message: None,
        }],
        heartbeat_time: Some(Timestamp::now().to_string()),
        agent_version: Some("0.1.0".into()),
        ..Default::default()
    };
    status.refresh_totals();
    storage_nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    Ok(())
}
