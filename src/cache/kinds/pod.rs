//! Pods (controller only), only while they wait for a node: a pod's claims are
//! provisioned together (`controller::claim`), which needs to know which claims a pod uses
//! while they are being provisioned, that is before the pod is bound. The watch selects
//! `spec.nodeName=`; once bound, a pod leaves the selector and the watch reports it
//! deleted. Of a pod only its claim names are kept, by `(namespace, name)`, with the
//! reverse map from each claim to the unbound pods using it. A re-list is buffered and
//! replaces every pod at once.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::{Buffered, Indexed, Reset};
use crate::cache::watch::Kind;
use crate::cache::{ClaimNames, ClusterIndex, Trigger, pod_claims};

impl ClusterIndex {
    /// Adds or replaces a pod not bound to a node yet (the controller watches those only,
    /// with the field selector `spec.nodeName=`); only the claims it uses are kept. Their
    /// claims are queued: a claim waiting for its pod's other claims looks again.
    pub fn apply_pod(&mut self, pod: Pod) {
        let (namespace, claims) = pod_claims(&pod);
        let ns = self.syms.intern(namespace);
        let name: Box<str> = pod.metadata.name.as_deref().unwrap_or_default().into();
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        self.delete_pod(namespace, &name);
        if bound || claims.is_empty() {
            return;
        }
        let claims: ClaimNames = claims.into_iter().map(Box::from).collect();
        for claim in claims.iter() {
            let users = self.claim_pods.entry((ns, claim.clone())).or_default();
            if !users.contains(&name) {
                users.push(name.clone());
            }
        }
        let triggers: Vec<Trigger> = claims
            .iter()
            .map(|c| Trigger::Claim(namespace.to_string(), c.to_string()))
            .collect();
        self.pods.insert((ns, name), claims);
        self.fire(triggers);
    }

    /// Removes a pod (deleted, or bound to a node).
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.syms.lookup(namespace) else {
            return;
        };
        let Some(claims) = self.pods.remove(&(ns, name.into())) else {
            return;
        };
        for claim in claims.iter() {
            let key = (ns, claim.clone());
            if let Some(users) = self.claim_pods.get_mut(&key) {
                users.retain(|u| &**u != name);
                if users.is_empty() {
                    self.claim_pods.remove(&key);
                }
            }
        }
    }

    /// Replaces every unbound pod with a re-list.
    pub fn reset_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        self.pods.clear();
        self.claim_pods.clear();
        for pod in pods {
            self.apply_pod(pod);
        }
    }

    /// The other claims of the unbound pods that use claim `namespace/name`, sorted, without
    /// duplicates; empty when no such pod is known (a single-claim pod, a pod bound
    /// already, or a controller that has not seen it yet).
    pub fn sibling_claims(&self, namespace: &str, name: &str) -> Vec<String> {
        let Some(ns) = self.syms.lookup(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .claim_pods
            .get(&(ns, name.into()))
            .into_iter()
            .flatten()
            .filter_map(|pod| self.pods.get(&(ns, pod.clone())))
            .flat_map(|claims| claims.iter())
            .filter(|c| &***c != name)
            .map(|c| c.to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The unbound pods known to use claim `namespace/name`, sorted.
    pub fn pods_using(&self, namespace: &str, name: &str) -> Vec<String> {
        let Some(ns) = self.syms.lookup(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .claim_pods
            .get(&(ns, name.into()))
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        out.sort();
        out
    }
}

impl Indexed for Pod {
    const KIND: Kind = Kind::Pod;
    type Relist = Buffered<Self>;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_pod(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_pod(&object.namespace().unwrap_or_default(), &object.name_any());
    }
}

impl Reset for Pod {
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>) {
        index.reset_pods(objects);
    }
}
