//! stowage: node-local and multi-NFS persistent volumes for Kubernetes, placed by free
//! capacity.
//!
//! One binary with several roles (see `stowage --help`). This library holds everything but
//! the argument wiring in `main.rs`:
//!
//! ```text
//!   api            stowage.io objects (CRDs), shared names, their translation into ledger terms
//!   ledger         PURE: bytes, demand, fit, reasons, spread/binpack scores
//!   cache          the controller's and extender's index of the cluster, kept by deltas
//!   agent          `stowage agent`: pools, drivers, the LocalVolume reconciler, StorageNode reports
//!   controller     `stowage controller`: claims → LocalVolumes → PVs, release, growth, metrics
//!   extender_role  `stowage extender`: the scheduler extender alone, over watched state
//!   nfs            NFS cluster mode: servers, weighted bounded-load ring, claim directories
//!   simulate       capacity planning over the ledger, no cluster needed
//!   leader         Lease-based leader election for the controller's replicas
//!   events         core/v1 Events as client-go's recorder writes them
//!   serve          what every long-running role shares: client, health, metrics, shutdown
//!   fsutil         directory operations relative to descriptors, never following a symlink
//!   crash          test-only crash points between two durable steps
//!   memory         handing freed memory back to the operating system
//!   cli            the command line and logging set-up
//! ```
//!
//! A test holds this map to the modules declared below.

pub mod agent;
pub mod api;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod crash;
pub mod events;
pub mod extender_role;
pub mod fsutil;
pub mod leader;
pub mod ledger;
pub mod memory;
pub mod nfs;
pub mod serve;
pub mod simulate;

#[cfg(test)]
mod tests {
    /// Every module declared in this file has a row in the module map above, and every row
    /// names a module: the map cannot drift from the code again.
    #[test]
    fn the_module_map_names_every_module() {
        let text = include_str!("lib.rs");
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
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
        assert!(declared.len() >= 15);
    }
}
