//! The axum [`Router`]: configuration, route table, request span and the handler shell that
//! times each request and reports it to the [`Observer`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use tower_http::trace::TraceLayer;
use tracing::field::Empty;
use tracing::{Span, warn};

use crate::body::{ApiError, JsonBody};
use crate::observe::{NoopObserver, Observer, Outcome, Verb};
use crate::policy::Policy;
use crate::{filter, prioritize};

/// Default request-body limit: 32 MiB.
///
/// A `nodeCacheCapable` request for 5,000 nodes is about 100 KiB; a full NodeList runs to
/// several KiB per node (status carries the image list), and the scheduler sends only the
/// nodes that passed its own filters, at most `percentageOfNodesToScore` of them once it has
/// enough. Bodies over the limit are refused with 413 and never buffered past it.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

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
/// `{"Error": "<reason>"}`: 400 for malformed or incomplete JSON, 413 for a body over the
/// limit, 415 for a content type other than JSON.
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
    });
    let mut routes = Router::new();
    if let Some(path) = filter_path {
        routes = routes.route(&path, post(filter_handler::<P>));
    }
    if let Some(path) = prioritize_path {
        routes = routes.route(&path, post(prioritize_handler::<P>));
    }
    Ok(routes
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span as fn(&Request) -> Span))
        .with_state(shared))
}

struct Shared<P> {
    policy: Arc<P>,
    observer: Arc<dyn Observer>,
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
        scored = Empty,
    )
}

async fn filter_handler<P: Policy>(State(shared): State<Arc<Shared<P>>>, req: Request) -> Response {
    let started = Instant::now();
    let answer = match JsonBody::from_request(req, &()).await {
        Ok(body) => filter::respond(&*shared.policy, &*shared.observer, &body),
        Err(e) => Err(e),
    };
    finish(&*shared.observer, Verb::Filter, started, answer)
}

async fn prioritize_handler<P: Policy>(
    State(shared): State<Arc<Shared<P>>>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let answer = match JsonBody::from_request(req, &()).await {
        Ok(body) => prioritize::respond(&*shared.policy, &body),
        Err(e) => Err(e),
    };
    finish(&*shared.observer, Verb::Prioritize, started, answer)
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

    /// The largest accepted request body, in bytes (default [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
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
    /// Encodes `value` into a buffer of `capacity` bytes to start with (a guess at the size,
    /// so that a large answer is not copied on every doubling).
    pub(crate) fn json<T: Serialize>(
        value: &T,
        outcome: Outcome,
        capacity: usize,
    ) -> Result<Self, ApiError> {
        let mut json = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut json, value).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the response: {e}"),
            )
        })?;
        Ok(Self { json, outcome })
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
