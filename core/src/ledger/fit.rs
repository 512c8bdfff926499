//! Does a pod's demand fit a node, and if not, why not.
//!
//! An [`Unfit`] is shown to users two ways. Its `Display` is one node's whole story (the pool,
//! what is needed, what is free), for the controller's Events on a claim. The extender sends
//! kube-scheduler [`Unfit::scheduler_reason`] instead: the same for every node that fails the
//! same way, because kube-scheduler counts the nodes per distinct reason in the pod's
//! `FailedScheduling` Event (`0/20 nodes are available: 20 <reason>.`), and the API server
//! refuses that Event when its message is over 1,024 characters: twenty per-node reasons
//! with their own free space made kube-scheduler 1.19 lose it. Its [`Unfit::kind`] is a
//! closed set of labels for metrics.

use std::fmt;
use std::time::Duration;

use super::{Bytes, Demand, NodeState, PoolName};

/// Knobs of the fit check that come from configuration, not from the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitOptions {
    /// A node whose agent has not reported for longer than this is treated as unknown.
    pub stale_after: Duration,
}

impl Default for FitOptions {
    /// Three missed heartbeats at the agent's default 10 s interval, plus slack.
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(45),
        }
    }
}

/// Why a node cannot take a pod's demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// No agent has ever reported for this node.
    NoReport,
    /// The agent's last report is too old to trust.
    Stale {
        /// Time since the last report.
        age: Duration,
        /// The configured limit.
        limit: Duration,
    },
    /// The agent reports the node not ready.
    NodeNotReady {
        /// The agent's explanation.
        message: String,
    },
    /// One or more pools cannot take their share; never empty.
    Pools(Vec<Shortfall>),
}

/// Why one pool cannot take its share of the demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// The node has no pool of that name.
    Missing {
        /// The pool asked for.
        pool: PoolName,
    },
    /// The pool exists but the agent cannot use it.
    NotReady {
        /// The pool.
        pool: PoolName,
        /// The agent's explanation.
        message: String,
    },
    /// The pool is too full.
    Insufficient {
        /// The pool.
        pool: PoolName,
        /// Bytes the pod's claims need in the pool.
        needed: Bytes,
        /// Bytes free in the pool.
        free: Bytes,
    },
}

impl Shortfall {
    /// The metrics label of a pool too full for its share ([`Unfit::kind`]).
    pub const INSUFFICIENT: &'static str = "insufficient_capacity";

    fn kind(&self) -> &'static str {
        match self {
            Shortfall::Missing { .. } => "unknown_pool",
            Shortfall::NotReady { .. } => "pool_not_ready",
            Shortfall::Insufficient { .. } => Shortfall::INSUFFICIENT,
        }
    }
}

impl Unfit {
    /// Every value [`Unfit::kind`] can return, for metrics that pre-create their series.
    pub const KINDS: [&'static str; 6] = [
        "no_report",
        "stale",
        "node_not_ready",
        "unknown_pool",
        "pool_not_ready",
        "insufficient_capacity",
    ];

    /// A short, fixed label for metrics: one of [`Unfit::KINDS`]. For several pool
    /// shortfalls it is the first one's.
    #[inline]
    pub fn kind(&self) -> &'static str {
        match self {
            Unfit::NoReport => "no_report",
            Unfit::Stale { .. } => "stale",
            Unfit::NodeNotReady { .. } => "node_not_ready",
            Unfit::Pools(s) => s.first().map_or(Shortfall::INSUFFICIENT, Shortfall::kind),
        }
    }

    /// Whether [`Unfit::scheduler_reason`] gives `self` and `other` the same text, for a
    /// `most_free` that knows every pool either is short of space in: they fail the same way,
    /// whatever their own figures. A caller turning many nodes down builds each text once.
    pub fn same_reason(&self, other: &Unfit) -> bool {
        match (self, other) {
            (Unfit::NoReport, Unfit::NoReport)
            | (Unfit::NodeNotReady { .. }, Unfit::NodeNotReady { .. }) => true,
            (Unfit::Stale { limit: a, .. }, Unfit::Stale { limit: b, .. }) => {
                a.as_secs() == b.as_secs()
            }
            (Unfit::Pools(a), Unfit::Pools(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|pair| match pair {
                        (Shortfall::Missing { pool: p }, Shortfall::Missing { pool: q })
                        | (
                            Shortfall::NotReady { pool: p, .. },
                            Shortfall::NotReady { pool: q, .. },
                        ) => p == q,
                        (
                            Shortfall::Insufficient {
                                pool: p, needed: n, ..
                            },
                            Shortfall::Insufficient {
                                pool: q, needed: m, ..
                            },
                        ) => p == q && n == m,
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    /// The reason kube-scheduler is given for this node: the same text for every node that
    /// fails the same way, so that its Event counts them as one line (see the module
    /// documentation). Nothing of the node's own is in it but the pools; `most_free(pool)` is
    /// the most free space any node turned down for that pool's size has there, the one
    /// figure that tells how far off the pod is.
    pub fn scheduler_reason(&self, most_free: impl Fn(&PoolName) -> Option<Bytes>) -> String {
        match self {
            Unfit::NoReport => "node(s) had no report from a stowage agent (is the agent \
                                DaemonSet running there?)"
                .to_owned(),
            Unfit::Stale { limit, .. } => format!(
                "node(s) had a stowage agent report older than {}s (their capacity is unknown)",
                limit.as_secs()
            ),
            Unfit::NodeNotReady { .. } => "node(s) had a stowage agent that is not ready (see \
                                           `kubectl get storagenode`)"
                .to_owned(),
            Unfit::Pools(shortfalls) => {
                let mut reason = String::new();
                for (i, s) in shortfalls.iter().enumerate() {
                    if i > 0 {
                        reason.push_str("; ");
                    }
                    let part = match s {
                        Shortfall::Missing { pool } => {
                            format!("node(s) had no storage pool \"{pool}\"")
                        }
                        Shortfall::NotReady { pool, .. } => format!(
                            "node(s) had storage pool \"{pool}\" not ready (see \
                             `kubectl get storagenode`)"
                        ),
                        Shortfall::Insufficient { pool, needed, free } => format!(
                            "node(s) had too little free space in storage pool \"{pool}\" (the \
                             pod's claims need {needed}; the most free on any of them is {})",
                            most_free(pool).unwrap_or(*free)
                        ),
                    };
                    reason.push_str(&part);
                }
                reason
            }
        }
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Missing { pool } => write!(f, "node has no storage pool \"{pool}\""),
            Shortfall::NotReady { pool, message } => {
                write!(f, "storage pool \"{pool}\" is not ready: {message}")
            }
            Shortfall::Insufficient { pool, needed, free } => write!(
                f,
                "storage pool \"{pool}\" has {free} free, the pod's claims need {needed}"
            ),
        }
    }
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NoReport => f.write_str(
                "no stowage agent has reported for this node; is the agent DaemonSet running here?",
            ),
            Unfit::Stale { age, limit } => write!(
                f,
                "stowage agent last reported {}s ago (limit {}s); its capacity is unknown",
                age.as_secs(),
                limit.as_secs()
            ),
            Unfit::NodeNotReady { message } => {
                write!(f, "stowage agent is not ready: {message}")
            }
            Unfit::Pools(shortfalls) => {
                for (i, s) in shortfalls.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// Checks that every pool of `demand` can take its share on `node`.
///
/// An empty demand fits any node, reported or not: a pod without stowage claims is none of
/// the ledger's business.
#[inline]
pub fn check(node: &NodeState, demand: &Demand, opts: &FitOptions) -> Result<(), Unfit> {
    check_aged(node, node.heartbeat_age, demand, opts)
}

/// [`check`] with the heartbeat age given beside the node instead of in
/// `node.heartbeat_age` (which is ignored), so a caller holding shared node entries need not
/// copy each one to set its age.
#[inline]
pub fn check_aged(
    node: &NodeState,
    heartbeat_age: Option<Duration>,
    demand: &Demand,
    opts: &FitOptions,
) -> Result<(), Unfit> {
    if demand.is_empty() {
        return Ok(());
    }
    match heartbeat_age {
        None => return Err(Unfit::NoReport),
        Some(age) if age > opts.stale_after => {
            return Err(Unfit::Stale {
                age,
                limit: opts.stale_after,
            });
        }
        Some(_) => {}
    }
    if !node.ready {
        return Err(Unfit::NodeNotReady {
            message: "the agent reports the node not ready".to_string(),
        });
    }
    let mut shortfalls = Vec::new();
    for (pool_name, needed) in demand.pools() {
        let Some(pool) = node.pool(pool_name.as_str()) else {
            shortfalls.push(Shortfall::Missing {
                pool: pool_name.clone(),
            });
            continue;
        };
        if !pool.ready {
            shortfalls.push(Shortfall::NotReady {
                pool: pool_name.clone(),
                message: pool
                    .message
                    .clone()
                    .unwrap_or_else(|| "no reason given".to_string()),
            });
            continue;
        }
        let free = pool.free();
        if needed > free {
            shortfalls.push(Shortfall::Insufficient {
                pool: pool_name.clone(),
                needed,
                free,
            });
        }
    }
    if shortfalls.is_empty() {
        Ok(())
    } else {
        Err(Unfit::Pools(shortfalls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Driver, PoolState};

    fn node(pools: &[(&str, u64, u64)]) -> NodeState {
        NodeState::new(
            "n1",
            pools
                .iter()
                .map(|&(name, cap, alloc)| {
                    let mut p = PoolState::new(name, Driver::Btrfs, Bytes::gib(cap));
                    p.allocated = Bytes::gib(alloc);
                    p
                })
                .collect(),
        )
    }

    fn demand(claims: &[(&str, u64)]) -> Demand {
        Demand::from_claims(claims.iter().map(|&(p, g)| (p, Bytes::gib(g)))).unwrap()
    }

    #[test]
    fn claim_that_exceeds_free_space_is_filtered_with_reason() {
        let err = check(
            &node(&[("default", 100, 88)]),
            &demand(&[("default", 20)]),
            &FitOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "insufficient_capacity");
        assert_eq!(
            err.to_string(),
            "storage pool \"default\" has 12Gi free, the pod's claims need 20Gi"
        );
    }

    #[test]
    fn claims_of_one_pod_are_checked_together() {
        let n = node(&[("default", 100, 0)]);
        let opts = FitOptions::default();
        assert!(check(&n, &demand(&[("default", 60)]), &opts).is_ok());
        assert!(check(&n, &demand(&[("default", 60), ("default", 60)]), &opts).is_err());
    }

    #[test]
    fn a_demand_that_exactly_fills_the_pool_fits() {
        let n = node(&[("default", 100, 40)]);
        assert!(check(&n, &demand(&[("default", 60)]), &FitOptions::default()).is_ok());
    }

    #[test]
    fn every_short_pool_is_named() {
        let err = check(
            &node(&[("ssd", 10, 10), ("hdd", 100, 0)]),
            &demand(&[("ssd", 1), ("hdd", 200), ("nvme", 1)]),
            &FitOptions::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"hdd\" has 100Gi free"), "{text}");
        assert!(text.contains("no storage pool \"nvme\""), "{text}");
        assert!(text.contains("\"ssd\" has 0 free"), "{text}");
        assert_eq!(
            err.kind(),
            "insufficient_capacity",
            "pools are checked in name order"
        );
    }

    #[test]
    fn stale_unreported_and_not_ready_nodes_are_unknown() {
        let opts = FitOptions {
            stale_after: Duration::from_secs(30),
        };
        let d = demand(&[("default", 1)]);
        let mut n = node(&[("default", 100, 0)]);
        n.heartbeat_age = Some(Duration::from_secs(31));
        let err = check(&n, &d, &opts).unwrap_err();
        assert_eq!(err.kind(), "stale");
        assert!(err.to_string().contains("31s ago (limit 30s)"));
        n.heartbeat_age = None;
        assert_eq!(check(&n, &d, &opts), Err(Unfit::NoReport));
        n.heartbeat_age = Some(Duration::from_secs(1));
        n.ready = false;
        assert_eq!(check(&n, &d, &opts).unwrap_err().kind(), "node_not_ready");
        n.ready = true;
        n.pools[0].ready = false;
        n.pools[0].message = Some("path /data is missing".into());
        let err = check(&n, &d, &opts).unwrap_err();
        assert_eq!(err.kind(), "pool_not_ready");
        assert!(err.to_string().contains("path /data is missing"));
    }

    #[test]
    fn an_empty_demand_fits_even_an_unknown_node() {
        let mut n = node(&[]);
        n.heartbeat_age = None;
        assert!(check(&n, &Demand::new(), &FitOptions::default()).is_ok());
    }

    /// `same_reason` holds exactly where the texts kube-scheduler gets are the same, over
    /// every pair of a table with each way to fail and the figures that differ per node.
    #[test]
    fn same_reason_holds_exactly_where_the_scheduler_reasons_are_the_same() {
        let pool = |p: &str| PoolName(p.to_owned());
        let short = |p: &str, needed: u64, free: u64| Shortfall::Insufficient {
            pool: pool(p),
            needed: Bytes::gib(needed),
            free: Bytes::gib(free),
        };
        let stale = |age: u64, limit_ms: u64| Unfit::Stale {
            age: Duration::from_secs(age),
            limit: Duration::from_millis(limit_ms),
        };
        let unfits = [
            Unfit::NoReport,
            stale(50, 45_000),
            stale(90, 45_400),
            stale(90, 60_000),
            Unfit::NodeNotReady {
                message: "a".into(),
            },
            Unfit::NodeNotReady {
                message: "b".into(),
            },
            Unfit::Pools(vec![short("default", 50, 12)]),
            Unfit::Pools(vec![short("default", 50, 3)]),
            Unfit::Pools(vec![short("default", 60, 3)]),
            Unfit::Pools(vec![short("fast", 50, 3)]),
            Unfit::Pools(vec![Shortfall::Missing { pool: pool("fast") }]),
            Unfit::Pools(vec![Shortfall::Missing {
                pool: pool("default"),
            }]),
            Unfit::Pools(vec![Shortfall::NotReady {
                pool: pool("fast"),
                message: "x".into(),
            }]),
            Unfit::Pools(vec![Shortfall::NotReady {
                pool: pool("fast"),
                message: "y".into(),
            }]),
            Unfit::Pools(vec![short("default", 50, 3), short("fast", 10, 1)]),
            Unfit::Pools(vec![short("default", 50, 9), short("fast", 10, 2)]),
            Unfit::Pools(vec![short("fast", 10, 1), short("default", 50, 3)]),
        ];
        let most_free = |p: &PoolName| Some(Bytes::gib(p.0.len() as u64));
        let mut same = 0;
        for a in &unfits {
            for b in &unfits {
                let texts = a.scheduler_reason(most_free) == b.scheduler_reason(most_free);
                assert_eq!(a.same_reason(b), texts, "{a:?} and {b:?}");
                same += usize::from(texts);
            }
        }
        assert!(
            same > unfits.len(),
            "the table has pairs that share a reason"
        );
    }

    #[test]
    fn every_kind_is_listed() {
        let kinds = [
            Unfit::NoReport.kind(),
            Unfit::Stale {
                age: Duration::ZERO,
                limit: Duration::ZERO,
            }
            .kind(),
            Unfit::NodeNotReady {
                message: String::new(),
            }
            .kind(),
            Unfit::Pools(vec![Shortfall::Missing { pool: "p".into() }]).kind(),
            Unfit::Pools(vec![Shortfall::NotReady {
                pool: "p".into(),
                message: String::new(),
            }])
            .kind(),
            Unfit::Pools(vec![Shortfall::Insufficient {
                pool: "p".into(),
                needed: Bytes(1),
                free: Bytes(0),
            }])
            .kind(),
        ];
        assert_eq!(kinds, Unfit::KINDS);
    }

    #[test]
    fn check_aged_judges_the_age_given_not_the_nodes_own() {
        let opts = FitOptions::default();
        let fresh = node(&[("default", 100, 0)]);
        let d = Demand::from_claims([("default", Bytes::gib(1))]).unwrap();
        assert_eq!(check_aged(&fresh, None, &d, &opts), Err(Unfit::NoReport));
        let old = Some(opts.stale_after + Duration::from_secs(1));
        assert!(matches!(
            check_aged(&fresh, old, &d, &opts),
            Err(Unfit::Stale { .. })
        ));
        assert_eq!(
            check_aged(&fresh, Some(Duration::ZERO), &d, &opts),
            check(&fresh, &d, &opts)
        );
    }
}
