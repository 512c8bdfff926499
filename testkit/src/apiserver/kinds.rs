//! The table of served resources. Every kind is data: built-in kinds are listed here, and a
//! CustomResourceDefinition adds rows when it is created and removes them when it goes away.

use std::{cmp::Ordering, sync::Arc};

use serde_json::{Value, json};

use super::status::Target;

/// The storage identity of a resource: objects live under it whatever version is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub(crate) fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// How the served representation differs from the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Stored as served (only `apiVersion` changes between served versions).
    Identity,
    /// `events.k8s.io/v1` Events, stored in their `core/v1` form like the real server does.
    EventsV1,
}

/// What `create` does with a `status` sent by the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StatusOnCreate {
    /// Kept (Nodes register with their status).
    Keep,
    /// Dropped (custom resources with a status subresource).
    Drop,
    /// Replaced by this initial status (Pods and claims start `Pending`).
    Reset(Value),
}

/// One served `group/version/resource`.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<&'static str>,
    pub status_subresource: bool,
    /// `pods/binding`.
    pub binding_subresource: bool,
    pub storage: GroupResource,
    pub codec: Codec,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    /// Served from a CustomResourceDefinition.
    pub custom: bool,
    pub status_on_create: StatusOnCreate,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`, with the JSON
    /// path (dotted) each reads.
    pub field_labels: Vec<(String, String)>,
    /// The structural schema of a custom resource version.
    pub schema: Option<Arc<Value>>,
    /// Whether a delete that removes the object answers with the object (else a `Status`).
    pub return_deleted_object: bool,
}

impl Endpoint {
    /// `v1` or `storage.k8s.io/v1`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// A [`Target`] for error messages about object `name`.
    pub(crate) fn target(&self, name: &str) -> Target {
        Target {
            group: self.group.clone(),
            resource: self.resource.clone(),
            kind: self.kind.clone(),
            name: name.to_string(),
        }
    }
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

struct Row {
    group: &'static str,
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    fields: &'static [&'static str],
}

fn builtin(row: Row) -> Endpoint {
    Endpoint {
        group: row.group.to_string(),
        version: "v1".to_string(),
        resource: row.resource.to_string(),
        singular: row.singular.to_string(),
        kind: row.kind.to_string(),
        list_kind: format!("{}List", row.kind),
        namespaced: row.namespaced,
        short_names: row.short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        verbs: if row.resource == "namespaces" {
            ALL_VERBS
                .iter()
                .copied()
                .filter(|v| *v != "deletecollection")
                .collect()
        } else {
            ALL_VERBS.to_vec()
        },
        status_subresource: row.status,
        binding_subresource: row.resource == "pods",
        storage: GroupResource::new(row.group, row.resource),
        codec: Codec::Identity,
        generation: row.resource == "customresourcedefinitions",
        custom: false,
        status_on_create: match row.resource {
            "pods" | "persistentvolumeclaims" | "persistentvolumes" => {
                StatusOnCreate::Reset(json!({"phase": "Pending"}))
            }
            "namespaces" => StatusOnCreate::Reset(json!({"phase": "Active"})),
            "customresourcedefinitions" => StatusOnCreate::Reset(json!({})),
            _ => StatusOnCreate::Keep,
        },
        field_labels: row
            .fields
            .iter()
            .map(|f| (f.to_string(), stored_path(f)))
            .collect(),
        schema: None,
        return_deleted_object: false,
    }
}

/// The JSON path a built-in field label reads (`source` is the reporting component).
fn stored_path(label: &str) -> String {
    match label {
        "source" => "source.component".to_string(),
        other => other.to_string(),
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The versions of `storage.k8s.io` `csistoragecapacities` a server serves when its builder
/// says nothing: v1 alone, as from Kubernetes 1.27 on.
pub(crate) const DEFAULT_CAPACITY_VERSIONS: &[&str] = &["v1"];

/// The built-in kinds this server serves, with `csistoragecapacities` in `capacity_versions`
/// (each of `v1`, `v1beta1`, `v1alpha1`; one storage, so an object written in one version
/// reads in the others, as on a real server).
pub(crate) fn builtins(capacity_versions: &[String]) -> Vec<Endpoint> {
    let rows = [
        Row {
            group: "",
            resource: "namespaces",
            singular: "namespace",
            kind: "Namespace",
            namespaced: false,
            short: &["ns"],
            status: true,
            fields: &["status.phase"],
        },
        Row {
            group: "",
            resource: "nodes",
            singular: "node",
            kind: "Node",
            namespaced: false,
            short: &["no"],
            status: true,
            fields: &["spec.unschedulable"],
        },
        Row {
            group: "",
            resource: "pods",
            singular: "pod",
            kind: "Pod",
            namespaced: true,
            short: &["po"],
            status: true,
            fields: &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
        },
        Row {
            group: "",
            resource: "persistentvolumes",
            singular: "persistentvolume",
            kind: "PersistentVolume",
            namespaced: false,
            short: &["pv"],
            status: true,
            fields: &[],
        },
        Row {
            group: "",
            resource: "persistentvolumeclaims",
            singular: "persistentvolumeclaim",
            kind: "PersistentVolumeClaim",
            namespaced: true,
            short: &["pvc"],
            status: true,
            fields: &[],
        },
        Row {
            group: "",
            resource: "events",
            singular: "event",
            kind: "Event",
            namespaced: true,
            short: &["ev"],
            status: false,
            fields: EVENT_FIELDS,
        },
        Row {
            group: "",
            resource: "configmaps",
            singular: "configmap",
            kind: "ConfigMap",
            namespaced: true,
            short: &["cm"],
            status: false,
            fields: &[],
        },
        Row {
            group: "",
            resource: "secrets",
            singular: "secret",
            kind: "Secret",
            namespaced: true,
            short: &[],
            status: false,
            fields: &["type"],
        },
        Row {
            group: "storage.k8s.io",
            resource: "storageclasses",
            singular: "storageclass",
            kind: "StorageClass",
            namespaced: false,
            short: &["sc"],
            status: false,
            fields: &[],
        },
        Row {
            group: "coordination.k8s.io",
            resource: "leases",
            singular: "lease",
            kind: "Lease",
            namespaced: true,
            short: &[],
            status: false,
            fields: &[],
        },
        Row {
            group: "apiextensions.k8s.io",
            resource: "customresourcedefinitions",
            singular: "customresourcedefinition",
            kind: "CustomResourceDefinition",
            namespaced: false,
            short: &["crd", "crds"],
            status: true,
            fields: &[],
        },
    ];
    let mut out: Vec<Endpoint> = rows.into_iter().map(builtin).collect();
    // events.k8s.io/v1 shares storage with core/v1 events; field labels are spelled in the
    // new vocabulary and mapped to the stored one.
    let mut events = builtin(Row {
        group: "events.k8s.io",
        resource: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short: &["ev"],
        status: false,
        fields: &[],
    });
    events.storage = GroupResource::new("", "events");
    events.codec = Codec::EventsV1;
    out.push(builtin(Row {
        group: "apps",
        resource: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short: &["deploy"],
        status: true,
        fields: &[],
    }));
    out.push(builtin(Row {
        group: "storage.k8s.io",
        resource: "csidrivers",
        singular: "csidriver",
        kind: "CSIDriver",
        namespaced: false,
        short: &[],
        status: false,
        fields: &[],
    }));
    for version in capacity_versions {
        let mut capacity = builtin(Row {
            group: "storage.k8s.io",
            resource: "csistoragecapacities",
            singular: "csistoragecapacity",
            kind: "CSIStorageCapacity",
            namespaced: true,
            short: &[],
            status: false,
            fields: &[],
        });
        capacity.version = version.clone();
        out.push(capacity);
    }
    events.field_labels = EVENT_FIELDS
        .iter()
        .map(|f| {
            let served = f
                .replace("involvedObject.", "regarding.")
                .replace("reportingComponent", "reportingController")
                .replace("source", "deprecatedSource");
            (served, stored_path(f))
        })
        .chain(EVENT_FIELDS.iter().map(|f| (f.to_string(), stored_path(f))))
        .collect();
    out.push(events);
    out
}

/// Builds the endpoints a CustomResourceDefinition (as stored JSON) serves: one per served
/// version. The CRD has been validated before this is called.
pub(crate) fn crd_endpoints(crd: &Value) -> Vec<Endpoint> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    let singular = names["singular"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() == Some("Namespaced");
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let status = v["subresources"].get("status").is_some();
        let field_labels = v["selectableFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["jsonPath"].as_str())
            .map(|p| {
                let p = p.trim_start_matches('.').to_string();
                (p.clone(), p)
            })
            .collect();
        out.push(Endpoint {
            group: group.to_string(),
            version: v["name"].as_str().unwrap_or_default().to_string(),
            resource: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            verbs: ALL_VERBS.to_vec(),
            status_subresource: status,
            binding_subresource: false,
            storage: GroupResource::new(group, plural),
            codec: Codec::Identity,
            generation: true,
            custom: true,
            status_on_create: if status {
                StatusOnCreate::Drop
            } else {
                StatusOnCreate::Keep
            },
            field_labels,
            schema: v["schema"].get("openAPIV3Schema").cloned().map(Arc::new),
            return_deleted_object: true,
        });
    }
    out
}

/// Kubernetes version priority: GA > beta > alpha, then by major and minor number, then
/// anything else alphabetically. Returns `Ordering::Less` when `a` is preferred.
pub(crate) fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u32, u8, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u32 = rest.get(..digits)?.parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((major, 3, 0));
        }
        let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
            (2, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, n)
        } else {
            return None;
        };
        Some((major, stage, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ga_versions_are_preferred_over_beta_and_alpha() {
        let mut v = vec!["v1alpha1", "v2beta1", "v1", "v1beta2", "foo", "v2"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(v, vec!["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }
}
