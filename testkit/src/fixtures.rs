//! Fluent builders for the objects tests create, in the style of controller-rs's
//! `Document::test()`: `pvc("ns", "data").size("10Gi").class("local").build()`.
//!
//! Builders produce objects the strict server accepts (a Pod has a container, a claim has an
//! access mode and a size). Status set here (`PvcBuilder::phase`, `NodeBuilder::ready`) is
//! kept by the server only where the real one keeps it on create (Nodes); for Pods and claims
//! it is for pure unit tests, and tests against the server write status through `/status`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            Container, LocalVolumeSource, NFSVolumeSource, Namespace, Node, NodeCondition,
            NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus,
            ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimStatus, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec,
            Pod, PodSpec, Taint, Volume, VolumeMount, VolumeNodeAffinity,
            VolumeResourceRequirements,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

/// The annotation the scheduler sets on a WaitForFirstConsumer claim.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The node label every node carries.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        ..ObjectMeta::default()
    }
}

fn set(map: &mut Option<BTreeMap<String, String>>, k: &str, v: &str) {
    map.get_or_insert_with(BTreeMap::new)
        .insert(k.to_string(), v.to_string());
}

macro_rules! metadata_setters {
    () => {
        /// Adds a label.
        pub fn label(mut self, key: &str, value: &str) -> Self {
            set(&mut self.meta.labels, key, value);
            self
        }

        /// Adds an annotation.
        pub fn annotation(mut self, key: &str, value: &str) -> Self {
            set(&mut self.meta.annotations, key, value);
            self
        }

        /// Adds a finalizer.
        pub fn finalizer(mut self, name: &str) -> Self {
            self.meta
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(name.to_string());
            self
        }
    };
}

// === PersistentVolumeClaim ===

/// A claim `ns/name` requesting 1Gi, ReadWriteOnce, with no class set.
pub fn pvc(ns: &str, name: &str) -> PvcBuilder {
    PvcBuilder {
        meta: meta(Some(ns), name),
        spec: PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity("1Gi".to_string()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        },
        status: None,
    }
}

/// Builder for [`PersistentVolumeClaim`]s.
#[derive(Debug, Clone)]
pub struct PvcBuilder {
    meta: ObjectMeta,
    spec: PersistentVolumeClaimSpec,
    status: Option<PersistentVolumeClaimStatus>,
}

impl PvcBuilder {
    metadata_setters!();

    /// `spec.resources.requests.storage`.
    pub fn size(mut self, quantity: &str) -> Self {
        self.spec
            .resources
            .get_or_insert_with(VolumeResourceRequirements::default)
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert("storage".to_string(), Quantity(quantity.to_string()));
        self
    }

    /// `spec.storageClassName`.
    pub fn class(mut self, name: &str) -> Self {
        self.spec.storage_class_name = Some(name.to_string());
        self
    }

    /// The scheduler's `volume.kubernetes.io/selected-node` annotation.
    pub fn selected_node(self, node: &str) -> Self {
        self.annotation(SELECTED_NODE, node)
    }

    /// Replaces the access modes.
    pub fn access_modes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, modes: I) -> Self {
        self.spec.access_modes = Some(modes.into_iter().map(Into::into).collect());
        self
    }

    /// `spec.volumeName` (a claim pre-bound to a volume).
    pub fn volume_name(mut self, pv: &str) -> Self {
        self.spec.volume_name = Some(pv.to_string());
        self
    }

    /// `status.phase` (kept only by pure unit tests; the server resets status on create).
    pub fn phase(mut self, phase: &str) -> Self {
        self.status
            .get_or_insert_with(PersistentVolumeClaimStatus::default)
            .phase = Some(phase.to_string());
        self
    }

    /// The claim.
    pub fn build(self) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: self.meta,
            spec: Some(self.spec),
            status: self.status,
        }
    }
}

// === Pod ===

/// A pod `ns/name` with one `busybox` container named `app`.
pub fn pod(ns: &str, name: &str) -> PodBuilder {
    PodBuilder {
        meta: meta(Some(ns), name),
        spec: PodSpec {
            containers: vec![Container {
                name: "app".to_string(),
                image: Some("busybox".to_string()),
                ..Container::default()
            }],
            ..PodSpec::default()
        },
    }
}

/// Builder for [`Pod`]s.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    meta: ObjectMeta,
    spec: PodSpec,
}

impl PodBuilder {
    metadata_setters!();

    /// Mounts each claim (by name) as a volume of the same name at `/data/<claim>`.
    pub fn claims<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, claims: I) -> Self {
        for claim in claims {
            let claim = claim.as_ref();
            self.spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: claim.to_string(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_string(),
                    read_only: None,
                }),
                ..Volume::default()
            });
            for c in &mut self.spec.containers {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name: claim.to_string(),
                        mount_path: format!("/data/{claim}"),
                        ..VolumeMount::default()
                    });
            }
        }
        self
    }

    /// `spec.schedulerName`.
    pub fn scheduler(mut self, name: &str) -> Self {
        self.spec.scheduler_name = Some(name.to_string());
        self
    }

    /// `spec.nodeName` (only at creation: afterwards a pod is placed through `pods/binding`).
    pub fn node(mut self, node: &str) -> Self {
        self.spec.node_name = Some(node.to_string());
        self
    }

    /// Adds a `spec.nodeSelector` entry.
    pub fn node_selector(mut self, key: &str, value: &str) -> Self {
        set(&mut self.spec.node_selector, key, value);
        self
    }

    /// The pod.
    pub fn build(self) -> Pod {
        Pod {
            metadata: self.meta,
            spec: Some(self.spec),
            status: None,
        }
    }
}

// === Node ===

/// A node labelled `kubernetes.io/hostname=<name>`, Ready.
pub fn node(name: &str) -> NodeBuilder {
    let mut meta = meta(None, name);
    set(&mut meta.labels, HOSTNAME_LABEL, name);
    NodeBuilder {
        meta,
        spec: NodeSpec::default(),
        ready: true,
    }
}

/// Builder for [`Node`]s.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    meta: ObjectMeta,
    spec: NodeSpec,
    ready: bool,
}

impl NodeBuilder {
    metadata_setters!();

    /// The `Ready` condition's status (Nodes keep the status they register with).
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// `spec.unschedulable: true` (cordoned).
    pub fn unschedulable(mut self) -> Self {
        self.spec.unschedulable = Some(true);
        self
    }

    /// Adds a taint.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.spec.taints.get_or_insert_with(Vec::new).push(Taint {
            key: key.to_string(),
            value: Some(value.to_string()),
            effect: effect.to_string(),
            time_added: None,
        });
        self
    }

    /// The node.
    pub fn build(self) -> Node {
        let status = NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_string(),
                status: if self.ready { "True" } else { "False" }.to_string(),
                reason: Some(
                    if self.ready {
                        "KubeletReady"
                    } else {
                        "KubeletNotReady"
                    }
                    .to_string(),
                ),
                ..NodeCondition::default()
            }]),
            // Room for pods, as a kubelet reports it: kube-scheduler's NodeResourcesFit
            // rejects a node without allocatable `pods`.
            capacity: Some(node_resources()),
            allocatable: Some(node_resources()),
            ..NodeStatus::default()
        };
        Node {
            metadata: self.meta,
            spec: Some(self.spec),
            status: Some(status),
        }
    }
}

fn node_resources() -> BTreeMap<String, Quantity> {
    [("cpu", "64"), ("memory", "256Gi"), ("pods", "1000")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

// === StorageClass ===

/// A StorageClass with the given name and provisioner `local.stowage.io`.
pub fn storage_class(name: &str) -> StorageClassBuilder {
    StorageClassBuilder {
        class: StorageClass {
            metadata: meta(None, name),
            provisioner: "local.stowage.io".to_string(),
            ..StorageClass::default()
        },
    }
}

/// Builder for [`StorageClass`]es.
#[derive(Debug, Clone)]
pub struct StorageClassBuilder {
    class: StorageClass,
}

impl StorageClassBuilder {
    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        set(&mut self.class.metadata.labels, key, value);
        self
    }

    /// `provisioner`.
    pub fn provisioner(mut self, name: &str) -> Self {
        self.class.provisioner = name.to_string();
        self
    }

    /// `volumeBindingMode: WaitForFirstConsumer`.
    pub fn wait_for_first_consumer(mut self) -> Self {
        self.class.volume_binding_mode = Some("WaitForFirstConsumer".to_string());
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, key: &str, value: &str) -> Self {
        set(&mut self.class.parameters, key, value);
        self
    }

    /// `reclaimPolicy` (`Delete` or `Retain`).
    pub fn reclaim(mut self, policy: &str) -> Self {
        self.class.reclaim_policy = Some(policy.to_string());
        self
    }

    /// `allowVolumeExpansion`.
    pub fn allow_expansion(mut self, allow: bool) -> Self {
        self.class.allow_volume_expansion = Some(allow);
        self
    }

    /// Marks the class as the cluster default (the `DefaultStorageClass` admission plugin
    /// then fills it into claims without a class).
    pub fn default_class(mut self) -> Self {
        set(
            &mut self.class.metadata.annotations,
            "storageclass.kubernetes.io/is-default-class",
            "true",
        );
        self
    }

    /// The class.
    pub fn build(self) -> StorageClass {
        self.class
    }
}

// === Namespace ===

/// A namespace.
pub fn namespace(name: &str) -> NamespaceBuilder {
    NamespaceBuilder {
        meta: meta(None, name),
    }
}

/// Builder for [`Namespace`]s.
#[derive(Debug, Clone)]
pub struct NamespaceBuilder {
    meta: ObjectMeta,
}

impl NamespaceBuilder {
    metadata_setters!();

    /// The namespace.
    pub fn build(self) -> Namespace {
        Namespace {
            metadata: self.meta,
            ..Namespace::default()
        }
    }
}

// === PersistentVolume ===

/// A PersistentVolume of 1Gi, ReadWriteOnce, reclaim policy Delete, with no source yet
/// (add one with [`PvBuilder::local`], [`PvBuilder::nfs`]).
pub fn pv(name: &str) -> PvBuilder {
    PvBuilder {
        meta: meta(None, name),
        spec: PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity("1Gi".to_string()),
            )])),
            persistent_volume_reclaim_policy: Some("Delete".to_string()),
            ..PersistentVolumeSpec::default()
        },
    }
}

/// Builder for [`PersistentVolume`]s.
#[derive(Debug, Clone)]
pub struct PvBuilder {
    meta: ObjectMeta,
    spec: PersistentVolumeSpec,
}

impl PvBuilder {
    metadata_setters!();

    /// `spec.capacity.storage`.
    pub fn size(mut self, quantity: &str) -> Self {
        self.spec
            .capacity
            .get_or_insert_with(BTreeMap::new)
            .insert("storage".to_string(), Quantity(quantity.to_string()));
        self
    }

    /// `spec.storageClassName`.
    pub fn class(mut self, name: &str) -> Self {
        self.spec.storage_class_name = Some(name.to_string());
        self
    }

    /// A `local` volume at `path` on `node` (with the node affinity the server requires).
    pub fn local(mut self, node: &str, path: &str) -> Self {
        self.spec.local = Some(LocalVolumeSource {
            path: path.to_string(),
            fs_type: None,
        });
        self.node_affinity(node)
    }

    /// Requires `kubernetes.io/hostname in (node)`.
    pub fn node_affinity(mut self, node: &str) -> Self {
        self.spec.node_affinity = Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME_LABEL.to_string(),
                        operator: "In".to_string(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    match_fields: None,
                }],
            }),
        });
        self
    }

    /// An `nfs` volume.
    pub fn nfs(mut self, server: &str, path: &str) -> Self {
        self.spec.nfs = Some(NFSVolumeSource {
            server: server.to_string(),
            path: path.to_string(),
            read_only: None,
        });
        self
    }

    /// `spec.claimRef` to `ns/name`.
    pub fn claim(mut self, ns: &str, name: &str) -> Self {
        self.spec.claim_ref = Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("PersistentVolumeClaim".to_string()),
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            ..ObjectReference::default()
        });
        self
    }

    /// `spec.claimRef.uid` (after [`PvBuilder::claim`]): pre-bound to exactly that claim, as
    /// a provisioner binds the volume it made for it.
    pub fn claim_uid(mut self, uid: Option<&str>) -> Self {
        self.spec.claim_ref.get_or_insert_with(Default::default).uid = uid.map(str::to_string);
        self
    }

    /// `spec.persistentVolumeReclaimPolicy`.
    pub fn reclaim(mut self, policy: &str) -> Self {
        self.spec.persistent_volume_reclaim_policy = Some(policy.to_string());
        self
    }

    /// The volume.
    pub fn build(self) -> PersistentVolume {
        PersistentVolume {
            metadata: self.meta,
            spec: Some(self.spec),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_builder_sets_size_class_and_selected_node() {
        let claim = pvc("ns", "data")
            .size("10Gi")
            .class("local")
            .selected_node("n1")
            .build();
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("local"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "10Gi"
        );
        assert_eq!(claim.metadata.annotations.unwrap()[SELECTED_NODE], "n1");
    }

    #[test]
    fn pod_builder_mounts_each_claim() {
        let p = pod("ns", "p")
            .claims(["a", "b"])
            .scheduler("stowage")
            .build();
        let spec = p.spec.unwrap();
        assert_eq!(spec.volumes.unwrap().len(), 2);
        assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 2);
        assert_eq!(spec.scheduler_name.as_deref(), Some("stowage"));
    }
}
