//! The axum [`Router`]: configuration, route table, request span and the handler shell that
//! times each request and reports it to the [`Observer`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tower_http::trace::TraceLayer;
use tracing::field::Empty;
use tracing::{Span, warn};

use crate::body::{ApiError, Intake, JsonBody, ReadBody};
use crate::observe::{NoopObserver, Observer, Outcome, Verb};
use crate::policy::Policy;
use crate::{filter, prioritize};

/// Default request-body limit: 4 MiB, sized for `nodeCacheCapable: true`.
///
/// What kube-scheduler sends (`ExtenderArgs`, encoded by `HTTPExtender.send`):
///
/// * `nodeCacheCapable: true`: the pod and the candidates' names. At 5,000 nodes the names
///   take 5,000 × (name + 3) bytes: 100 KiB at 17-character names, 215 KiB at the 40 of a
///   cloud VM's (`ip-10-0-12-34.eu-west-1.compute.internal`), 1.2 MiB at the 253 a name
///   may have. The pod comes from the scheduler's informer, managedFields included: a few
///   KiB, at most the 1.5 MiB etcd stores for one object. 4 MiB holds the largest pod with
///   5,000 longest names, or 60,000 cloud-VM names.
/// * `nodeCacheCapable: false`: the pod and whole Node objects, `status.images` (up to 50
///   images) and managedFields included: 10-30 KiB each. kube-scheduler sends the nodes
///   that passed its own filters, and stops looking once it has `percentageOfNodesToScore`
///   of the cluster: 10 % at 5,000 nodes by default (500 nodes, 5-15 MiB), all of them
///   (50-150 MiB) at 100 %. Such a setup must raise the limit (`stowage`: the
///   `--extender-body-limit-mib` flag), and give the process memory for
///   [`LARGE_BODIES_AT_ONCE`](crate::LARGE_BODIES_AT_ONCE) bodies of that size.
///
/// stowage's shipped scheduler configurations set `nodeCacheCapable: true`. Bodies over the
/// limit are refused with 413, before they are read when their `Content-Length` says so, and
/// never buffered past the limit when streamed.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Where the routes are mounted and how requests are bounded and observed.
///
/// The routes are `POST {prefix}/{verb}`, matching the scheduler's
/// `strings.TrimRight(urlPrefix, "/") + "/" + verb`; `prefix` is the path part of `urlPrefix`.
#[derive(Clone)]
pub struct RouterConfig {
    prefix: String,
    filter_verb: String,
    prioritize_verb: String,
    body_limit: usize,
    body_limit_setting: Option<String>,
    observer: Arc<dyn Observer>,
}

/// A [`RouterConfig`] that cannot be turned into routes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A prefix or verb that is not a plain URL path.
    #[error(
        "extender route {path:?} is not a plain URL path; use segments of letters, digits, \
         '-', '.', '_' and '~' separated by single '/'"
    )]
    InvalidPath {
        /// The route the prefix and verb combine to.
        path: String,
    },
    /// The filter and prioritize verbs combine to the same route.
    #[error("the filter and prioritize verbs both map to {path:?}; give them different verbs")]
    SameRoute {
        /// The shared route.
        path: String,
    },
}

/// Builds the extender routes over `policy`: `POST {prefix}/{filter verb}` and
/// `POST {prefix}/{prioritize verb}`.
///
/// Other methods on those paths get 405, other paths 404 (no fallback is installed, so the
/// router merges cleanly with the caller's own routes). Every refusal is a 4xx with
/// `{"Error": "<reason>"}`: 400 for malformed or incomplete JSON, 408 for a large body that
/// arrives too slowly ([`LARGE_BODY_DEADLINE`](crate::LARGE_BODY_DEADLINE)), 413 for a body
/// over the limit, 415 for a content type other than JSON.
///
/// Bodies up to [`INLINE_BODY_LIMIT`](crate::INLINE_BODY_LIMIT) are answered on the task that
/// serves the connection. Larger ones are read only with one of
/// [`LARGE_BODIES_AT_ONCE`](crate::LARGE_BODIES_AT_ONCE) turns, and decoded and answered on
/// tokio's blocking pool ([`tokio::task::spawn_blocking`]), so a small request never waits
/// behind a large one on a single-threaded runtime. The router therefore needs a tokio
/// runtime with its time driver enabled (as `#[tokio::main]` and `Builder::enable_all` give).
///
/// stowage registers no bind or preempt verb, so none is served.
pub fn router<P: Policy>(policy: Arc<P>, config: RouterConfig) -> Result<Router, ConfigError> {
    let filter_path = route_path(&config.prefix, &config.filter_verb)?;
    let prioritize_path = route_path(&config.prefix, &config.prioritize_verb)?;
    if filter_path.is_some() && filter_path == prioritize_path {
        let path = filter_path.unwrap_or_default();
        return Err(ConfigError::SameRoute { path });
    }

    let shared = Arc::new(Shared {
        policy,
        observer: config.observer,
        intake: Intake::new(config.body_limit, config.body_limit_setting),
    });
    let mut routes = Router::new();
    if let Some(path) = filter_path {
        routes = routes.route(&path, post(filter_handler::<P>));
    }
    if let Some(path) = prioritize_path {
        routes = routes.route(&path, post(prioritize_handler::<P>));
    }
    Ok(routes
        .layer(TraceLayer::new_for_http().make_span_with(request_span as fn(&Request) -> Span))
        .with_state(shared))
}

struct Shared<P> {
    policy: Arc<P>,
    observer: Arc<dyn Observer>,
    intake: Intake,
}

/// The hasher of the router's per-request node-name sets: foldhash's fast variant, seeded per
/// process; SipHash cost more than the lookups it guarded at thousands of names.
pub(crate) type FastState = foldhash::fast::RandomState;

/// A successful answer: the encoded body (always HTTP 200) and how to report it.
pub(crate) struct Answer {
    json: Vec<u8>,
    outcome: Outcome,
}

/// The request span. Its empty fields are recorded by the verb once the body is decoded.
fn request_span(req: &Request) -> Span {
    tracing::info_span!(
        "extender",
        method = %req.method(),
        path = %req.uri().path(),
        pod = Empty,
        nodes = Empty,
        passed = Empty,
        failed = Empty,
        left_out = Empty,
        scored = Empty,
    )
}

async fn filter_handler<P: Policy>(State(shared): State<Arc<Shared<P>>>, req: Request) -> Response {
    let started = Instant::now();
    let answer = answer(&shared, req, |shared, body| {
        filter::respond(&*shared.policy, &*shared.observer, body)
    })
    .await;
    finish(&*shared.observer, Verb::Filter, started, answer)
}

async fn prioritize_handler<P: Policy>(
    State(shared): State<Arc<Shared<P>>>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let answer = answer(&shared, req, |shared, body| {
        prioritize::respond(&*shared.policy, body)
    })
    .await;
    finish(&*shared.observer, Verb::Prioritize, started, answer)
}

/// Reads the body and answers it with `respond`: here for a small body, on the blocking
/// pool under the body's turn for a large one (see [`router`]).
async fn answer<P: Policy>(
    shared: &Arc<Shared<P>>,
    req: Request,
    respond: fn(&Shared<P>, &JsonBody) -> Result<Answer, ApiError>,
) -> Result<Answer, ApiError> {
    let ReadBody { body, turn } = shared.intake.read(req).await?;
    let Some(turn) = turn else {
        return respond(shared, &body);
    };
    let shared = shared.clone();
    let span = Span::current();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let _entered = span.enter();
        respond(&shared, &body)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("answering the request failed: {e}"),
        ))
    })
}

fn finish(
    observer: &dyn Observer,
    verb: Verb,
    started: Instant,
    answer: Result<Answer, ApiError>,
) -> Response {
    let (outcome, response) = match answer {
        Ok(answer) => (
            answer.outcome,
            ([(header::CONTENT_TYPE, "application/json")], answer.json).into_response(),
        ),
        Err(error) => {
            // The scheduler retries a refused call; a refusal means a client or version mismatch.
            warn!(status = error.status().as_u16(), %error, "extender request refused");
            let outcome = if error.status().is_server_error() {
                Outcome::Internal
            } else {
                Outcome::Invalid
            };
            (outcome, error.into_response())
        }
    };
    observer.request(verb, outcome, response.status(), started.elapsed());
    response
}

/// `prefix` + `/` + `verb` as an axum route, or `None` when the verb is empty (disabled).
/// Only plain segments are allowed, so axum's route syntax (`{capture}`, `*`) cannot panic.
fn route_path(prefix: &str, verb: &str) -> Result<Option<String>, ConfigError> {
    if verb.is_empty() {
        return Ok(None);
    }
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() || prefix.starts_with('/') {
        format!("{prefix}/{verb}")
    } else {
        format!("/{prefix}/{verb}")
    };
    let plain = path.split('/').skip(1).all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    if plain {
        Ok(Some(path))
    } else {
        Err(ConfigError::InvalidPath { path })
    }
}

// === impl RouterConfig ===

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            filter_verb: "filter".to_owned(),
            prioritize_verb: "prioritize".to_owned(),
            body_limit: DEFAULT_BODY_LIMIT,
            body_limit_setting: None,
            observer: Arc::new(NoopObserver),
        }
    }
}

impl fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterConfig")
            .field("prefix", &self.prefix)
            .field("filter_verb", &self.filter_verb)
            .field("prioritize_verb", &self.prioritize_verb)
            .field("body_limit", &self.body_limit)
            .field("body_limit_setting", &self.body_limit_setting)
            .finish_non_exhaustive()
    }
}

impl RouterConfig {
    /// The defaults: no prefix, verbs `filter` and `prioritize`, [`DEFAULT_BODY_LIMIT`], and
    /// an observer that records nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The path part of the scheduler's `urlPrefix`, e.g. `/stowage` (default: empty).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The scheduler's `filterVerb` (default `filter`). Empty disables the route, as an
    /// empty verb in the scheduler configuration disables the call.
    pub fn filter_verb(mut self, verb: impl Into<String>) -> Self {
        self.filter_verb = verb.into();
        self
    }

    /// The scheduler's `prioritizeVerb` (default `prioritize`). Empty disables the route.
    pub fn prioritize_verb(mut self, verb: impl Into<String>) -> Self {
        self.prioritize_verb = verb.into();
        self
    }

    /// The largest accepted request body, in bytes (default [`DEFAULT_BODY_LIMIT`], whose
    /// documentation says what kube-scheduler sends).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The setting that raises the body limit (a flag, say), named in the 413 message so the
    /// operator knows what to change (default: none named).
    pub fn body_limit_setting(mut self, setting: impl Into<String>) -> Self {
        self.body_limit_setting = Some(setting.into());
        self
    }

    /// Where request outcomes and rejection counts are reported (default: nowhere).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }
}

// === impl Answer ===

impl Answer {
    /// An answer of the JSON the verb wrote ([`crate::encode`]).
    pub(crate) fn new(json: Vec<u8>, outcome: Outcome) -> Self {
        Self { json, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_join_prefix_and_verb_like_the_scheduler() {
        let cases = [
            ("", "filter", "/filter"),
            ("/", "filter", "/filter"),
            ("/stowage", "filter", "/stowage/filter"),
            ("/stowage/", "filter", "/stowage/filter"),
            ("stowage", "filter", "/stowage/filter"),
            ("/a/b", "predicates/local", "/a/b/predicates/local"),
        ];
        for (prefix, verb, want) in cases {
            assert_eq!(route_path(prefix, verb), Ok(Some(want.to_owned())));
        }
    }

    #[test]
    fn empty_verb_disables_the_route() {
        assert_eq!(route_path("/x", ""), Ok(None));
    }

    #[test]
    fn route_syntax_and_odd_segments_are_refused_instead_of_panicking() {
        for (prefix, verb) in [
            ("", "{verb}"),
            ("", "*rest"),
            ("", ":id"),
            ("", "/filter"),
            ("http://host:8888/ext", "filter"),
            ("/a//b", "filter"),
            ("/..", "filter"),
            ("", "fil ter"),
        ] {
            assert!(
                matches!(
                    route_path(prefix, verb),
                    Err(ConfigError::InvalidPath { .. })
                ),
                "{prefix:?} {verb:?}"
            );
        }
    }

    struct Nothing;
    impl Policy for Nothing {
        fn filter<'n>(
            &self,
            _: &k8s_openapi::api::core::v1::Pod,
            _: &[&'n str],
        ) -> crate::FilterVerdict<'n> {
            crate::FilterVerdict::PassAll
        }
        fn prioritize<'n>(
            &self,
            _: &k8s_openapi::api::core::v1::Pod,
            _: &[&'n str],
        ) -> Vec<crate::NodeScore<'n>> {
            Vec::new()
        }
    }

    #[test]
    fn same_route_for_both_verbs_is_a_config_error() {
        let config = RouterConfig::new().filter_verb("x").prioritize_verb("x");
        let err = router(Arc::new(Nothing), config).err().unwrap();
        assert_eq!(
            err,
            ConfigError::SameRoute {
                path: "/x".to_owned()
            }
        );
    }
}
