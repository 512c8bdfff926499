//! Every crash point of `stowage::crash::POINTS`, walked with the real processes: the role
//! is restarted with `STOWAGE_CRASH_POINT=<point>`, the test drives the operation that
//! reaches the point and sees the process die there (SIGABRT and its log line) with the
//! state of that window in the API, restarts it without the variable, and checks that the
//! system converged: every claim Bound exactly once and to the right size, no LocalVolume or
//! directory without a claim, released PVs and their finalizers gone, the data of deleted
//! claims deleted, archived or kept as their class says.
//!
//! A point without a scenario here fails the test (`no scenario drives ...`), so a new point
//! cannot be forgotten. The agent's points run on a btrfs pool when `STOWAGE_TEST_BTRFS` is
//! set (on hostpath with a SKIP line otherwise; a failure under CI=true).

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use stowage::api::local_volume::{LocalVolume, OnDelete};
use stowage::api::names;
use stowage::crash::{self, POINTS, Role as CrashRole};
use stowage_testkit::e2e::Role;
use stowage_testkit::fixtures::{pod, pvc};
use stowage_testkit::{wait_for, wait_until};
use support::invariants::{self, Deleted, PathWatch, entries, volume_of};
use support::stack::{Env, GI, MI, NS, Options, wait};

/// `std::process::abort()` ends the process with SIGABRT.
const SIGABRT: i32 = 6;

/// How long convergence after a restart may take.
const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_converges_after_aborting_at_each_of_its_crash_points() {
    let btrfs = scratch_btrfs("the_agent_converges_after_aborting_at_each_of_its_crash_points");
    let options = match &btrfs {
        Some(root) => Options {
            btrfs_nodes: vec!["n1"],
            btrfs: Some(root.clone()),
            ..Options::default()
        },
        None => Options::default(),
    };
    let mut env = Env::start(&[("n1", 256 * MI)], options).await;
    let watch = PathWatch::start(&env);
    env.local_class("local-grow", &[], true).await;
    let mut deleted = Vec::new();
    let mut reached = BTreeSet::new();
    for point in POINTS.iter().filter(|p| p.role == CrashRole::Agent) {
        let name = point.name;
        eprintln!("crash point {name}: {}", point.window);
        match name {
            crash::AGENT_CREATE_STAGED => {
                // Killed before the rename, then the claim is deleted while the agent is
                // down (the controller deletes the orphaned LocalVolume): the staging
                // leftover must not outlive it, although the class archives.
                arm_agent(&mut env, name).await;
                env.pod("staged-gone", "local-archive", &[16]).await;
                expect_abort(&mut env.agents[0].process, name).await;
                let volume = volume_of(&env, "staged-gone-0").await;
                let pool = env.agent("n1").pool_dir.clone();
                assert!(pool.join(format!(".staging-{volume}")).is_dir(), "{name}");
                env.delete_all("staged-gone").await;
                wait_for(
                    CONVERGE,
                    "the orphaned LocalVolume is being deleted",
                    || async {
                        env.lvs()
                            .get(&volume)
                            .await
                            .unwrap()
                            .metadata
                            .deletion_timestamp
                            .is_some()
                    },
                )
                .await
                .unwrap();
                disarm_agent(&mut env).await;
                deleted.push(Deleted {
                    claim: "staged-gone-0".into(),
                    volume,
                    node: None,
                    on_delete: OnDelete::Archive,
                });
                converged(&env, &watch, &deleted, name).await;
                // And killed before the rename of a claim that stays: renamed on restart.
                arm_agent(&mut env, name).await;
                env.pod("staged", "local", &[16]).await;
                expect_abort(&mut env.agents[0].process, name).await;
                let volume = volume_of(&env, "staged-0").await;
                assert!(pool.join(format!(".staging-{volume}")).is_dir(), "{name}");
                assert!(!pool.join(&volume).exists(), "{name}: not renamed yet");
                disarm_agent(&mut env).await;
                env.all_bound("staged-0", 1).await;
                assert_size(&env, "staged-0", 16 * MI).await;
            }
            crash::AGENT_CREATE_MADE => {
                let pod_name = short(name);
                arm_agent(&mut env, name).await;
                env.pod(&pod_name, "local", &[16]).await;
                let claim = format!("{pod_name}-0");
                expect_abort(&mut env.agents[0].process, name).await;
                let volume = volume_of(&env, &claim).await;
                let lv = env.lvs().get(&volume).await.unwrap();
                let status = lv.status.clone().unwrap_or_default();
                assert_eq!(status.path, None, "{name}: the status was not written");
                let pool = env.agent("n1").pool_dir.clone();
                assert!(pool.join(&volume).is_dir(), "{name}: made");
                disarm_agent(&mut env).await;
                env.all_bound(&claim, 1).await;
                assert_size(&env, &claim, 16 * MI).await;
                // And killed after the make of an archiving claim that is deleted while the
                // agent is down: its directory was made but never reported, and must be
                // archived exactly once all the same. The node is left open, as for the
                // soak's claims deleted in flight: the count rests on the pool watch alone.
                arm_agent(&mut env, name).await;
                env.pod("made-gone", "local-archive", &[16]).await;
                expect_abort(&mut env.agents[0].process, name).await;
                let volume = volume_of(&env, "made-gone-0").await;
                assert!(pool.join(&volume).is_dir(), "{name}: made");
                env.delete_all("made-gone").await;
                wait_for(
                    CONVERGE,
                    "the unreported LocalVolume is being deleted",
                    || async {
                        env.lvs()
                            .get(&volume)
                            .await
                            .unwrap()
                            .metadata
                            .deletion_timestamp
                            .is_some()
                    },
                )
                .await
                .unwrap();
                disarm_agent(&mut env).await;
                deleted.push(Deleted {
                    claim: "made-gone-0".into(),
                    volume,
                    node: None,
                    on_delete: OnDelete::Archive,
                });
            }
            crash::AGENT_GROW_RAISED => {
                env.pod("grow", "local-grow", &[16]).await;
                env.all_bound("grow-0", 1).await;
                arm_agent(&mut env, name).await;
                resize(&env, "grow-0", 32).await;
                expect_abort(&mut env.agents[0].process, name).await;
                let lv = env
                    .lvs()
                    .get(&volume_of(&env, "grow-0").await)
                    .await
                    .unwrap();
                assert_eq!(lv.spec.size_bytes, 32 * MI, "{name}: asked for");
                assert_eq!(
                    lv.status.unwrap().size_bytes,
                    Some(16 * MI),
                    "{name}: not reported"
                );
                disarm_agent(&mut env).await;
                wait_size(&env, "grow-0", 32 * MI).await;
            }
            crash::AGENT_DELETE_DELETED | crash::AGENT_DELETE_ARCHIVED => {
                let (class, on_delete) = if name == crash::AGENT_DELETE_DELETED {
                    ("local", OnDelete::Delete)
                } else {
                    ("local-archive", OnDelete::Archive)
                };
                let pod_name = short(name);
                env.pod(&pod_name, class, &[16]).await;
                let claim = format!("{pod_name}-0");
                env.all_bound(&claim, 1).await;
                let volume = volume_of(&env, &claim).await;
                arm_agent(&mut env, name).await;
                env.delete_all(&pod_name).await;
                expect_abort(&mut env.agents[0].process, name).await;
                let pool = env.agent("n1").pool_dir.clone();
                assert!(!pool.join(&volume).exists(), "{name}: data dealt with");
                let lv = env.lvs().get(&volume).await.unwrap();
                assert!(
                    lv.finalizers()
                        .iter()
                        .any(|f| f == names::FINALIZER_AGENT_CLEANUP),
                    "{name}: the finalizer is still there"
                );
                disarm_agent(&mut env).await;
                deleted.push(Deleted {
                    claim,
                    volume,
                    node: Some("n1".into()),
                    on_delete,
                });
            }
            other => panic!(
                "no scenario drives crash point {other}; add one to {}",
                file!()
            ),
        }
        reached.insert(name);
        let counts = converged(&env, &watch, &deleted, name).await;
        eprintln!("crash point {name}: converged ({counts})");
    }
    finish(CrashRole::Agent, &reached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_converges_after_aborting_at_each_of_its_crash_points() {
    let mut env = Env::start(
        &[("n1", 256 * MI), ("n2", GI)],
        Options {
            nfs: vec!["10.0.0.21"],
            // Each restart is a new Lease identity that waits out the aborted holder's
            // lease: keep it short so eighteen restarts take seconds each, not fifteen.
            controller_args: [
                "--leader-elect-lease-duration=3",
                "--leader-elect-renew-deadline=2",
                "--leader-elect-retry-period=1",
            ]
            .map(String::from)
            .to_vec(),
            ..Options::default()
        },
    )
    .await;
    let watch = PathWatch::start(&env);
    env.local_class("local-grow", &[], true).await;
    nfs_class(&env, "nfs-archive", &[("archiveOnDelete", "true")]).await;
    let nfs_root = env.cluster.dir().join("nfs").join("10.0.0.21");
    let mut deleted = Vec::new();
    let mut reached = BTreeSet::new();
    for point in POINTS.iter().filter(|p| p.role == CrashRole::Controller) {
        let name = point.name;
        eprintln!("crash point {name}: {}", point.window);
        match name {
            crash::CONTROLLER_PROVISION_VOLUME_CREATED | crash::CONTROLLER_PROVISION_PV_CREATED => {
                let pod_name = short(name);
                arm_controller(&mut env, name).await;
                env.pod(&pod_name, "local", &[32]).await;
                let claim = format!("{pod_name}-0");
                expect_abort(&mut env.controller, name).await;
                let volume = volume_of(&env, &claim).await;
                assert!(
                    env.lvs().get_opt(&volume).await.unwrap().is_some(),
                    "{name}"
                );
                let pv = env.pvs().get_opt(&volume).await.unwrap();
                assert_eq!(
                    pv.is_some(),
                    name == crash::CONTROLLER_PROVISION_PV_CREATED,
                    "{name}: the PV exists only after the PV create"
                );
                disarm_controller(&mut env).await;
                env.all_bound(&claim, 1).await;
                assert_size(&env, &claim, 32 * MI).await;
            }
            crash::CONTROLLER_RESCHEDULE_NODE_REMOVED => {
                // 512Mi fits n2 but not n1 (256Mi); the claim comes pinned to n1 (as if the
                // extender had been bypassed), so the controller sends it back.
                env.claims()
                    .create(
                        &PostParams::default(),
                        &pvc(NS, "pinned")
                            .size("512Mi")
                            .class("local")
                            .selected_node("n1")
                            .build(),
                    )
                    .await
                    .unwrap();
                // Every selected-node the claim shows, from a watch: on a real cluster the
                // scheduler may pick a node again as soon as the controller removed it (and,
                // with the controller and its extender dead, capacity-blind), so the removal
                // is seen in the claim's history rather than in its state afterwards.
                let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
                let recorder = {
                    let seen = seen.clone();
                    let claims = env.claims();
                    tokio::spawn(async move {
                        let config = watcher::Config::default().fields("metadata.name=pinned");
                        let mut events = watcher(claims, config).boxed();
                        while let Some(Ok(event)) = events.next().await {
                            if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = event {
                                let node = c
                                    .annotations()
                                    .get(names::ANNOTATION_SELECTED_NODE)
                                    .cloned();
                                seen.lock().push(node);
                            }
                        }
                    })
                };
                wait_for(wait(), "the watch saw the claim on n1", || async {
                    seen.lock().iter().any(|n| n.as_deref() == Some("n1"))
                })
                .await
                .unwrap();
                arm_controller(&mut env, name).await;
                env.pods()
                    .create(
                        &PostParams::default(),
                        &pod(NS, "pinned").claims(["pinned"]).build(),
                    )
                    .await
                    .unwrap();
                expect_abort(&mut env.controller, name).await;
                wait_for(
                    wait(),
                    &format!("{name}: selected-node n1 was removed"),
                    || async {
                        let seen = seen.lock();
                        seen.iter().any(|n| n.as_deref() == Some("n1"))
                            && seen.iter().any(Option::is_none)
                    },
                )
                .await
                .unwrap();
                recorder.abort();
                disarm_controller(&mut env).await;
                let placed = env.scheduled(&["pinned".to_string()]).await;
                assert_eq!(
                    placed["pinned"], "n2",
                    "{name}: the claim went to the node that fits"
                );
                env.all_bound("pinned", 1).await;
                assert_size(&env, "pinned", 512 * MI).await;
            }
            crash::CONTROLLER_EXPAND_VOLUME_GROWN | crash::CONTROLLER_EXPAND_PV_GROWN => {
                let pod_name = short(name);
                env.pod(&pod_name, "local-grow", &[16]).await;
                let claim = format!("{pod_name}-0");
                env.all_bound(&claim, 1).await;
                let volume = volume_of(&env, &claim).await;
                arm_controller(&mut env, name).await;
                resize(&env, &claim, 48).await;
                expect_abort(&mut env.controller, name).await;
                let lv = env.lvs().get(&volume).await.unwrap();
                assert_eq!(lv.spec.size_bytes, 48 * MI, "{name}: LocalVolume raised");
                let pv_size = pv_capacity(&env.pvs().get(&volume).await.unwrap());
                let want = if name == crash::CONTROLLER_EXPAND_PV_GROWN {
                    48
                } else {
                    16
                };
                assert_eq!(pv_size, want * MI, "{name}: PV capacity");
                assert_eq!(
                    claim_capacity(&env, &claim).await,
                    16 * MI,
                    "{name}: claim not yet"
                );
                disarm_controller(&mut env).await;
                wait_size(&env, &claim, 48 * MI).await;
            }
            crash::CONTROLLER_RELEASE_VOLUME_DELETED | crash::CONTROLLER_RELEASE_PV_DELETED => {
                // Retain on one, archive on the other: both modes pass through a crash.
                let (class, on_delete) = if name == crash::CONTROLLER_RELEASE_VOLUME_DELETED {
                    ("local-keep", OnDelete::Retain)
                } else {
                    ("local-archive", OnDelete::Archive)
                };
                let pod_name = short(name);
                env.pod(&pod_name, class, &[16]).await;
                let claim = format!("{pod_name}-0");
                env.all_bound(&claim, 1).await;
                let volume = volume_of(&env, &claim).await;
                let node = Env::pv_node_and_path(&env.pvs().get(&volume).await.unwrap()).0;
                arm_controller(&mut env, name).await;
                env.delete_all(&pod_name).await;
                expect_abort(&mut env.controller, name).await;
                let pv = env.pvs().get(&volume).await.unwrap();
                assert!(
                    pv.finalizers()
                        .iter()
                        .any(|f| f == names::FINALIZER_PV_CLEANUP),
                    "{name}: the PV keeps its finalizer"
                );
                assert_eq!(
                    pv.metadata.deletion_timestamp.is_some(),
                    name == crash::CONTROLLER_RELEASE_PV_DELETED,
                    "{name}: the PV is being deleted only after the PV delete"
                );
                disarm_controller(&mut env).await;
                deleted.push(Deleted {
                    claim,
                    volume,
                    node: Some(node),
                    on_delete,
                });
            }
            crash::CONTROLLER_NFS_DIR_MADE => {
                arm_controller(&mut env, name).await;
                create_claim(&env, "shared", "nfs-archive", "64Mi").await;
                expect_abort(&mut env.controller, name).await;
                assert!(nfs_root.join(NS).join("shared").is_dir(), "{name}: made");
                let volume = volume_of(&env, "shared").await;
                assert!(
                    env.pvs().get_opt(&volume).await.unwrap().is_none(),
                    "{name}"
                );
                disarm_controller(&mut env).await;
                env.all_bound("shared", 1).await;
                assert_size(&env, "shared", 64 * MI).await;
            }
            crash::CONTROLLER_NFS_DIR_RELEASED => {
                let volume = volume_of(&env, "shared").await;
                arm_controller(&mut env, name).await;
                env.claims()
                    .delete("shared", &DeleteParams::default())
                    .await
                    .unwrap();
                expect_abort(&mut env.controller, name).await;
                assert!(
                    !nfs_root.join(NS).join("shared").exists(),
                    "{name}: archived"
                );
                assert!(
                    env.pvs().get_opt(&volume).await.unwrap().is_some(),
                    "{name}"
                );
                disarm_controller(&mut env).await;
                wait_for(
                    CONVERGE,
                    "the NFS PV and its finalizer are gone",
                    || async { env.pvs().get_opt(&volume).await.unwrap().is_none() },
                )
                .await
                .unwrap();
                let archived = entries(&nfs_root)
                    .into_iter()
                    .filter(|e| e.starts_with("archived-"))
                    .count();
                assert_eq!(archived, 1, "{name}: archived once");
            }
            other => panic!(
                "no scenario drives crash point {other}; add one to {}",
                file!()
            ),
        }
        reached.insert(name);
        let counts = converged(&env, &watch, &deleted, name).await;
        eprintln!("crash point {name}: converged ({counts})");
    }
    finish(CrashRole::Controller, &reached);
}

// === helpers ===

/// The scratch btrfs, or `None` after printing SKIP (a failure when CI=true).
fn scratch_btrfs(test: &str) -> Option<PathBuf> {
    match std::env::var_os("STOWAGE_TEST_BTRFS").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if stowage_testkit::in_ci() => {
            panic!("STOWAGE_TEST_BTRFS is unset in CI; .ci/run must export it")
        }
        None => {
            eprintln!(
                "SKIP {test} on btrfs (it runs on hostpath instead): STOWAGE_TEST_BTRFS is unset; run with STOWAGE_TEST_BTRFS=$(bash scripts/btrfs-scratch)"
            );
            None
        }
    }
}

/// `agent.create.made` → `create-made`: a pod/claim name for the point's scenario.
fn short(point: &str) -> String {
    point.split_once('.').unwrap().1.replace('.', "-")
}

async fn arm_agent(env: &mut Env, point: &str) {
    env.agents[0].process.set_env(crash::ENV, Some(point));
    env.restart_agent("n1").await;
}

async fn disarm_agent(env: &mut Env) {
    env.agents[0].process.set_env(crash::ENV, None);
    env.restart_agent("n1").await;
}

async fn arm_controller(env: &mut Env, point: &str) {
    env.controller.set_env(crash::ENV, Some(point));
    env.restart_controller().await;
}

async fn disarm_controller(env: &mut Env) {
    env.controller.set_env(crash::ENV, None);
    env.restart_controller().await;
}

/// The process dies at `point`: SIGABRT, and its log names the point.
async fn expect_abort(role: &mut Role, point: &str) {
    let status = role
        .wait_exit(wait())
        .await
        .unwrap_or_else(|e| panic!("{point}: the process did not abort at the point: {e:#}"));
    assert_eq!(status.signal(), Some(SIGABRT), "{point}: {status:?}");
    assert!(
        role.logs()
            .contains(&format!("crash point {point} reached")),
        "{point}: the log names the point"
    );
}

/// Waits until every invariant holds; returns what was checked.
async fn converged(
    env: &Env,
    watch: &PathWatch,
    deleted: &[Deleted],
    point: &str,
) -> invariants::Counts {
    let last = parking_lot::Mutex::new(String::new());
    let result = wait_until(CONVERGE, &format!("convergence after {point}"), || async {
        match invariants::check(env, watch, deleted).await {
            Ok(c) => Some(c),
            Err(why) => {
                *last.lock() = why;
                None
            }
        }
    })
    .await;
    result.unwrap_or_else(|e| panic!("{point}: no convergence: {e:#}; last: {}", last.lock()))
}

fn finish(role: CrashRole, reached: &BTreeSet<&str>) {
    for p in POINTS.iter().filter(|p| p.role == role) {
        assert!(
            reached.contains(p.name),
            "crash point {} was never reached",
            p.name
        );
    }
    eprintln!(
        "{role:?}: {} crash points reached and converged",
        reached.len()
    );
}

async fn create_claim(env: &Env, name: &str, class: &str, size: &str) {
    env.claims()
        .create(
            &PostParams::default(),
            &pvc(NS, name).size(size).class(class).build(),
        )
        .await
        .unwrap();
}

async fn nfs_class(env: &Env, name: &str, params: &[(&str, &str)]) {
    let mut b = stowage_testkit::fixtures::storage_class(name)
        .provisioner(names::PROVISIONER_NFS)
        .reclaim("Delete");
    for (k, v) in params {
        b = b.param(k, v);
    }
    kube::Api::<k8s_openapi::api::storage::v1::StorageClass>::all(env.client.clone())
        .create(&PostParams::default(), &b.build())
        .await
        .unwrap();
}

/// Asks for `mib` MiB on a bound claim.
async fn resize(env: &Env, claim: &str, mib: u64) {
    let patch =
        serde_json::json!({"spec": {"resources": {"requests": {"storage": format!("{mib}Mi")}}}});
    env.claims()
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn parse_quantity(q: &str) -> u64 {
    q.parse::<stowage::ledger::Bytes>().unwrap().0
}

fn pv_capacity(pv: &PersistentVolume) -> u64 {
    let q = &pv.spec.as_ref().unwrap().capacity.as_ref().unwrap()["storage"];
    parse_quantity(&q.0)
}

async fn claim_capacity(env: &Env, claim: &str) -> u64 {
    let c: PersistentVolumeClaim = env.claims().get(claim).await.unwrap();
    let q = &c.status.unwrap().capacity.unwrap()["storage"];
    parse_quantity(&q.0)
}

/// The claim and its PV report `bytes`; so does its LocalVolume, which a claim of a local
/// class must have and one of an NFS class must not.
async fn assert_size(env: &Env, claim: &str, bytes: u64) {
    assert_eq!(
        claim_capacity(env, claim).await,
        bytes,
        "{claim}: claim capacity"
    );
    let volume = volume_of(env, claim).await;
    assert_eq!(
        pv_capacity(&env.pvs().get(&volume).await.unwrap()),
        bytes,
        "{claim}: PV"
    );
    let c = env.claims().get(claim).await.unwrap();
    let class = c.spec.unwrap().storage_class_name.unwrap();
    let provisioner =
        kube::Api::<k8s_openapi::api::storage::v1::StorageClass>::all(env.client.clone())
            .get(&class)
            .await
            .unwrap()
            .provisioner;
    let lv = env.lvs().get_opt(&volume).await.unwrap();
    match provisioner.as_str() {
        names::PROVISIONER_LOCAL => {
            let lv = lv.unwrap_or_else(|| panic!("{claim}: no LocalVolume {volume}"));
            assert_eq!(lv.spec.size_bytes, bytes, "{claim}: LocalVolume spec");
            assert_eq!(
                lv.status.unwrap_or_default().size_bytes,
                Some(bytes),
                "{claim}: LocalVolume status"
            );
        }
        names::PROVISIONER_NFS => {
            assert!(lv.is_none(), "{claim}: an NFS claim has a LocalVolume");
        }
        other => panic!("{claim}: class {class} of provisioner {other}"),
    }
}

/// Waits until a grown claim is done: claim, PV and LocalVolume at `bytes`, no Resizing.
async fn wait_size(env: &Env, claim: &str, bytes: u64) {
    let volume = volume_of(env, claim).await;
    wait_for(
        CONVERGE,
        &format!("{claim} is grown to {bytes}"),
        || async {
            let c = env.claims().get(claim).await.unwrap();
            let resizing = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Resizing"));
            let lv: LocalVolume = env.lvs().get(&volume).await.unwrap();
            !resizing
                && claim_capacity(env, claim).await == bytes
                && pv_capacity(&env.pvs().get(&volume).await.unwrap()) == bytes
                && lv.status.and_then(|s| s.size_bytes) == Some(bytes)
        },
    )
    .await
    .unwrap();
}
