//! Patch formats and the server-side apply approximation.
//!
//! * `application/merge-patch+json`: RFC 7386, exact.
//! * `application/json-patch+json`: RFC 6902, exact (via the `json-patch` crate).
//! * `application/strategic-merge-patch+json`: a merge patch in which the lists the real
//!   types mark `patchStrategy: merge` (containers, volumes, env, conditions,
//!   ownerReferences, …) merge by their key, `metadata.finalizers` merges as a set, and the
//!   `$patch: replace|delete`, `$deleteFromPrimitiveList/…` directives work; `$retainKeys`
//!   and `$setElementOrder/…` are accepted and ignored. Rejected (415) for custom resources,
//!   as on the real server.
//! * `application/apply-patch+yaml`: see [`apply`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::status::{ApiError, ApiResult};

/// How a list merges.
#[derive(Debug, Clone, PartialEq)]
enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// What is known about the type at some point of an object: custom resources carry their
/// schema node, built-ins use the table of well-known list fields. `metadata` always uses the
/// built-in table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape<'a> {
    schema: Option<&'a Value>,
    custom: bool,
    root: bool,
}

impl<'a> Shape<'a> {
    /// The shape of a whole object of a built-in kind, or of a custom kind with `schema`.
    pub(crate) fn root(custom: bool, schema: Option<&'a Value>) -> Self {
        Self {
            schema,
            custom,
            root: true,
        }
    }

    fn child(&self, key: &str) -> Self {
        if self.root && key == "metadata" {
            return Self {
                schema: None,
                custom: false,
                root: false,
            };
        }
        let schema = self.schema.and_then(|s| {
            s["properties"]
                .get(key)
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
        });
        Self {
            schema,
            custom: self.custom,
            root: false,
        }
    }

    fn items(&self, key: &str) -> Self {
        Self {
            schema: self
                .schema
                .and_then(|s| s["properties"].get(key))
                .and_then(|l| l.get("items")),
            custom: self.custom,
            root: false,
        }
    }

    fn list_kind(&self, key: &str) -> ListKind {
        if self.custom && !(self.root && key == "metadata") && self.schema.is_some() {
            let list = self.schema.and_then(|s| s["properties"].get(key));
            return match list.and_then(|l| l["x-kubernetes-list-type"].as_str()) {
                Some("set") => ListKind::Set,
                Some("map") => ListKind::Map(
                    list.map(|l| &l["x-kubernetes-list-map-keys"])
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect(),
                ),
                _ => ListKind::Atomic,
            };
        }
        let keys: &[&str] = match key {
            "finalizers" => return ListKind::Set,
            "ownerReferences" => &["uid"],
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "env"
            | "imagePullSecrets" => &["name"],
            "volumeMounts" => &["mountPath"],
            "volumeDevices" => &["devicePath"],
            "ports" => &["containerPort", "protocol"],
            "conditions" | "addresses" => &["type"],
            _ => return ListKind::Atomic,
        };
        ListKind::Map(keys.iter().map(|k| k.to_string()).collect())
    }
}

/// RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch, with the semantics of the Go library the real server uses: a `test`
/// of a missing member against `null` succeeds when its parent exists (kube-runtime's
/// `finalizer()` helper relies on this to add the first finalizer). A failed `test` or a bad
/// path is a 422.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let rejected = |detail: String| {
        ApiError::unprocessable(format!(
            "the server rejected our request due to an error in our request: {detail}"
        ))
    };
    for op in &ops.0 {
        if let json_patch::PatchOperation::Test(t) = op {
            let path = t.path.as_str();
            let ok = match target.pointer(path) {
                Some(v) => *v == t.value,
                None => {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    t.value.is_null() && target.pointer(parent).is_some()
                }
            };
            if !ok {
                return Err(rejected(format!(
                    "testing value {path} failed: test failed"
                )));
            }
            continue;
        }
        json_patch::patch(target, std::slice::from_ref(op)).map_err(|e| rejected(e.to_string()))?;
    }
    Ok(())
}

fn item_key(item: &Value, keys: &[String]) -> Option<Vec<Value>> {
    let obj = item.as_object()?;
    Some(
        keys.iter()
            .map(|k| obj.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch (see the module doc for what is and is not modelled).
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value, shape: Shape<'_>) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (v, t.get_mut(k)) {
            (Value::Object(_), Some(existing)) if existing.is_object() => {
                strategic_merge(existing, v, shape.child(k));
            }
            (Value::Array(items), Some(Value::Array(existing))) => match shape.list_kind(k) {
                ListKind::Set => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                ListKind::Map(keys) => {
                    let item_shape = shape.items(k);
                    for item in items {
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let key = item_key(item, &keys);
                        let pos = existing
                            .iter()
                            .position(|e| key.is_some() && item_key(e, &keys) == key);
                        match (delete, pos) {
                            (true, Some(i)) => {
                                existing.remove(i);
                            }
                            (true, None) => {}
                            (false, Some(i)) => strategic_merge(&mut existing[i], item, item_shape),
                            (false, None) => existing.push(strip_directives(item)),
                        }
                    }
                }
                ListKind::Atomic => {
                    t.insert(k.clone(), strip_directives(v));
                }
            },
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
}

// === Server-side apply ===

/// A field path in the FieldsV1 vocabulary: `f:name`, `k:{"key":"value"}`, `v:"value"`.
type Path = Vec<String>;

/// Which paths an apply manager owns, per `(manager, subresource)`.
pub(crate) type Ownership = BTreeMap<(String, String), BTreeSet<Path>>;

/// Metadata fields that identify the object rather than carry intent; never owned.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// Collects the leaf paths an applied object sets. `scope` limits it to the main resource
/// (`Some(false)`: everything but `status`), the status subresource (`Some(true)`: only
/// `status`) or everything (`None`, kinds without a status subresource).
pub(crate) fn fields_of(obj: &Value, shape: Shape<'_>, scope: Option<bool>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            match scope {
                Some(true) if k != "status" => continue,
                Some(false) if k == "status" => continue,
                _ => {}
            }
            let mut v = v.clone();
            if k == "metadata"
                && let Some(m) = v.as_object_mut()
            {
                for f in UNOWNED_META {
                    m.remove(*f);
                }
                if m.is_empty() {
                    continue;
                }
            }
            collect(&v, shape, k, &mut vec![], &mut out);
        }
    }
    out
}

fn collect(v: &Value, parent: Shape<'_>, key: &str, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    prefix.push(format!("f:{key}"));
    match v {
        Value::Object(m) if !m.is_empty() => {
            let shape = parent.child(key);
            for (k, child) in m {
                collect(child, shape, k, prefix, out);
            }
        }
        Value::Array(items) => match parent.list_kind(key) {
            ListKind::Set => {
                for item in items {
                    let mut p = prefix.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            }
            ListKind::Map(keys) => {
                let shape = parent.items(key);
                for item in items {
                    let Some(obj) = item.as_object() else {
                        continue;
                    };
                    let key_obj: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| obj.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    prefix.push(format!("k:{}", Value::Object(key_obj)));
                    out.insert(prefix.clone());
                    for (k, child) in obj {
                        if !keys.contains(k) {
                            collect(child, shape, k, prefix, out);
                        }
                    }
                    prefix.pop();
                }
            }
            ListKind::Atomic => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
    prefix.pop();
}

/// The value a path points at, if present.
fn value_at<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for seg in path {
        cur = if let Some(f) = seg.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?
                .iter()
                .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?
        } else if let Some(v) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|item| **item == want)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the value a path points at.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = seg.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|item| *item != want);
    }
}

/// Merges an applied configuration into the live object: maps deep-merge, keyed lists merge
/// by key, sets union, everything else is replaced; `null` removes.
fn apply_merge(target: &mut Value, applied: &Value, shape: Shape<'_>) {
    let (Some(t), Some(a)) = (target.as_object_mut(), applied.as_object()) else {
        *target = applied.clone();
        return;
    };
    for (k, v) in a {
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (v, t.get_mut(k)) {
            (Value::Object(_), Some(existing)) if existing.is_object() => {
                apply_merge(existing, v, shape.child(k))
            }
            (Value::Array(items), Some(Value::Array(existing))) => match shape.list_kind(k) {
                ListKind::Set => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                ListKind::Map(keys) => {
                    let item_shape = shape.items(k);
                    for item in items {
                        let key = item_key(item, &keys);
                        match existing.iter().position(|e| item_key(e, &keys) == key) {
                            Some(i) => apply_merge(&mut existing[i], item, item_shape),
                            None => existing.push(item.clone()),
                        }
                    }
                }
                ListKind::Atomic => {
                    t.insert(k.clone(), v.clone());
                }
            },
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn render(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = seg.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// One server-side apply request.
pub(crate) struct Apply<'a> {
    pub manager: &'a str,
    /// `""` or `"status"`.
    pub subresource: &'a str,
    pub force: bool,
    /// Whether the kind has a status subresource (so main and status are owned apart).
    pub split_status: bool,
    pub shape: Shape<'a>,
}

impl Apply<'_> {
    fn scope(&self) -> Option<bool> {
        match (self.split_status, self.subresource) {
            (false, _) => None,
            (true, "status") => Some(true),
            (true, _) => Some(false),
        }
    }

    /// Applies `applied` to `live` (`None` for a create), updating `owners`. Returns the new
    /// object or a 409 listing the conflicting fields and managers.
    pub(crate) fn run(
        &self,
        live: Option<&Value>,
        applied: &Value,
        owners: &mut Ownership,
    ) -> ApiResult<Value> {
        let new_fields = fields_of(applied, self.shape, self.scope());
        let me = (self.manager.to_string(), self.subresource.to_string());
        let empty = Value::Object(Map::new());
        let live_obj = live.unwrap_or(&empty);

        // Conflicts: a leaf another applier owns, set here to a different value.
        let mut conflicts: Vec<(String, Path)> = Vec::new();
        for ((manager, sub), owned) in owners.iter() {
            if (manager, sub) == (&me.0, &me.1) {
                continue;
            }
            for p in new_fields.intersection(owned) {
                let leaf = p.last().is_some_and(|s| s.starts_with("f:"));
                if leaf && value_at(live_obj, p) != value_at(applied, p) {
                    conflicts.push((manager.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !self.force {
                return Err(conflict_error(&conflicts));
            }
            for (manager, p) in &conflicts {
                for ((m, _), owned) in owners.iter_mut() {
                    if m == manager {
                        owned.remove(p);
                    }
                }
            }
        }

        let mut result = live_obj.clone();
        let mut to_merge = applied.clone();
        if let Some(m) = to_merge.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            match self.scope() {
                Some(true) => m.retain(|k, _| k == "status"),
                Some(false) => {
                    m.remove("status");
                }
                None => {}
            }
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                for f in UNOWNED_META {
                    meta.remove(*f);
                }
            }
        }
        apply_merge(&mut result, &to_merge, self.shape);

        // Fields this manager applied before and no longer does are removed, unless another
        // manager still owns them (or something beneath them).
        let previous = owners.get(&me).cloned().unwrap_or_default();
        let mut dropped: Vec<&Path> = previous.difference(&new_fields).collect();
        dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in dropped {
            let still_owned = owners
                .iter()
                .filter(|(k, _)| **k != me)
                .any(|(_, owned)| owned.iter().any(|q| q.starts_with(p)))
                || new_fields.iter().any(|q| q.starts_with(p));
            if !still_owned {
                remove_at(&mut result, p);
            }
        }
        owners.insert(me, new_fields);
        Ok(result)
    }
}

fn conflict_error(conflicts: &[(String, Path)]) -> ApiError {
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            conflicts[0].0,
            render(&conflicts[0].1)
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with {m:?}: {}", render(p)))
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m:?}"), "field": render(p)}))
        .collect();
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
        retry_after: None,
        list_continue: None,
    }
}

/// After a non-apply write, appliers lose the fields whose values changed: the real server
/// hands ownership of them to the writer.
pub(crate) fn release_changed(owners: &mut Ownership, old: &Value, new: &Value) {
    for owned in owners.values_mut() {
        owned.retain(|p| {
            let leaf = p.last().is_some_and(|s| s.starts_with("f:"));
            let now = value_at(new, p);
            now.is_some() && (!leaf || value_at(old, p) == now)
        });
    }
    owners.retain(|_, owned| !owned.is_empty());
}

// === managedFields encoding ===

fn insert_path(trie: &mut Map<String, Value>, path: &[String], has_children: bool) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let node = trie
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = node.as_object_mut() {
        if rest.is_empty() {
            if has_children {
                m.insert(".".into(), json!({}));
            }
        } else {
            insert_path(m, rest, has_children);
        }
    }
}

/// Encodes ownership as `metadata.managedFields` entries (FieldsV1).
pub(crate) fn to_managed_fields(owners: &Ownership, api_version: &str, time: &str) -> Vec<Value> {
    owners
        .iter()
        .map(|((manager, sub), paths)| {
            let mut trie = Map::new();
            for p in paths {
                let has_children = paths.iter().any(|q| q.len() > p.len() && q.starts_with(p));
                insert_path(&mut trie, p, has_children);
            }
            let mut entry = json!({
                "manager": manager,
                "operation": "Apply",
                "apiVersion": api_version,
                "time": time,
                "fieldsType": "FieldsV1",
                "fieldsV1": trie,
            });
            if !sub.is_empty() {
                entry["subresource"] = json!(sub);
            }
            entry
        })
        .collect()
}

fn walk_trie(node: &Map<String, Value>, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    for (k, child) in node {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        match child.as_object() {
            Some(m) if !m.is_empty() => {
                if m.contains_key(".") {
                    out.insert(prefix.clone());
                }
                walk_trie(m, prefix, out);
            }
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

/// Decodes the `Apply` entries of `metadata.managedFields`.
pub(crate) fn from_managed_fields(obj: &Value) -> Ownership {
    let mut owners = Ownership::new();
    for entry in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if entry["operation"].as_str() != Some("Apply") {
            continue;
        }
        let manager = entry["manager"].as_str().unwrap_or_default().to_string();
        let sub = entry["subresource"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut paths = BTreeSet::new();
        if let Some(trie) = entry["fieldsV1"].as_object() {
            walk_trie(trie, &mut vec![], &mut paths);
        }
        owners.insert((manager, sub), paths);
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Shape<'static> {
        Shape::root(false, None)
    }

    #[test]
    fn strategic_merge_merges_keyed_lists_and_finalizer_sets() {
        let mut pod = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "app", "image": "x"}, {"name": "side", "image": "y"}]}});
        let patch = json!({
            "metadata": {"finalizers": ["b"]},
            "spec": {"containers": [{"name": "app", "image": "z"}, {"name": "side", "$patch": "delete"}, {"name": "new", "image": "n"}]}
        });
        strategic_merge(&mut pod, &patch, builtin());
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "app", "image": "z"}, {"name": "new", "image": "n"}])
        );
        strategic_merge(
            &mut pod,
            &json!({"$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            builtin(),
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_patch_test_of_a_missing_member_equals_null() {
        let mut obj = json!({"metadata": {"name": "x"}});
        let add_first = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["a"]},
        ]);
        json_patch(&mut obj, &add_first).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["a"]));
        assert_eq!(json_patch(&mut obj, &add_first).unwrap_err().code, 422);
        let missing_parent = json!([{"op": "test", "path": "/spec/x", "value": null}]);
        assert_eq!(json_patch(&mut obj, &missing_parent).unwrap_err().code, 422);
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let apply = Apply {
            manager: "a",
            subresource: "",
            force: false,
            split_status: true,
            shape: builtin(),
        };
        let mut owners = Ownership::new();
        let first = json!({"metadata": {"name": "x", "labels": {"keep": "1", "drop": "2"}}, "spec": {"v": 1}});
        let live = apply.run(None, &first, &mut owners).unwrap();
        let second = json!({"metadata": {"name": "x", "labels": {"keep": "1"}}, "spec": {"v": 1}});
        let live = apply.run(Some(&live), &second, &mut owners).unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"keep": "1"}));
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let a = Apply {
            manager: "a",
            subresource: "",
            force: false,
            split_status: true,
            shape: builtin(),
        };
        let b = Apply {
            manager: "b",
            subresource: "",
            force: false,
            split_status: true,
            shape: builtin(),
        };
        let mut owners = Ownership::new();
        let live = a
            .run(None, &json!({"spec": {"v": 1, "w": 1}}), &mut owners)
            .unwrap();
        let err = b
            .run(Some(&live), &json!({"spec": {"v": 2}}), &mut owners)
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains(".spec.v"), "{}", err.message);
        // Same value: shared ownership, no conflict.
        b.run(Some(&live), &json!({"spec": {"w": 1}}), &mut owners)
            .unwrap();
        let forced = Apply { force: true, ..b };
        let live = forced
            .run(Some(&live), &json!({"spec": {"v": 2, "w": 1}}), &mut owners)
            .unwrap();
        assert_eq!(live["spec"]["v"], 2);
        // Round trip through managedFields.
        let mut obj = live.clone();
        obj["metadata"] = json!({"managedFields": to_managed_fields(&owners, "v1", "t")});
        assert_eq!(from_managed_fields(&obj), owners);
    }
}
