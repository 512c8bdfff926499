//! Structural-schema handling for custom resources: pruning of unknown fields, defaulting
//! and the OpenAPI value validations, in the order the real server runs them (decode, prune,
//! default, validate). CEL rules (`x-kubernetes-validations`) are not evaluated; `pattern`
//! and the `format`s kube-apiserver 1.19 checks are, with its messages.

use serde_json::{Map, Value, json};

use super::status::Cause;

/// Fields that belong to the object envelope, never pruned or validated against the schema.
const ENVELOPE: &[&str] = &["apiVersion", "kind", "metadata"];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Prunes unknown fields and non-nullable nulls, then applies defaults. Returns the paths of
/// the pruned unknown fields (for `fieldValidation=Strict` and `Warn`).
pub(crate) fn normalize(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Some(map) = obj.as_object_mut() {
        prune_object(schema, map, "", true, &mut pruned);
    }
    default(schema, obj);
    pruned
}

fn prune_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    root: bool,
    pruned: &mut Vec<String>,
) {
    let props = schema["properties"].as_object();
    let additional = schema.get("additionalProperties");
    let embedded = schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if (root || embedded) && ENVELOPE.contains(&key.as_str()) {
            continue;
        }
        let child_schema = match props.and_then(|p| p.get(&key)) {
            Some(s) => Some(s),
            None => match additional {
                Some(s) if s.is_object() => Some(s),
                Some(Value::Bool(true)) => None,
                _ if preserves_unknown(schema) => None,
                _ => {
                    map.remove(&key);
                    pruned.push(join(path, &key));
                    continue;
                }
            },
        };
        let Some(child_schema) = child_schema else {
            continue;
        };
        let child_path = join(path, &key);
        if map.get(&key).is_some_and(Value::is_null)
            && child_schema["nullable"].as_bool() != Some(true)
        {
            map.remove(&key);
            continue;
        }
        if let Some(child) = map.get_mut(&key) {
            prune_value(child_schema, child, &child_path, pruned);
        }
    }
}

/// Whether pruning against `schema` would drop anything from `value` (a `default`).
pub(crate) fn has_unknown_fields(schema: &Value, value: &Value) -> bool {
    let mut pruned = Vec::new();
    prune_value(schema, &mut value.clone(), "", &mut pruned);
    !pruned.is_empty()
}

fn prune_value(schema: &Value, value: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => prune_object(schema, map, path, false, pruned),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item_schema, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default` values of missing properties, recursively.
fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (key, child_schema) in props {
                    if let Some(d) = child_schema.get("default")
                        && !map.contains_key(key)
                    {
                        map.insert(key.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(key) {
                        default(child_schema, child);
                    }
                }
            }
            if let Some(additional) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                let known = schema["properties"].as_object();
                for (k, child) in map.iter_mut() {
                    if !known.is_some_and(|p| p.contains_key(k)) {
                        default(additional, child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    default(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// Validates a whole custom resource against its root schema.
pub(crate) fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(map) = obj.as_object() {
        let body: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The envelope is checked by the generic metadata rules, so it is left out of the
        // root's `required` list as well.
        let mut root = schema.clone();
        if let Some(req) = root.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| !r.as_str().is_some_and(|r| ENVELOPE.contains(&r)));
        }
        check(&root, &Value::Object(body), "", &mut causes);
    }
    causes
}

/// Validates one value against a schema (a `default`, say); the causes' fields are relative
/// to the value.
pub(crate) fn validate_value(schema: &Value, v: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check(schema, v, "", &mut causes);
    causes
}

/// Whether a JSON value is an integer as the real server decodes it: into an `int64`, or a
/// `float64` without a fraction (`2.0`). A number above `i64::MAX` is a `float64` there, and
/// not an integer once it no longer fits (`9223372036854775808` is refused, checked on
/// 1.19.16).
fn is_integer(v: &Value) -> bool {
    const TWO_63: f64 = (1u64 << 63) as f64;
    v.is_i64()
        || (!v.is_u64()
            && v.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f)))
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// The type go-openapi names a decoded JSON value by in its messages.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(v) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `s` matches the RE2 `pattern`; a pattern that does not compile matches nothing
/// (the CRD's validation refuses such patterns first). Compiled patterns are cached.
fn matches_pattern(pattern: &str, s: &str) -> bool {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, Option<regex::Regex>>> =
            Default::default();
    }
    CACHE.with(|c| {
        c.borrow_mut()
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).ok())
            .as_ref()
            .is_some_and(|re| re.is_match(s))
    })
}

/// The `format`s of go-openapi's default registry that 1.19 checks on strings, by the rules
/// of its parsers; others (`int32`, `int64`, `uint64`, `double`, …) are not checked (a
/// 3000000000 in an `int32` field is accepted, checked on 1.19.16).
pub(crate) fn format_ok(format: &str, s: &str) -> bool {
    use k8s_openapi::jiff::{Timestamp, civil};
    match format {
        "date-time" => {
            s.parse::<Timestamp>().is_ok()
                || s.strip_suffix('Z')
                    .unwrap_or(s)
                    .parse::<civil::DateTime>()
                    .is_ok_and(|_| s.contains('T'))
        }
        "date" => s.len() == 10 && s.parse::<civil::Date>().is_ok(),
        "uuid" => {
            let hex: Vec<&str> = s.split('-').collect();
            hex.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && hex.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "byte" => {
            let t = s.trim_end_matches('=');
            s.len().is_multiple_of(4)
                && s.len() - t.len() <= 2
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
        }
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) && schema.get("type").is_some() {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            causes.push(Cause::type_invalid(shown, v, "integer or string"));
        }
    } else if let Some(ty) = schema["type"].as_str()
        && !type_matches(ty, v)
    {
        // go-openapi's message: the value's type shown, not the value.
        let found = json_type(v);
        causes.push(Cause::invalid(
            shown,
            &json!(found),
            &format!("{shown} in body must be of type {ty}: \"{found}\""),
        ));
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        let allowed: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string))
            .collect();
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        causes.push(Cause::not_supported(shown, v, &allowed));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            let exclusive = schema["exclusiveMinimum"].as_bool() == Some(true);
            if n < min || (exclusive && n == min) {
                causes.push(Cause::invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be greater than or equal to {min}"),
                ));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            let exclusive = schema["exclusiveMaximum"].as_bool() == Some(true);
            if n > max || (exclusive && n == max) {
                causes.push(Cause::invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be less than or equal to {max}"),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(pattern) = schema["pattern"].as_str()
            && !matches_pattern(pattern, s)
        {
            // As 1.19 words it, the value shown empty.
            causes.push(Cause::invalid(
                shown,
                &json!(""),
                &format!("{shown} in body should match '{pattern}'"),
            ));
        }
        if let Some(format) = schema["format"].as_str()
            && !format_ok(format, s)
        {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!("{shown} in body must be of type {format}: {s:?}"),
            ));
        }
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body should be at least {} chars long",
                    schema["minLength"]
                ),
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            causes.push(Cause::too_long(
                shown,
                schema["maxLength"].as_u64().unwrap_or_default() as usize,
            ));
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as u64;
        if schema["minItems"].as_u64().is_some_and(|m| n < m) {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body should have at least {} items",
                    schema["minItems"]
                ),
            ));
        }
        if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body should have at most {} items",
                    schema["maxItems"]
                ),
            ));
        }
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{path}[{i}]"),
                            message: format!("Duplicate value: {item}"),
                        });
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Value {
                    json!(keys.iter().map(|k| item[*k].clone()).collect::<Vec<_>>())
                };
                for (i, item) in items.iter().enumerate() {
                    let k = key_of(item);
                    if items[..i].iter().any(|o| key_of(o) == k) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("{path}[{i}]"),
                            message: format!("Duplicate value: {k}"),
                        });
                    }
                }
            }
            _ => {}
        }
        if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), causes);
            }
        }
    }
    if let Some(map) = v.as_object() {
        for r in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(r) {
                causes.push(Cause::required(join(path, r), ""));
            }
        }
        let n = map.len() as u64;
        if schema["minProperties"].as_u64().is_some_and(|m| n < m) {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body should have at least {} properties",
                    schema["minProperties"]
                ),
            ));
        }
        if schema["maxProperties"].as_u64().is_some_and(|m| n > m) {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!(
                    "{shown} in body should have at most {} properties",
                    schema["maxProperties"]
                ),
            ));
        }
        let props = schema["properties"].as_object();
        for (k, child) in map {
            if let Some(s) = props.and_then(|p| p.get(k)) {
                check(s, child, &join(path, k), causes);
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                check(s, child, &join(path, k), causes);
            }
        }
    }
    let passes = |s: &Value| {
        let mut c = Vec::new();
        check(s, v, path, &mut c);
        c.is_empty()
    };
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(s, v, path, causes);
        }
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        causes.push(Cause::invalid(
            shown,
            v,
            &format!("{shown} in body must match at least one schema in anyOf"),
        ));
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let n = one.iter().filter(|s| passes(s)).count();
        if n != 1 {
            causes.push(Cause::invalid(
                shown,
                v,
                &format!("{shown} in body must match exactly one schema in oneOf"),
            ));
        }
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        causes.push(Cause::invalid(
            shown,
            v,
            &format!("{shown} in body must not match the schema in not"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "note": {"type": "string", "nullable": true}
                    }
                },
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let mut obj = json!({
            "apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"size": 2, "extra": 1, "tags": {"k": "v"}, "free": {"any": [1]}, "note": null, "mode": null},
            "bogus": true
        });
        let mut pruned = normalize(&schema(), &mut obj);
        pruned.sort();
        assert_eq!(pruned, vec!["bogus", "spec.extra"]);
        assert_eq!(obj["spec"]["mode"], "a");
        assert_eq!(obj["spec"]["free"]["any"][0], 1);
        assert!(obj["spec"]["note"].is_null() && obj["spec"].get("note").is_some());
        assert!(validate(&schema(), &obj).is_empty());
    }

    #[test]
    fn type_required_enum_and_minimum_are_checked() {
        let obj = json!({"metadata": {}, "spec": {"size": 0, "mode": "c", "tags": {"k": 1}}});
        let mut fields: Vec<String> = validate(&schema(), &obj)
            .into_iter()
            .map(|c| c.field)
            .collect();
        fields.sort();
        assert_eq!(fields, vec!["spec.mode", "spec.size", "spec.tags.k"]);
        let missing: Vec<String> = validate(&schema(), &json!({"spec": {}}))
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(missing, vec!["spec.size"]);
    }
}
