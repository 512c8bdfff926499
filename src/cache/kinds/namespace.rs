//! Namespaces (controller only), metadata only: of a Namespace only the name and uid are
//! read. NFS ownership markers record the uid, so that a namespace deleted and re-created
//! under the same name is told apart; the index keeps the uid by name, or, once the
//! namespace is being deleted, that it is going. A re-list is buffered and replaces every
//! Namespace at once.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use super::{Buffered, Indexed, Reset};
use crate::cache::ClusterIndex;
use crate::cache::watch::Kind;

impl ClusterIndex {
    /// Adds or replaces a Namespace: its uid is kept, or, once it is being deleted, that it
    /// is going (a claim there is the old namespace's, or the watch has not seen the new
    /// namespace of that name yet).
    pub fn apply_namespace(&mut self, namespace: PartialObjectMeta<Namespace>) {
        let meta = namespace.metadata;
        let uid = meta
            .uid
            .filter(|_| meta.deletion_timestamp.is_none())
            .map(Box::from);
        let name: Box<str> = meta.name.as_deref().unwrap_or_default().into();
        self.namespaces.insert(name, uid);
    }

    /// Removes a Namespace.
    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Replaces every Namespace with a re-list.
    pub fn reset_namespaces(
        &mut self,
        namespaces: impl IntoIterator<Item = PartialObjectMeta<Namespace>>,
    ) {
        self.namespaces.clear();
        for namespace in namespaces {
            self.apply_namespace(namespace);
        }
    }

    /// The uid of the Namespace `name`; `None` when it is not cached (the watch is behind,
    /// or this process does not watch Namespaces) or is being deleted.
    pub fn namespace_uid(&self, name: &str) -> Option<String> {
        self.namespaces.get(name)?.as_deref().map(str::to_string)
    }
}

impl Indexed for PartialObjectMeta<Namespace> {
    const KIND: Kind = Kind::Namespace;
    type Relist = Buffered<Self>;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_namespace(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_namespace(&object.name_any());
    }
}

impl Reset for PartialObjectMeta<Namespace> {
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>) {
        index.reset_namespaces(objects);
    }
}
