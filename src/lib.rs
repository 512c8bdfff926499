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
//!   serve          HTTP for every long-running role: the client, health, metrics, the server
//!   runtime        what every role runs on: backoff, failure counts, error chains, stopping
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
pub mod runtime;
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

    /// The pure modules stay pure: no file of `ledger` or `nfs` (tests included) names kube,
    /// k8s-openapi, tokio, axum or prometheus, or the modules built on them. A text check,
    /// until these modules become a crate of their own whose dependencies say it.
    #[test]
    fn ledger_and_nfs_use_no_kubernetes_client_runtime_or_metrics() {
        let forbidden = [
            "kube::",
            "k8s_openapi::",
            "tokio::",
            "axum::",
            "prometheus::",
            "crate::agent",
            "crate::controller",
            "crate::cache",
            "crate::serve",
            "crate::leader",
            "crate::extender_role",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![root.join("ledger"), root.join("nfs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 20, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for word in forbidden {
                    assert!(
                        !code.contains(word),
                        "{}:{}: {word} in a pure module: {line}",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
    }
}
