//! Per-server capacity, allocation and health: what the ring weighs and bounds, and what the
//! metrics show.
//!
//! ```text
//!   statvfs(<mount>) ──▶ capacity, available ─┐
//!   PVs (nfs.server, nfs.path, size) ─tally─▶ allocated, volumes ─┼─▶ NfsServerState ─┬─▶ ring weights, loads
//!   config drain flag ───────────────────────┘                                    └─▶ metrics (scrape time,
//!                                                                                       the controller's nfs_metrics)
//! ```
//!
//! `allocated` is the sum of the requested sizes of the server's PVs: NFS enforces no
//! per-directory size, so it is a balancing signal, while `available` (real free space) is
//! the hard limit the ring checks.

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

#[cfg(test)]
mod tests;
