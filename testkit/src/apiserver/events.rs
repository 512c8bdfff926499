//! `events.k8s.io/v1` Events. The real server stores every Event in its `core/v1` form and
//! converts on the way in and out, so both APIs see the same objects; so does this one.

use serde_json::{Map, Value, json};

use super::status::{ApiError, ApiResult, Cause, Target};

/// `(core/v1 field, events.k8s.io/v1 field)`.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, from_core: bool, api_version: &str) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let key = RENAMES
            .iter()
            .find(|(core, new)| if from_core { core == k } else { new == k })
            .map(|(core, new)| if from_core { *new } else { *core })
            .unwrap_or(k.as_str());
        out.insert(key.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// Stored `core/v1` form → served `events.k8s.io/v1` form.
pub(crate) fn to_v1(stored: &Value) -> Value {
    rename(stored, true, "events.k8s.io/v1")
}

/// Served `events.k8s.io/v1` form → stored `core/v1` form.
pub(crate) fn to_core(served: &Value) -> Value {
    rename(served, false, "v1")
}

/// What `legacyValidateEvent` asks of every `core/v1` Event that carries an `eventTime`
/// (the form kube-scheduler's and other new-style recorders write): a message of at most
/// 1,024 characters. A longer `FailedScheduling` message is refused, and the Event lost.
pub(crate) fn validate_core(target: &Target, ev: &Value) -> ApiResult<()> {
    let new_style = ev.get("eventTime").is_some_and(|t| !t.is_null());
    if new_style && ev["message"].as_str().is_some_and(|m| m.len() > 1024) {
        return Err(ApiError::invalid(
            target,
            vec![Cause::too_long("message", 1024)],
        ));
    }
    Ok(())
}

/// `ValidateEventCreate` for requests made through `events.k8s.io/v1`.
pub(crate) fn validate_v1(target: &Target, ev: &Value) -> ApiResult<()> {
    let mut causes = Vec::new();
    for (field, max) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        match ev[field].as_str() {
            None | Some("") => causes.push(Cause::required(field, "")),
            Some(s) if s.len() > max => causes.push(Cause::too_long(field, max)),
            Some(_) => {}
        }
    }
    if ev["note"].as_str().is_some_and(|n| n.len() > 1024) {
        causes.push(Cause::too_long("note", 1024));
    }
    if ev.get("eventTime").is_none_or(Value::is_null) {
        causes.push(Cause::required("eventTime", ""));
    }
    match ev["type"].as_str() {
        Some("Normal" | "Warning") => {}
        _ => causes.push(Cause::not_supported(
            "type",
            &ev["type"],
            &["Normal", "Warning"],
        )),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(target, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "p"}, "note": "hi", "reason": "R"});
        let core = to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(to_v1(&core), v1);
    }

    #[test]
    fn new_style_core_events_over_1024_characters_are_refused() {
        let target = Target::default();
        let long = "x".repeat(1025);
        let new_style = json!({"eventTime": "2026-12-06T18:00:00.000000Z", "message": long});
        assert!(validate_core(&target, &new_style).is_err());
        let fits = json!({"eventTime": "2026-12-06T18:00:00.000000Z", "message": "x".repeat(1024)});
        assert!(validate_core(&target, &fits).is_ok());
        // Old-style Events (no eventTime) have no such limit in 1.19.
        let old_style = json!({"message": "x".repeat(1025)});
        assert!(validate_core(&target, &old_style).is_ok());
    }
}
