//! stowage: node-local and multi-NFS persistent volumes for Kubernetes, placed by free
//! capacity.
//!
//! One binary with several roles (see `stowage --help`). This library holds everything but
//! the argument wiring in `main.rs`:
//!
//! ```text
//!   api       stowage.io objects and their translation into ledger terms
//!   ledger    PURE: bytes, demand, fit, reasons, spread/binpack scores
//!   controller  the provisioner: claims → LocalVolumes → PVs, release, growth, metrics
//!   nfs       NFS cluster mode: servers, weighted bounded-load ring, claim directories
//!   simulate  capacity planning over the ledger, no cluster needed
//!   cli       the command line and logging set-up
//!   leader    Lease-based leader election for the controller's replicas
//!   fsutil    directory operations relative to descriptors, never following a symlink
//! ```

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
