//! The NFS mode's metrics: computed at scrape time from the servers' last states
//! ([`crate::nfs::NfsServerState`]), kept apart from `crate::nfs`, which has no Prometheus in it.

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntGaugeVec, Opts, Registry};

use crate::nfs::NfsServerState;
use crate::nfs::capacity::balance;
use crate::nfs::ring::Status;

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
        let mut guard = self.snapshot.write();
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
        let states = self.snapshot.read().clone();
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
mod tests {
    use super::*;
    use crate::ledger::Bytes;
    use crate::nfs::ServerName;

    /// A server's state for these tests (as stowage-core's own capacity tests make them).
    fn state(name: &str, capacity: Option<u64>, allocated: u64, status: Status) -> NfsServerState {
        NfsServerState {
            server: ServerName::parse(name).unwrap(),
            status,
            capacity: capacity.map(Bytes::gib),
            available: capacity.map(Bytes::gib),
            allocated: Bytes::gib(allocated),
            volumes: 1,
            weight_override: None,
        }
    }

    #[test]
    fn metrics_are_registered_and_follow_the_last_update() {
        let registry = Registry::new();
        let metrics = NfsMetrics::register(&registry).unwrap();
        let mut states = vec![
            state("a", Some(100), 40, Status::Ready),
            state("b", None, 7, Status::Unreachable { reason: "x".into() }),
            state("c", Some(100), 60, Status::Draining),
        ];
        states[0].volumes = 3;
        metrics.update(&states);
        let text = crate::serve::render(&registry).unwrap();
        for name in METRIC_NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name} missing:\n{text}"
            );
        }
        for line in [
            "stowage_nfs_server_capacity_bytes{server=\"a\"} 107374182400",
            "stowage_nfs_server_allocated_bytes{server=\"b\"} 7516192768",
            "stowage_nfs_server_volumes{server=\"a\"} 3",
            "stowage_nfs_server_reachable{server=\"b\"} 0",
            "stowage_nfs_server_reachable{server=\"c\"} 1",
            "stowage_nfs_server_draining{server=\"c\"} 1",
            "stowage_nfs_server_draining{server=\"a\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains("stowage_nfs_server_capacity_bytes{server=\"b\"}"),
            "no capacity series for an unreachable server:\n{text}"
        );
        metrics.update(&states[..1]);
        let text = crate::serve::render(&registry).unwrap();
        assert!(
            !text.contains("server=\"c\""),
            "removed servers disappear:\n{text}"
        );
        assert!(text.contains("server=\"a\""));
        assert!(
            NfsMetrics::register(&registry).is_err(),
            "registering twice is refused"
        );
    }
}
