//! What the caches keep of each object.
//!
//! A watch delivers whole objects, and at 50,000 claims, LocalVolumes and PVs whole objects
//! are most of a process's memory. Two cuts, both invisible to the code that reads the
//! caches:
//!
//! * [`strip_metadata`], applied to every watched object before it is cached (the agent's
//!   reconciler stores, and the [`super::ClusterIndex`] before an object becomes a row):
//!   `metadata.managedFields` (one field tree per writer, often the largest part of an
//!   object) and kubectl's last-applied-configuration annotation (a second copy of the
//!   object). No stowage code reads either; writes are patches or creates built from the
//!   fields the code does read, so nothing stripped is ever written back.
//! * The index keeps claims, LocalVolumes and PVs as compact rows of the fields stowage
//!   reads ([`super::rows`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
