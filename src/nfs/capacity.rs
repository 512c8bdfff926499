//! Per-server capacity, allocation and health: what the ring weighs and bounds, and what the
//! metrics show.
//!
//! ```text
//!   statvfs(<mount>) ──▶ capacity, available ─┐
//!   PVs (nfs.server, nfs.path, size) ─tally─▶ allocated, volumes ─┼─▶ NfsServerState ─┬─▶ ring weights, loads
//!   config drain flag ───────────────────────┘                                    └─▶ NfsMetrics (scrape time)
//! ```
//!
//! `allocated` is the sum of the requested sizes of the server's PVs: NFS enforces no
//! per-directory size, so it is a balancing signal, while `available` (real free space) is
//! the hard limit the ring checks.

use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntGaugeVec, Opts, Registry};

use super::config::{ServerName, ServerSpec};
use super::place::{LocateError, locate};
use super::ring::{RingServer, ServerLoad, Status};
use crate::ledger::Bytes;

/// The sizes and number of one server's PVs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The sum of the PVs' capacities.
    pub bytes: Bytes,
    /// How many PVs.
    pub volumes: u64,
}

/// Sums PVs per server from their `nfs.server`, `nfs.path` and capacity. PVs that match no
/// configured server are returned apart (with why), so the caller can report them.
pub fn tally<'a>(
    servers: &[ServerSpec],
    pvs: impl IntoIterator<Item = (&'a str, &'a str, Bytes)>,
) -> (Vec<Allocation>, Vec<LocateError>) {
    let mut out = vec![Allocation::default(); servers.len()];
    let mut strays = Vec::new();
    for (address, path, size) in pvs {
        match locate(servers, address, path) {
            Ok(found) => {
                let a = &mut out[found.server];
                a.bytes = a.bytes.saturating_add(size);
                a.volumes += 1;
            }
            Err(e) => strays.push(e),
        }
    }
    (out, strays)
}

/// One server's state: the input of the ring's weights and loads, and of the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsServerState {
    /// The server.
    pub server: ServerName,
    /// Ready, draining or unreachable (with why).
    pub status: Status,
    /// The export's size (statvfs), if it could be read.
    pub capacity: Option<Bytes>,
    /// The export's free space for unprivileged users (statvfs), if it could be read.
    pub available: Option<Bytes>,
    /// The sum of its PVs' sizes.
    pub allocated: Bytes,
    /// How many PVs it holds.
    pub volumes: u64,
    /// The configured weight override.
    pub weight_override: Option<Bytes>,
}

impl NfsServerState {
    /// What the ring needs of it.
    pub fn load(&self) -> ServerLoad {
        ServerLoad {
            status: self.status.clone(),
            allocated: self.allocated,
            available: self.available,
        }
    }

    /// The capacity the ring weighs it by: the override, else the measured capacity.
    pub fn weighed_capacity(&self) -> Option<Bytes> {
        self.weight_override.or(self.capacity)
    }
}

/// Reads a server's capacity and free space from its mount with `statvfs`.
///
/// Blocking I/O that can hang on a hard-mounted NFS export whose server is down: call it
/// off the async runtime (`spawn_blocking`) with a time limit, and on timeout use
/// [`NfsServerState::unreachable`].
pub fn probe(spec: &ServerSpec, allocation: Allocation) -> NfsServerState {
    let mut state = NfsServerState::unreachable(spec, allocation, String::new());
    match rustix::fs::statvfs(&spec.mount) {
        Ok(vfs) => {
            state.capacity = Some(Bytes(vfs.f_blocks.saturating_mul(vfs.f_frsize)));
            state.available = Some(Bytes(vfs.f_bavail.saturating_mul(vfs.f_frsize)));
            state.status = if spec.drain {
                Status::Draining
            } else {
                Status::Ready
            };
        }
        Err(e) => {
            state.status = Status::Unreachable {
                reason: format!(
                    "cannot read the size of its mount {}: {}",
                    spec.mount.display(),
                    std::io::Error::from(e)
                ),
            };
        }
    }
    state
}

impl NfsServerState {
    /// The state of a server whose mount could not be read (or did not answer in time).
    pub fn unreachable(spec: &ServerSpec, allocation: Allocation, reason: String) -> Self {
        NfsServerState {
            server: spec.name.clone(),
            status: Status::Unreachable { reason },
            capacity: None,
            available: None,
            allocated: allocation.bytes,
            volumes: allocation.volumes,
            weight_override: spec.weight,
        }
    }
}

/// The ring's servers with their weights, in config order: the weighed capacity in GiB (at
/// least 1). A server whose capacity is unknown (unreachable since start) gets the mean
/// weight of the others (1 if none is known), so that it keeps a fair share of the circle
/// for when it returns; the walk skips it while it is unreachable.
pub fn ring_servers(states: &[NfsServerState]) -> Vec<RingServer> {
    let gib = |b: Bytes| (b.0 / Bytes::GI).max(1);
    let known: Vec<u64> = states
        .iter()
        .filter_map(|s| s.weighed_capacity().map(gib))
        .collect();
    let fallback = if known.is_empty() {
        1
    } else {
        let sum: u128 = known.iter().map(|w| u128::from(*w)).sum();
        u64::try_from(sum / known.len() as u128)
            .unwrap_or(u64::MAX)
            .max(1)
    };
    states
        .iter()
        .map(|s| {
            RingServer::new(
                s.server.as_str(),
                s.weighed_capacity().map_or(fallback, gib),
            )
        })
        .collect()
}

/// The ring's loads, in config order.
pub fn loads(states: &[NfsServerState]) -> Vec<ServerLoad> {
    states.iter().map(NfsServerState::load).collect()
}

/// How evenly the servers are filled, over the reachable ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Balance {
    /// Coefficient of variation (standard deviation / mean) of `allocated / capacity`.
    pub utilization_cov: f64,
    /// The largest `allocated / (its weighted share of the total allocated)`: 1.0 is
    /// perfect, bounded loads keep it near `1 + ε` or below.
    pub load_max_over_mean: f64,
}

/// The balance of `states` (zeros when nothing is reachable or allocated).
#[allow(clippy::cast_precision_loss)]
pub fn balance(states: &[NfsServerState]) -> Balance {
    let reachable: Vec<&NfsServerState> = states
        .iter()
        .filter(|s| !matches!(s.status, Status::Unreachable { .. }))
        .collect();
    let utils: Vec<f64> = reachable
        .iter()
        .filter_map(|s| {
            s.capacity
                .filter(|c| c.0 > 0)
                .map(|c| s.allocated.0 as f64 / c.0 as f64)
        })
        .collect();
    let utilization_cov = if utils.is_empty() {
        0.0
    } else {
        let n = utils.len() as f64;
        let mean = utils.iter().sum::<f64>() / n;
        let var = utils.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n;
        if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
    };
    let weights = ring_servers(states);
    let total_alloc: f64 = reachable.iter().map(|s| s.allocated.0 as f64).sum();
    let total_weight: f64 = states
        .iter()
        .zip(&weights)
        .filter(|(s, _)| !matches!(s.status, Status::Unreachable { .. }))
        .map(|(_, w)| w.weight as f64)
        .sum();
    let load_max_over_mean = if total_alloc > 0.0 && total_weight > 0.0 {
        states
            .iter()
            .zip(&weights)
            .filter(|(s, _)| !matches!(s.status, Status::Unreachable { .. }))
            .map(|(s, w)| s.allocated.0 as f64 / (total_alloc * w.weight as f64 / total_weight))
            .fold(0.0, f64::max)
    } else {
        0.0
    };
    Balance {
        utilization_cov,
        load_max_over_mean,
    }
}

/// The NFS metrics, computed at scrape time from the last [`NfsMetrics::update`]: servers
/// that leave the config disappear from the output with no bookkeeping.
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `stowage_nfs_server_capacity_bytes` | server | export size (statvfs), reachable servers |
/// | `stowage_nfs_server_available_bytes` | server | export free space (statvfs), reachable servers |
/// | `stowage_nfs_server_allocated_bytes` | server | sum of its PVs' sizes |
/// | `stowage_nfs_server_volumes` | server | number of its PVs |
/// | `stowage_nfs_server_reachable` | server | 1 if its mount answered |
/// | `stowage_nfs_server_draining` | server | 1 if `drain: true` |
/// | `stowage_nfs_utilization_cov` | | coefficient of variation of allocated/capacity |
/// | `stowage_nfs_load_max_over_mean` | | largest allocated / weighted mean share |
#[derive(Clone, Debug)]
pub struct NfsMetrics {
    snapshot: Arc<RwLock<Vec<NfsServerState>>>,
}

/// Every metric name [`NfsMetrics`] exports.
pub const METRIC_NAMES: [&str; 8] = [
    "stowage_nfs_server_capacity_bytes",
    "stowage_nfs_server_available_bytes",
    "stowage_nfs_server_allocated_bytes",
    "stowage_nfs_server_volumes",
    "stowage_nfs_server_reachable",
    "stowage_nfs_server_draining",
    "stowage_nfs_utilization_cov",
    "stowage_nfs_load_max_over_mean",
];

impl NfsMetrics {
    /// Registers the NFS metrics with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let snapshot = Arc::new(RwLock::new(Vec::new()));
        let collector = NfsCollector {
            protos: Families::new()?,
            snapshot: Arc::clone(&snapshot),
        };
        registry.register(Box::new(collector))?;
        Ok(NfsMetrics { snapshot })
    }

    /// Registers the NFS metrics with `registry`, exported only while `leader` is true
    /// (every replica measures the servers; one reports them).
    pub fn register_leader_only(
        registry: &Registry,
        leader: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, prometheus::Error> {
        let snapshot = Arc::new(RwLock::new(Vec::new()));
        let collector = NfsCollector {
            protos: Families::new()?,
            snapshot: Arc::clone(&snapshot),
        };
        registry.register(Box::new(crate::leader::LeaderOnly::new(collector, leader)))?;
        Ok(NfsMetrics { snapshot })
    }

    /// Replaces the servers' states the next scrape reports.
    pub fn update(&self, states: &[NfsServerState]) {
        let mut guard = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = states.to_vec();
    }
}

struct Families {
    capacity: GaugeVec,
    available: GaugeVec,
    allocated: GaugeVec,
    volumes: IntGaugeVec,
    reachable: IntGaugeVec,
    draining: IntGaugeVec,
    cov: Gauge,
    max_over_mean: Gauge,
}

impl Families {
    fn new() -> Result<Self, prometheus::Error> {
        let server = &["server"];
        let g = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), server);
        let i = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), server);
        Ok(Families {
            capacity: g(
                METRIC_NAMES[0],
                "Size of the NFS server's export (statvfs).",
            )?,
            available: g(
                METRIC_NAMES[1],
                "Free space on the NFS server's export for unprivileged users (statvfs).",
            )?,
            allocated: g(METRIC_NAMES[2], "Sum of the sizes of the NFS server's PVs.")?,
            volumes: i(METRIC_NAMES[3], "Number of PVs on the NFS server.")?,
            reachable: i(METRIC_NAMES[4], "1 if the NFS server's mount answered.")?,
            draining: i(METRIC_NAMES[5], "1 if the NFS server is draining.")?,
            cov: Gauge::new(
                METRIC_NAMES[6],
                "Coefficient of variation of allocated/capacity across reachable NFS servers.",
            )?,
            max_over_mean: Gauge::new(
                METRIC_NAMES[7],
                "Largest NFS server allocation over its weighted share of the mean.",
            )?,
        })
    }

    #[allow(clippy::cast_precision_loss)]
    fn fill(&self, states: &[NfsServerState]) {
        for s in states {
            let l = &[s.server.as_str()];
            if let Some(c) = s.capacity {
                self.capacity.with_label_values(l).set(c.0 as f64);
            }
            if let Some(a) = s.available {
                self.available.with_label_values(l).set(a.0 as f64);
            }
            self.allocated
                .with_label_values(l)
                .set(s.allocated.0 as f64);
            self.volumes
                .with_label_values(l)
                .set(i64::try_from(s.volumes).unwrap_or(i64::MAX));
            let reachable = !matches!(s.status, Status::Unreachable { .. });
            self.reachable
                .with_label_values(l)
                .set(i64::from(reachable));
            self.draining
                .with_label_values(l)
                .set(i64::from(s.status == Status::Draining));
        }
        let b = balance(states);
        self.cov.set(b.utilization_cov);
        self.max_over_mean.set(b.load_max_over_mean);
    }

    fn collectors(&self) -> [&dyn Collector; 8] {
        [
            &self.capacity,
            &self.available,
            &self.allocated,
            &self.volumes,
            &self.reachable,
            &self.draining,
            &self.cov,
            &self.max_over_mean,
        ]
    }
}

struct NfsCollector {
    protos: Families,
    snapshot: Arc<RwLock<Vec<NfsServerState>>>,
}

impl Collector for NfsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.protos
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let states = self
            .snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Fresh families per scrape, so servers no longer present leave no stale series.
        let Ok(fresh) = Families::new() else {
            return Vec::new();
        };
        fresh.fill(&states);
        fresh
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests;
