//! Hostile input against the extender: the real routes (`extender_app`, the same code the
//! controller mounts and `stowage extender` serves) over a populated [`ClusterIndex`], driven
//! in-process with `oneshot` by proptest-generated requests.
//!
//! Every request, whatever its body, must be answered without a panic, within a generous
//! time bound, and with either a 200 whose body is the verb's result type or a 4xx whose
//! body is `{"Error": "<reason>"}`. Garbage is never a 200, a well-formed request never a
//! 4xx, and a 200 filter answer accounts for exactly the candidate nodes it was given.
//!
//! `cargo fuzz` needs nightly and an extra tool, which CI does not install; these run in
//! `cargo test` (and so in `.ci/run` through `scripts/test`) with fixed case counts that keep
//! the file under ~30 s in a debug build. `PROPTEST_RNG_SEED=<n>` replays a failure proptest
//! reports.

// Test helpers fail loudly where a set-up step breaks (the allow-unwrap-in-tests lint covers
// only #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use parking_lot::RwLock;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use stowage::api::local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec, OnDelete};
use stowage::api::names;
use stowage::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};
use stowage::cache::ClusterIndex;
use stowage::extender_role::{BodyLimit, KeepBest, extender_app};
use stowage::ledger::FitOptions;
use stowage_extender::{ExtenderFilterResult, HostPriority};
use stowage_testkit::fixtures::{pvc, storage_class};

mod support;
use tower::ServiceExt;

const GI: u64 = 1 << 30;
const NS: &str = "apps";

/// Generous: a debug build answers a 5,000-node request in well under a second; this only
/// catches a request that hangs or goes quadratic.
const PER_REQUEST: Duration = Duration::from_secs(10);

/// Nodes with a pool `default` of `n * 10Gi` (node-1 .. node-8) that the index knows.
const KNOWN_NODES: usize = 8;

/// Claims the index knows, by what makes them interesting.
const CLAIMS: &[(&str, &str, &str)] = &[
    ("fits", "local", "1Gi"),
    ("zero", "local", "0"),
    ("one-byte", "local", "1"),
    ("two-pow-63", "local", "9223372036854775808"),
    ("max-u64", "local", "18446744073709551615"),
    ("beyond-u64", "local", "18446744073709551616"),
    ("exabytes", "local", "16Ei"),
    ("more-than-any-pool", "local", "100Ti"),
    ("negative", "local", "-1Gi"),
    ("fraction", "local", "0.5"),
    ("milli", "local", "1m"),
    ("exponent", "local", "1e30"),
    ("garbage-size", "local", "lots"),
    ("empty-size", "local", ""),
    ("unicode-size", "local", "１Gi"),
    ("bad-placement", "bad-placement", "1Gi"),
    ("bad-on-delete", "bad-on-delete", "1Gi"),
    ("empty-pool", "empty-pool", "1Gi"),
    ("missing-pool", "missing-pool", "1Gi"),
    ("archive", "archive", "1Gi"),
    ("not-ours", "other", "1Gi"),
    ("no-class", "", "1Gi"),
];

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn storage_node(name: &str, capacity: u64) -> StorageNode {
    let mut node = StorageNode::new(name, StorageNodeSpec {});
    node.status = Some(StorageNodeStatus {
        pools: vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity,
            allocated_bytes: 0,
            available_bytes: capacity,
            ready: true,
            ..Default::default()
        }],
        // A heartbeat far in the future never goes stale while the test runs.
        heartbeat_time: Some("2999-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    node
}

fn claim(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    let mut claim = pvc(NS, name).size(size).build();
    claim.metadata.uid = Some(format!("uid-{name}"));
    if !class.is_empty() {
        claim.spec.as_mut().unwrap().storage_class_name = Some(class.into());
    }
    claim
}

/// The cluster the extender sees: eight nodes, classes good and bad, and [`CLAIMS`]; node-1
/// already holds a LocalVolume of `fits` and a reservation for `archive`.
fn index() -> ClusterIndex {
    let mut index = ClusterIndex::new();
    for i in 1..=KNOWN_NODES {
        index.apply_storage_node(storage_node(&node_name(i), (i as u64) * 10 * GI));
    }
    let local = |name: &str, params: &[(&str, &str)]| {
        let mut b = storage_class(name)
            .provisioner(names::PROVISIONER_LOCAL)
            .wait_for_first_consumer();
        for (k, v) in params {
            b = b.param(k, v);
        }
        b.build()
    };
    index.apply_storage_class(local("local", &[]));
    index.apply_storage_class(local("archive", &[("onDelete", "archive")]));
    index.apply_storage_class(local("bad-placement", &[("placement", "🎲")]));
    index.apply_storage_class(local("bad-on-delete", &[("onDelete", "shred")]));
    index.apply_storage_class(local("empty-pool", &[("pool", " ")]));
    index.apply_storage_class(local("missing-pool", &[("pool", "nowhere")]));
    index.apply_storage_class(storage_class("other").provisioner("example.com/x").build());
    for &(name, class, size) in CLAIMS {
        let mut c = claim(name, class, size);
        if name == "archive" {
            c.metadata.annotations = Some(BTreeMap::from([(
                names::ANNOTATION_SELECTED_NODE.to_string(),
                node_name(1),
            )]));
        }
        index.apply_claim(c);
    }
    index.apply_local_volume(LocalVolume::new(
        "pvc-uid-fits",
        LocalVolumeSpec {
            node_name: node_name(1),
            pool: "default".into(),
            size_bytes: GI,
            claim: ClaimRef {
                namespace: NS.into(),
                name: "fits".into(),
                uid: "uid-fits".into(),
            },
            on_delete: OnDelete::Delete,
        },
    ));
    index
}

fn app() -> Router {
    app_with(BodyLimit::default())
}

fn app_with(body_limit: BodyLimit) -> Router {
    let index = Arc::new(RwLock::new(index()));
    extender_app(
        index,
        FitOptions::default(),
        "",
        body_limit,
        KeepBest::default(),
        &prometheus::Registry::new(),
    )
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Nothing is written into the source tree; a failure prints its input and seed.
        failure_persistence: None,
        ..Config::default()
    })
}

/// An answered request.
struct Answered {
    status: StatusCode,
    body: Bytes,
}

async fn send(app: &Router, verb: &str, content_type: Option<&str>, body: Body) -> Answered {
    let mut request = Request::post(format!("/{verb}"));
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let started = Instant::now();
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = started.elapsed();
    assert!(
        elapsed < PER_REQUEST,
        "{verb} took {elapsed:?} (status {status})"
    );
    Answered { status, body }
}

/// The checks every answer passes, whatever was asked: a 200 carries the verb's result
/// type, anything else is a 4xx with a non-empty `{"Error": ...}`.
fn check_shape(verb: &str, a: &Answered) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&a.body);
    prop_assert!(
        a.status == StatusCode::OK || a.status.is_client_error(),
        "{verb}: status {} for {text}",
        a.status
    );
    if a.status == StatusCode::OK {
        match verb {
            "filter" => {
                serde_json::from_slice::<ExtenderFilterResult>(&a.body)
                    .map_err(|e| TestCaseError::fail(format!("filter 200 body {text}: {e}")))?;
            }
            _ => {
                let scores: Vec<HostPriority> = serde_json::from_slice(&a.body)
                    .map_err(|e| TestCaseError::fail(format!("prioritize body {text}: {e}")))?;
                for s in scores {
                    prop_assert!(
                        (0..=10).contains(&s.score),
                        "score {} out of 0..=10",
                        s.score
                    );
                }
            }
        }
    } else {
        let error: Value = serde_json::from_slice(&a.body).map_err(|e| {
            TestCaseError::fail(format!("{} body is not JSON: {text}: {e}", a.status))
        })?;
        let reason = error["Error"].as_str().unwrap_or_default();
        prop_assert!(!reason.is_empty(), "{} without a reason: {text}", a.status);
    }
    Ok(())
}

/// Checks a 200 filter answer against its candidates: no error means every distinct
/// candidate is either passed or failed, never both, and nothing else is named.
fn check_filter_accounting(a: &Answered, candidates: &[String]) -> Result<(), TestCaseError> {
    let result: ExtenderFilterResult = serde_json::from_slice(&a.body).unwrap();
    let asked: BTreeSet<&str> = candidates.iter().map(String::as_str).collect();
    let passed: BTreeSet<&str> = result
        .node_names
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(
            result
                .nodes
                .iter()
                .flat_map(|l| l.items.iter())
                .filter_map(|n| n.metadata.name.as_deref()),
        )
        .collect();
    let failed: BTreeSet<&str> = result
        .failed_nodes
        .keys()
        .chain(result.failed_and_unresolvable_nodes.keys())
        .map(String::as_str)
        .collect();
    if !result.error.is_empty() {
        prop_assert!(
            passed.is_empty() && failed.is_empty(),
            "an error with a verdict"
        );
        return Ok(());
    }
    prop_assert!(passed.is_disjoint(&failed), "a node both passed and failed");
    let answered: BTreeSet<&str> = passed.union(&failed).copied().collect();
    prop_assert_eq!(answered, asked);
    for reason in result
        .failed_nodes
        .values()
        .chain(result.failed_and_unresolvable_nodes.values())
    {
        prop_assert!(!reason.is_empty(), "a failed node without a reason");
    }
    Ok(())
}

// === strategies ===

/// Strings a hostile client would send as names: empty, unicode, control characters, path
/// syntax, very long, and the names the index knows.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1..=KNOWN_NODES + 2).prop_map(node_name),
        2 => proptest::sample::select(CLAIMS.iter().map(|c| c.0.to_string()).collect::<Vec<_>>()),
        1 => Just(String::new()),
        1 => Just("../../etc/passwd".to_string()),
        1 => Just("\u{0}\u{1}\u{7f}".to_string()),
        1 => Just("ノード-١٢٣-🚀".to_string()),
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
        2 => "\\PC{0,40}",
    ]
}

fn candidates() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => proptest::collection::vec(hostile_string(), 0..40),
        // Duplicates of one known node.
        1 => (1..=KNOWN_NODES, 1usize..200).prop_map(|(i, n)| vec![node_name(i); n]),
        // Thousands of nodes, most unknown to the index.
        1 => (0usize..5_000).prop_map(|n| (0..n).map(|i| node_name(i % (KNOWN_NODES * 4))).collect()),
    ]
}

/// A pod as kube-scheduler would send it, with hostile contents.
fn pod() -> impl Strategy<Value = Value> {
    let volume = prop_oneof![
        3 => hostile_string().prop_map(|c| json!({"name": "v", "persistentVolumeClaim": {"claimName": c}})),
        1 => Just(json!({"name": "scratch", "emptyDir": {}})),
        1 => Just(json!({"name": "eph", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}})),
        // k8s-openapi reads a missing claimName as "": a claim no index holds.
        1 => Just(json!({"name": "v", "persistentVolumeClaim": {}})),
    ];
    (
        prop_oneof![Just(NS.to_string()), hostile_string()],
        hostile_string(),
        proptest::collection::vec(volume, 0..6),
        any::<bool>(),
    )
        .prop_map(|(namespace, name, volumes, with_spec)| {
            let mut pod = json!({"metadata": {"name": name, "namespace": namespace}});
            if with_spec {
                pod["spec"] = json!({"containers": [], "volumes": volumes});
            }
            pod
        })
}

/// Any JSON value, nested a few levels, with the keys the extender looks for mixed in.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            "Pod",
            "pod",
            "Nodes",
            "nodes",
            "NodeNames",
            "nodenames",
            "items",
            "metadata",
            "name",
            "namespace",
            "spec",
            "volumes",
            "persistentVolumeClaim",
            "claimName",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A well-formed request body: the pod and its candidates as `NodeNames` (nodeCacheCapable)
/// or as a full `NodeList`.
fn well_formed() -> impl Strategy<Value = (Value, Vec<String>)> {
    (pod(), candidates(), any::<bool>()).prop_map(|(pod, names, full)| {
        let body = if full {
            let items: Vec<Value> = names
                .iter()
                .map(|n| json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}}))
                .collect();
            json!({"Pod": pod, "Nodes": {"items": items}})
        } else {
            json!({"Pod": pod, "NodeNames": names})
        };
        (body, names)
    })
}

// === tests ===

#[test]
fn arbitrary_bytes_are_refused_with_a_4xx_and_a_reason() {
    let rt = runtime();
    let app = app();
    let bytes = proptest::collection::vec(any::<u8>(), 0..4096);
    runner(300)
        .run(&(bytes, any::<bool>()), |(bytes, filter)| {
            let verb = if filter { "filter" } else { "prioritize" };
            let valid_json = serde_json::from_slice::<Value>(&bytes).is_ok();
            let a = rt.block_on(send(
                &app,
                verb,
                Some("application/json"),
                Body::from(bytes),
            ));
            check_shape(verb, &a)?;
            if !valid_json {
                prop_assert_eq!(a.status, StatusCode::BAD_REQUEST);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_requests_are_answered_or_refused_never_anything_else() {
    // Byte flips, insertions and truncations of well-formed requests reach deeper into the
    // decoder than random bytes do.
    let rt = runtime();
    let app = app();
    let mutations =
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8);
    let strategy = (
        well_formed(),
        mutations,
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    runner(150)
        .run(&strategy, |((body, _), mutations, cut, filter)| {
            let verb = if filter { "filter" } else { "prioritize" };
            let mut bytes = serde_json::to_vec(&body).unwrap();
            for (at, byte, op) in mutations {
                let i = at.index(bytes.len().max(1)).min(bytes.len());
                match op {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            if cut.index(4) == 0 {
                bytes.truncate(cut.index(bytes.len().max(1)));
            }
            let a = rt.block_on(send(
                &app,
                verb,
                Some("application/json"),
                Body::from(bytes),
            ));
            check_shape(verb, &a)
        })
        .unwrap();
}

#[test]
fn arbitrary_json_documents_get_a_result_or_a_400() {
    let rt = runtime();
    let app = app();
    runner(300)
        .run(&(any_json(), any::<bool>()), |(doc, filter)| {
            let verb = if filter { "filter" } else { "prioritize" };
            let a = rt.block_on(send(
                &app,
                verb,
                Some("application/json"),
                Body::from(doc.to_string()),
            ));
            check_shape(verb, &a)?;
            // Only an object can be ExtenderArgs.
            if !doc.is_object() {
                prop_assert_eq!(a.status, StatusCode::BAD_REQUEST);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn well_formed_requests_with_hostile_contents_are_answered_200_for_every_candidate() {
    let rt = runtime();
    let app = app();
    runner(100)
        .run(
            &(well_formed(), any::<bool>()),
            |((body, names), filter)| {
                let verb = if filter { "filter" } else { "prioritize" };
                let a = rt.block_on(send(
                    &app,
                    verb,
                    Some("application/json"),
                    Body::from(body.to_string()),
                ));
                check_shape(verb, &a)?;
                // A Node object without a name cannot be answered (the scheduler never sends one).
                let nameless_node =
                    body.get("Nodes").is_some() && names.iter().any(String::is_empty);
                if nameless_node {
                    prop_assert_eq!(a.status, StatusCode::BAD_REQUEST);
                    prop_assert!(String::from_utf8_lossy(&a.body).contains("metadata.name"));
                    return Ok(());
                }
                prop_assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&a.body)
                );
                if filter {
                    check_filter_accounting(&a, &names)?;
                } else {
                    let scores: Vec<HostPriority> = serde_json::from_slice(&a.body).unwrap();
                    let asked: BTreeSet<&str> = names.iter().map(String::as_str).collect();
                    for s in &scores {
                        prop_assert!(
                            asked.contains(s.host.as_str()),
                            "scored {:?}, not asked",
                            s.host
                        );
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn wrong_types_and_missing_fields_are_400s_that_name_the_field() {
    let rt = runtime();
    let app = app();
    let pod = json!({"metadata": {"name": "p", "namespace": NS}, "spec": {"containers": []}});
    let cases = [
        (json!({}), "Pod"),
        (json!({"NodeNames": ["node-1"]}), "Pod"),
        (json!({"Pod": pod, "NodeNames": "node-1"}), "NodeNames"),
        (json!({"Pod": pod, "NodeNames": [1, 2]}), "NodeNames"),
        (json!({"Pod": pod, "Nodes": {"items": "x"}}), "Nodes"),
        (
            json!({"Pod": pod, "Nodes": {"items": [{"metadata": {"name": 5}}]}}),
            "Nodes",
        ),
        (json!({"Pod": 1, "NodeNames": []}), "Pod"),
        (
            json!({"Pod": {"metadata": {"name": ["p"]}}, "NodeNames": []}),
            "Pod",
        ),
        (
            json!({"Pod": {"spec": {"volumes": {}}}, "NodeNames": []}),
            "Pod",
        ),
        (
            json!({"Pod": {"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": 7}}]}}, "NodeNames": []}),
            "claimName",
        ),
        // serde would read an array as the struct's fields in order; Go's decoder, and so
        // the scheduler, never does.
        (json!([{}, {"items": []}]), "a JSON object"),
        (json!({"Pod": {}, "Nodes": [null, []]}), "Nodes"),
        (
            json!({"Pod": {}, "Nodes": {"items": [{"metadata": ["node-1"]}]}}),
            "Nodes.items[0]",
        ),
        (json!([]), "ExtenderArgs"),
        (json!("Pod"), "ExtenderArgs"),
        (json!(null), "ExtenderArgs"),
    ];
    for (body, field) in cases {
        for verb in ["filter", "prioritize"] {
            let a = rt.block_on(send(
                &app,
                verb,
                Some("application/json"),
                Body::from(body.to_string()),
            ));
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{verb} {body}");
            let reason = serde_json::from_slice::<Value>(&a.body).unwrap()["Error"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(reason.contains(field), "{verb} {body}: {reason}");
        }
    }
}

#[test]
fn deeply_nested_json_is_answered_without_a_stack_overflow() {
    let rt = runtime();
    let app = app();
    let deep = |depth: usize, open: &str, close: &str| {
        format!("{}1{}", open.repeat(depth), close.repeat(depth))
    };
    let claim = r#"{"metadata": {"name": "p", "namespace": "apps"}, "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "fits"}}]}"#;
    // (body, status, what a 400's reason says). Values of unknown keys, and of the keys the
    // extender does not read, are skipped without recursing, as Go's decoder skips them;
    // nesting inside fields the extender reads stops at the first wrong type. Either way the
    // stack stays flat.
    let bodies = [
        (deep(100_000, "[", "]"), StatusCode::BAD_REQUEST, "expected"),
        (
            deep(100_000, "{\"a\":", "}"),
            StatusCode::BAD_REQUEST,
            "missing field `Pod`",
        ),
        (
            format!(
                r#"{{"Pod": {claim}, "x": {}}}, "NodeNames": ["node-1"]}}"#,
                deep(100_000, "[", "]")
            ),
            StatusCode::OK,
            "",
        ),
        // Annotations are not read (only name, namespace, uid and claim volumes are), so
        // their nesting is skipped like any unknown key's.
        (
            format!(
                r#"{{"Pod": {{"metadata": {{"annotations": {}}}}}, "NodeNames": []}}"#,
                deep(100_000, "{\"a\":", "}")
            ),
            StatusCode::OK,
            "",
        ),
        (
            format!(
                r#"{{"Pod": {claim}}}, "Nodes": {{"items": [{{"metadata": {{"name": "node-1"}}, "status": {}}}]}}}}"#,
                deep(100_000, "{\"a\":", "}")
            ),
            StatusCode::OK,
            "",
        ),
        (
            format!(
                r#"{{"Pod": {claim}}}, "Nodes": {{"items": [{{"metadata": {}}}]}}}}"#,
                deep(100_000, "{\"name\":", "}")
            ),
            StatusCode::BAD_REQUEST,
            "Nodes.items[0]",
        ),
    ];
    for (body, status, needle) in bodies {
        for verb in ["filter", "prioritize"] {
            let a = rt.block_on(send(
                &app,
                verb,
                Some("application/json"),
                Body::from(body.clone()),
            ));
            check_shape(verb, &a).unwrap();
            let text = String::from_utf8_lossy(&a.body);
            assert_eq!(
                a.status,
                status,
                "{verb} {}: {}",
                &body[..60],
                &text[..text.len().min(300)]
            );
            if status == StatusCode::BAD_REQUEST {
                assert!(text.contains(needle), "{verb}: {text}");
            }
        }
    }
}

#[test]
fn absurd_sizes_and_bad_classes_get_an_error_or_a_verdict_never_an_overcommit() {
    let rt = runtime();
    let app = app();
    let nodes: Vec<String> = (1..=KNOWN_NODES).map(node_name).collect();
    // (claim, what the filter says): Ok(passing nodes) or Err(a needle of the error).
    let cases: &[(&str, Result<&[&str], &str>)] = &[
        // Its volume is made on node-1 already (volumes never move), which fits it: its own
        // bytes are not counted twice there.
        ("fits", Ok(&["node-1"])),
        // Zero and one byte still take one whole MiB; every node has room.
        (
            "zero",
            Ok(&[
                "node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "node-7", "node-8",
            ]),
        ),
        (
            "one-byte",
            Ok(&[
                "node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "node-7", "node-8",
            ]),
        ),
        ("two-pow-63", Ok(&[])),
        ("max-u64", Err("larger than 8Ei")),
        ("exabytes", Err("larger than 8Ei")),
        ("more-than-any-pool", Ok(&[])),
        ("beyond-u64", Err("spec.resources.requests.storage")),
        ("negative", Err("spec.resources.requests.storage")),
        ("garbage-size", Err("spec.resources.requests.storage")),
        ("empty-size", Err("spec.resources.requests.storage")),
        ("unicode-size", Err("spec.resources.requests.storage")),
        ("bad-placement", Err("parameter \"placement\"")),
        ("bad-on-delete", Err("parameter \"onDelete\"")),
        ("empty-pool", Err("parameter \"pool\"")),
        ("missing-pool", Ok(&[])),
    ];
    for &(claim, ref want) in cases {
        let pod = json!({
            "metadata": {"name": "p", "namespace": NS},
            "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
        });
        let body = json!({"Pod": pod, "NodeNames": nodes}).to_string();
        let a = rt.block_on(send(
            &app,
            "filter",
            Some("application/json"),
            Body::from(body.clone()),
        ));
        assert_eq!(a.status, StatusCode::OK, "{claim}");
        let result: ExtenderFilterResult = serde_json::from_slice(&a.body).unwrap();
        match want {
            Ok(passing) => {
                assert_eq!(result.error, "", "{claim}");
                let got: Vec<&str> = result
                    .node_names
                    .iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                assert_eq!(&got, passing, "{claim}");
                for reason in result.failed_and_unresolvable_nodes.values() {
                    assert!(!reason.is_empty(), "{claim}");
                }
            }
            Err(needle) => {
                assert!(result.error.contains(needle), "{claim}: {:?}", result.error);
                assert!(
                    result.node_names.is_none() || result.node_names == Some(vec![]),
                    "{claim}"
                );
            }
        }
        // Prioritize never fails a pod; it scores what it can.
        let a = rt.block_on(send(
            &app,
            "prioritize",
            Some("application/json"),
            Body::from(body),
        ));
        assert_eq!(a.status, StatusCode::OK, "{claim}");
        let scores: Vec<HostPriority> = serde_json::from_slice(&a.body).unwrap();
        assert!(
            scores.iter().all(|s| (0..=10).contains(&s.score)),
            "{claim}"
        );
    }
}

#[test]
fn oversized_bodies_are_refused_with_413_without_being_read_whole() {
    let rt = runtime();
    let app = app();
    // 50 MB with a Content-Length, and 50 MB streamed without one (chunked).
    let mut fifty = br#"{"Pod": {}, "NodeNames": [""#.to_vec();
    fifty.resize(50 * 1024 * 1024, b'a');
    let a = rt.block_on(send(
        &app,
        "filter",
        Some("application/json"),
        Body::from(fifty),
    ));
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    check_shape("filter", &a).unwrap();

    let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let stream = futures::stream::iter((0..50).map(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    }));
    let a = rt.block_on(send(
        &app,
        "prioritize",
        Some("application/json"),
        Body::from_stream(stream),
    ));
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    check_shape("prioritize", &a).unwrap();
    let read = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        read <= 34,
        "read {read} MiB of a body over the 32 MiB limit"
    );
}

#[test]
fn content_types_other_than_json_are_415() {
    let rt = runtime();
    let app = app();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-yaml"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let a = rt.block_on(send(&app, "filter", content_type, Body::from("{}")));
        assert_eq!(
            a.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        check_shape("filter", &a).unwrap();
    }
}

#[test]
fn a_large_well_formed_request_is_answered_in_bounded_time() {
    let rt = runtime();
    // 5,000 full Node objects with a kilobyte of labels each (~6 MB), for a claim that fits:
    // nodeCacheCapable: false, for which the body limit is raised (the default, 4 MiB, is
    // sized for node names and answers this with a 413 naming the flag).
    let app = app_with(BodyLimit { mib: 32 });
    let labels: serde_json::Map<String, Value> = (0..20)
        .map(|i| {
            (
                format!("label-{i}.example.com/key"),
                Value::from("v".repeat(30)),
            )
        })
        .collect();
    let items: Vec<Value> = (0..5_000)
        .map(|i| json!({"metadata": {"name": node_name(i % 16 + 1), "labels": labels}}))
        .collect();
    let pod = json!({
        "metadata": {"name": "p", "namespace": NS},
        "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "fits"}}]},
    });
    let body = json!({"Pod": pod, "Nodes": {"items": items}}).to_string();
    let refused = rt.block_on(send(
        &self::app(),
        "filter",
        Some("application/json"),
        Body::from(body.clone()),
    ));
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reason = String::from_utf8_lossy(&refused.body);
    assert!(reason.contains("--extender-body-limit-mib"), "{reason}");
    for verb in ["filter", "prioritize"] {
        let a = rt.block_on(send(
            &app,
            verb,
            Some("application/json"),
            Body::from(body.clone()),
        ));
        assert_eq!(a.status, StatusCode::OK, "{verb}");
        check_shape(verb, &a).unwrap();
    }
}

// === the real binary under hostile bodies ===

/// Kills the `stowage extender` child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); `None` once the process
/// has exited.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// [`stowage_testkit::net::post_status`] with a minute to answer.
fn post_raw(port: u16, path: &str, body: &[u8]) -> Option<u16> {
    stowage_testkit::net::post_status(port, path, Arc::new(body.to_vec()), Duration::from_secs(60))
}

/// The pod of claim `data` as kube-scheduler sends it, with `extra` merged into its metadata
/// and `volumes` as its volumes.
fn binary_pod(volumes: Value) -> Value {
    json!({
        "metadata": {"name": "app", "namespace": NS, "uid": "6f1c2a9e-0000-4000-8000-000000000001"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], "volumes": volumes},
    })
}

/// A JSON document of about `size` bytes: `{prefix}` + `item` repeated + `{suffix}`, items
/// joined by commas, with `item(i)` for the i-th.
fn repeated(size: usize, prefix: &str, suffix: &str, item: impl Fn(usize) -> String) -> Vec<u8> {
    let mut out = prefix.as_bytes().to_vec();
    let mut i = 0;
    while out.len() + suffix.len() < size {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item(i).as_bytes());
        i += 1;
    }
    out.extend_from_slice(suffix.as_bytes());
    out
}

/// Hostile bodies of about `size` bytes each, each the worst of its kind for a decoder that
/// materializes what it reads: (what, verb, body).
fn hostile_bodies(size: usize) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let claim = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
    let pod = binary_pod(claim.clone()).to_string();
    let managed = repeated(
        size,
        r#"{"NodeNames": ["big"], "Pod": {"metadata": {"name": "app", "namespace": "apps", "managedFields": ["#,
        r#"]}}}"#,
        |i| {
            format!(r#"{{"manager": "m{i}", "fieldsV1": {{"f:a": {{}}, "f:b": {{"k:x": {{}}}}}}}}"#)
        },
    );
    let annotations = repeated(
        size,
        r#"{"NodeNames": ["big"], "Pod": {"metadata": {"name": "app", "namespace": "apps", "annotations": {"#,
        r#"}}}}"#,
        |i| format!(r#""a{i}": """#),
    );
    let names = repeated(
        size,
        &format!(r#"{{"Pod": {pod}, "NodeNames": ["#),
        "]}",
        |i| format!(r#""{i:x}""#),
    );
    let nodes = repeated(
        size,
        &format!(r#"{{"Pod": {pod}, "Nodes": {{"items": ["#),
        "]}}",
        |i| format!(r#"{{"metadata":{{"name":"{i:x}"}}}}"#),
    );
    let volumes = repeated(
        size,
        r#"{"NodeNames": ["big"], "Pod": {"metadata": {"name": "app", "namespace": "apps"}, "spec": {"volumes": ["#,
        "]}}}",
        |_| r#"{"name":"v","ephemeral":{}}"#.to_string(),
    );
    // As many names as a request may have, each answered with a reason: the most a body
    // under the caps costs to answer.
    let at_cap: Vec<String> = (0..stowage_extender::MAX_CANDIDATES)
        .map(|i| format!("{i:x}"))
        .collect();
    let at_cap = format!(r#"{{"Pod": {pod}, "NodeNames": {}}}"#, json!(at_cap)).into_bytes();
    let mut oversized = names.clone();
    oversized.resize(size * 3, b' ');
    vec![
        ("managedFields", "/filter", managed),
        ("annotations", "/prioritize", annotations),
        ("node names", "/filter", names.clone()),
        ("node names", "/prioritize", names),
        ("node objects", "/filter", nodes),
        ("ephemeral volumes", "/filter", volumes),
        ("node names at the cap", "/filter", at_cap.clone()),
        ("node names at the cap", "/prioritize", at_cap),
        ("over the limit", "/filter", oversized),
    ]
}

/// An API server with the CRDs, namespace `apps`, the reporting node `big` (100Gi), the
/// local class `local` and the claim `data` (20Gi).
async fn binary_cluster() -> stowage_testkit::ApiServer {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::storage::v1::StorageClass;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Api;
    use kube::api::PostParams;

    let server = stowage_testkit::ApiServer::start().await.unwrap();
    let client = server.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in stowage::api::crds() {
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let sn_api: Api<StorageNode> = Api::all(client.clone());
    stowage_testkit::wait_for(
        Duration::from_secs(8),
        "storagenodes are served",
        || async { sn_api.list(&Default::default()).await.is_ok() },
    )
    .await
    .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &stowage_testkit::fixtures::namespace(NS).build(),
        )
        .await
        .unwrap();
    support::cluster::reporting_node(&client, "big", 100 * GI)
        .await
        .unwrap();
    let classes: Api<StorageClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &storage_class("local")
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .build(),
        )
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, NS);
    claims
        .create(
            &PostParams::default(),
            &pvc(NS, "data").size("20Gi").class("local").build(),
        )
        .await
        .unwrap();
    server
}

/// Starts `stowage extender` against `server` and waits until `/readyz` is 200.
async fn start_binary(server: &stowage_testkit::ApiServer) -> (Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let port = stowage_testkit::net::free_port();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
            .arg("extender")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    stowage_testkit::wait_for(Duration::from_secs(8), "/readyz is 200", || async {
        stowage_testkit::net::get(port, "/readyz")
            .await
            .map(|(code, _)| code)
            == Some(200)
    })
    .await
    .unwrap();
    (child, port, dir)
}

/// The peak resident set of `stowage extender` while four clients send it hostile bodies at
/// its body limit (managedFields, annotations, tiny node names, node objects and volumes by
/// the hundred thousand, and bodies over the limit) stays within twice its resident set at
/// rest, and a small request sent meanwhile is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extender_binary_under_hostile_bodies_peaks_within_twice_its_idle_rss() {
    let server = binary_cluster().await;
    let (child, port, _dir) = start_binary(&server).await;
    let pid = child.0.id();
    let small = json!({"Pod": binary_pod(json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])), "NodeNames": ["big", "ghost"]}).to_string();
    let small = Arc::new(small.into_bytes());

    // At rest: every route and code path has run once, then the process settles.
    let warm = small.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            assert_eq!(post_raw(port, "/filter", &warm), Some(200));
            assert_eq!(post_raw(port, "/prioritize", &warm), Some(200));
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = proc_kib(pid, "VmRSS").unwrap();
    // Resets VmHWM to the current resident set (Linux's clear_refs, value 5).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    // At most 8 MiB a body: an unbounded decoder must fail this test, not take the machine.
    let size = stowage_extender::DEFAULT_BODY_LIMIT.min(8 << 20) - 4096;
    let bodies = Arc::new(hostile_bodies(size));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for round in 0..2 {
                    for i in 0..bodies.len() {
                        let (what, path, body) = &bodies[(i + c + round) % bodies.len()];
                        statuses.push((*what, post_raw(port, path, body)));
                    }
                }
                statuses
            })
        })
        .collect();
    // A watchdog: a process that grows past 1 GiB is killed rather than left to take the
    // machine; the assertion below then fails on its peak.
    let watchdog_done = done.clone();
    let watchdog = std::thread::spawn(move || {
        let mut peak = 0;
        while !watchdog_done.load(std::sync::atomic::Ordering::SeqCst) {
            let Some(rss) = proc_kib(pid, "VmRSS") else {
                break;
            };
            peak = peak.max(rss);
            if rss > 1 << 20 {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    // Small requests keep being answered meanwhile.
    let asker = small.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let mut answered = 0;
        for _ in 0..20 {
            if post_raw(port, "/filter", &asker) == Some(200) {
                answered += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        answered
    });
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.join().unwrap());
    }
    let answered = answered.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let watched = watchdog.join().unwrap();
    // The watchdog's samples stand in for VmHWM once the process is gone.
    let peak = proc_kib(pid, "VmHWM").unwrap_or(watched).max(watched);
    eprintln!("idle {idle} KiB, peak {peak} KiB (watched {watched} KiB), statuses {statuses:?}");
    assert!(
        peak <= 2 * idle,
        "peak RSS {peak} KiB under hostile bodies, more than twice the {idle} KiB at rest"
    );
    assert_eq!(
        answered, 20,
        "small requests answered during the hostile bodies"
    );
    for (what, status) in statuses {
        assert!(
            matches!(status, Some(200 | 400 | 413)),
            "{what}: {status:?}"
        );
    }
}

/// A policy that holds every call for the pod named `held` until [`Gate::open`], and counts
/// how many it holds at once; other pods pass at once.
#[derive(Default)]
struct Gate {
    held: parking_lot::Mutex<(usize, usize, bool)>,
    changed: parking_lot::Condvar,
}

impl Gate {
    /// Calls held now and the most held at once.
    fn held(&self) -> (usize, usize) {
        let held = self.held.lock();
        (held.0, held.1)
    }

    fn open(&self) {
        self.held.lock().2 = true;
        self.changed.notify_all();
    }

    fn hold(&self, pod: &k8s_openapi::api::core::v1::Pod) {
        if pod.metadata.name.as_deref() != Some("held") {
            return;
        }
        let mut held = self.held.lock();
        held.0 += 1;
        held.1 = held.1.max(held.0);
        self.changed.notify_all();
        while !held.2 {
            self.changed.wait(&mut held);
        }
        held.0 -= 1;
    }
}

impl stowage_extender::Policy for Gate {
    fn filter<'n>(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        _: &[&'n str],
    ) -> stowage_extender::FilterVerdict<'n> {
        self.hold(pod);
        stowage_extender::FilterVerdict::PassAll
    }

    fn prioritize<'n>(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        _: &[&'n str],
    ) -> Vec<stowage_extender::NodeScore<'n>> {
        self.hold(pod);
        Vec::new()
    }
}

/// Opens the gate when the test ends, however it ends, so held requests finish.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// While large requests are held mid-answer (standing in for large bodies being decoded),
/// a small request is still answered, and no more than `LARGE_BODIES_AT_ONCE` large ones
/// are taken in at a time. Served as `stowage extender` serves it: one thread with a
/// single-threaded runtime (`serve::serve_on_own_thread`). Structural, not timed: a small
/// request queued behind a large one on the serving thread would wait for the gate, which
/// opens only after it was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_is_answered_while_large_ones_are_being_answered() {
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let app =
        stowage_extender::router(gate.clone(), stowage_extender::RouterConfig::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = stowage::serve::serve_on_own_thread("http", listener, app, stopped).unwrap();

    // Well over the inline size, far under the limit: 20,000 bytes of node names.
    let names: Vec<String> = (0..2_000).map(|i| format!("node-{i:05}")).collect();
    let large = json!({"Pod": {"metadata": {"name": "held"}}, "NodeNames": names}).to_string();
    assert!(large.len() > stowage_extender::INLINE_BODY_LIMIT);
    let large = Arc::new(large.into_bytes());
    let sent = stowage_extender::LARGE_BODIES_AT_ONCE + 3;
    let senders: Vec<_> = (0..sent)
        .map(|i| {
            let large = large.clone();
            let path = if i % 2 == 0 { "/filter" } else { "/prioritize" };
            std::thread::spawn(move || post_raw(port, path, &large))
        })
        .collect();
    stowage_testkit::wait_for(Duration::from_secs(10), "a large request is held", || {
        let gate = gate.clone();
        async move { gate.held().0 > 0 }
    })
    .await
    .unwrap();

    let small =
        json!({"Pod": {"metadata": {"name": "small"}}, "NodeNames": ["node-1"]}).to_string();
    let answered = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /filter HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{small}",
            small.len()
        )
        .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answered.starts_with("HTTP/1.1 200"),
        "the small request was not answered while a large one was held: {answered:?}"
    );

    // Every turn is taken and the rest wait unread: as many held as there are turns.
    stowage_testkit::wait_for(Duration::from_secs(10), "every turn is taken", || {
        let gate = gate.clone();
        async move { gate.held().0 == stowage_extender::LARGE_BODIES_AT_ONCE }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.held(),
        (
            stowage_extender::LARGE_BODIES_AT_ONCE,
            stowage_extender::LARGE_BODIES_AT_ONCE
        ),
        "(held now, most held at once) of {sent} large requests"
    );
    gate.open();
    for sender in senders {
        assert_eq!(sender.join().unwrap(), Some(200));
    }
    stop.send_replace(true);
    server.await.unwrap().unwrap();
}
