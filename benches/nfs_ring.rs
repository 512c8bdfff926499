//! NFS ring: placement throughput for 100,000 claims over 16 servers, the fraction of fresh
//! keys that move when a 17th server is added, and the max/mean load with bounded loads.
//!
//! Run: `cargo bench --bench nfs_ring`. Prints the figures, then criterion's per-placement
//! timing.

#![allow(missing_docs, clippy::expect_used, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use stowage::ledger::Bytes;
use stowage::nfs::ring::{Epsilon, Ring, RingServer, ServerLoad};

const CLAIMS: usize = 100_000;
const SERVERS: usize = 16;

fn servers(n: usize) -> Vec<RingServer> {
    (0..n)
        .map(|i| RingServer::new(format!("nfs-{i:02}"), 1024))
        .collect()
}

fn key(i: usize) -> String {
    format!("ns-{:03}/data-{i}", i % 500)
}

/// Claim sizes 1–100 GiB from a fixed LCG, so every run places the same claims.
fn sizes(n: usize) -> Vec<Bytes> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            Bytes::gib(1 + (x >> 33) % 100)
        })
        .collect()
}

fn max_over_mean(loads: &[ServerLoad]) -> f64 {
    let total: f64 = loads.iter().map(|l| l.allocated.0 as f64).sum();
    let mean = total / loads.len() as f64;
    loads
        .iter()
        .map(|l| l.allocated.0 as f64)
        .fold(0.0, f64::max)
        / mean
}

fn report() {
    let t = Instant::now();
    let ring = Ring::new(servers(SERVERS)).expect("ring");
    let build = t.elapsed();
    println!(
        "ring build, {SERVERS} servers x {} points: {:.2} ms",
        ring.point_count() / SERVERS,
        build.as_secs_f64() * 1e3
    );

    let keys: Vec<String> = (0..CLAIMS).map(key).collect();
    let sizes = sizes(CLAIMS);
    // Few claims per server: the ring alone is lumpy, bounded loads even it out.
    for claims in [160, 1_600] {
        for (label, eps) in [("eps=0.25", Some(Epsilon::default())), ("no bound", None)] {
            let mut loads = vec![ServerLoad::ready(Bytes::ZERO); SERVERS];
            for (k, size) in keys.iter().zip(&sizes).take(claims) {
                let s = ring.place(k, *size, &loads, eps).expect("placed").server;
                loads[s].allocated = loads[s].allocated.saturating_add(*size);
            }
            println!(
                "{claims} claims (1-100 GiB), {label}: max/mean load {:.3}",
                max_over_mean(&loads)
            );
        }
    }
    for (label, eps) in [
        ("bounded loads eps=0.25", Some(Epsilon::default())),
        (
            "bounded loads eps=0.10",
            Some(Epsilon::new(0.1).expect("eps")),
        ),
        ("bare ring (no bound)", None),
    ] {
        let mut loads = vec![ServerLoad::ready(Bytes::ZERO); SERVERS];
        let mut skips = 0usize;
        let t = Instant::now();
        for (k, size) in keys.iter().zip(&sizes) {
            let choice = ring.place(k, *size, &loads, eps).expect("placed");
            skips += choice.skipped.len();
            let l = &mut loads[choice.server];
            l.allocated = l.allocated.saturating_add(*size);
        }
        let took = t.elapsed().as_secs_f64();
        println!(
            "{label}: {CLAIMS} claims (1-100 GiB) in {:.1} ms = {:.0} claims/s; max/mean load {:.3}; {skips} skips in all",
            took * 1e3,
            CLAIMS as f64 / took,
            max_over_mean(&loads),
        );
    }

    let bigger = Ring::new(servers(SERVERS + 1)).expect("ring");
    let moved = keys
        .iter()
        .filter(|k| ring.primary(k) != bigger.primary(k))
        .count();
    let to_new = keys.iter().filter(|k| bigger.primary(k) == SERVERS).count();
    println!(
        "adding server {}: {moved} of {CLAIMS} fresh keys move ({:.4}; ideal 1/{} = {:.4}; limit 1.1/{} = {:.4}); {to_new} land on the new server",
        SERVERS + 1,
        moved as f64 / CLAIMS as f64,
        SERVERS + 1,
        1.0 / (SERVERS + 1) as f64,
        SERVERS + 1,
        1.1 / (SERVERS + 1) as f64
    );
}

fn place_one(c: &mut Criterion) {
    let ring = Ring::new(servers(SERVERS)).expect("ring");
    let sizes = sizes(10_000);
    let mut loads = vec![ServerLoad::ready(Bytes::ZERO); SERVERS];
    for (i, size) in sizes.iter().enumerate() {
        let s = ring
            .place(&key(i), *size, &loads, Some(Epsilon::default()))
            .expect("placed")
            .server;
        loads[s].allocated = loads[s].allocated.saturating_add(*size);
    }
    let keys: Vec<String> = (0..1024).map(|i| key(1_000_000 + i)).collect();
    let mut i = 0usize;
    c.bench_function("place 1 claim, 16 servers, bounded loads", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(
                ring.place(&keys[i], Bytes::gib(10), &loads, Some(Epsilon::default()))
                    .map(|c| c.server),
            )
        })
    });
}

criterion_group!(benches, place_one);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
