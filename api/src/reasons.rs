//! Event and condition reasons stowage writes, PascalCase, in one place.
//!
//! The provisioning and resize reasons are the ones users already know from
//! sig-storage-lib-external-provisioner and the CSI external-resizer, so `kubectl describe
//! pvc` reads the same as with any other provisioner. The same strings label the error counters of the metrics, which keeps their cardinality bounded.

/// Normal, on a claim: provisioning of its volume has started.
pub const PROVISIONING: &str = "Provisioning";
/// Normal, on a claim: its PersistentVolume was created.
pub const PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
/// Warning, on a claim: its volume cannot be provisioned (unsupported request, agent error,
/// API error, or the selected node cannot hold it and `selected-node` was removed so that
/// the scheduler picks again, as the external-provisioner library reports a reschedule);
/// the message says why.
pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
/// Warning, on a claim: its volume cannot be made on its selected node yet, and it is not
/// sent back to the scheduler because another claim of its pod has its volume on that node
/// already (the pod can run nowhere else); the message says what is missing and where.
pub const PROVISIONING_WAITING: &str = "ProvisioningWaiting";
/// Normal, on a claim: growing its volume has started.
pub const RESIZING: &str = "Resizing";
/// Normal, on a claim: its volume was grown.
pub const VOLUME_RESIZE_SUCCESSFUL: &str = "VolumeResizeSuccessful";
/// Warning, on a claim: its volume cannot be grown; nothing was changed.
pub const VOLUME_RESIZE_FAILED: &str = "VolumeResizeFailed";
/// Warning, on a PersistentVolume: deleting its data failed.
pub const VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
/// Normal, on a PersistentVolume: it is being deleted while its claim is still bound to it;
/// `kubernetes.io/pv-protection` keeps it, and stowage keeps its data, until the claim goes.
pub const VOLUME_DELETE_DEFERRED: &str = "VolumeDeleteDeferred";
/// Warning, on a PersistentVolume: the node holding its data has no Node object anymore.
pub const NODE_GONE: &str = "VolumeNodeGone";
/// Claim condition type while its volume is being grown (as the external-resizer sets it).
pub const CONDITION_RESIZING: &str = "Resizing";
/// Claim condition type for a grown volume whose filesystem the kubelet still has to grow;
/// cleared by stowage because a directory or subvolume needs no node-side step.
pub const CONDITION_FS_RESIZE_PENDING: &str = "FileSystemResizePending";
