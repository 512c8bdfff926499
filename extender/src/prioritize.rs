//! The prioritize verb: decode, ask the policy, answer with a clamped `HostPriorityList`.

use std::collections::HashSet;

use tracing::{Span, debug};

use crate::args::{Args, PodKey};
use crate::body::{ApiError, JsonBody};
use crate::encode;
use crate::observe::Outcome;
use crate::policy::{NodeScore, Policy};
use crate::routes::{Answer, FastState};
use crate::wire::{MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY};

pub(crate) fn respond<P: Policy>(policy: &P, body: &JsonBody) -> Result<Answer, ApiError> {
    let (pod, candidates) = Args::decode(body)?.into_parts()?;
    let names = candidates.names();
    let span = Span::current();
    span.record("pod", tracing::field::display(PodKey(&pod)));
    span.record("nodes", names.len());

    let scores = sanitize(&names, policy.prioritize(&pod, &names));
    span.record("scored", scores.len());
    Ok(Answer::new(reply(&scores), Outcome::Ok))
}

/// Writes the `HostPriorityList`: `[{"Host":"<name>","Score":10},…]`, keys as in
/// [`crate::HostPriority`].
fn reply(scores: &[NodeScore<'_>]) -> Vec<u8> {
    let size = scores.iter().map(|s| s.node.len() + 24).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(size);
    encode::array(&mut out, scores, |out, s| {
        out.extend_from_slice(br#"{"Host":"#);
        encode::string(out, s.node);
        out.extend_from_slice(br#","Score":"#);
        encode::integer(out, s.score);
        out.push(b'}');
    });
    out
}

/// Drops scores for non-candidates, keeps one score per named node (the first), and clamps
/// to `0..=10`: the scheduler multiplies by `weight × 10` without clamping, so an
/// out-of-range score would outweigh every in-tree plugin. Pure, so it is tested without
/// HTTP.
///
/// A policy usually scores the candidates it was given, in order, borrowing each name: then
/// each score is its candidate's and is kept as it is, without a set of names built per
/// request (thousands of hashed names, and a table that pushes the policy's own index out of
/// the CPU caches). A request naming a node twice then gets a score for each mention, one
/// per entry it sent; kube-scheduler never names a node twice.
fn sanitize<'n>(names: &[&'n str], mut scores: Vec<NodeScore<'n>>) -> Vec<NodeScore<'n>> {
    let total = scores.len();
    let aligned = scores.len() == names.len()
        && scores
            .iter()
            .zip(names)
            .all(|(s, n)| std::ptr::eq(s.node, *n));
    if !aligned {
        let candidates: HashSet<&str, FastState> = names.iter().copied().collect();
        let mut seen: HashSet<&str, FastState> =
            HashSet::with_capacity_and_hasher(scores.len(), FastState::default());
        scores.retain(|s| candidates.contains(s.node) && seen.insert(s.node));
    }
    let mut clamped = 0_usize;
    for s in &mut scores {
        let score = s.score.clamp(MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY);
        clamped += usize::from(score != s.score);
        s.score = score;
    }
    if clamped > 0 || scores.len() < total {
        debug!(
            clamped,
            dropped = total - scores.len(),
            "policy scores out of range or for unknown or repeated nodes"
        );
    }
    scores
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
    fn scores_in_candidate_order_are_kept_one_per_mention() {
        // Names with one buffer each, as a request's are: the two mentions of "a" are
        // distinct, and the policy scored each.
        let (a1, a2, b) = (String::from("a"), String::from("a"), String::from("b"));
        let names = [a1.as_str(), a2.as_str(), b.as_str()];
        let scores = names.iter().map(|n| score(n, 12)).collect();
        let got = sanitize(&names, scores);
        assert_eq!(got, [score("a", 10), score("a", 10), score("b", 10)]);
        assert!(got.iter().zip(names).all(|(s, n)| std::ptr::eq(s.node, n)));
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
