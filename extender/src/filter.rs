//! The filter verb: decode, ask the policy, turn its verdict into an `ExtenderFilterResult`.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{Span, debug};

use crate::args::{Args, Candidates, PodKey};
use crate::body::{ApiError, JsonBody};
use crate::encode;
use crate::observe::{Observer, Outcome};
use crate::policy::{Failure, FilterVerdict, Policy, Rejection};
use crate::routes::{Answer, FastState};

pub(crate) fn respond<P: Policy>(
    policy: &P,
    observer: &dyn Observer,
    body: &JsonBody,
) -> Result<Answer, ApiError> {
    let (pod, candidates) = Args::decode(body)?.into_parts()?;
    let names = candidates.names();
    let span = Span::current();
    span.record("pod", tracing::field::display(PodKey(&pod)));
    span.record("nodes", names.len());

    let (rejections, keep) = match policy.filter(&pod, &names) {
        FilterVerdict::PassAll => (Vec::new(), None),
        FilterVerdict::PassThrough => {
            observer.passed_through();
            (Vec::new(), None)
        }
        FilterVerdict::Reject(rejections) => (rejections, None),
        FilterVerdict::Narrow { keep, rejections } => (rejections, Some(keep)),
        FilterVerdict::Error(message) => {
            debug!(error = %message, "policy could not decide");
            return Ok(Answer::new(error_reply(&message), Outcome::PolicyError));
        }
    };
    let mut decision = decide(&names, rejections);
    if let Some(keep) = keep {
        decision.narrow(&keep);
        span.record("left_out", decision.left_out);
    }
    span.record("passed", decision.passed.len());
    span.record(
        "failed",
        decision.failed.len() + decision.unresolvable.len(),
    );
    if decision.ignored > 0 {
        debug!(
            ignored = decision.ignored,
            "policy rejected nodes that were not candidates"
        );
    }
    for &(kind, failure, nodes) in &decision.counts {
        observer.rejected(kind, failure, nodes);
    }
    // The answer repeats the candidates, so the request's size is a fair first guess.
    let reply = reply(&candidates, &names, &decision, body.0.len());
    Ok(Answer::new(reply, Outcome::Ok))
}

/// What the verdict means for each candidate. Pure, so it is tested without HTTP.
#[derive(Debug, Default, PartialEq)]
struct Decision<'n> {
    /// Indices of the candidates that pass, in request order.
    passed: Vec<usize>,
    /// `FailedNodes`, in request order.
    failed: Vec<(&'n str, Arc<str>)>,
    /// `FailedAndUnresolvableNodes`, in request order.
    unresolvable: Vec<(&'n str, Arc<str>)>,
    /// Rejected candidates per `(kind, failure)`, for the observer.
    counts: Vec<(&'static str, Failure, u64)>,
    /// Rejections of nodes that were not candidates; dropped.
    ignored: usize,
    /// Candidates that could host the pod but were left out by a narrowing verdict.
    left_out: usize,
}

impl<'n> Decision<'n> {
    /// Reports the candidate `name` as `rejection` says.
    fn report(&mut self, name: &'n str, rejection: Rejection<'n>) {
        count(&mut self.counts, rejection.kind, rejection.failure);
        let entry = (name, rejection.reason);
        match rejection.failure {
            Failure::Unschedulable => self.failed.push(entry),
            Failure::UnschedulableAndUnresolvable => self.unresolvable.push(entry),
        }
    }

    /// Keeps only the passing candidates at the positions in `keep`
    /// ([`FilterVerdict::Narrow`]); the others are left out without a reason.
    fn narrow(&mut self, keep: &[usize]) {
        let mut kept = vec![false; self.passed.last().map_or(0, |&i| i + 1)];
        for &i in keep {
            if let Some(slot) = kept.get_mut(i) {
                *slot = true;
            }
        }
        let before = self.passed.len();
        self.passed.retain(|&i| kept[i]);
        self.left_out = before - self.passed.len();
    }
}

fn decide<'n>(names: &[&'n str], rejections: Vec<Rejection<'n>>) -> Decision<'n> {
    let mut decision = Decision {
        passed: Vec::with_capacity(names.len().saturating_sub(rejections.len())),
        ..Decision::default()
    };
    if rejections.is_empty() {
        decision.passed.extend(0..names.len());
        return decision;
    }
    if let Some(positions) = in_place(names, &rejections) {
        let mut next = 0;
        for (at, rejection) in positions.into_iter().zip(rejections) {
            decision.passed.extend(next..at);
            next = at + 1;
            decision.report(names[at], rejection);
        }
        decision.passed.extend(next..names.len());
        return decision;
    }
    // One lookup per candidate; a slot is emptied once its node is reported.
    let mut by_node: HashMap<&str, Option<Rejection<'n>>, FastState> =
        HashMap::with_capacity_and_hasher(rejections.len(), FastState::default());
    for rejection in rejections {
        by_node.entry(rejection.node).or_insert(Some(rejection));
    }
    let mut unreported = by_node.len();
    for (index, &name) in names.iter().enumerate() {
        match by_node.get_mut(name) {
            Some(slot) => {
                // A candidate listed twice (the scheduler never does this) stays rejected and
                // is reported once.
                let Some(rejection) = slot.take() else {
                    continue;
                };
                unreported -= 1;
                decision.report(name, rejection);
            }
            None => decision.passed.push(index),
        }
    }
    decision.ignored = unreported;
    decision
}

/// The rejections' positions, when every rejection gives its candidate's position, in
/// increasing order, and names the candidate there ([`Rejection::at`]); `None` otherwise.
fn in_place(names: &[&str], rejections: &[Rejection<'_>]) -> Option<Vec<usize>> {
    let mut positions: Vec<usize> = Vec::with_capacity(rejections.len());
    for rejection in rejections {
        let at = rejection.position?;
        let ordered = positions.last().is_none_or(|&before| at > before);
        if !ordered || names.get(at) != Some(&rejection.node) {
            return None;
        }
        positions.push(at);
    }
    Some(positions)
}

fn count(counts: &mut Vec<(&'static str, Failure, u64)>, kind: &'static str, failure: Failure) {
    match counts
        .iter_mut()
        .find(|(k, f, _)| *k == kind && *f == failure)
    {
        Some((_, _, n)) => *n += 1,
        None => counts.push((kind, failure, 1)),
    }
}

/// Writes `ExtenderFilterResult` (keys as in [`crate::ExtenderFilterResult`]): the
/// candidates that passed, in the mode they came in, and the rejected ones with their
/// reasons.
fn reply(
    candidates: &Candidates<'_>,
    names: &[&str],
    decision: &Decision<'_>,
    capacity: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    match candidates {
        Candidates::Names(_) => {
            out.extend_from_slice(br#"{"Nodes":null,"NodeNames":"#);
            encode::array(
                &mut out,
                decision.passed.iter().map(|&i| names[i]),
                encode::string,
            );
        }
        Candidates::Nodes {
            metadata, items, ..
        } => {
            // The input list's metadata echoed back, or `{}` when it had none; the items
            // that pass byte for byte.
            out.extend_from_slice(br#"{"Nodes":{"metadata":"#);
            match metadata {
                Some(raw) => encode::raw(&mut out, raw),
                None => out.extend_from_slice(b"{}"),
            }
            out.extend_from_slice(br#","items":"#);
            encode::array(
                &mut out,
                decision.passed.iter().map(|&i| items[i]),
                encode::raw,
            );
            out.extend_from_slice(br#"},"NodeNames":null"#);
        }
    }
    // Unresolvable nodes go in both maps. kube-scheduler up to 1.20 knows only
    // `FailedNodes`: a node only in the other map would be filtered out without a reason
    // ("0/3 nodes are available: ."). Later versions take the unresolvable entry of a node
    // that is in both and skip its `FailedNodes` one. The second map is left out when empty,
    // as upstream (`omitempty`).
    // The second map's entries are the first's last ones, so they are copied.
    out.extend_from_slice(br#","FailedNodes":{"#);
    encode::entries(&mut out, &decision.failed);
    if !decision.failed.is_empty() && !decision.unresolvable.is_empty() {
        out.push(b',');
    }
    let start = out.len();
    encode::entries(&mut out, &decision.unresolvable);
    let unresolvable = start..out.len();
    out.push(b'}');
    if !decision.unresolvable.is_empty() {
        out.extend_from_slice(br#","FailedAndUnresolvableNodes":{"#);
        out.extend_from_within(unresolvable);
        out.push(b'}');
    }
    out.extend_from_slice(br#","Error":""}"#);
    out
}

/// Writes an `ExtenderFilterResult` that fails the whole call with `message`.
fn error_reply(message: &str) -> Vec<u8> {
    let mut out = br#"{"Nodes":null,"NodeNames":null,"FailedNodes":{},"Error":"#.to_vec();
    encode::string(&mut out, message);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of<'n>(decision: &Decision<'n>, names: &[&'n str]) -> Vec<&'n str> {
        decision.passed.iter().map(|&i| names[i]).collect()
    }

    #[test]
    fn no_rejections_pass_every_candidate_in_order() {
        let names = ["c", "a", "b"];
        let d = decide(&names, Vec::new());
        assert_eq!(names_of(&d, &names), ["c", "a", "b"]);
        assert!(d.failed.is_empty() && d.unresolvable.is_empty() && d.counts.is_empty());
    }

    #[test]
    fn rejected_nodes_go_to_the_map_their_failure_names() {
        let names = ["a", "b", "c", "d"];
        let d = decide(
            &names,
            vec![
                Rejection::unresolvable("c", "NoPool", "no pool"),
                Rejection::unschedulable("b", "InsufficientCapacity", "full"),
                Rejection::unresolvable("d", "InsufficientCapacity", "full"),
            ],
        );
        assert_eq!(names_of(&d, &names), ["a"]);
        assert_eq!(d.failed, [("b", Arc::from("full"))]);
        assert_eq!(
            d.unresolvable,
            [("c", Arc::from("no pool")), ("d", Arc::from("full"))]
        );
        assert_eq!(
            d.counts,
            [
                ("InsufficientCapacity", Failure::Unschedulable, 1),
                ("NoPool", Failure::UnschedulableAndUnresolvable, 1),
                (
                    "InsufficientCapacity",
                    Failure::UnschedulableAndUnresolvable,
                    1
                ),
            ]
        );
    }

    #[test]
    fn first_rejection_of_a_node_counts_and_strangers_are_ignored() {
        let names = ["a", "b"];
        let d = decide(
            &names,
            vec![
                Rejection::unschedulable("a", "First", "first"),
                Rejection::unresolvable("a", "Second", "second"),
                Rejection::unresolvable("zz", "Stranger", "not a candidate"),
            ],
        );
        assert_eq!(names_of(&d, &names), ["b"]);
        assert_eq!(d.failed, [("a", Arc::from("first"))]);
        assert!(d.unresolvable.is_empty());
        assert_eq!(d.ignored, 1);
    }

    #[test]
    fn narrowing_keeps_the_chosen_candidates_that_pass_and_reports_only_rejections() {
        let names = ["a", "b", "c", "d", "e"];
        let mut d = decide(&names, vec![Rejection::unresolvable("b", "K", "full")]);
        // "b" is rejected: keeping it changes nothing; 9 is not a candidate.
        d.narrow(&[3, 1, 0, 9]);
        assert_eq!(names_of(&d, &names), ["a", "d"]);
        assert_eq!(d.unresolvable, [("b", Arc::from("full"))]);
        assert!(d.failed.is_empty());
        assert_eq!(
            d.left_out, 2,
            "c and e fit but are left out without a reason"
        );
        let mut d = decide(&names, Vec::new());
        d.narrow(&[]);
        assert!(d.passed.is_empty());
        assert_eq!(d.left_out, 5);
    }

    /// Rejections that give their positions are matched there without a table: the same
    /// answer as by name, and a name listed twice is judged at each mention as the policy
    /// judged it there.
    #[test]
    fn rejections_at_their_positions_are_matched_in_one_pass() {
        let owned: Vec<String> = ["a", "b", "c", "b", "d"].map(String::from).into();
        let names: Vec<&str> = owned.iter().map(String::as_str).collect();
        let at = |i: usize, failure: Failure| Rejection {
            node: names[i],
            failure,
            kind: "K",
            reason: Arc::from(format!("r{i}")),
            position: Some(i),
        };
        let by_name = decide(&names[..3], vec![Rejection::unschedulable("b", "K", "r1")]);
        let in_place = decide(&names[..3], vec![at(1, Failure::Unschedulable)]);
        assert_eq!(in_place, by_name);

        let d = decide(
            &names,
            vec![
                at(0, Failure::Unschedulable),
                at(3, Failure::UnschedulableAndUnresolvable),
            ],
        );
        assert_eq!(
            names_of(&d, &names),
            ["b", "c", "d"],
            "b passes at 1, not at 3"
        );
        assert_eq!(d.failed, [("a", Arc::from("r0"))]);
        assert_eq!(d.unresolvable, [("b", Arc::from("r3"))]);
        assert_eq!(d.ignored, 0);
    }

    /// Positions out of order, out of range, naming another candidate, or given by only some
    /// rejections are ignored: the rejections are matched by name.
    #[test]
    fn rejections_whose_positions_are_not_all_right_are_matched_by_name() {
        let names = ["a", "b", "c"];
        let by_name = |rejections: Vec<Rejection<'static>>| {
            let mut without = rejections.clone();
            for r in &mut without {
                r.position = None;
            }
            assert_eq!(decide(&names, rejections), decide(&names, without));
        };
        let r = |node: &'static str| Rejection::unresolvable(node, "K", node);
        by_name(vec![r("c").at(2), r("a").at(0)]);
        by_name(vec![r("a").at(0), r("a").at(0)]);
        by_name(vec![r("a").at(0), r("b").at(7)]);
        by_name(vec![r("a").at(1)]);
        by_name(vec![r("a").at(0), r("c")]);
        by_name(vec![r("zz").at(2)]);
        // The first of them, for instance, still rejects c and a.
        let d = decide(&names, vec![r("c").at(2), r("a").at(0)]);
        assert_eq!(names_of(&d, &names), ["b"]);
    }

    #[test]
    fn duplicate_candidate_stays_rejected_and_is_reported_once() {
        let names = ["a", "a", "b"];
        let d = decide(&names, vec![Rejection::unschedulable("a", "K", "r")]);
        assert_eq!(names_of(&d, &names), ["b"]);
        assert_eq!(d.failed.len(), 1);
    }
}
