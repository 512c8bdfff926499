//! PURE: the weighted consistent-hash ring with bounded loads that picks an NFS server for a
//! fresh claim.
//!
//! ```text
//!          key "ns/data" ──stable_hash──▶ point k
//!   ring:  ──●a──●c──●b──k──●c──●a──●b──●a──▶ (wraps)
//!                           │
//!                           └─ walk clockwise: c (at its bound: skip) → a (fits) ⇒ a
//! ```
//!
//! * **Virtual nodes.** Server `i` owns `round(POINTS_PER_SERVER × n × wᵢ / Σw)` points (at
//!   least one), at `stable_hash("<name>#<j>")` for `j = 0, 1, …`. Equal weights give every
//!   server exactly [`POINTS_PER_SERVER`] points, so adding a server of the same weight
//!   only *inserts* points: the only keys that move are those now owned by the new server,
//!   about `1/(n+1)` of them. A point's position depends only on the server's name, never on
//!   its address or its place in the config, so the ring does not depend on config order.
//! * **Weights** are the servers' capacities (or an operator's override; see
//!   `config::ServerSpec::weight`). A server's share of the circle, and so of fresh keys, is
//!   its share of the total weight (relative error about `1/√points`, 1.6 % at 4,096).
//! * **Bounded loads** (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded
//!   Loads", SODA 2018), generalised to weights and byte sizes. For a claim of `s` bytes, with
//!   `A` bytes already allocated over the servers that can take claims (not draining, not
//!   unreachable) of total weight `W`, server `i` may take the claim only while
//!   `allocatedᵢ < (1+ε) · (A+s) · wᵢ/W`. With claims of one size this is exactly the paper's
//!   rule `loadᵢ + 1 ≤ ⌈(1+ε)·(m+1)·wᵢ/W⌉`, so no server ever holds more than
//!   `⌈(1+ε) × its weighted mean⌉` claims; with mixed sizes a server can exceed its bound by
//!   at most one claim. Because the bounds sum to more than `A`, some server is always below
//!   its bound, so bounded loads alone never refuse a claim.
//! * The walk skips, with a reason each, servers that are draining, unreachable, full (less
//!   real free space than the claim) or at their bound. The ring only places *fresh* keys:
//!   a claim whose directory already exists on a server goes back there (see `place`), and
//!   every PV records its server, so ring changes never move existing volumes.
//!
//! The hash is [`stable_hash`]: FNV-1a (64 bit) over the bytes, then MurmurHash3's `fmix64`
//! finaliser for avalanche. It is fixed forever; a golden test pins its values, because a
//! change would re-place fresh keys differently between releases (never existing ones).

use std::fmt;

use crate::ledger::Bytes;

/// Virtual nodes of a server of average weight. 4,096 keeps every server's share of fresh
/// keys within about 1.6 % (one standard deviation) of its weight's share, at 16 bytes per
/// point (1 MiB for 16 servers).
pub const POINTS_PER_SERVER: u64 = 4096;

/// The most servers one ring holds (a sanity limit on memory: 4,096 points each).
pub const MAX_SERVERS: usize = 1024;

/// The default ε of bounded loads: no server above 1.25 × its weighted mean.
pub const DEFAULT_EPSILON: f64 = 0.25;

/// The stable 64-bit hash of the ring: FNV-1a 64 over `bytes`, then the `fmix64` finaliser
/// of MurmurHash3. Its values must never change (see the module docs).
///
/// ```
/// use stowage_core::nfs::ring::stable_hash;
/// assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
/// ```
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The ε of bounded loads: a finite number `>= 0`. No server's allocation goes above
/// `(1+ε)` × its weighted share of the mean.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Epsilon(f64);

impl Epsilon {
    /// Accepts a finite `eps` in `0.0..=100.0`; `0` asks for the tightest balance (still
    /// always placeable), large values all but turn the bound off.
    pub fn new(eps: f64) -> Result<Self, String> {
        if eps.is_finite() && (0.0..=100.0).contains(&eps) {
            Ok(Epsilon(eps))
        } else {
            Err(format!(
                "epsilon {eps} is out of range; use a number from 0 to 100 such as 0.25 (no server above 1.25 x the mean)"
            ))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Epsilon {
    fn default() -> Self {
        Epsilon(DEFAULT_EPSILON)
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A server as the ring sees it: a name and a weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RingServer {
    /// The server's name (see `config::ServerName`); its points derive from it.
    pub name: String,
    /// Its weight, any unit as long as all servers use the same one (capacity in GiB).
    pub weight: u64,
}

impl RingServer {
    /// A server of `weight`.
    pub fn new(name: impl Into<String>, weight: u64) -> Self {
        RingServer {
            name: name.into(),
            weight,
        }
    }
}

/// Why a ring cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No servers.
    #[error("the NFS ring has no servers; configure at least one")]
    Empty,
    /// More than [`MAX_SERVERS`].
    #[error("the NFS ring has {count} servers, more than the limit of {MAX_SERVERS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A weight of zero would give the server no points.
    #[error("NFS server {server:?} has weight 0; give it a positive weight or remove it")]
    ZeroWeight {
        /// The server.
        server: String,
    },
    /// Two servers with one name would share points.
    #[error("NFS server name {server:?} appears twice in the ring; names must be unique")]
    Duplicate {
        /// The name.
        server: String,
    },
}

/// One virtual node: its position and the index of its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    at: u64,
    server: u32,
}

/// The ring: servers (in the caller's order; every index in this module refers to it) and
/// their points sorted by position.
#[derive(Clone, Debug)]
pub struct Ring {
    servers: Vec<RingServer>,
    points: Vec<Point>,
}

impl Ring {
    /// Builds the ring. Deterministic: the same servers and weights give the same ring in
    /// every process and release, whatever their order.
    pub fn new(servers: Vec<RingServer>) -> Result<Self, RingError> {
        if servers.is_empty() {
            return Err(RingError::Empty);
        }
        if servers.len() > MAX_SERVERS {
            return Err(RingError::TooMany {
                count: servers.len(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for s in &servers {
            if s.weight == 0 {
                return Err(RingError::ZeroWeight {
                    server: s.name.clone(),
                });
            }
            if !names.insert(s.name.as_str()) {
                return Err(RingError::Duplicate {
                    server: s.name.clone(),
                });
            }
        }
        let total: u128 = servers.iter().map(|s| u128::from(s.weight)).sum();
        let n = servers.len() as u128;
        let mut points = Vec::new();
        for (idx, s) in servers.iter().enumerate() {
            let count = points_for(s.weight, n, total);
            // `idx < MAX_SERVERS`, so it fits in u32.
            let server = u32::try_from(idx).unwrap_or(u32::MAX);
            let mut buf = Vec::with_capacity(s.name.len() + 8);
            for j in 0..count {
                buf.clear();
                buf.extend_from_slice(s.name.as_bytes());
                buf.push(b'#');
                buf.extend_from_slice(j.to_string().as_bytes());
                points.push(Point {
                    at: stable_hash(&buf),
                    server,
                });
            }
        }
        // Ties (two equal positions) are broken by name, not index, so the ring does not
        // depend on the order servers were listed in.
        points.sort_unstable_by(|a, b| {
            a.at.cmp(&b.at).then_with(|| {
                servers[a.server as usize]
                    .name
                    .cmp(&servers[b.server as usize].name)
            })
        });
        Ok(Ring { servers, points })
    }

    /// The servers, in the order given to [`Ring::new`].
    pub fn servers(&self) -> &[RingServer] {
        &self.servers
    }

    /// The index of the server called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// How many virtual nodes the ring has in all.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring was built from exactly these servers and weights (in this order), so
    /// a caller can keep a ring while nothing changed instead of rebuilding it.
    pub fn is_built_from(&self, servers: &[RingServer]) -> bool {
        self.servers == servers
    }

    /// The distinct servers in clockwise order from the key's point: the first is the key's
    /// home, the rest are the fallbacks, each server once.
    pub fn walk(&self, key: &str) -> Walk<'_> {
        let at = stable_hash(key.as_bytes());
        let start = self.points.partition_point(|p| p.at < at);
        Walk {
            ring: self,
            next: start,
            steps: 0,
            seen: vec![false; self.servers.len()],
            found: 0,
        }
    }

    /// The key's home server without any bound: the first server clockwise from its point.
    pub fn primary(&self, key: &str) -> usize {
        self.walk(key).next().unwrap_or(0)
    }

    /// Each server's share of the circle (what fraction of fresh keys it is home to), in
    /// server order. The shares sum to 1.
    #[allow(clippy::cast_precision_loss)]
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.servers.len()];
        let full = 1u128 << 64;
        for (i, p) in self.points.iter().enumerate() {
            // A point owns the arc from its predecessor (exclusive) to itself.
            let prev = if i == 0 {
                self.points.last().map_or(0, |l| l.at)
            } else {
                self.points[i - 1].at
            };
            let arc = if i == 0 {
                full - u128::from(prev) + u128::from(p.at)
            } else {
                u128::from(p.at - prev)
            };
            owned[p.server as usize] += arc;
        }
        owned.iter().map(|o| *o as f64 / full as f64).collect()
    }

    /// Picks the server for a fresh claim `key` of `size` bytes: the first server on the
    /// walk that is not draining, not unreachable, not full and (with `epsilon`) below its
    /// load bound. `loads` has one entry per server, in server order; a missing entry counts
    /// as unreachable.
    ///
    /// `epsilon: None` turns bounded loads off (only for measuring the bare ring).
    pub fn place(
        &self,
        key: &str,
        size: Bytes,
        loads: &[ServerLoad],
        epsilon: Option<Epsilon>,
    ) -> Result<Choice, NoServer> {
        let bounds = epsilon.map(|eps| self.bounds(loads, size, eps));
        let mut skipped = Vec::new();
        for idx in self.walk(key) {
            match self.check(idx, size, loads, bounds.as_deref()) {
                None => {
                    return Ok(Choice {
                        server: idx,
                        skipped,
                    });
                }
                Some(skip) => skipped.push((idx, skip)),
            }
        }
        Err(NoServer {
            key: key.to_string(),
            size,
            reasons: skipped
                .into_iter()
                .map(|(idx, skip)| (self.servers[idx].name.clone(), skip))
                .collect(),
        })
    }

    /// The load bound of every server for a claim of `size`: `(1+ε)·(A+s)·wᵢ/W` over the
    /// servers that take claims; `None` for servers that do not.
    #[allow(clippy::cast_precision_loss)]
    pub fn bounds(&self, loads: &[ServerLoad], size: Bytes, eps: Epsilon) -> Vec<Option<f64>> {
        let active = |i: usize| loads.get(i).is_some_and(|l| l.status == Status::Ready);
        let mut allocated = 0f64;
        let mut weight = 0f64;
        for (i, s) in self.servers.iter().enumerate() {
            if active(i) {
                allocated += loads[i].allocated.0 as f64;
                weight += s.weight as f64;
            }
        }
        // A zero-byte claim still counts as one byte, so an empty cluster has bounds > 0.
        let total = (allocated + size.0.max(1) as f64) * (1.0 + eps.get());
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| active(i).then(|| total * s.weight as f64 / weight))
            .collect()
    }

    fn check(
        &self,
        idx: usize,
        size: Bytes,
        loads: &[ServerLoad],
        bounds: Option<&[Option<f64>]>,
    ) -> Option<Skip> {
        let Some(load) = loads.get(idx) else {
            return Some(Skip::Unreachable {
                reason: "no state was reported for it".to_string(),
            });
        };
        match &load.status {
            Status::Ready => {}
            Status::Draining => return Some(Skip::Draining),
            Status::Unreachable { reason } => {
                return Some(Skip::Unreachable {
                    reason: reason.clone(),
                });
            }
        }
        if let Some(available) = load.available.filter(|a| *a < size) {
            return Some(Skip::Full {
                needed: size,
                available,
            });
        }
        if let Some(Some(bound)) = bounds.and_then(|b| b.get(idx)) {
            #[allow(clippy::cast_precision_loss)]
            let allocated = load.allocated.0 as f64;
            if allocated >= *bound {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let bound = Bytes(bound.floor() as u64);
                return Some(Skip::AtLoadBound {
                    allocated: load.allocated,
                    bound,
                });
            }
        }
        None
    }
}

/// `round(POINTS_PER_SERVER × n × weight / total)`, at least 1, at most 64 × the average.
fn points_for(weight: u64, n: u128, total: u128) -> u64 {
    let avg = u128::from(POINTS_PER_SERVER);
    let raw = (avg * n * u128::from(weight) + total / 2) / total;
    u64::try_from(raw.clamp(1, avg * 64)).unwrap_or(POINTS_PER_SERVER)
}

/// The iterator of [`Ring::walk`].
#[derive(Debug)]
pub struct Walk<'a> {
    ring: &'a Ring,
    next: usize,
    steps: usize,
    seen: Vec<bool>,
    found: usize,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let len = self.ring.points.len();
        while self.found < self.ring.servers.len() && self.steps < len {
            let p = self.ring.points[self.next % len];
            self.next = (self.next + 1) % len;
            self.steps += 1;
            let idx = p.server as usize;
            if !self.seen[idx] {
                self.seen[idx] = true;
                self.found += 1;
                return Some(idx);
            }
        }
        None
    }
}

/// Whether a server takes new claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It does.
    Ready,
    /// `drain: true` in the config: existing volumes stay, no new ones.
    Draining,
    /// Its mount could not be read.
    Unreachable {
        /// Why, for the skip reason.
        reason: String,
    },
}

/// A server's load, as the ring needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLoad {
    /// Whether it takes claims.
    pub status: Status,
    /// The sum of the sizes of its PVs.
    pub allocated: Bytes,
    /// Real free space on its export (statvfs), if known; `None` skips the "full" check.
    pub available: Option<Bytes>,
}

impl ServerLoad {
    /// A ready server with `allocated` bytes and no known free-space limit.
    pub fn ready(allocated: Bytes) -> Self {
        ServerLoad {
            status: Status::Ready,
            allocated,
            available: None,
        }
    }
}

/// Why the walk passed a server by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The server is draining.
    Draining,
    /// The server's mount could not be read.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Less real free space than the claim.
    Full {
        /// The claim's size.
        needed: Bytes,
        /// The export's free space.
        available: Bytes,
    },
    /// At or above its bounded-load limit.
    AtLoadBound {
        /// Its allocation.
        allocated: Bytes,
        /// Its bound for this claim.
        bound: Bytes,
    },
}

impl Skip {
    /// A stable PascalCase name of the reason, for metric labels and Event reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Draining => "Draining",
            Skip::Unreachable { .. } => "Unreachable",
            Skip::Full { .. } => "Full",
            Skip::AtLoadBound { .. } => "AtLoadBound",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Draining => f.write_str("draining (drain: true in the NFS config)"),
            Skip::Unreachable { reason } => write!(f, "unreachable: {reason}"),
            Skip::Full { needed, available } => write!(
                f,
                "full: the claim needs {needed} but the export has {available} free"
            ),
            Skip::AtLoadBound { allocated, bound } => write!(
                f,
                "at its load bound: {allocated} allocated, bound {bound} ((1+epsilon) x its share of the mean)"
            ),
        }
    }
}

/// The ring's choice for a fresh key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The chosen server's index.
    pub server: usize,
    /// The servers passed by before it, in walk order, with why.
    pub skipped: Vec<(usize, Skip)>,
}

/// No server could take the claim: every server with its reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no NFS server can take claim {key} of {size}: {}", list_reasons(.reasons))]
pub struct NoServer {
    /// The claim's key.
    pub key: String,
    /// The claim's size.
    pub size: Bytes,
    /// Every server (by name) with why it was skipped.
    pub reasons: Vec<(String, Skip)>,
}

fn list_reasons(reasons: &[(String, Skip)]) -> String {
    reasons
        .iter()
        .map(|(name, skip)| format!("{name}: {skip}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
