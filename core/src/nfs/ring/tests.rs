use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// A new seed every run, so that runs together cover more rings than any one does;
/// `STOWAGE_RING_SEED=<n>` replays one. The seed is printed (shown with a failing test's
/// output), so a failure can be replayed.
fn config(cases: u32) -> Config {
    let seed = std::env::var("STOWAGE_RING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        });
    eprintln!("ring proptest seed: STOWAGE_RING_SEED={seed}");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// The ring's documented hash, written out apart from `stable_hash`: FNV-1a (64 bit) over
/// the bytes, then MurmurHash3's `fmix64`. Held to the golden values below.
fn model_hash(bytes: &[u8]) -> u64 {
    model_fmix(model_fnv(FNV_OFFSET, bytes))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a from `h` (the offset basis, or a running hash), over `bytes`.
fn model_fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn model_fmix(mut k: u64) -> u64 {
    k = (k ^ (k >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    k = (k ^ (k >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A key's walk as the ring's module documentation describes it, computed apart from
/// [`Ring`]: of `servers` (name, weight), server `i` of `n` has
/// `round(POINTS_PER_SERVER × n × wᵢ / Σw)` points (at least 1, at most 64 ×
/// POINTS_PER_SERVER) at the hash of `"<name>#<j>"`, j = 0, 1, …; the walk visits every
/// server once, in the order its first point comes clockwise from the key's hash (at it or
/// after, wrapping past the top), equal positions by name. No ring is built: each server's
/// nearest point is found by hashing them all.
fn model_walk(servers: &[(String, u64)], key: &str) -> Vec<usize> {
    let k = model_hash(key.as_bytes());
    let n = servers.len() as u128;
    let total: u128 = servers.iter().map(|(_, w)| u128::from(*w)).sum();
    let most = u128::from(POINTS_PER_SERVER) * 64;
    let mut order: Vec<(u64, &str, usize)> = servers
        .iter()
        .enumerate()
        .map(|(i, (name, w))| {
            // Rounded half up: ⌊(2·P·n·w + Σw) / (2·Σw)⌋.
            let exact =
                (2 * u128::from(POINTS_PER_SERVER) * n * u128::from(*w) + total) / (2 * total);
            let count = u64::try_from(exact.clamp(1, most)).unwrap();
            // FNV-1a runs over the bytes in order: "<name>#" once, then each j's digits.
            let stem = model_fnv(model_fnv(FNV_OFFSET, name.as_bytes()), b"#");
            let mut nearest = u64::MAX;
            let mut digits = [0u8; 20];
            for j in 0..count {
                let mut start = digits.len();
                let mut v = j;
                loop {
                    start -= 1;
                    digits[start] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                nearest =
                    nearest.min(model_fmix(model_fnv(stem, &digits[start..])).wrapping_sub(k));
            }
            (nearest, name.as_str(), i)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// One server's state for [`place_model`]: its status (`None`: no load reported), its
/// allocation and its export's free space.
type ModelLoad = (Option<Status>, u64, Option<u64>);

/// Whether a server in state `load` may take a claim of `size` at all (bounds aside):
/// it reported a load, is ready, and has at least `size` free where that is known.
fn takes(load: &ModelLoad, size: u64) -> bool {
    matches!(load, (Some(Status::Ready), _, avail) if avail.is_none_or(|a| a >= size))
}

/// The loads handed to `place` for the model's: servers without a reported load are left
/// out at the end of the list and reported unreachable before it.
fn loads_of(model: &[ModelLoad]) -> Vec<ServerLoad> {
    let mut loads: Vec<ServerLoad> = model
        .iter()
        .map(|(status, allocated, avail)| ServerLoad {
            status: status.clone().unwrap_or(Status::Unreachable {
                reason: "no state".into(),
            }),
            allocated: Bytes(*allocated),
            available: avail.map(Bytes),
        })
        .collect();
    while loads.last().is_some() && model[loads.len() - 1].0.is_none() {
        loads.pop();
    }
    loads
}

/// A server's status: ready mostly, else draining, unreachable or with no load reported.
fn arb_status() -> impl Strategy<Value = Option<Status>> {
    prop_oneof![
        4 => Just(Some(Status::Ready)),
        1 => Just(Some(Status::Draining)),
        1 => Just(Some(Status::Unreachable { reason: "stale file handle".into() })),
        1 => Just(None),
    ]
}

/// A server's status and its export's free space for claims of one size: unknown, or the
/// size nudged by a byte (`-1`: one byte short, so full).
fn arb_state() -> impl Strategy<Value = (Option<Status>, Option<i64>)> {
    (
        arb_status(),
        prop_oneof![Just(None), Just(Some(-1i64)), Just(Some(0)), Just(Some(1))],
    )
}

/// What `place` must choose, from the walk order (the model's, [`model_walk`]) and the
/// documented rules alone, in exact integer arithmetic: the first server on the walk that has a load, is ready, has at least
/// `size` free where that is known, and (with `eps_quarters`, ε = eps_quarters / 4) holds
/// less than its bound `(1+ε)·(A + max(size, 1))·wᵢ/W`, A and W summed over ready servers.
/// Returns the choice (or `None`) and the reason for each server passed by.
fn place_model(
    walk: &[usize],
    weights: &[u64],
    loads: &[ModelLoad],
    size: u64,
    eps_quarters: Option<u64>,
) -> (Option<usize>, Vec<(usize, &'static str)>) {
    let ready = |i: usize| matches!(loads.get(i), Some((Some(Status::Ready), _, _)));
    let a: u128 = (0..weights.len())
        .filter(|&i| ready(i))
        .map(|i| u128::from(loads[i].1))
        .sum();
    let w: u128 = (0..weights.len())
        .filter(|&i| ready(i))
        .map(|i| u128::from(weights[i]))
        .sum();
    let mut skipped = Vec::new();
    for &i in walk {
        let reason = match loads.get(i) {
            None | Some((None, _, _)) => Some("Unreachable"),
            Some((Some(Status::Draining), _, _)) => Some("Draining"),
            Some((Some(Status::Unreachable { .. }), _, _)) => Some("Unreachable"),
            Some((Some(Status::Ready), _, Some(avail))) if *avail < size => Some("Full"),
            Some((Some(Status::Ready), allocated, _)) => match eps_quarters {
                // allocated ≥ (4+q)/4 · (A+s) · wᵢ / W, multiplied out.
                Some(q)
                    if u128::from(*allocated) * 4 * w
                        >= u128::from(4 + q)
                            * (a + u128::from(size.max(1)))
                            * u128::from(weights[i]) =>
                {
                    Some("AtLoadBound")
                }
                _ => None,
            },
        };
        match reason {
            None => return (Some(i), skipped),
            Some(r) => skipped.push((i, r)),
        }
    }
    (None, skipped)
}

fn equal(names: &[String]) -> Ring {
    Ring::new(
        names
            .iter()
            .map(|n| RingServer::new(n.as_str(), 100))
            .collect(),
    )
    .unwrap()
}

fn keys(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("ns-{}/claim-{i}", i % 97))
        .collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn the_stable_hash_never_changes() {
    // Golden values, from an independent implementation: changing them re-places fresh
    // claims between releases.
    assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(stable_hash(b"a"), GOLDEN_A);
    assert_eq!(stable_hash(b"default/data"), GOLDEN_DEFAULT_DATA);
    assert_ne!(stable_hash(b"a/bc"), stable_hash(b"ab/c"));
}

const GOLDEN_A: u64 = 0x82a2_a958_a9be_ce5b;
const GOLDEN_DEFAULT_DATA: u64 = 0x7679_1c41_4ee9_de69;

/// The model's hash and walk, written from the documentation alone, meet the same golden
/// values as the ring.
#[test]
fn the_model_hash_and_walk_are_the_documented_ones() {
    assert_eq!(model_hash(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(model_hash(b"a"), GOLDEN_A);
    assert_eq!(model_hash(b"default/data"), GOLDEN_DEFAULT_DATA);
    let servers = [
        ("nfs-a".to_string(), 1000),
        ("nfs-b".to_string(), 2000),
        ("nfs-c".to_string(), 1000),
    ];
    let got: Vec<&str> = GOLDEN_KEYS
        .iter()
        .map(|k| servers[model_walk(&servers, k)[0]].0.as_str())
        .collect();
    assert_eq!(got, GOLDEN_PLACEMENTS);
}

#[test]
fn the_same_servers_place_the_same_keys_in_any_order_and_any_run() {
    let servers = vec![
        RingServer::new("nfs-a", 1000),
        RingServer::new("nfs-b", 2000),
        RingServer::new("nfs-c", 1000),
    ];
    let ring = Ring::new(servers.clone()).unwrap();
    let mut reversed = servers.clone();
    reversed.reverse();
    let other = Ring::new(reversed).unwrap();
    for key in keys(2000) {
        let a = &ring.servers()[ring.primary(&key)].name;
        let b = &other.servers()[other.primary(&key)].name;
        assert_eq!(a, b, "{key}");
    }
    // Golden placements: the same inputs give these servers in every process and release.
    let got: Vec<&str> = GOLDEN_KEYS
        .iter()
        .map(|k| ring.servers()[ring.primary(k)].name.as_str())
        .collect();
    assert_eq!(got, GOLDEN_PLACEMENTS);
}

/// The keys [`GOLDEN_PLACEMENTS`] places.
const GOLDEN_KEYS: [&str; 5] = [
    "default/data",
    "shop/db-0",
    "shop/db-1",
    "kube-system/x",
    "a/b",
];

/// Computed by an independent implementation of the documented scheme (FNV-1a + fmix64,
/// `round(4096 × n × w / Σw)` points at `"<name>#<j>"`, first point at or after the key),
/// for [`GOLDEN_KEYS`] on nfs-a (weight 1000), nfs-b (2000) and nfs-c (1000).
const GOLDEN_PLACEMENTS: [&str; 5] = ["nfs-b", "nfs-c", "nfs-b", "nfs-b", "nfs-c"];

#[test]
fn equal_weights_give_every_server_the_same_number_of_points() {
    let ring = equal(&names("s", 5));
    assert_eq!(ring.point_count() as u64, 5 * POINTS_PER_SERVER);
    let shares = ring.shares();
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    for s in shares {
        assert!((s - 0.2).abs() < 0.2 * 0.1, "{s}");
    }
}

#[test]
fn the_walk_visits_every_server_once() {
    let ring = equal(&names("w", 7));
    let mut seen: Vec<usize> = ring.walk("ns/claim").collect();
    assert_eq!(seen.len(), 7);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 7);
    assert_eq!(ring.walk("ns/claim").next(), Some(ring.primary("ns/claim")));
}

#[test]
fn rings_refuse_no_servers_zero_weights_and_duplicate_names() {
    assert_eq!(Ring::new(vec![]).unwrap_err(), RingError::Empty);
    let e = Ring::new(vec![RingServer::new("a", 0)]).unwrap_err();
    assert!(e.to_string().contains("\"a\" has weight 0"), "{e}");
    let e = Ring::new(vec![RingServer::new("a", 1), RingServer::new("a", 2)]).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
}

#[test]
fn skipped_servers_carry_their_reasons_and_nothing_fitting_lists_them_all() {
    let ring = equal(&names("r", 4));
    let key = "ns/claim";
    let order: Vec<usize> = ring.walk(key).collect();
    let mut loads = vec![ServerLoad::ready(Bytes::ZERO); 4];
    loads[order[0]].status = Status::Draining;
    loads[order[1]].status = Status::Unreachable {
        reason: "stale file handle".to_string(),
    };
    loads[order[2]].available = Some(Bytes::gib(1));
    let choice = ring
        .place(key, Bytes::gib(5), &loads, Some(Epsilon::default()))
        .unwrap();
    assert_eq!(choice.server, order[3]);
    let reasons: Vec<&str> = choice.skipped.iter().map(|(_, s)| s.reason()).collect();
    assert_eq!(reasons, ["Draining", "Unreachable", "Full"]);
    assert_eq!(
        choice.skipped.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        order[..3]
    );

    loads[order[3]].available = Some(Bytes::ZERO);
    let err = ring
        .place(key, Bytes::gib(5), &loads, Some(Epsilon::default()))
        .unwrap_err();
    assert_eq!(err.reasons.len(), 4);
    let text = err.to_string();
    for (i, s) in ring.servers().iter().enumerate() {
        assert!(text.contains(&format!("{}: ", s.name)), "{i}: {text}");
    }
    assert!(text.contains("unreachable: stale file handle"), "{text}");
    assert!(text.contains("draining"), "{text}");
    assert!(
        text.contains("the claim needs 5Gi but the export has 1Gi free"),
        "{text}"
    );
}

#[test]
fn a_server_at_its_bound_is_skipped_for_the_next_one() {
    let ring = equal(&names("b", 2));
    let key = "ns/claim";
    let home = ring.primary(key);
    let other = 1 - home;
    let mut loads = vec![ServerLoad::ready(Bytes::ZERO); 2];
    loads[home].allocated = Bytes::gib(100);
    loads[other].allocated = Bytes::gib(50);
    // Bound of each: 1.25 × (150 + 10) / 2 = 100 GiB: home is at it.
    let choice = ring
        .place(key, Bytes::gib(10), &loads, Some(Epsilon::default()))
        .unwrap();
    assert_eq!(choice.server, other);
    match &choice.skipped[..] {
        [(idx, Skip::AtLoadBound { allocated, bound })] => {
            assert_eq!(*idx, home);
            assert_eq!(*allocated, Bytes::gib(100));
            assert_eq!(*bound, Bytes::gib(100));
        }
        other => panic!("{other:?}"),
    }
    // Without bounded loads the key goes home.
    assert_eq!(
        ring.place(key, Bytes::gib(10), &loads, None)
            .unwrap()
            .server,
        home
    );
    // A draining server's load does not count in the mean.
    loads[other].status = Status::Draining;
    assert_eq!(
        ring.place(key, Bytes::gib(10), &loads, Some(Epsilon::default()))
            .unwrap()
            .server,
        home
    );
}

#[test]
fn an_empty_cluster_and_zero_epsilon_still_place() {
    let ring = equal(&names("z", 3));
    let loads = vec![ServerLoad::ready(Bytes::ZERO); 3];
    let eps = Epsilon::new(0.0).unwrap();
    assert!(ring.place("a/b", Bytes::ZERO, &loads, Some(eps)).is_ok());
    assert!(
        ring.place("a/b", Bytes::tib(100), &loads, Some(eps))
            .is_ok()
    );
    assert!(Epsilon::new(-0.1).is_err());
    assert!(Epsilon::new(f64::NAN).is_err());
}

/// Whether a refusal of a claim of `size` was right: every server that may take it
/// ([`takes`]) is at its bound `(1+ε)·(A + max(size, 1))·wᵢ/W` (A and W over ready
/// servers), within a hair for rounding.
fn no_server_below_its_bound(weights: &[u64], model: &[ModelLoad], size: u64, eps: f64) -> bool {
    let ready = |l: &ModelLoad| matches!(l.0, Some(Status::Ready));
    let a: f64 = model.iter().filter(|l| ready(l)).map(|l| l.1 as f64).sum();
    let w: f64 = weights
        .iter()
        .zip(model)
        .filter(|(_, l)| ready(l))
        .map(|(w, _)| *w as f64)
        .sum();
    model.iter().zip(weights).all(|(l, wi)| {
        !takes(l, size)
            || l.1 as f64 >= (1.0 + eps) * (a + size.max(1) as f64) * *wi as f64 / w * (1.0 - 1e-12)
    })
}

proptest! {
    #![proptest_config(config(24))]

    /// Adding one ready server of equal weight to servers of any status and free space
    /// (claims of one size, bounded loads off): every key is placed on a server that may
    /// take it, none is refused while one may, every key that moves moves to the new
    /// server, and the keys that move are at most 1.1 × and more than 0.5 × 1/(e+1) of all,
    /// e the old servers that may take the claim.
    #[test]
    fn adding_a_server_moves_few_keys_and_only_to_it(
        prefix in "[a-z]{1,6}",
        states in prop::collection::vec(arb_state(), 1..=16),
        size in 1u64..=100,
    ) {
        let n = states.len();
        let before = names(&prefix, n);
        let mut after = before.clone();
        after.push(format!("{prefix}-new"));
        let (old, new) = (equal(&before), equal(&after));
        let mut model: Vec<ModelLoad> = states
            .iter()
            .map(|(status, nudge)| (status.clone(), 0, nudge.map(|d| size.saturating_add_signed(d))))
            .collect();
        let old_loads = loads_of(&model);
        model.push((Some(Status::Ready), 0, None));
        let new_loads = loads_of(&model);
        let e = model[..n].iter().filter(|l| takes(l, size)).count();
        let ks = keys(100_000);
        let mut moved = 0usize;
        for k in &ks {
            let a = old.place(k, Bytes(size), &old_loads, None).ok().map(|c| c.server);
            match a {
                Some(a) => prop_assert!(takes(&model[a], size), "key {} placed on server {}: {:?}", k, a, model[a]),
                None => prop_assert_eq!(e, 0, "key {} refused though {} servers may take it", k, e),
            }
            let b = new.place(k, Bytes(size), &new_loads, None);
            prop_assert!(b.is_ok(), "key {} refused with the new server ready: {:?}", k, b);
            let b = b.unwrap().server;
            prop_assert!(takes(&model[b], size), "key {} placed on server {}: {:?}", k, b, model[b]);
            if Some(b) != a {
                prop_assert_eq!(b, n, "key {} moved from {:?} to an old server", k, a);
                moved += 1;
            }
        }
        let fraction = moved as f64 / ks.len() as f64;
        let share = 1.0 / (e as f64 + 1.0);
        prop_assert!(fraction <= 1.1 * share, "moved {fraction} > 1.1 × {share} with {e} of {n} servers taking claims");
        prop_assert!(fraction > 0.5 * share, "the new server got too little: {fraction} with {e} of {n} servers taking claims");
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Without bounded loads, servers of any status and free space (claims of one size):
    /// every key goes to a server that may take it, and each such server's share of fresh
    /// keys is within 10 % of its share of their weight.
    #[test]
    fn weights_are_respected_within_ten_percent(
        prefix in "[a-z]{1,6}",
        servers in prop::collection::vec((1u64..=4, arb_state()), 2..=6),
        size in 1u64..=100,
    ) {
        let weights: Vec<u64> = servers.iter().map(|(w, _)| *w).collect();
        let ring = Ring::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| RingServer::new(format!("{prefix}-{i}"), *w * 250))
                .collect(),
        )
        .unwrap();
        let model: Vec<ModelLoad> = servers
            .iter()
            .map(|(_, (status, nudge))| (status.clone(), 0, nudge.map(|d| size.saturating_add_signed(d))))
            .collect();
        let loads = loads_of(&model);
        let taking_w: u64 = weights.iter().zip(&model).filter(|(_, l)| takes(l, size)).map(|(w, _)| *w).sum();
        let ks = keys(100_000);
        let mut counts = vec![0usize; weights.len()];
        for k in &ks {
            match ring.place(k, Bytes(size), &loads, None) {
                Ok(c) => {
                    prop_assert!(takes(&model[c.server], size), "key {} placed on server {}: {:?}", k, c.server, model[c.server]);
                    counts[c.server] += 1;
                }
                Err(none) => prop_assert_eq!(taking_w, 0, "key {} refused though servers may take it: {}", k, none),
            }
        }
        for (i, c) in counts.iter().enumerate() {
            if !takes(&model[i], size) {
                continue;
            }
            let want = weights[i] as f64 / taking_w as f64;
            let got = *c as f64 / ks.len() as f64;
            prop_assert!((got - want).abs() <= 0.1 * want,
                "server {i} (weight {}) got {got}, want {want} ± 10 %", weights[i]);
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// With bounded loads and claims of one size, servers of any status (those not ready
    /// holding some claims already, which must not count) and free space that runs out as
    /// claims land: each claim goes to a ready server with room, a claim is refused only
    /// when every such server is at its bound, and no ready server ever holds more than
    /// ⌈(1+ε) × its weighted mean⌉ claims (over the ready servers), at every step.
    #[test]
    fn bounded_loads_cap_every_server(
        prefix in "[a-z]{1,6}",
        servers in prop::collection::vec((1u64..=4, arb_status(), 0u64..=50, prop::option::of(0u64..=100)), 2..=8),
        eps in 0.0f64..=1.0,
        claims in 50usize..=600,
    ) {
        let weights: Vec<u64> = servers.iter().map(|(w, ..)| *w).collect();
        let ring = Ring::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| RingServer::new(format!("{prefix}-{i}"), *w))
                .collect(),
        )
        .unwrap();
        let mut model: Vec<ModelLoad> = servers
            .iter()
            .map(|(_, status, held, room)| {
                let held = if *status == Some(Status::Ready) { 0 } else { *held };
                (status.clone(), held, *room)
            })
            .collect();
        let mut loads = loads_of(&model);
        let ready_w: u64 = weights.iter().zip(&model).filter(|(_, l)| l.0 == Some(Status::Ready)).map(|(w, _)| *w).sum();
        let eps = Epsilon::new(eps).unwrap();
        let mut placed = 0u64;
        for m in 0..claims {
            let key = format!("ns-{}/c-{m}", m % 13);
            match ring.place(&key, Bytes(1), &loads, Some(eps)) {
                Ok(c) => {
                    let i = c.server;
                    prop_assert!(takes(&model[i], 1), "claim {} placed on server {}: {:?}", m, i, model[i]);
                    model[i].1 += 1;
                    model[i].2 = model[i].2.map(|a| a - 1);
                    loads[i].allocated.0 += 1;
                    loads[i].available = model[i].2.map(Bytes);
                    placed += 1;
                }
                Err(none) => prop_assert!(no_server_below_its_bound(&weights, &model, 1, eps.get()),
                    "claim {} refused while a server may take it: {}; {:?}", m, none, model),
            }
            for (i, l) in model.iter().enumerate() {
                if l.0 != Some(Status::Ready) {
                    continue;
                }
                let cap = ((1.0 + eps.get()) * placed as f64 * weights[i] as f64 / ready_w as f64).ceil();
                prop_assert!(l.1 as f64 <= cap + 1e-9,
                    "server {i} holds {} > {cap} after {placed} claims", l.1);
            }
        }
    }

    /// With claims of mixed sizes, equal weights, servers of any status and free space
    /// that runs out: each claim goes to a ready server with room, is refused only when
    /// every such server is at its bound, and a ready server exceeds (1+ε) × the ready
    /// servers' mean by at most one claim.
    #[test]
    fn bounded_loads_cap_bytes_within_one_claim(
        prefix in "[a-z]{1,6}",
        servers in prop::collection::vec((arb_status(), 0u64..=500, prop::option::of(0u64..=4000)), 2..=8),
        sizes in prop::collection::vec(1u64..=100, 50..=400),
    ) {
        let n = servers.len();
        let ring = equal(&names(&prefix, n));
        let mut model: Vec<ModelLoad> = servers
            .iter()
            .map(|(status, held, room)| {
                let held = if *status == Some(Status::Ready) { 0 } else { held * Bytes::GI };
                (status.clone(), held, room.map(|r| r * Bytes::GI))
            })
            .collect();
        let mut loads = loads_of(&model);
        let ready = model.iter().filter(|l| l.0 == Some(Status::Ready)).count();
        let eps = Epsilon::default();
        let mut total = 0u64;
        for (m, size) in sizes.iter().enumerate() {
            let key = format!("ns/c-{m}");
            let bytes = size * Bytes::GI;
            match ring.place(&key, Bytes(bytes), &loads, Some(eps)) {
                Ok(c) => {
                    let i = c.server;
                    prop_assert!(takes(&model[i], bytes), "claim {} of {} GiB placed on server {}: {:?}", m, size, i, model[i]);
                    model[i].1 += bytes;
                    model[i].2 = model[i].2.map(|a| a - bytes);
                    loads[i].allocated.0 += bytes;
                    loads[i].available = model[i].2.map(Bytes);
                    total += size;
                }
                Err(none) => prop_assert!(no_server_below_its_bound(&vec![1; n], &model, bytes, eps.get()),
                    "claim {} of {} GiB refused while a server may take it: {}; {:?}", m, size, none, model),
            }
        }
        let max_size = *sizes.iter().max().unwrap() as f64;
        let mean = total as f64 / ready.max(1) as f64;
        for l in model.iter().filter(|l| l.0 == Some(Status::Ready)) {
            let gib = (l.1 / Bytes::GI) as f64;
            prop_assert!(gib <= (1.0 + eps.get()) * mean + max_size, "{gib} vs mean {mean}");
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Servers of any status (ready, draining, unreachable, or no load reported at all),
    /// with and without a free-space limit at the claim's size, a byte either side, or
    /// anything, loads near their bounds: `place` walks the servers in the model's order
    /// ([`model_walk`]), chooses what the model chooses and passes the others by for the
    /// model's reasons.
    #[test]
    fn placement_agrees_with_the_model_for_any_statuses_and_limits(
        prefix in "[a-z]{1,6}",
        servers in prop::collection::vec(
            (
                1u64..=4,
                arb_status(),
                0u64..=60,
                prop_oneof![Just(None), Just(Some(-1i64)), Just(Some(0)), Just(Some(1)), (0i64..=100).prop_map(|v| Some(v + 1000))],
            ),
            1..=8,
        ),
        size in 0u64..=20,
        eps_quarters in prop::option::of(0u64..=4),
        key in "[a-z]{1,8}/[a-z0-9-]{1,12}",
    ) {
        let named: Vec<(String, u64)> = servers
            .iter()
            .enumerate()
            .map(|(i, (w, ..))| (format!("{prefix}-{i}"), *w))
            .collect();
        let ring = Ring::new(named.iter().map(|(n, w)| RingServer::new(n.as_str(), *w)).collect()).unwrap();
        let weights: Vec<u64> = servers.iter().map(|(w, ..)| *w).collect();
        let model_loads: Vec<ModelLoad> = servers
            .iter()
            .map(|(_, status, allocated, limit)| {
                // A limit is the claim's size nudged by a byte, or anything (≥ 1000 - 1000).
                let avail = limit.map(|l| if l >= 1000 { (l - 1000) as u64 } else { size.saturating_add_signed(l) });
                (status.clone(), *allocated, avail)
            })
            .collect();
        let loads = loads_of(&model_loads);
        let walk = model_walk(&named, &key);
        prop_assert_eq!(ring.walk(&key).collect::<Vec<_>>(), walk.clone(), "the walk of {}", key);
        let eps = eps_quarters.map(|q| Epsilon::new(q as f64 / 4.0).unwrap());
        let (want, want_skipped) = place_model(&walk, &weights, &model_loads, size, eps_quarters);
        match ring.place(&key, Bytes(size), &loads, eps) {
            Ok(choice) => {
                prop_assert_eq!(Some(choice.server), want);
                let got: Vec<(usize, &str)> = choice.skipped.iter().map(|(i, s)| (*i, s.reason())).collect();
                prop_assert_eq!(got, want_skipped);
            }
            Err(none) => {
                prop_assert_eq!(None, want, "{}", none);
                let got: Vec<(String, &str)> = none.reasons.iter().map(|(n, s)| (n.clone(), s.reason())).collect();
                let want: Vec<(String, &str)> = want_skipped.iter().map(|(i, r)| (ring.servers()[*i].name.clone(), *r)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
