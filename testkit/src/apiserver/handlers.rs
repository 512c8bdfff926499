//! HTTP: routing of Kubernetes REST paths, query parsing, faults, and the JSON answers.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    Shared, discovery,
    faults::{Verdict, WriteFailure},
    kinds::Endpoint,
    ops::{DeleteOptions, FieldValidation, ListOptions, WriteOptions, Written},
    selectors::{FieldSelector, LabelSelector, Selectors},
    status::{ApiError, ApiResult},
    watch::{self, Repr, WatchRequest, represent},
};

/// The real server's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The single axum handler: every path goes through here.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(d) = shared.faults.delay() {
        tokio::time::sleep(d).await;
    }
    if matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && let Some(Route::Resource(rp)) = parse_route(req.uri().path())
    {
        let resource = match &rp.sub {
            Some(sub) => format!("{}/{sub}", rp.resource),
            None => rp.resource.clone(),
        };
        if let Some(d) = shared.faults.write_delay(&resource) {
            tokio::time::sleep(d).await;
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error_response(&ApiError::too_large()),
    };
    if parts.method == Method::GET {
        wait_until_fresh(&shared, &parts).await;
    }
    match dispatch(&shared, &parts, &bytes) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// How long a read at a resourceVersion the server has not reached waits for it: the watch
/// cache's `blockTimeout`.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The watch cache's `waitUntilFreshAndBlock`: a get or list that the real server serves
/// from its watch cache (a resourceVersion, no continue token, no limit, not `Exact`) at a
/// resourceVersion the store has not reached waits up to [`FRESHNESS_WAIT`] for it; the
/// read then answers `504` if it is still ahead. Watches do not wait (see `watch::start`).
async fn wait_until_fresh(shared: &Shared, parts: &Parts) {
    let q = Query::parse(parts.uri.query());
    let limited = q
        .get("limit")
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > 0);
    if q.flag("watch")
        || limited
        || q.get("continue").is_some_and(|c| !c.is_empty())
        || q.get("resourceVersionMatch") == Some("Exact")
    {
        return;
    }
    let Some(want) = q
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
    else {
        return;
    };
    let mut rx = {
        let state = shared.lock();
        if state.store.rv() >= want {
            return;
        }
        state.store.subscribe()
    };
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(change)) if change.rv >= want => return,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                if shared.lock().store.rv() >= want {
                    return;
                }
            }
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn json_response(code: u16, body: &Value, content_type: &str, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            headers.append(header::WARNING, v);
        }
    }
    resp
}

fn error_response(e: &ApiError) -> Response {
    let mut resp = json_response(e.code, &e.to_status(), "application/json", &[]);
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A parsed `/api/...` or `/apis/...` resource path.
#[derive(Debug)]
struct ResourcePath {
    group: String,
    version: String,
    ns: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

#[derive(Debug)]
enum Route {
    Version,
    Health,
    CoreVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    Resource(ResourcePath),
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz" | "readyz" | "livez"] => return Some(Route::Health),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::GroupList),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Route::ResourceList(group.to_string(), version.to_string()));
    }
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let own = |s: Option<&&str>| s.map(|s| s.to_string());
    let namespace_subresource =
        group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let rp = if rest[0] == "namespaces" && rest.len() >= 3 && !namespace_subresource {
        if rest.len() > 5 {
            return None;
        }
        ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            ns: Some(rest[1].to_string()),
            resource: rest[2].to_string(),
            name: own(rest.get(3)),
            sub: own(rest.get(4)),
        }
    } else {
        if rest.len() > 3 {
            return None;
        }
        ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            ns: None,
            resource: rest[0].to_string(),
            name: own(rest.get(1)),
            sub: own(rest.get(2)),
        }
    };
    Some(Route::Resource(rp))
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// [`dispatch`] for [`super::ApiServer::call`]: errors as the `Status` responses HTTP
/// clients get.
pub(crate) fn dispatch_in_process(shared: &Arc<Shared>, parts: &Parts, body: Bytes) -> Response {
    match dispatch(shared, parts, &body) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn dispatch(shared: &Arc<Shared>, parts: &Parts, body: &Bytes) -> ApiResult<Response> {
    let route = parse_route(parts.uri.path()).ok_or_else(ApiError::no_route)?;
    let accept = header_str(&parts.headers, header::ACCEPT);
    let aggregated = accept.contains("as=APIGroupDiscoveryList");
    const AGGREGATED_CT: &str =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    if !matches!(route, Route::Resource(_)) && parts.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let json = |v: Value| Ok(json_response(200, &v, "application/json", &[]));
    match route {
        Route::Version => json(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-stowage-testkit",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        Route::Health => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        Route::CoreVersions => {
            if aggregated {
                let doc = discovery::aggregated(&shared.lock().endpoints, true);
                Ok(json_response(200, &doc, AGGREGATED_CT, &[]))
            } else {
                json(discovery::core_versions(&shared.address))
            }
        }
        Route::GroupList => {
            let state = shared.lock();
            if aggregated {
                Ok(json_response(
                    200,
                    &discovery::aggregated(&state.endpoints, false),
                    AGGREGATED_CT,
                    &[],
                ))
            } else {
                json(discovery::group_list(&state.endpoints))
            }
        }
        Route::Group(g) => {
            let doc = discovery::group(&shared.lock().endpoints, &g);
            doc.map_or_else(|| Err(ApiError::no_route()), json)
        }
        Route::ResourceList(g, v) => {
            let doc = discovery::resource_list(&shared.lock().endpoints, &g, &v);
            doc.map_or_else(|| Err(ApiError::no_route()), json)
        }
        Route::Resource(rp) => resource(shared, parts, rp, body),
    }
}

fn write_options(q: &Query) -> ApiResult<WriteOptions> {
    let field_validation = match q.get("fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some("Strict") => FieldValidation::Strict,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    };
    if let Some(m) = q.get("fieldManager")
        && m.len() > 128
    {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    Ok(WriteOptions {
        dry_run: q.get("dryRun") == Some("All"),
        field_manager: q.get("fieldManager").map(str::to_string),
        field_validation,
        force: q.flag("force"),
    })
}

fn selectors(q: &Query, ep: &Endpoint, name: Option<&str>) -> ApiResult<Selectors> {
    let mut fields = q.get("fieldSelector").unwrap_or_default().to_string();
    if let Some(n) = name {
        // The deprecated "watch one object by path" form.
        fields = if fields.is_empty() {
            format!("metadata.name={n}")
        } else {
            format!("{fields},metadata.name={n}")
        };
    }
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(&fields, ep)?,
    })
}

fn decode_body(parts: &Parts, body: &[u8]) -> ApiResult<Value> {
    let ct = header_str(&parts.headers, header::CONTENT_TYPE);
    let media = ct.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}"))),
        "application/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn verb_of(method: &Method, rp: &ResourcePath, watch: bool) -> ApiResult<&'static str> {
    let named = rp.name.is_some();
    let sub = rp.sub.as_deref();
    Ok(match *method {
        Method::GET if named => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST if !named => "create",
        Method::POST if sub == Some("binding") => "create",
        Method::PUT if named => "update",
        Method::PATCH if named => "patch",
        Method::DELETE if named && sub.is_none() => "delete",
        Method::DELETE if !named => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    })
}

fn resource(
    shared: &Arc<Shared>,
    parts: &Parts,
    rp: ResourcePath,
    body: &Bytes,
) -> ApiResult<Response> {
    let ep = shared
        .lock()
        .endpoint(&rp.group, &rp.version, &rp.resource)
        .ok_or_else(ApiError::no_route)?;
    // Scope: namespaced kinds need a namespace except for collection reads; cluster kinds
    // never have one.
    let collection_read = rp.name.is_none() && parts.method == Method::GET;
    if (!ep.namespaced && rp.ns.is_some()) || (ep.namespaced && rp.ns.is_none() && !collection_read)
    {
        return Err(ApiError::no_route());
    }
    match rp.sub.as_deref() {
        None => {}
        Some("status") if ep.status_subresource => {}
        Some("binding") if ep.binding_subresource => {}
        Some("finalize") if ep.group.is_empty() && ep.resource == "namespaces" => {}
        Some(_) => return Err(ApiError::no_route()),
    }
    let q = Query::parse(parts.uri.query());
    let watch = q.flag("watch");
    let verb = verb_of(&parts.method, &rp, watch && rp.name.is_none())?;
    let watch_named = watch && verb == "get";
    let verb = if watch_named { "watch" } else { verb };
    if !ep.verbs.contains(&verb) {
        return Err(ApiError::method_not_allowed());
    }
    let resource = match &rp.sub {
        Some(s) => format!("{}/{s}", ep.resource),
        None => ep.resource.clone(),
    };
    shared.count(verb, &resource);
    if matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    ) && let Verdict::Fail(failure, retry_after) = shared.faults.write_verdict(&resource)
    {
        let mut e = match failure {
            WriteFailure::InternalError => {
                ApiError::internal("injected fault: etcdserver: request timed out")
            }
            WriteFailure::TooManyRequests => ApiError::too_many_requests(),
            // The write is carried out, and its answer lost: as when etcd commits but the
            // API server's wait for it times out.
            WriteFailure::InternalErrorAfterCommit => {
                perform(shared, parts, rp, body, ep, q, verb, watch_named)?;
                return Err(ApiError::internal(
                    "injected fault: etcdserver: request timed out (the write took effect)",
                ));
            }
        };
        if failure == WriteFailure::TooManyRequests {
            e.retry_after = Some(retry_after);
            e.details = Some(json!({"retryAfterSeconds": retry_after}));
        }
        return Err(e);
    }
    perform(shared, parts, rp, body, ep, q, verb, watch_named)
}

/// Carries out a request the fault injection let through.
#[allow(clippy::too_many_arguments)]
fn perform(
    shared: &Arc<Shared>,
    parts: &Parts,
    rp: ResourcePath,
    body: &Bytes,
    ep: Endpoint,
    q: Query,
    verb: &'static str,
    watch_named: bool,
) -> ApiResult<Response> {
    let accept = header_str(&parts.headers, header::ACCEPT);
    let repr = if accept.contains("as=PartialObjectMetadata") {
        Repr::Metadata
    } else {
        Repr::Full
    };
    let ns = rp.ns.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    let sub = rp.sub.as_deref();
    let reply = |w: Written| -> ApiResult<Response> {
        let body = if w.body["kind"] == "Status" {
            w.body
        } else {
            represent(w.body, repr)
        };
        Ok(json_response(
            w.code,
            &body,
            "application/json",
            &w.warnings,
        ))
    };

    match verb {
        "get" => {
            let obj = shared
                .lock()
                .get(&ep, &ns, &name, q.get("resourceVersion"))?;
            reply(Written {
                code: 200,
                body: obj,
                warnings: Vec::new(),
            })
        }
        "list" => {
            let opts = ListOptions {
                selectors: selectors(&q, &ep, None)?,
                limit: match q.get("limit") {
                    None | Some("") => None,
                    Some(l) => Some(l.parse().map_err(|_| {
                        ApiError::bad_request(format!("limit: Invalid value: {l:?}"))
                    })?),
                },
                continue_token: q
                    .get("continue")
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
                resource_version: q.get("resourceVersion").map(str::to_string),
                resource_version_match: q
                    .get("resourceVersionMatch")
                    .filter(|m| !m.is_empty())
                    .map(str::to_string),
            };
            let mut list = shared.lock().list(&ep, rp.ns.as_deref(), &opts)?;
            if repr == Repr::Metadata {
                let items: Vec<Value> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| represent(i.clone(), repr))
                    .collect();
                list["items"] = json!(items);
                list["kind"] = json!("PartialObjectMetadataList");
                list["apiVersion"] = json!("meta.k8s.io/v1");
            }
            Ok(json_response(200, &list, "application/json", &[]))
        }
        "watch" => {
            let send_initial_events = q.flag("sendInitialEvents");
            let bookmarks = q.flag("allowWatchBookmarks");
            let rv_match = q.get("resourceVersionMatch").filter(|m| !m.is_empty());
            let target = ep.target("");
            if send_initial_events && (!bookmarks || rv_match != Some("NotOlderThan")) {
                return Err(ApiError::invalid(
                    &target,
                    vec![super::status::Cause::forbidden(
                        "sendInitialEvents",
                        "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
                    )],
                ));
            }
            if !send_initial_events && rv_match.is_some() {
                return Err(ApiError::invalid(
                    &target,
                    vec![super::status::Cause::forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                    )],
                ));
            }
            let timeout = match q.get("timeoutSeconds") {
                None | Some("") => Duration::from_secs(1800),
                Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                    ApiError::bad_request(format!("timeoutSeconds: Invalid value: {t:?}"))
                })?),
            };
            let req = WatchRequest {
                selectors: selectors(&q, &ep, watch_named.then_some(name.as_str()))?,
                ep,
                ns: rp.ns.clone(),
                resource_version: q.get("resourceVersion").map(str::to_string),
                bookmarks,
                send_initial_events,
                timeout,
                repr,
            };
            let stream = watch::start(shared.clone(), req)?;
            let mut resp = Response::new(Body::from_stream(stream));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        "create" if sub == Some("binding") => {
            let b = decode_body(parts, body)?;
            let w = shared.lock().bind(&ep, &ns, &name, &b)?;
            Ok(json_response(w.code, &w.body, "application/json", &[]))
        }
        "create" => {
            let opts = write_options(&q)?;
            let b = decode_body(parts, body)?;
            let w = shared.lock().create(&ep, &ns, b, &opts, None)?;
            reply(w)
        }
        "update" => {
            let opts = write_options(&q)?;
            let b = decode_body(parts, body)?;
            let w = shared.lock().update(&ep, &ns, &name, b, sub, &opts)?;
            reply(w)
        }
        "patch" => {
            let opts = write_options(&q)?;
            let ct = header_str(&parts.headers, header::CONTENT_TYPE);
            let w = shared.lock().patch(&ep, &ns, &name, ct, body, sub, &opts)?;
            reply(w)
        }
        "delete" => {
            let opts = DeleteOptions::parse(
                body,
                q.get("dryRun") == Some("All"),
                q.get("gracePeriodSeconds"),
            )?;
            let w = shared.lock().delete(&ep, &ns, &name, &opts)?;
            reply(w)
        }
        "deletecollection" => {
            let opts = DeleteOptions::parse(
                body,
                q.get("dryRun") == Some("All"),
                q.get("gracePeriodSeconds"),
            )?;
            let sel = selectors(&q, &ep, None)?;
            let w = shared
                .lock()
                .delete_collection(&ep, rp.ns.as_deref(), &sel, &opts)?;
            Ok(json_response(w.code, &w.body, "application/json", &[]))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_subresources_are_not_mistaken_for_namespaced_resources() {
        let Some(Route::Resource(rp)) = parse_route("/api/v1/namespaces/ns1/status") else {
            panic!()
        };
        assert_eq!(
            (rp.resource.as_str(), rp.name.as_deref(), rp.sub.as_deref()),
            ("namespaces", Some("ns1"), Some("status"))
        );
        let Some(Route::Resource(rp)) = parse_route("/api/v1/namespaces/ns1/pods/p/binding") else {
            panic!()
        };
        assert_eq!(
            (
                rp.ns.as_deref(),
                rp.resource.as_str(),
                rp.name.as_deref(),
                rp.sub.as_deref()
            ),
            (Some("ns1"), "pods", Some("p"), Some("binding"))
        );
        let Some(Route::Resource(rp)) =
            parse_route("/apis/stowage.io/v1alpha1/localvolumes/lv/status")
        else {
            panic!()
        };
        assert_eq!(
            (rp.group.as_str(), rp.ns, rp.sub.as_deref()),
            ("stowage.io", None, Some("status"))
        );
        assert!(parse_route("/apis/x/v1/a/b/c/d").is_none());
    }
}
