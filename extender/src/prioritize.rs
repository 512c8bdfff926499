//! The prioritize verb: decode, ask the policy, answer with a clamped `HostPriorityList`.

use std::collections::HashSet;

use serde::Serialize;
use tracing::{Span, debug};

use crate::args::{Args, ObjectOnly, PodKey};
use crate::body::{ApiError, JsonBody};
use crate::observe::Outcome;
use crate::policy::{NodeScore, Policy};
use crate::routes::{Answer, FastState};
use crate::wire::{MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY};

pub(crate) fn respond<P: Policy>(policy: &P, body: &JsonBody) -> Result<Answer, ApiError> {
    let ObjectOnly(args): ObjectOnly<Args<'_>> = body.decode("ExtenderArgs")?;
    let (pod, candidates) = args.into_parts()?;
    let names = candidates.names();
    let span = Span::current();
    span.record("pod", tracing::field::display(PodKey(&pod)));
    span.record("nodes", names.len());

    let scores = sanitize(&names, policy.prioritize(&pod, &names));
    span.record("scored", scores.len());
    let reply: Vec<HostPriorityOut<'_>> = scores
        .iter()
        .map(|s| HostPriorityOut {
            host: s.node,
            score: s.score,
        })
        .collect();
    // About 30 bytes per score: `{"Host":"<name>","Score":10},`.
    let hint = reply.iter().map(|s| s.host.len() + 24).sum::<usize>() + 2;
    Answer::json(&reply, Outcome::Ok, hint)
}

/// Keeps one score per candidate (the first), drops non-candidates, and clamps to
/// `0..=10`: the scheduler multiplies by `weight × 10` without clamping, so an out-of-range
/// score would outweigh every in-tree plugin. Pure, so it is tested without HTTP.
fn sanitize<'n>(names: &[&'n str], scores: Vec<NodeScore<'n>>) -> Vec<NodeScore<'n>> {
    if scores.is_empty() {
        return scores;
    }
    // A policy usually scores the candidates it was given, in order, borrowing each name:
    // then every score is for a candidate and the candidate set need not be built.
    let aligned = scores.len() == names.len()
        && scores
            .iter()
            .zip(names)
            .all(|(s, n)| std::ptr::eq(s.node, *n));
    let candidates: HashSet<&str, FastState> = if aligned {
        HashSet::default()
    } else {
        names.iter().copied().collect()
    };
    let mut seen: HashSet<&str, FastState> =
        HashSet::with_capacity_and_hasher(scores.len(), FastState::default());
    let total = scores.len();
    let mut clamped = 0_usize;
    let kept: Vec<NodeScore<'n>> = scores
        .into_iter()
        .filter(|s| (aligned || candidates.contains(s.node)) && seen.insert(s.node))
        .map(|s| {
            let score = s.score.clamp(MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY);
            clamped += usize::from(score != s.score);
            NodeScore { score, ..s }
        })
        .collect();
    if clamped > 0 || kept.len() < total {
        debug!(
            clamped,
            dropped = total - kept.len(),
            "policy scores out of range or for unknown or repeated nodes"
        );
    }
    kept
}

/// `HostPriority` with a borrowed host; keys as in [`crate::HostPriority`].
#[derive(Serialize)]
struct HostPriorityOut<'a> {
    #[serde(rename = "Host")]
    host: &'a str,
    #[serde(rename = "Score")]
    score: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(node: &str, score: i64) -> NodeScore<'_> {
        NodeScore { node, score }
    }

    #[test]
    fn scores_are_clamped_to_the_extender_range() {
        let names = ["a", "b", "c"];
        let got = sanitize(&names, vec![score("a", 100), score("b", -5), score("c", 7)]);
        assert_eq!(got, [score("a", 10), score("b", 0), score("c", 7)]);
    }

    #[test]
    fn scores_for_unknown_or_repeated_nodes_are_dropped() {
        let names = ["a", "b"];
        let got = sanitize(
            &names,
            vec![score("b", 3), score("zz", 9), score("b", 10), score("a", 1)],
        );
        assert_eq!(got, [score("b", 3), score("a", 1)]);
    }
}
