//! Hooks for metrics, so this crate needs no metrics library: the caller implements
//! [`Observer`] over its own registry. Every label passed in comes from a closed set.

use std::time::Duration;

use axum::http::StatusCode;

use crate::policy::Failure;

/// Receives one call per request and one per rejection kind; must be cheap and must not block,
/// because it runs on the request path.
pub trait Observer: Send + Sync + 'static {
    /// A request to `verb` finished with `outcome` and HTTP `status` after `elapsed` (from
    /// routing to the encoded response, body read included).
    fn request(&self, verb: Verb, outcome: Outcome, status: StatusCode, elapsed: Duration) {
        let _ = (verb, outcome, status, elapsed);
    }

    /// One filter request rejected `nodes` candidate nodes with this `kind` and `failure`.
    /// Called once per distinct `(kind, failure)` per request, never with `nodes == 0`.
    fn rejected(&self, kind: &'static str, failure: Failure, nodes: u64) {
        let _ = (kind, failure, nodes);
    }

    /// One filter request was for a pod the policy has no opinion on
    /// ([`FilterVerdict::PassThrough`]): every candidate passed untouched. Called once per
    /// filter call, that is once per scheduling attempt of the pod; prioritize calls for such
    /// pods are not reported here.
    ///
    /// [`FilterVerdict::PassThrough`]: crate::FilterVerdict::PassThrough
    fn passed_through(&self) {}
}

/// An [`Observer`] that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// The extender call being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// The filter call.
    Filter,
    /// The prioritize call.
    Prioritize,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a decision (HTTP 200).
    Ok,
    /// The policy could not decide; answered HTTP 200 with a non-empty `Error`.
    PolicyError,
    /// The request was refused with a 4xx status (malformed, too large, wrong content type).
    Invalid,
    /// The response could not be encoded (HTTP 500); a bug.
    Internal,
}

// === impl Verb ===

impl Verb {
    /// A stable lowercase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// A stable lowercase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::PolicyError => "policy_error",
            Outcome::Invalid => "invalid",
            Outcome::Internal => "internal",
        }
    }
}
