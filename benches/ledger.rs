//! Filter + score of one pod with 3 claims over 5,000 nodes: the extender's hot path.
//!
//! Run: `cargo bench --bench ledger`. Target: under 1 ms per pod.

#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stowage::ledger::{Bytes, Demand, Driver, FitOptions, Ledger, NodeState, Placement, PoolState};

fn cluster(nodes: usize) -> (Ledger, Vec<String>) {
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let ledger = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cap = Bytes::gib(500 << (i % 4));
            let mut a = PoolState::new("default", Driver::Btrfs, cap);
            a.allocated = Bytes(cap.0 / 100 * ((i as u64 * 37) % 100));
            let mut b = PoolState::new("fast", Driver::Hostpath, Bytes::gib(200));
            b.available = Some(Bytes::gib(150));
            NodeState::new(name.as_str(), vec![a, b])
        })
        .collect();
    (ledger, names)
}

fn filter_and_score(c: &mut Criterion) {
    let (ledger, names) = cluster(5_000);
    let demand = Demand::from_claims([
        ("default", Bytes::gib(100)),
        ("default", Bytes::gib(50)),
        ("fast", Bytes::gib(10)),
    ])
    .expect("small demand");
    let opts = FitOptions::default();
    c.bench_function("filter+prioritize, 1 pod x 3 claims, 5000 nodes", |b| {
        b.iter(|| {
            let verdict =
                ledger.filter(names.iter().map(String::as_str), black_box(&demand), &opts);
            let scores =
                ledger.prioritize(verdict.passed.iter().copied(), &demand, Placement::Spread);
            black_box((verdict.failed.len(), scores))
        })
    });
}

criterion_group!(benches, filter_and_score);
criterion_main!(benches);
