//! Tests of the strict in-memory API server, driven through kube-rs the way stowage's code
//! drives a real cluster.

// Helpers outside `#[test]` functions panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod crd;
mod faults;
mod lists;
mod watch;
mod writes;
