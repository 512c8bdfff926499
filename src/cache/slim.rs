//! What the caches keep of each object.
//!
//! A watch delivers whole objects, and at 50,000 claims, LocalVolumes and PVs whole objects
//! are most of a process's memory. Two cuts, both invisible to the code that reads the
//! caches:
//!
//! * [`strip_metadata`], applied to every watched object before it is cached (the
//!   controller's and the agent's reconciler stores, and the [`super::ClusterIndex`]):
//!   `metadata.managedFields` (one field tree per writer, often the largest part of an
//!   object) and kubectl's last-applied-configuration annotation (a second copy of the
//!   object). No stowage code reads either; writes are patches or creates built from the
//!   fields the code does read, so nothing stripped is ever written back.
//! * [`index_claim`] and [`index_volume`]: the index keeps of claims and LocalVolumes only the
//!   fields the ledger and the extender read (listed on each function). The reconcilers
//!   read their objects from their own stores, never from the index.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::local_volume::LocalVolume;
use crate::api::names;

/// kubectl's client-side apply annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops `managedFields` and the last-applied-configuration annotation.
pub fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// [`strip_metadata`] on any object, for `watcher(..).modify(..)`.
pub fn strip<K: kube::Resource>(object: &mut K) {
    strip_metadata(object.meta_mut());
}

/// The claim as the index keeps it: name, namespace, uid, creation time and the
/// `selected-node` annotation; the class, the volume name and the storage request. That is
/// all [`super::ClusterIndex`] reads (the ledger's reservations, a pod's demand).
pub fn index_claim(claim: PersistentVolumeClaim) -> PersistentVolumeClaim {
    let PersistentVolumeClaim { metadata, spec, .. } = claim;
    let selected = metadata
        .annotations
        .and_then(|mut a| a.remove_entry(names::ANNOTATION_SELECTED_NODE));
    let spec = spec.map(|s| PersistentVolumeClaimSpec {
        storage_class_name: s.storage_class_name,
        volume_name: s.volume_name,
        resources: s.resources.and_then(|r| {
            let storage = r.requests?.remove_entry("storage")?;
            Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([storage])),
                ..VolumeResourceRequirements::default()
            })
        }),
        ..PersistentVolumeClaimSpec::default()
    });
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            creation_timestamp: metadata.creation_timestamp,
            annotations: selected.map(|entry| BTreeMap::from([entry])),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// The LocalVolume as the index keeps it: its name and spec (node, pool, size), which is
/// what the ledger's allocated bytes and a claim's own hold are made of.
pub fn index_volume(volume: LocalVolume) -> LocalVolume {
    let LocalVolume { metadata, spec, .. } = volume;
    LocalVolume {
        metadata: ObjectMeta {
            name: metadata.name,
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}
