//! In-flight guesses: where the extender expects the scheduler to put a pod it has just
//! scored, counted against that node's score until the pod's claims carry `selected-node`.
//!
//! kube-scheduler writes `selected-node` in its asynchronous binding cycle, after it has
//! already filtered and scored the next pods. Without a guess, every pod of a burst sees
//! the same free space and the first pods of a burst all go to the same node (or, with
//! equal scores, wherever the scheduler's random tie-break sends them).
//!
//! ```text
//!   prioritize(pod P) ─▶ scores, exactly one 10 (ledger::normalize) on node N
//!                     └▶ guess: P's unplaced claims on N, for GUESS_TTL
//!   prioritize(pod Q) ─▶ N's free space less P's guess ─▶ Q's 10 goes elsewhere
//!   P's claims get selected-node (on N or not) ─▶ the index counts them; the guess stops
//!                                                  counting claim by claim
//! ```
//!
//! Guesses only move scores. Filter never counts them: a wrong guess must not make a pod
//! unschedulable, and the controller's fit check under the node's lock is what prevents
//! overcommit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ClusterIndex;
use crate::ledger::{Bytes, PoolName};

/// How long a guess counts at most: the scheduler writes `selected-node` within
/// milliseconds of choosing, unless the pod's binding failed, and then the guess must not
/// linger.
pub const GUESS_TTL: Duration = Duration::from_secs(5);

/// Bytes guessed onto each node and pool ([`Inflight::load`]). Hashed with foldhash, not
/// SipHash: filter looks each of thousands of candidates up in it during a burst. The keys
/// are node names the extender itself chose.
pub type Guessed = HashMap<String, Vec<(PoolName, Bytes)>, foldhash::fast::RandomState>;

/// One claim of a guessed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuessedClaim {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The pool its class places it in.
    pub pool: PoolName,
    /// Its request.
    pub bytes: Bytes,
}

#[derive(Clone, Debug)]
struct Guess {
    node: String,
    claims: Vec<GuessedClaim>,
    at: Instant,
}

/// The live guesses, by pod.
#[derive(Debug, Default)]
pub struct Inflight {
    by_pod: HashMap<String, Guess>,
}

impl Inflight {
    /// Records that `pod` (its uid, or `namespace/name`) will most likely go to `node` with
    /// `claims`; replaces an earlier guess for the pod.
    pub fn record(&mut self, pod: &str, node: &str, claims: Vec<GuessedClaim>, now: Instant) {
        if claims.is_empty() {
            self.by_pod.remove(pod);
            return;
        }
        self.by_pod.insert(
            pod.to_string(),
            Guess {
                node: node.to_string(),
                claims,
                at: now,
            },
        );
    }

    /// Bytes guessed onto each node and pool by pods other than `except`, counting only
    /// claims the index still sees unplaced. Drops expired guesses and those with nothing
    /// left to count.
    pub fn load(&mut self, index: &ClusterIndex, except: &str, now: Instant) -> Guessed {
        let mut out = Guessed::default();
        self.by_pod.retain(|pod, guess| {
            if now.saturating_duration_since(guess.at) >= GUESS_TTL {
                return false;
            }
            guess
                .claims
                .retain(|c| index.claim_unplaced(&c.namespace, &c.name));
            if guess.claims.is_empty() {
                return false;
            }
            if pod != except {
                let pools = out.entry(guess.node.clone()).or_default();
                for c in &guess.claims {
                    match pools.iter_mut().find(|(p, _)| *p == c.pool) {
                        Some((_, b)) => *b = b.saturating_add(c.bytes),
                        None => pools.push((c.pool.clone(), c.bytes)),
                    }
                }
            }
            true
        });
        out
    }

    /// How many pods have a live guess (expired ones are dropped by the next [`Self::load`]).
    pub fn len(&self) -> usize {
        self.by_pod.len()
    }

    /// Whether no guess is held.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }
}
