//! StorageClasses, kept whole (stripped, see [`crate::cache::slim`]) by name. After every
//! change the classes of the node-local provisioner are parsed again (their parameters, or
//! why they are invalid, and their pool) and the claims whose reservation depends on them
//! are updated. A re-list is buffered and replaces every StorageClass at once.

use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use super::{Buffered, Indexed, Reset};
use crate::cache::ClusterIndex;
use crate::cache::watch::Kind;

impl ClusterIndex {
    /// Adds or replaces a StorageClass (keyed by name).
    pub fn apply_storage_class(&mut self, class: StorageClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        self.classes.insert(name, class);
        self.reclass();
    }

    /// Removes a StorageClass.
    pub fn delete_storage_class(&mut self, name: &str) {
        if self.classes.remove(name).is_some() {
            self.reclass();
        }
    }

    /// Replaces every StorageClass with a re-list.
    pub fn reset_storage_classes(&mut self, classes: impl IntoIterator<Item = StorageClass>) {
        self.classes = classes
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        self.reclass();
    }

    /// The StorageClass called `name`.
    pub fn storage_class(&self, name: &str) -> Option<&StorageClass> {
        self.classes.get(name)
    }

    /// Every StorageClass, in no particular order.
    pub fn storage_classes(&self) -> impl Iterator<Item = &StorageClass> {
        self.classes.values()
    }
}

impl Indexed for StorageClass {
    const KIND: Kind = Kind::StorageClass;
    type Relist = Buffered<Self>;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_storage_class(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_storage_class(&object.name_any());
    }
}

impl Reset for StorageClass {
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>) {
        index.reset_storage_classes(objects);
    }
}
