//! Well-known strings: the API group, finalizers, annotation and label keys, provisioner
//! names and field managers.
//!
//! Every Kubernetes key stowage reads or writes is spelled here once, so a typo is a compile
//! error instead of a claim that never provisions. Keys owned by Kubernetes carry a note on
//! who sets them and why stowage cares.

/// The API group of stowage's custom resources (StorageNode, LocalVolume).
pub const GROUP: &str = "stowage.io";

/// The one served and stored version of stowage's custom resources.
pub const VERSION: &str = "v1alpha1";

/// `apiVersion` of stowage's custom resources: [`GROUP`]`/`[`VERSION`].
pub const API_VERSION: &str = "stowage.io/v1alpha1";

/// Finalizer the controller puts on every LocalVolume. The agent of `spec.nodeName` removes
/// it only after it has deleted, archived or retained the data as `spec.onDelete` says, so
/// deleting the object can never orphan a directory or subvolume silently.
pub const FINALIZER_AGENT_CLEANUP: &str = "stowage.io/agent-cleanup";

/// Finalizer the controller puts on every PersistentVolume it provisions. It is removed only
/// after the volume's LocalVolume is gone (the agent has dealt with the data), so deleting a
/// PV, by the reclaim policy or by hand, cannot leave data behind unnoticed.
pub const FINALIZER_PV_CLEANUP: &str = "stowage.io/pv-cleanup";

/// Annotation the scheduler puts on a WaitForFirstConsumer claim once it has picked a node
/// for the consuming pod. The local provisioner creates the volume on exactly that node.
pub const ANNOTATION_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// Annotation the PV controller puts on a claim to name the provisioner that should serve
/// it. A claim is ours when this equals [`PROVISIONER_LOCAL`] or [`PROVISIONER_NFS`].
pub const ANNOTATION_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";

/// Deprecated spelling of [`ANNOTATION_STORAGE_PROVISIONER`]. Kubernetes still writes both
/// (KEP-2846's migration), and older clusters only this one, so both are read.
pub const ANNOTATION_BETA_STORAGE_PROVISIONER: &str =
    "volume.beta.kubernetes.io/storage-provisioner";

/// Annotation on a PersistentVolume naming the provisioner that created it. The PV
/// controller only lets that provisioner delete the volume, so stowage sets it on every PV
/// it creates and acts only on PVs that carry one of its names.
pub const ANNOTATION_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Annotation on a PersistentVolume saying a controller bound it, as kube-controller-manager
/// and sig-storage-lib-external-provisioner set on the PVs they provision. stowage sets it
/// on its PVs too: kube-controller-manager's PV controller (1.19 and later) then asks the
/// API server for a claim missing from its own store before it calls the volume `Released`,
/// instead of releasing a PV made before its throttled worker has reached the claim.
pub const ANNOTATION_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// Provisioner name of node-local volumes: a StorageClass's `provisioner` field.
pub const PROVISIONER_LOCAL: &str = "local.stowage.io";

/// Provisioner name of volumes on the NFS servers: a StorageClass's `provisioner` field.
pub const PROVISIONER_NFS: &str = "nfs.stowage.io";

/// Annotation on every PersistentVolume of [`PROVISIONER_NFS`]: what happens to the claim's
/// directory when the PV is deleted (`delete`, `archive` or `retain`), recorded from the
/// class when the PV is made, so deletion never depends on a class that changed or went.
pub const ANNOTATION_NFS_ON_DELETE: &str = "stowage.io/nfs-on-delete";

/// Annotation on every PersistentVolume of [`PROVISIONER_NFS`]: the configured name of the
/// NFS server holding its directory (for people and metrics; deletion locates the
/// directory from `spec.nfs` itself).
pub const ANNOTATION_NFS_SERVER: &str = "stowage.io/nfs-server";

/// Field manager of every write the node agent makes (StorageNode status, LocalVolume
/// status, finalizer removal). One manager per role keeps server-side apply ownership clear.
pub const FIELD_MANAGER_AGENT: &str = "stowage-agent";

/// Field manager of every write the controller makes (LocalVolumes, PersistentVolumes,
/// claim annotations, Events).
pub const FIELD_MANAGER_CONTROLLER: &str = "stowage-controller";

/// Well-known node label holding the node's hostname. A local PV's `nodeAffinity` selects
/// on it, because the scheduler's volume binding matches PVs to nodes by labels, not names.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Label the controller puts on every LocalVolume: the value of `spec.nodeName`. Agents
/// list and watch LocalVolumes with the selector `stowage.io/node=<their node>`, which every
/// Kubernetes version serves (field selectors on custom resources do not exist before 1.30).
pub const LABEL_NODE: &str = "stowage.io/node";

/// Label the controller puts on every LocalVolume: the value of `spec.pool`, so
/// `kubectl get localvolumes -l stowage.io/pool=fast` lists one pool's volumes.
pub const LABEL_POOL: &str = "stowage.io/pool";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_is_group_slash_version() {
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
    }
}
