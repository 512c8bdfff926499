//! Pure volume logic shared by the VolumeBinding emulation and the PV-controller emulation:
//! node selectors against node labels, claim ↔ volume matching, claim states.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
    },
    storage::v1::StorageClass,
};

use crate::apiserver::parse_quantity;

/// `volume.kubernetes.io/selected-node`.
pub(super) const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// `volume.kubernetes.io/storage-provisioner`.
pub(super) const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// `volume.beta.kubernetes.io/storage-provisioner`.
pub(super) const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// `pv.kubernetes.io/bind-completed`.
pub(super) const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// `pv.kubernetes.io/bound-by-controller`.
pub(super) const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The deprecated class annotation, read before `spec.storageClassName`.
const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// The provisioner name of classes that only use pre-created volumes.
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The claim's class name (the beta annotation wins, as in the real helpers).
pub(super) fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&claim.metadata, BETA_STORAGE_CLASS)
        .or_else(|| claim.spec.as_ref()?.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
}

/// The volume's class name.
fn pv_class(pv: &PersistentVolume) -> Option<&str> {
    annotation(&pv.metadata, BETA_STORAGE_CLASS)
        .or_else(|| pv.spec.as_ref()?.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
}

/// The claim's `selected-node` annotation.
pub(super) fn selected_node(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&claim.metadata, SELECTED_NODE)
}

/// `spec.volumeName`, when set.
pub(super) fn volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .volume_name
        .as_deref()
        .filter(|v| !v.is_empty())
}

/// Whether the PV controller has finished binding the claim (what PreBind waits for).
pub(super) fn fully_bound(claim: &PersistentVolumeClaim) -> bool {
    volume_name(claim).is_some() && annotation(&claim.metadata, BIND_COMPLETED).is_some()
}

/// Whether the class delays binding until a pod is scheduled. A missing class is Immediate.
pub(super) fn is_wait_for_first_consumer(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// The class's provisioner when it provisions dynamically.
pub(super) fn dynamic_provisioner(class: &StorageClass) -> Option<&str> {
    Some(class.provisioner.as_str()).filter(|p| !p.is_empty() && *p != NO_PROVISIONER)
}

/// The object's labels, or none.
pub(super) fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Whether `labels` satisfy a node selector: OR over terms, AND inside a term. Only
/// `matchExpressions` are evaluated; like the scheduler's `CheckNodeAffinity` (a synthetic node
/// with labels only), a term with `matchFields`, or with nothing, matches nothing.
pub(super) fn selector_matches(selector: &NodeSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        !exprs.is_empty()
            && fields.is_empty()
            && exprs.iter().all(|r| requirement_matches(r, labels))
    })
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// Whether the volume's `nodeAffinity` (if any) admits a node with `labels`.
pub(super) fn pv_admits(pv: &PersistentVolume, labels: &BTreeMap<String, String>) -> bool {
    match pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(required) => selector_matches(required, labels),
        None => true,
    }
}

/// Whether the class's `allowedTopologies` (if any) admit a node with `labels`.
pub(super) fn topology_admits(class: &StorageClass, labels: &BTreeMap<String, String>) -> bool {
    let terms = class.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|term| {
            term.match_label_expressions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|e| labels.get(&e.key).is_some_and(|v| e.values.contains(v)))
        })
}

fn storage(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> f64 {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
}

/// Whether `pv` can hold `claim`: capacity ≥ request, access modes ⊇, same volumeMode, not
/// being deleted (`FindMatchingVolume`'s checks, without the claimRef rules).
fn pv_fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(pvs), Some(cs)) = (&pv.spec, &claim.spec) else {
        return false;
    };
    let requested = storage(cs.resources.as_ref().and_then(|r| r.requests.as_ref()));
    let modes_ok = cs
        .access_modes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .all(|m| pvs.access_modes.as_deref().unwrap_or_default().contains(m));
    let mode = |m: Option<&str>| m.unwrap_or("Filesystem").to_string();
    pv.metadata.deletion_timestamp.is_none()
        && storage(pvs.capacity.as_ref()) >= requested
        && modes_ok
        && mode(pvs.volume_mode.as_deref()) == mode(cs.volume_mode.as_deref())
}

/// Whether the volume is pre-bound to the claim (`claimRef` names it, and its uid if set).
pub(super) fn pv_claims(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == claim.metadata.name
        && r.namespace == claim.metadata.namespace
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == claim.metadata.uid.as_deref())
}

/// A volume pre-bound to `claim` that can hold it: the one the PV controller binds.
pub(super) fn pv_bindable_to(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    pv_claims(pv, claim) && pv_fits(pv, claim)
}

/// An unclaimed, Available-looking static volume of the claim's class that fits it and admits
/// a node with `labels` (the VolumeBinding plugin's static match).
pub(super) fn pv_statically_matches(
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    labels: &BTreeMap<String, String>,
) -> bool {
    let free = pv
        .spec
        .as_ref()
        .is_some_and(|s| s.claim_ref.is_none() || pv_claims(pv, claim));
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    free && matches!(phase, None | Some("Available" | "Pending"))
        && pv_class(pv) == claim_class(claim)
        && pv_fits(pv, claim)
        && pv_admits(pv, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, pv, pvc};

    #[test]
    fn local_volume_affinity_admits_only_its_node() {
        let volume = pv("v").local("a", "/p").build();
        assert!(pv_admits(&volume, &node_labels(&node("a").build())));
        assert!(!pv_admits(&volume, &node_labels(&node("b").build())));
    }

    #[test]
    fn requirement_operators_follow_the_label_semantics() {
        let labels = BTreeMap::from([("k".to_string(), "5".to_string())]);
        let req = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "k".to_string(),
            operator: op.to_string(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        assert!(requirement_matches(&req("In", &["5"]), &labels));
        assert!(!requirement_matches(&req("NotIn", &["5"]), &labels));
        assert!(requirement_matches(&req("Exists", &[]), &labels));
        assert!(!requirement_matches(&req("DoesNotExist", &[]), &labels));
        assert!(requirement_matches(&req("Gt", &["4"]), &labels));
        assert!(!requirement_matches(&req("Lt", &["4"]), &labels));
    }

    #[test]
    fn prebound_volume_must_be_big_enough_and_name_the_claim() {
        let claim = pvc("ns", "c").size("2Gi").build();
        assert!(pv_bindable_to(
            &pv("v").size("2Gi").claim("ns", "c").build(),
            &claim
        ));
        assert!(!pv_bindable_to(
            &pv("v").size("1Gi").claim("ns", "c").build(),
            &claim
        ));
        assert!(!pv_bindable_to(
            &pv("v").size("2Gi").claim("ns", "other").build(),
            &claim
        ));
    }
}
