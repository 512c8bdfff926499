//! stowage: node-local and multi-NFS persistent volumes for Kubernetes, placed by free
//! capacity.
//!
//! One binary with several roles (see `stowage --help`). This library holds everything but
//! the argument wiring in `main.rs`:
//!
//! ```text
//!   api            (stowage-api) stowage.io objects (CRDs), Event reasons, into ledger terms
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
//! `stowage::ledger`, `stowage::nfs` and `stowage::fsutil` stay where they were; `api` is
//! the crate stowage-api (the custom resources and their CRDs), re-exported the same way. stowage-core
//! is pure: no Kubernetes client or API types, no async runtime, no HTTP server, no metrics,
//! which its own test of `Cargo.lock` enforces. (`api::names` and `api::local_volume::OnDelete`
//! come from it too.)
//!
//! A test holds this map to the modules declared and re-exported below.

pub mod agent;
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

pub use stowage_api as api;
pub use stowage_core::{fsutil, ledger, nfs};

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// `crate::<module>` references between the top-level modules of the crate whose
    /// sources are in `src`: code only (comment lines and everything from a file's first
    /// `#[cfg(test)]` on are left out, as are test files).
    fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    if name != "tests" {
                        dirs.push(path);
                    }
                    continue;
                }
                if !name.ends_with(".rs") || name == "tests.rs" {
                    continue;
                }
                let rel = path.strip_prefix(src).unwrap();
                let first = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                let module = first.trim_end_matches(".rs").to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for part in line.split("crate::").skip(1) {
                        let target: String = part
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !target.is_empty() && target != module {
                            edges.entry(module.clone()).or_default().insert(target);
                        }
                    }
                }
            }
        }
        edges
    }

    /// The first import cycle in `edges`, as a path, if there is one (also the controller's
    /// file-level check).
    pub(crate) fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
        fn visit(
            n: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<String> {
            if let Some(at) = path.iter().position(|p| p == n) {
                return Some(format!("{} -> {n}", path[at..].join(" -> ")));
            }
            if !done.insert(n.to_string()) {
                return None;
            }
            path.push(n.to_string());
            for next in edges.get(n).into_iter().flatten() {
                if let Some(found) = visit(next, edges, path, done) {
                    return Some(found);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        edges
            .keys()
            .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
    }

    /// No import cycle between the top-level modules, in stowage and in stowage-core (the
    /// controller's own files have their own check, `controller::tests`).
    #[test]
    fn the_top_level_modules_import_each_other_without_a_cycle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for src in [root.join("src"), root.join("core/src")] {
            let edges = module_edges(&src);
            assert!(!edges.is_empty(), "the reader found no edges in {src:?}");
            assert_eq!(cycle(&edges), None, "{}: {edges:?}", src.display());
        }
        let stowage = module_edges(&root.join("src"));
        assert!(
            stowage["controller"].contains("cache") && stowage["agent"].contains("runtime"),
            "the reader missed controller -> cache or agent -> runtime: {stowage:?}"
        );
        let core = module_edges(&root.join("core/src"));
        assert!(
            core["nfs"].contains("ledger"),
            "the reader missed nfs -> ledger: {core:?}"
        );
        let mut two = BTreeMap::new();
        two.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
        two.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
        assert_eq!(cycle(&two).as_deref(), Some("a -> b -> a"));
    }

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
        // `pub use stowage_api as api;`: the API crate, under its old name.
        let renamed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub use stowage_api as ")?.strip_suffix(';'))
            .collect();
        assert_eq!(renamed, ["api"], "the re-export of stowage-api");
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
            .chain(core.iter().copied())
            .chain(renamed.iter().copied())
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
        for (row, krate) in [
            ("ledger", "(stowage-core)"),
            ("nfs", "(stowage-core)"),
            ("fsutil", "(stowage-core)"),
            ("api", "(stowage-api)"),
        ] {
            let line = text
                .lines()
                .find(|l| l.trim_start_matches("//!").split_whitespace().next() == Some(row));
            assert!(
                line.is_some_and(|l| l.contains(krate)),
                "{row}'s row says it comes from {krate}: {line:?}"
            );
        }
        assert!(declared.len() >= 15);
    }
}
