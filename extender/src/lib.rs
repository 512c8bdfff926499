//! The kube-scheduler HTTP extender protocol (`k8s.io/kube-scheduler/extender/v1`): its wire
//! types, and an axum router that serves the filter and prioritize calls over any [`Policy`].
//!
//! This crate owns the protocol and nothing else. It knows no Kubernetes client, no stowage
//! types and no metrics library, so it can be used standalone by any extender: decisions come
//! from the caller's [`Policy`], metrics go to the caller's [`Observer`].
//!
//! ```text
//! kube-scheduler
//!   POST {prefix}/filter      ─┐                          ┌─▶ Policy::filter     ─▶ ExtenderFilterResult
//!   POST {prefix}/prioritize  ─┴─▶ JsonBody ─▶ ExtenderArgs ┴─▶ Policy::prioritize ─▶ HostPriorityList (0..=10)
//!                                  415, 413    400
//!   every request ─▶ Observer::request        rejected nodes, per kind ─▶ Observer::rejected
//!                                             pods without an opinion  ─▶ Observer::passed_through
//! ```
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use k8s_openapi::api::core::v1::Pod;
//! use stowage_extender::{FilterVerdict, NodeScore, Policy, Rejection, RouterConfig};
//!
//! /// Rejects nodes whose name starts with `full-`, prefers short names.
//! struct Example;
//!
//! impl Policy for Example {
//!     fn filter<'n>(&self, pod: &Pod, nodes: &[&'n str]) -> FilterVerdict<'n> {
//!         let Some(spec) = &pod.spec else {
//!             return FilterVerdict::PassThrough;
//!         };
//!         if spec.volumes.as_ref().is_none_or(|v| v.is_empty()) {
//!             return FilterVerdict::PassThrough; // not our kind of pod: the fast path
//!         }
//!         // One reason shared by every node turned down, and each node's position: the
//!         // router then matches the rejections to the candidates without a table of names.
//!         let full: std::sync::Arc<str> = "node is full".into();
//!         FilterVerdict::Reject(
//!             nodes
//!                 .iter()
//!                 .enumerate()
//!                 .filter(|(_, n)| n.starts_with("full-"))
//!                 .map(|(i, &n)| Rejection::unresolvable(n, "Full", full.clone()).at(i))
//!                 .collect(),
//!         )
//!     }
//!
//!     fn prioritize<'n>(&self, _pod: &Pod, nodes: &[&'n str]) -> Vec<NodeScore<'n>> {
//!         nodes
//!             .iter()
//!             .map(|node| NodeScore { node, score: 10 - node.len() as i64 })
//!             .collect()
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // kube-scheduler: urlPrefix: "http://127.0.0.1:8888/example", filterVerb: filter,
//!     // prioritizeVerb: prioritize, weight: 1, nodeCacheCapable: true
//!     let app = stowage_extender::router(Arc::new(Example), RouterConfig::new().prefix("/example"))?;
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Behaviour
//!
//! * Both `nodeCacheCapable` modes are served: a request with `NodeNames` is answered with
//!   `NodeNames` (and `"Nodes": null`); a request with `Nodes` is answered with `Nodes`, holding
//!   the input Node objects that passed, byte for byte (and `"NodeNames": null`). A request
//!   with neither is refused with 400. Answering in the wrong mode would make the scheduler
//!   drop every node silently.
//! * Nodes the policy does not reject pass. Every rejected node is reported with its reason in
//!   `FailedNodes`, and an unresolvable one ([`Failure`]) in `FailedAndUnresolvableNodes` as
//!   well, so the pod's `FailedScheduling` event explains it on every version: kube-scheduler
//!   1.19 and 1.20 read `FailedNodes` only, later versions let the unresolvable entry win. A
//!   reason given to many nodes is escaped once and copied after that.
//! * Scores are clamped to [`MIN_EXTENDER_PRIORITY`]`..=`[`MAX_EXTENDER_PRIORITY`]: the scheduler
//!   multiplies them by `weight × 10` and does not clamp.
//! * Requests are refused with `{"Error": "<reason>"}` and 400 (malformed JSON, wrong types,
//!   missing `Pod`, empty body, more than [`MAX_CANDIDATES`] nodes or [`MAX_CLAIM_VOLUMES`]
//!   claim volumes), 408 (a large body arriving for longer than [`LARGE_BODY_DEADLINE`]),
//!   413 (body over [`RouterConfig::body_limit`], [`DEFAULT_BODY_LIMIT`] unless set) or 415
//!   (not JSON); no input panics. Unknown paths get 404 and other methods 405.
//! * Only what a policy is given is decoded: the pod's `metadata.name`, `namespace` and
//!   `uid` and its claim volumes, and the node names. The [`Pod`] a [`Policy`] sees holds
//!   these fields and nothing else; the rest of the body (managedFields, annotations,
//!   containers, status, the Node objects' contents) is skipped unread.
//! * Bodies up to [`INLINE_BODY_LIMIT`] are answered on the task serving the connection;
//!   larger ones take one of [`LARGE_BODIES_AT_ONCE`] turns and are decoded and answered on
//!   tokio's blocking pool, so a small request is not queued behind them.
//!
//! [`Pod`]: k8s_openapi::api::core::v1::Pod
//! * Each request runs in a `tracing` span named `extender` whose `pod`, `nodes`, `passed`,
//!   `failed` and `scored` fields are filled in as the request is decoded and decided.
//!
//! # Casing pitfalls
//!
//! The upstream Go structs have no `json` tags, so the wrapper keys are Go field names in
//! PascalCase, and the acronyms stay upper case: `PodUID`, `NumPDBViolations` and `UID`, where
//! serde's `rename_all = "PascalCase"` would write `PodUid`, `NumPdbViolations` and `Uid`. Go
//! decodes keys case-insensitively; the types here accept PascalCase, camelCase and lowercase.
//! The embedded `Pod` and `Node` objects use ordinary Kubernetes camelCase and arrive without
//! `apiVersion`/`kind`. Unset lists and maps are `null`, not absent, and the prioritize answer
//! is a bare JSON array.

mod args;
mod body;
mod encode;
mod filter;
mod observe;
mod policy;
mod prioritize;
mod routes;
mod wire;

pub use args::{MAX_CANDIDATES, MAX_CLAIM_VOLUMES};
pub use body::{ApiError, INLINE_BODY_LIMIT, JsonBody, LARGE_BODIES_AT_ONCE, LARGE_BODY_DEADLINE};
pub use observe::{NoopObserver, Observer, Outcome, Verb};
pub use policy::{Failure, FilterVerdict, NodeScore, Policy, Rejection};
pub use routes::{ConfigError, DEFAULT_BODY_LIMIT, RouterConfig, router};
pub use wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, FailedNodesMap, HostPriority,
    HostPriorityList, MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY, MetaPod, MetaVictims, NodeList,
    Victims,
};
