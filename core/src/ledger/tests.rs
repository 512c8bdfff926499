//! Properties the ledger promises for any input (DESIGN.md, "Capacity ledger").

use std::collections::BTreeMap;
use std::time::Duration;

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

/// A demand of one to three claims, and the bytes it asks of each pool, summed from the
/// claims here rather than read back from [`Demand`].
fn arb_demand() -> impl Strategy<Value = (Demand, BTreeMap<String, i128>)> {
    arb_demand_up_to(2048)
}

fn arb_demand_up_to(max_gib: u64) -> impl Strategy<Value = (Demand, BTreeMap<String, i128>)> {
    prop::collection::vec((0usize..2, 0u64..=max_gib), 1..4).prop_map(|claims| {
        let mut needs = BTreeMap::new();
        for (p, g) in &claims {
            *needs.entry(POOLS[*p].to_string()).or_insert(0) += i128::from(*g) << 30;
        }
        let demand =
            Demand::from_claims(claims.into_iter().map(|(p, g)| (POOLS[p], Bytes::gib(g))))
                .unwrap();
        (demand, needs)
    })
}

proptest! {
    /// Scores stay in the protocol's range, and a node the model says cannot take the
    /// demand scores 0.
    #[test]
    fn scores_never_leave_the_protocol_range(node in arb_node(), (demand, needs) in arb_demand()) {
        let fits = model_fit(&node, &needs, STALE_AFTER).is_ok();
        for placement in [Placement::Spread, Placement::Binpack] {
            let s = score(&node, &demand, placement);
            prop_assert!(s <= MAX_SCORE);
            if !fits {
                prop_assert_eq!(s, 0, "{:?} on a node the model refuses", placement);
            }
        }
    }

    /// Same pool size, different fill: the node with more room after placement never scores
    /// lower under spread. Free space is known from first principles (a btrfs pool with no
    /// reserve: capacity less allocated), and the need is mostly the tighter node's free
    /// space exactly, a byte less or a byte more: each node must fit exactly when the need
    /// is at most its free space, and score 0 when it does not, so a fit check or a free
    /// space off by a byte fails here instead of being assumed away.
    #[test]
    fn spread_scores_are_monotone_in_free_space_after_placement(
        cap in 1u64..=4096,
        alloc_a in 0u64..=4096,
        alloc_b in 0u64..=4096,
        need in prop_oneof![Just(Err(0i64)), Just(Err(-1)), Just(Err(1)), (0u64..=1024).prop_map(Ok)],
    ) {
        let (alloc_a, alloc_b) = (alloc_a % (cap + 1), alloc_b % (cap + 1));
        // GiB free on the tighter node; the need is that nudged by a byte, or any whole GiB
        // up to it.
        let tight = cap - alloc_a.max(alloc_b);
        let need = match need {
            Err(nudge) => (tight << 30).saturating_add_signed(nudge),
            Ok(n) => (n % (tight + 1)) << 30,
        };
        let mk = |alloc: u64| {
            let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(cap));
            p.allocated = Bytes::gib(alloc);
            NodeState::new("n", vec![p])
        };
        let (a, b) = (mk(alloc_a), mk(alloc_b));
        let d = Demand::from_claims([("default", Bytes(need))]).unwrap();
        for (node, alloc) in [(&a, alloc_a), (&b, alloc_b)] {
            let free = (cap - alloc) << 30;
            let got = check(node, &d, &opts());
            prop_assert_eq!(got.is_ok(), need <= free, "{} bytes in {} free: {:?}", need, free, got);
            if need > free {
                for placement in [Placement::Spread, Placement::Binpack] {
                    prop_assert_eq!(score(node, &d, placement), 0, "{:?}: {} bytes in {} free", placement, need, free);
                }
            }
        }
        // Room after placement is free less the need, so less allocated is more room.
        let (spread_a, spread_b) = (score(&a, &d, Placement::Spread), score(&b, &d, Placement::Spread));
        if alloc_a <= alloc_b {
            prop_assert!(spread_a >= spread_b, "a ({} GiB allocated) scored {} below b ({} GiB, {})", alloc_a, spread_a, alloc_b, spread_b);
        } else {
            prop_assert!(spread_a <= spread_b, "b ({} GiB allocated) scored {} below a ({} GiB, {})", alloc_b, spread_b, alloc_a, spread_a);
        }
    }

    /// Two nodes that both fit, by the model, are ordered oppositely by the two placements.
    #[test]
    fn spread_and_binpack_order_candidate_nodes_oppositely(
        a in arb_roomy_node(), b in arb_roomy_node(), (demand, needs) in arb_demand_up_to(32)
    ) {
        prop_assume!(model_fit(&a, &needs, STALE_AFTER).is_ok() && model_fit(&b, &needs, STALE_AFTER).is_ok());
        let spread = score(&a, &demand, Placement::Spread).cmp(&score(&b, &demand, Placement::Spread));
        let binpack = score(&a, &demand, Placement::Binpack).cmp(&score(&b, &demand, Placement::Binpack));
        prop_assert_eq!(spread, binpack.reverse());
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

// === Properties against an independent model ===
//
// The model below restates DESIGN.md's definitions in plain i128 arithmetic (no `Bytes`, no
// saturating helpers, nothing from `free()`, `check()` or `score()`), and the inputs are
// generated around its byte-exact boundaries: demands of exactly the free space, one byte
// less and one byte more; hostpath pools whose filesystem is the tighter limit by a byte;
// heartbeats exactly at the staleness limit and a nanosecond past it; pools and nodes that
// are not ready; pools the node does not have.

/// One pool as the model sees it.
#[derive(Clone, Debug)]
struct ModelPool {
    capacity: i128,
    reserve: i128,
    allocated: i128,
    reserved: i128,
    available: Option<i128>,
    enforces: bool,
    ready: bool,
}

impl ModelPool {
    fn of(p: &PoolState) -> Self {
        ModelPool {
            capacity: i128::from(p.capacity.0),
            reserve: i128::from(p.reserve.0),
            allocated: i128::from(p.allocated.0),
            reserved: i128::from(p.reserved.0),
            available: p.available.map(|a| i128::from(a.0)),
            enforces: p.driver == Driver::Btrfs,
            ready: p.ready,
        }
    }

    /// Capacity less the reserve, never below zero.
    fn allocatable(&self) -> i128 {
        (self.capacity - self.reserve).max(0)
    }

    /// What a new claim may take: allocatable less what is promised, and for a driver that
    /// cannot enforce sizes no more than the filesystem has beyond the reserve.
    fn room(&self) -> i128 {
        let by_ledger = (self.allocatable() - self.allocated - self.reserved).max(0);
        match self.available {
            Some(a) if !self.enforces => by_ledger.min((a - self.reserve).max(0)),
            _ => by_ledger,
        }
    }
}

/// The model's verdict: `Ok` or the kind of the first reason.
fn model_fit(
    node: &NodeState,
    needs: &BTreeMap<String, i128>,
    stale_after: Duration,
) -> Result<(), &'static str> {
    if needs.is_empty() {
        return Ok(());
    }
    match node.heartbeat_age {
        None => return Err("no_report"),
        Some(age) if age > stale_after => return Err("stale"),
        Some(_) => {}
    }
    if !node.ready {
        return Err("node_not_ready");
    }
    // Pools in name order, as a demand lists them.
    for (pool, need) in needs {
        let Some(p) = node.pools.iter().find(|p| p.name.as_str() == pool) else {
            return Err("unknown_pool");
        };
        let m = ModelPool::of(p);
        if !m.ready {
            return Err("pool_not_ready");
        }
        if *need > m.room() {
            return Err("insufficient_capacity");
        }
    }
    Ok(())
}

/// The model's score: the share of the demanded pools' allocatable bytes left after
/// placement, times ten, rounded half up (binpack: ten less that). Zero when a demanded pool
/// is missing or too small, or the pools have no allocatable bytes at all.
fn model_score(node: &NodeState, needs: &BTreeMap<String, i128>, placement: Placement) -> u8 {
    let mut left = 0i128;
    let mut whole = 0i128;
    for (pool, need) in needs {
        let Some(p) = node.pools.iter().find(|p| p.name.as_str() == pool) else {
            return 0;
        };
        let m = ModelPool::of(p);
        if *need > m.room() {
            return 0;
        }
        left += m.room() - need;
        whole += m.allocatable();
    }
    if whole == 0 {
        return 0;
    }
    // round(10 × left / whole), halves up, exactly: ⌊(20·left + whole) / (2·whole)⌋.
    let spread = u8::try_from((20 * left + whole) / (2 * whole)).unwrap();
    match placement {
        Placement::Spread => spread,
        Placement::Binpack => 10 - spread,
    }
}

/// A pool in bytes, not GiB: sizes from 0 to beyond 2^62, some overcommitted, some
/// hostpath pools whose filesystem is short of the ledger's free space, one in five not
/// ready.
fn arb_exact_pool(name: &'static str) -> impl Strategy<Value = PoolState> {
    let size = prop_oneof![
        Just(0u64),
        1u64..=64,
        0u64..=(1 << 40),
        Just(MAX_BYTES.0),
        (1u64 << 62)..=MAX_BYTES.0,
    ];
    (
        size,
        0u64..=100,
        0u64..=120,
        0u64..=60,
        any::<bool>(),
        prop::option::of((0u64..=110, -1i64..=1)),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            move |(cap, reserve_pct, alloc_pct, reserved_pct, btrfs, avail, ready)| {
                let driver = if btrfs {
                    Driver::Btrfs
                } else {
                    Driver::Hostpath
                };
                let pct =
                    |v: u64, p: u64| u64::try_from(u128::from(v) * u128::from(p) / 100).unwrap();
                let mut p = PoolState::new(name, driver, Bytes(cap));
                p.reserve = Bytes(pct(cap, reserve_pct));
                let allocatable = cap - p.reserve.0;
                p.allocated = Bytes(pct(allocatable, alloc_pct));
                p.reserved = Bytes(pct(allocatable, reserved_pct));
                // The filesystem's free space: around the reserve plus a share of the
                // allocatable bytes, a byte either side.
                p.available = avail.map(|(share, nudge)| {
                    let base = p.reserve.0.saturating_add(pct(allocatable, share));
                    Bytes(base.saturating_add_signed(nudge))
                });
                p.ready = ready;
                if !ready {
                    p.message = Some("mount is gone".into());
                }
                p
            },
        )
}

const STALE_AFTER: Duration = Duration::from_secs(45);

/// A node with one or both pools, sometimes not ready, with a heartbeat never, fresh,
/// exactly at the limit or a nanosecond past it.
fn arb_exact_node() -> impl Strategy<Value = NodeState> {
    (
        arb_exact_pool(POOLS[0]),
        prop::option::of(arb_exact_pool(POOLS[1])),
        prop::bool::weighted(0.9),
        prop_oneof![
            6 => Just(Some(Duration::ZERO)),
            1 => Just(None),
            1 => Just(Some(STALE_AFTER)),
            1 => Just(Some(STALE_AFTER + Duration::from_nanos(1))),
        ],
    )
        .prop_map(|(a, b, ready, age)| {
            let mut node = NodeState::new("n", [a].into_iter().chain(b).collect());
            node.ready = ready;
            node.heartbeat_age = age;
            node
        })
}

/// Per pool (the node's two and one it may lack): asked or not, and if so the model's free
/// space exactly, a byte less, a byte more, or anything; split into one to three claims.
fn arb_exact_demand(
    node: &NodeState,
) -> impl Strategy<Value = (Demand, BTreeMap<String, i128>)> + use<> {
    let rooms: Vec<(String, Option<i128>)> = [POOLS[0], POOLS[1], "ghost"]
        .iter()
        .map(|name| {
            let room = node
                .pools
                .iter()
                .find(|p| p.name.as_str() == *name)
                .map(|p| ModelPool::of(p).room());
            (name.to_string(), room)
        })
        .collect();
    let per_pool = (
        prop::bool::weighted(0.7),
        prop_oneof![Just(0i128), Just(-1), Just(1), Just(i128::MAX)],
        0u64..=(1 << 41),
        1usize..=3,
    );
    prop::collection::vec(per_pool, 3).prop_map(move |choices| {
        let mut claims = Vec::new();
        let mut needs = BTreeMap::new();
        for ((name, room), (asked, nudge, any, split)) in rooms.iter().zip(choices) {
            if !asked {
                continue;
            }
            let need: u64 = match (room, nudge) {
                (Some(r), n) if n != i128::MAX => u64::try_from((r + n).max(0)).unwrap(),
                _ => any,
            };
            // `split` claims summing to `need`.
            let part = need / split as u64;
            for i in 0..split {
                let bytes = if i + 1 == split {
                    need - part * (split as u64 - 1)
                } else {
                    part
                };
                claims.push((name.clone(), Bytes(bytes)));
            }
            needs.insert(name.clone(), i128::from(need));
        }
        (Demand::from_claims(claims).unwrap(), needs)
    })
}

fn arb_node_and_demand() -> impl Strategy<Value = (NodeState, Demand, BTreeMap<String, i128>)> {
    arb_exact_node().prop_flat_map(|node| {
        let demand = arb_exact_demand(&node);
        (Just(node), demand).prop_map(|(n, (d, needs))| (n, d, needs))
    })
}

fn opts() -> FitOptions {
    FitOptions {
        stale_after: STALE_AFTER,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The fit check accepts exactly what the model accepts, gives the model's first reason
    /// otherwise, and an insufficient pool names the model's free space and need.
    #[test]
    fn the_fit_check_agrees_with_the_model_at_every_byte((node, demand, needs) in arb_node_and_demand()) {
        let want = model_fit(&node, &needs, STALE_AFTER);
        let got = check(&node, &demand, &opts());
        prop_assert_eq!(got.as_ref().err().map(Unfit::kind), want.err(), "{:?}", got);
        if let Err(Unfit::Pools(shortfalls)) = &got {
            for s in shortfalls {
                if let Shortfall::Insufficient { pool, needed, free } = s {
                    let m = ModelPool::of(node.pool(pool.as_str()).unwrap());
                    prop_assert_eq!(i128::from(free.0), m.room());
                    prop_assert_eq!(i128::from(needed.0), needs[pool.as_str()]);
                    prop_assert!(i128::from(needed.0) > m.room());
                }
            }
        }
    }

    /// Both placements score what the model scores.
    #[test]
    fn scores_agree_with_the_model((node, demand, needs) in arb_node_and_demand()) {
        for placement in [Placement::Spread, Placement::Binpack] {
            prop_assert_eq!(score(&node, &demand, placement), model_score(&node, &needs, placement), "{:?}", placement);
        }
    }

    /// A reservation is taken exactly when the model says it fits, and then adds exactly the
    /// demand to each pool's reserved bytes; a refused one changes nothing.
    #[test]
    fn reservations_are_taken_exactly_when_they_fit((node, demand, needs) in arb_node_and_demand()) {
        let mut ledger: Ledger = [node.clone()].into_iter().collect();
        let fits = model_fit(&node, &needs, STALE_AFTER).is_ok();
        let got = ledger.reserve("n", &demand, &opts());
        prop_assert_eq!(got.is_ok(), fits, "{:?}", got);
        let after = ledger.node("n").unwrap();
        for (before, now) in node.pools.iter().zip(&after.pools) {
            let added = if fits { needs.get(before.name.as_str()).copied().unwrap_or(0) } else { 0 };
            prop_assert_eq!(i128::from(now.reserved.0), i128::from(before.reserved.0) + added);
            prop_assert_eq!(now.allocated, before.allocated);
        }
    }

    /// Any interleaving of reserve, allocate, commit, unreserve and release, with sizes at
    /// the model's free space, a byte either side or anything: a demand that fits is
    /// accepted, one that does not is refused, the counters are the model's after every
    /// step, and no pool is ever promised more than its allocatable bytes.
    #[test]
    fn no_overcommit_and_every_fitting_demand_is_taken(
        caps in prop::collection::vec(0u64..=(1 << 36), 1..4),
        ops in prop::collection::vec((0u8..5, 0usize..4, prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::MAX)], 0u64..=(1 << 35)), 1..200),
    ) {
        let opts = opts();
        let mut ledger: Ledger = caps
            .iter()
            .enumerate()
            .map(|(i, &c)| NodeState::new(format!("n{i}"), vec![PoolState::new("default", Driver::Btrfs, Bytes(c))]))
            .collect();
        // The model: per node its capacity, allocated and reserved bytes.
        let mut model: Vec<(i128, i128, i128)> = caps.iter().map(|&c| (i128::from(c), 0, 0)).collect();
        let mut reserved: Vec<(usize, u64)> = Vec::new();
        let mut allocated: Vec<(usize, u64)> = Vec::new();
        for (op, idx, nudge, any) in ops {
            let i = idx % caps.len();
            let node = format!("n{i}");
            let (cap, alloc, res) = model[i];
            let room = (cap - alloc - res).max(0);
            let bytes = if nudge == i64::MAX { any } else { u64::try_from((room + i128::from(nudge)).max(0)).unwrap() };
            let d = |b: u64| Demand::from_claims([("default", Bytes(b))]).unwrap();
            let fits = i128::from(bytes) <= room;
            match op {
                0 | 1 => {
                    let got = if op == 0 { ledger.reserve(&node, &d(bytes), &opts) } else { ledger.allocate(&node, &d(bytes), &opts) };
                    prop_assert_eq!(got.is_ok(), fits, "{} bytes on {} with {} free: {:?}", bytes, node, room, got);
                    if fits {
                        if op == 0 {
                            model[i].2 += i128::from(bytes);
                            reserved.push((i, bytes));
                        } else {
                            model[i].1 += i128::from(bytes);
                            allocated.push((i, bytes));
                        }
                    }
                }
                2 => if let Some((n, b)) = reserved.pop() {
                    ledger.commit(&format!("n{n}"), &d(b)).unwrap();
                    model[n].2 -= i128::from(b);
                    model[n].1 += i128::from(b);
                    allocated.push((n, b));
                },
                3 => if let Some((n, b)) = allocated.pop() {
                    ledger.release(&format!("n{n}"), &d(b)).unwrap();
                    model[n].1 -= i128::from(b);
                },
                _ => if let Some((n, b)) = reserved.pop() {
                    ledger.unreserve(&format!("n{n}"), &d(b)).unwrap();
                    model[n].2 -= i128::from(b);
                },
            }
            for (j, (cap, alloc, res)) in model.iter().enumerate() {
                let p = &ledger.node(&format!("n{j}")).unwrap().pools[0];
                prop_assert_eq!(i128::from(p.allocated.0), *alloc);
                prop_assert_eq!(i128::from(p.reserved.0), *res);
                prop_assert!(alloc + res <= *cap, "n{} promised {} of {}", j, alloc + res, cap);
            }
        }
    }
}
