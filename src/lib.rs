//! stowage: node-local and multi-NFS persistent volumes for Kubernetes, placed by free
//! capacity.
//!
//! One binary with several roles (see `stowage --help`). This library holds everything but
//! the argument wiring in `main.rs`:
//!
//! ```text
//!   api            stowage.io objects (CRDs), shared names, their translation into ledger terms
//!   ledger         PURE (stowage-core): bytes, demand, fit, reasons, spread/binpack scores
//!   cache          the controller's and extender's index of the cluster, kept by deltas
//!   agent          `stowage agent`: pools, drivers, the LocalVolume reconciler, StorageNode reports
//!   controller     `stowage controller`: claims → LocalVolumes → PVs, release, growth, metrics
//!   extender_role  `stowage extender`: the scheduler extender alone, over watched state
//!   nfs            (stowage-core) NFS cluster mode: servers, weighted bounded-load ring, claim directories
//!   simulate       capacity planning over the ledger, no cluster needed
//!   leader         Lease-based leader election for the controller's replicas
//!   events         core/v1 Events as client-go's recorder writes them
//!   serve          HTTP for every long-running role: the client, health, metrics, the server
//!   runtime        what every role runs on: backoff, failure counts, error chains, stopping
//!   fsutil         (stowage-core) directory operations relative to descriptors, no symlinks
//!   crash          test-only crash points between two durable steps
//!   memory         handing freed memory back to the operating system
//!   cli            the command line and logging set-up
//! ```
//!
//! The rows marked stowage-core are that crate's modules, re-exported here so that
//! `stowage::ledger`, `stowage::nfs` and `stowage::fsutil` stay where they were. stowage-core
//! is pure: no Kubernetes client or API types, no async runtime, no HTTP server, no metrics,
//! which its own test of `Cargo.lock` enforces. (`api::names` and `api::local_volume::OnDelete`
//! come from it too.)
//!
//! A test holds this map to the modules declared and re-exported below.

pub mod agent;
pub mod api;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod crash;
pub mod events;
pub mod extender_role;
pub mod leader;
pub mod memory;
pub mod runtime;
pub mod serve;
pub mod simulate;

pub use stowage_core::{fsutil, ledger, nfs};

#[cfg(test)]
mod tests {
    /// Every module declared or re-exported from stowage-core in this file has a row in the
    /// module map above, and every row names one: the map cannot drift from the code again.
    #[test]
    fn the_module_map_names_every_module() {
        let text = include_str!("lib.rs");
        let core: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("pub use stowage_core::{")?
                    .strip_suffix("};")
            })
            .flat_map(|l| l.split(',').map(str::trim))
            .collect();
        assert_eq!(
            core,
            ["fsutil", "ledger", "nfs"],
            "the re-exports of stowage-core"
        );
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
            .chain(core.iter().copied())
            .collect();
        let mapped: Vec<&str> = text
            .split("```text")
            .nth(1)
            .and_then(|m| m.split("```").next())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim_start_matches("//!").split_whitespace().next())
            .collect();
        let mut a = declared.clone();
        let mut b = mapped.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "declared modules vs the map in src/lib.rs's docs");
        for row in ["ledger", "nfs", "fsutil"] {
            let line = text
                .lines()
                .find(|l| l.trim_start_matches("//!").split_whitespace().next() == Some(row));
            assert!(
                line.is_some_and(|l| l.contains("(stowage-core)")),
                "{row}'s row says it comes from stowage-core: {line:?}"
            );
        }
        assert!(declared.len() >= 15);
    }
}
