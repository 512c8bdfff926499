//! The decision interface the router is generic over.
//!
//! A policy answers from memory (caches, an index), so its methods are synchronous and cheap.
//! Node names are borrowed from the request body; verdicts borrow them back, so a pass over
//! thousands of nodes allocates only for the nodes it rejects.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// Decides, for one pod, which candidate nodes can host it and how well.
///
/// Both methods see only node names, in both `nodeCacheCapable` modes: in full-Node mode the
/// router passes the Node objects back untouched and never parses them.
///
/// The `Pod` is not the whole object the scheduler sent: the router decodes only
/// `metadata.name`, `metadata.namespace`, `metadata.uid` and the `spec.volumes` that name a
/// claim. Those volumes keep their `name` and `persistentVolumeClaim.claimName`; an
/// `ephemeral` volume is there with an empty source. Every other field is unset.
pub trait Policy: Send + Sync + 'static {
    /// Decides which of `nodes` can host `pod`.
    ///
    /// Nodes the verdict does not reject pass. Return [`FilterVerdict::PassThrough`] for pods
    /// the policy has no opinion on; that is the fast path.
    fn filter<'n>(&self, pod: &Pod, nodes: &[&'n str]) -> FilterVerdict<'n>;

    /// Scores `nodes` for `pod`.
    ///
    /// Scores are clamped to [`MIN_EXTENDER_PRIORITY`]`..=`[`MAX_EXTENDER_PRIORITY`]. Nodes left
    /// out get no extender score, which is the same as the minimum; return an empty list for
    /// pods the policy has no opinion on.
    ///
    /// [`MIN_EXTENDER_PRIORITY`]: crate::MIN_EXTENDER_PRIORITY
    /// [`MAX_EXTENDER_PRIORITY`]: crate::MAX_EXTENDER_PRIORITY
    fn prioritize<'n>(&self, pod: &Pod, nodes: &[&'n str]) -> Vec<NodeScore<'n>>;
}

/// The outcome of [`Policy::filter`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum FilterVerdict<'n> {
    /// The policy judged the pod and every node passes.
    PassAll,
    /// The policy has no opinion on this pod (not its kind of pod, or it lacks the data to
    /// judge it): every node passes untouched. Answered like [`FilterVerdict::PassAll`] and
    /// reported to [`Observer::passed_through`](crate::Observer::passed_through).
    PassThrough,
    /// The listed nodes are rejected, each with a reason; every other node passes. When a node
    /// is listed twice the first entry counts. Names that were not candidates are ignored.
    /// Rejections that all give their candidate's position ([`Rejection::at`]), in increasing
    /// order, reject exactly those positions: a name the request lists twice is then judged
    /// at each mention as the policy judged it there.
    Reject(Vec<Rejection<'n>>),
    /// Only the candidates at the positions in `keep` (indices into the `nodes` the policy
    /// was given) pass; `rejections` are reported as in [`FilterVerdict::Reject`]; every
    /// other candidate is left out of the answer without a reason: it could host the pod,
    /// but the policy keeps the scheduler to better ones. A position out of range, or of a
    /// rejected node, is ignored.
    ///
    /// kube-scheduler goes on with the nodes that pass only; when one passes it places the
    /// pod there without scoring (no prioritize call, none of its own score plugins).
    Narrow {
        /// The positions of the candidates that pass.
        keep: Vec<usize>,
        /// The candidates that cannot host the pod, with their reasons.
        rejections: Vec<Rejection<'n>>,
    },
    /// The policy cannot decide (for example, its caches have not synced). The scheduler
    /// treats the whole call as failed, or skips the extender when it is `ignorable`.
    Error(Cow<'static, str>),
}

/// Why one node cannot host the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection<'n> {
    /// The rejected node, borrowed from the candidates.
    pub node: &'n str,
    /// Whether preemption could help, which picks the map the node is reported in.
    pub failure: Failure,
    /// A short label from a closed set (for example `"InsufficientCapacity"`), for metrics.
    pub kind: &'static str,
    /// The human-readable reason, shown in the pod's `FailedScheduling` event. Shared: a
    /// policy turning many nodes down for the same reason builds it once, and the router
    /// writes a reason repeated from one node to the next by copying its encoding.
    pub reason: Arc<str>,
    /// The node's position among the candidates the policy was given, when it says so
    /// ([`Rejection::at`]). When every rejection has one, in increasing order, each naming
    /// the candidate there, the router matches them to the candidates in one pass; otherwise
    /// by name, and the positions are ignored.
    pub position: Option<usize>,
}

/// How the scheduler should treat a rejected node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Evicting lower-priority pods might make the node fit: reported in `FailedNodes`.
    Unschedulable,
    /// Evicting pods cannot help: reported in `FailedAndUnresolvableNodes` (and, for schedulers
    /// before 1.21 that know no such map, in `FailedNodes`), so preemption does not consider
    /// the node. Capacity held by persistent volumes is of this kind, because
    /// evicting a pod does not free its volume.
    UnschedulableAndUnresolvable,
}

/// A node's score from [`Policy::prioritize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeScore<'n> {
    /// The node, borrowed from the candidates.
    pub node: &'n str,
    /// The score; clamped by the router.
    pub score: i64,
}

// === impl Rejection ===

impl<'n> Rejection<'n> {
    /// A rejection that preemption might resolve ([`Failure::Unschedulable`]).
    pub fn unschedulable(node: &'n str, kind: &'static str, reason: impl Into<Arc<str>>) -> Self {
        Self {
            node,
            failure: Failure::Unschedulable,
            kind,
            reason: reason.into(),
            position: None,
        }
    }

    /// A rejection that preemption cannot resolve ([`Failure::UnschedulableAndUnresolvable`]).
    pub fn unresolvable(node: &'n str, kind: &'static str, reason: impl Into<Arc<str>>) -> Self {
        Self {
            node,
            failure: Failure::UnschedulableAndUnresolvable,
            kind,
            reason: reason.into(),
            position: None,
        }
    }

    /// The same rejection, saying the node is the candidate at `position` (an index into
    /// the `nodes` the policy was given). A policy that rejects candidates as it walks them
    /// can say where each is, which spares the router a table of names.
    pub fn at(self, position: usize) -> Self {
        Self {
            position: Some(position),
            ..self
        }
    }
}

// === impl Failure ===

impl Failure {
    /// A stable lowercase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Unschedulable => "unschedulable",
            Failure::UnschedulableAndUnresolvable => "unresolvable",
        }
    }
}
