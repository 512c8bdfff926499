//! The controller's metrics: counters and the provisioning histogram it updates as it works,
//! and scrape-time gauges computed from the cluster index (capacity per node and pool,
//! heartbeat ages, and how evenly each pool is filled across nodes).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use parking_lot::RwLock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;

use crate::cache::ClusterIndex;
use crate::leader::LeaderOnly;
use crate::ledger::{Ledger, Unfit};

/// The `result` label of the operation counters (`stowage_provisions_total`,
/// `stowage_deletions_total`, `stowage_expansions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// An attempt failed; it is retried.
    Failed,
    /// It cannot be done where it is (an expansion that does not fit on its node).
    Infeasible,
}

impl Outcome {
    /// Every outcome, in the order the counters are initialised.
    pub const ALL: [Outcome; 3] = [Outcome::Succeeded, Outcome::Failed, Outcome::Infeasible];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Infeasible => "infeasible",
        }
    }
}

/// Op label values of the CSIStorageCapacity write counters.
pub const CAPACITY_OPS: [&str; 3] = ["create", "update", "delete"];

/// Reason label values of `stowage_reschedules_total`: the ledger's unfit kinds plus
/// `node_gone` (no Node object).
pub const RESCHEDULE_REASONS: [&str; 8] = [
    "no_report",
    "stale",
    "node_not_ready",
    "unknown_pool",
    "pool_not_ready",
    "insufficient_capacity",
    "node_gone",
    "sibling_elsewhere",
];

/// Provisioning takes milliseconds to a minute (an agent may be slow to make a subvolume).
const PROVISION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
];

/// The controller's metrics, registered in the application's registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `stowage_provisions_total{result}`.
    pub provisions: IntCounterVec,
    /// `stowage_deletions_total{result}`.
    pub deletions: IntCounterVec,
    /// `stowage_provision_duration_seconds`: claim seen with a node → PV created.
    pub provision_duration: Histogram,
    /// `stowage_reschedules_total{reason}`.
    pub reschedules: IntCounterVec,
    /// `stowage_expansions_total{result}` (`succeeded`, `failed`, `infeasible`).
    pub expansions: IntCounterVec,
    /// `stowage_volumes_node_gone{node}`: PVs whose node has had no Node object for longer
    /// than the grace period.
    pub volumes_node_gone: IntGaugeVec,
    /// `stowage_capacity_objects_written_total{op}` (`create`, `update`, `delete`):
    /// CSIStorageCapacity writes of `--publish-capacity`.
    pub capacity_writes: IntCounterVec,
    /// `stowage_capacity_write_errors_total{op}`: CSIStorageCapacity writes that failed
    /// (retried on the next pass).
    pub capacity_write_errors: IntCounterVec,
}

impl Metrics {
    /// Counts a provisioning attempt (`stowage_provisions_total{result}`).
    pub fn provision(&self, outcome: Outcome) {
        self.provisions.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Counts a deletion attempt (`stowage_deletions_total{result}`).
    pub fn deletion(&self, outcome: Outcome) {
        self.deletions.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Counts an expansion attempt (`stowage_expansions_total{result}`).
    pub fn expansion(&self, outcome: Outcome) {
        self.expansions.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Creates the metrics and registers them (with the scrape-time ledger collector over
    /// `index`) in `registry`. The ledger's gauges (`stowage_node_pool_*`, heartbeat ages,
    /// balance) are exported only while `leader` is true, so a cluster's ledger shows once
    /// however many replicas are scraped.
    pub fn register(
        registry: &Registry,
        index: Arc<RwLock<ClusterIndex>>,
        leader: watch::Receiver<bool>,
    ) -> Result<Self, prometheus::Error> {
        let provisions = IntCounterVec::new(
            Opts::new(
                "stowage_provisions_total",
                "Local volumes provisioned (PV created) or failed, by result.",
            ),
            &["result"],
        )?;
        let deletions = IntCounterVec::new(
            Opts::new(
                "stowage_deletions_total",
                "Released local volumes deleted (data handed to the agent, PV removed), by result.",
            ),
            &["result"],
        )?;
        let provision_duration = Histogram::with_opts(
            HistogramOpts::new(
                "stowage_provision_duration_seconds",
                "Time from a claim first seen with a selected node to its PV created.",
            )
            .buckets(PROVISION_BUCKETS.to_vec()),
        )?;
        let reschedules = IntCounterVec::new(
            Opts::new(
                "stowage_reschedules_total",
                "Claims whose selected node could not hold them and were sent back to the scheduler, by reason.",
            ),
            &["reason"],
        )?;
        let expansions = IntCounterVec::new(
            Opts::new(
                "stowage_expansions_total",
                "Volume expansions by result (succeeded, failed, infeasible: did not fit).",
            ),
            &["result"],
        )?;
        let volumes_node_gone = IntGaugeVec::new(
            Opts::new(
                "stowage_volumes_node_gone",
                "PersistentVolumes whose node has had no Node object for longer than --node-gone-grace.",
            ),
            &["node"],
        )?;
        let capacity_writes = IntCounterVec::new(
            Opts::new(
                "stowage_capacity_objects_written_total",
                "CSIStorageCapacity objects created, updated or deleted (--publish-capacity), by op.",
            ),
            &["op"],
        )?;
        let capacity_write_errors = IntCounterVec::new(
            Opts::new(
                "stowage_capacity_write_errors_total",
                "CSIStorageCapacity writes that failed and are retried on the next pass, by op.",
            ),
            &["op"],
        )?;
        for op in CAPACITY_OPS {
            capacity_writes.with_label_values(&[op]);
            capacity_write_errors.with_label_values(&[op]);
        }
        for r in [Outcome::Succeeded, Outcome::Failed] {
            provisions.with_label_values(&[r.as_str()]);
            deletions.with_label_values(&[r.as_str()]);
        }
        for r in Outcome::ALL {
            expansions.with_label_values(&[r.as_str()]);
        }
        for r in RESCHEDULE_REASONS {
            reschedules.with_label_values(&[r]);
        }
        debug_assert!(Unfit::KINDS.iter().all(|k| RESCHEDULE_REASONS.contains(k)));
        registry.register(Box::new(provisions.clone()))?;
        registry.register(Box::new(deletions.clone()))?;
        registry.register(Box::new(provision_duration.clone()))?;
        registry.register(Box::new(reschedules.clone()))?;
        registry.register(Box::new(expansions.clone()))?;
        registry.register(Box::new(volumes_node_gone.clone()))?;
        registry.register(Box::new(capacity_writes.clone()))?;
        registry.register(Box::new(capacity_write_errors.clone()))?;
        registry.register(Box::new(LeaderOnly::new(
            LedgerCollector::new(index)?,
            leader,
        )))?;
        Ok(Self {
            provisions,
            deletions,
            provision_duration,
            reschedules,
            expansions,
            volumes_node_gone,
            capacity_writes,
            capacity_write_errors,
        })
    }
}

/// Gauges computed from the ledger at scrape time, so nodes that leave disappear from the
/// output with no bookkeeping.
struct LedgerCollector {
    index: Arc<RwLock<ClusterIndex>>,
    capacity: GaugeVec,
    allocatable: GaugeVec,
    allocated: GaugeVec,
    free: GaugeVec,
    heartbeat_age: GaugeVec,
    cv: GaugeVec,
    spread: GaugeVec,
    /// Serialises scrapes: each one resets and refills the vectors.
    lock: parking_lot::Mutex<()>,
    descs: Vec<Desc>,
}

impl LedgerCollector {
    fn new(index: Arc<RwLock<ClusterIndex>>) -> Result<Self, prometheus::Error> {
        let pool = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["node", "pool"]);
        let capacity = pool(
            "stowage_node_pool_capacity_bytes",
            "Size of a node's storage pool, as its agent reports it.",
        )?;
        let allocatable = pool(
            "stowage_node_pool_allocatable_bytes",
            "Capacity of a node's pool less its configured reserve.",
        )?;
        let allocated = pool(
            "stowage_node_pool_allocated_bytes",
            "Bytes of a node's pool promised to LocalVolumes.",
        )?;
        let free = pool(
            "stowage_node_pool_free_bytes",
            "Bytes a new claim may still take from a node's pool (allocatable less allocated and reserved; for hostpath also capped by the filesystem).",
        )?;
        let heartbeat_age = GaugeVec::new(
            Opts::new(
                "stowage_node_heartbeat_age_seconds",
                "Seconds since a node's agent last reported.",
            ),
            &["node"],
        )?;
        let cv = GaugeVec::new(
            Opts::new(
                "stowage_pool_utilization_cv",
                "Coefficient of variation (stddev/mean) of allocated/allocatable of a pool across nodes; 0 is perfectly even.",
            ),
            &["pool"],
        )?;
        let spread = GaugeVec::new(
            Opts::new(
                "stowage_pool_utilization_spread",
                "Max minus min of allocated/allocatable of a pool across nodes.",
            ),
            &["pool"],
        )?;
        let descs = [
            &capacity,
            &allocatable,
            &allocated,
            &free,
            &heartbeat_age,
            &cv,
            &spread,
        ]
        .iter()
        .flat_map(|v| v.desc().into_iter().cloned())
        .collect();
        Ok(Self {
            index,
            capacity,
            allocatable,
            allocated,
            free,
            heartbeat_age,
            cv,
            spread,
            lock: parking_lot::Mutex::new(()),
            descs,
        })
    }

    fn fill(&self, ledger: &Ledger) {
        let mut utilization: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for node in ledger.nodes() {
            let n = node.name.as_str();
            if let Some(age) = node.heartbeat_age {
                self.heartbeat_age
                    .with_label_values(&[n])
                    .set(age.as_secs_f64());
            }
            for pool in &node.pools {
                let p = pool.name.as_str();
                self.capacity
                    .with_label_values(&[n, p])
                    .set(as_f64(pool.capacity.0));
                self.allocatable
                    .with_label_values(&[n, p])
                    .set(as_f64(pool.allocatable().0));
                self.allocated
                    .with_label_values(&[n, p])
                    .set(as_f64(pool.allocated.0));
                self.free
                    .with_label_values(&[n, p])
                    .set(as_f64(pool.free().0));
                if pool.allocatable().0 > 0 {
                    utilization
                        .entry(p)
                        .or_default()
                        .push(pool.allocated.ratio(pool.allocatable()));
                }
            }
        }
        for (pool, values) in utilization {
            let balance = Balance::of(&values);
            self.cv.with_label_values(&[pool]).set(balance.cv);
            self.spread.with_label_values(&[pool]).set(balance.spread);
        }
    }
}

impl Collector for LedgerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _guard = self.lock.lock();
        let vectors = [
            &self.capacity,
            &self.allocatable,
            &self.allocated,
            &self.free,
            &self.heartbeat_age,
            &self.cv,
            &self.spread,
        ];
        for v in vectors {
            v.reset();
        }
        let ledger = {
            let index = self.index.read();
            index.ledger(Timestamp::now())
        };
        self.fill(&ledger);
        vectors.iter().flat_map(|v| v.collect()).collect()
    }
}

/// How evenly a pool is filled across nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Balance {
    /// Coefficient of variation (population standard deviation over mean); 0 when the mean
    /// is 0.
    pub cv: f64,
    /// Max minus min.
    pub spread: f64,
}

impl Balance {
    /// The balance of the utilizations `values` (each 0..=1).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self {
                cv: 0.0,
                spread: 0.0,
            };
        }
        #[allow(clippy::cast_precision_loss)]
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        Self {
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
            spread: max - min,
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn as_f64(v: u64) -> f64 {
    v as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};

    fn storage_node(name: &str, allocatable: u64, allocated: u64) -> StorageNode {
        let mut sn = StorageNode::new(name, StorageNodeSpec {});
        sn.status = Some(StorageNodeStatus {
            pools: vec![PoolStatus {
                name: "default".into(),
                driver: "btrfs".into(),
                path: "/p".into(),
                capacity_bytes: allocatable,
                allocatable_bytes: allocatable,
                allocated_bytes: allocated,
                available_bytes: allocatable,
                volumes: 0,
                orphans: 0,
                ready: true,
                message: None,
            }],
            heartbeat_time: Some(Timestamp::now().to_string()),
            ..Default::default()
        });
        sn
    }

    #[test]
    fn balance_is_cv_and_max_minus_min() {
        let b = Balance::of(&[0.2, 0.4, 0.6]);
        assert!((b.spread - 0.4).abs() < 1e-12);
        let sd = (((0.2f64 - 0.4).powi(2) + 0.0 + (0.6f64 - 0.4).powi(2)) / 3.0).sqrt();
        assert!((b.cv - sd / 0.4).abs() < 1e-12);
        assert_eq!(
            Balance::of(&[0.0, 0.0]),
            Balance {
                cv: 0.0,
                spread: 0.0
            }
        );
        assert_eq!(Balance::of(&[0.5, 0.5]).cv, 0.0);
    }

    #[test]
    fn scrape_reports_every_node_and_pool_and_forgets_nodes_that_left() {
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        index.write().apply_storage_node(storage_node("a", 100, 20));
        index.write().apply_storage_node(storage_node("b", 100, 60));
        let registry = Registry::new();
        let (_leading, leader) = watch::channel(true);
        let metrics = Metrics::register(&registry, index.clone(), leader).unwrap();
        metrics.provision(Outcome::Succeeded);
        let text = crate::serve::render(&registry).unwrap();
        for line in [
            "stowage_node_pool_capacity_bytes{node=\"a\",pool=\"default\"} 100",
            "stowage_node_pool_allocated_bytes{node=\"b\",pool=\"default\"} 60",
            "stowage_node_pool_free_bytes{node=\"b\",pool=\"default\"} 40",
            "stowage_node_pool_allocatable_bytes{node=\"a\",pool=\"default\"} 100",
            "stowage_provisions_total{result=\"succeeded\"} 1",
            "stowage_reschedules_total{reason=\"node_gone\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let value = |series: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
            line[series.len()..].trim().parse().unwrap()
        };
        assert!((value("stowage_pool_utilization_spread{pool=\"default\"}") - 0.4).abs() < 1e-9);
        assert!((value("stowage_pool_utilization_cv{pool=\"default\"}") - 0.5).abs() < 1e-9);
        assert!(
            text.contains("stowage_node_heartbeat_age_seconds{node=\"a\"}"),
            "{text}"
        );
        index.write().delete_storage_node("b");
        let text = crate::serve::render(&registry).unwrap();
        assert!(!text.contains("node=\"b\""), "{text}");
    }

    #[test]
    fn only_the_leader_exports_the_ledger() {
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        index.write().apply_storage_node(storage_node("a", 100, 20));
        let registry = Registry::new();
        let (leading, leader) = watch::channel(false);
        let metrics = Metrics::register(&registry, index, leader).unwrap();
        metrics.provision(Outcome::Succeeded);
        const LEDGER: [&str; 7] = [
            "stowage_node_pool_capacity_bytes",
            "stowage_node_pool_allocatable_bytes",
            "stowage_node_pool_allocated_bytes",
            "stowage_node_pool_free_bytes",
            "stowage_node_heartbeat_age_seconds",
            "stowage_pool_utilization_cv",
            "stowage_pool_utilization_spread",
        ];
        // A follower: its own counters, none of the ledger.
        let text = crate::serve::render(&registry).unwrap();
        assert!(
            text.contains("stowage_provisions_total{result=\"succeeded\"} 1"),
            "{text}"
        );
        for name in LEDGER {
            assert!(!text.contains(name), "a follower exports {name}:\n{text}");
        }
        // Once it leads, every ledger family is there.
        leading.send_replace(true);
        let text = crate::serve::render(&registry).unwrap();
        for name in LEDGER {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "the leader lacks {name}:\n{text}"
            );
        }
        // And gone again once it no longer leads.
        leading.send_replace(false);
        let text = crate::serve::render(&registry).unwrap();
        assert!(!text.contains("stowage_node_pool_"), "{text}");
    }
}
