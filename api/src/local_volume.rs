//! LocalVolume: one node-local volume, asked for by the controller and made by an agent.
//!
//! The object is named after the PersistentVolume it backs (`pvc-<claim uid>`). The
//! controller creates it with `spec` and the finalizer
//! [`FINALIZER_AGENT_CLEANUP`](super::names::FINALIZER_AGENT_CLEANUP); the agent of
//! `spec.nodeName` makes the directory or subvolume, reports through the status
//! subresource, and on deletion deals with the data as `spec.onDelete` says before it
//! removes the finalizer. `kubectl get localvolumes` (`kubectl get lv`) is the audit trail.
//!
//! ```text
//!   controller ──create(spec, finalizer)──▶ LocalVolume ◀──status(phase, path)── agent
//!   controller ──delete──▶ deletionTimestamp ──▶ agent cleans up ──▶ finalizer removed
//! ```

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use stowage_core::ledger::{Bytes, ClaimKey, NodeName, PoolName};

/// `spec` of a LocalVolume, written once by the controller.
// Each `printcolumn(...)` repeats `type_ = ...`; clippy's `duplicated_attributes` reads that
// as a duplicate (a false positive on kube's column lists).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "LocalVolume",
    plural = "localvolumes",
    shortname = "lv",
    status = "LocalVolumeStatus",
    derive = "PartialEq",
    doc = "A node-local volume (named after its PersistentVolume), created by the stowage controller and made by the agent of spec.nodeName.",
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.nodeName",
        description = "Node holding the data"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        description = "Pool on that node"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.size",
        description = "The size the agent made it with (10Gi, 1.5Ti)"
    ),
    printcolumn(
        name = "SizeBytes",
        type_ = "integer",
        json_path = ".spec.sizeBytes",
        description = "Requested size in bytes",
        priority = 1
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Ready, Failed or Deleting"
    ),
    printcolumn(
        name = "Claim Namespace",
        type_ = "string",
        json_path = ".spec.claim.namespace",
        description = "Namespace of the claim"
    ),
    printcolumn(
        name = "Claim",
        type_ = "string",
        json_path = ".spec.claim.name",
        description = "Name of the claim"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LocalVolumeSpec {
    /// The node whose agent makes and owns the volume.
    pub node_name: String,
    /// The pool on that node, as configured for its agent.
    pub pool: String,
    /// Requested size in bytes (the claim's request, rounded up by the controller).
    pub size_bytes: u64,
    /// The claim the volume was provisioned for.
    pub claim: ClaimRef,
    /// What the agent does with the data once the LocalVolume is deleted.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// The PersistentVolumeClaim a LocalVolume was provisioned for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's uid. Names are reused; the uid tells a recreated claim from the original.
    pub uid: String,
}

/// What happens to a volume's data when its LocalVolume is deleted (defined in
/// stowage-core, which the NFS mode shares).
pub use stowage_core::volume::OnDelete;

/// `status` of a LocalVolume, written only by the agent of `spec.nodeName`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalVolumeStatus {
    /// Where the volume is in its life.
    #[serde(default)]
    pub phase: LocalVolumePhase,
    /// The volume's path on the node, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The size actually enforced, in bytes: a quota on drivers that enforce one, otherwise
    /// the requested size, which then only bounds placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `sizeBytes` for people (`10Gi`, `1.5Ti`), for the printer columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Why the volume is in its phase, for people (e.g. the error behind `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The phase of a LocalVolume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LocalVolumePhase {
    /// The agent has not made the volume yet.
    #[default]
    Pending,
    /// The volume exists on the node and can be mounted.
    Ready,
    /// The agent could not make the volume; `message` says why.
    Failed,
    /// The LocalVolume is being deleted and the agent is dealing with the data.
    Deleting,
}

// === impl LocalVolumeSpec ===

impl LocalVolumeSpec {
    /// The node, as the ledger names it.
    pub fn node(&self) -> NodeName {
        NodeName(self.node_name.clone())
    }

    /// The pool, as the ledger names it.
    pub fn pool_name(&self) -> PoolName {
        PoolName(self.pool.clone())
    }

    /// The requested size.
    pub fn size(&self) -> Bytes {
        Bytes(self.size_bytes)
    }
}

// === impl ClaimRef ===

impl ClaimRef {
    /// The claim's `namespace/name`, as the ledger keys it.
    pub fn key(&self) -> ClaimKey {
        ClaimKey::new(self.namespace.as_str(), self.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> LocalVolumeSpec {
        LocalVolumeSpec {
            node_name: "n1".into(),
            pool: "default".into(),
            size_bytes: 1 << 30,
            claim: ClaimRef {
                namespace: "apps".into(),
                name: "data".into(),
                uid: "1234".into(),
            },
            on_delete: OnDelete::Archive,
        }
    }

    #[test]
    fn local_volume_round_trips_with_the_documented_keys() {
        let mut lv = LocalVolume::new("pvc-1234", spec());
        lv.status = Some(LocalVolumeStatus {
            phase: LocalVolumePhase::Ready,
            path: Some("/var/lib/stowage/default/pvc-1234".into()),
            size_bytes: Some(1 << 30),
            size: None,
            message: None,
            observed_generation: Some(1),
        });
        let value = serde_json::to_value(&lv).unwrap();
        assert_eq!(value["apiVersion"], "stowage.io/v1alpha1");
        assert_eq!(value["kind"], "LocalVolume");
        assert_eq!(
            value["spec"],
            json!({
                "nodeName": "n1", "pool": "default", "sizeBytes": 1u64 << 30,
                "claim": {"namespace": "apps", "name": "data", "uid": "1234"},
                "onDelete": "archive"
            })
        );
        assert_eq!(
            value["status"],
            json!({
                "phase": "Ready", "path": "/var/lib/stowage/default/pvc-1234",
                "sizeBytes": 1u64 << 30, "observedGeneration": 1
            })
        );
        let back: LocalVolume = serde_json::from_value(value).unwrap();
        assert_eq!(back, lv);
    }

    #[test]
    fn on_delete_defaults_to_delete_and_phase_to_pending() {
        let spec: LocalVolumeSpec = serde_json::from_value(json!({
            "nodeName": "n1", "pool": "default", "sizeBytes": 1,
            "claim": {"namespace": "apps", "name": "data", "uid": "1234"}
        }))
        .unwrap();
        assert_eq!(spec.on_delete, OnDelete::Delete);
        let status: LocalVolumeStatus = serde_json::from_value(json!({})).unwrap();
        assert_eq!(status.phase, LocalVolumePhase::Pending);
    }

    #[test]
    fn unknown_on_delete_policy_is_rejected() {
        let r = serde_json::from_value::<OnDelete>(json!("shred"));
        assert!(r.is_err());
    }

    #[test]
    fn spec_speaks_ledger_types() {
        let s = spec();
        assert_eq!(s.node(), NodeName::from("n1"));
        assert_eq!(s.pool_name(), PoolName::from("default"));
        assert_eq!(s.size(), Bytes(1 << 30));
        assert_eq!(s.claim.key().to_string(), "apps/data");
    }
}
