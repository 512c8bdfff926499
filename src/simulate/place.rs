//! Places a stream of pods on a cluster under one policy, through the ledger's own filter
//! and score code, the way kube-scheduler uses the extender's answers.
//!
//! What a real scheduler does that the model follows:
//! * It adds the extender's integer score (0-10) times its weight to its own plugins'
//!   scores and takes the highest total, breaking ties at random. The pods here ask for no
//!   CPU or memory, so the plugins are equal and the extender's score decides; equal
//!   extender scores are a random pick.
//! * It scores the next pods before the extender has seen where the previous ones went:
//!   `selected-node` is written in its asynchronous binding cycle. `lag` is how many of the
//!   latest placements the extender's view misses. The extender of `spread` and `binpack`
//!   counts its own first choice for each pod it scored as held for a few seconds (its
//!   in-flight guesses), for scoring only; `spread-absolute` is the first extender, with
//!   absolute scores and no guesses.
//! * The provisioner checks the real state: a pod placed from a stale view where it no
//!   longer fits is sent back (counted as rescheduled) and placed again from a fresh one.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use super::dist::Rng;
use crate::ledger::{Demand, FitOptions, Ledger, Placement, Unfit, normalize, room_after};

/// How the simulator picks a node for a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// stowage's extender with a `placement: spread` class.
    Spread,
    /// stowage's extender with a `placement: binpack` class.
    Binpack,
    /// The first extender's `spread`: absolute scores from each node's own free share (nodes
    /// within a few percent of each other tie, and ties are a random pick), no in-flight
    /// guesses. Kept to compare against.
    SpreadAbsolute,
    /// A capacity-blind scheduler: any node, equally likely; a pick that does not fit is a
    /// rejected pod (the provisioner would fail there).
    Random,
    /// The first node in name order that fits.
    FirstFit,
}

impl Policy {
    /// Every policy, in the order reports list them.
    pub const ALL: [Policy; 5] = [
        Policy::Spread,
        Policy::Binpack,
        Policy::SpreadAbsolute,
        Policy::Random,
        Policy::FirstFit,
    ];

    /// The policy's name on the command line and in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Binpack => "binpack",
            Policy::SpreadAbsolute => "spread-absolute",
            Policy::Random => "random",
            Policy::FirstFit => "first-fit",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy {s:?}; use one or more of spread, binpack, spread-absolute, random, first-fit"
                )
            })
    }
}

/// One pod of the stream: its claims' sizes, all in one pool.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Number of claims.
    pub claims: u64,
    /// The pod's whole demand.
    pub demand: Demand,
}

/// What happened to the stream under one policy.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Claims placed.
    pub placed: u64,
    /// Claims rejected.
    pub rejected: u64,
    /// Pods placed.
    pub pods_placed: u64,
    /// Pods rejected.
    pub pods_rejected: u64,
    /// Pods placed from a stale view where they no longer fitted, sent back by the
    /// provisioner and placed again.
    pub rescheduled: u64,
    /// Rejected claims by the reason kind of [`Unfit::kind`].
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// One example reason text per kind, for the text report.
    pub example_reason: BTreeMap<&'static str, String>,
    /// The cluster after placement.
    pub ledger: Ledger,
}

/// Runs `pods` through `policy` on a copy of `ledger`. `rng` breaks ties and drives the
/// random policy; `lag` is how many of the latest placements the extender has not seen
/// when it scores a pod (see the module docs).
pub fn run(
    policy: Policy,
    ledger: &Ledger,
    pods: &[PodSpec],
    lag: usize,
    rng: &mut Rng,
) -> Outcome {
    let opts = FitOptions::default();
    let mut ledger = ledger.clone();
    let names: Vec<String> = ledger.nodes().map(|n| n.name.to_string()).collect();
    let mut out = Outcome::default();
    // The latest placements: (node, demand, the extender's first choice for the pod).
    let mut recent: VecDeque<(usize, Demand, Option<usize>)> = VecDeque::new();
    for pod in pods {
        let view = View::behind(&ledger, &names, &recent, policy);
        let choice = pick(policy, &view, &ledger, &names, &pod.demand, &opts, rng);
        let mut placed = match &choice {
            Ok((i, _)) => allocate(&mut ledger, &names[*i], &pod.demand),
            Err(e) => Err(e.clone()),
        };
        if placed.is_err() && choice.is_ok() {
            // Placed from a stale view: the provisioner sends it back, and the scheduler
            // places it again from what is there now.
            out.rescheduled += 1;
            let fresh = View::current(&ledger);
            let again = pick(policy, &fresh, &ledger, &names, &pod.demand, &opts, rng);
            placed = match &again {
                Ok((i, _)) => allocate(&mut ledger, &names[*i], &pod.demand),
                Err(e) => Err(e.clone()),
            };
            if let Ok((i, guess)) = again
                && placed.is_ok()
            {
                recent.push_back((i, pod.demand.clone(), guess));
            }
        } else if let (Ok((i, guess)), Ok(())) = (&choice, &placed) {
            recent.push_back((*i, pod.demand.clone(), *guess));
        }
        while recent.len() > lag {
            recent.pop_front();
        }
        match placed {
            Ok(()) => {
                out.placed += pod.claims;
                out.pods_placed += 1;
            }
            Err(reason) => {
                out.rejected += pod.claims;
                out.pods_rejected += 1;
                *out.rejected_by_reason.entry(reason.kind()).or_default() += pod.claims;
                out.example_reason
                    .entry(reason.kind())
                    .or_insert_with(|| reason.to_string());
            }
        }
    }
    out.ledger = ledger;
    out
}

fn allocate(ledger: &mut Ledger, node: &str, demand: &Demand) -> Result<(), Unfit> {
    ledger
        .allocate(node, demand, &FitOptions::default())
        .map_err(|e| match e {
            crate::ledger::LedgerError::Unfit { reason, .. } => reason,
            _ => Unfit::NoReport,
        })
}

/// What the extender sees when it scores a pod.
struct View {
    /// The cluster without the placements it has not seen: what it filters with.
    seen: Ledger,
    /// `seen` with its own first choices for those pods held (its in-flight guesses): what
    /// it scores with.
    guessed: Ledger,
}

impl View {
    fn current(ledger: &Ledger) -> View {
        View {
            seen: ledger.clone(),
            guessed: ledger.clone(),
        }
    }

    fn behind(
        ledger: &Ledger,
        names: &[String],
        recent: &VecDeque<(usize, Demand, Option<usize>)>,
        policy: Policy,
    ) -> View {
        let mut seen = ledger.clone();
        for (node, demand, _) in recent {
            let _ = seen.release(&names[*node], demand);
        }
        let mut guessed = seen.clone();
        if matches!(policy, Policy::Spread | Policy::Binpack) {
            for (_, demand, guess) in recent {
                if let Some(g) = guess {
                    let _ = guessed.reserve(&names[*g], demand, &FitOptions::default());
                }
            }
        }
        View { seen, guessed }
    }
}

/// The node the scheduler picks for a pod under `policy`, and the extender's first choice
/// (its in-flight guess) when it makes one.
fn pick(
    policy: Policy,
    view: &View,
    ledger: &Ledger,
    names: &[String],
    demand: &Demand,
    opts: &FitOptions,
    rng: &mut Rng,
) -> Result<(usize, Option<usize>), Unfit> {
    match policy {
        Policy::Spread => normalized(view, names, demand, Placement::Spread, rng),
        Policy::Binpack => normalized(view, names, demand, Placement::Binpack, rng),
        Policy::SpreadAbsolute => {
            scheduled(&view.seen, names, demand, Placement::Spread, rng).map(|i| (i, None))
        }
        Policy::Random => {
            let pick = usize::try_from(rng.below(names.len() as u64)).unwrap_or(0);
            ledger
                .check(&names[pick], demand, opts)
                .map(|()| (pick, None))
        }
        Policy::FirstFit => first_fit(ledger, names, demand, opts).map(|i| (i, None)),
    }
}

/// The extender as it is: filter on what it has seen, scores normalized over the
/// candidates (the best 10, one node only) on that view with its guesses held. The
/// scheduler takes the single 10; equally good nodes are ordered by a hash of the pod and
/// the node, which is random per pod.
fn normalized(
    view: &View,
    names: &[String],
    demand: &Demand,
    placement: Placement,
    rng: &mut Rng,
) -> Result<(usize, Option<usize>), Unfit> {
    let opts = FitOptions::default();
    let verdict = view
        .seen
        .filter(names.iter().map(String::as_str), demand, &opts);
    if verdict.passed.is_empty() {
        return Err(most_common(verdict.failed.into_iter().map(|(_, r)| r)));
    }
    let rooms = verdict
        .passed
        .iter()
        .map(|n| view.guessed.node(n).and_then(|n| room_after(n, demand)));
    let salt = rng.next_u64();
    let tie = |i: usize| mix(salt ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (_, top) = normalize(rooms, placement, tie);
    // Every candidate's guessed room may be gone (guesses fill it): then the scores are all
    // 0 and the scheduler picks at random among them.
    let name = match top {
        Some(t) => verdict.passed[t],
        None => {
            let i = usize::try_from(rng.below(verdict.passed.len() as u64)).unwrap_or(0);
            verdict.passed[i]
        }
    };
    let index = names
        .binary_search_by(|n| n.as_str().cmp(name))
        .map_err(|_| Unfit::NoReport)?;
    Ok((index, Some(index)))
}

/// splitmix64's finaliser: a well-mixed hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What kube-scheduler does with absolute extender scores: filter, score the survivors,
/// take the highest score, break ties uniformly at random (its `selectHost`).
fn scheduled(
    ledger: &Ledger,
    names: &[String],
    demand: &Demand,
    placement: Placement,
    rng: &mut Rng,
) -> Result<usize, Unfit> {
    let opts = FitOptions::default();
    let verdict = ledger.filter(names.iter().map(String::as_str), demand, &opts);
    if verdict.passed.is_empty() {
        return Err(most_common(verdict.failed.into_iter().map(|(_, r)| r)));
    }
    let scores = ledger.prioritize(verdict.passed.iter().copied(), demand, placement);
    let mut best: Option<(&str, u8)> = None;
    let mut ties = 0u64;
    for (name, score) in scores {
        match best {
            Some((_, b)) if score < b => {}
            Some((_, b)) if score == b => {
                ties += 1;
                if rng.below(ties + 1) == 0 {
                    best = Some((name, score));
                }
            }
            _ => {
                best = Some((name, score));
                ties = 0;
            }
        }
    }
    let (name, _) = best.ok_or(Unfit::NoReport)?;
    names
        .binary_search_by(|n| n.as_str().cmp(name))
        .map_err(|_| Unfit::NoReport)
}

fn first_fit(
    ledger: &Ledger,
    names: &[String],
    demand: &Demand,
    opts: &FitOptions,
) -> Result<usize, Unfit> {
    let mut reasons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match ledger.check(name, demand, opts) {
            Ok(()) => return Ok(i),
            Err(r) => reasons.push(r),
        }
    }
    Err(most_common(reasons.into_iter()))
}

/// The most frequent reason kind among the nodes, with the first example of it: a rejected
/// pod is summarised by why most nodes turned it down.
fn most_common(reasons: impl Iterator<Item = Unfit>) -> Unfit {
    let mut counts: BTreeMap<&'static str, (u64, Option<Unfit>)> = BTreeMap::new();
    for r in reasons {
        let e = counts.entry(r.kind()).or_default();
        e.0 += 1;
        e.1.get_or_insert(r);
    }
    counts
        .into_values()
        .max_by_key(|(n, _)| *n)
        .and_then(|(_, r)| r)
        .unwrap_or(Unfit::NoReport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Bytes, Driver, NodeState, PoolState};

    /// One node of 200 GiB and four of 100 GiB, empty.
    fn cluster() -> Ledger {
        let mut ledger = Ledger::new();
        for (name, gib) in [("a", 200), ("b", 100), ("c", 100), ("d", 100), ("e", 100)] {
            let pool = PoolState::new("default", Driver::Btrfs, Bytes::gib(gib));
            ledger.upsert(NodeState::new(name, vec![pool]));
        }
        ledger
    }

    fn burst(pods: usize, gib: u64) -> Vec<PodSpec> {
        (0..pods)
            .map(|_| PodSpec {
                claims: 1,
                demand: Demand::from_claims([("default", Bytes::gib(gib))]).unwrap(),
            })
            .collect()
    }

    fn used(outcome: &Outcome) -> Vec<u64> {
        outcome
            .ledger
            .nodes()
            .map(|n| n.pools[0].allocated.0 / Bytes::GI)
            .collect()
    }

    #[test]
    fn a_burst_of_identical_pods_scored_from_a_stale_view_does_not_herd() {
        // 20 pods of 10 GiB, each scored before the extender saw where the last 20 went.
        // The first extender's absolute scores give the big node 10 and the others 9 on
        // an empty cluster: every pod goes there until it is full.
        let pods = burst(20, 10);
        let herd = run(
            Policy::SpreadAbsolute,
            &cluster(),
            &pods,
            20,
            &mut Rng::new(1),
        );
        assert_eq!(used(&herd), [200, 0, 0, 0, 0], "the old scoring herds");
        // Normalized scores with in-flight guesses spread the same burst by free share.
        let spread = run(Policy::Spread, &cluster(), &pods, 20, &mut Rng::new(1));
        let u = used(&spread);
        assert!(u.iter().all(|&g| g > 0), "every node gets some: {u:?}");
        assert!(
            u[0] >= 60 && u[0] <= 80,
            "the big node about twice the others: {u:?}"
        );
        assert_eq!(spread.rescheduled, 0);
        assert_eq!(spread.pods_placed, 20);
    }

    #[test]
    fn a_pod_placed_from_a_stale_view_where_it_no_longer_fits_is_sent_back_and_placed_again() {
        // 30 pods of 10 GiB on 600 GiB: the old extender, 30 placements behind, keeps
        // sending pods to the full big node; the provisioner sends them back.
        let pods = burst(30, 10);
        let out = run(
            Policy::SpreadAbsolute,
            &cluster(),
            &pods,
            30,
            &mut Rng::new(1),
        );
        assert!(out.rescheduled >= 10, "{}", out.rescheduled);
        assert_eq!(out.pods_placed, 30, "all placed in the end");
        // With no lag, nothing is sent back.
        let fresh = run(
            Policy::SpreadAbsolute,
            &cluster(),
            &pods,
            0,
            &mut Rng::new(1),
        );
        assert_eq!(fresh.rescheduled, 0);
    }
}
