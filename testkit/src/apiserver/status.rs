//! `metav1.Status` errors, shaped like the ones `k8s.io/apimachinery/pkg/api/errors` builds, so
//! kube-rs surfaces them as `kube::Error::Api` with the real code and reason.

use serde_json::{Value, json};

/// The group and plural a request was about, used in messages and `details`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    pub group: String,
    pub resource: String,
    pub kind: String,
    pub name: String,
}

impl Target {
    /// `pods` or `storageclasses.storage.k8s.io`, as the real messages qualify resources.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Pod` or `StorageClass.storage.k8s.io`, as `Invalid` messages qualify kinds.
    fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// One field error inside an `Invalid` status.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub(crate) fn required(field: impl Into<String>, detail: &str) -> Self {
        let field = field.into();
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field,
            message,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub(crate) fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub(crate) fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                allowed.join(", ")
            ),
        }
    }

    pub(crate) fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }

    pub(crate) fn type_invalid(field: impl Into<String>, value: &Value, expected: &str) -> Self {
        Self {
            reason: "FieldValueTypeInvalid",
            field: field.into(),
            message: format!(
                "Invalid value: {:?}: {field_type} expected",
                type_name(value),
                field_type = expected
            ),
        }
    }

    fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An API error: becomes a `Status` response body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 and friends).
    pub retry_after: Option<u64>,
    /// `metadata.continue` of the `Status`: the token an expired continue token's `410`
    /// offers for an inconsistent rest of the list.
    pub list_continue: Option<String>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
            list_continue: None,
        }
    }

    fn with_target(mut self, t: &Target, kind_in_details: &str) -> Self {
        self.details = Some(json!({
            "name": t.name,
            "group": t.group,
            "kind": kind_in_details,
        }));
        self
    }

    pub(crate) fn not_found(t: &Target) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {:?} not found", t.qualified(), t.name),
        )
        .with_target(t, &t.resource)
    }

    /// A 404 for a path that names no served resource.
    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn already_exists(t: &Target) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", t.qualified(), t.name),
        )
        .with_target(t, &t.resource)
    }

    /// The optimistic-concurrency conflict the real server reports on a stale resourceVersion.
    pub(crate) fn conflict_modified(t: &Target) -> Self {
        Self::conflict(
            t,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub(crate) fn conflict(t: &Target, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: {detail}",
                t.qualified(),
                t.name
            ),
        )
        .with_target(t, &t.resource)
    }

    pub(crate) fn invalid(t: &Target, causes: Vec<Cause>) -> Self {
        let rendered: Vec<String> = causes.iter().map(Cause::render).collect();
        let message = if rendered.len() == 1 {
            format!(
                "{} {:?} is invalid: {}",
                t.qualified_kind(),
                t.name,
                rendered.join("")
            )
        } else {
            format!(
                "{} {:?} is invalid: [{}]",
                t.qualified_kind(),
                t.name,
                rendered.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut e = Self::new(422, "Invalid", message);
        e.details = Some(json!({
            "name": t.name,
            "group": t.group,
            "kind": t.kind,
            "causes": causes,
        }));
        e
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn forbidden(t: &Target, detail: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("{} {:?} is forbidden: {detail}", t.qualified(), t.name),
        )
        .with_target(t, &t.resource)
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
            ),
        )
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub(crate) fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// A read at a resourceVersion the server has not reached within its wait (the watch
    /// cache's `waitUntilFreshAndBlock`, 3 s): `504 Timeout`, retry after 1 s, as
    /// `storage.NewTooLargeResourceVersionError` builds it.
    pub(crate) fn too_large_resource_version(wanted: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {wanted}, current: {current}"),
        );
        e.retry_after = Some(1);
        e.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }));
        e
    }

    /// etcd's answer to a read at a revision it has not reached, passed through as the
    /// real server does (a `500` without a reason).
    pub(crate) fn future_revision() -> Self {
        Self::new(
            500,
            "",
            "etcdserver: mvcc: required revision is a future revision",
        )
    }

    pub(crate) fn too_many_requests() -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.retry_after = Some(1);
        e.details = Some(json!({"retryAfterSeconds": 1}));
        e
    }

    /// The `metav1.Status` object for this error.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty()
            && let Some(obj) = status.as_object_mut()
        {
            obj.remove("reason");
        }
        if let (Some(d), Some(obj)) = (&self.details, status.as_object_mut()) {
            obj.insert("details".into(), d.clone());
        }
        if let Some(token) = &self.list_continue {
            status["metadata"]["continue"] = json!(token);
        }
        status
    }
}

/// A `Status` with `status: Success`, as returned by deletes and bindings.
pub(crate) fn success(code: u16, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
        "details": details,
    })
}
