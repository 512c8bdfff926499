//! stowage-core: the parts of stowage that decide and do, with nothing of Kubernetes'
//! machinery in them.
//!
//! ```text
//!   ledger   capacity ledger: bytes, demand, fit, reasons, spread/binpack scores
//!   nfs      NFS cluster mode: servers, weighted bounded-load ring, claim directories
//!   fsutil   directory operations relative to descriptors, never following a symlink
//!   names    well-known strings: API group, finalizers, annotation and label keys
//!   volume   what happens to a volume's data when it is deleted (both modes)
//! ```
//!
//! The rule of this crate: it is pure. It depends on no Kubernetes client or API types
//! (kube, k8s-openapi), no async runtime (tokio), no HTTP server (axum) and no metrics
//! (prometheus), not even through another crate; `tests/dependencies.rs` walks `Cargo.lock`
//! and fails naming the path to any of them. The only I/O is plain blocking filesystem
//! calls (the NFS mode's directories and `statvfs`). The `stowage` crate re-exports
//! `ledger`, `nfs` and `fsutil` under its own root and builds the roles (agent, controller,
//! extender) on top.
//!
//! Feature `race-points`: [`fsutil`]'s race hooks and test helpers for the tests of crates
//! built on this one. Without a hook set by a test on its own thread they do nothing.

pub mod fsutil;
pub mod ledger;
pub mod names;
pub mod nfs;
pub mod volume;

#[cfg(test)]
mod tests {
    /// Every module declared in this file has a row in the module map above, and every row
    /// names a module.
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
        assert_eq!(
            a, b,
            "declared modules vs the map in core/src/lib.rs's docs"
        );
        assert_eq!(declared.len(), 5);
    }
}
