//! The whole system with real processes: `stowage agent` per node on hostpath pools in temp
//! dirs, `stowage controller` (leader election on, the extender served on its --listen),
//! and a kube-scheduler calling that extender over HTTP: testkit's stand-in (with its
//! PV-controller emulation) against the in-memory API server, the real kube-scheduler and
//! kube-controller-manager on the real lane (`STOWAGE_E2E=real`, TESTING.md).
//! Pods with WaitForFirstConsumer claims go through the real flow: filter/prioritize,
//! selected-node, LocalVolume, directory on the node's pool, PV, bind, pod bound.
//!
//! The last test points Debian's `prometheus` at every process's /metrics and evaluates each
//! expression of dashboards/stowage.json through its HTTP API.

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use stowage::api::local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec, OnDelete};
use stowage::api::names;
use stowage::api::storage_node::StorageNode;
use stowage_testkit::fixtures::{pod, pvc, storage_class};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::{wait_for, wait_until};
use support::cluster::report_storage_node;
use support::stack::{Env, GI, MI, NS, Options, mix, mix_claims, wait};

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_pods_is_placed_spread_within_every_pool_and_gets_its_directories() {
    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await;
    let utilization = burst_placed(&env, 60, 7).await;
    let (min, max) = lowest_and_highest(&utilization);
    assert!(
        max - min < 0.25,
        "spread placement keeps utilization within a band: {utilization:?}"
    );
    assert!(min > 0.0, "every node got volumes: {utilization:?}");
    env.assert_clean_logs();
}

/// With `--extender-keep-best 1` filter passes one node per pod: the scheduler binds every
/// pod without calling prioritize (kube-scheduler 1.19 skips scoring when one node is
/// feasible), and the filter's own guesses keep a burst from herding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_best_node_kept_a_burst_is_placed_without_scoring_and_spread() {
    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options {
            controller_args: vec!["--extender-keep-best=1".into()],
            ..Options::default()
        },
    )
    .await;
    let utilization = burst_placed(&env, 60, 7).await;
    let (min, max) = lowest_and_highest(&utilization);
    assert!(
        max - min < 0.1,
        "the one node kept is the emptiest, the burst's guesses counted: {utilization:?}"
    );
    let calls = stowage_testkit::net::extender_time(env.controller_port).await;
    let count = |verb: &str| calls.iter().find(|c| c.0 == verb).map_or(0, |c| c.1);
    assert!(count("filter") >= 60, "{calls:?}");
    assert_eq!(
        count("prioritize"),
        0,
        "one node passed each time: {calls:?}"
    );
    env.assert_clean_logs();
}

/// The lowest and the highest of the nodes' utilizations.
fn lowest_and_highest(utilization: &[(String, f64)]) -> (f64, f64) {
    let values = || utilization.iter().map(|u| u.1);
    (
        values().fold(f64::MAX, f64::min),
        values().fold(f64::MIN, f64::max),
    )
}

/// Creates `pods` pods of 1-3 claims (sizes from `seed`) at once, waits until every claim
/// is Bound, checks that each pod's claims are on its node with their directories in that
/// node's pool and that the LocalVolumes add up to the claims, and returns each node's
/// utilization.
async fn burst_placed(env: &Env, pods: usize, seed: u64) -> Vec<(String, f64)> {
    let plan = mix(pods, seed);
    let total_claims: usize = plan.iter().map(Vec::len).sum();
    let names: Vec<String> = (0..plan.len()).map(|i| format!("burst{i:02}")).collect();
    // One burst: all claims and pods created before anything is scheduled.
    let creates = names
        .iter()
        .zip(&plan)
        .map(|(name, sizes)| env.pod(name, "local", sizes));
    futures::future::join_all(creates).await;

    let bound = env.all_bound("burst", total_claims).await;
    let placed = env.scheduled(&names).await;
    let pvs: HashMap<String, PersistentVolume> = env
        .pvs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|pv| (pv.name_any(), pv))
        .collect();
    for (i, (pod_name, sizes)) in names.iter().zip(&plan).enumerate() {
        let node = &placed[pod_name];
        for c in 0..sizes.len() {
            let claim = format!("{pod_name}-{c}");
            let pv = &pvs[&bound[&claim]];
            let (pv_node, path) = Env::pv_node_and_path(pv);
            assert_eq!(
                &pv_node, node,
                "pod {i}'s claim {claim} is on its pod's node"
            );
            let dir = Path::new(&path);
            assert!(dir.is_dir(), "{claim}: {path} exists on {node}'s pool");
            assert!(
                dir.starts_with(&env.agent(node).pool_dir),
                "{claim}: {path} is inside {node}'s pool dir {}",
                env.agent(node).pool_dir.display()
            );
        }
    }
    let allocated = env.allocated().await;
    let total: u64 = plan.iter().flatten().sum::<u64>() * MI;
    assert_eq!(
        allocated.values().sum::<u64>(),
        total,
        "one LocalVolume per claim"
    );
    let mut utilization = Vec::new();
    for a in &env.agents {
        let used = allocated.get(&a.name).copied().unwrap_or(0);
        assert!(
            used <= a.capacity,
            "{}: allocated {used} above allocatable {}",
            a.name,
            a.capacity
        );
        utilization.push((a.name.clone(), used as f64 / a.capacity as f64));
    }
    utilization
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binpack_fills_the_fullest_node_that_fits_first() {
    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await;
    // Pre-fill: n2 half full, n1 a quarter (pinned with a node selector).
    for (name, node, mib) in [("fill-n2", "n2", 3072), ("fill-n1", "n1", 1024)] {
        env.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, name)
                    .size(&format!("{mib}Mi"))
                    .class("local")
                    .build(),
            )
            .await
            .unwrap();
        env.pods()
            .create(
                &PostParams::default(),
                &pod(NS, name)
                    .claims([name])
                    .node_selector(names::LABEL_HOSTNAME, node)
                    .build(),
            )
            .await
            .unwrap();
    }
    env.scheduled(&["fill-n2".into(), "fill-n1".into()]).await;

    let names: Vec<String> = (0..8).map(|i| format!("pack{i}")).collect();
    let creates = names
        .iter()
        .map(|name| env.pod(name, "local-binpack", &[100]));
    futures::future::join_all(creates).await;
    let placed = env.scheduled(&names).await;
    for (pod_name, node) in &placed {
        assert_eq!(
            node, "n2",
            "{pod_name}: binpack prefers the fullest node: {placed:?}"
        );
    }
    // n2 has 6Gi - 3Gi - 800Mi = 2272Mi free: a 2500Mi claim goes to the fullest node
    // that still fits, n1 (3Gi free), not the emptiest, n3.
    env.pod("pack-big", "local-binpack", &[2500]).await;
    let placed = env.scheduled(&["pack-big".into()]).await;
    assert_eq!(placed["pack-big"], "n1", "the fullest node that fits");
    let allocated = env.allocated().await;
    for a in &env.agents {
        assert!(allocated.get(&a.name).copied().unwrap_or(0) <= a.capacity);
    }
}

/// kube-scheduler counts the nodes per distinct reason in the pod's `FailedScheduling`
/// Event, and the API server refuses an Event whose message is over 1,024 characters
/// (kube-scheduler 1.19 loses it; later ones cut it short). So every node that fails the
/// same way must get the same reason: twenty nodes of different free space make one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_bigger_than_any_node_stays_pending_with_one_reason_counting_every_node() {
    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await;
    // Seventeen more nodes, each reported with its own free space (3-7.xGi), as agents
    // would report them.
    for i in 0..17_u64 {
        let name = format!("m{i:02}");
        env.cluster
            .add_node(&stowage_testkit::fixtures::node(&name).build())
            .await
            .unwrap();
        report_storage_node(&env.client, &name, 3 * GI + i * 256 * MI)
            .await
            .unwrap();
    }
    env.pod("huge", "local", &[9 * 1024]).await;
    // The first attempts may fail for a claim the extender's cache has not seen yet
    // ("persistentvolumeclaim not found"), as with a real kube-scheduler; the retries must
    // settle on the capacity reason.
    let expected = "0/20 nodes are available: 20 node(s) had too little free space in storage \
                    pool \"default\" (the pod's claims need 9Gi; the most free on any of them is \
                    8Gi).";
    let failure = wait_until(
        wait(),
        "the pod's scheduling fails for capacity on all 20 nodes",
        || async {
            env.last_failure(NS, "huge")
                .await
                .filter(|f| f.contains("too little free space") || f.len() > 900)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        failure, expected,
        "one reason for the twenty nodes, naming the largest free space"
    );
    // It stays that way: retried, still unscheduled, the claim Pending without a PV.
    env.retried(NS, "huge", 2).await;
    let pod = env.pods().get("huge").await.unwrap();
    assert_eq!(
        pod.spec.unwrap().node_name,
        None,
        "the pod stays unscheduled"
    );
    let claim = env.claims().get("huge-0").await.unwrap();
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    assert!(
        !claim
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(names::ANNOTATION_SELECTED_NODE),
        "no node was selected"
    );
    assert!(
        env.lvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        env.pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_pods_and_claims_removes_archives_or_keeps_the_directories() {
    let env = Env::start(&[("n1", 4 * GI), ("n2", 6 * GI)], Options::default()).await;
    let cases = [
        ("del", "local"),
        ("arc", "local-archive"),
        ("keep", "local-keep"),
    ];
    let mut names = Vec::new();
    for (prefix, class) in cases {
        for i in 0..3 {
            let name = format!("{prefix}{i}");
            env.pod(&name, class, &[64, 32]).await;
            names.push(name);
        }
    }
    env.scheduled(&names).await;
    // claim → (PV name, node, path)
    let mut dirs: HashMap<&str, Vec<(String, String, PathBuf)>> = HashMap::new();
    for (prefix, _) in cases {
        let bound = env.all_bound(prefix, 6).await;
        for pv_name in bound.values() {
            let pv = env.pvs().get(pv_name).await.unwrap();
            let (node, path) = Env::pv_node_and_path(&pv);
            assert!(Path::new(&path).is_dir(), "{path} exists");
            dirs.entry(prefix)
                .or_default()
                .push((pv_name.clone(), node, path.into()));
        }
    }
    for (prefix, _) in cases {
        env.delete_all(prefix).await;
    }
    env.no_volumes_left().await;
    for (pv, _, path) in &dirs["del"] {
        assert!(!path.exists(), "{pv}: {} was deleted", path.display());
    }
    for (pv, node, path) in &dirs["arc"] {
        assert!(!path.exists(), "{pv}: {} was moved away", path.display());
        let archive = env.agent(node).pool_dir.join(".archive");
        let archived: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            archived.iter().any(|a| a.starts_with(&format!("{pv}-"))),
            "{pv} is archived in {}: {archived:?}",
            archive.display()
        );
    }
    for (pv, _, path) in &dirs["keep"] {
        assert!(
            path.is_dir(),
            "{pv}: onDelete retain keeps {}",
            path.display()
        );
    }
    // Removing the PVs' finalizers raced kube-controller-manager's writes on a real cluster
    // (409 on most deletions, each logged as a failure): no longer.
    env.assert_clean_logs();
}

/// Node names are DNS subdomains of up to 253 characters (a fully qualified host name, say),
/// label values at most 63: the node's LocalVolumes and PVs carry a shortened
/// `stowage.io/node` label, its agent watches by that value, and the PV says the whole name
/// in its `stowage.io/node` annotation, from which its release finds the node. Before, the
/// LocalVolume was refused (an invalid label) and the agent's watch with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_named_longer_than_a_label_value_provisions_and_cleans_up() {
    const LONG: &str = "worker-001.rack-17.datacenter-east.production.example-corporation.internal";
    let env = Env::start(&[(LONG, 4 * GI)], Options::default()).await;
    env.pod("long", "local", &[64]).await;
    env.scheduled(&["long".into()]).await;
    let bound = env.all_bound("long", 1).await;
    let pv_name = bound.values().next().unwrap();
    let pv = env.pvs().get(pv_name).await.unwrap();
    let annotations = pv.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations[names::ANNOTATION_NODE], LONG);
    let label = names::node_label_value(LONG);
    assert!(label.len() <= 63 && label != LONG, "{label}");
    assert_eq!(
        pv.metadata.labels.clone().unwrap_or_default()[names::LABEL_NODE],
        label
    );
    let (_, path) = Env::pv_node_and_path(&pv);
    assert!(Path::new(&path).is_dir(), "{path} exists");
    let lv = env.lvs().get(pv_name).await.unwrap();
    assert_eq!(lv.spec.node_name, LONG);
    assert_eq!(
        lv.metadata.labels.clone().unwrap_or_default()[names::LABEL_NODE],
        label
    );

    env.delete_all("long").await;
    env.no_volumes_left().await;
    assert!(!Path::new(&path).exists(), "{path} was deleted");
    env.assert_clean_logs();
}

/// `kubectl delete pv` on a volume still in use deletes nothing: the PV stays Terminating
/// (kube-controller-manager's pv-protection on the real lane, testkit's model of it in
/// memory), the LocalVolume and the data stay, and stowage says why with a
/// `VolumeDeleteDeferred` Event on the PV. Once the claim is deleted the PV is Released and
/// the data goes, as its reclaim policy Delete says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pv_deleted_while_its_claim_is_bound_keeps_its_data_until_the_claim_goes() {
    let env = Env::start(&[("n1", 4 * GI)], Options::default()).await;
    env.pod("inuse", "local", &[64]).await;
    env.scheduled(&["inuse".to_string()]).await;
    let pv_name = env.all_bound("inuse", 1).await["inuse-0"].clone();
    let pvs = env.pvs();
    let (_, path) = Env::pv_node_and_path(&pvs.get(&pv_name).await.unwrap());
    let data = Path::new(&path).join("data");
    std::fs::write(&data, "still needed").unwrap();

    pvs.delete(&pv_name, &Default::default()).await.unwrap();
    // Stowage has seen the deletion once it says what it does about it.
    let message = wait_until(wait(), "a VolumeDeleteDeferred Event on the PV", || async {
        env.cluster
            .event_messages("default", &pv_name, "VolumeDeleteDeferred")
            .await
            .pop()
    })
    .await
    .unwrap();
    assert!(
        message.contains(&format!("claim {NS}/inuse-0")) && message.contains("keeps its data"),
        "{message}"
    );
    let pv = pvs.get(&pv_name).await.unwrap();
    assert!(
        pv.metadata.deletion_timestamp.is_some(),
        "the PV is Terminating"
    );
    assert_eq!(
        pv.status.and_then(|s| s.phase).as_deref(),
        Some("Bound"),
        "and still Bound"
    );
    let lv = env.lvs().get(&pv_name).await.unwrap();
    assert!(
        lv.metadata.deletion_timestamp.is_none(),
        "the LocalVolume stays"
    );
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "still needed",
        "the data stays"
    );

    env.delete_all("inuse").await;
    let lvs = env.lvs();
    wait_for(wait(), "the PV and the LocalVolume are gone", || async {
        matches!(pvs.get_opt(&pv_name).await, Ok(None))
            && matches!(lvs.get_opt(&pv_name).await, Ok(None))
    })
    .await
    .unwrap();
    assert!(!Path::new(&path).exists(), "{path} was deleted");
    env.assert_clean_logs();
}

/// The Retain routine (delete the claim, then `kubectl delete pv`) keeps the data and its
/// LocalVolume across a controller restart: for a class whose reclaim policy is Retain
/// (whatever its `onDelete`), and for a PV an admin switched to Retain after it was bound.
/// A LocalVolume orphaned by an interrupted provisioning is still collected: it is the
/// sign that the restarted controller has looked at every LocalVolume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retain_routine_keeps_data_and_record_across_a_controller_restart() {
    let mut env = Env::start(&[("n1", 4 * GI)], Options::default()).await;
    env.local_class_reclaim("local-retain", &[("onDelete", "archive")], "Retain", false)
        .await;
    env.pod("ret", "local-retain", &[32]).await;
    env.pod("flip", "local", &[32]).await;
    env.scheduled(&["ret".to_string(), "flip".to_string()])
        .await;
    let mut kept = Vec::new();
    for prefix in ["ret", "flip"] {
        let bound = env.all_bound(prefix, 1).await;
        let pv = env.pvs().get(&bound[&format!("{prefix}-0")]).await.unwrap();
        let (_, path) = Env::pv_node_and_path(&pv);
        let file = PathBuf::from(&path).join("precious");
        std::fs::write(&file, prefix).unwrap();
        kept.push((pv.name_any(), file));
    }
    let lvs = env.lvs();
    let (ret_pv, flip_pv) = (kept[0].0.clone(), kept[1].0.clone());
    assert_eq!(
        lvs.get(&ret_pv).await.unwrap().spec.on_delete,
        OnDelete::Retain,
        "a Retain class's volume retains, whatever its onDelete parameter"
    );
    // The admin switches the other PV to Retain; its LocalVolume follows.
    env.pvs()
        .patch(
            &flip_pv,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": { "persistentVolumeReclaimPolicy": "Retain" }
            })),
        )
        .await
        .unwrap();
    wait_for(wait(), "the switched PV's LocalVolume retains", || async {
        lvs.get(&flip_pv).await.unwrap().spec.on_delete == OnDelete::Retain
    })
    .await
    .unwrap();

    env.delete_all("ret").await;
    env.delete_all("flip").await;
    let pvs = env.pvs();
    wait_for(
        wait(),
        "both PVs are Released without our finalizer",
        || async {
            let mut done = true;
            for (name, _) in &kept {
                let pv = pvs.get(name).await.unwrap();
                done &= pv.status.and_then(|s| s.phase).as_deref() == Some("Released")
                    && !pv
                        .metadata
                        .finalizers
                        .unwrap_or_default()
                        .iter()
                        .any(|f| f == names::FINALIZER_PV_CLEANUP);
            }
            done
        },
    )
    .await
    .unwrap();
    for (name, _) in &kept {
        pvs.delete(name, &Default::default()).await.unwrap();
    }
    wait_for(wait(), "both PVs are gone", || async {
        let mut gone = true;
        for (name, _) in &kept {
            gone &= pvs.get_opt(name).await.unwrap().is_none();
        }
        gone
    })
    .await
    .unwrap();

    // A new leader: the controller starts again and looks at every LocalVolume, among them
    // one orphaned while it was down (its claim never existed, it has no PV).
    env.controller.kill();
    let mut orphan = LocalVolume::new(
        "pvc-00000000-0000-0000-0000-00000000dead",
        LocalVolumeSpec {
            node_name: "n1".into(),
            pool: "default".into(),
            size_bytes: 32 * MI,
            claim: ClaimRef {
                namespace: NS.into(),
                name: "never".into(),
                uid: "00000000-0000-0000-0000-00000000dead".into(),
            },
            on_delete: OnDelete::Delete,
        },
    );
    orphan.metadata.labels = Some(
        [
            (names::LABEL_NODE.to_string(), "n1".to_string()),
            (names::LABEL_POOL.to_string(), "default".to_string()),
        ]
        .into(),
    );
    orphan.metadata.finalizers = Some(vec![names::FINALIZER_AGENT_CLEANUP.to_string()]);
    lvs.create(&PostParams::default(), &orphan).await.unwrap();
    env.restart_controller().await;
    wait_for(wait(), "the orphaned LocalVolume is collected", || async {
        lvs.get_opt(&orphan.name_any()).await.unwrap().is_none()
    })
    .await
    .unwrap();
    // The collection runs over the initial list; give its other items a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, file) in &kept {
        let lv = lvs.get_opt(name).await.unwrap();
        assert!(
            lv.as_ref()
                .is_some_and(|l| l.metadata.deletion_timestamp.is_none()),
            "{name}: the LocalVolume of retained data stays: {lv:?}"
        );
        assert!(
            file.is_file(),
            "{name}: the retained data stays at {}",
            file.display()
        );
    }
    env.assert_clean_logs();
}

/// A tenant's 20,000-deep directory chain does not stop its volume's deletion: the agent
/// (which aborted with a stack overflow in `remove_dir_all` before) removes the tree with
/// a bounded number of descriptors, the PV and LocalVolume go, and a symlink at the bottom
/// of the chain is removed as a link, its target untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_holding_a_20000_deep_tree_is_deleted() {
    let env = Env::start(&[("n1", 4 * GI)], Options::default()).await;
    env.pod("deep", "local", &[32]).await;
    env.scheduled(&["deep".to_string()]).await;
    let bound = env.all_bound("deep", 1).await;
    let pv = env.pvs().get(&bound["deep-0"]).await.unwrap();
    let (_, path) = Env::pv_node_and_path(&pv);
    let outside = env.cluster.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "not the tenant's").unwrap();
    deep_chain(Path::new(&path), 20_000, &outside);

    env.delete_all("deep").await;
    let (pvs, lvs) = (env.pvs(), env.lvs());
    // 20,000 directories removed one by one: seconds when the disk is idle, more when other
    // tests and builds share it (it once took over 30 s beside three cargo builds). The
    // point is that it finishes at all, so it gets four times the usual wait.
    wait_for(
        4 * wait(),
        "the PV and the LocalVolume are gone",
        || async {
            pvs.get_opt(&pv.name_any()).await.unwrap().is_none()
                && lvs.get_opt(&pv.name_any()).await.unwrap().is_none()
        },
    )
    .await
    .unwrap();
    assert!(!Path::new(&path).exists(), "{path} was removed");
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "not the tenant's",
        "the symlink's target is untouched"
    );
    let log = env.agent("n1").process.logs();
    assert!(
        !log.contains("stack overflow") && log.matches("=== start").count() == 1,
        "the agent ran once, without crashing:\n{log}"
    );
    env.assert_clean_logs();
}

/// Makes `levels` nested directories `d/d/…` under `parent`, each made relative to the
/// descriptor of the one above it (the path is far longer than PATH_MAX), with a symlink to
/// `outside` at the bottom.
fn deep_chain(parent: &Path, levels: usize, outside: &Path) {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat, symlinkat};
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let mut dir = openat(CWD, parent, flags, Mode::empty()).unwrap();
    for _ in 0..levels {
        mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(&dir, "d", flags, Mode::empty()).unwrap();
    }
    symlinkat(outside, &dir, "out").unwrap();
}

/// A pod's claims are provisioned together or not at all, also where kube-scheduler places
/// capacity-blind (no extender, as on clusters whose scheduler cannot be reconfigured).
///
/// A pod pinned to a node that can hold each of its two claims alone but not both gets no
/// volume there (before, the first claim's volume was made, pinning the pod to a node where
/// its second claim could never fit: stuck for good). A pod free to move lands, after
/// being sent back as a whole as often as the scheduler picks the small node, with both
/// claims on the node that holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pods_claims_are_provisioned_together_or_not_at_all() {
    let options = Options {
        without_extender: true,
        ..Options::default()
    };
    let env = Env::start(&[("n1", 256 * MI), ("n2", 4 * GI)], options).await;
    for c in 0..2 {
        env.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, &format!("pinned-{c}"))
                    .size("192Mi")
                    .class("local")
                    .build(),
            )
            .await
            .unwrap();
    }
    env.pods()
        .create(
            &PostParams::default(),
            &pod(NS, "pinned")
                .claims(["pinned-0", "pinned-1"])
                .node_selector(names::LABEL_HOSTNAME, "n1")
                .build(),
        )
        .await
        .unwrap();
    env.pod("free", "local", &[192, 192]).await;

    // The pinned pod's claims go back to the scheduler together, again and again.
    let events: kube::Api<Event> = kube::Api::namespaced(env.client.clone(), NS);
    let message = wait_until(
        wait(),
        "the pinned pod's claims are sent back together",
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("pinned-0"))
                .filter_map(|e| e.message)
                .find(|m| m.contains("together"))
        },
    )
    .await
    .unwrap();
    // Judged as one whether the second claim has its `selected-node` yet ("removed the
    // selected node from all of them") or not ("all of pod apps/pinned's claims"): a claim
    // no longer waits for its siblings' annotations, so either comes first.
    assert!(
        message.contains("node n1 cannot hold the volumes")
            // 256Mi free, or less while the free pod's claims are reserved there too.
            && message.contains(" free, together they request 384Mi")
            && message.contains("pinned-0")
            && message.contains("pinned-1")
            && message.contains("removed the selected node"),
        "{message}"
    );
    // The free pod ends with both claims on n2.
    let placed = env.scheduled(&["free".to_string()]).await;
    assert_eq!(placed["free"], "n2", "the only node that holds both");
    let bound = env.all_bound("free", 2).await;
    for claim in ["free-0", "free-1"] {
        let pv = env.pvs().get(&bound[claim]).await.unwrap();
        assert_eq!(
            Env::pv_node_and_path(&pv).0,
            "n2",
            "{claim} is on its pod's node"
        );
    }
    // And the pinned pod never got a volume on n1, however often it was tried there.
    let lvs = env.lvs();
    for _ in 0..20 {
        let pinned: Vec<String> = lvs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|lv| lv.spec.claim.name.starts_with("pinned"))
            .map(|lv| format!("{} on {}", lv.spec.claim.name, lv.spec.node_name))
            .collect();
        assert!(
            pinned.is_empty(),
            "no volume of the pinned pod was made: {pinned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_clean_logs();
}

/// kube-scheduler writes `selected-node` to a pod's claims one request after another (over a
/// second apart when its client is throttled in a burst). The pod's other claims are made on
/// the node with the first, so their volumes are Ready when their own `selected-node`
/// arrives; their PVs wait for it, since only the scheduler decides that a claim is
/// provisioned. The annotations are written here by hand, to a pod no scheduler places, so
/// the order and the gaps are the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pods_other_claims_are_made_with_its_first_and_get_their_pvs_at_their_own_selected_node()
{
    let env = Env::start(&[("n1", 4 * GI)], Options::default()).await;
    let names = ["trio-0", "trio-1", "trio-2"];
    let mut uids = HashMap::new();
    for claim in names {
        let made = env
            .claims()
            .create(
                &PostParams::default(),
                &pvc(NS, claim).size("64Mi").class("local").build(),
            )
            .await
            .unwrap();
        uids.insert(claim, made.uid().unwrap());
    }
    env.pods()
        .create(
            &PostParams::default(),
            &pod(NS, "trio").claims(names).scheduler("nobody").build(),
        )
        .await
        .unwrap();
    let pv_of = |claim: &str| format!("pvc-{}", uids[claim]);

    env.select("trio-0", "n1").await;
    // All three volumes are made on n1 with the first claim, and get Ready ...
    let lvs = env.lvs();
    wait_until(
        wait(),
        "the LocalVolumes of trio-0, trio-1 and trio-2 are Ready on n1",
        || async {
            let ready = lvs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|lv| lv.spec.claim.name.starts_with("trio-") && lv.spec.node_name == "n1")
                .filter(|lv| {
                    lv.status.as_ref().map(|s| &s.phase)
                        == Some(&stowage::api::local_volume::LocalVolumePhase::Ready)
                })
                .count();
            (ready == 3).then_some(())
        },
    )
    .await
    .unwrap();
    // ... trio-0 gets its PV and is bound to it ...
    env.all_bound("trio-0", 1).await;
    // ... and the other two get none while the scheduler has not selected them, although
    // their volumes were Ready before trio-0 was bound.
    let pvs = env.pvs();
    for _ in 0..10 {
        for claim in ["trio-1", "trio-2"] {
            assert!(
                pvs.get_opt(&pv_of(claim)).await.unwrap().is_none(),
                "{claim} got a PV before the scheduler selected a node for it"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.select("trio-1", "n1").await;
    env.select("trio-2", "n1").await;
    let bound = env.all_bound("trio-", 3).await;
    for claim in names {
        assert_eq!(
            bound[claim],
            pv_of(claim),
            "{claim} is bound to its own volume"
        );
        let pv = pvs.get(&bound[claim]).await.unwrap();
        assert_eq!(Env::pv_node_and_path(&pv).0, "n1", "{claim} is on n1");
    }
    env.assert_clean_logs();
}

/// A volume never moves. A claim whose volume was made with a sibling's, for a pod that was
/// then deleted before the scheduler selected a node for it, has its volume on that node
/// and no PV: the next pod using it is placed there, although the extender's scores prefer
/// the emptier node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_whose_claim_has_its_volume_made_already_is_placed_on_that_node() {
    let env = Env::start(&[("n1", GI), ("n2", 4 * GI)], Options::default()).await;
    for claim in ["anchor", "follower"] {
        env.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, claim).size("64Mi").class("local").build(),
            )
            .await
            .unwrap();
    }
    env.pods()
        .create(
            &PostParams::default(),
            &pod(NS, "first")
                .claims(["anchor", "follower"])
                .scheduler("nobody")
                .build(),
        )
        .await
        .unwrap();
    env.select("anchor", "n1").await;
    let lvs = env.lvs();
    wait_until(wait(), "the follower's volume is made on n1", || async {
        lvs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|lv| lv.spec.claim.name == "follower" && lv.spec.node_name == "n1")
    })
    .await
    .unwrap();
    env.pods()
        .delete("first", &Default::default())
        .await
        .unwrap();

    env.pods()
        .create(
            &PostParams::default(),
            &pod(NS, "second").claims(["follower"]).build(),
        )
        .await
        .unwrap();
    let placed = env.scheduled(&["second".to_string()]).await;
    assert_eq!(placed["second"], "n1", "placed where its volume is");
    let bound = env.all_bound("follower", 1).await;
    let pv = env.pvs().get(&bound["follower"]).await.unwrap();
    assert_eq!(Env::pv_node_and_path(&pv).0, "n1");
    // Sent to n1 the first time: a placement on n2 would have left its selected-node there
    // (the scheduler does not write it again for a claim bound meanwhile).
    let follower = env.claims().get("follower").await.unwrap();
    assert_eq!(
        follower
            .metadata
            .annotations
            .unwrap_or_default()
            .get(names::ANNOTATION_SELECTED_NODE)
            .map(String::as_str),
        Some("n1")
    );
    env.assert_clean_logs();
}

/// A StorageNode is owned by its Node, so a node removed from the cluster leaves no
/// capacity row behind: on the real control plane the garbage collector deletes it with the
/// Node (the in-memory server has no garbage collector; there the owner is checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_node_is_owned_by_its_node_and_goes_with_it() {
    let mut env = Env::start(&[("n1", GI), ("n2", GI)], Options::default()).await;
    let sns: kube::Api<StorageNode> = kube::Api::all(env.client.clone());
    let nodes: kube::Api<Node> = kube::Api::all(env.client.clone());
    for name in ["n1", "n2"] {
        let uid = nodes.get(name).await.unwrap().metadata.uid.unwrap();
        wait_for(
            wait(),
            &format!("{name}'s StorageNode is owned by Node {name}"),
            || async {
                sns.get(name)
                    .await
                    .ok()
                    .and_then(|sn| sn.metadata.owner_references)
                    .is_some_and(|owners| {
                        owners
                            .iter()
                            .any(|o| o.kind == "Node" && o.name == name && o.uid == uid)
                    })
            },
        )
        .await
        .unwrap();
    }
    if env.cluster.is_real() {
        // The node goes: its agent first (on a real cluster its pod goes with the node),
        // then the Node object.
        env.agents
            .iter_mut()
            .find(|a| a.name == "n2")
            .unwrap()
            .process
            .kill();
        nodes.delete("n2", &Default::default()).await.unwrap();
        wait_for(
            wait(),
            "n2's StorageNode is deleted with its Node",
            || async { sns.get_opt("n2").await.unwrap().is_none() },
        )
        .await
        .unwrap();
        assert!(sns.get_opt("n1").await.unwrap().is_some(), "n1's stays");
    }
}

/// How many claims named `prefix*` are Bound, and how many PVs exist.
async fn progress(env: &Env, prefix: &str) -> (usize, usize) {
    let claims = env.claims().list(&ListParams::default()).await.unwrap();
    let bound = claims
        .items
        .iter()
        .filter(|c| c.name_any().starts_with(prefix))
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .count();
    let pvs = env.pvs().list(&ListParams::default()).await.unwrap();
    (bound, pvs.items.len())
}

/// Kills the controller once at least `bound_at_least` claims `prefix*` are Bound and
/// `pvs_at_least` PVs exist, and proves the kill landed mid-burst: only the controller
/// creates PVs, so the PVs counted after the process is dead can only stay as many; fewer
/// than `total` of them means some claims were still unprovisioned when it died. Returns
/// the Bound and PV counts at the kill.
///
/// The PVs are counted from a watch and the kill follows the event that reaches
/// `pvs_at_least` at once: a restarted controller facing a backlog makes dozens of PVs
/// between two polls of a list.
async fn kill_mid_burst(
    env: &mut Env,
    prefix: &str,
    (bound_at_least, pvs_at_least): (usize, usize),
    total: usize,
) -> (usize, usize) {
    use futures::StreamExt;
    let bound = wait_until(
        Duration::from_secs(120),
        &format!("{bound_at_least} of {total} claims Bound"),
        || async {
            let (bound, _) = progress(env, prefix).await;
            (bound >= bound_at_least).then_some(bound)
        },
    )
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut pvs = kube::runtime::watcher(env.pvs(), Default::default()).boxed();
    let counted = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(event) = pvs.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(pv)
                | kube::runtime::watcher::Event::InitApply(pv),
            ) = event
            {
                seen.insert(pv.name_any());
            }
            if seen.len() >= pvs_at_least {
                return;
            }
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "timed out waiting for {pvs_at_least} PVs (saw {})",
        seen.len()
    );
    env.controller.kill();
    let lvs = env.lvs().list(&ListParams::default()).await.unwrap().items;
    let (_, pvs) = progress(env, prefix).await;
    assert!(
        pvs < total,
        "the kill came too late to be mid-burst: {pvs} of {total} PVs already existed when \
         the controller died ({bound} claims Bound)"
    );
    assert!(
        bound > 0 && bound < total,
        "some but not all claims Bound at the kill: {bound}"
    );
    eprintln!(
        "controller killed with {bound}/{total} claims Bound, {pvs} PVs, {} LocalVolumes \
         ({} without a PV yet)",
        lvs.len(),
        lvs.len().saturating_sub(pvs)
    );
    (bound, pvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_twice_during_a_burst_binds_every_claim_once_and_leaks_nothing() {
    let mut env = Env::start(
        &[("n1", 8 * GI), ("n2", 10 * GI), ("n3", 12 * GI)],
        Options::default(),
    )
    .await;
    const TOTAL: usize = 200;
    let plan = mix_claims(TOTAL, 11);
    assert_eq!(plan.iter().map(Vec::len).sum::<usize>(), TOTAL);
    let names: Vec<String> = (0..plan.len()).map(|i| format!("crash{i:03}")).collect();
    // The burst is created in the background, so the first kill can land while claims and
    // pods are still being created. Its second half waits for the first kill: PVs are made
    // at the scheduler's choice, while binding waits for the PV controller (on a real
    // cluster, kube-controller-manager at 20 requests/s), so a burst created at once can
    // have every PV before its first claim is Bound, and a kill after the first binding
    // would no longer be mid-burst.
    let (first_killed, second_half) = tokio::sync::watch::channel(false);
    let creating = {
        let client = env.client.clone();
        let (names, plan) = (names.clone(), plan.clone());
        tokio::spawn(async move {
            let claims: kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                kube::Api::namespaced(client.clone(), NS);
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client, NS);
            let half = names.len() / 2;
            let creates = names
                .iter()
                .zip(&plan)
                .enumerate()
                .map(|(n, (name, sizes))| {
                    let (claims, pods) = (claims.clone(), pods.clone());
                    let mut second_half = second_half.clone();
                    async move {
                        if n >= half {
                            second_half.wait_for(|k| *k).await.unwrap();
                        }
                        let mut mine = Vec::new();
                        for (i, mib) in sizes.iter().enumerate() {
                            let claim = format!("{name}-{i}");
                            claims
                                .create(
                                    &PostParams::default(),
                                    &pvc(NS, &claim)
                                        .size(&format!("{mib}Mi"))
                                        .class("local")
                                        .build(),
                                )
                                .await
                                .unwrap();
                            mine.push(claim);
                        }
                        pods.create(&PostParams::default(), &pod(NS, name).claims(&mine).build())
                            .await
                            .unwrap();
                    }
                });
            futures::future::join_all(creates).await;
        })
    };

    // Crash 1 early in the burst; crash 2 once the restarted controller (which first waits
    // out its dead predecessor's Lease) has made 5 more PVs, so it too dies mid-work. The
    // second trigger counts PVs only: binding is the PV controller's, and the restarted
    // controller makes the remaining PVs well before 10 more claims are Bound.
    let (bound, pvs) = kill_mid_burst(&mut env, "crash", (1, 20), TOTAL).await;
    first_killed.send(true).unwrap();
    env.restart_controller().await;
    kill_mid_burst(&mut env, "crash", (bound, pvs + 5), TOTAL).await;
    env.restart_controller().await;
    creating.await.unwrap();

    let claims = wait_until(
        Duration::from_secs(120),
        &format!("all {TOTAL} claims are Bound"),
        || async {
            let list = env.claims().list(&ListParams::default()).await.ok()?;
            let bound: Vec<_> = list
                .items
                .into_iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .collect();
            (bound.len() == TOTAL).then_some(bound)
        },
    )
    .await
    .unwrap();
    env.scheduled(&names).await;

    let pvs = env.pvs().list(&ListParams::default()).await.unwrap().items;
    let lvs = env.lvs().list(&ListParams::default()).await.unwrap().items;
    let uid_of: HashMap<String, String> = claims
        .iter()
        .map(|c| (c.name_any(), c.uid().unwrap()))
        .collect();
    // Every claim Bound exactly once: one PV per claim, its claimRef uid the claim's.
    for c in &claims {
        let name = c.name_any();
        let mine: Vec<&PersistentVolume> = pvs
            .iter()
            .filter(|pv| {
                let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                r.and_then(|r| r.name.as_deref()) == Some(name.as_str())
                    && r.and_then(|r| r.namespace.as_deref()) == Some(NS)
            })
            .collect();
        assert_eq!(mine.len(), 1, "{name}: exactly one PV claims it");
        let pv = mine[0];
        let uid = pv
            .spec
            .as_ref()
            .unwrap()
            .claim_ref
            .as_ref()
            .unwrap()
            .uid
            .clone();
        assert_eq!(
            uid.as_ref(),
            Some(&uid_of[&name]),
            "{name}: the PV's claimRef uid"
        );
        assert_eq!(
            c.spec.as_ref().unwrap().volume_name.as_deref(),
            Some(pv.name_any().as_str()),
            "{name} is bound to that PV"
        );
    }
    // No PV without its claim.
    assert_eq!(pvs.len(), TOTAL, "one PV per claim and no other");
    // No orphaned LocalVolume: each one's claim exists with the same uid.
    assert_eq!(lvs.len(), TOTAL, "one LocalVolume per claim and no other");
    for lv in &lvs {
        let claim = &lv.spec.claim;
        assert_eq!(claim.namespace, NS, "{}", lv.name_any());
        assert_eq!(
            uid_of.get(&claim.name),
            Some(&claim.uid),
            "LocalVolume {}'s claim {} exists with its uid",
            lv.name_any(),
            claim.name
        );
    }
    // The pool directories are exactly the LocalVolumes, node by node.
    for a in &env.agents {
        let mut on_disk: Vec<String> = std::fs::read_dir(&a.pool_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = lvs
            .iter()
            .filter(|lv| lv.spec.node_name == a.name)
            .map(|lv| lv.name_any())
            .collect();
        expected.sort();
        assert_eq!(on_disk, expected, "{}'s pool directories", a.name);
    }
    // No pool above its allocatable, and no orphans reported.
    let allocated = env.allocated().await;
    for a in &env.agents {
        let used = allocated.get(&a.name).copied().unwrap_or(0);
        assert!(
            used <= a.capacity,
            "{}: {used} allocated above allocatable {}",
            a.name,
            a.capacity
        );
    }
    let sns: kube::Api<StorageNode> = kube::Api::all(env.client.clone());
    wait_for(
        wait(),
        "every StorageNode reports all volumes and 0 orphans",
        || async {
            let Ok(list) = sns.list(&ListParams::default()).await else {
                return false;
            };
            let volumes: u64 = list
                .items
                .iter()
                .filter_map(|sn| sn.status.as_ref())
                .flat_map(|s| &s.pools)
                .map(|p| p.volumes)
                .sum();
            volumes == TOTAL as u64
                && list.items.iter().all(|sn| {
                    sn.status.as_ref().is_some_and(|s| {
                        s.pools
                            .iter()
                            .all(|p| p.orphans == 0 && p.allocated_bytes <= p.allocatable_bytes)
                    })
                })
        },
    )
    .await
    .unwrap();
}

/// The scratch btrfs (`STOWAGE_TEST_BTRFS`), or `None` (after SKIP) when unset outside CI.
fn scratch_btrfs(test: &str) -> Option<PathBuf> {
    match std::env::var_os("STOWAGE_TEST_BTRFS") {
        Some(mount) => Some(PathBuf::from(mount)),
        None => {
            assert!(
                !stowage_testkit::in_ci(),
                "STOWAGE_TEST_BTRFS is unset in CI; .ci/run must mount a scratch btrfs (scripts/btrfs-scratch) and export it"
            );
            eprintln!(
                "SKIP {test}: STOWAGE_TEST_BTRFS is unset; run `STOWAGE_TEST_BTRFS=$(scripts/btrfs-scratch) bash scripts/test` as root"
            );
            None
        }
    }
}

/// The qgroup limit (`max_rfer`) of the subvolume at `path`, as `btrfs qgroup show` reads it
/// from the filesystem.
fn qgroup_limit(path: &Path) -> u64 {
    let run = |args: &[&str]| {
        let out = Command::new("btrfs").args(args).output().unwrap();
        assert!(out.status.success(), "btrfs {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let p = path.to_str().unwrap();
    let qgroup = format!("0/{}", run(&["inspect-internal", "rootid", p]).trim());
    let table = stowage_testkit::btrfs_qgroup_show(&["-r", "--raw", "-f", p]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(qgroup.as_str()))
        .unwrap_or_else(|| panic!("no qgroup {qgroup} in\n{table}"));
    row.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Appends 1 MiB chunks to `file`, each flushed with `sync_all`, until a write fails or
/// `limit` bytes are in the file; returns the file's size and the error, if any.
fn fill(file: &Path, limit: u64) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let chunk = vec![0xa5u8; MI as usize];
    let mut size = f.metadata().unwrap().len();
    while size < limit {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            return (size, Some(e));
        }
        size += MI;
    }
    (size, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expanding_a_bound_claim_on_btrfs_raises_its_qgroup_limit() {
    let Some(btrfs) = scratch_btrfs("expanding_a_bound_claim_on_btrfs_raises_its_qgroup_limit")
    else {
        return;
    };
    let env = Env::start(
        &[("n1", 512 * MI)],
        Options {
            btrfs_nodes: vec!["n1"],
            btrfs: Some(btrfs),
            ..Options::default()
        },
    )
    .await;
    let pool_dir = env.agent("n1").pool_dir.clone();
    kube::Api::<StorageClass>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &storage_class("local-grow")
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .reclaim("Delete")
                .allow_expansion(true)
                .build(),
        )
        .await
        .unwrap();
    env.pod("grow", "local-grow", &[32]).await;
    let pv_name = env.all_bound("grow", 1).await["grow-0"].clone();
    let pv = env.pvs().get(&pv_name).await.unwrap();
    let (_, path) = Env::pv_node_and_path(&pv);
    let subvolume = PathBuf::from(&path);
    assert!(
        subvolume.starts_with(&pool_dir),
        "{path} is in the btrfs pool"
    );
    assert_eq!(
        qgroup_limit(&subvolume),
        32 * MI,
        "the limit as provisioned"
    );

    // Raise the request: 32Mi -> 96Mi.
    env.claims()
        .patch(
            "grow-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"resources": {"requests": {"storage": "96Mi"}}}
            })),
        )
        .await
        .unwrap();
    let storage = |m: Option<&std::collections::BTreeMap<String, Quantity>>| {
        m.and_then(|m| m.get("storage")).map(|q| q.0.clone())
    };
    wait_for(
        wait(),
        "the claim's and the PV's capacity show 96Mi",
        || async {
            let claim = env.claims().get("grow-0").await.unwrap();
            let pv = env.pvs().get(&pv_name).await.unwrap();
            storage(claim.status.as_ref().and_then(|s| s.capacity.as_ref())).as_deref()
                == Some("96Mi")
                && storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref())).as_deref()
                    == Some("96Mi")
        },
    )
    .await
    .unwrap();

    // On disk: the qgroup limit is the new size; 64 MiB (past the old 32 MiB) can be written,
    // and writing on fails with EDQUOT before 96 MiB plus a chunk.
    assert_eq!(qgroup_limit(&subvolume), 96 * MI, "the raised limit");
    let data = subvolume.join("data");
    let (size, error) = fill(&data, 64 * MI);
    assert!(
        error.is_none(),
        "64 MiB fit after growing past the old 32 MiB: stopped at {size} bytes with {error:?}"
    );
    let (size, error) = fill(&data, 200 * MI);
    let error = error.unwrap_or_else(|| panic!("wrote {size} bytes into a 96 MiB volume"));
    assert_eq!(
        error.raw_os_error(),
        Some(rustix::io::Errno::DQUOT.raw_os_error()),
        "the write past the limit fails with EDQUOT: {error}"
    );
    assert!(
        (64 * MI..=96 * MI).contains(&size),
        "the write failed at {size} bytes, within the new limit"
    );

    // Clean up: the agent deletes the subvolume once the claim is gone.
    env.delete_all("grow").await;
    wait_for(
        wait(),
        "the PV, the LocalVolume and the subvolume are gone",
        || async {
            env.pvs().get_opt(&pv_name).await.unwrap().is_none()
                && env.lvs().get_opt(&pv_name).await.unwrap().is_none()
                && !subvolume.exists()
        },
    )
    .await
    .unwrap();
    drop(env);
    std::fs::remove_dir_all(&pool_dir).unwrap();
}

// === Prometheus ===

/// `prometheus` and `promtool`, or `None` (SKIP) when not installed outside CI.
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ if stowage_testkit::in_ci() => {
            panic!("prometheus/promtool are not installed (apt-get install -y prometheus)")
        }
        _ => {
            eprintln!(
                "SKIP: prometheus/promtool are not installed (apt-get install -y prometheus)"
            );
            None
        }
    }
}

/// Every PromQL expression of the dashboard (with `$pool` as `.*`) and the metric of each
/// `label_values(metric, label)` variable query.
/// The alert rules of `deploy/monitoring/prometheusrule.yaml` as a plain Prometheus rule
/// file (its `spec.groups`), and the file's text.
fn alert_rules() -> (serde_yaml::Value, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring/prometheusrule.yaml");
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let groups = serde_yaml::Value::Mapping(
        [("groups".into(), rule["spec"]["groups"].clone())]
            .into_iter()
            .collect(),
    );
    let text = serde_yaml::to_string(&groups).unwrap();
    (groups, text)
}

/// The `description` annotation of alert `name`, as the rule file has it.
fn alert_description(groups: &serde_yaml::Value, name: &str) -> String {
    groups["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some(name))
        .and_then(|r| r["annotations"]["description"].as_str())
        .unwrap_or_else(|| panic!("no alert {name}"))
        .to_string()
}

/// The alerts fire when they should and stay quiet otherwise, with their annotations
/// rendered: promtool's rule unit tests on synthetic series. (That each expression works on
/// what stowage really exports is checked on a live Prometheus in the dashboard test.)
#[test]
fn the_alert_rules_fire_when_they_should() {
    let Some((_, promtool)) = prometheus_tools() else {
        return;
    };
    let (groups, text) = alert_rules();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), &text).unwrap();
    let d = |name: &str| serde_json::to_string(&alert_description(&groups, name)).unwrap();
    let test = format!(
        r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'stowage_pool_allocated_bytes{{node="n1",pool="default"}}'
        values: '95x20'
      - series: 'stowage_pool_allocatable_bytes{{node="n1",pool="default"}}'
        values: '100x20'
      - series: 'stowage_pool_allocated_bytes{{node="n2",pool="default"}}'
        values: '50x20'
      - series: 'stowage_pool_allocatable_bytes{{node="n2",pool="default"}}'
        values: '100x20'
      - series: 'stowage_pool_allocated_bytes{{node="n3",pool="default"}}'
        values: '0x20'
      - series: 'stowage_pool_allocatable_bytes{{node="n3",pool="default"}}'
        values: '0x20'
      - series: 'stowage_leader{{instance="a"}}'
        values: '1 1 1 0 0 0 0 0 0 0'
      - series: 'stowage_leader{{instance="b"}}'
        values: '0 0 0 0 0 0 0 0 0 0'
      - series: 'stowage_node_heartbeat_age_seconds{{node="n1",instance="a"}}'
        values: '5x20'
      - series: 'stowage_node_heartbeat_age_seconds{{node="n1",instance="b"}}'
        values: '5x20'
      - series: 'stowage_node_heartbeat_age_seconds{{node="n2",instance="a"}}'
        values: '120x20'
      - series: 'stowage_node_heartbeat_age_seconds{{node="n2",instance="b"}}'
        values: '120x20'
      - series: 'stowage_volumes_node_gone{{node="n4",instance="a"}}'
        values: '3x20'
      - series: 'stowage_volumes_node_gone{{node="n4",instance="b"}}'
        values: '3x20'
      - series: 'stowage_pool_ready{{node="n1",pool="default"}}'
        values: '1x20'
      - series: 'stowage_pool_ready{{node="n2",pool="fast"}}'
        values: '0x20'
      - series: 'stowage_nfs_server_reachable{{server="10.0.0.11",instance="a"}}'
        values: '1x20'
      - series: 'stowage_nfs_server_reachable{{server="10.0.0.12",instance="a"}}'
        values: '1 1 0x18'
      - series: 'stowage_extender_errors_total{{verb="filter",instance="a"}}'
        values: '0+1x20'
      - series: 'stowage_extender_errors_total{{verb="prioritize",instance="a"}}'
        values: '0x20'
      - series: 'stowage_events_dropped_total{{instance="a"}}'
        values: '0+1x20'
      - series: 'stowage_api_write_errors_total{{verb="patch",code="500",instance="a"}}'
        values: '0+2x30'
      - series: 'stowage_api_write_errors_total{{verb="create",code="409",instance="a"}}'
        values: '0+5x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: StowagePoolNearlyFull
        exp_alerts: []
      - eval_time: 16m
        alertname: StowagePoolNearlyFull
        exp_alerts:
          - exp_labels: {{severity: warning, node: n1, pool: default}}
            exp_annotations:
              summary: Pool default on node n1 is 95% allocated
              description: {full}
      - eval_time: 1m
        alertname: StowageNoLeader
        exp_alerts: []
      - eval_time: 6m
        alertname: StowageNoLeader
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: No stowage controller replica holds the Lease
              description: {leader}
      - eval_time: 6m
        alertname: StowageAgentHeartbeatStale
        exp_alerts:
          - exp_labels: {{severity: warning, node: n2}}
            exp_annotations:
              summary: The stowage agent of node n2 last reported 2m 0s ago
              description: {stale}
      - eval_time: 1m
        alertname: StowageNodeGone
        exp_alerts:
          - exp_labels: {{severity: critical, node: n4}}
            exp_annotations:
              summary: 3 volumes are on node n4, which has no Node object
              description: {gone}
      - eval_time: 5m
        alertname: StowagePoolNotReady
        exp_alerts: []
      - eval_time: 11m
        alertname: StowagePoolNotReady
        exp_alerts:
          - exp_labels: {{severity: warning, node: n2, pool: fast}}
            exp_annotations:
              summary: Pool fast on node n2 cannot take volumes
              description: {not_ready}
      - eval_time: 6m
        alertname: StowageNfsServerUnreachable
        exp_alerts: []
      - eval_time: 8m
        alertname: StowageNfsServerUnreachable
        exp_alerts:
          - exp_labels: {{severity: warning, server: 10.0.0.12}}
            exp_annotations:
              summary: NFS server 10.0.0.12 does not answer
              description: {nfs}
      - eval_time: 5m
        alertname: StowageExtenderErrors
        exp_alerts: []
      - eval_time: 15m
        alertname: StowageExtenderErrors
        exp_alerts:
          - exp_labels: {{severity: warning, verb: filter}}
            exp_annotations:
              summary: The stowage extender answers filter requests without a decision
              description: {extender}
      - eval_time: 5m
        alertname: StowageEventsDropped
        exp_alerts: []
      - eval_time: 15m
        alertname: StowageEventsDropped
        exp_alerts:
          - exp_labels: {{severity: info}}
            exp_annotations:
              summary: "stowage drops Events: the API server is slow or refuses them"
              description: {dropped}
      - eval_time: 10m
        alertname: StowageApiWriteErrors
        exp_alerts: []
      - eval_time: 27m
        alertname: StowageApiWriteErrors
        exp_alerts:
          - exp_labels: {{severity: warning, code: "500"}}
            exp_annotations:
              summary: "stowage's writes to the Kubernetes API keep failing with 500"
              description: {writes}
"#,
        full = d("StowagePoolNearlyFull"),
        leader = d("StowageNoLeader"),
        stale = d("StowageAgentHeartbeatStale"),
        gone = d("StowageNodeGone"),
        not_ready = serde_json::to_string(
            &alert_description(&groups, "StowagePoolNotReady").replace("{{ $labels.node }}", "n2")
        )
        .unwrap(),
        nfs = d("StowageNfsServerUnreachable"),
        extender = d("StowageExtenderErrors"),
        dropped = d("StowageEventsDropped"),
        writes = d("StowageApiWriteErrors"),
    );
    std::fs::write(dir.path().join("test.yml"), test).unwrap();
    for args in [
        &["check", "rules", "rules.yml"][..],
        &["test", "rules", "test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/stowage.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(expr.replace("$pool", ".*"));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(out.len() >= 25, "the dashboard's expressions: {out:?}");
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["definition"].as_str()
            && let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
        {
            let metric = inner.split(',').next().unwrap().trim();
            out.push(metric.to_string());
        }
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_expression_returns_series_on_a_real_prometheus() {
    let Some((prometheus, promtool)) = prometheus_tools() else {
        return;
    };
    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI)],
        Options {
            nfs: vec!["10.0.0.11", "10.0.0.12"],
            ..Options::default()
        },
    )
    .await;
    // A small run so counters and histograms have samples: local volumes provisioned and
    // deleted, an NFS volume, and a pod nothing fits.
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    for name in &names {
        env.pod(name, "local", &[64]).await;
    }
    env.claims()
        .create(
            &PostParams::default(),
            &pvc(NS, "shared").size("1Gi").class("nfs").build(),
        )
        .await
        .unwrap();
    env.pod("too-big", "local", &[20 * 1024]).await;
    env.scheduled(&names).await;
    env.all_bound("p", 4).await;
    env.all_bound("shared", 1).await;
    env.delete_all("p0").await;

    // A second controller replica, a follower, as the Deployment runs two: scraped too, it
    // must not show the ledger's or NFS mode's series a second time.
    let follower_port = free_port();
    let _follower = env
        .cluster
        .role(support::stack::stowage_binary(), "controller-1")
        .arg("controller")
        .arg("--listen")
        .arg(format!("127.0.0.1:{follower_port}"))
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig())
        .arg("--nfs-mount-base")
        .arg(env.cluster.dir().join("nfs"))
        .env("NFS_SERVER", "10.0.0.11:10.0.0.12")
        .env("NFS_PATH", "/exports/10.0.0.11:/exports/10.0.0.12")
        .env("POD_NAMESPACE", "stowage-system")
        .env("POD_NAME", "controller-1")
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the follower is ready", || async {
        matches!(get(follower_port, "/readyz").await, Some((200, _)))
    })
    .await
    .unwrap();

    // Every /metrics body passes promtool's lint.
    let mut targets = vec![
        format!("127.0.0.1:{}", env.controller_port),
        format!("127.0.0.1:{follower_port}"),
    ];
    targets.extend(env.agents.iter().map(|a| format!("127.0.0.1:{}", a.port)));
    for target in &targets {
        let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
        let (code, body) = get(port, "/metrics").await.unwrap();
        assert_eq!(code, 200, "{target}/metrics");
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {target}/metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = env.cluster.dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    // The shipped alerts, loaded as a rule file: each must evaluate without error on what
    // stowage really exports.
    std::fs::write(dir.join("rules.yml"), alert_rules().1).unwrap();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: stowage\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
            dir.join("rules.yml").display(),
            quoted.join(", ")
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = env
        .cluster
        .role(&prometheus, "prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let query = |expr: String| async move {
        get(port, format!("/api/v1/query?query={}", encode(&expr)))
            .await
            .map(|(code, body)| {
                (
                    code,
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
                    body,
                )
            })
    };
    // Samples arrive: every target is up, and rates have at least two scrapes to work with.
    let up_count = targets.len();
    wait_for(
        Duration::from_secs(60),
        "every target is scraped and up",
        || async {
            query("sum(up) and count(up) == count(up == 1)".into())
                .await
                .and_then(|(_, v, _)| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                })
                == Some(up_count as f64)
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    for expr in dashboard_queries() {
        match query(expr.clone()).await {
            Some((200, v, _))
                if v["status"] == "success"
                    && v["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty()) => {}
            Some((_, _, body)) => failures.push(format!("{expr}\n    -> {body}")),
            None => failures.push(format!("{expr}\n    -> no answer")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard expressions without a series or not parsing:\n  {}",
        failures.join("\n  ")
    );
    // A count of problems (`... or vector(0)`) has a series even when its metric does not
    // exist: every metric the dashboard and the alerts name must have series of its own.
    let mut names: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(alert_expressions())
        .flat_map(|e| metric_names(&e))
        .collect();
    names.sort();
    names.dedup();
    // Exported only for a node gone longer than --node-gone-grace (300 s); its series are
    // tested in tests/controller.rs and its alert with promtool above. Failed API writes
    // have series only once one happened: the fault soak (tests/soak.rs) requires them.
    const ABSENT_HERE: [&str; 2] = [
        "stowage_volumes_node_gone",
        "stowage_api_write_errors_total",
    ];
    for name in &names {
        let result = query(format!("count({{__name__=\"{name}\"}})"))
            .await
            .map(|(_, v, _)| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            });
        if ABSENT_HERE.contains(&name.as_str()) {
            continue;
        }
        if result != Some(true) {
            failures.push(format!("{name}: no series"));
        }
    }
    assert!(
        failures.is_empty(),
        "metrics the dashboard or alerts name but nothing exports: {failures:?}"
    );
    // Two replicas are scraped, one leads, and the ledger's and NFS mode's series exist
    // once each, from the leader.
    for (expr, want) in [
        ("count(stowage_leader)", Some(2.0)),
        ("sum(stowage_leader)", Some(1.0)),
        ("count(stowage_node_pool_free_bytes)", Some(2.0)),
        (
            "count(count by (node) (stowage_node_heartbeat_age_seconds))",
            Some(2.0),
        ),
        ("count(stowage_node_heartbeat_age_seconds)", Some(2.0)),
        ("count(stowage_pool_utilization_cv)", Some(1.0)),
        ("count(stowage_nfs_server_reachable)", Some(2.0)),
        (
            "count(stowage_node_pool_free_bytes{instance=\"127.0.0.1:FOLLOWER\"})",
            None,
        ),
    ] {
        let expr = expr.replace("FOLLOWER", &follower_port.to_string());
        let got = query(expr.clone()).await.and_then(|(_, v, _)| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
        });
        assert_eq!(got, want, "{expr}");
    }
    // Every alert rule has been evaluated, without error.
    let rules = wait_until(
        Duration::from_secs(30),
        "every alert rule has been evaluated",
        || async {
            let (_, v, _) = query_path(port, "/api/v1/rules?type=alert").await?;
            let rules: Vec<serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001-"))
            });
            (!rules.is_empty() && evaluated).then_some(rules)
        },
    )
    .await
    .unwrap();
    assert_eq!(rules.len(), 9, "the shipped alerts: {rules:?}");
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "alert {} does not evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }
}

/// The `expr` of every alert of `deploy/monitoring/prometheusrule.yaml`.
fn alert_expressions() -> Vec<String> {
    let (groups, _) = alert_rules();
    groups["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect()
}

/// The `stowage_*` metric names `expr` mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("stowage_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// GET `path` on Prometheus at `port`, decoded.
async fn query_path(port: u16, path: &str) -> Option<(u16, serde_json::Value, String)> {
    get(port, path).await.map(|(code, body)| {
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
            body,
        )
    })
}
