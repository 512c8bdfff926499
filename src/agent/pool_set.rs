//! The configured pools of this node with their latest probe and, for ready pools, an open
//! driver. Shared by the reconciler (which needs a driver per volume) and the reporter (which
//! re-probes on every report and reloads the config file when it changes).

use std::collections::BTreeSet;

use super::driver::PoolDriver;
use super::pool::{PoolReport, PoolSpec, VolumeMode};

/// One configured pool.
#[derive(Clone, Debug)]
pub struct Pool {
    /// What the config says.
    pub spec: PoolSpec,
    /// The latest probe.
    pub report: PoolReport,
    driver: Option<PoolDriver>,
}

impl Pool {
    /// The open driver, when the pool is ready.
    pub fn driver(&self) -> Option<&PoolDriver> {
        self.driver.as_ref()
    }
}

/// Why a pool cannot serve a volume right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No pool of that name is configured; carries the names that are.
    Unknown {
        /// The configured pool names, in config order.
        configured: Vec<String>,
    },
    /// The pool is configured but its path is not usable; carries the reason.
    NotReady {
        /// Why, from the probe or from opening the driver.
        reason: String,
    },
}

/// All configured pools, in config order.
#[derive(Clone, Debug, Default)]
pub struct PoolSet {
    pools: Vec<Pool>,
}

impl PoolSet {
    /// Probes every pool and opens the drivers of the ready ones.
    pub fn new(specs: Vec<PoolSpec>) -> Self {
        PoolSet {
            pools: specs.into_iter().map(open).collect(),
        }
    }

    /// The pools, in config order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The configured specs, in config order.
    pub fn specs(&self) -> Vec<PoolSpec> {
        self.pools.iter().map(|p| p.spec.clone()).collect()
    }

    /// Re-probes every pool (a disk may have been mounted or lost) and returns the names of
    /// pools that became ready.
    pub fn refresh(&mut self) -> BTreeSet<String> {
        let mut became_ready = BTreeSet::new();
        for pool in &mut self.pools {
            let was_ready = pool.driver.is_some();
            let report = pool.spec.probe();
            if report.ready && was_ready {
                // Keep the open driver: opening may cost more than a probe (btrfs).
                pool.report = report;
            } else {
                *pool = open(pool.spec.clone());
            }
            if !was_ready && pool.driver.is_some() {
                became_ready.insert(pool.spec.name.to_string());
            }
        }
        became_ready
    }

    /// The driver and directory mode of pool `name`. A pool that was not ready is probed
    /// again first, so a pool fixed by hand serves the next retry without waiting for a
    /// report.
    pub fn driver(&mut self, name: &str) -> Result<(PoolDriver, VolumeMode), Unavailable> {
        let configured = || self.pools.iter().map(|p| p.spec.name.to_string()).collect();
        let Some(index) = self.pools.iter().position(|p| p.spec.name.as_str() == name) else {
            return Err(Unavailable::Unknown {
                configured: configured(),
            });
        };
        let pool = &mut self.pools[index];
        if pool.driver.is_none() {
            *pool = open(pool.spec.clone());
        }
        match &pool.driver {
            Some(driver) => Ok((driver.clone(), pool.spec.volume_mode)),
            None => Err(Unavailable::NotReady {
                reason: pool
                    .report
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the pool cannot be opened".to_string()),
            }),
        }
    }
}

/// Probes `spec` and opens its driver when the probe says ready; a driver that cannot be
/// opened turns the report not ready with the driver's reason.
fn open(spec: PoolSpec) -> Pool {
    let mut report = spec.probe();
    let driver = if report.ready {
        match PoolDriver::open(&spec) {
            Ok(driver) => Some(driver),
            Err(error) => {
                report.ready = false;
                report.reason = Some(error.to_string());
                None
            }
        }
    } else {
        None
    };
    Pool {
        spec,
        report,
        driver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pool::PoolConfig;

    #[test]
    fn a_missing_pool_is_not_ready_until_its_directory_appears() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a).unwrap();
        let text = format!(
            "pools:\n  - name: a\n    path: {}\n  - name: b\n    path: {}\n",
            a.display(),
            b.display()
        );
        let mut set = PoolSet::new(PoolConfig::parse(&text, std::path::Path::new("/")).unwrap());
        assert!(set.pools()[0].report.ready);
        assert!(!set.pools()[1].report.ready);
        assert!(set.driver("a").is_ok());
        match set.driver("b") {
            Err(Unavailable::NotReady { reason }) => {
                assert!(reason.contains("does not exist"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
        match set.driver("c") {
            Err(Unavailable::Unknown { configured }) => assert_eq!(configured, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
        std::fs::create_dir(&b).unwrap();
        assert!(
            set.driver("b").is_ok(),
            "a fixed pool serves the next lookup"
        );
        assert!(set.pools()[1].report.ready);
        assert!(set.refresh().is_empty(), "nothing newly ready");
        std::fs::remove_dir(&b).unwrap();
        set.refresh();
        assert!(!set.pools()[1].report.ready);
        std::fs::create_dir(&b).unwrap();
        assert_eq!(set.refresh(), BTreeSet::from(["b".to_string()]));
    }
}
