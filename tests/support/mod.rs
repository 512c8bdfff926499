//! Code shared by the integration tests (each `tests/*.rs` that needs it declares
//! `mod support;`; not every test uses every helper).
#![allow(dead_code)]
// Helpers panic on failure like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod invariants;
pub mod stack;
