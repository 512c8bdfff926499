//! PURE: what a claim asks for, and the LocalVolume and PersistentVolume that serve it.
//!
//! ```text
//!   claim + class ──request()──▶ Request (size rounded up, modes, volume mode) or Unsupported
//!   Request + selected node ──local_volume()──▶ LocalVolume pvc-<uid>  (agent makes it)
//!   LocalVolume Ready + Node's hostname label ──persistent_volume()──▶ PV pvc-<uid>
//! ```
//!
//! What a node-local volume can honestly offer: a directory (or btrfs subvolume) on one
//! node, mounted by pods on that node. So the access modes are `ReadWriteOnce` and
//! `ReadWriteOncePod` (both mean "one node"); `ReadOnlyMany` and `ReadWriteMany` promise
//! access from many nodes and are refused. `volumeMode: Block` needs a block device, not a
//! directory, and is refused. Claims with a `dataSource`/`dataSourceRef` (clones, snapshots,
//! populators) or a `selector` (which selects existing PVs) are refused too, with an Event
//! that says so, instead of silently creating an empty volume.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec};
use crate::api::names;
use crate::cache::{ClassParams, LOCAL_VOLUME_PREFIX};
use crate::ledger::{Bytes, MAX_BYTES};

/// Sizes are rounded up to whole mebibytes: every filesystem and quota tool counts in them,
/// and a claim for `1G` (10⁹ bytes) then gets a volume at least that large.
pub const SIZE_GRANULE: u64 = Bytes::MI;

/// Access modes a node-local volume supports: both mean "mounted on one node".
pub const SUPPORTED_ACCESS_MODES: [&str; 2] = ["ReadWriteOnce", "ReadWriteOncePod"];

/// What a claim asks for, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The requested size, rounded up to [`SIZE_GRANULE`].
    pub size: Bytes,
    /// The claim's access modes (a subset of [`SUPPORTED_ACCESS_MODES`]).
    pub access_modes: Vec<String>,
}

/// Why a claim's request cannot be served by a node-local volume. The message is the
/// ProvisioningFailed Event a user reads, so it says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// The name of the LocalVolume and PersistentVolume of the claim with `uid`.
pub fn volume_name(uid: &str) -> String {
    format!("{LOCAL_VOLUME_PREFIX}{uid}")
}

/// Where the volume `name` must be on a node whose pool is at `pool_path`: the pool path
/// joined with the name. `None` when the pool path is not an absolute, normalised path
/// (`.`, `..` or empty components), which no agent reports for a real pool.
pub fn expected_path(pool_path: &str, name: &str) -> Option<String> {
    let pool = pool_path.strip_suffix('/').unwrap_or(pool_path);
    let normal = pool.starts_with('/')
        && pool
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..");
    (normal || pool.is_empty() && pool_path == "/").then(|| format!("{pool}/{name}"))
}

/// Checks the path an agent reported for volume `name` against the one the pool it is in
/// must give ([`expected_path`]). The PV stowage makes mounts that path read-write into the
/// claim's pods, and LocalVolume status is written by agents, so it is never taken on trust:
/// an agent (or whoever holds its token) could otherwise aim a volume at `/` or at another
/// tenant's data. The error is the Event message.
pub fn check_path(reported: &str, pool_path: Option<&str>, name: &str) -> Result<(), String> {
    let Some(pool_path) = pool_path else {
        return Err(format!(
            "volume {name} is reported at {reported}, but its node's StorageNode reports no \
             such pool; no PV is made until the node's agent reports the pool"
        ));
    };
    match expected_path(pool_path, name) {
        Some(expected) if expected == reported => Ok(()),
        Some(expected) => Err(format!(
            "volume {name} is reported at {reported:?}, but a volume of pool {pool_path:?} \
             must be at {expected:?}; no PV is made for a path stowage did not choose \
             (see SECURITY.md)"
        )),
        None => Err(format!(
            "volume {name}: the node's pool path {pool_path:?} is not an absolute, \
             normalised path; no PV is made"
        )),
    }
}

/// Validates what `claim` asks for; see the module docs for what is supported.
pub fn request(claim: &PersistentVolumeClaim) -> Result<Request, Unsupported> {
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(Unsupported(
            "volumeMode Block is not supported: stowage volumes are directories on a node's \
             pool; use volumeMode Filesystem"
                .to_string(),
        ));
    }
    if let Some(source) = spec
        .data_source_ref
        .as_ref()
        .map(|r| (&r.kind, &r.name))
        .or(spec.data_source.as_ref().map(|r| (&r.kind, &r.name)))
    {
        return Err(Unsupported(format!(
            "a data source ({} {}) is not supported: stowage cannot clone or restore into a \
             node-local volume; remove dataSource/dataSourceRef",
            source.0, source.1
        )));
    }
    if spec.selector.is_some() {
        return Err(Unsupported(
            "a claim selector is not supported for dynamically provisioned volumes; remove \
             spec.selector"
                .to_string(),
        ));
    }
    let access_modes = spec.access_modes.unwrap_or_default();
    if access_modes.is_empty() {
        return Err(Unsupported(
            "the claim has no access mode; use ReadWriteOnce or ReadWriteOncePod".to_string(),
        ));
    }
    if let Some(mode) = access_modes
        .iter()
        .find(|m| !SUPPORTED_ACCESS_MODES.contains(&m.as_str()))
    {
        return Err(Unsupported(format!(
            "access mode {mode} is not supported: a node-local volume is reachable from one \
             node only; use ReadWriteOnce or ReadWriteOncePod"
        )));
    }
    let size = requested_size(claim)?;
    Ok(Request { size, access_modes })
}

/// The claim's `resources.requests.storage`, rounded up to [`SIZE_GRANULE`].
pub fn requested_size(claim: &PersistentVolumeClaim) -> Result<Bytes, Unsupported> {
    let quantity = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or_else(|| {
            Unsupported("the claim requests no storage; set resources.requests.storage".into())
        })?;
    let bytes: Bytes = quantity
        .0
        .parse()
        .map_err(|e| Unsupported(format!("resources.requests.storage {:?}: {e}", quantity.0)))?;
    round_up(bytes).ok_or_else(|| {
        Unsupported(format!(
            "resources.requests.storage {:?} is larger than the {MAX_BYTES} stowage supports",
            quantity.0
        ))
    })
}

/// `bytes` rounded up to a whole number of [`SIZE_GRANULE`]s, at least one; `None` above
/// [`MAX_BYTES`].
pub fn round_up(bytes: Bytes) -> Option<Bytes> {
    let granules = bytes.0.div_ceil(SIZE_GRANULE).max(1);
    let rounded = Bytes(granules.checked_mul(SIZE_GRANULE)?);
    (rounded <= MAX_BYTES).then_some(rounded)
}

/// A size as a Kubernetes quantity, exact: `10Gi`, `1536Mi`, or plain bytes.
pub fn quantity(size: Bytes) -> Quantity {
    let text = [("Ti", Bytes::TI), ("Gi", Bytes::GI), ("Mi", Bytes::MI)]
        .iter()
        .find(|(_, unit)| size.0 >= *unit && size.0.is_multiple_of(*unit))
        .map_or_else(
            || size.0.to_string(),
            |(s, unit)| format!("{}{s}", size.0 / unit),
        );
    Quantity(text)
}

/// The LocalVolume for `claim` on `node`: labelled with node and pool so the agent of that
/// node finds it, guarded by the agent-cleanup finalizer.
pub fn local_volume(
    claim: &PersistentVolumeClaim,
    node: &str,
    params: &ClassParams,
    size: Bytes,
) -> LocalVolume {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let mut lv = LocalVolume::new(
        &volume_name(&uid),
        LocalVolumeSpec {
            node_name: node.to_string(),
            pool: params.pool.as_str().to_string(),
            size_bytes: size.0,
            claim: ClaimRef {
                namespace: claim.metadata.namespace.clone().unwrap_or_default(),
                name: claim.metadata.name.clone().unwrap_or_default(),
                uid,
            },
            on_delete: params.on_delete,
        },
    );
    lv.metadata.labels = Some(volume_labels(node, params.pool.as_str()));
    lv.metadata.finalizers = Some(vec![names::FINALIZER_AGENT_CLEANUP.to_string()]);
    lv
}

/// The labels of a LocalVolume and of its PV: `stowage.io/node` (the node's name, or its
/// shortened form when the name is too long for a label value) and `stowage.io/pool`.
fn volume_labels(node: &str, pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::LABEL_NODE.to_string(),
            names::node_label_value(node).into_owned(),
        ),
        (names::LABEL_POOL.to_string(), pool.to_string()),
    ])
}

/// The value of the node's `kubernetes.io/hostname` label, which the PV's node affinity
/// must match (the scheduler matches PV affinity against node labels only, and the label is
/// not guaranteed to equal the node name). `None` when the label is absent.
pub fn hostname_label(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(names::LABEL_HOSTNAME)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The class's reclaim policy (`Delete` when unset, as the API server defaults it).
pub fn reclaim_policy(class: &StorageClass) -> &str {
    class.reclaim_policy.as_deref().unwrap_or("Delete")
}

/// The annotations of every PV stowage makes: `pv.kubernetes.io/provisioned-by` naming
/// `provisioner`, so only it deletes the PV, and `pv.kubernetes.io/bound-by-controller`, so
/// the PV controller checks with the API server before it releases the PV for a claim it
/// has not seen yet.
pub fn pv_annotations(provisioner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::ANNOTATION_PROVISIONED_BY.to_string(),
            provisioner.to_string(),
        ),
        (
            names::ANNOTATION_BOUND_BY_CONTROLLER.to_string(),
            "yes".to_string(),
        ),
    ])
}

/// The finalizers of a PV with reclaim `policy`: ours with Delete, so the PV object
/// outlives its data's cleanup; none otherwise.
pub fn pv_finalizers(policy: &str) -> Option<Vec<String>> {
    (policy == "Delete").then(|| vec![names::FINALIZER_PV_CLEANUP.to_string()])
}

/// `claimRef` pre-binding a PV to exactly `claim` (its uid and resourceVersion), so the PV
/// controller binds that claim and no other.
pub fn pre_bound_to(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("PersistentVolumeClaim".to_string()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The PersistentVolume for `claim`, backed by the Ready LocalVolume `lv` at `path`.
///
/// `hostname` is the value of the node's `kubernetes.io/hostname` label. The PV is
/// pre-bound (`claimRef` with uid) so the PV controller binds exactly this claim; it
/// carries `pv.kubernetes.io/provisioned-by` so only we delete it,
/// `pv.kubernetes.io/bound-by-controller` so the PV controller checks with the API server
/// before it releases the PV for a claim it has not seen yet, and, with reclaim policy
/// Delete, our finalizer so the PV object outlives its data's cleanup.
pub fn persistent_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    lv: &LocalVolume,
    path: &str,
    hostname: &str,
    provisioner: &str,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let policy = reclaim_policy(class).to_string();
    let finalizers = pv_finalizers(&policy);
    PersistentVolume {
        metadata: ObjectMeta {
            name: lv.metadata.name.clone(),
            annotations: Some({
                let mut annotations = pv_annotations(provisioner);
                annotations.insert(
                    names::ANNOTATION_NODE.to_string(),
                    lv.spec.node_name.clone(),
                );
                annotations
            }),
            labels: Some(volume_labels(&lv.spec.node_name, &lv.spec.pool)),
            finalizers,
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                quantity(lv.spec.size()),
            )])),
            access_modes: spec.access_modes,
            volume_mode: Some(spec.volume_mode.unwrap_or_else(|| "Filesystem".to_string())),
            persistent_volume_reclaim_policy: Some(policy),
            mount_options: class.mount_options.clone(),
            storage_class_name: spec.storage_class_name,
            local: Some(LocalVolumeSource {
                path: path.to_string(),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: names::LABEL_HOSTNAME.to_string(),
                            operator: "In".to_string(),
                            values: Some(vec![hostname.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            claim_ref: Some(pre_bound_to(claim)),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The node a PV of ours lives on ([`crate::cache::rows::pv_node`]).
pub fn pv_node(pv: &PersistentVolume) -> Option<&str> {
    crate::cache::rows::pv_node(&pv.metadata)
}

/// `<namespace>/<name>` of the claim a PV is bound or pre-bound to, `unknown` when it names
/// none: for messages.
pub fn pv_claim_key(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .map(|r| {
            format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The storage capacity a PV declares.
pub fn pv_capacity(pv: &PersistentVolume) -> Option<Bytes> {
    pv.spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")?
        .0
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, TypedLocalObjectReference, VolumeResourceRequirements,
    };

    use super::*;
    use crate::api::local_volume::OnDelete;
    use crate::ledger::{Placement, PoolName};

    fn claim(size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("apps".into()),
                uid: Some("u-1".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                    ..Default::default()
                }),
                storage_class_name: Some("local".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn params() -> ClassParams {
        ClassParams {
            pool: PoolName::from("fast"),
            placement: Placement::Spread,
            on_delete: OnDelete::Archive,
        }
    }

    fn class(policy: Option<&str>) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("local".into()),
                ..Default::default()
            },
            provisioner: names::PROVISIONER_LOCAL.into(),
            reclaim_policy: policy.map(str::to_string),
            mount_options: Some(vec!["noatime".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn sizes_round_up_to_whole_mebibytes() {
        let cases = [
            (0, Bytes::MI),
            (1, Bytes::MI),
            (Bytes::MI, Bytes::MI),
            (Bytes::MI + 1, 2 * Bytes::MI),
            (1_000_000_000, 954 * Bytes::MI),
            (10 * Bytes::GI, 10 * Bytes::GI),
        ];
        for (input, want) in cases {
            assert_eq!(round_up(Bytes(input)), Some(Bytes(want)), "{input}");
        }
        assert_eq!(round_up(Bytes(u64::MAX)), None);
    }

    #[test]
    fn quantities_are_exact() {
        assert_eq!(quantity(Bytes::gib(10)).0, "10Gi");
        assert_eq!(quantity(Bytes::mib(1536)).0, "1536Mi");
        assert_eq!(quantity(Bytes::tib(2)).0, "2Ti");
        assert_eq!(quantity(Bytes(1000)).0, "1000");
        let back: Bytes = quantity(Bytes::mib(954)).0.parse().unwrap();
        assert_eq!(back, Bytes::mib(954));
    }

    #[test]
    fn requests_a_node_local_volume_cannot_serve_are_refused_with_a_fix() {
        let ok = request(&claim("1G", &["ReadWriteOnce"])).unwrap();
        assert_eq!(ok.size, Bytes::mib(954));
        assert!(request(&claim("1Gi", &["ReadWriteOncePod"])).is_ok());

        let mut block = claim("1Gi", &["ReadWriteOnce"]);
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let mut cloned = claim("1Gi", &["ReadWriteOnce"]);
        cloned.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            kind: "PersistentVolumeClaim".into(),
            name: "origin".into(),
            api_group: None,
        });
        let mut selector = claim("1Gi", &["ReadWriteOnce"]);
        selector.spec.as_mut().unwrap().selector = Some(Default::default());
        let cases = [
            (block, "volumeMode Block"),
            (cloned, "PersistentVolumeClaim origin"),
            (selector, "selector"),
            (claim("1Gi", &["ReadWriteMany"]), "ReadWriteMany"),
            (
                claim("1Gi", &["ReadWriteOnce", "ReadOnlyMany"]),
                "ReadOnlyMany",
            ),
            (claim("1Gi", &[]), "no access mode"),
            (claim("lots", &["ReadWriteOnce"]), "\"lots\""),
        ];
        for (c, needle) in cases {
            let err = request(&c).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn local_volume_is_labelled_finalized_and_keyed_by_claim_uid() {
        let lv = local_volume(
            &claim("10Gi", &["ReadWriteOnce"]),
            "n1",
            &params(),
            Bytes::gib(10),
        );
        assert_eq!(lv.metadata.name.as_deref(), Some("pvc-u-1"));
        let labels = lv.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::LABEL_NODE], "n1");
        assert_eq!(labels[names::LABEL_POOL], "fast");
        assert_eq!(
            lv.metadata.finalizers,
            Some(vec![names::FINALIZER_AGENT_CLEANUP.to_string()])
        );
        assert_eq!(lv.spec.node_name, "n1");
        assert_eq!(lv.spec.pool, "fast");
        assert_eq!(lv.spec.size_bytes, 10 << 30);
        assert_eq!(lv.spec.on_delete, OnDelete::Archive);
        assert_eq!(
            (
                lv.spec.claim.namespace.as_str(),
                lv.spec.claim.name.as_str(),
                lv.spec.claim.uid.as_str()
            ),
            ("apps", "data", "u-1")
        );
    }

    #[test]
    fn persistent_volume_carries_every_field_the_pv_controller_and_scheduler_need() {
        let c = claim("10Gi", &["ReadWriteOnce"]);
        let lv = local_volume(&c, "n1", &params(), Bytes::gib(10));
        let pv = persistent_volume(
            &c,
            &class(Some("Delete")),
            &lv,
            "/pools/fast/pvc-u-1",
            "host-n1",
            "local.stowage.io",
        );
        let value = serde_json::to_value(&pv).unwrap();
        assert_eq!(value["metadata"]["name"], "pvc-u-1");
        assert_eq!(
            value["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
            "local.stowage.io"
        );
        assert_eq!(
            value["metadata"]["finalizers"][0],
            names::FINALIZER_PV_CLEANUP
        );
        assert_eq!(value["metadata"]["labels"]["stowage.io/node"], "n1");
        let spec = &value["spec"];
        assert_eq!(spec["capacity"]["storage"], "10Gi");
        assert_eq!(spec["accessModes"], serde_json::json!(["ReadWriteOnce"]));
        assert_eq!(spec["volumeMode"], "Filesystem");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(spec["mountOptions"], serde_json::json!(["noatime"]));
        assert_eq!(spec["storageClassName"], "local");
        assert_eq!(spec["local"]["path"], "/pools/fast/pvc-u-1");
        assert_eq!(
            spec["nodeAffinity"]["required"]["nodeSelectorTerms"],
            serde_json::json!([{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-n1"]}
            ]}])
        );
        assert_eq!(
            spec["claimRef"],
            serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "apps",
                "name": "data", "uid": "u-1", "resourceVersion": "7"
            })
        );
        assert_eq!(pv_node(&pv), Some("n1"));
        assert_eq!(pv_capacity(&pv), Some(Bytes::gib(10)));
    }

    #[test]
    fn retained_volumes_get_no_cleanup_finalizer() {
        let c = claim("1Gi", &["ReadWriteOnce"]);
        let lv = local_volume(&c, "n1", &params(), Bytes::gib(1));
        let pv = persistent_volume(&c, &class(Some("Retain")), &lv, "/p", "n1", "x");
        assert_eq!(pv.metadata.finalizers, None);
        assert_eq!(
            pv.spec.unwrap().persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(reclaim_policy(&class(None)), "Delete");
    }

    #[test]
    fn hostname_comes_from_the_label_not_the_name() {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        assert_eq!(hostname_label(&node), None);
        node.metadata.labels = Some(BTreeMap::from([(
            names::LABEL_HOSTNAME.to_string(),
            "ip-10-0-0-1".to_string(),
        )]));
        assert_eq!(hostname_label(&node), Some("ip-10-0-0-1"));
    }
}
