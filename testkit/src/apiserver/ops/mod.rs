//! The verbs, as the real registry implements them. This module holds the state behind the
//! lock, request options, the stored/served conversions and the reads (get, list); `write`
//! has create, update, patch, apply and binding; `delete` has deletes and their cascades.

use serde_json::{Map, Value, json};

mod delete;
mod write;

use super::{
    events,
    kinds::{self, Codec, Endpoint, GroupResource},
    selectors::Selectors,
    status::{ApiError, ApiResult},
    store::{Key, Store},
    util::{hex, unhex},
};

/// Server-side field validation (`fieldValidation` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Query options shared by writes.
#[derive(Debug, Clone)]
pub(crate) struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    pub force: bool,
}

/// The body of a `DELETE`.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub orphan: bool,
    /// `gracePeriodSeconds` (body or query).
    pub grace_period: Option<i64>,
}

impl DeleteOptions {
    pub(crate) fn parse(
        body: &[u8],
        query_dry_run: bool,
        query_grace: Option<&str>,
    ) -> ApiResult<Self> {
        let mut out = Self {
            dry_run: query_dry_run,
            grace_period: match query_grace.filter(|g| !g.is_empty()) {
                Some(g) => Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("gracePeriodSeconds: Invalid value: {g:?}"))
                })?),
                None => None,
            },
            ..Self::default()
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(out);
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        out.dry_run |= v["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == "All"));
        out.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        out.resource_version = v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if let Some(g) = v["gracePeriodSeconds"].as_i64() {
            out.grace_period = Some(g);
        }
        out.orphan = v["propagationPolicy"].as_str() == Some("Orphan")
            || v["orphanDependents"].as_bool() == Some(true);
        Ok(out)
    }
}

/// Parameters of a list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    pub selectors: Selectors,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// A successful write: status code, body (served form) and `Warning` headers.
#[derive(Debug)]
pub(crate) struct Written {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

fn ok(code: u16, body: Value) -> Written {
    Written {
        code,
        body,
        warnings: Vec::new(),
    }
}

const CRD_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Set on every claim at admission (StorageObjectInUseProtection); removed by the
/// pvc-protection controller once no pod uses the deleting claim.
pub(crate) const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Set on every PV at admission; removed by the pv-protection controller once the deleting
/// PV is not Bound.
pub(crate) const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

fn namespaces() -> GroupResource {
    GroupResource::new("", "namespaces")
}

fn pods() -> GroupResource {
    GroupResource::new("", "pods")
}

fn pvcs() -> GroupResource {
    GroupResource::new("", "persistentvolumeclaims")
}

fn pvs() -> GroupResource {
    GroupResource::new("", "persistentvolumes")
}

fn crds() -> GroupResource {
    GroupResource::new("apiextensions.k8s.io", "customresourcedefinitions")
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The served form of a stored object.
pub(crate) fn to_served(ep: &Endpoint, stored: &Value) -> Value {
    let mut out = match ep.codec {
        Codec::Identity => stored.clone(),
        Codec::EventsV1 => events::to_v1(stored),
    };
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), json!(ep.api_version()));
        m.insert("kind".into(), json!(ep.kind));
    }
    out
}

fn to_stored(ep: &Endpoint, served: &Value) -> Value {
    match ep.codec {
        Codec::Identity => served.clone(),
        Codec::EventsV1 => events::to_core(served),
    }
}

/// Checks `apiVersion` and `kind` of a request body against the endpoint.
fn check_type(ep: &Endpoint, body: &Value) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(av) = body["apiVersion"].as_str().filter(|s| !s.is_empty())
        && av != ep.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            ep.api_version()
        )));
    }
    if let Some(kind) = body["kind"].as_str().filter(|s| !s.is_empty())
        && kind != ep.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            ep.kind
        )));
    }
    Ok(())
}

/// The continue token: opaque to clients, here the list's RV and the last key returned.
/// An RV of `-1` (the token a `410` for an expired one offers) continues at the latest RV,
/// as the real server's tokens do.
fn encode_continue(rv: i64, key: &Key) -> String {
    hex(
        json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": key.0, "name": key.1})
            .to_string()
            .as_bytes(),
    )
}

/// The RV (`None`: the latest) and last key of a continue token.
fn decode_continue(token: &str) -> ApiResult<(Option<u64>, Key)> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "invalid continue token: continue key is not valid: {why}"
        ))
    };
    let bytes = unhex(token).ok_or_else(|| bad("not a token this server made"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
    let rv = match v["rv"].as_i64() {
        Some(-1) => None,
        Some(rv) if rv > 0 => Some(rv as u64),
        _ => {
            return Err(bad(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
    };
    let ns = v["ns"]
        .as_str()
        .ok_or_else(|| bad("no namespace"))?
        .to_string();
    let name = v["name"]
        .as_str()
        .ok_or_else(|| bad("no name"))?
        .to_string();
    Ok((rv, (ns, name)))
}

/// The message of the `410` for a continue token whose RV was compacted away (etcd3
/// store's `inconsistentContinue`).
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// How deleted pods go: testkit runs no kubelet. See [`crate::PodTermination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodTermination {
    /// Removed within the delete request, whatever the grace period: no Terminating pods.
    Immediate,
    /// A pod bound to a node and not finished, deleted with a grace period above 0, is
    /// Terminating (`deletionTimestamp` = now + grace, `deletionGracePeriodSeconds`) until a
    /// kubelet would confirm it: after `delay` or the grace period, whichever is shorter.
    /// A delete with a shorter grace period shortens it; `0` removes the pod at once.
    Kubelet {
        /// How long the kubelet takes to stop the pod's containers.
        delay: std::time::Duration,
    },
    /// As on the real lane, where no kubelet runs: such a pod stays Terminating until it is
    /// deleted with a grace period of 0.
    NoKubelet,
}

/// Everything behind the lock.
pub(crate) struct State {
    pub store: Store,
    pub endpoints: Vec<Endpoint>,
    pub pod_termination: PodTermination,
    /// Terminating pods a kubelet will confirm: (when, namespace, name, uid).
    pub kubelet_due: Vec<(std::time::Instant, String, String, String)>,
    /// The versions `csistoragecapacities` is served in.
    capacity_versions: Vec<String>,
}

impl State {
    /// A fresh cluster: the built-in kinds and the namespaces every cluster has.
    pub(crate) fn new(
        history_limit: usize,
        pod_termination: PodTermination,
        capacity_versions: Vec<String>,
    ) -> Self {
        let mut s = Self {
            store: Store::new(history_limit),
            endpoints: kinds::builtins(&capacity_versions),
            pod_termination,
            kubelet_due: Vec::new(),
            capacity_versions,
        };
        let opts = WriteOptions {
            dry_run: false,
            field_manager: None,
            field_validation: FieldValidation::Ignore,
            force: false,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if let Some(ep) = s.endpoint("", "v1", "namespaces") {
                // Cannot fail: the names are valid and the store is empty.
                let _ = s.create(&ep, "", json!({"metadata": {"name": ns}}), &opts, None);
            }
        }
        s
    }

    pub(crate) fn endpoint(&self, group: &str, version: &str, resource: &str) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.group == group && e.version == version && e.resource == resource)
            .cloned()
    }

    /// The endpoint of a storage key's preferred version, for cascades.
    fn storage_endpoint(&self, gr: &GroupResource) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.storage == *gr && e.codec == Codec::Identity)
            .min_by(|a, b| kinds::version_priority(&a.version, &b.version))
            .cloned()
    }

    /// Rebuilds the endpoint table from the built-ins and the stored CRDs.
    fn refresh_endpoints(&mut self) {
        let mut eps = kinds::builtins(&self.capacity_versions);
        for (_, crd) in self.store.list(&crds(), None) {
            eps.extend(kinds::crd_endpoints(crd));
        }
        self.endpoints = eps;
    }

    fn not_found(&self, ep: &Endpoint, name: &str) -> ApiError {
        ApiError::not_found(&ep.target(name))
    }

    // === get / list ===

    /// A get; `resource_version` (other than `""` and `"0"`, served from the latest state)
    /// must not be ahead of the store (`504`, see [`ApiError::too_large_resource_version`]).
    pub(crate) fn get(
        &self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> ApiResult<Value> {
        if let Some(rv) = resource_version.filter(|rv| !rv.is_empty() && *rv != "0") {
            let rv: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            if rv > self.store.rv() {
                return Err(ApiError::too_large_resource_version(rv, self.store.rv()));
            }
        }
        self.store
            .get(&ep.storage, ns, name)
            .map(|o| to_served(ep, o))
            .ok_or_else(|| self.not_found(ep, name))
    }

    pub(crate) fn list(
        &self,
        ep: &Endpoint,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Value> {
        let current = self.store.rv();
        let parse_rv = |rv: &str| {
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
        };
        let (list_rv, after, snapshot) = if let Some(token) = &opts.continue_token {
            if opts
                .resource_version
                .as_deref()
                .is_some_and(|rv| !rv.is_empty() && rv != "0")
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            match decode_continue(token)? {
                (Some(rv), key) => {
                    // Compacted away: `410 Expired` with a token for the rest of the list at
                    // the latest RV, as kube-apiserver's etcd3 store answers (checked on
                    // 1.19.16 after an etcd compaction).
                    let snap = self.store.snapshot_at(&ep.storage, rv).ok_or_else(|| {
                        let mut e = ApiError::expired(INCONSISTENT_CONTINUE);
                        e.list_continue = Some(encode_continue(-1, &key));
                        e
                    })?;
                    (rv, Some(key), Some(snap))
                }
                (None, key) => (current, Some(key), None),
            }
        } else {
            match (
                opts.resource_version.as_deref(),
                opts.resource_version_match.as_deref(),
            ) {
                (None | Some(""), None) | (Some("0"), _) => (current, None, None),
                (None | Some(""), Some(m)) => {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch {m} is forbidden unless resourceVersion is provided"
                    )));
                }
                // An exact read, and the legacy form of one (a limit with a resourceVersion
                // but no match), go to etcd: a revision it has not reached is a `500`.
                (Some(rv), Some("Exact")) | (Some(rv), None)
                    if opts.resource_version_match.is_some()
                        || opts.limit.is_some_and(|l| l > 0) =>
                {
                    let rv = parse_rv(rv)?;
                    if rv > current {
                        return Err(ApiError::future_revision());
                    }
                    // etcd3 store's `expired`: the revision was compacted.
                    let snap = self.store.snapshot_at(&ep.storage, rv).ok_or_else(|| {
                        ApiError::expired("The resourceVersion for the provided list is too old.")
                    })?;
                    (rv, None, Some(snap))
                }
                (Some(rv), None | Some("NotOlderThan")) => {
                    let rv = parse_rv(rv)?;
                    if rv > current {
                        return Err(ApiError::too_large_resource_version(rv, current));
                    }
                    (current, None, None)
                }
                (Some(_), Some(m)) => {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Unsupported value: {m:?}"
                    )));
                }
            }
        };
        let objects: Vec<(&Key, &Value)> = match &snapshot {
            Some(s) => s
                .iter()
                .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                .collect(),
            None => self.store.list(&ep.storage, ns),
        };
        let matching = objects
            .into_iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(_, v)| opts.selectors.matches(v));
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0usize;
        for (k, v) in matching {
            if opts.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                remaining += 1;
                continue;
            }
            let mut item = to_served(ep, v);
            // Typed lists carry no per-item type on the wire; unstructured ones do.
            if !ep.custom
                && let Some(m) = item.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
            last_key = Some(k.clone());
        }
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if remaining > 0
            && let Some(k) = last_key
        {
            meta["continue"] = json!(encode_continue(list_rv as i64, &k));
            if opts.selectors.is_empty() {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": ep.list_kind,
            "apiVersion": ep.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }
}
