//! Label and field selectors, parsed from query strings and matched against stored JSON.

use serde_json::Value;

use super::{
    kinds::Endpoint,
    status::{ApiError, ApiResult},
    validate,
};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_error(term: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {term:?}: {why}"))
}

impl LabelSelector {
    /// Parses the selector grammar of `k8s.io/apimachinery/pkg/labels`.
    pub(crate) fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for raw in split_top_level(s) {
            let term = raw.trim();
            if term.is_empty() {
                return Err(parse_error(s, "found ',', expected: identifier"));
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement {
                    key: key.trim().to_string(),
                    op: Op::DoesNotExist,
                    values: vec![],
                }
            } else if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|c| *c > open && term[c + 1..].trim().is_empty())
                    .ok_or_else(|| parse_error(term, "expected ')'"))?;
                let mut head = term[..open].split_whitespace();
                let key = head.next().unwrap_or_default().to_string();
                let op = match head.next() {
                    Some("in") => Op::In,
                    Some("notin") => Op::NotIn,
                    _ => return Err(parse_error(term, "expected 'in' or 'notin'")),
                };
                if head.next().is_some() {
                    return Err(parse_error(term, "unexpected token before '('"));
                }
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() {
                    return Err(parse_error(
                        term,
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
                Requirement { key, op, values }
            } else {
                let (key, op, value) = if let Some((k, v)) = term.split_once("!=") {
                    (k, Op::NotEq, v)
                } else if let Some((k, v)) = term.split_once("==") {
                    (k, Op::Eq, v)
                } else if let Some((k, v)) = term.split_once('=') {
                    (k, Op::Eq, v)
                } else if let Some((k, v)) = term.split_once('>') {
                    (k, Op::Gt, v)
                } else if let Some((k, v)) = term.split_once('<') {
                    (k, Op::Lt, v)
                } else {
                    (term, Op::Exists, "")
                };
                let values = if op == Op::Exists {
                    vec![]
                } else {
                    vec![value.trim().to_string()]
                };
                if matches!(op, Op::Gt | Op::Lt) && values[0].parse::<i64>().is_err() {
                    return Err(parse_error(
                        term,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
                Requirement {
                    key: key.trim().to_string(),
                    op,
                    values,
                }
            };
            if let Err(why) = validate::qualified_name(&req.key) {
                return Err(parse_error(
                    term,
                    &format!("invalid label key {:?}: {why}", req.key),
                ));
            }
            if matches!(req.op, Op::Eq | Op::NotEq | Op::In | Op::NotIn) {
                for v in &req.values {
                    if let Err(why) = validate::label_value(v) {
                        return Err(parse_error(
                            term,
                            &format!("invalid label value: {v:?}: {why}"),
                        ));
                    }
                }
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|r| {
            let got = labels.get(&r.key).and_then(Value::as_str);
            match r.op {
                Op::Eq => got == Some(r.values[0].as_str()),
                Op::NotEq => got != Some(r.values[0].as_str()),
                Op::In => got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                Op::NotIn => !got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                Op::Exists => got.is_some(),
                Op::DoesNotExist => got.is_none(),
                Op::Gt | Op::Lt => {
                    let (Some(g), Ok(bound)) = (
                        got.and_then(|g| g.parse::<i64>().ok()),
                        r.values[0].parse::<i64>(),
                    ) else {
                        return false;
                    };
                    if r.op == Op::Gt { g > bound } else { g < bound }
                }
            }
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed `fieldSelector`, with each label resolved to the stored JSON path it reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a field selector; labels the kind does not support are a 400, as on the real
    /// server (`field label not supported`).
    pub(crate) fn parse(s: &str, ep: &Endpoint) -> ApiResult<Self> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(out));
        }
        for term in s.split(',') {
            let term = term.trim();
            let (label, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let label = label.trim();
            let path = match label {
                "metadata.name" | "metadata.namespace" => label.to_string(),
                _ => ep
                    .field_labels
                    .iter()
                    .find(|(l, _)| l == label)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("field label not supported: {label}"))
                    })?,
            };
            out.push((path, eq, value.trim().to_string()));
        }
        Ok(Self(out))
    }

    /// Whether the stored object satisfies every term.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let got = field_value(obj, path);
            (got == *want) == *eq
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The text of a field as field selectors see it: strings as-is, booleans and numbers
/// printed, missing fields empty.
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Label and field selectors together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn set_based_and_equality_requirements_combine() {
        let s = LabelSelector::parse("app in (web, db),tier!=cache,!legacy,env").unwrap();
        assert!(s.matches(&obj(json!({"app": "web", "env": "prod"}))));
        assert!(!s.matches(&obj(json!({"app": "web"}))));
        assert!(!s.matches(&obj(json!({"app": "web", "env": "x", "legacy": "y"}))));
        assert!(!s.matches(&obj(json!({"app": "api", "env": "x"}))));
        assert!(!s.matches(&obj(json!({"app": "db", "env": "x", "tier": "cache"}))));
    }

    #[test]
    fn notin_matches_missing_labels() {
        let s = LabelSelector::parse("app notin (web)").unwrap();
        assert!(s.matches(&obj(json!({}))));
        assert!(!s.matches(&obj(json!({"app": "web"}))));
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        assert!(LabelSelector::parse("app in ()").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
        assert!(LabelSelector::parse("x>y").is_err());
    }
}
