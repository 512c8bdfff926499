//! StorageNodes: the agents' reports of their nodes' pools. Of a StorageNode the index
//! keeps its status, by name (all it reads of one), with the spare capacity decoding left
//! in the pool list given back ([`compact_status`]); the ledger's entry of each node is
//! derived from it (see the parent module).
//!
//! Every agent writes a heartbeat every 10 s, so at 5,000 nodes hundreds of updates a
//! second change nothing but `status.heartbeatTime`: those update the node's heartbeat in
//! the derived ledger in place. A re-list is buffered and replaces every StorageNode at
//! once (a few thousand small objects at most).

use kube::ResourceExt;

use super::{Buffered, Indexed, Reset};
use crate::api::storage_node::{StorageNode, StorageNodeStatus};
use crate::cache::watch::Kind;
use crate::cache::{ClusterIndex, heartbeat};

impl ClusterIndex {
    /// Adds or replaces a StorageNode (keyed by name).
    ///
    /// Every agent writes a heartbeat every 10 s, so at 5,000 nodes hundreds of updates a
    /// second change nothing but `status.heartbeatTime`. Those update the derived ledger in
    /// place (the node's heartbeat) instead of discarding it, so extender requests do not
    /// re-derive the whole cluster after every heartbeat.
    pub fn apply_storage_node(&mut self, node: StorageNode) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = compact_status(node.status);
        let heartbeat_only = self
            .nodes
            .get(name.as_str())
            .is_some_and(|old| only_heartbeat_differs(old.as_ref(), status.as_ref()));
        let beat = heartbeat(status.as_ref());
        self.nodes.insert(name.as_str().into(), status);
        match self.base.by_name.get(name.as_str()) {
            Some(i) if heartbeat_only => {
                self.base.nodes[i].heartbeat = beat;
                self.base.summaries[i].heartbeat = beat;
            }
            _ => self.refresh_node(&name),
        }
    }

    /// Removes a StorageNode.
    pub fn delete_storage_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.base.remove(name);
            self.compact_base();
        }
    }

    /// Replaces every StorageNode with a re-list.
    pub fn reset_storage_nodes(&mut self, nodes: impl IntoIterator<Item = StorageNode>) {
        self.nodes = nodes
            .into_iter()
            .map(|n| {
                (
                    n.metadata.name.as_deref().unwrap_or_default().into(),
                    compact_status(n.status),
                )
            })
            .collect();
        self.rebuild();
    }

    /// The path of pool `pool` on node `node`, as its StorageNode's status reports it.
    pub fn pool_path(&self, node: &str, pool: &str) -> Option<String> {
        self.nodes
            .get(node)?
            .as_ref()?
            .pools
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.path.clone())
    }

    /// Whether a StorageNode called `name` is cached.
    pub fn has_storage_node(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }
}

impl Indexed for StorageNode {
    const KIND: Kind = Kind::StorageNode;
    type Relist = Buffered<Self>;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_storage_node(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_storage_node(&object.name_any());
    }
}

impl Reset for StorageNode {
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>) {
        index.reset_storage_nodes(objects);
    }
}

/// `status` without the spare capacity decoding left in its pool list (room for four
/// pools where one or two are reported: 2 MiB over 5,000 nodes).
fn compact_status(mut status: Option<StorageNodeStatus>) -> Option<StorageNodeStatus> {
    if let Some(status) = &mut status {
        status.pools.shrink_to_fit();
    }
    status
}

/// Whether `new` differs from `old` in nothing the ledger reads but the heartbeat time.
fn only_heartbeat_differs(
    old: Option<&StorageNodeStatus>,
    new: Option<&StorageNodeStatus>,
) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => {
            a.pools == b.pools
                && StorageNodeStatus {
                    heartbeat_time: None,
                    ..a.clone()
                } == StorageNodeStatus {
                    heartbeat_time: None,
                    ..b.clone()
                }
        }
        (None, None) => true,
        _ => false,
    }
}
