//! Nodes (controller only), metadata only: of a Node only the name and its
//! `kubernetes.io/hostname` label are read, so the watch leaves out the status (images,
//! conditions, addresses), most of a Node's bytes, and the index keeps the hostname by
//! name. A Node going away queues the PersistentVolumes on it. A re-list is buffered and
//! replaces every Node at once.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use super::{Buffered, Indexed, Reset};
use crate::api::names;
use crate::cache::watch::Kind;
use crate::cache::{ClusterIndex, Sym, Trigger};

impl ClusterIndex {
    /// Adds or replaces a Node (its name and hostname label are kept).
    pub fn apply_node(&mut self, node: PartialObjectMeta<Node>) {
        let hostname = self.syms.intern_opt(
            node.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_HOSTNAME))
                .map(String::as_str),
        );
        let name: Box<str> = node.metadata.name.as_deref().unwrap_or_default().into();
        self.k8s_nodes.insert(name, hostname);
    }

    /// Removes a Node; its PersistentVolumes are queued (their node is gone).
    pub fn delete_node(&mut self, name: &str) {
        if self.k8s_nodes.remove(name).is_some() {
            self.fire_pvs_on(&[name]);
        }
    }

    /// Replaces every Node with a re-list; the PersistentVolumes of Nodes gone are queued.
    pub fn reset_nodes(&mut self, nodes: impl IntoIterator<Item = PartialObjectMeta<Node>>) {
        let old = std::mem::take(&mut self.k8s_nodes);
        for node in nodes {
            self.apply_node(node);
        }
        let gone: Vec<&str> = old
            .keys()
            .filter(|n| !self.k8s_nodes.contains_key(*n))
            .map(|n| &**n)
            .collect();
        self.fire_pvs_on(&gone);
    }

    fn fire_pvs_on(&self, nodes: &[&str]) {
        let syms: Vec<Sym> = nodes.iter().filter_map(|n| self.syms.lookup(n)).collect();
        if syms.is_empty() {
            return;
        }
        let triggers: Vec<Trigger> = self
            .pvs
            .iter()
            .filter(|(_, row)| row.node.is_some_and(|n| syms.contains(&n)))
            .map(|(name, _)| Trigger::Pv(name.to_string()))
            .collect();
        self.fire(triggers);
    }

    /// `None` when no Node called `name` is cached; otherwise its `kubernetes.io/hostname`
    /// label, if set and non-empty.
    pub fn node_hostname(&self, name: &str) -> Option<Option<String>> {
        let hostname = self.k8s_nodes.get(name)?;
        Some(
            hostname
                .map(|h| self.syms.string(h))
                .filter(|h| !h.is_empty()),
        )
    }

    /// The name of a cached Node whose `kubernetes.io/hostname` label is `hostname` (the
    /// first by name, should several share it).
    pub fn node_with_hostname(&self, hostname: &str) -> Option<String> {
        let sym = self.syms.lookup(hostname)?;
        self.k8s_nodes
            .iter()
            .filter(|(_, h)| **h == Some(sym))
            .map(|(name, _)| name.to_string())
            .min()
    }
}

impl Indexed for PartialObjectMeta<Node> {
    const KIND: Kind = Kind::Node;
    type Relist = Buffered<Self>;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_node(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_node(&object.name_any());
    }
}

impl Reset for PartialObjectMeta<Node> {
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>) {
        index.reset_nodes(objects);
    }
}
