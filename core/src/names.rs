//! Well-known strings: the API group, finalizers, annotation and label keys, provisioner
//! names and field managers.
//!
//! Every Kubernetes key stowage reads or writes is spelled here once, so a typo is a compile
//! error instead of a claim that never provisions. Keys owned by Kubernetes carry a note on
//! who sets them and why stowage cares.

use std::borrow::Cow;

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

/// Label the controller puts on every LocalVolume and local PV: its node,
/// [`node_label_value`] of `spec.nodeName`. Agents list and watch LocalVolumes with the
/// selector `stowage.io/node=<that value for their node>`, which every Kubernetes version
/// serves (field selectors on custom resources do not exist before 1.30).
pub const LABEL_NODE: &str = "stowage.io/node";

/// Annotation the controller puts on every local PV: its node's name, whole. The
/// [`LABEL_NODE`] label is that name only when it fits a label value, so the node of a PV is
/// read here first (PVs of versions before it have the label alone, and the whole name in
/// it: a longer name never worked there).
pub const ANNOTATION_NODE: &str = "stowage.io/node";

/// The most characters a label value may have.
const LABEL_VALUE_MAX: usize = 63;

/// Whether `v` is a valid label value: at most 63 characters of `[A-Za-z0-9_.-]`, starting
/// and ending with a letter or digit (or empty).
fn is_label_value(v: &str) -> bool {
    v.len() <= LABEL_VALUE_MAX
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// The [`LABEL_NODE`] value for node `name`: the name itself when it is a valid label value,
/// as node names of up to 63 characters are. A node name may have up to 253 (a DNS
/// subdomain, e.g. a fully qualified host name) and a label value only 63, so a longer name
/// becomes its first 46 characters and 16 hexadecimal digits of a fixed 64-bit hash (FNV-1a)
/// of the whole name: the same in every process and version, and distinct for names that
/// share their first 46 characters.
pub fn node_label_value(name: &str) -> Cow<'_, str> {
    if is_label_value(name) {
        return Cow::Borrowed(name);
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let head: String = name
        .chars()
        .take(LABEL_VALUE_MAX - 17)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let head = head.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        Cow::Owned(format!("node-{hash:016x}"))
    } else {
        Cow::Owned(format!("{head}-{hash:016x}"))
    }
}

/// Label the controller puts on every LocalVolume: the value of `spec.pool`, so
/// `kubectl get localvolumes -l stowage.io/pool=fast` lists one pool's volumes.
pub const LABEL_POOL: &str = "stowage.io/pool";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_follow_the_api_servers_rule() {
        for ok in ["", "n1", "a.b_c-d", &"a".repeat(63)] {
            assert!(is_label_value(ok), "{ok:?}");
        }
        for bad in [&"a".repeat(64), "-a", "a-", ".a", "a/b", "a b", "ä"] {
            assert!(!is_label_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn node_names_that_fit_a_label_value_are_the_label_value() {
        for name in [
            "n1",
            "ip-10-0-12-34.eu-west-1.compute.internal",
            &"a".repeat(63),
        ] {
            assert_eq!(node_label_value(name), name);
        }
    }

    #[test]
    fn longer_node_names_are_shortened_to_a_valid_distinct_stable_value() {
        let long = "worker-001.rack-17.datacenter-east.production.example-corporation.internal";
        let other = "worker-001.rack-17.datacenter-east.production.example-corporation.intern4l";
        let value = node_label_value(long);
        assert!(is_label_value(&value), "{value}");
        // Pinned: agents and controllers of any version must compute the same value.
        assert_eq!(
            value,
            "worker-001.rack-17.datacenter-east.production-fbd224e38972a59f"
        );
        assert_ne!(node_label_value(other), value);
        for odd in [
            &"-".repeat(80),
            &format!("{}.x", "y".repeat(45)),
            &"z".repeat(253),
        ] {
            let v = node_label_value(odd);
            assert!(is_label_value(&v), "{odd}: {v}");
        }
    }

    #[test]
    fn api_version_is_group_slash_version() {
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
    }
}
