//! Places a stream of pods on a cluster under one policy, through the ledger's own filter
//! and score code.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::dist::Rng;
use crate::ledger::{Demand, FitOptions, Ledger, Placement, Unfit};

/// How the simulator picks a node for a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// stowage's extender with a `placement: spread` class.
    Spread,
    /// stowage's extender with a `placement: binpack` class.
    Binpack,
    /// A capacity-blind scheduler: any node, equally likely; a pick that does not fit is a
    /// rejected pod (the provisioner would fail there).
    Random,
    /// The first node in name order that fits.
    FirstFit,
}

impl Policy {
    /// Every policy, in the order reports list them.
    pub const ALL: [Policy; 4] = [
        Policy::Spread,
        Policy::Binpack,
        Policy::Random,
        Policy::FirstFit,
    ];

    /// The policy's name on the command line and in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Binpack => "binpack",
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
                    "unknown policy {s:?}; use one or more of spread, binpack, random, first-fit"
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
    /// Rejected claims by the reason kind of [`Unfit::kind`].
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// One example reason text per kind, for the text report.
    pub example_reason: BTreeMap<&'static str, String>,
    /// The cluster after placement.
    pub ledger: Ledger,
}

/// Runs `pods` through `policy` on a copy of `ledger`. `rng` breaks ties and drives the
/// random policy.
pub fn run(policy: Policy, ledger: &Ledger, pods: &[PodSpec], rng: &mut Rng) -> Outcome {
    let opts = FitOptions::default();
    let mut ledger = ledger.clone();
    let names: Vec<String> = ledger.nodes().map(|n| n.name.to_string()).collect();
    let mut out = Outcome::default();
    for pod in pods {
        let choice = match policy {
            Policy::Spread => scheduled(&ledger, &names, &pod.demand, Placement::Spread, rng),
            Policy::Binpack => scheduled(&ledger, &names, &pod.demand, Placement::Binpack, rng),
            Policy::Random => {
                let pick = usize::try_from(rng.below(names.len() as u64)).unwrap_or(0);
                ledger
                    .check(&names[pick], &pod.demand, &opts)
                    .map(|()| pick)
            }
            Policy::FirstFit => first_fit(&ledger, &names, &pod.demand, &opts),
        };
        let placed = choice.and_then(|i| {
            ledger
                .allocate(&names[i], &pod.demand, &opts)
                .map_err(|e| match e {
                    crate::ledger::LedgerError::Unfit { reason, .. } => reason,
                    _ => Unfit::NoReport,
                })
        });
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

/// What kube-scheduler does with the extender's answers: filter, score the survivors, take
/// the highest score, break ties uniformly at random (its `selectHost`).
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
