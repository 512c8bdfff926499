//! Index and policy tests: objects are applied directly, as linkerd's index tests do.

// clippy's allow-unwrap-in-tests covers `#[test]` functions, not this file's helpers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use parking_lot::RwLock;
use stowage_extender::{Failure, FilterVerdict, Policy};

use super::*;
use crate::api::local_volume::{ClaimRef, LocalVolumeSpec, OnDelete};
use crate::api::storage_node::{PoolStatus, StorageNodeSpec, StorageNodeStatus};
use crate::ledger::FitOptions;

const NOW: &str = "2026-01-01T00:00:00Z";
const STALE: &str = "2025-12-31T23:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// A StorageNode with ready btrfs pools `(name, capacity, agent-reported allocated)`.
fn sn(name: &str, heartbeat: Option<&str>, pools: &[(&str, Bytes, Bytes)]) -> StorageNode {
    let mut node = StorageNode::new(name, StorageNodeSpec {});
    node.status = Some(StorageNodeStatus {
        pools: pools
            .iter()
            .map(|&(pool, cap, alloc)| PoolStatus {
                name: pool.into(),
                driver: "btrfs".into(),
                capacity_bytes: cap.0,
                allocatable_bytes: cap.0,
                allocated_bytes: alloc.0,
                available_bytes: cap.0,
                ready: true,
                ..Default::default()
            })
            .collect(),
        heartbeat_time: heartbeat.map(str::to_string),
        ..Default::default()
    });
    node
}

fn lv(uid: &str, node: &str, pool: &str, size: Bytes) -> LocalVolume {
    LocalVolume::new(
        &format!("pvc-{uid}"),
        LocalVolumeSpec {
            node_name: node.into(),
            pool: pool.into(),
            size_bytes: size.0,
            claim: ClaimRef {
                namespace: "apps".into(),
                name: uid.into(),
                uid: uid.into(),
            },
            on_delete: OnDelete::Delete,
        },
    )
}

fn class(name: &str, provisioner: &str, params: &[(&str, &str)]) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: provisioner.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A claim in namespace `apps` whose UID is its name.
fn pvc(
    name: &str,
    class: &str,
    size: &str,
    selected: Option<&str>,
    volume: Option<&str>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            uid: Some(name.into()),
            annotations: selected.map(|n| {
                BTreeMap::from([(names::ANNOTATION_SELECTED_NODE.to_string(), n.to_string())])
            }),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some(class.into()),
            volume_name: volume.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(claims: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some("apps".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(
                claims
                    .iter()
                    .map(|c| Volume {
                        name: format!("v-{c}"),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: c.to_string(),
                            read_only: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Classes `local` (pool default, spread), `packed` (binpack), `fast` (pool fast), `bad`
/// (invalid placement) and `nfs` (not ours); nodes `n1` and `n2` with 100Gi in `default`,
/// `n2` also 100Gi in `fast`; `old` with a stale heartbeat.
fn cluster() -> ClusterIndex {
    let mut idx = ClusterIndex::new();
    idx.reset_storage_classes([
        class("local", names::PROVISIONER_LOCAL, &[]),
        class(
            "packed",
            names::PROVISIONER_LOCAL,
            &[("placement", "binpack")],
        ),
        class("fast", names::PROVISIONER_LOCAL, &[("pool", "fast")]),
        class("bad", names::PROVISIONER_LOCAL, &[("placement", "random")]),
        class("nfs", names::PROVISIONER_NFS, &[]),
    ]);
    let g100 = Bytes::gib(100);
    idx.reset_storage_nodes([
        sn("n1", Some(NOW), &[("default", g100, Bytes::ZERO)]),
        sn(
            "n2",
            Some(NOW),
            &[("default", g100, Bytes::ZERO), ("fast", g100, Bytes::ZERO)],
        ),
        sn("old", Some(STALE), &[("default", g100, Bytes::ZERO)]),
    ]);
    idx
}

fn policy(idx: ClusterIndex) -> StowagePolicy {
    StowagePolicy::new(Arc::new(RwLock::new(idx)), FitOptions::default()).with_clock(now)
}

fn pool_of(idx: &ClusterIndex, node: &str, pool: &str) -> (Bytes, Bytes) {
    let n = idx.node_state(node, now()).unwrap();
    let p = n.pool(pool).unwrap();
    (p.allocated, p.reserved)
}

#[test]
fn local_volumes_add_up_to_allocated_and_the_agents_larger_figure_wins() {
    let mut idx = cluster();
    idx.apply_local_volume(lv("a", "n1", "default", Bytes::gib(10)));
    idx.apply_local_volume(lv("b", "n1", "default", Bytes::gib(20)));
    idx.apply_local_volume(lv("c", "n2", "fast", Bytes::gib(7)));
    assert_eq!(pool_of(&idx, "n1", "default").0, Bytes::gib(30));
    assert_eq!(pool_of(&idx, "n2", "default").0, Bytes::ZERO);
    assert_eq!(pool_of(&idx, "n2", "fast").0, Bytes::gib(7));

    // The agent knows of more (say, a volume whose object is already gone).
    let g100 = Bytes::gib(100);
    idx.apply_storage_node(sn("n1", Some(NOW), &[("default", g100, Bytes::gib(50))]));
    assert_eq!(pool_of(&idx, "n1", "default").0, Bytes::gib(50));

    idx.delete_local_volume("pvc-c");
    assert_eq!(pool_of(&idx, "n2", "fast").0, Bytes::ZERO);
}

#[test]
fn reserved_demand_counts_against_the_selected_node_only_while_it_has_no_volume() {
    // (claim, n1 reserved after applying it)
    let cases = [
        (pvc("r", "local", "10Gi", Some("n1"), None), Bytes::gib(10)),
        (pvc("unplaced", "local", "10Gi", None, None), Bytes::ZERO),
        (pvc("other", "local", "10Gi", Some("n2"), None), Bytes::ZERO),
        (
            pvc("bound", "local", "10Gi", Some("n1"), Some("pv-x")),
            Bytes::ZERO,
        ),
        (pvc("nfs", "nfs", "10Gi", Some("n1"), None), Bytes::ZERO),
        (
            pvc("nosuchclass", "gone", "10Gi", Some("n1"), None),
            Bytes::ZERO,
        ),
        (
            pvc("hasvolume", "local", "10Gi", Some("n1"), None),
            Bytes::ZERO,
        ),
    ];
    for (claim, want) in cases {
        let name = claim.metadata.name.clone().unwrap();
        let mut idx = cluster();
        idx.apply_local_volume(lv("hasvolume", "n2", "default", Bytes::gib(10)));
        idx.apply_claim(claim);
        assert_eq!(pool_of(&idx, "n1", "default").1, want, "{name}");
        assert_eq!(idx.ledger(now()).len(), 3, "{name}");
    }
}

fn rejected<'n>(v: &FilterVerdict<'n>) -> Vec<(&'n str, &'static str)> {
    match v {
        FilterVerdict::PassAll | FilterVerdict::PassThrough => Vec::new(),
        FilterVerdict::Reject(r) => {
            // Capacity cannot be freed by preemption; a claim not seen yet is a moment away.
            for r in r {
                let want = if r.kind == super::policy::NOT_SEEN_YET {
                    Failure::Unschedulable
                } else {
                    Failure::UnschedulableAndUnresolvable
                };
                assert_eq!(r.failure, want, "{r:?}");
            }
            r.iter().map(|r| (r.node, r.kind)).collect()
        }
        FilterVerdict::Narrow { .. } => panic!("narrowed without keep_best: {v:?}"),
        FilterVerdict::Error(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn filter_decides_by_the_pods_unbound_local_claims() {
    const ALL: &[&str] = &["n1", "n2", "old", "ghost"];
    // (what it shows, claims in the cache, the pod's claims, rejected nodes)
    type Case = (
        &'static str,
        Vec<PersistentVolumeClaim>,
        Vec<&'static str>,
        Vec<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "a pod without claims passes everywhere",
            vec![],
            vec![],
            vec![],
        ),
        (
            "a claim not in the cache yet turns every node down for now",
            vec![],
            vec!["missing"],
            ALL.iter().map(|n| (*n, "not_seen_yet")).collect(),
        ),
        (
            "a claim whose class is not in the cache yet turns every node down for now",
            vec![pvc("c", "gone", "10Gi", None, None)],
            vec!["c"],
            ALL.iter().map(|n| (*n, "not_seen_yet")).collect(),
        ),
        (
            "a claim of another provisioner passes through",
            vec![pvc("c", "nfs", "1Ei", None, None)],
            vec!["c"],
            vec![],
        ),
        (
            "bound claims are left to the scheduler",
            vec![pvc("c", "local", "1Ei", None, Some("pv-1"))],
            vec!["c"],
            vec![],
        ),
        (
            "a fitting claim rejects only stale and unreported nodes",
            vec![pvc("c", "local", "10Gi", None, None)],
            vec!["c"],
            vec![("old", "stale"), ("ghost", "no_report")],
        ),
        (
            "a zero-size claim still needs the pool and a live agent",
            vec![pvc("c", "fast", "0", None, None)],
            vec!["c"],
            vec![
                ("n1", "unknown_pool"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "an enormous claim fits nowhere",
            vec![pvc("c", "local", "1Ei", None, None)],
            vec!["c"],
            vec![
                ("n1", "insufficient_capacity"),
                ("n2", "insufficient_capacity"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "a claim without a class is skipped, the others still count",
            vec![
                {
                    let mut c = pvc("static", "", "1Ei", None, None);
                    c.spec.as_mut().unwrap().storage_class_name = None;
                    c
                },
                pvc("c", "local", "1Ei", None, None),
            ],
            vec!["static", "c"],
            vec![
                ("n1", "insufficient_capacity"),
                ("n2", "insufficient_capacity"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "claims in two pools need a node with both",
            vec![
                pvc("d", "local", "10Gi", None, None),
                pvc("f", "fast", "10Gi", None, None),
            ],
            vec!["d", "f"],
            vec![
                ("n1", "unknown_pool"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "a pod's claims are summed per pool",
            vec![
                pvc("a", "local", "60Gi", None, None),
                pvc("b", "local", "60Gi", None, None),
            ],
            vec!["a", "b"],
            vec![
                ("n1", "insufficient_capacity"),
                ("n2", "insufficient_capacity"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "another pod's reservation counts against the selected node",
            vec![
                pvc("theirs", "local", "95Gi", Some("n1"), None),
                pvc("c", "local", "10Gi", None, None),
            ],
            vec!["c"],
            vec![
                ("n1", "insufficient_capacity"),
                ("old", "stale"),
                ("ghost", "no_report"),
            ],
        ),
        (
            "the pod's own reservation is not counted twice",
            vec![pvc("mine", "local", "95Gi", Some("n1"), None)],
            vec!["mine"],
            vec![("old", "stale"), ("ghost", "no_report")],
        ),
    ];
    for (what, claims, pod_claims, want) in cases {
        let mut idx = cluster();
        idx.reset_claims(claims);
        let verdict = policy(idx).filter(&pod(&pod_claims), ALL);
        assert_eq!(rejected(&verdict), want, "{what}");
    }
}

#[test]
fn pods_stowage_does_not_judge_pass_through_and_judged_pods_that_fit_pass_all() {
    let mut nameless = pvc("static", "", "1Ei", None, None);
    nameless.spec.as_mut().unwrap().storage_class_name = None;
    let mut idx = cluster();
    idx.reset_claims([
        pvc("unknown-class", "gone", "10Gi", None, None),
        pvc("nfs", "nfs", "1Ei", None, None),
        pvc("bound", "local", "1Ei", None, Some("pv-1")),
        nameless,
        pvc("fits", "local", "10Gi", None, None),
    ]);
    let policy = policy(idx);
    for claims in [&[][..], &["nfs"], &["bound"], &["static"]] {
        let verdict = policy.filter(&pod(claims), &["n1", "n2"]);
        assert_eq!(verdict, FilterVerdict::PassThrough, "{claims:?}");
    }
    // Not judged yet either, but not passed: the scheduler retries once the watch caught up.
    for claims in [&["missing"][..], &["unknown-class"], &["fits", "missing"]] {
        let verdict = policy.filter(&pod(claims), &["n1", "n2"]);
        assert_eq!(
            rejected(&verdict),
            [("n1", "not_seen_yet"), ("n2", "not_seen_yet")],
            "{claims:?}"
        );
    }
    let verdict = policy.filter(&pod(&["fits", "static"]), &["n1", "n2"]);
    assert_eq!(verdict, FilterVerdict::PassAll);
}

#[test]
fn the_pods_own_volume_in_the_making_is_not_counted_twice() {
    let mut idx = cluster();
    idx.apply_claim(pvc("mine", "local", "95Gi", Some("n1"), None));
    idx.apply_local_volume(lv("mine", "n1", "default", Bytes::gib(95)));
    assert_eq!(
        pool_of(&idx, "n1", "default"),
        (Bytes::gib(95), Bytes::ZERO)
    );
    let verdict = policy(idx).filter(&pod(&["mine"]), &["n1"]);
    assert_eq!(verdict, FilterVerdict::PassAll);
}

#[test]
fn a_pod_with_a_volume_made_on_a_node_is_sent_nowhere_else() {
    let mut idx = cluster();
    // "made" has its volume on n1 and no selected-node (made with a sibling's, whose
    // binding cycle then failed); "todo" has nothing yet and fits either node.
    idx.apply_claim(pvc("made", "local", "10Gi", None, None));
    idx.apply_claim(pvc("todo", "local", "10Gi", None, None));
    idx.apply_local_volume(lv("made", "n1", "default", Bytes::gib(10)));
    let verdict = policy(idx).filter(&pod(&["made", "todo"]), &["n1", "n2"]);
    assert_eq!(rejected(&verdict), [("n2", "volume_elsewhere")]);
    let FilterVerdict::Reject(r) = &verdict else {
        unreachable!()
    };
    assert!(
        &*r[0].reason == "node(s) were not n1, where a volume of the pod's claims is made already",
        "{}",
        r[0].reason
    );
    // A selected node without a volume pins nothing: the scheduler may still move it.
    let mut idx = cluster();
    idx.apply_claim(pvc("chosen", "local", "10Gi", Some("n1"), None));
    let verdict = policy(idx).filter(&pod(&["chosen"]), &["n1", "n2"]);
    assert_eq!(verdict, FilterVerdict::PassAll);
}

/// kube-scheduler counts the nodes per distinct reason in the pod's FailedScheduling Event,
/// whose message the API server refuses over 1,024 characters: nodes that fail the same way
/// must get the same reason, whatever their own free space, heartbeat or messages.
#[test]
fn nodes_that_fail_the_same_way_get_one_reason_whatever_their_own_figures() {
    let mut idx = cluster();
    let mut nodes: Vec<StorageNode> = (0..40_u64)
        .map(|i| {
            let cap = Bytes((10 << 30) + (100 << 20) * i);
            sn(
                &format!("m{i:02}"),
                Some(NOW),
                &[("default", cap, Bytes::ZERO)],
            )
        })
        .collect();
    nodes.push(sn(
        "nopool",
        Some(NOW),
        &[("other", Bytes::gib(500), Bytes::ZERO)],
    ));
    nodes.push(sn(
        "old",
        Some(STALE),
        &[("default", Bytes::gib(500), Bytes::ZERO)],
    ));
    idx.reset_storage_nodes(nodes);
    idx.apply_claim(pvc("c", "local", "20Gi", None, None));
    let names: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    let mut candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    candidates.extend(["nopool", "old"]);
    let FilterVerdict::Reject(r) = policy(idx).filter(&pod(&["c"]), &candidates) else {
        panic!("every node must be turned down");
    };
    // kube-scheduler's FitError: "0/N nodes are available: <count> <reason>, …." by reason.
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for rejection in &r {
        *counts.entry(rejection.reason.as_ref()).or_default() += 1;
    }
    let lines: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let message = format!("0/42 nodes are available: {}.", lines.join(", "));
    assert_eq!(
        lines,
        [
            "1 node(s) had a stowage agent report older than 45s (their capacity is unknown)",
            "1 node(s) had no storage pool \"default\"",
            "40 node(s) had too little free space in storage pool \"default\" (the pod's claims \
             need 20Gi; the most free on any of them is 13.8Gi)",
        ],
        "{message}"
    );
    assert!(message.len() <= 1024, "{} characters", message.len());
    // Each rejection says where its candidate is, in order, so the router needs no table of
    // names; the 40 nodes short of space share one reason rather than 40 copies of it.
    for (i, rejection) in r.iter().enumerate() {
        assert_eq!(rejection.position, Some(i), "{}", rejection.node);
        assert_eq!(candidates[i], rejection.node);
    }
    assert!(
        r[1..40]
            .iter()
            .all(|x| Arc::ptr_eq(&x.reason, &r[0].reason))
    );
}

#[test]
fn the_most_free_is_taken_over_nodes_short_of_space_however_they_were_judged() {
    // A pod asking 10Gi of "default" and 1Gi of "fast". s5 and s8 have both pools and are
    // only short of default space: judged from the plan's summary. m7 has no fast pool as
    // well, and h9 holds the pod's own fast claim: both judged by the ledger. Every reason
    // names the most free default space among all of them, whichever way that one was
    // judged: h9's 9Gi, and without h9, s8's 8Gi.
    let mut idx = cluster();
    let g100 = Bytes::gib(100);
    idx.reset_storage_nodes([
        sn(
            "s5",
            Some(NOW),
            &[
                ("default", g100, Bytes::gib(95)),
                ("fast", g100, Bytes::ZERO),
            ],
        ),
        sn("m7", Some(NOW), &[("default", g100, Bytes::gib(93))]),
        sn(
            "s8",
            Some(NOW),
            &[
                ("default", g100, Bytes::gib(92)),
                ("fast", g100, Bytes::ZERO),
            ],
        ),
        sn(
            "h9",
            Some(NOW),
            &[
                ("default", g100, Bytes::gib(91)),
                ("fast", g100, Bytes::ZERO),
            ],
        ),
        sn(
            "ok",
            Some(NOW),
            &[("default", g100, Bytes::ZERO), ("fast", g100, Bytes::ZERO)],
        ),
    ]);
    idx.reset_claims([
        pvc("d", "local", "10Gi", None, None),
        pvc("f", "fast", "1Gi", Some("h9"), None),
    ]);
    let p = policy(idx);
    let short = |most: &str| {
        format!(
            "node(s) had too little free space in storage pool \"default\" (the pod's claims \
             need 10Gi; the most free on any of them is {most})"
        )
    };
    for (candidates, most) in [
        (&["s5", "m7", "ok", "s8", "h9"][..], "9Gi"),
        (&["s5", "m7", "ok", "s8"][..], "8Gi"),
    ] {
        let FilterVerdict::Reject(r) = p.filter(&pod(&["d", "f"]), candidates) else {
            panic!("all but ok must be turned down");
        };
        assert_eq!(r.len(), candidates.len() - 1, "{r:?}");
        let by_node = |node: &str| {
            let found = r.iter().find(|x| x.node == node);
            found.unwrap_or_else(|| panic!("{node} not turned down: {r:?}"))
        };
        for node in ["s5", "s8"] {
            assert_eq!(*by_node(node).reason, *short(most), "{node}");
            assert_eq!(by_node(node).kind, "insufficient_capacity");
        }
        assert!(Arc::ptr_eq(&by_node("s5").reason, &by_node("s8").reason));
        assert_eq!(
            *by_node("m7").reason,
            *format!("{}; node(s) had no storage pool \"fast\"", short(most))
        );
        if candidates.contains(&"h9") {
            assert_eq!(*by_node("h9").reason, *short(most));
        }
    }
}

#[test]
fn a_stale_node_is_rejected_with_the_stale_reason() {
    let mut idx = cluster();
    idx.apply_claim(pvc("c", "local", "1Gi", None, None));
    let FilterVerdict::Reject(r) = policy(idx).filter(&pod(&["c"]), &["old"]) else {
        panic!("old must be rejected");
    };
    assert_eq!(r[0].kind, "stale");
    assert!(
        r[0].reason.contains("report older than 45s"),
        "{}",
        r[0].reason
    );
}

#[test]
fn a_missing_or_unparseable_heartbeat_is_no_report() {
    let mut idx = cluster();
    let g = Bytes::gib(100);
    idx.apply_storage_node(sn("none", None, &[("default", g, Bytes::ZERO)]));
    idx.apply_storage_node(sn(
        "junk",
        Some("yesterday"),
        &[("default", g, Bytes::ZERO)],
    ));
    idx.apply_claim(pvc("c", "local", "1Gi", None, None));
    let verdict = policy(idx).filter(&pod(&["c"]), &["none", "junk"]);
    assert_eq!(
        rejected(&verdict),
        [("none", "no_report"), ("junk", "no_report")]
    );
}

#[test]
fn invalid_class_parameters_and_sizes_are_errors_that_name_them() {
    let cases = [
        (pvc("c", "bad", "1Gi", None, None), "\"placement\""),
        (
            pvc("c", "local", "lots", None, None),
            "spec.resources.requests.storage",
        ),
    ];
    for (claim, needle) in cases {
        let mut idx = cluster();
        idx.apply_claim(claim);
        match policy(idx).filter(&pod(&["c"]), &["n1"]) {
            FilterVerdict::Error(e) => assert!(e.contains(needle), "{e}"),
            other => panic!("{needle}: got {other:?}"),
        }
    }
}

#[test]
fn prioritize_scores_by_the_class_placement() {
    let mut idx = cluster();
    // n1 is half full, n2 empty.
    idx.apply_local_volume(lv("x", "n1", "default", Bytes::gib(50)));
    idx.reset_claims([
        pvc("s", "local", "10Gi", None, None),
        pvc("b", "packed", "10Gi", None, None),
    ]);
    let p = policy(idx);
    let scores = |claims: &[&str]| -> Vec<i64> {
        p.prioritize(&pod(claims), &["n1", "n2"])
            .iter()
            .map(|s| s.score)
            .collect()
    };
    let spread = scores(&["s"]);
    assert!(
        spread[1] > spread[0],
        "spread prefers the emptier node: {spread:?}"
    );
    let binpack = scores(&["b"]);
    assert!(
        binpack[0] > binpack[1],
        "binpack prefers the fuller node: {binpack:?}"
    );
    // Mixed classes: the first claim's placement decides.
    let mixed = scores(&["b", "s"]);
    assert!(mixed[0] > mixed[1], "binpack comes first: {mixed:?}");
    let mixed = scores(&["s", "b"]);
    assert!(mixed[1] > mixed[0], "spread comes first: {mixed:?}");
    assert!(p.prioritize(&pod(&["missing"]), &["n1"]).is_empty());
}

/// Pod `name` (uid `uid-<name>`) in `apps` mounting `claims`.
fn named_pod(name: &str, claims: &[&str]) -> Pod {
    let mut p = pod(claims);
    p.metadata.name = Some(name.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p
}

/// What kube-scheduler does with the extender's scores when nothing else tells the nodes
/// apart: the highest wins, ties at random (here: the last of the tied, any would do).
fn scheduler_pick(p: &StowagePolicy, pod: &Pod, nodes: &[&str]) -> String {
    let scores = p.prioritize(pod, nodes);
    let best = scores.iter().map(|s| s.score).max().unwrap();
    let ten = scores.iter().filter(|s| s.score == 10).count();
    assert_eq!(ten, 1, "exactly one candidate gets 10: {scores:?}");
    assert!(scores.iter().all(|s| (0..=10).contains(&s.score)));
    scores
        .iter()
        .rfind(|s| s.score == best)
        .unwrap()
        .node
        .to_string()
}

/// Four equal empty nodes and forty unplaced 1Gi claims of class `local`: a burst.
fn four_equal_nodes_and_forty_claims() -> (ClusterIndex, [&'static str; 4], Vec<String>) {
    let mut idx = ClusterIndex::new();
    idx.reset_storage_classes([class("local", names::PROVISIONER_LOCAL, &[])]);
    let nodes = ["a", "b", "c", "d"];
    idx.reset_storage_nodes(
        nodes.map(|n| sn(n, Some(NOW), &[("default", Bytes::gib(100), Bytes::ZERO)])),
    );
    let claims: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    idx.reset_claims(claims.iter().map(|c| pvc(c, "local", "1Gi", None, None)));
    (idx, nodes, claims)
}

#[test]
fn a_burst_of_identical_pods_scored_before_any_selected_node_spreads_evenly() {
    let (idx, nodes, claims) = four_equal_nodes_and_forty_claims();
    let p = policy(idx);
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in claims.iter().enumerate() {
        // No selected-node is written between the pods: the binding cycle is behind.
        let node = scheduler_pick(&p, &named_pod(&format!("p{i}"), &[c]), &nodes);
        *placed.entry(node).or_default() += 1;
    }
    assert_eq!(placed.len(), 4, "every node got pods: {placed:?}");
    assert!(
        placed.values().all(|&n| n == 10),
        "a burst of identical pods must not herd: {placed:?}"
    );
}

/// What a filter that narrows leaves kube-scheduler: the kept nodes' names, in candidate
/// order, and the rejected ones.
fn narrowed<'n>(v: FilterVerdict<'n>, nodes: &[&'n str]) -> (Vec<&'n str>, Vec<&'n str>) {
    match v {
        FilterVerdict::Narrow {
            mut keep,
            rejections,
        } => {
            keep.sort_unstable();
            let kept = keep.into_iter().map(|i| nodes[i]).collect();
            (kept, rejections.iter().map(|r| r.node).collect())
        }
        other => panic!("expected a narrowing verdict, got {other:?}"),
    }
}

#[test]
fn filter_keeps_the_nodes_best_for_the_pods_storage_when_told_to() {
    // The classes of `cluster()`, other nodes. Free space: a 90, b 60, c 20, d 75, e 5 (too little for 10Gi), f none reported.
    let used = [("a", 10), ("b", 40), ("c", 80), ("d", 25), ("e", 95)];
    let mut idx = cluster();
    idx.reset_storage_nodes(used.map(|(n, used)| {
        sn(
            n,
            Some(NOW),
            &[("default", Bytes::gib(100), Bytes::gib(used))],
        )
    }));
    idx.reset_claims([
        pvc("s", "local", "10Gi", None, None),
        pvc("b", "packed", "10Gi", None, None),
    ]);
    let nodes = ["f", "e", "d", "c", "b", "a"];
    let p = policy(idx).with_keep_best(2);
    let (kept, rejected) = narrowed(p.filter(&named_pod("s", &["s"]), &nodes), &nodes);
    assert_eq!(kept, ["d", "a"], "spread keeps the two with the most room");
    assert_eq!(
        rejected,
        ["f", "e"],
        "nodes without room keep their reasons"
    );
    let (kept, _) = narrowed(p.filter(&named_pod("b", &["b"]), &nodes), &nodes);
    assert_eq!(kept, ["c", "b"], "binpack keeps the two fullest that fit");
    // Where no more nodes have room than are kept, nothing is narrowed.
    let few = ["a", "e", "c"];
    assert_eq!(
        rejected_nodes(&p.filter(&named_pod("s2", &["s"]), &few)),
        ["e"]
    );
    // Nodes with nothing to rank them by (a pool of no size, where a claim of 0 bytes fits)
    // are never left out for want of a rank: narrowing needs as many ranked nodes as it keeps.
    let mut idx = p.index.write();
    idx.apply_storage_node(sn(
        "z1",
        Some(NOW),
        &[("default", Bytes::ZERO, Bytes::ZERO)],
    ));
    idx.apply_storage_node(sn(
        "z2",
        Some(NOW),
        &[("default", Bytes::ZERO, Bytes::ZERO)],
    ));
    idx.apply_claim(pvc("empty", "local", "0", None, None));
    drop(idx);
    let with_unranked = ["z1", "a", "z2", "b"];
    let keep_three = p.clone().with_keep_best(3);
    let verdict = keep_three.filter(&named_pod("e", &["empty"]), &with_unranked);
    assert_eq!(verdict, FilterVerdict::PassAll, "{verdict:?}");
    // Pods stowage does not judge still pass untouched.
    assert!(matches!(
        p.filter(&named_pod("none", &[]), &nodes),
        FilterVerdict::PassThrough
    ));
}

fn rejected_nodes<'n>(v: &FilterVerdict<'n>) -> Vec<&'n str> {
    rejected(v).into_iter().map(|(node, _)| node).collect()
}

#[test]
fn a_burst_filtered_to_one_node_each_spreads_evenly_without_prioritize() {
    let (idx, nodes, claims) = four_equal_nodes_and_forty_claims();
    let p = policy(idx).with_keep_best(1);
    let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in claims.iter().enumerate() {
        // One node passes, so kube-scheduler binds the pod there without calling
        // prioritize; no selected-node is written between the pods.
        let pod = named_pod(&format!("p{i}"), &[c]);
        let (kept, _) = narrowed(p.filter(&pod, &nodes), &nodes);
        assert_eq!(kept.len(), 1, "{kept:?}");
        *placed.entry(kept[0]).or_default() += 1;
    }
    assert!(
        placed.values().all(|&n| n == 10) && placed.len() == 4,
        "a burst of identical pods must not herd: {placed:?}"
    );
}

#[test]
fn a_pod_that_fits_one_node_only_is_guessed_there_by_the_filter() {
    let mut idx = ClusterIndex::new();
    idx.reset_storage_classes([class("local", names::PROVISIONER_LOCAL, &[])]);
    // a is bigger and emptier than b, but only a fits the big claim.
    idx.reset_storage_nodes([
        sn("a", Some(NOW), &[("default", Bytes::gib(200), Bytes::ZERO)]),
        sn("b", Some(NOW), &[("default", Bytes::gib(100), Bytes::ZERO)]),
    ]);
    idx.reset_claims([
        pvc("big", "local", "150Gi", None, None),
        pvc("next", "local", "1Gi", None, None),
    ]);
    let p = policy(idx);
    let big = named_pod("big", &["big"]);
    assert_eq!(rejected_nodes(&p.filter(&big, &["a", "b"])), ["b"]);
    // kube-scheduler places `big` on a without scoring; the next pod must see that.
    assert_eq!(
        scheduler_pick(&p, &named_pod("next", &["next"]), &["a", "b"]),
        "b"
    );
}

#[test]
fn a_guess_stops_counting_once_the_claim_is_placed_and_never_counts_for_its_own_pod() {
    let mut idx = ClusterIndex::new();
    idx.reset_storage_classes([class("local", names::PROVISIONER_LOCAL, &[])]);
    idx.reset_storage_nodes(
        ["a", "b"].map(|n| sn(n, Some(NOW), &[("default", Bytes::gib(100), Bytes::ZERO)])),
    );
    idx.reset_claims([
        pvc("big", "local", "60Gi", None, None),
        pvc("next", "local", "1Gi", None, None),
    ]);
    let p = policy(idx);
    let big = named_pod("big", &["big"]);
    let first = scheduler_pick(&p, &big, &["a", "b"]);
    let other = if first == "a" { "b" } else { "a" };
    // Scored again (a retry), the pod is not pushed off its own guessed node...
    assert_eq!(scheduler_pick(&p, &big, &["a", "b"]), first);
    // ...while another pod sees that node's 60Gi as taken.
    let next = named_pod("next", &["next"]);
    assert_eq!(scheduler_pick(&p, &next, &["a", "b"]), other);
    assert_eq!(p.inflight.lock().len(), 2);
    // The scheduler put `big` on the other node after all: selected-node replaces the
    // guess, and the reservation counts where it really is.
    p.index
        .write()
        .apply_claim(pvc("big", "local", "60Gi", Some(other), None));
    assert_eq!(scheduler_pick(&p, &next, &["a", "b"]), first);
    // The pod `next` was guessed on `first` and still is; `big`'s guess is gone.
    assert_eq!(p.inflight.lock().len(), 1);
}

#[test]
fn guesses_expire_and_never_make_a_node_fail_the_filter() {
    let mut idx = ClusterIndex::new();
    idx.reset_storage_classes([class("local", names::PROVISIONER_LOCAL, &[])]);
    idx.reset_storage_nodes([sn(
        "a",
        Some(NOW),
        &[("default", Bytes::gib(100), Bytes::ZERO)],
    )]);
    idx.reset_claims([
        pvc("x", "local", "80Gi", None, None),
        pvc("y", "local", "80Gi", None, None),
    ]);
    let p = policy(idx);
    scheduler_pick(&p, &named_pod("x", &["x"]), &["a"]);
    // `y` does not fit beside the guess for `x`, but guesses are soft: filter passes it
    // (the controller's fit check decides), and its score is the lowest there is.
    let y = named_pod("y", &["y"]);
    assert!(matches!(p.filter(&y, &["a"]), FilterVerdict::PassAll));
    let index = p.index.read();
    let mut inflight = p.inflight.lock();
    let start = Instant::now();
    let load = inflight.load(&index, "uid-y", start);
    assert_eq!(
        load["a"],
        [(PoolName::from("default"), Bytes::gib(80))],
        "x's guess counts for others"
    );
    assert!(
        !inflight.load(&index, "uid-x", start).contains_key("a"),
        "a pod's own guess never counts against it"
    );
    let later = start + inflight::GUESS_TTL + Duration::from_millis(1);
    assert!(inflight.load(&index, "uid-y", later).is_empty());
    assert!(inflight.is_empty(), "expired guesses are dropped");
}

#[test]
fn reset_removes_objects_missing_from_a_re_list() {
    let mut idx = cluster();
    idx.apply_local_volume(lv("a", "n1", "default", Bytes::gib(10)));
    idx.apply_claim(pvc("r", "local", "5Gi", Some("n1"), None));
    assert_eq!(
        pool_of(&idx, "n1", "default"),
        (Bytes::gib(10), Bytes::gib(5))
    );

    idx.reset_local_volumes([]);
    idx.reset_claims([]);
    assert_eq!(pool_of(&idx, "n1", "default"), (Bytes::ZERO, Bytes::ZERO));

    let g = Bytes::gib(100);
    idx.reset_storage_nodes([sn("n2", Some(NOW), &[("default", g, Bytes::ZERO)])]);
    assert!(idx.node_state("n1", now()).is_none());
    assert!(idx.node_state("n2", now()).is_some());

    idx.reset_storage_classes([]);
    idx.apply_claim(pvc("c", "local", "1Gi", None, None));
    assert_eq!(
        idx.pod_demand(&pod(&["c"])),
        Ok(PodDemand::Unseen(
            "StorageClass local of claim apps/c is not in stowage's view yet".into()
        ))
    );
}

#[tokio::test]
async fn the_router_rejects_a_full_node_in_a_scheduler_shaped_request() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut idx = cluster();
    idx.apply_local_volume(lv("x", "n1", "default", Bytes::gib(95)));
    idx.apply_claim(pvc("c", "local", "10Gi", None, None));
    let app =
        stowage_extender::router(Arc::new(policy(idx)), stowage_extender::RouterConfig::new())
            .unwrap();
    let body = serde_json::json!({
        "Pod": serde_json::to_value(pod(&["c"])).unwrap(),
        "Nodes": null,
        "NodeNames": ["n1", "n2"],
    });
    let res = app
        .oneshot(
            Request::post("/filter")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let out: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(out["NodeNames"], serde_json::json!(["n2"]));
    let reason = out["FailedAndUnresolvableNodes"]["n1"].as_str().unwrap();
    assert!(
        reason.contains("need 10Gi; the most free on any of them is 5Gi"),
        "{reason}"
    );
    // In FailedNodes too, for kube-scheduler 1.19 and 1.20, which read no other map.
    assert_eq!(out["FailedNodes"], serde_json::json!({"n1": reason}));
}

mod fit_plan {
    //! The compact summary decides exactly as the ledger does on the node's entry.

    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::{Base, Failing, FitClock};
    use crate::ledger::{
        Bytes, Demand, Driver, FitOptions, NodeState, Placement, PoolState, check_aged, room_after,
        score,
    };

    const POOLS: [&str; 4] = ["a", "b", "c", "nowhere"];

    fn arb_pool() -> impl Strategy<Value = PoolState> {
        (
            0usize..3,
            0u64..=1024,
            0u64..=64,
            0u64..=1024,
            0u64..=256,
            prop::option::of(0u64..=1024),
            any::<bool>(),
            prop::bool::weighted(0.9),
        )
            .prop_map(
                |(pool, cap, reserve, alloc, reserved, avail, btrfs, ready)| {
                    let driver = if btrfs {
                        Driver::Btrfs
                    } else {
                        Driver::Hostpath
                    };
                    let mut p = PoolState::new(POOLS[pool], driver, Bytes::gib(cap));
                    p.reserve = Bytes::gib(reserve);
                    p.allocated = Bytes::gib(alloc);
                    p.reserved = Bytes::gib(reserved);
                    p.available = avail.map(Bytes::gib);
                    p.ready = ready;
                    p.message = (!ready).then(|| "disk gone".to_string());
                    p
                },
            )
    }

    /// A node and its heartbeat age in seconds, if it ever reported.
    fn arb_node() -> impl Strategy<Value = (NodeState, Option<u64>)> {
        (
            prop::collection::vec(arb_pool(), 0..4),
            prop::bool::weighted(0.9),
            prop::option::weighted(0.9, 0u64..=90),
        )
            .prop_map(|(mut pools, ready, age)| {
                // Pool names are unique on a node.
                let mut seen = Vec::new();
                pools.retain(|p| {
                    let new = !seen.contains(&p.name);
                    seen.push(p.name.clone());
                    new
                });
                let mut node = NodeState::new("n", pools);
                node.ready = ready;
                (node, age)
            })
    }

    fn arb_demand() -> impl Strategy<Value = Demand> {
        prop::collection::vec((0usize..4, 0u64..=512), 0..4).prop_map(|claims| {
            Demand::from_claims(claims.into_iter().map(|(p, g)| (POOLS[p], Bytes::gib(g)))).unwrap()
        })
    }

    /// A heartbeat is fresh when `age <= limit`, to the nanosecond, on both sides of the
    /// limit and in the future (a skewed clock: age 0).
    #[test]
    fn freshness_is_the_age_within_the_limit() {
        use k8s_openapi::jiff::SignedDuration;
        let now: k8s_openapi::jiff::Timestamp = super::NOW.parse().unwrap();
        let limit = Duration::from_secs(45);
        for nanos in [
            -5_000_000_000_i64,
            -1,
            0,
            1,
            44_999_999_999,
            45_000_000_000,
            45_000_000_001,
            90_000_000_000,
        ] {
            let at = now - SignedDuration::from_nanos(nanos);
            let want = super::super::age(Some(at), now).is_some_and(|a| a <= limit);
            assert_eq!(want, nanos <= 45_000_000_000, "{nanos} ns");
            let clock = FitClock::new(now, FitOptions { stale_after: limit });
            assert_eq!(clock.fresh(Some(at)), want, "{nanos} ns");
        }
        assert!(!FitClock::new(now, FitOptions { stale_after: limit }).fresh(None));
        // A limit reaching back past the first representable time: every heartbeat is fresh.
        let forever = FitClock::new(
            now,
            FitOptions {
                stale_after: Duration::MAX,
            },
        );
        assert!(forever.fresh(Some(k8s_openapi::jiff::Timestamp::MIN)));
    }

    proptest! {
        #[test]
        fn plan_fits_and_scores_as_the_ledger(
            nodes in prop::collection::vec(arb_node(), 1..6),
            demand in arb_demand(),
        ) {
            let now: k8s_openapi::jiff::Timestamp = super::NOW.parse().unwrap();
            let opts = FitOptions { stale_after: Duration::from_secs(45) };
            let mut base = Base::default();
            for (i, (node, age)) in nodes.iter().enumerate() {
                let heartbeat = age.map(|s| now - k8s_openapi::jiff::SignedDuration::from_secs(i64::try_from(s).unwrap()));
                base.put(&format!("n{i}"), node.clone(), heartbeat);
            }
            let plan = base.plan(&demand);
            prop_assert!(plan.node("absent").is_none());
            for (i, (node, age)) in nodes.iter().enumerate() {
                let planned = plan.node(&format!("n{i}")).unwrap();
                let age = age.map(Duration::from_secs);
                prop_assert_eq!(planned.heartbeat_age(now), age);
                let want = check_aged(node, age, &demand, &opts);
                // Judged in one pass: the room where it fits, and the ledger's reason where
                // not, made from the pools short of space where that is all that is wrong.
                let mut free = vec![Bytes::ZERO; plan.pools()];
                match planned.judge(&FitClock::new(now, opts), &demand, &mut free) {
                    Ok(room) => {
                        prop_assert!(want.is_ok());
                        prop_assert_eq!(room, room_after(node, &demand));
                    }
                    Err(Failing::Short(short)) => {
                        prop_assert_eq!(Err(plan.unfit(short, &free)), want);
                    }
                    Err(Failing::Unfit(unfit)) => prop_assert_eq!(Err(unfit), want),
                }
                for placement in [Placement::Spread, Placement::Binpack] {
                    prop_assert_eq!(planned.score(placement), score(node, &demand, placement));
                }
            }
        }
    }
}

/// Whether `demand` fits on `node` by `plan`, now, with the default options.
fn fits(plan: &FitPlan<'_>, node: &str, demand: &Demand) -> bool {
    let clock = FitClock::new(now(), FitOptions::default());
    let mut free = vec![Bytes::ZERO; plan.pools()];
    plan.node(node)
        .is_some_and(|n| n.judge(&clock, demand, &mut free).is_ok())
}

#[test]
fn a_heartbeat_only_update_keeps_the_derived_ledger_and_moves_the_heartbeat() {
    let mut index = ClusterIndex::new();
    index.apply_storage_node(sn(
        "n1",
        Some(STALE),
        &[("default", Bytes::gib(100), Bytes::ZERO)],
    ));
    let stale_age = index.node_view("n1", now()).unwrap().1.unwrap();
    assert_eq!(stale_age, Duration::from_secs(3600));

    // The agent's next heartbeat: same pools, new time.
    index.apply_storage_node(sn(
        "n1",
        Some(NOW),
        &[("default", Bytes::gib(100), Bytes::ZERO)],
    ));
    assert_eq!(
        index.node_view("n1", now()).unwrap().1,
        Some(Duration::ZERO)
    );
    let mut demand = Demand::new();
    demand
        .add(PoolName("default".into()), Bytes::gib(1))
        .unwrap();
    let plan = index.fit_plan(&demand);
    assert!(
        fits(&plan, "n1", &demand),
        "the fresh heartbeat counts in the fit check"
    );

    // A capacity change is not a heartbeat: the node's entry is updated and sees it.
    index.apply_storage_node(sn(
        "n1",
        Some(NOW),
        &[("default", Bytes::gib(100), Bytes::gib(100))],
    ));
    let plan = index.fit_plan(&demand);
    assert!(!fits(&plan, "n1", &demand), "the full pool must be seen");
}

#[test]
fn claims_volumes_and_storage_nodes_coming_and_going_never_rebuild_the_ledger_whole() {
    let mut index = cluster();
    let rebuilds = index.rebuilds;
    let fits = |index: &ClusterIndex, node: &str, gib: u64| {
        let mut demand = Demand::new();
        demand
            .add(PoolName("default".into()), Bytes::gib(gib))
            .unwrap();
        fits(&index.fit_plan(&demand), node, &demand)
    };
    assert!(fits(&index, "n1", 100));

    // A claim placed on n1: its reservation counts at once.
    index.apply_claim(pvc("a", "local", "60Gi", Some("n1"), None));
    assert!(!fits(&index, "n1", 41) && fits(&index, "n1", 40));
    assert_eq!(index.reservations_on("n1").len(), 1);
    // Its LocalVolume: the bytes move from reserved to allocated, counted once.
    index.apply_local_volume(lv("a", "n1", "default", Bytes::gib(60)));
    assert_eq!(
        pool_of(&index, "n1", "default"),
        (Bytes::gib(60), Bytes::ZERO)
    );
    assert!(index.reservations_on("n1").is_empty());
    // Bound, then gone with its volume: the node is empty again.
    index.apply_claim(pvc("a", "local", "60Gi", Some("n1"), Some("pvc-a")));
    index.delete_local_volume("pvc-a");
    index.delete_claim("apps", "a");
    assert!(fits(&index, "n1", 100));
    // A new StorageNode, a changed one, a class.
    index.apply_storage_node(sn(
        "n3",
        Some(NOW),
        &[("default", Bytes::gib(10), Bytes::ZERO)],
    ));
    index.apply_storage_node(sn(
        "n1",
        Some(NOW),
        &[("default", Bytes::gib(50), Bytes::ZERO)],
    ));
    index.apply_storage_class(class("more", names::PROVISIONER_LOCAL, &[]));
    assert!(fits(&index, "n3", 10) && !fits(&index, "n1", 51));
    assert_eq!(
        index.rebuilds, rebuilds,
        "none of these changes may rebuild the whole ledger"
    );
}

#[test]
fn the_configured_provisioner_name_decides_which_classes_are_placed() {
    const CUSTOM: &str = "disks.example.com";
    let mut idx = ClusterIndex::for_provisioner(CUSTOM);
    assert_eq!(idx.provisioner(), CUSTOM);
    idx.reset_storage_classes([
        class("custom", CUSTOM, &[]),
        // The default name is just another provisioner to an index serving CUSTOM.
        class("local", names::PROVISIONER_LOCAL, &[]),
    ]);
    let g100 = Bytes::gib(100);
    idx.reset_storage_nodes([sn("n1", Some(NOW), &[("default", g100, Bytes::ZERO)])]);
    idx.reset_claims([
        pvc("big", "custom", "1Ti", None, None),
        pvc("default-name", "local", "1Ti", None, None),
        pvc("held", "custom", "10Gi", Some("n1"), None),
        pvc("not-held", "local", "10Gi", Some("n1"), None),
    ]);
    // Only the claim of the configured name reserves space.
    assert_eq!(pool_of(&idx, "n1", "default").1, Bytes::gib(10));
    let policy = policy(idx);
    let verdict = policy.filter(&pod(&["big"]), &["n1"]);
    assert_eq!(rejected(&verdict).len(), 1, "{verdict:?}");
    assert_eq!(
        policy.filter(&pod(&["default-name"]), &["n1"]),
        FilterVerdict::PassThrough
    );

    // And the default index still serves local.stowage.io.
    let idx = cluster();
    assert_eq!(idx.provisioner(), names::PROVISIONER_LOCAL);
}

// === rows: what the index keeps, and what it gives back ===

/// A claim with every field [`ClaimRow::FIELDS`] lists set, and more that it does not.
fn full_claim() -> PersistentVolumeClaim {
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "data-0", "namespace": "apps",
            "uid": "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "deletionTimestamp": "2026-01-01T00:05:00Z",
            "labels": {"app": "db"},
            "finalizers": ["kubernetes.io/pvc-protection"],
            "annotations": {
                "volume.kubernetes.io/storage-provisioner": "local.stowage.io",
                "volume.beta.kubernetes.io/storage-provisioner": "local.stowage.io",
                "volume.kubernetes.io/selected-node": "n1",
                "unrelated": "dropped"
            }
        },
        "spec": {
            "storageClassName": "local",
            "accessModes": ["ReadWriteOnce", "ReadWriteOncePod"],
            "volumeMode": "Filesystem",
            "volumeName": "pvc-3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
            "resources": {"requests": {"storage": "10Gi"}, "limits": {"storage": "20Gi"}},
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "seed"},
            "selector": {"matchLabels": {"tier": "a"}}
        },
        "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"]}
    });
    serde_json::from_value(json).unwrap()
}

#[test]
fn a_claim_comes_back_from_its_row_with_exactly_the_fields_listed() {
    let mut index = ClusterIndex::new();
    let claim = full_claim();
    index.apply_claim(claim.clone());
    let back = index.claim("apps", "data-0").unwrap();
    // Kept: every listed field, byte for byte.
    assert_eq!(back.metadata.name, claim.metadata.name);
    assert_eq!(back.metadata.namespace, claim.metadata.namespace);
    assert_eq!(back.metadata.uid, claim.metadata.uid);
    assert_eq!(
        back.metadata.resource_version,
        claim.metadata.resource_version
    );
    assert_eq!(
        back.metadata.creation_timestamp,
        claim.metadata.creation_timestamp
    );
    assert_eq!(
        back.metadata.deletion_timestamp,
        claim.metadata.deletion_timestamp
    );
    let mut wanted = claim.metadata.annotations.clone().unwrap();
    wanted.remove("unrelated");
    assert_eq!(back.metadata.annotations.unwrap(), wanted);
    let (spec, got) = (claim.spec.clone().unwrap(), back.spec.clone().unwrap());
    assert_eq!(got.storage_class_name, spec.storage_class_name);
    assert_eq!(got.access_modes, spec.access_modes);
    assert_eq!(got.volume_mode, spec.volume_mode);
    assert_eq!(got.volume_name, spec.volume_name);
    assert_eq!(
        got.resources.unwrap().requests,
        spec.resources.unwrap().requests
    );
    assert_eq!(got.data_source, spec.data_source);
    assert_eq!(got.selector, spec.selector);
    let status = back.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Bound"));
    assert_eq!(status.capacity, claim.status.unwrap().capacity);
    // Not kept: what no reader uses.
    assert_eq!(back.metadata.labels, None);
    assert_eq!(back.metadata.finalizers, None);
    assert_eq!(status.access_modes, None);
    // The rare fields are the only boxed extra; a plain claim has none.
    assert!(index.claim("apps", "missing").is_none());
    assert!(index.claim("elsewhere", "data-0").is_none());
}

#[test]
fn texts_that_are_not_uuids_or_numbers_round_trip_verbatim() {
    for text in [
        "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
        "3F2A8C1E-9B7D-4E6F-A1B2-C3D4E5F60718",
        "u-1",
        "",
        "3f2a8c1e9b7d4e6fa1b2c3d4e5f60718xxxx",
    ] {
        assert_eq!(rows::Id::new(text).to_string(), text);
        assert!(rows::Id::new(text).is(text));
        let name = format!("pvc-{text}");
        assert_eq!(rows::Name::new(&name).to_string(), name);
        assert_eq!(
            rows::Name::for_uid(&rows::Id::new(text)),
            rows::Name::new(&name)
        );
    }
    assert!(matches!(
        rows::Id::new("3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718"),
        rows::Id::Uuid(_)
    ));
    for rv in ["0", "48213", "007", "abc", "18446744073709551616", ""] {
        assert_eq!(rows::Rv::new(rv).to_string(), rv);
    }
    assert_eq!(rows::Rv::new("48213"), rows::Rv::Num(48213));
}

#[test]
fn a_local_volume_and_a_pv_come_back_from_their_rows() {
    let mut index = ClusterIndex::new();
    let mut volume = lv(
        "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
        "n1",
        "fast",
        Bytes(1 << 30),
    );
    volume.metadata.uid = Some("0b6c1d9e-1111-2222-3333-444455556666".into());
    volume.metadata.resource_version = Some("77".into());
    volume.metadata.generation = Some(3);
    volume.metadata.finalizers = Some(vec![names::FINALIZER_AGENT_CLEANUP.into()]);
    volume.spec.on_delete = OnDelete::Archive;
    volume.status = Some(crate::api::local_volume::LocalVolumeStatus {
        phase: crate::api::local_volume::LocalVolumePhase::Ready,
        path: Some("/pools/fast/pvc-3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718".into()),
        size_bytes: Some(1 << 30),
        // What the agent writes beside the bytes; the row derives it back from them.
        size: Some("1Gi".into()),
        message: Some("made".into()),
        observed_generation: Some(3),
    });
    index.apply_local_volume(volume.clone());
    let name = volume.metadata.name.clone().unwrap();
    let back = index.local_volume(&name).unwrap();
    assert_eq!(back.spec, volume.spec);
    assert_eq!(back.status, volume.status);
    assert_eq!(back.metadata.uid, volume.metadata.uid);
    assert_eq!(
        back.metadata.resource_version,
        volume.metadata.resource_version
    );
    assert_eq!(back.metadata.generation, volume.metadata.generation);
    assert_eq!(back.metadata.finalizers, volume.metadata.finalizers);

    // A claim uid other than the one in the name, and a status with only some numbers.
    let mut odd = volume.clone();
    odd.metadata.name = Some("pvc-11111111-2222-3333-4444-555555555555".into());
    let mut text_named = volume.clone();
    text_named.metadata.name = Some("made-by-hand".into());
    for mut v in [odd, text_named] {
        v.status = Some(crate::api::local_volume::LocalVolumeStatus {
            phase: crate::api::local_volume::LocalVolumePhase::Pending,
            path: None,
            size_bytes: None,
            size: None,
            message: None,
            observed_generation: Some(0),
        });
        index.apply_local_volume(v.clone());
        let back = index
            .local_volume(v.metadata.name.as_deref().unwrap())
            .unwrap();
        assert_eq!(back.spec, v.spec, "{:?}", v.metadata.name);
        assert_eq!(back.status, v.status, "{:?}", v.metadata.name);
    }

    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name, "uid": "9e9e9e9e-0000-1111-2222-333344445555",
            "resourceVersion": "90", "finalizers": [names::FINALIZER_PV_CLEANUP, "kubernetes.io/pv-protection"],
            "annotations": {"pv.kubernetes.io/provisioned-by": "local.stowage.io", "other": "x"},
            "labels": {"stowage.io/node": "n1", "stowage.io/pool": "fast"}
        },
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local",
            "local": {"path": "/pools/fast/x"},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "apps", "name": "data-0",
                         "uid": "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718", "resourceVersion": "5"}
        },
        "status": {"phase": "Released"}
    }))
    .unwrap();
    index.apply_persistent_volume(pv.clone());
    let back = index.persistent_volume(&name).unwrap();
    assert_eq!(back.metadata.uid, pv.metadata.uid);
    assert_eq!(back.metadata.resource_version, pv.metadata.resource_version);
    assert_eq!(back.metadata.finalizers, pv.metadata.finalizers);
    assert_eq!(
        back.metadata.annotations.unwrap()[names::ANNOTATION_PROVISIONED_BY],
        "local.stowage.io"
    );
    assert_eq!(
        crate::controller::volume::pv_node(&index.persistent_volume(&name).unwrap()),
        Some("n1")
    );
    let (spec, got) = (pv.spec.clone().unwrap(), back.spec.unwrap());
    assert_eq!(got.capacity, spec.capacity);
    assert_eq!(
        got.persistent_volume_reclaim_policy,
        spec.persistent_volume_reclaim_policy
    );
    assert_eq!(got.storage_class_name, spec.storage_class_name);
    let (r, g) = (spec.claim_ref.unwrap(), got.claim_ref.unwrap());
    assert_eq!((g.namespace, g.name, g.uid), (r.namespace, r.name, r.uid));
    assert_eq!(back.status.unwrap().phase.as_deref(), Some("Released"));

    // A PV of another provisioner is not kept, and one that stops being ours is forgotten.
    let mut foreign = pv.clone();
    foreign.metadata.annotations = Some(BTreeMap::from([(
        names::ANNOTATION_PROVISIONED_BY.to_string(),
        "ebs.csi.aws.com".to_string(),
    )]));
    index.apply_persistent_volume(foreign);
    assert!(index.persistent_volume(&name).is_none());
}

fn recorder(index: &mut ClusterIndex) -> Arc<parking_lot::Mutex<Vec<Trigger>>> {
    let seen: Arc<parking_lot::Mutex<Vec<Trigger>>> = Arc::default();
    let sink = seen.clone();
    index.set_trigger(Arc::new(move |t| sink.lock().push(t)));
    seen
}

#[test]
fn changes_queue_the_objects_they_concern_and_a_relist_only_what_changed() {
    let mut index = ClusterIndex::new();
    let seen = recorder(&mut index);
    let uid = "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718";
    let name = format!("pvc-{uid}");
    let mut volume = lv(uid, "n1", "fast", Bytes(1 << 30));
    volume.metadata.resource_version = Some("1".into());
    index.apply_local_volume(volume.clone());
    let volume_triggers = vec![
        Trigger::Volume(name.clone()),
        Trigger::Pv(name.clone()),
        Trigger::Claim(
            volume.spec.claim.namespace.clone(),
            volume.spec.claim.name.clone(),
        ),
    ];
    assert_eq!(std::mem::take(&mut *seen.lock()), volume_triggers);

    // The same version again (a re-delivered event) changes nothing and queues nothing.
    index.apply_local_volume(volume.clone());
    assert!(seen.lock().is_empty());

    // A claim change queues the claim and, since it exists, the LocalVolume of its uid.
    let mut claim = full_claim();
    claim.metadata.uid = Some(uid.into());
    index.apply_claim(claim.clone());
    assert_eq!(
        std::mem::take(&mut *seen.lock()),
        vec![
            Trigger::Claim("apps".into(), "data-0".into()),
            Trigger::Volume(name.clone())
        ]
    );

    // A re-list with the same versions queues nothing; one with a change or a deletion
    // queues just those.
    index.reset_local_volumes([volume.clone()]);
    index.reset_claims([claim.clone()]);
    assert!(seen.lock().is_empty());
    let mut changed = volume.clone();
    changed.metadata.resource_version = Some("2".into());
    index.reset_local_volumes([changed]);
    assert_eq!(std::mem::take(&mut *seen.lock()), volume_triggers);
    index.reset_claims(Vec::<PersistentVolumeClaim>::new());
    assert_eq!(
        std::mem::take(&mut *seen.lock()),
        vec![
            Trigger::Claim("apps".into(), "data-0".into()),
            Trigger::Volume(name.clone())
        ]
    );
    assert!(index.claim("apps", "data-0").is_none());
}

#[test]
fn a_node_going_away_queues_the_pvs_on_it() {
    use kube::core::PartialObjectMetaExt;
    let mut index = ClusterIndex::new();
    let node = |name: &str, hostname: Option<&str>| {
        ObjectMeta {
            name: Some(name.into()),
            labels: hostname
                .map(|h| BTreeMap::from([(names::LABEL_HOSTNAME.to_string(), h.to_string())])),
            ..ObjectMeta::default()
        }
        .into_response_partial::<k8s_openapi::api::core::v1::Node>()
    };
    index.reset_nodes([node("n1", Some("host-1")), node("n2", None)]);
    assert_eq!(index.node_hostname("n1"), Some(Some("host-1".into())));
    assert_eq!(index.node_hostname("n2"), Some(None));
    assert_eq!(index.node_hostname("n3"), None);
    for (pv_name, on) in [("pvc-a", "n1"), ("pvc-b", "n2")] {
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": pv_name, "resourceVersion": "1",
                "annotations": {"pv.kubernetes.io/provisioned-by": "local.stowage.io"},
                "labels": {"stowage.io/node": on}},
        }))
        .unwrap();
        index.apply_persistent_volume(pv);
    }
    let seen = recorder(&mut index);
    index.delete_node("n1");
    assert_eq!(*seen.lock(), vec![Trigger::Pv("pvc-a".into())]);
    seen.lock().clear();
    index.reset_nodes([node("n1", Some("host-1"))]);
    assert_eq!(*seen.lock(), vec![Trigger::Pv("pvc-b".into())]);
    assert_eq!(index.node_hostname("n2"), None);
}

#[test]
fn a_relist_cut_short_leaves_nothing_behind_for_the_next_one() {
    let mut index = ClusterIndex::new();
    let a = lv(
        "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
        "n1",
        "fast",
        Bytes(1 << 30),
    );
    let b = lv(
        "4f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718",
        "n1",
        "fast",
        Bytes(1 << 30),
    );
    index.reset_local_volumes([a.clone()]);
    // A list that stages `b` and is then cut short; the next one lists `a` only.
    index.begin_local_volumes();
    index.stage_local_volume(b.clone());
    index.begin_local_volumes();
    index.stage_local_volume(a.clone());
    index.commit_local_volumes();
    assert_eq!(
        index.local_volume_names(),
        vec![a.metadata.name.clone().unwrap()]
    );
    // Until a commit, the index keeps serving the previous list.
    index.begin_local_volumes();
    index.stage_local_volume(b.clone());
    assert!(
        index
            .local_volume(b.metadata.name.as_deref().unwrap())
            .is_none()
    );
    assert!(
        index
            .local_volume(a.metadata.name.as_deref().unwrap())
            .is_some()
    );
}

#[test]
fn lists_and_paths_round_trip_through_their_compact_forms() {
    let mut index = ClusterIndex::new();
    let lists: [&[&str]; 5] = [
        &[],
        &[""],
        &["odd,name"],
        &["ReadWriteOnce", "ReadOnlyMany"],
        &["ReadWriteOnce", ""],
    ];
    for (i, modes) in lists.iter().enumerate() {
        let mut claim = full_claim();
        claim.metadata.name = Some(format!("c{i}"));
        claim.spec.as_mut().unwrap().access_modes =
            Some(modes.iter().map(|m| m.to_string()).collect());
        index.apply_claim(claim.clone());
        let back = index.claim("apps", &format!("c{i}")).unwrap();
        assert_eq!(
            back.spec.unwrap().access_modes,
            claim.spec.unwrap().access_modes
        );
    }
    let uid = "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718";
    for path in [
        format!("/pools/fast/pvc-{uid}"),
        format!("/pools/fast/pvc-{uid}/"),
        format!("pvc-{uid}"),
        "/elsewhere".to_string(),
        String::new(),
    ] {
        let mut volume = lv(uid, "n1", "fast", Bytes(1 << 30));
        volume.status = Some(crate::api::local_volume::LocalVolumeStatus {
            path: Some(path.clone()),
            ..Default::default()
        });
        index.apply_local_volume(volume);
        let back = index.local_volume(&format!("pvc-{uid}")).unwrap();
        assert_eq!(back.status.unwrap().path.as_deref(), Some(path.as_str()));
    }
}

#[test]
fn a_write_answer_never_undoes_a_newer_version_the_watch_delivered() {
    let mut index = ClusterIndex::new();
    let uid = "3f2a8c1e-9b7d-4e6f-a1b2-c3d4e5f60718";
    let name = format!("pvc-{uid}");
    let mut created = lv(uid, "n1", "fast", Bytes(1 << 30));
    created.metadata.resource_version = Some("10".into());
    // The agent made it Ready, and the watch delivered that, before the create's answer
    // was written back.
    let mut ready = created.clone();
    ready.metadata.resource_version = Some("11".into());
    ready.status = Some(crate::api::local_volume::LocalVolumeStatus {
        phase: crate::api::local_volume::LocalVolumePhase::Ready,
        path: Some("/p".into()),
        ..Default::default()
    });
    index.apply_local_volume(ready.clone());
    index.note_local_volume(created.clone());
    assert_eq!(index.local_volume(&name).unwrap().status, ready.status);
    // Absent, the answer is recorded; a newer answer replaces an older version.
    let mut fresh = ClusterIndex::new();
    fresh.note_local_volume(created.clone());
    assert!(fresh.local_volume(&name).is_some());
    let mut grown = created.clone();
    grown.metadata.resource_version = Some("12".into());
    grown.spec.size_bytes = 2 << 30;
    index.note_local_volume(grown);
    assert_eq!(index.local_volume(&name).unwrap().spec.size_bytes, 2 << 30);
    // Resource versions that are not numbers are not compared: the index's stays.
    let mut odd = created;
    odd.metadata.resource_version = Some("x".into());
    odd.spec.size_bytes = 3 << 30;
    index.note_local_volume(odd);
    assert_eq!(index.local_volume(&name).unwrap().spec.size_bytes, 2 << 30);
}

#[test]
fn an_assumed_volume_counts_once_until_forgotten_and_outlives_a_relist() {
    let mut idx = cluster();
    idx.apply_claim(pvc("a", "local", "10Gi", Some("n1"), None));
    assert_eq!(
        pool_of(&idx, "n1", "default"),
        (Bytes::ZERO, Bytes::gib(10)),
        "before the decision the selected node holds a reservation"
    );
    let volume = lv("a", "n1", "default", Bytes::gib(10));
    idx.assume_local_volume(&volume);
    assert_eq!(
        pool_of(&idx, "n1", "default"),
        (Bytes::gib(10), Bytes::ZERO),
        "assumed: allocated, and the claim's reservation is not counted beside it"
    );
    assert!(
        idx.reservations_on("n1").is_empty(),
        "no claim decision counts it as a reservation any more"
    );

    // A re-list that does not have it yet keeps it.
    idx.reset_local_volumes([]);
    assert_eq!(pool_of(&idx, "n1", "default").0, Bytes::gib(10));

    // The watch delivers it before the create answers: counted once.
    idx.apply_local_volume(volume);
    assert_eq!(pool_of(&idx, "n1", "default").0, Bytes::gib(10));
    idx.forget_assumed("pvc-a");
    assert_eq!(pool_of(&idx, "n1", "default").0, Bytes::gib(10));

    // A create that failed: forgetting gives the bytes back to the reservation.
    idx.delete_local_volume("pvc-a");
    idx.assume_local_volume(&lv("a", "n1", "default", Bytes::gib(10)));
    idx.forget_assumed("pvc-a");
    assert_eq!(
        pool_of(&idx, "n1", "default"),
        (Bytes::ZERO, Bytes::gib(10))
    );
}

#[test]
fn unbound_pods_tell_each_claim_its_siblings_until_they_are_bound_or_gone() {
    let mut idx = ClusterIndex::new();
    let named = |name: &str, claims: &[&str]| {
        let mut p = pod(claims);
        p.metadata.name = Some(name.into());
        p
    };
    idx.apply_pod(named("db-0", &["data", "wal"]));
    idx.apply_pod(named("db-1", &["data", "logs"]));
    idx.apply_pod(named("web", &[]));
    assert_eq!(idx.sibling_claims("apps", "data"), ["logs", "wal"]);
    assert_eq!(idx.sibling_claims("apps", "wal"), ["data"]);
    assert_eq!(idx.pods_using("apps", "data"), ["db-0", "db-1"]);
    assert!(idx.sibling_claims("other", "data").is_empty());
    assert!(idx.pods_using("apps", "none").is_empty());
    // A pod bound to a node is no longer waiting for its volumes: dropped, as a watch
    // with spec.nodeName= reports it deleted.
    let mut bound = named("db-1", &["data", "logs"]);
    bound.spec.as_mut().unwrap().node_name = Some("n1".into());
    idx.apply_pod(bound);
    assert_eq!(idx.sibling_claims("apps", "data"), ["wal"]);
    assert!(idx.sibling_claims("apps", "logs").is_empty());
    // A changed pod replaces its old claims.
    idx.apply_pod(named("db-0", &["data", "wal2"]));
    assert_eq!(idx.sibling_claims("apps", "data"), ["wal2"]);
    assert!(idx.pods_using("apps", "wal").is_empty());
    idx.delete_pod("apps", "db-0");
    assert!(idx.sibling_claims("apps", "data").is_empty());
    // A re-list replaces everything.
    idx.apply_pod(named("x", &["a", "b"]));
    idx.reset_pods([named("y", &["c", "d"])]);
    assert!(idx.sibling_claims("apps", "a").is_empty());
    assert_eq!(idx.sibling_claims("apps", "c"), ["d"]);
}

#[test]
fn namespaces_are_kept_as_their_uid_until_they_are_being_deleted() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::core::PartialObjectMetaExt;
    let namespace = |name: &str, uid: &str, deleting: bool| {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            ..ObjectMeta::default()
        }
        .into_response_partial::<k8s_openapi::api::core::v1::Namespace>()
    };
    let mut index = ClusterIndex::new();
    index.reset_namespaces([
        namespace("team", "u-1", false),
        namespace("shop", "u-2", false),
    ]);
    assert_eq!(index.namespace_uid("team").as_deref(), Some("u-1"));
    assert_eq!(index.namespace_uid("other"), None);
    // Being deleted: the uid is no longer given out (a claim there is the old namespace's,
    // or the watch has not seen the new one yet).
    index.apply_namespace(namespace("team", "u-1", true));
    assert_eq!(index.namespace_uid("team"), None);
    index.delete_namespace("team");
    index.apply_namespace(namespace("team", "u-3", false));
    assert_eq!(index.namespace_uid("team").as_deref(), Some("u-3"));
    // A re-list replaces everything.
    index.reset_namespaces([namespace("team", "u-4", false)]);
    assert_eq!(index.namespace_uid("team").as_deref(), Some("u-4"));
    assert_eq!(index.namespace_uid("shop"), None);
}

/// The ledger as a derivation from the objects alone gives it, apart from every
/// running sum: what the incremental ledger must always equal.
fn derive_from_scratch(index: &ClusterIndex) -> Vec<NodeState> {
    let mut allocated = PerPool::default();
    for lv in index.volumes.values() {
        add(
            &mut allocated,
            index.syms.text(lv.node),
            index.syms.text(lv.pool),
            Bytes(lv.size),
        );
    }
    for (name, a) in &index.assumed {
        if !index.volumes.contains_key(name) {
            add(
                &mut allocated,
                index.syms.text(a.node),
                index.syms.text(a.pool),
                Bytes(a.size),
            );
        }
    }
    let mut reserved = PerPool::default();
    for claim in index.claims.values() {
        let Some(node) = claim.selected_node else {
            continue;
        };
        let volume = Name::for_uid(&claim.uid);
        if claim.volume_name.is_some()
            || index.volumes.contains_key(&volume)
            || index.assumed.contains_key(&volume)
        {
            continue;
        }
        let Some(class) = claim
            .class
            .and_then(|c| index.classes.get(index.syms.text(c)))
        else {
            continue;
        };
        if !class::is_local(class, &index.provisioner.0) {
            continue;
        }
        let Ok(params) = ClassParams::from_class(class) else {
            continue;
        };
        let bytes = match claim.request {
            None => Bytes::ZERO,
            Some(q) => match index.syms.text(q).parse() {
                Ok(bytes) => bytes,
                Err(_) => continue,
            },
        };
        add(
            &mut reserved,
            index.syms.text(node),
            params.pool.as_str(),
            bytes,
        );
    }
    let mut ledger: Vec<NodeState> = index
        .nodes
        .iter()
        .map(|(name, status)| {
            let mut node = status.clone().unwrap_or_default().to_node_state(name, None);
            for pool in &mut node.pools {
                let lvs = get(&allocated, name, pool.name.as_str());
                pool.allocated = pool.allocated.max(lvs);
                pool.reserved = get(&reserved, name, pool.name.as_str());
            }
            node
        })
        .collect();
    ledger.sort_by(|a, b| a.name.cmp(&b.name));
    ledger
}

/// Bytes per node, then per pool.
type PerPool = HashMap<String, HashMap<String, Bytes>>;

fn add(map: &mut PerPool, node: &str, pool: &str, bytes: Bytes) {
    let slot = map
        .entry(node.to_string())
        .or_default()
        .entry(pool.to_string())
        .or_default();
    *slot = slot.saturating_add(bytes);
}

fn get(map: &PerPool, node: &str, pool: &str) -> Bytes {
    map.get(node)
        .and_then(|p| p.get(pool))
        .copied()
        .unwrap_or_default()
}

mod incremental {
    //! The ledger kept by deltas equals a derivation from scratch, whatever happened.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::{class, derive_from_scratch, lv, pvc, sn};
    use crate::api::local_volume::LocalVolume;
    use crate::api::names;
    use crate::api::storage_node::StorageNode;
    use crate::cache::ClusterIndex;
    use crate::ledger::Bytes;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::api::storage::v1::StorageClass;

    const NODES: [&str; 4] = ["n0", "n1", "n2", "no-storage-node"];
    const POOLS: [&str; 3] = ["default", "fast", "nowhere"];
    const SIZES: [&str; 4] = ["1Gi", "5Gi", "not-a-size", "20000000Ei"];

    /// One thing that can happen to the index.
    #[derive(Clone, Debug)]
    enum Op {
        Node {
            node: usize,
            pools: (bool, bool),
            gib: u64,
            agent_gib: u64,
            heartbeat: bool,
        },
        DeleteNode(usize),
        Volume {
            uid: usize,
            node: usize,
            pool: usize,
            gib: u64,
        },
        DeleteVolume(usize),
        Assume {
            uid: usize,
            node: usize,
            pool: usize,
            gib: u64,
        },
        Forget(usize),
        Claim {
            name: usize,
            generation: usize,
            class: usize,
            size: usize,
            selected: Option<usize>,
            bound: bool,
        },
        DeleteClaim(usize),
        Class {
            which: usize,
            variant: usize,
        },
        DeleteClass(usize),
        /// A re-list of one kind (0 nodes, 1 volumes, 2 claims, 3 classes) that misses
        /// the objects whose bit is set in `dropped`: deleted while the watch was down.
        Relist {
            kind: usize,
            dropped: u8,
        },
        /// A new process: everything listed into a fresh index, which must agree too.
        Restart,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..3usize, any::<(bool, bool)>(), 1..200u64, 0..50u64, any::<bool>()).prop_map(
                |(node, pools, gib, agent_gib, heartbeat)| Op::Node {
                    node,
                    pools,
                    gib,
                    agent_gib,
                    heartbeat
                }
            ),
            1 => (0..3usize).prop_map(Op::DeleteNode),
            1 => (0..12usize, 0..4usize, 0..3usize, 0..60u64).prop_map(|(uid, node, pool, gib)| {
                Op::Volume {
                    uid,
                    node,
                    pool,
                    gib,
                }
            }),
            1 => (0..12usize).prop_map(Op::DeleteVolume),
            1 => (0..12usize, 0..4usize, 0..3usize, 0..60u64).prop_map(|(uid, node, pool, gib)| {
                Op::Assume {
                    uid,
                    node,
                    pool,
                    gib,
                }
            }),
            1 => (0..12usize).prop_map(Op::Forget),
            4 => (
                0..6usize,
                0..2usize,
                0..5usize,
                0..4usize,
                prop::option::weighted(0.8, 0..4usize),
                prop::bool::weighted(0.2)
            )
                .prop_map(|(name, generation, class, size, selected, bound)| Op::Claim {
                    name,
                    generation,
                    class,
                    size,
                    selected,
                    bound
                }),
            1 => (0..6usize).prop_map(Op::DeleteClaim),
            1 => (0..4usize, 0..3usize).prop_map(|(which, variant)| Op::Class { which, variant }),
            1 => (0..4usize).prop_map(Op::DeleteClass),
            1 => (0..4usize, any::<u8>()).prop_map(|(kind, dropped)| Op::Relist { kind, dropped }),
            1 => Just(Op::Restart),
        ]
    }

    /// The claim uid of claim `name` in its `generation`; LocalVolume uids are drawn
    /// from the same 12, so volumes and claims meet.
    fn uid(n: usize) -> String {
        format!("c{}-{}", n % 6, n / 6)
    }

    const CLASSES: [&str; 4] = ["local", "fast", "other", "missing"];

    fn class_object(which: usize, variant: usize) -> StorageClass {
        let name = CLASSES[which];
        match variant {
            0 => class(name, names::PROVISIONER_LOCAL, &[]),
            1 => class(name, names::PROVISIONER_LOCAL, &[("pool", "fast")]),
            _ => class(name, names::PROVISIONER_LOCAL, &[("placement", "random")]),
        }
    }

    /// What the API server holds: the objects last written, by name.
    #[derive(Default)]
    struct World {
        nodes: BTreeMap<String, StorageNode>,
        volumes: BTreeMap<String, LocalVolume>,
        claims: BTreeMap<String, PersistentVolumeClaim>,
        classes: BTreeMap<String, StorageClass>,
    }

    fn drop_some<T>(map: &mut BTreeMap<String, T>, dropped: u8) {
        let names: Vec<String> = map.keys().cloned().collect();
        for (i, name) in names.iter().enumerate() {
            if dropped & (1 << (i % 8)) != 0 {
                map.remove(name);
            }
        }
    }

    fn apply(index: &mut ClusterIndex, world: &mut World, op: &Op) {
        match *op {
            Op::Node {
                node,
                pools,
                gib,
                agent_gib,
                heartbeat,
            } => {
                let mut list = Vec::new();
                if pools.0 {
                    list.push(("default", Bytes::gib(gib), Bytes::gib(agent_gib)));
                }
                if pools.1 {
                    list.push(("fast", Bytes::gib(gib / 2), Bytes::ZERO));
                }
                let beat = if heartbeat { super::NOW } else { super::STALE };
                let object = sn(NODES[node], Some(beat), &list);
                world.nodes.insert(NODES[node].into(), object.clone());
                index.apply_storage_node(object);
            }
            Op::DeleteNode(node) => {
                world.nodes.remove(NODES[node]);
                index.delete_storage_node(NODES[node]);
            }
            Op::Volume {
                uid: u,
                node,
                pool,
                gib,
            } => {
                let object = lv(&uid(u), NODES[node], POOLS[pool], Bytes::gib(gib));
                world
                    .volumes
                    .insert(format!("pvc-{}", uid(u)), object.clone());
                index.apply_local_volume(object);
            }
            Op::DeleteVolume(u) => {
                world.volumes.remove(&format!("pvc-{}", uid(u)));
                index.delete_local_volume(&format!("pvc-{}", uid(u)));
            }
            Op::Assume {
                uid: u,
                node,
                pool,
                gib,
            } => index.assume_local_volume(&lv(&uid(u), NODES[node], POOLS[pool], Bytes::gib(gib))),
            Op::Forget(u) => index.forget_assumed(&format!("pvc-{}", uid(u))),
            Op::Claim {
                name,
                generation,
                class,
                size,
                selected,
                bound,
            } => {
                let claim_name = format!("claim-{name}");
                let mut object = pvc(
                    &claim_name,
                    CLASSES[class % 4],
                    SIZES[size],
                    selected.map(|n| NODES[n]),
                    bound.then_some("pv"),
                );
                if class == 4 {
                    object.spec.as_mut().unwrap().storage_class_name = None;
                }
                object.metadata.uid = Some(uid(name + 6 * generation));
                world.claims.insert(claim_name, object.clone());
                index.apply_claim(object);
            }
            Op::DeleteClaim(name) => {
                let claim_name = format!("claim-{name}");
                world.claims.remove(&claim_name);
                index.delete_claim("apps", &claim_name);
            }
            Op::Class { which, variant } => {
                let object = class_object(which, variant);
                world.classes.insert(CLASSES[which].into(), object.clone());
                index.apply_storage_class(object);
            }
            Op::DeleteClass(which) => {
                world.classes.remove(CLASSES[which]);
                index.delete_storage_class(CLASSES[which]);
            }
            Op::Relist { kind, dropped } => match kind {
                0 => {
                    drop_some(&mut world.nodes, dropped);
                    index.reset_storage_nodes(world.nodes.values().cloned());
                }
                1 => {
                    drop_some(&mut world.volumes, dropped);
                    index.reset_local_volumes(world.volumes.values().cloned());
                }
                2 => {
                    drop_some(&mut world.claims, dropped);
                    index.reset_claims(world.claims.values().cloned());
                }
                _ => {
                    drop_some(&mut world.classes, dropped);
                    index.reset_storage_classes(world.classes.values().cloned());
                }
            },
            Op::Restart => {
                let mut fresh = ClusterIndex::new();
                fresh.reset_storage_classes(world.classes.values().cloned());
                fresh.reset_storage_nodes(world.nodes.values().cloned());
                fresh.reset_local_volumes(world.volumes.values().cloned());
                fresh.reset_claims(world.claims.values().cloned());
                *index = fresh;
            }
        }
    }

    /// Every claim's reservation on every node, from the objects alone.
    fn reservations_from_scratch(index: &ClusterIndex) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (ns, name) in index.claim_keys() {
            let claim = index.claim(&ns, &name).unwrap();
            let annotations = claim.metadata.annotations.clone().unwrap_or_default();
            let Some(node) = annotations.get(names::ANNOTATION_SELECTED_NODE) else {
                continue;
            };
            let spec = claim.spec.clone().unwrap_or_default();
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let volume = format!("pvc-{uid}");
            if spec.volume_name.is_some()
                || index.local_volume(&volume).is_some()
                || index.is_assumed(&volume)
            {
                continue;
            }
            let Some(class) = spec
                .storage_class_name
                .as_deref()
                .and_then(|c| index.storage_class(c))
            else {
                continue;
            };
            if class.provisioner != names::PROVISIONER_LOCAL {
                continue;
            }
            let Ok(params) = crate::cache::ClassParams::from_class(class) else {
                continue;
            };
            let request = spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned());
            let bytes: Bytes = match request {
                None => Bytes::ZERO,
                Some(q) => match q.0.parse() {
                    Ok(b) => b,
                    Err(_) => continue,
                },
            };
            out.entry(node.clone()).or_default().push(format!(
                "{ns}/{name} {uid} {} {}",
                params.pool.as_str(),
                bytes.0
            ));
        }
        out.values_mut().for_each(|v| v.sort());
        out
    }

    fn check(index: &ClusterIndex) -> Result<(), TestCaseError> {
        // The entries, as a derivation from the objects gives them.
        let mut kept: Vec<_> = index.base.nodes.iter().map(|n| n.state.clone()).collect();
        kept.sort_by(|a, b| a.name.cmp(&b.name));
        prop_assert_eq!(&kept, &derive_from_scratch(index));
        // The summaries, as each entry gives them, and the name index.
        let base = &index.base;
        prop_assert_eq!(base.by_name.len(), base.nodes.len());
        prop_assert_eq!(base.summaries.len(), base.nodes.len());
        for (i, node) in base.nodes.iter().enumerate() {
            prop_assert_eq!(base.by_name.get(node.state.name.as_str()), Some(i));
            let summary = &base.summaries[i];
            prop_assert_eq!(summary.ready, node.state.ready);
            prop_assert_eq!(summary.heartbeat, node.heartbeat);
            let pools = &base.pools[summary.pools.clone()];
            prop_assert_eq!(pools.len(), node.state.pools.len());
            for (kept, pool) in pools.iter().zip(&node.state.pools) {
                prop_assert_eq!(&base.pool_names[kept.pool], &pool.name);
                prop_assert_eq!(kept.ready, pool.ready);
                prop_assert_eq!(kept.free, pool.free());
                prop_assert_eq!(kept.allocatable, pool.allocatable());
            }
        }
        // The provisioner's reservation lists.
        let want = reservations_from_scratch(index);
        for node in NODES {
            let mut got: Vec<String> = index
                .reservations_on(node)
                .into_iter()
                .map(|r| {
                    format!(
                        "{}/{} {} {} {}",
                        r.claim.namespace,
                        r.claim.name,
                        r.uid,
                        r.pool.as_str(),
                        r.bytes.0
                    )
                })
                .collect();
            got.sort();
            let none = Vec::new();
            prop_assert_eq!(&got, want.get(node).unwrap_or(&none), "on {}", node);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_incremental_ledger_equals_a_derivation_from_scratch(
            ops in prop::collection::vec(arb_op(), 1..60),
        ) {
            let mut index = ClusterIndex::new();
            let mut world = World::default();
            for op in &ops {
                apply(&mut index, &mut world, op);
                check(&index)?;
            }
        }
    }
}
