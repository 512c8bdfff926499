//! Properties the ledger promises for any input (DESIGN.md, "Capacity ledger").

use proptest::prelude::*;

use super::*;

const POOLS: [&str; 2] = ["default", "fast"];

fn arb_pool(name: &'static str, min_cap: u64, max_fill: u64) -> impl Strategy<Value = PoolState> {
    (
        min_cap..=4096,
        0u64..=100,
        0u64..=max_fill,
        0u64..=max_fill,
        any::<bool>(),
        prop::option::of(0u64..=4096),
    )
        .prop_map(
            move |(cap_gib, reserve_pct, alloc_pct, reserved_pct, btrfs, avail)| {
                let cap = Bytes::gib(cap_gib);
                let driver = if btrfs {
                    Driver::Btrfs
                } else {
                    Driver::Hostpath
                };
                let mut p = PoolState::new(name, driver, cap);
                p.reserve =
                    Reserve::BasisPoints(u32::try_from(reserve_pct * 20).unwrap()).resolve(cap);
                p.allocated = Bytes(p.allocatable().0 / 100 * alloc_pct);
                p.reserved =
                    Bytes(p.allocatable().saturating_sub(p.allocated).0 / 100 * reserved_pct);
                p.available = avail.map(|a| Bytes::gib(a.max(min_cap)));
                p
            },
        )
}

fn arb_node() -> impl Strategy<Value = NodeState> {
    (
        arb_pool(POOLS[0], 1, 100),
        prop::option::of(arb_pool(POOLS[1], 1, 100)),
    )
        .prop_map(|(a, b)| {
            let mut pools = vec![a];
            pools.extend(b);
            NodeState::new("n", pools)
        })
}

/// Nodes with both pools, at most half promised and at least 256 GiB each, so that small
/// demands usually fit.
fn arb_roomy_node() -> impl Strategy<Value = NodeState> {
    (arb_pool(POOLS[0], 256, 50), arb_pool(POOLS[1], 256, 50))
        .prop_map(|(a, b)| NodeState::new("n", vec![a, b]))
}

fn arb_demand() -> impl Strategy<Value = Demand> {
    arb_demand_up_to(2048)
}

fn arb_demand_up_to(max_gib: u64) -> impl Strategy<Value = Demand> {
    prop::collection::vec((0usize..2, 0u64..=max_gib), 1..4).prop_map(|claims| {
        Demand::from_claims(claims.into_iter().map(|(p, g)| (POOLS[p], Bytes::gib(g)))).unwrap()
    })
}

fn fits(node: &NodeState, demand: &Demand) -> bool {
    check(node, demand, &FitOptions::default()).is_ok()
}

proptest! {
    #[test]
    fn a_node_never_fits_when_the_demand_exceeds_its_free_space(node in arb_node(), demand in arb_demand()) {
        let exceeds = demand.pools().any(|(pool, need)| {
            node.pool(pool.as_str()).is_none_or(|p| need > p.free())
        });
        prop_assert_eq!(fits(&node, &demand), !exceeds);
    }

    #[test]
    fn scores_never_leave_the_protocol_range(node in arb_node(), demand in arb_demand()) {
        for placement in [Placement::Spread, Placement::Binpack] {
            let s = score(&node, &demand, placement);
            prop_assert!(s <= MAX_SCORE);
            if !fits(&node, &demand) {
                prop_assert_eq!(s, 0);
            }
        }
    }

    #[test]
    fn spread_scores_are_monotone_in_free_space_after_placement(
        cap in 1u64..=4096,
        alloc_a in 0u64..=4096,
        alloc_b in 0u64..=4096,
        need in 0u64..=1024,
    ) {
        // Same pool size, different fill: the node with more room after placement never
        // scores lower under spread. Fills and the need are folded into what fits, so the
        // assumption below rarely rejects (drawn independently, most cases did not fit and
        // proptest gave up after 1,024 rejects now and then).
        let (alloc_a, alloc_b) = (alloc_a % (cap + 1), alloc_b % (cap + 1));
        let need = need % (cap - alloc_a.max(alloc_b) + 1);
        let mk = |alloc: u64| {
            let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(cap));
            p.allocated = Bytes::gib(alloc.min(cap));
            NodeState::new("n", vec![p])
        };
        let (a, b) = (mk(alloc_a), mk(alloc_b));
        let d = Demand::from_claims([("default", Bytes::gib(need))]).unwrap();
        prop_assume!(fits(&a, &d) && fits(&b, &d));
        let free_a = a.pools[0].free();
        let free_b = b.pools[0].free();
        if free_a >= free_b {
            prop_assert!(score(&a, &d, Placement::Spread) >= score(&b, &d, Placement::Spread));
        } else {
            prop_assert!(score(&a, &d, Placement::Spread) <= score(&b, &d, Placement::Spread));
        }
    }

    #[test]
    fn spread_and_binpack_order_candidate_nodes_oppositely(
        a in arb_roomy_node(), b in arb_roomy_node(), demand in arb_demand_up_to(32)
    ) {
        prop_assume!(fits(&a, &demand) && fits(&b, &demand));
        let spread = score(&a, &demand, Placement::Spread).cmp(&score(&b, &demand, Placement::Spread));
        let binpack = score(&a, &demand, Placement::Binpack).cmp(&score(&b, &demand, Placement::Binpack));
        prop_assert_eq!(spread, binpack.reverse());
    }

    #[test]
    fn no_overcommit_for_any_interleaving_of_reserve_commit_and_release(
        caps in prop::collection::vec(1u64..=512, 1..4),
        ops in prop::collection::vec((0u8..5, 0usize..4, 0u64..=256), 1..200),
    ) {
        let opts = FitOptions::default();
        let mut ledger: Ledger = caps
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                NodeState::new(format!("n{i}"), vec![PoolState::new("default", Driver::Btrfs, Bytes::gib(c))])
            })
            .collect();
        let mut reserved: Vec<(String, Demand)> = Vec::new();
        let mut allocated: Vec<(String, Demand)> = Vec::new();
        for (op, idx, gib) in ops {
            let node = format!("n{}", idx % caps.len());
            let d = Demand::from_claims([("default", Bytes::gib(gib))]).unwrap();
            match op {
                0 => if ledger.reserve(&node, &d, &opts).is_ok() { reserved.push((node, d)) },
                1 => if ledger.allocate(&node, &d, &opts).is_ok() { allocated.push((node, d)) },
                2 => if let Some((n, d)) = reserved.pop() {
                    ledger.commit(&n, &d).unwrap();
                    allocated.push((n, d));
                },
                3 => if let Some((n, d)) = allocated.pop() { ledger.release(&n, &d).unwrap() },
                _ => if let Some((n, d)) = reserved.pop() { ledger.unreserve(&n, &d).unwrap() },
            }
            for n in ledger.nodes() {
                for p in &n.pools {
                    prop_assert!(p.committed() <= p.allocatable(), "{} {:?}", n.name, p);
                }
            }
        }
    }
}

#[test]
fn a_refused_reservation_changes_nothing() {
    let mut ledger: Ledger = [NodeState::new(
        "n",
        vec![PoolState::new("default", Driver::Btrfs, Bytes::gib(10))],
    )]
    .into_iter()
    .collect();
    let before = ledger.clone();
    let d = Demand::from_claims([("default", Bytes::gib(11))]).unwrap();
    let err = ledger.reserve("n", &d, &FitOptions::default()).unwrap_err();
    assert!(matches!(err, LedgerError::Unfit { .. }));
    assert_eq!(ledger, before);
    assert!(matches!(
        ledger.release("n", &d),
        Err(LedgerError::Underflow { .. })
    ));
    assert_eq!(ledger, before);
    assert!(matches!(
        ledger.reserve("ghost", &d, &FitOptions::default()),
        Err(LedgerError::UnknownNode(_))
    ));
}

#[test]
fn reserved_demand_counts_against_the_selected_node() {
    let mut ledger: Ledger = [NodeState::new(
        "n",
        vec![PoolState::new("default", Driver::Btrfs, Bytes::gib(100))],
    )]
    .into_iter()
    .collect();
    let opts = FitOptions::default();
    let d = Demand::from_claims([("default", Bytes::gib(60))]).unwrap();
    ledger.reserve("n", &d, &opts).unwrap();
    let verdict = ledger.filter(["n"], &d, &opts);
    assert!(verdict.passed.is_empty());
    assert_eq!(
        verdict.failed[0].1.to_string(),
        "storage pool \"default\" has 40Gi free, the pod's claims need 60Gi"
    );
    ledger.unreserve("n", &d).unwrap();
    assert_eq!(ledger.filter(["n"], &d, &opts).passed, ["n"]);
}

#[test]
fn unknown_nodes_are_filtered_with_a_reason_and_score_zero() {
    let ledger = Ledger::new();
    let d = Demand::from_claims([("default", Bytes::gib(1))]).unwrap();
    let verdict = ledger.filter(["ghost"], &d, &FitOptions::default());
    assert_eq!(verdict.failed, [("ghost", Unfit::NoReport)]);
    assert_eq!(
        ledger.prioritize(["ghost"], &d, Placement::Spread),
        [("ghost", 0)]
    );
    assert_eq!(
        ledger
            .filter(["ghost"], &Demand::new(), &FitOptions::default())
            .passed,
        ["ghost"]
    );
}
