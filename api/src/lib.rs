//! The stowage.io API objects and their translation into ledger terms.
//!
//! Kubernetes shapes (camelCase JSON, optional fields) live here; the ledger only ever sees
//! the domain types these functions produce.
//!
//! ```text
//!   StorageNode (sn)   cluster-scoped, one per node, status written by that node's agent
//!   LocalVolume (lv)   cluster-scoped, one per local PV, spec by the controller,
//!                      status and finalizer removal by the agent of spec.nodeName
//! ```
//!
//! The CustomResourceDefinitions are generated from these types ([`crds`], `stowage crds`)
//! and checked in as `deploy/crds.yaml`; a test fails when the two drift apart.
//!
//! ```
//! use stowage_api::{local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec, OnDelete}, names};
//! use kube::Resource;
//!
//! let lv = LocalVolume::new("pvc-1234", LocalVolumeSpec {
//!     node_name: "n1".into(),
//!     pool: "default".into(),
//!     size_bytes: 10 << 30,
//!     claim: ClaimRef { namespace: "apps".into(), name: "data".into(), uid: "1234".into() },
//!     on_delete: OnDelete::Delete,
//! });
//! assert_eq!(LocalVolume::api_version(&()), names::API_VERSION);
//! assert_eq!(lv.spec.claim.key().to_string(), "apps/data");
//! ```

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use kube::CustomResourceExt;

pub mod local_volume;
pub use stowage_core::names;
pub mod reasons;
pub mod storage_node;

/// The CustomResourceDefinitions of stowage's objects, in a fixed order: StorageNode, then
/// LocalVolume.
///
/// Two things of the generated schemas are changed:
/// * no `default` under `status`: only the agent writes status, always whole, so nothing
///   needs them, and a `default: ''` is refused by any API server built with Go 1.16 or
///   later before the go-openapi fix (it reads the empty string as null: "default: Invalid
///   value: \"null\": in body must be of type string").
/// * `minimum: 0` (schemars puts it on unsigned integers) becomes `minimum: -0.5`. With an
///   integral bound, every later `kubectl apply` of a changed CRD fails on Kubernetes 1.19
///   and 1.20 with "cannot convert int64 to float64" (the bound is stored as a float and
///   comes back from JSON as an integer), so an upgrade could not change the CRDs. No
///   integer lies between -0.5 and 0, so negative sizes are still refused by the API server
///   (a negative value would otherwise break every watch of the kind, whose items are read
///   as unsigned), and as a fraction the bound stays a float through the round trip.
pub fn crds() -> [CustomResourceDefinition; 2] {
    [
        storage_node::StorageNode::crd(),
        local_volume::LocalVolume::crd(),
    ]
    .map(compatible)
}

fn compatible(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        walk(root, &mut |s| {
            if s.minimum == Some(0.0) {
                s.minimum = Some(-0.5);
            }
        });
        if let Some(status) = root.properties.as_mut().and_then(|p| p.get_mut("status")) {
            walk(status, &mut |s| s.default = None);
        }
    }
    crd
}

/// Calls `f` on `schema` and every schema nested in it.
fn walk(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk(child, f);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(items)) => walk(items, f),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(|s| walk(s, f)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        walk(extra, f);
    }
}

/// [`crds`] as one multi-document YAML stream, `---` between documents: what
/// `stowage crds` prints and `deploy/crds.yaml` holds. The output is deterministic (object
/// fields in declaration order, schema properties sorted), so it can be drift-checked.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    to_yaml(&crds())
}

fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_yaml::Error> {
    let docs = crds
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}

/// [`crds`] with the rules Kubernetes 1.25 and later enforce (`x-kubernetes-validations`,
/// CEL transition rules): a LocalVolume's node, pool and claim never change, and its size
/// may only grow. What `stowage crds --cel` prints and `deploy/optional-crds-cel.yaml` holds.
///
/// Kept apart from [`crds`]: kubectl before 1.25 refuses the unknown field on apply, and the
/// API servers before 1.25 drop it, so the base install stays the 1.19 one. With these
/// rules a compromised node agent, which may patch every LocalVolume, cannot move another
/// node's volume to itself, point it at another claim or shrink it; `onDelete` stays
/// writable, because it is how an admin decides what happens to kept data.
pub fn crds_cel() -> [CustomResourceDefinition; 2] {
    let mut crds = crds();
    for version in &mut crds[1].spec.versions {
        // Every version has a spec (the test below checks the rules are there).
        if let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        {
            spec.x_kubernetes_validations = Some(local_volume_rules());
        }
    }
    crds
}

/// The transition rules on a LocalVolume's `spec` (see [`crds_cel`]).
fn local_volume_rules() -> Vec<ValidationRule> {
    let rule = |rule: &str, message: &str| ValidationRule {
        rule: rule.to_string(),
        message: Some(message.to_string()),
        ..ValidationRule::default()
    };
    vec![
        rule(
            "self.nodeName == oldSelf.nodeName",
            "spec.nodeName is fixed: the volume's data lives on that node",
        ),
        rule(
            "self.pool == oldSelf.pool",
            "spec.pool is fixed: the volume's data lives in that pool",
        ),
        rule(
            "self.claim == oldSelf.claim",
            "spec.claim is fixed: the volume belongs to that claim",
        ),
        rule(
            "self.sizeBytes >= oldSelf.sizeBytes",
            "spec.sizeBytes may only grow: volumes are expanded, never shrunk",
        ),
    ]
}

/// [`crds_cel`] as YAML, for `deploy/optional-crds-cel.yaml`.
pub fn crds_cel_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!("{CEL_HEADER}{}", to_yaml(&crds_cel())?))
}

/// The head of `deploy/optional-crds-cel.yaml`: what it is, and the oldest Kubernetes it is
/// for (read by `scripts/validate-manifests`).
const CEL_HEADER: &str = "\
# Optional, Kubernetes 1.25 and later: the CRDs of deploy/crds.yaml with transition rules
# (x-kubernetes-validations) that keep a LocalVolume's node, pool and claim fixed and let its
# size only grow. Apply it after the base install: kubectl apply -f deploy/optional-crds-cel.yaml
# Generated: stowage crds --cel > deploy/optional-crds-cel.yaml
# kubernetes: >= 1.25
";

/// A JSON patch that removes the value at `tokens` (`["metadata", "annotations", key]`, say)
/// only if it still is `expected`: a concurrent change fails the patch with 422 instead of
/// being undone or dropping someone else's entry. Needs no resourceVersion, so writers of
/// other fields do not make it conflict. The tokens are escaped as JSON pointers need.
pub fn remove_if(tokens: &[&str], expected: &str) -> json_patch::Patch {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{PatchOperation, RemoveOperation, TestOperation};
    let path = PointerBuf::from_tokens(tokens.iter().copied());
    json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: serde_json::Value::from(expected),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ])
}

/// [`remove_if`] for `finalizer` in `finalizers` (an object's `metadata.finalizers`): the
/// entry at its index, tested; `None` when the list does not hold it.
pub fn remove_finalizer(finalizers: &[String], finalizer: &str) -> Option<json_patch::Patch> {
    let index = finalizers.iter().position(|f| f == finalizer)?;
    Some(remove_if(
        &["metadata", "finalizers", &index.to_string()],
        finalizer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, type, path) of the printer columns; those shown only with `-o wide`
    /// (priority > 0) get a `wide:` prefix on the name.
    fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
        crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let name = if c.priority.unwrap_or(0) > 0 {
                    format!("wide:{}", c.name)
                } else {
                    c.name
                };
                (name, c.type_, c.json_path)
            })
            .collect()
    }

    #[test]
    fn crds_are_cluster_scoped_with_status_in_the_stowage_group() {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            assert_eq!(crd.spec.group, names::GROUP, "{name}");
            assert_eq!(crd.spec.scope, "Cluster", "{name}");
            assert_eq!(crd.spec.versions.len(), 1, "{name}");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, names::VERSION, "{name}");
            assert!(v.served && v.storage, "{name}");
            let sub = v.subresources.as_ref().unwrap();
            assert!(sub.status.is_some(), "{name} has a status subresource");
        }
    }

    #[test]
    fn storage_node_crd_prints_a_capacity_table() {
        let [sn, _] = crds();
        assert_eq!(sn.metadata.name.as_deref(), Some("storagenodes.stowage.io"));
        assert_eq!(sn.spec.names.kind, "StorageNode");
        assert_eq!(sn.spec.names.short_names, Some(vec!["sn".to_string()]));
        let cols = columns(&sn);
        let want = [
            ("Ready", "boolean", ".status.ready"),
            ("Pools", "integer", ".status.poolCount"),
            ("Volumes", "integer", ".status.volumes"),
            // For people: sizes as quantities, and the share used.
            ("Capacity", "string", ".status.capacity"),
            ("Allocated", "string", ".status.allocated"),
            ("Used%", "integer", ".status.usedPercent"),
            ("Free", "string", ".status.free"),
            // Exact bytes with -o wide.
            ("wide:CapacityBytes", "integer", ".status.capacityBytes"),
            (
                "wide:AllocatableBytes",
                "integer",
                ".status.allocatableBytes",
            ),
            ("wide:AllocatedBytes", "integer", ".status.allocatedBytes"),
            ("wide:AvailableBytes", "integer", ".status.availableBytes"),
            ("Heartbeat", "date", ".status.heartbeatTime"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(cols, want);
    }

    #[test]
    fn local_volume_crd_prints_node_pool_size_phase_and_claim() {
        let [_, lv] = crds();
        assert_eq!(lv.metadata.name.as_deref(), Some("localvolumes.stowage.io"));
        assert_eq!(lv.spec.names.kind, "LocalVolume");
        assert_eq!(lv.spec.names.short_names, Some(vec!["lv".to_string()]));
        let cols = columns(&lv);
        let paths: Vec<&str> = cols.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".spec.nodeName",
                ".spec.pool",
                ".status.size",
                ".spec.sizeBytes",
                ".status.phase",
                ".spec.claim.namespace",
                ".spec.claim.name",
                ".metadata.creationTimestamp",
            ]
        );
        assert_eq!(cols[2].1, "string");
        assert_eq!(
            (cols[3].0.as_str(), cols[3].1.as_str()),
            ("wide:SizeBytes", "integer")
        );
    }

    #[test]
    fn local_volume_schema_constrains_on_delete_phase_and_size() {
        let yaml = crds_yaml().unwrap();
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let schema = &docs[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let spec = &schema["spec"]["properties"];
        assert_eq!(
            spec["onDelete"]["enum"],
            serde_json::json!(["delete", "archive", "retain"])
        );
        assert_eq!(spec["onDelete"]["default"], "delete");
        assert_eq!(spec["sizeBytes"]["format"], "uint64");
        // Not 0: Kubernetes 1.19 fails every later apply of a CRD with an integral bound.
        assert_eq!(spec["sizeBytes"]["minimum"], -0.5);
        assert!(!yaml.contains("minimum: 0"), "no integral bound anywhere");
        assert_eq!(
            schema["status"]["properties"]["phase"]["enum"],
            serde_json::json!(["Pending", "Ready", "Failed", "Deleting"])
        );
        let required = &docs[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"];
        assert_eq!(required, &serde_json::json!(["spec"]));
    }

    #[test]
    fn status_schemas_carry_no_default() {
        fn defaults(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, child) in m {
                        if k == "default" {
                            out.push(path.to_string());
                        }
                        defaults(child, &format!("{path}.{k}"), out);
                    }
                }
                serde_json::Value::Array(a) => {
                    a.iter()
                        .for_each(|c| defaults(c, &format!("{path}[]"), out));
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        let mut spec_defaults = Vec::new();
        for crd in crds() {
            let json = serde_json::to_value(&crd).unwrap();
            let props = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
            assert!(props["status"].is_object());
            defaults(&props["status"], "status", &mut found);
            defaults(&props["spec"], "spec", &mut spec_defaults);
        }
        assert_eq!(found, Vec::<String>::new(), "defaults under status");
        // Spec defaults stay: they are what a person who writes a spec gets.
        assert_eq!(spec_defaults, ["spec.properties.onDelete"]);
    }

    #[test]
    fn removals_test_the_entry_first_and_escape_keys() {
        let patch = remove_if(
            &["metadata", "annotations", names::ANNOTATION_SELECTED_NODE],
            "n1",
        );
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            serde_json::json!([
                {"op": "test", "path": "/metadata/annotations/volume.kubernetes.io~1selected-node", "value": "n1"},
                {"op": "remove", "path": "/metadata/annotations/volume.kubernetes.io~1selected-node"},
            ])
        );
        let fins = ["a".to_string(), "b".to_string()];
        assert_eq!(
            serde_json::to_value(remove_finalizer(&fins, "b").unwrap()).unwrap(),
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": "b"},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert!(remove_finalizer(&fins, "c").is_none());
    }

    /// The checked-in manifests are exactly what `stowage crds` prints today: a change to the
    /// API types that is not carried into `deploy/` fails here (regenerate with `cargo run
    /// -- crds > deploy/crds.yaml` and `cargo run -- crds --cel >
    /// deploy/optional-crds-cel.yaml`).
    #[test]
    fn the_checked_in_crds_are_what_stowage_crds_prints() {
        let a = crds_yaml().unwrap();
        assert_eq!(
            a,
            include_str!("../../deploy/crds.yaml"),
            "deploy/crds.yaml drifted"
        );
        assert_eq!(
            crds_cel_yaml().unwrap(),
            include_str!("../../deploy/optional-crds-cel.yaml"),
            "deploy/optional-crds-cel.yaml drifted"
        );
        assert_eq!(a.matches("\n---\n").count(), 1);
        assert!(a.starts_with("apiVersion: apiextensions.k8s.io/v1\n"));
    }

    #[test]
    fn the_cel_crds_differ_only_by_the_local_volume_spec_rules() {
        let (base, cel) = (crds(), crds_cel());
        assert_eq!(base[0], cel[0], "StorageNode is unchanged");
        let mut stripped = cel[1].clone();
        for version in &mut stripped.spec.versions {
            let spec = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|r| r.properties.as_mut())
                .and_then(|p| p.get_mut("spec"))
                .unwrap();
            let rules = spec.x_kubernetes_validations.take().unwrap();
            let fields: Vec<&str> = rules
                .iter()
                .map(|r| r.rule.split(['.', ' ']).nth(1).unwrap())
                .collect();
            assert_eq!(fields, ["nodeName", "pool", "claim", "sizeBytes"]);
            assert!(rules.iter().all(|r| r.rule.contains("oldSelf.")));
            assert!(rules.iter().all(|r| r.message.is_some()));
        }
        assert_eq!(base[1], stripped);
    }

    /// Regenerate with `cargo run -q -- crds --cel > deploy/optional-crds-cel.yaml`.
    #[test]
    fn checked_in_cel_crds_match_the_generated_ones() {
        assert_eq!(
            crds_cel_yaml().unwrap(),
            include_str!("../../deploy/optional-crds-cel.yaml"),
            "deploy/optional-crds-cel.yaml is stale: run \
             `cargo run -q -- crds --cel > deploy/optional-crds-cel.yaml`"
        );
    }

    /// Regenerate with `cargo run -q -- crds > deploy/crds.yaml`.
    #[test]
    fn checked_in_crds_match_the_generated_ones() {
        assert_eq!(
            crds_yaml().unwrap(),
            include_str!("../../deploy/crds.yaml"),
            "deploy/crds.yaml is stale: run `cargo run -q -- crds > deploy/crds.yaml`"
        );
    }
}
