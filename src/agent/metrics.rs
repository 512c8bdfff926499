//! The agent's Prometheus metrics: per-pool gauges the reporter sets on every report, and
//! counters and latency of the volume operations the reconciler carries out.
//!
//! Label values come from closed sets (node and pool names from the config, operation and
//! result from [`Operation`] and [`OpResult`]), never from free text.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

use crate::api::storage_node::PoolStatus;

/// Buckets of `stowage_agent_operation_duration_seconds`: a directory is made in about a
/// millisecond, a btrfs subvolume with a quota or a large `delete` takes seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A volume operation, as the `operation` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Make a volume.
    Create,
    /// Remove a volume's data (`onDelete: delete`).
    Delete,
    /// Move a volume's data into the pool's archive (`onDelete: archive`).
    Archive,
    /// Leave a volume's data in place (`onDelete: retain`).
    Retain,
    /// Raise a volume's size.
    Grow,
}

impl Operation {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Archive => "archive",
            Operation::Retain => "retain",
            Operation::Grow => "grow",
        }
    }
}

/// How a volume operation ended, as the `result` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// Done.
    Success,
    /// Failed; retried with backoff.
    Error,
}

impl OpResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            OpResult::Success => "success",
            OpResult::Error => "error",
        }
    }
}

/// Every metric of the agent, registered in the role's registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    capacity: IntGaugeVec,
    allocatable: IntGaugeVec,
    allocated: IntGaugeVec,
    available: IntGaugeVec,
    volumes: IntGaugeVec,
    orphans: IntGaugeVec,
    ready: IntGaugeVec,
    operations: IntCounterVec,
    duration: HistogramVec,
    heartbeat: GaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pool_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["node", "pool"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let capacity = pool_gauge(
            "stowage_pool_capacity_bytes",
            "Size of the pool's filesystem, after any configured cap.",
        )?;
        let allocatable = pool_gauge(
            "stowage_pool_allocatable_bytes",
            "Capacity of the pool less its configured reserve.",
        )?;
        let allocated = pool_gauge(
            "stowage_pool_allocated_bytes",
            "Sum of the sizes of the pool's LocalVolumes.",
        )?;
        let available = pool_gauge(
            "stowage_pool_available_bytes",
            "Free space of the pool's filesystem.",
        )?;
        let volumes = pool_gauge(
            "stowage_pool_volumes",
            "Number of LocalVolumes in the pool.",
        )?;
        let orphans = pool_gauge(
            "stowage_pool_orphans",
            "Volumes on disk in the pool that no LocalVolume claims (never deleted automatically).",
        )?;
        let ready = pool_gauge(
            "stowage_pool_ready",
            "1 when the agent can make volumes in the pool, else 0.",
        )?;
        let operations = IntCounterVec::new(
            Opts::new(
                "stowage_agent_operations_total",
                "Volume operations carried out by the agent, by operation and result.",
            ),
            &["operation", "result"],
        )?;
        registry.register(Box::new(operations.clone()))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "stowage_agent_operation_duration_seconds",
                "Time the filesystem part of a volume operation took.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["operation"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let heartbeat = GaugeVec::new(
            Opts::new(
                "stowage_agent_heartbeat_timestamp_seconds",
                "Unix time of the agent's last successful StorageNode status write.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(heartbeat.clone()))?;
        Ok(Metrics {
            capacity,
            allocatable,
            allocated,
            available,
            volumes,
            orphans,
            ready,
            operations,
            duration,
            heartbeat,
        })
    }

    /// Sets the pool gauges of `node` to `pools`, dropping pools no longer configured.
    pub fn set_pools(&self, node: &str, pools: &[PoolStatus]) {
        let gauges = [
            &self.capacity,
            &self.allocatable,
            &self.allocated,
            &self.available,
            &self.volumes,
            &self.orphans,
            &self.ready,
        ];
        for g in gauges {
            g.reset();
        }
        for p in pools {
            let labels = [node, p.name.as_str()];
            let set = |g: &IntGaugeVec, v: u64| {
                g.with_label_values(&labels)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.capacity, p.capacity_bytes);
            set(&self.allocatable, p.allocatable_bytes);
            set(&self.allocated, p.allocated_bytes);
            set(&self.available, p.available_bytes);
            set(&self.volumes, p.volumes);
            set(&self.orphans, p.orphans);
            set(&self.ready, u64::from(p.ready));
        }
    }

    /// Starts timing `op`; the time is recorded when the guard drops.
    pub fn time(&self, op: Operation) -> HistogramTimer {
        self.duration
            .with_label_values(&[op.as_str()])
            .start_timer()
    }

    /// Counts one `op` that ended with `result`.
    pub fn count(&self, op: Operation, result: OpResult) {
        self.operations
            .with_label_values(&[op.as_str(), result.as_str()])
            .inc();
    }

    /// Records a successful heartbeat of `node` at `unix_seconds`.
    pub fn heartbeat(&self, node: &str, unix_seconds: f64) {
        self.heartbeat.with_label_values(&[node]).set(unix_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, capacity: u64, ready: bool) -> PoolStatus {
        PoolStatus {
            name: name.into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity / 2,
            allocated_bytes: 3,
            available_bytes: 4,
            volumes: 5,
            orphans: 6,
            ready,
            ..Default::default()
        }
    }

    #[test]
    fn pool_gauges_follow_the_latest_report_and_forget_removed_pools() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.set_pools("n1", &[pool("a", 100, true), pool("b", 7, false)]);
        let text = crate::serve::render(&registry).unwrap();
        for line in [
            "stowage_pool_capacity_bytes{node=\"n1\",pool=\"a\"} 100",
            "stowage_pool_allocatable_bytes{node=\"n1\",pool=\"a\"} 50",
            "stowage_pool_allocated_bytes{node=\"n1\",pool=\"a\"} 3",
            "stowage_pool_available_bytes{node=\"n1\",pool=\"a\"} 4",
            "stowage_pool_volumes{node=\"n1\",pool=\"a\"} 5",
            "stowage_pool_orphans{node=\"n1\",pool=\"a\"} 6",
            "stowage_pool_ready{node=\"n1\",pool=\"a\"} 1",
            "stowage_pool_ready{node=\"n1\",pool=\"b\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.set_pools("n1", &[pool("a", 100, true)]);
        let text = crate::serve::render(&registry).unwrap();
        assert!(!text.contains("pool=\"b\""), "{text}");
    }

    #[test]
    fn operations_are_counted_and_timed_by_closed_labels() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        drop(m.time(Operation::Create));
        m.count(Operation::Create, OpResult::Success);
        m.count(Operation::Archive, OpResult::Error);
        m.heartbeat("n1", 1_700_000_000.0);
        let text = crate::serve::render(&registry).unwrap();
        for line in [
            "stowage_agent_operations_total{operation=\"create\",result=\"success\"} 1",
            "stowage_agent_operations_total{operation=\"archive\",result=\"error\"} 1",
            "stowage_agent_operation_duration_seconds_count{operation=\"create\"} 1",
            "stowage_agent_heartbeat_timestamp_seconds{node=\"n1\"} 1700000000",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
