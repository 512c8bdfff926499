//! Admission, defaulting and validation: the subset of the real server's rules that code
//! talking to it can trip over. Each rule cites the message the real server uses.

use serde_json::{Map, Value, json};

use super::{
    kinds::{Endpoint, GroupResource},
    status::{ApiError, ApiResult, Cause},
    util::parse_quantity,
};

/// Read access to stored objects, for rules that look at other objects (default
/// StorageClass, expansion allowed by the class).
pub(crate) trait Lookup {
    fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Value>;
    fn all(&self, gr: &GroupResource) -> Vec<&Value>;
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum(c) || c == '-')
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum);
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string())
    }
}

/// RFC 1123 subdomain: labels joined by '.', ≤ 253.
pub(crate) fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| is_alnum(c) || c == '-')
                && l.starts_with(is_alnum)
                && l.ends_with(is_alnum)
        });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string())
    }
}

fn is_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A qualified name (`prefix/name` or `name`), as used for label keys and finalizers.
pub(crate) fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".to_string());
        }
        dns_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if !is_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with at most 63 characters".to_string());
    }
    Ok(())
}

/// A label value: empty, or a name part of at most 63 characters.
pub(crate) fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || is_name_part(s) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') with at most 63 characters".to_string())
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn set_default(obj: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        cur = map
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(map) = cur.as_object_mut() {
        map.entry(last.to_string()).or_insert(value);
    }
}

/// Applies the defaults the real server fills in (only those code might read back).
pub(crate) fn apply_defaults(ep: &Endpoint, obj: &mut Value) {
    if ep.custom {
        // Custom resources are defaulted from their schema by `schema::normalize`.
        return;
    }
    match (ep.group.as_str(), ep.resource.as_str()) {
        ("", "pods") => {
            set_default(obj, &["spec", "schedulerName"], json!("default-scheduler"));
            set_default(obj, &["spec", "restartPolicy"], json!("Always"));
            set_default(obj, &["spec", "dnsPolicy"], json!("ClusterFirst"));
            set_default(obj, &["spec", "terminationGracePeriodSeconds"], json!(30));
        }
        ("", "persistentvolumeclaims") => {
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        ("", "persistentvolumes") => {
            set_default(
                obj,
                &["spec", "persistentVolumeReclaimPolicy"],
                json!("Retain"),
            );
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        ("storage.k8s.io", "storageclasses") => {
            set_default(obj, &["reclaimPolicy"], json!("Delete"));
            set_default(obj, &["volumeBindingMode"], json!("Immediate"));
        }
        ("", "namespaces") => {
            if let Some(name) = str_at(obj, &["metadata", "name"]).map(str::to_string) {
                set_default(
                    obj,
                    &["metadata", "labels", "kubernetes.io/metadata.name"],
                    json!(name),
                );
            }
        }
        ("", "secrets") => set_default(obj, &["type"], json!("Opaque")),
        ("apiextensions.k8s.io", "customresourcedefinitions") => drop_unknown_crd_fields(obj),
        _ => {}
    }
}

/// The fields of a v1 CRD's `spec` and of its `versions` that kube-apiserver 1.19 knows.
const CRD_SPEC_FIELDS: &[&str] = &[
    "group",
    "names",
    "scope",
    "versions",
    "conversion",
    "preserveUnknownFields",
];
const CRD_VERSION_FIELDS: &[&str] = &[
    "name",
    "served",
    "storage",
    "deprecated",
    "deprecationWarning",
    "schema",
    "subresources",
    "additionalPrinterColumns",
];

/// kube-apiserver 1.19 decodes a CRD into its own types and silently drops what they do not
/// have, `selectableFields` (1.30+) among them (checked on 1.19.16: a CRD with
/// `spec.bogusField` and `versions[0].selectableFields` is created without them). Field
/// selectors on such fields are then refused, as there.
fn drop_unknown_crd_fields(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.retain(|k, _| CRD_SPEC_FIELDS.contains(&k.as_str()));
    for v in spec
        .get_mut("versions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        v.retain(|k, _| CRD_VERSION_FIELDS.contains(&k.as_str()));
    }
}

/// Mutating admission on create: the `StorageObjectInUseProtection` and
/// `DefaultStorageClass` plugins.
pub(crate) fn admit_create(ep: &Endpoint, obj: &mut Value, lookup: &dyn Lookup) {
    let protection = match (ep.group.as_str(), ep.resource.as_str()) {
        ("", "persistentvolumeclaims") => Some(super::ops::PVC_PROTECTION),
        ("", "persistentvolumes") => Some(super::ops::PV_PROTECTION),
        _ => None,
    };
    if let Some(finalizer) = protection
        && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let fins = meta.entry("finalizers").or_insert_with(|| json!([]));
        if fins.is_null() {
            *fins = json!([]);
        }
        if let Some(list) = fins.as_array_mut()
            && !list.iter().any(|f| f == finalizer)
        {
            list.push(json!(finalizer));
        }
    }
    if ep.group.is_empty()
        && ep.resource == "persistentvolumeclaims"
        && obj["spec"].get("storageClassName").is_none()
    {
        let classes = lookup.all(&GroupResource::new("storage.k8s.io", "storageclasses"));
        // The newest default class wins, as in the real plugin.
        let default = classes
            .into_iter()
            .filter(|c| {
                str_at(
                    c,
                    &[
                        "metadata",
                        "annotations",
                        "storageclass.kubernetes.io/is-default-class",
                    ],
                ) == Some("true")
            })
            .max_by_key(|c| {
                str_at(c, &["metadata", "creationTimestamp"])
                    .unwrap_or_default()
                    .to_string()
            })
            .and_then(|c| str_at(c, &["metadata", "name"]).map(str::to_string));
        if let (Some(name), Some(spec)) =
            (default, obj.get_mut("spec").and_then(Value::as_object_mut))
        {
            spec.insert("storageClassName".into(), json!(name));
        }
    }
}

fn name_rule(ep: &Endpoint) -> fn(&str) -> Result<(), String> {
    if ep.group.is_empty() && ep.resource == "namespaces" {
        dns_label
    } else {
        dns_subdomain
    }
}

/// Checks metadata every kind shares.
fn validate_meta(ep: &Endpoint, obj: &Value, causes: &mut Vec<Cause>) {
    let meta = &obj["metadata"];
    if let Some(name) = meta["name"].as_str()
        && let Err(e) = name_rule(ep)(name)
    {
        causes.push(Cause::invalid("metadata.name", &json!(name), &e));
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if let Err(e) = qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", &json!(k), &e));
            }
            match v.as_str() {
                Some(s) => {
                    if let Err(e) = label_value(s) {
                        causes.push(Cause::invalid("metadata.labels", v, &e));
                    }
                }
                None => causes.push(Cause::type_invalid(
                    format!("metadata.labels.{k}"),
                    v,
                    "string",
                )),
            }
        }
    }
    if let Some(ann) = meta["annotations"].as_object() {
        let mut total = 0usize;
        for (k, v) in ann {
            if let Err(e) = qualified_name(&k.to_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", &json!(k), &e));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause::too_long("metadata.annotations", 256 * 1024));
        }
    }
    for (i, f) in meta["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match f.as_str() {
            Some(s) => {
                if let Err(e) = qualified_name(s) {
                    causes.push(Cause::invalid(format!("metadata.finalizers[{i}]"), f, &e));
                }
            }
            None => causes.push(Cause::type_invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "string",
            )),
        }
    }
    let mut controllers = 0;
    for (i, r) in meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for field in ["apiVersion", "kind", "name", "uid"] {
            if r[field].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(
                    format!("metadata.ownerReferences[{i}].{field}"),
                    "",
                ));
            }
        }
        if r["controller"].as_bool() == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        causes.push(Cause::invalid(
            "metadata.ownerReferences",
            &meta["ownerReferences"],
            "Only one reference can have Controller set to true",
        ));
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "flexVolume",
    "glusterfs",
    "portworxVolume",
    "quobyte",
    "scaleIO",
    "storageos",
    "vsphereVolume",
    "photonPersistentDisk",
    "cinder",
    "flocker",
];

fn validate_access_modes(spec: &Value, causes: &mut Vec<Cause>) {
    match spec["accessModes"].as_array() {
        Some(modes) if !modes.is_empty() => {
            for m in modes {
                if !m.as_str().is_some_and(|s| ACCESS_MODES.contains(&s)) {
                    causes.push(Cause::not_supported("spec.accessModes", m, ACCESS_MODES));
                }
            }
        }
        _ => causes.push(Cause::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        )),
    }
}

fn quantity_at(v: &Value, path: &[&str]) -> Option<f64> {
    str_at(v, path).and_then(parse_quantity)
}

fn validate_kind(ep: &Endpoint, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    // Keyed by storage: events.k8s.io Events are validated in their stored core/v1 form.
    match (ep.storage.group.as_str(), ep.storage.resource.as_str()) {
        ("", "pods") => match spec["containers"].as_array() {
            Some(cs) if !cs.is_empty() => {
                for (i, c) in cs.iter().enumerate() {
                    match c["name"].as_str() {
                        Some(n) => {
                            if let Err(e) = dns_label(n) {
                                causes.push(Cause::invalid(
                                    format!("spec.containers[{i}].name"),
                                    &c["name"],
                                    &e,
                                ));
                            }
                        }
                        None => {
                            causes.push(Cause::required(format!("spec.containers[{i}].name"), ""))
                        }
                    }
                    if c["image"].as_str().is_none_or(str::is_empty) {
                        causes.push(Cause::required(format!("spec.containers[{i}].image"), ""));
                    }
                }
            }
            _ => causes.push(Cause::required("spec.containers", "")),
        },
        ("", "persistentvolumeclaims") => {
            validate_access_modes(spec, causes);
            match str_at(spec, &["resources", "requests", "storage"]) {
                None => causes.push(Cause::required("spec.resources[storage]", "")),
                Some(q) => match parse_quantity(q) {
                    Some(v) if v > 0.0 => {}
                    Some(_) => causes.push(Cause::invalid("spec.resources[storage]", &json!(q), "must be greater than zero")),
                    None => causes.push(Cause::invalid("spec.resources[storage]", &json!(q), "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")),
                },
            }
        }
        ("", "persistentvolumes") => {
            validate_access_modes(spec, causes);
            match str_at(spec, &["capacity", "storage"]) {
                None => causes.push(Cause::required("spec.capacity", "")),
                Some(q) if parse_quantity(q).is_none() => {
                    causes.push(Cause::invalid("spec.capacity[storage]", &json!(q), "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
                }
                Some(_) => {}
            }
            let sources: Vec<&&str> = VOLUME_SOURCES
                .iter()
                .filter(|s| spec.get(**s).is_some())
                .collect();
            match sources.len() {
                0 => causes.push(Cause::required("spec", "must specify a volume type")),
                1 => {}
                _ => causes.push(Cause::forbidden(
                    format!("spec.{}", sources[1]),
                    "may not specify more than 1 volume type",
                )),
            }
            if spec.get("local").is_some() {
                if spec["local"]["path"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required("spec.local.path", ""));
                }
                if spec.get("nodeAffinity").is_none() {
                    causes.push(Cause::required(
                        "spec.nodeAffinity",
                        "Local volume requires node affinity",
                    ));
                }
            }
            if let Some(p) = spec["persistentVolumeReclaimPolicy"].as_str()
                && !["Retain", "Delete", "Recycle"].contains(&p)
            {
                causes.push(Cause::not_supported(
                    "spec.persistentVolumeReclaimPolicy",
                    &json!(p),
                    &["Delete", "Recycle", "Retain"],
                ));
            }
        }
        ("storage.k8s.io", "csistoragecapacities") => {
            if obj["storageClassName"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("storageClassName", ""));
            }
            for field in ["capacity", "maximumVolumeSize"] {
                if let Some(q) = obj.get(field).filter(|q| !q.is_null())
                    && q.as_str().and_then(super::parse_quantity).is_none()
                {
                    causes.push(Cause::invalid(field, q, "must be a quantity"));
                }
            }
        }
        ("storage.k8s.io", "storageclasses") => {
            if obj["provisioner"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("provisioner", ""));
            }
            if let Some(p) = obj["reclaimPolicy"].as_str()
                && !["Delete", "Retain"].contains(&p)
            {
                causes.push(Cause::not_supported(
                    "reclaimPolicy",
                    &json!(p),
                    &["Delete", "Retain"],
                ));
            }
            if let Some(m) = obj["volumeBindingMode"].as_str()
                && !["Immediate", "WaitForFirstConsumer"].contains(&m)
            {
                causes.push(Cause::not_supported(
                    "volumeBindingMode",
                    &json!(m),
                    &["Immediate", "WaitForFirstConsumer"],
                ));
            }
        }
        ("", "events") => {
            // legacyValidateEvent: old-style events (no eventTime) live in their object's
            // namespace, or "default" for cluster-scoped objects; new-style events about
            // cluster-scoped objects live in "kube-system" (Kubernetes 1.19 and 1.20 refuse
            // "default", which later versions allow: the oldest supported rule is kept) and
            // must say who reported them.
            let ns = str_at(obj, &["metadata", "namespace"]).unwrap_or_default();
            let involved = str_at(obj, &["involvedObject", "namespace"]).unwrap_or_default();
            let mismatch = || {
                Cause::invalid(
                    "involvedObject.namespace",
                    &json!(involved),
                    "does not match event.namespace",
                )
            };
            if obj.get("eventTime").is_none_or(Value::is_null) {
                if (involved.is_empty() && !ns.is_empty() && ns != "default")
                    || (!involved.is_empty() && involved != ns)
                {
                    causes.push(mismatch());
                }
            } else {
                if involved.is_empty() && ns != "kube-system" {
                    causes.push(mismatch());
                }
                for (field, max) in [
                    ("reportingComponent", 253),
                    ("reportingInstance", 128),
                    ("action", 128),
                    ("reason", 128),
                ] {
                    match obj[field].as_str() {
                        None | Some("") => causes.push(Cause::required(field, "")),
                        Some(s) if s.len() > max => causes.push(Cause::too_long(field, max)),
                        Some(_) => {}
                    }
                }
                if obj["message"].as_str().is_some_and(|m| m.len() > 1024) {
                    causes.push(Cause::too_long("note", 1024));
                }
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => validate_crd(obj, causes),
        _ => {}
    }
}

fn validate_crd(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    } else if !group.contains('.') || dns_subdomain(group).is_err() {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    } else if let Err(e) = dns_label(plural) {
        causes.push(Cause::invalid("spec.names.plural", &json!(plural), &e));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    let name = str_at(obj, &["metadata", "name"]).unwrap_or_default();
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !matches!(spec["scope"].as_str(), Some("Cluster" | "Namespaced")) {
        causes.push(Cause::not_supported(
            "spec.scope",
            &spec["scope"],
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v["name"].as_str().is_none_or(|n| dns_label(n).is_err()) {
            causes.push(Cause::invalid(
                format!("spec.versions[{i}].name"),
                &v["name"],
                "a DNS-1035 label is required",
            ));
        }
        match v["schema"].get("openAPIV3Schema") {
            None => causes.push(Cause::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            )),
            Some(schema) => {
                let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
                let before = causes.len();
                check_structural(schema, &path, Junctor::No, causes);
                check_root_metadata(schema, &path, causes);
                // Defaults are checked on structural schemas only, as the real server does.
                if causes.len() == before {
                    check_defaults(schema, &path, causes);
                }
            }
        }
    }
}

/// Whether a schema node sits inside `allOf`/`anyOf`/`oneOf`/`not`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Junctor {
    No,
    Yes,
}

/// The structural-schema rules (required for `apiextensions.k8s.io/v1` CRDs), with
/// 1.19's messages (checked on 1.19.16): a `type` at the root (`object`) and on every
/// property, additional property and array item (unless `x-kubernetes-int-or-string` or
/// `x-kubernetes-preserve-unknown-fields`), `items` on arrays, and no `type`, `default`,
/// `nullable`, `additionalProperties` or `x-kubernetes-*` inside the junctors.
fn check_structural(schema: &Value, path: &str, junctor: Junctor, causes: &mut Vec<Cause>) {
    let ty = schema["type"].as_str().filter(|t| !t.is_empty());
    let root = path.ends_with("openAPIV3Schema");
    if junctor == Junctor::Yes {
        for key in ["type", "default", "nullable", "additionalProperties"]
            .into_iter()
            .map(str::to_string)
            .chain(
                schema
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .filter(|k| k.starts_with("x-kubernetes-"))
                    .cloned(),
            )
        {
            if schema.get(&key).is_some() {
                causes.push(Cause::forbidden(
                    format!("{path}.{key}"),
                    "must be empty to be structural",
                ));
            }
        }
    } else if root {
        match ty {
            None => causes.push(Cause::required(
                format!("{path}.type"),
                "must not be empty at the root",
            )),
            Some("object") => {}
            Some(other) => causes.push(Cause::invalid(
                format!("{path}.type"),
                &json!(other),
                "must be object at the root",
            )),
        }
    }
    if let Some(pattern) = schema["pattern"].as_str()
        && let Err(e) = regex::Regex::new(pattern)
    {
        let why = e.to_string();
        let why = why.lines().last().unwrap_or_default().trim();
        causes.push(Cause::invalid(
            format!("{path}.pattern"),
            &json!(pattern),
            &format!("must be a valid regular expression, but isn't: {why}"),
        ));
    }
    if junctor == Junctor::No && ty == Some("array") && !schema["items"].is_object() {
        causes.push(Cause::required(
            format!("{path}.items"),
            "must be specified",
        ));
    }
    let untyped_ok = |s: &Value| {
        s["x-kubernetes-int-or-string"].as_bool() == Some(true)
            || s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
    };
    let mut child = |s: &Value, p: String, what: &str| {
        if junctor == Junctor::No && s["type"].as_str().is_none_or(str::is_empty) && !untyped_ok(s)
        {
            causes.push(Cause::required(
                format!("{p}.type"),
                &format!("must not be empty for specified {what}"),
            ));
        }
        check_structural(s, &p, junctor, causes);
    };
    if let Some(props) = schema["properties"].as_object() {
        for (name, s) in props {
            child(s, format!("{path}.properties[{name}]"), "object fields");
        }
    }
    if schema["additionalProperties"].is_object() {
        child(
            &schema["additionalProperties"],
            format!("{path}.additionalProperties"),
            "object fields",
        );
    }
    if schema["items"].is_object() {
        child(&schema["items"], format!("{path}.items"), "array items");
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        for (i, s) in schema[j].as_array().into_iter().flatten().enumerate() {
            check_structural(s, &format!("{path}.{j}[{i}]"), Junctor::Yes, causes);
        }
    }
    if schema["not"].is_object() {
        check_structural(&schema["not"], &format!("{path}.not"), Junctor::Yes, causes);
    }
}

/// At the root, `metadata` may only restrict `name` and `generateName`.
fn check_root_metadata(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(meta) = schema["properties"].get("metadata") else {
        return;
    };
    let only_names = meta.as_object().is_some_and(|m| {
        m.iter().all(|(k, v)| match k.as_str() {
            "type" => v == "object",
            "properties" => v
                .as_object()
                .is_some_and(|p| p.keys().all(|k| k == "name" || k == "generateName")),
            _ => false,
        })
    });
    if !only_names {
        causes.push(Cause::forbidden(
            format!("{path}.properties[metadata]"),
            "must not specify anything other than name and generateName, but metadata is implicitly specified",
        ));
    }
}

/// Every `default` must be valid against its own schema, as the API server checks since
/// structural schemas (1.16).
fn check_defaults(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(default) = schema.get("default")
        && super::schema::has_unknown_fields(schema, default)
    {
        causes.push(Cause::invalid(
            format!("{path}.default"),
            default,
            "must not have unknown fields",
        ));
    } else if let Some(default) = schema.get("default")
        && let Some(c) = super::schema::validate_value(schema, default).first()
    {
        // 1.19 names the default's root "" in the message: `default: Invalid value:
        // "number":  in body must be of type integer: "number"`.
        causes.push(Cause {
            reason: c.reason,
            field: format!("{path}.default"),
            message: c.message.replace("<root> in body", " in body"),
        });
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, child) in props {
            check_defaults(child, &format!("{path}.properties[{name}]"), causes);
        }
    }
    if schema["items"].is_object() {
        check_defaults(&schema["items"], &format!("{path}.items"), causes);
    }
    if schema["additionalProperties"].is_object() {
        check_defaults(
            &schema["additionalProperties"],
            &format!("{path}.additionalProperties"),
            causes,
        );
    }
}

/// Validates an object about to be created.
pub(crate) fn validate_create(ep: &Endpoint, obj: &Value) -> ApiResult<()> {
    let mut causes = Vec::new();
    validate_meta(ep, obj, &mut causes);
    validate_kind(ep, obj, &mut causes);
    finish(ep, obj, causes)
}

fn finish(ep: &Endpoint, obj: &Value, causes: Vec<Cause>) -> ApiResult<()> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &ep.target(str_at(obj, &["metadata", "name"]).unwrap_or_default()),
            causes,
        ))
    }
}

/// The diff the real server appends to "spec is immutable" messages (go-cmp's, from `new`
/// to `old`), approximated: one `-`/`+` pair per changed top-level field, Go-named.
fn spec_diff(go_type: &str, new: &Value, old: &Value) -> String {
    let empty = serde_json::Map::new();
    let (n, o) = (
        new.as_object().unwrap_or(&empty),
        old.as_object().unwrap_or(&empty),
    );
    let keys: std::collections::BTreeSet<&String> = n.keys().chain(o.keys()).collect();
    let mut out = format!("  {go_type}{{\n");
    for k in keys {
        let (a, b) = (n.get(k), o.get(k));
        if a == b {
            continue;
        }
        let mut go_name = k.clone();
        if let Some(first) = go_name.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        let show = |v: Option<&Value>| v.map_or("nil".to_string(), |v| format!("&{v}"));
        out.push_str(&format!("- \t{go_name}: {},\n", show(a)));
        out.push_str(&format!("+ \t{go_name}: {},\n", show(b)));
    }
    out.push_str("  }\n");
    out
}

fn without(v: &Value, paths: &[&[&str]]) -> Value {
    let mut v = v.clone();
    for path in paths {
        if let Some((last, parents)) = path.split_last() {
            let mut cur = Some(&mut v);
            for p in parents {
                cur = cur.and_then(|c| c.get_mut(*p));
            }
            if let Some(map) = cur.and_then(Value::as_object_mut) {
                map.remove(*last);
            }
        }
    }
    v
}

/// Validates an update of `old` to `new` (both in stored form, after defaulting).
pub(crate) fn validate_update(
    ep: &Endpoint,
    old: &Value,
    new: &Value,
    lookup: &dyn Lookup,
) -> ApiResult<()> {
    let mut causes = Vec::new();
    validate_meta(ep, new, &mut causes);
    validate_kind(ep, new, &mut causes);
    let name = str_at(new, &["metadata", "name"]).unwrap_or_default();
    // A finalizer may not be added to an object that is already being deleted.
    if old["metadata"].get("deletionTimestamp").is_some() {
        let before: Vec<&Value> = old["metadata"]["finalizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for f in new["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !before.contains(&f) {
                causes.push(Cause::forbidden("metadata.finalizers", &format!("no new finalizers can be added if the object is being deleted, found new finalizers [{}]", f.as_str().unwrap_or_default())));
            }
        }
    }
    let (os, ns) = (&old["spec"], &new["spec"]);
    match (ep.group.as_str(), ep.resource.as_str()) {
        ("", "pods") => {
            let strip = |spec: &Value| {
                let mut s = without(
                    spec,
                    &[
                        &["activeDeadlineSeconds"],
                        &["tolerations"],
                        &["schedulingGates"],
                        &["terminationGracePeriodSeconds"],
                    ],
                );
                for list in ["containers", "initContainers"] {
                    for c in s
                        .get_mut(list)
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("image");
                        }
                    }
                }
                s
            };
            if strip(os) != strip(ns) {
                causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        ("", "persistentvolumeclaims") => {
            // ValidatePersistentVolumeClaimUpdate, as on 1.19 (and, for these rules, up to
            // 1.31): the spec is immutable except `resources.requests` of a bound claim and
            // a `volumeName` set once; `volumeAttributesClassName` (1.29+) is let through.
            // Setting the class of a claim created without one (the retroactive default
            // class of 1.26+) is refused, as 1.19 refuses it.
            let bound = str_at(old, &["status", "phase"]) == Some("Bound");
            let mut mutable: Vec<&[&str]> = vec![&["volumeAttributesClassName"]];
            if bound {
                mutable.push(&["resources", "requests"]);
            }
            if os["volumeName"].as_str().is_none_or(str::is_empty) {
                mutable.push(&["volumeName"]);
            }
            let (o, n) = (without(os, &mutable), without(ns, &mutable));
            if o != n {
                causes.push(Cause::forbidden(
                    "spec",
                    &format!(
                        "spec is immutable after creation except resources.requests for bound claims\n{}",
                        spec_diff("core.PersistentVolumeClaimSpec", &n, &o)
                    ),
                ));
            }
            let before = quantity_at(os, &["resources", "requests", "storage"]);
            let after = quantity_at(ns, &["resources", "requests", "storage"]);
            if let (Some(b), Some(a)) = (before, after) {
                if a < b {
                    // 1.19–1.31 (RecoverVolumeExpansionFailure off): no decrease at all;
                    // 1.32+ allows one down to just above status.capacity.
                    causes.push(Cause::forbidden(
                        "spec.resources.requests.storage",
                        "field can not be less than previous value",
                    ));
                } else if a > b && causes.is_empty() {
                    // The PersistentVolumeClaimResize admission plugin.
                    let class = ns["storageClassName"].as_str().unwrap_or_default();
                    let allowed = lookup
                        .get(
                            &GroupResource::new("storage.k8s.io", "storageclasses"),
                            "",
                            class,
                        )
                        .is_some_and(|sc| sc["allowVolumeExpansion"].as_bool() == Some(true));
                    if !allowed {
                        return Err(ApiError::forbidden(
                            &ep.target(name),
                            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
                        ));
                    }
                }
            }
        }
        ("", "persistentvolumes") => {
            for source in VOLUME_SOURCES {
                if os.get(*source) != ns.get(*source) {
                    causes.push(Cause::forbidden(
                        "spec.persistentvolumesource",
                        "spec.persistentvolumesource is immutable after creation",
                    ));
                    break;
                }
            }
            if os.get("nodeAffinity").is_some() && os.get("nodeAffinity") != ns.get("nodeAffinity")
            {
                causes.push(Cause::invalid(
                    "spec.nodeAffinity",
                    ns.get("nodeAffinity").unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
        ("storage.k8s.io", "csistoragecapacities") => {
            for field in ["storageClassName", "nodeTopology"] {
                if old.get(field) != new.get(field) {
                    causes.push(Cause::invalid(
                        field,
                        new.get(field).unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
        ("storage.k8s.io", "storageclasses") => {
            for (field, msg) in [
                ("parameters", "updates to parameters are forbidden."),
                ("provisioner", "updates to provisioner are forbidden."),
                ("reclaimPolicy", "updates to reclaimPolicy are forbidden."),
            ] {
                if old.get(field) != new.get(field) {
                    causes.push(Cause::forbidden(field, msg));
                }
            }
            if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
                causes.push(Cause::invalid(
                    "volumeBindingMode",
                    &new["volumeBindingMode"],
                    "field is immutable",
                ));
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            for field in ["group", "scope"] {
                if os.get(field) != ns.get(field) {
                    causes.push(Cause::invalid(
                        format!("spec.{field}"),
                        &ns[field],
                        "field is immutable",
                    ));
                }
            }
        }
        _ => {}
    }
    finish(ep, new, causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(dns_subdomain("pvc-1.node-a").is_ok());
        assert!(dns_subdomain("Upper").is_err());
        assert!(dns_subdomain("-lead").is_err());
        assert!(dns_subdomain(&"a".repeat(254)).is_err());
        assert!(dns_label("a.b").is_err());
        assert!(qualified_name("stowage.io/agent-cleanup").is_ok());
        assert!(qualified_name("/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("a/b").is_err());
    }
}
