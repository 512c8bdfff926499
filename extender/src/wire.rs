//! Wire types of `k8s.io/kube-scheduler/extender/v1`, as kube-scheduler encodes and decodes them.
//!
//! The Go structs carry no `json` tags, so every wrapper key is the Go field name in PascalCase,
//! acronyms included (`PodUID`, `NumPDBViolations`, `UID`): each field here names its key
//! explicitly instead of relying on `rename_all`, which would produce `PodUid`. Go decodes
//! keys case-insensitively; these types accept the PascalCase, camelCase and all-lowercase
//! spellings. Only `FailedAndUnresolvableNodes` is tagged `omitempty` upstream; every other
//! unset pointer, slice or map is sent as `null`.
//!
//! Embedded Kubernetes objects (`Pod`, `Node`) are k8s-openapi types. The scheduler sends them
//! from its informer cache without `apiVersion`/`kind`; k8s-openapi only checks those keys when
//! present, and these types encode embedded objects the same way, without them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The lowest score an extender may give a node (`MinExtenderPriority`).
pub const MIN_EXTENDER_PRIORITY: i64 = 0;

/// The highest score an extender may give a node (`MaxExtenderPriority`).
///
/// The scheduler multiplies a score by `weight × 10` and does not clamp it, so a larger value
/// silently outweighs every in-tree score plugin.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// Node name → human-readable reason it was filtered out (`FailedNodesMap`).
pub type FailedNodesMap = BTreeMap<String, String>;

/// The prioritize response: a bare JSON array, not an object (`HostPriorityList`).
pub type HostPriorityList = Vec<HostPriority>;

/// A list of full Node objects, as sent when the extender is not `nodeCacheCapable`.
///
/// `k8s_openapi::List<Node>` would work for decoding, but it always encodes
/// `apiVersion`/`kind` and rejects `"items": null`; the scheduler sends
/// `{"metadata":{},"items":[…]}`, which is what this type reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    /// List metadata; the scheduler sends an empty object.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The nodes; `null` decodes as empty.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        serialize_with = "bare_nodes"
    )]
    pub items: Vec<Node>,
}

/// Body of the filter and prioritize calls (`ExtenderArgs`).
///
/// Exactly one of `nodes` and `node_names` is set by the scheduler: `node_names` when the
/// extender is configured `nodeCacheCapable: true`, `nodes` otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderArgs {
    /// The pod being scheduled. Required: a request without it is invalid.
    #[serde(rename = "Pod", alias = "pod", serialize_with = "bare_pod")]
    pub pod: Pod,
    /// Candidate nodes as full objects (`nodeCacheCapable: false`).
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default
    )]
    pub node_names: Option<Vec<String>>,
}

/// Response to the filter call (`ExtenderFilterResult`).
///
/// The scheduler reads `node_names` only from a `nodeCacheCapable` extender and `nodes`
/// otherwise; answering in the wrong mode silently filters out every node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderFilterResult {
    /// Surviving nodes (not `nodeCacheCapable`): a subset of the input objects.
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Surviving node names (`nodeCacheCapable`); each must be one of the input names.
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default
    )]
    pub node_names: Option<Vec<String>>,
    /// Rejected nodes that preemption might make fit (status `Unschedulable`).
    #[serde(
        rename = "FailedNodes",
        alias = "failedNodes",
        alias = "failednodes",
        default,
        deserialize_with = "null_as_default"
    )]
    pub failed_nodes: FailedNodesMap,
    /// Rejected nodes that preemption cannot help (status `UnschedulableAndUnresolvable`);
    /// this map wins when a node is in both. Omitted when empty, as upstream (`omitempty`).
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        alias = "failedandunresolvablenodes",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub failed_and_unresolvable_nodes: FailedNodesMap,
    /// Non-empty ⇒ the scheduler treats the whole call as failed.
    #[serde(
        rename = "Error",
        alias = "error",
        default,
        deserialize_with = "null_as_default"
    )]
    pub error: String,
}

/// One node's score in the prioritize response (`HostPriority`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    /// Node name.
    #[serde(rename = "Host", alias = "host", default)]
    pub host: String,
    /// Score in `MIN_EXTENDER_PRIORITY..=MAX_EXTENDER_PRIORITY`.
    #[serde(rename = "Score", alias = "score", default)]
    pub score: i64,
}

/// Body of the bind call (`ExtenderBindingArgs`). stowage registers no bind verb.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingArgs {
    /// Name of the pod to bind.
    #[serde(rename = "PodName", alias = "podName", alias = "podname", default)]
    pub pod_name: String,
    /// Namespace of the pod to bind.
    #[serde(
        rename = "PodNamespace",
        alias = "podNamespace",
        alias = "podnamespace",
        default
    )]
    pub pod_namespace: String,
    /// UID of the pod to bind; the key is `PodUID`, not `PodUid`.
    #[serde(
        rename = "PodUID",
        alias = "podUID",
        alias = "podUid",
        alias = "poduid",
        default
    )]
    pub pod_uid: String,
    /// Node to bind the pod to.
    #[serde(rename = "Node", alias = "node", default)]
    pub node: String,
}

/// Response to the bind call (`ExtenderBindingResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderBindingResult {
    /// Non-empty ⇒ binding failed.
    #[serde(
        rename = "Error",
        alias = "error",
        default,
        deserialize_with = "null_as_default"
    )]
    pub error: String,
}

/// Body of the preempt call (`ExtenderPreemptionArgs`). stowage registers no preempt verb.
///
/// A `nodeCacheCapable` extender receives only `node_name_to_meta_victims`, any other only
/// `node_name_to_victims`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderPreemptionArgs {
    /// The preemptor pod.
    #[serde(rename = "Pod", alias = "pod", serialize_with = "bare_pod")]
    pub pod: Pod,
    /// Candidate nodes and the full pods that would be evicted there.
    #[serde(
        rename = "NodeNameToVictims",
        alias = "nodeNameToVictims",
        alias = "nodenametovictims",
        default
    )]
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    /// Candidate nodes and the UIDs of the pods that would be evicted there.
    #[serde(
        rename = "NodeNameToMetaVictims",
        alias = "nodeNameToMetaVictims",
        alias = "nodenametometavictims",
        default
    )]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// Response to the preempt call (`ExtenderPreemptionResult`); the scheduler reads only this
/// map in both modes, and drops candidate nodes left out of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtenderPreemptionResult {
    /// Surviving candidate nodes and their victims, by pod UID.
    #[serde(
        rename = "NodeNameToMetaVictims",
        alias = "nodeNameToMetaVictims",
        alias = "nodenametometavictims",
        default
    )]
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

/// Pods to evict on one node, as full objects (`Victims`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Victims {
    /// The pods.
    #[serde(
        rename = "Pods",
        alias = "pods",
        default,
        deserialize_with = "null_as_default",
        serialize_with = "bare_pods"
    )]
    pub pods: Vec<Pod>,
    /// PodDisruptionBudgets the eviction would violate; the key is `NumPDBViolations`.
    #[serde(
        rename = "NumPDBViolations",
        alias = "numPDBViolations",
        alias = "numPdbViolations",
        alias = "numpdbviolations",
        default
    )]
    pub num_pdb_violations: i64,
}

/// Pods to evict on one node, by UID (`MetaVictims`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaVictims {
    /// The pods.
    #[serde(
        rename = "Pods",
        alias = "pods",
        default,
        deserialize_with = "null_as_default"
    )]
    pub pods: Vec<MetaPod>,
    /// PodDisruptionBudgets the eviction would violate; the key is `NumPDBViolations`.
    #[serde(
        rename = "NumPDBViolations",
        alias = "numPDBViolations",
        alias = "numPdbViolations",
        alias = "numpdbviolations",
        default
    )]
    pub num_pdb_violations: i64,
}

/// A pod identified by UID only (`MetaPod`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaPod {
    /// Pod UID; the key is `UID`, not `Uid`.
    #[serde(rename = "UID", alias = "uid", alias = "Uid", default)]
    pub uid: String,
}

/// Go writes a nil slice, map or string field as `null`; read it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An embedded object as the scheduler encodes it: `metadata`, `spec`, `status`, and no
/// `apiVersion`/`kind` (k8s-openapi's own `Serialize` always writes those two).
#[derive(Serialize)]
struct Bare<'a, Spec, Status> {
    metadata: &'a ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: &'a Option<Spec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<Status>,
}

impl<'a> From<&'a Pod> for Bare<'a, PodSpec, PodStatus> {
    fn from(pod: &'a Pod) -> Self {
        Bare {
            metadata: &pod.metadata,
            spec: &pod.spec,
            status: &pod.status,
        }
    }
}

impl<'a> From<&'a Node> for Bare<'a, NodeSpec, NodeStatus> {
    fn from(node: &'a Node) -> Self {
        Bare {
            metadata: &node.metadata,
            spec: &node.spec,
            status: &node.status,
        }
    }
}

fn bare_pod<S: Serializer>(pod: &Pod, serializer: S) -> Result<S::Ok, S::Error> {
    Bare::from(pod).serialize(serializer)
}

fn bare_pods<S: Serializer>(pods: &[Pod], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(pods.iter().map(Bare::from))
}

fn bare_nodes<S: Serializer>(nodes: &[Node], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(nodes.iter().map(Bare::from))
}

#[cfg(test)]
mod tests;
