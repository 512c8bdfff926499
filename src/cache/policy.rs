//! The stowage scheduler-extender policy: the [`ClusterIndex`] asked through the ledger.
//!
//! Filter rejects nodes whose pools cannot take the pod's unbound local claims, as
//! unresolvable (evicting pods frees no storage), and every node but the one where a
//! volume of the pod's claims is made already. With [`StowagePolicy::keep_best`] it also
//! narrows the nodes that can host the pod to the best few for its storage, ranked as
//! prioritize ranks them. Prioritize scores by the class's placement, normalized over the
//! candidates, and counts the pods it has just scored on the nodes it put first until their
//! `selected-node` arrives ([`super::inflight`]); so does a filter that narrows or lets one
//! node pass, since kube-scheduler then places the pod without scoring. Pods without local
//! claims pass through; a pod whose claims (or their classes) the index has not seen yet is
//! turned down on every node for now, so that the scheduler retries it rather than placing
//! it capacity-blind.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use foldhash::fast::FixedState;
use parking_lot::{Mutex, RwLock};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use stowage_extender::{FilterVerdict, NodeScore, Policy, Rejection};

use super::inflight::{Guessed, Inflight};
use super::{
    ClusterIndex, Failing, FitClock, FitPlan, Held, OwnHold, PlannedNode, PodDemand, credit,
};
use crate::ledger::{
    Best, Bytes, Demand, FitOptions, NodeState, PoolName, Shortfall, Unfit, best, check_aged,
    normalize, room_after,
};

/// Where the policy reads the time: heartbeat ages are measured against it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The extender policy over a shared [`ClusterIndex`].
#[derive(Clone)]
pub struct StowagePolicy {
    /// The cluster view, written by the reflectors.
    pub index: Arc<RwLock<ClusterIndex>>,
    /// Fit-check configuration.
    pub opts: FitOptions,
    /// The current time.
    pub clock: Clock,
    /// Where the pods just scored are expected to go (shared by clones of the policy).
    pub inflight: Arc<Mutex<Inflight>>,
    /// How many of the nodes that can host a pod filter passes at most, the best for the
    /// pod's storage first (`--extender-keep-best`); 0 passes every one of them.
    pub keep_best: usize,
}

impl fmt::Debug for StowagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StowagePolicy")
            .field("opts", &self.opts)
            .field("keep_best", &self.keep_best)
            .finish_non_exhaustive()
    }
}

impl StowagePolicy {
    /// A policy reading the system clock.
    pub fn new(index: Arc<RwLock<ClusterIndex>>, opts: FitOptions) -> Self {
        Self {
            index,
            opts,
            clock: Arc::new(Timestamp::now),
            inflight: Arc::default(),
            keep_best: 0,
        }
    }

    /// Makes filter pass at most `n` nodes, those that suit the pod's storage best
    /// ([`StowagePolicy::keep_best`]); 0 passes every node that can host it.
    pub fn with_keep_best(mut self, n: usize) -> Self {
        self.keep_best = n;
        self
    }

    /// Replaces the clock (tests, simulations).
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Calls `f` with the node as this pod sees it: what the cluster already holds for the
    /// pod's own claims is taken back. Only a node holding some of them is copied; every
    /// other node is borrowed from the index, with its heartbeat age passed beside it.
    fn with_node<R>(
        index: &ClusterIndex,
        name: &str,
        now: Timestamp,
        holds: &[OwnHold],
        f: impl FnOnce(&NodeState, Option<std::time::Duration>) -> R,
    ) -> Option<R> {
        if holds.iter().any(|h| h.node.as_str() == name) {
            let node = Self::node_copy(index, name, now, holds)?;
            Some(f(&node, node.heartbeat_age))
        } else {
            let (node, age) = index.node_view(name, now)?;
            Some(f(node, age))
        }
    }

    /// A copy of the node as this pod sees it: its heartbeat age set, and what the cluster
    /// holds for the pod's own claims taken back.
    fn node_copy(
        index: &ClusterIndex,
        name: &str,
        now: Timestamp,
        holds: &[OwnHold],
    ) -> Option<NodeState> {
        let (node, age) = index.node_view(name, now)?;
        let mut node = NodeState {
            heartbeat_age: age,
            ..node.clone()
        };
        credit(&mut node, holds);
        Some(node)
    }

    /// Checks one node, and returns the room the demand leaves on a node that fits (what
    /// [`best`] ranks it by, where no guess or hold changes it). Nodes holding some of the
    /// pod's own claims are copied and credited ([`Self::with_node`]); every other node is
    /// judged by the plan's compact summary ([`PlannedNode::judge`], which raises `free`).
    fn check_node(
        index: &ClusterIndex,
        planned: Option<PlannedNode<'_>>,
        name: &str,
        clock: &FitClock,
        demand: &Demand,
        holds: &[OwnHold],
        free: &mut [Bytes],
    ) -> Result<Room, Failing> {
        let fit = if holds.iter().any(|h| h.node.as_str() == name) {
            Self::with_node(index, name, clock.now(), holds, |node, age| {
                check_aged(node, age, demand, clock.opts())
                    .map(|()| room_after(node, demand))
                    .map_err(Failing::Unfit)
            })
        } else {
            planned.map(|node| node.judge(clock, demand, free))
        };
        match fit {
            Some(fit) => fit,
            None if demand.is_empty() => Ok(None),
            None => Err(Failing::Unfit(Unfit::NoReport)),
        }
    }

    /// Ranks `nodes` for the pod: `rank` gets each node's room after the demand (the node
    /// as this pod sees it, less what the pods just ranked are guessed to take there) and
    /// the tie-break, and returns its result with the position of the node it put first.
    /// `room(i)` is node `i`'s room as the index has it, asked only for nodes that no guess
    /// and no hold of the pod's changes. The pod is then guessed onto the first node
    /// ([`inflight`](super::inflight)), so the next pods of a burst, ranked before the
    /// scheduler's `selected-node` for this one arrives, see that node's space as taken.
    ///
    /// The guesses are locked only to be read and written, not while the nodes are ranked:
    /// kube-scheduler's calls come one after another, and concurrent calls (several
    /// schedulers) must not queue behind each other.
    #[allow(clippy::too_many_arguments)]
    fn rank<R>(
        &self,
        index: &ClusterIndex,
        pod: &Pod,
        demand: &Demand,
        holds: &[OwnHold],
        nodes: &[&str],
        room: impl Fn(usize) -> Room,
        rank: impl FnOnce(Rooms<'_>, &dyn Fn(usize) -> u64) -> (R, Option<usize>),
    ) -> R {
        let now = (self.clock)();
        let key = pod_key(pod);
        let started = Instant::now();
        let guessed = self.inflight.lock().load(index, &key, started);
        let mut rooms = nodes.iter().enumerate().map(|(i, &node)| {
            Self::guessed_room(index, node, now, demand, holds, &guessed, || room(i))
        });
        let tie = tiebreak(&key, nodes);
        let (ranked, top) = rank(&mut rooms, &tie);
        if let Some(top) = top {
            self.guess(index, pod, &key, nodes[top], started);
        }
        ranked
    }

    /// The room the demand leaves on `node` once what the pods just ranked are guessed to
    /// take there is taken too, and what the cluster holds for this pod's own claims given
    /// back; `room()` (the node as the index has it) where neither changes it.
    fn guessed_room(
        index: &ClusterIndex,
        node: &str,
        now: Timestamp,
        demand: &Demand,
        holds: &[OwnHold],
        guessed: &Guessed,
        room: impl FnOnce() -> Room,
    ) -> Room {
        let extra = if guessed.is_empty() {
            None
        } else {
            guessed.get(node)
        };
        if extra.is_none() && !holds.iter().any(|h| h.node.as_str() == node) {
            return room();
        }
        let mut n = Self::node_copy(index, node, now, holds)?;
        for (pool, bytes) in extra.into_iter().flatten() {
            if let Some(p) = n.pool_mut(pool.as_str()) {
                p.reserved = p.reserved.saturating_add(*bytes);
            }
        }
        room_after(&n, demand)
    }

    /// Guesses `pod` (its key `key`) onto `node` with its unplaced claims
    /// ([`inflight`](super::inflight)).
    fn guess(&self, index: &ClusterIndex, pod: &Pod, key: &str, node: &str, started: Instant) {
        let claims = index.pod_unplaced(pod);
        self.inflight.lock().record(key, node, claims, started);
    }
}

/// Equally good nodes for the pod `key`, ordered by a hash of the pod and the node: a
/// different order for each pod, as kube-scheduler's random pick among equal scores, but
/// one the extender knows.
fn tiebreak<'a>(key: &'a str, nodes: &'a [&str]) -> impl Fn(usize) -> u64 + 'a {
    let ties = FixedState::with_seed(0);
    move |i: usize| ties.hash_one((key, nodes[i]))
}

/// A node's room after the pod's demand, `(left, whole)` ([`room_after`]); `None` where
/// the demand does not fit.
type Room = Option<(u128, u128)>;

/// Each candidate's [`Room`], in order, as [`normalize`] and [`best`] take it.
type Rooms<'a> = &'a mut dyn Iterator<Item = Room>;

/// The metrics label of nodes turned down because the pod's claims are not in the index yet.
pub const NOT_SEEN_YET: &str = "not_seen_yet";

/// The metrics label of nodes turned down because a volume of one of the pod's claims is
/// made on another node already.
pub const VOLUME_ELSEWHERE: &str = "volume_elsewhere";

/// The filter's own reasons, beside the ledger's ([`Unfit::KINDS`]).
pub const POLICY_KINDS: [&str; 2] = [NOT_SEEN_YET, VOLUME_ELSEWHERE];

/// Per pool, the most free space among the nodes turned down for that pool's size: the one
/// figure of theirs the reason kube-scheduler gets keeps ([`Unfit::scheduler_reason`]).
/// `short_free` holds it for the nodes judged [`Failing::Short`], per pool of `plan`.
fn most_free(
    unfit: &[(usize, Failing)],
    plan: &FitPlan<'_>,
    short_free: &[Bytes],
) -> Vec<(PoolName, Bytes)> {
    let mut most: Vec<(PoolName, Bytes)> = Vec::new();
    let mut raise = |pool: &PoolName, free: Bytes| match most.iter_mut().find(|(p, _)| p == pool) {
        Some((_, most)) => *most = (*most).max(free),
        None => most.push((pool.clone(), free)),
    };
    let short = unfit.iter().fold(0, |all, (_, f)| match f {
        Failing::Short(pools) => all | pools,
        Failing::Unfit(_) => all,
    });
    if let Unfit::Pools(shortfalls) = plan.unfit(short, short_free) {
        for shortfall in &shortfalls {
            if let Shortfall::Insufficient { pool, free, .. } = shortfall {
                raise(pool, *free);
            }
        }
    }
    for (_, failing) in unfit {
        if let Failing::Unfit(Unfit::Pools(shortfalls)) = failing {
            for shortfall in shortfalls {
                if let Shortfall::Insufficient { pool, free, .. } = shortfall {
                    raise(pool, *free);
                }
            }
        }
    }
    most
}

/// Gives each rejection in `rejections` at the positions in `unfit` the reason kube-scheduler
/// is to get for it, built once for all the nodes that fail the same way.
fn give_reasons(
    rejections: &mut [Rejection<'_>],
    unfit: &[(usize, Failing)],
    plan: &FitPlan<'_>,
    short_free: &[Bytes],
) {
    let most_free = most_free(unfit, plan, short_free);
    let most_free = |pool: &PoolName| {
        most_free
            .iter()
            .find(|(p, _)| p == pool)
            .map(|&(_, free)| free)
    };
    let mut reasons: Vec<(&Unfit, Arc<str>)> = Vec::new();
    let mut short_reasons: Vec<(u64, Arc<str>)> = Vec::new();
    for (at, failing) in unfit {
        let reason = match failing {
            Failing::Short(pools) => match short_reasons.iter().find(|(p, _)| p == pools) {
                Some((_, reason)) => reason.clone(),
                None => {
                    let reason: Arc<str> = plan
                        .unfit(*pools, short_free)
                        .scheduler_reason(most_free)
                        .into();
                    short_reasons.push((*pools, reason.clone()));
                    reason
                }
            },
            Failing::Unfit(unfit) => match reasons.iter().find(|(u, _)| u.same_reason(unfit)) {
                Some((_, reason)) => reason.clone(),
                None => {
                    let reason: Arc<str> = unfit.scheduler_reason(most_free).into();
                    reasons.push((unfit, reason.clone()));
                    reason
                }
            },
        };
        rejections[*at].reason = reason;
    }
}

/// The key a pod's guess is kept under: its uid, or `namespace/name` for a pod without one.
fn pod_key(pod: &Pod) -> String {
    match &pod.metadata.uid {
        Some(uid) if !uid.is_empty() => uid.clone(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

impl Policy for StowagePolicy {
    fn filter<'n>(&self, pod: &Pod, nodes: &[&'n str]) -> FilterVerdict<'n> {
        let index = self.index.read();
        let (demand, placement, holds) = match index.pod_demand(pod) {
            Err(e) => return FilterVerdict::Error(e.to_string().into()),
            Ok(PodDemand::NotOurs) => return FilterVerdict::PassThrough,
            Ok(PodDemand::Unseen(what)) => {
                let reason: Arc<str> = format!("{what}; the scheduler will try again").into();
                return FilterVerdict::Reject(
                    nodes
                        .iter()
                        .enumerate()
                        .map(|(i, &node)| {
                            Rejection::unschedulable(node, NOT_SEEN_YET, reason.clone()).at(i)
                        })
                        .collect(),
                );
            }
            Ok(PodDemand::Demand {
                demand,
                placement,
                exclude_own_reservations,
            }) => (demand, placement, exclude_own_reservations),
        };
        let now = (self.clock)();
        let clock = FitClock::new(now, self.opts);
        let plan = index.fit_plan(&demand);
        // Rejections in candidate order, each with its position; those of nodes without
        // room get their reasons once every node is checked (`give_reasons`).
        let mut rejections = Vec::new();
        let mut unfit = Vec::new();
        let mut short_free = vec![Bytes::ZERO; plan.pools()];
        let mut elsewhere: Option<(&OwnHold, Arc<str>)> = None;
        let pending: Arc<str> = Arc::from("");
        // The nodes that can host the pod are counted, and, where the policy keeps only the
        // best, ranked as they are found: the best so far are all that is kept of them.
        let mut passing = 0;
        let mut only = None;
        let key = pod_key(pod);
        let started = Instant::now();
        let ranking = self.keep_best > 0;
        let guessed = if ranking {
            self.inflight.lock().load(&index, &key, started)
        } else {
            Guessed::default()
        };
        let mut ranked = Best::new(placement, tiebreak(&key, nodes), self.keep_best);
        // The names are looked up first, in a loop of their own: the lookups do not depend
        // on each other, so the processor overlaps their waits for memory.
        let planned: Vec<_> = nodes.iter().map(|&node| plan.node(node)).collect();
        for ((i, &node), planned) in nodes.iter().enumerate().zip(planned) {
            // A LocalVolume is never moved: once one of the pod's claims has one (made with
            // a sibling's, or before a binding cycle failed), the pod can only run on its
            // node.
            let is_elsewhere = |h: &&OwnHold| h.held == Held::Allocated && h.node.as_str() != node;
            if let Some(hold) = holds.iter().find(is_elsewhere) {
                let reason = match &elsewhere {
                    Some((before, reason)) if std::ptr::eq(*before, hold) => reason.clone(),
                    _ => {
                        let reason: Arc<str> = format!(
                            "node(s) were not {}, where a volume of the pod's claims is made \
                             already",
                            hold.node
                        )
                        .into();
                        elsewhere = Some((hold, reason.clone()));
                        reason
                    }
                };
                rejections.push(Rejection::unresolvable(node, VOLUME_ELSEWHERE, reason).at(i));
            } else {
                let fit = Self::check_node(
                    &index,
                    planned,
                    node,
                    &clock,
                    &demand,
                    &holds,
                    &mut short_free,
                );
                match fit {
                    Ok(room) => {
                        passing += 1;
                        only = Some((i, room));
                        if ranking {
                            let room = Self::guessed_room(
                                &index,
                                node,
                                now,
                                &demand,
                                &holds,
                                &guessed,
                                || room,
                            );
                            ranked.offer(i, room);
                        }
                    }
                    Err(failing) => {
                        let kind = match &failing {
                            Failing::Short(_) => Shortfall::INSUFFICIENT,
                            Failing::Unfit(unfit) => unfit.kind(),
                        };
                        let rejection = Rejection::unresolvable(node, kind, pending.clone());
                        unfit.push((rejections.len(), failing));
                        rejections.push(rejection.at(i));
                    }
                }
            }
        }
        give_reasons(&mut rejections, &unfit, &plan, &short_free);
        // Where more pass than the policy keeps, the best are kept. Where one node passes,
        // kube-scheduler places the pod there without scoring. Either way the pod is guessed
        // here onto the node the policy put first.
        let narrow = ranking && passing > self.keep_best;
        if ranking && (narrow || passing == 1) {
            let kept = ranked.positions();
            if let Some(&top) = kept.first() {
                self.guess(&index, pod, &key, nodes[top], started);
            }
            // Nodes the demand leaves no room to rank by (a pod asking for no bytes) are
            // never left out for it: narrowing needs `keep_best` ranked nodes.
            if narrow && kept.len() == self.keep_best {
                return FilterVerdict::Narrow {
                    keep: kept,
                    rejections,
                };
            }
        } else if let (1, Some((i, room))) = (passing, only) {
            self.rank(
                &index,
                pod,
                &demand,
                &holds,
                &[nodes[i]],
                |_| room,
                |rooms, tie| {
                    let top = best(rooms, placement, tie, 1).first().copied();
                    ((), top)
                },
            );
        }
        if rejections.is_empty() {
            FilterVerdict::PassAll
        } else {
            FilterVerdict::Reject(rejections)
        }
    }

    /// Scores normalized over the candidates ([`normalize`]): exactly one gets 10, and the
    /// pod is guessed onto it ([`inflight`](super::inflight)).
    fn prioritize<'n>(&self, pod: &Pod, nodes: &[&'n str]) -> Vec<NodeScore<'n>> {
        let index = self.index.read();
        let Ok(PodDemand::Demand {
            demand,
            placement,
            exclude_own_reservations,
        }) = index.pod_demand(pod)
        else {
            return Vec::new();
        };
        let plan = index.fit_plan(&demand);
        let room = |i: usize| plan.node(nodes[i]).and_then(|n| n.room());
        let scores = self.rank(
            &index,
            pod,
            &demand,
            &exclude_own_reservations,
            nodes,
            room,
            |rooms, tie| normalize(rooms, placement, tie),
        );
        nodes
            .iter()
            .zip(scores)
            .map(|(&node, score)| NodeScore {
                node,
                score: i64::from(score),
            })
            .collect()
    }
}
