//! Code shared by the integration tests (each `tests/*.rs` that needs it declares
//! `mod support;`; not every test uses every helper).
#![allow(dead_code)]

pub mod invariants;
pub mod stack;
