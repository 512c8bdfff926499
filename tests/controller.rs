//! The provisioner against testkit's strict API server: the scheduler and PV-controller
//! stand-in plays Kubernetes, a small in-test agent plays the node agents (it marks
//! LocalVolumes Ready with a path and the requested size, and removes the cleanup finalizer
//! when they are deleted, recording what it was asked to do).

// The harness helpers below are test code too: a failed set-up step should fail the test
// loudly where it happened (clippy's allow-unwrap-in-tests covers only #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::{Mutex, RwLock};
use prometheus::Registry;
use serde_json::json;
use stowage::api::local_volume::{LocalVolume, LocalVolumePhase, OnDelete};
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage::cache::ClusterIndex;
use stowage::cache::policy::StowagePolicy;
use stowage::cache::watch::{Readiness, run_controller_watchers};
use stowage::controller::{self, Config, Context, Metrics};
use stowage::ledger::FitOptions;
use stowage_testkit::fixtures::{namespace, node, pod, pvc, storage_class};
use stowage_testkit::scheduler::{ExtenderConfig, Scheduler, SchedulerConfig};
use stowage_testkit::{ApiServer, wait_for, wait_until};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod support;

use support::cluster::report_storage_node;

const WAIT: Duration = Duration::from_secs(20);
const GI: u64 = 1 << 30;
const NS: &str = "apps";

// === harness ===

struct Cluster {
    _server: ApiServer,
    client: Client,
}

impl Cluster {
    /// A server with the CRDs, namespace `apps`, and nodes `(name, hostname label, pool GiB)`.
    async fn start(nodes: &[(&str, &str, u64)]) -> Cluster {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        let sn: Api<StorageNode> = Api::all(client.clone());
        wait_for(WAIT, "storagenodes are served", || async {
            sn.list(&ListParams::default()).await.is_ok()
        })
        .await
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(NS).build())
            .await
            .unwrap();
        let cluster = Cluster {
            _server: server,
            client,
        };
        for (name, hostname, gib) in nodes {
            cluster.add_node(name, hostname, gib * GI).await;
        }
        cluster
    }

    async fn add_node(&self, name: &str, hostname: &str, capacity: u64) {
        let mut n = node(name).build();
        n.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(names::LABEL_HOSTNAME.into(), hostname.into());
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
        report_storage_node(&self.client, name, capacity)
            .await
            .unwrap();
    }

    async fn class(&self, name: &str, reclaim: &str, expand: bool, params: &[(&str, &str)]) {
        let mut b = storage_class(name)
            .provisioner(names::PROVISIONER_LOCAL)
            .wait_for_first_consumer()
            .reclaim(reclaim)
            .allow_expansion(expand);
        for (k, v) in params {
            b = b.param(k, v);
        }
        let mut class = b.build();
        class.mount_options = Some(vec!["noatime".into()]);
        Api::<StorageClass>::all(self.client.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn lvs(&self) -> Api<LocalVolume> {
        Api::all(self.client.clone())
    }

    /// A claim `name` of `class` for `size`, and a pod `name` using it.
    async fn pod_with_claim(&self, name: &str, class: &str, size: &str) {
        self.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, name).size(size).class(class).build(),
            )
            .await
            .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), NS)
            .create(
                &PostParams::default(),
                &pod(NS, name).claims([name]).build(),
            )
            .await
            .unwrap();
    }

    async fn bound(&self, claim: &str) -> PersistentVolumeClaim {
        let claims = self.claims();
        wait_until(WAIT, &format!("claim {claim} is Bound"), || async {
            claims
                .get(claim)
                .await
                .ok()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        })
        .await
        .unwrap()
    }

    /// Events about `object` with `reason`, their messages.
    async fn events(&self, ns: &str, object: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(object)
                    && e.reason.as_deref() == Some(reason)
            })
            .map(|e| {
                assert_eq!(
                    e.reporting_component.as_deref(),
                    Some(names::PROVISIONER_LOCAL),
                    "reportingComponent"
                );
                assert_eq!(
                    e.source.as_ref().and_then(|s| s.component.as_deref()),
                    Some(names::PROVISIONER_LOCAL)
                );
                e.message.unwrap_or_default()
            })
            .collect()
    }

    async fn event(&self, ns: &str, object: &str, reason: &str) -> String {
        wait_until(WAIT, &format!("a {reason} event on {object}"), || async {
            self.events(ns, object, reason).await.into_iter().next()
        })
        .await
        .unwrap()
    }
}

/// A running controller (watchers + reconcilers); dropping it kills it, as a crash would.
struct Running {
    index: Arc<RwLock<ClusterIndex>>,
    ctx: Arc<Context>,
    registry: Registry,
    tasks: Vec<JoinHandle<()>>,
    leader: watch::Sender<bool>,
}

impl Running {
    /// Waits until the controller's index shows `seen` and its three queues have nothing
    /// waiting or running: every reconcile the change set off has ended (a requeue for
    /// later may be pending). A check that nothing was made, after this, is about what the
    /// controller decided, not about what it had not got to yet.
    async fn settled(&self, what: &str, seen: impl Fn(&ClusterIndex) -> bool) {
        wait_for(WAIT, what, || async {
            seen(&self.index.read()) && self.ctx.is_idle()
        })
        .await
        .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn start_controller(client: &Client, grace: Duration) -> Running {
    start_controller_leading(client, grace, true)
}

fn start_controller_leading(client: &Client, grace: Duration, leading: bool) -> Running {
    let index = Arc::new(RwLock::new(ClusterIndex::new()));
    let ready = Readiness::for_controller();
    let registry = Registry::new();
    let (leader_tx, leader) = watch::channel(leading);
    let metrics = Metrics::register(&registry, index.clone(), leader.clone()).unwrap();
    let mut config = Config::new("test-replica");
    config.node_gone_grace = grace;
    let ctx = Arc::new(Context::new(
        client.clone(),
        index.clone(),
        ready.clone(),
        config,
        metrics,
        leader,
    ));
    let tasks = vec![
        tokio::spawn(run_controller_watchers(
            client.clone(),
            index.clone(),
            ready,
        )),
        tokio::spawn(controller::run(ctx.clone())),
    ];
    Running {
        index,
        ctx,
        registry,
        tasks,
        leader: leader_tx,
    }
}

impl Running {
    fn metric(&self, series: &str) -> f64 {
        let text = stowage::serve::render(&self.registry).unwrap();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l[series.len()..].trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    }
}

/// The in-test agent.
#[derive(Clone, Default)]
struct Agent {
    paused: Arc<AtomicBool>,
    /// LocalVolume name → what the agent did on deletion.
    cleaned: Arc<Mutex<HashMap<String, OnDelete>>>,
}

impl Agent {
    fn start(client: &Client) -> (Agent, JoinHandle<()>) {
        let agent = Agent::default();
        let a = agent.clone();
        let api: Api<LocalVolume> = Api::all(client.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    for lv in list.items {
                        a.step(&api, lv).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (agent, task)
    }

    async fn step(&self, api: &Api<LocalVolume>, lv: LocalVolume) {
        let name = lv.name_any();
        if lv.metadata.deletion_timestamp.is_some() {
            let patch = json!({"metadata": {"finalizers": []}});
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.cleaned.lock().insert(name, lv.spec.on_delete);
            }
            return;
        }
        if self.paused.load(Ordering::SeqCst) {
            return;
        }
        let status = lv.status.clone().unwrap_or_default();
        if status.phase == LocalVolumePhase::Ready && status.size_bytes == Some(lv.spec.size_bytes)
        {
            return;
        }
        let patch = json!({"status": {
            "phase": "Ready",
            "path": format!("/pools/{}/{name}", lv.spec.pool),
            "sizeBytes": lv.spec.size_bytes,
            "observedGeneration": lv.metadata.generation,
        }});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}

/// A claim carrying `selected-node` and the given provisioner annotations, as the scheduler
/// and PV controller would leave it, with no stand-in running.
async fn selected_claim(
    cluster: &Cluster,
    name: &str,
    size: &str,
    node: &str,
    annotations: &[&str],
) -> PersistentVolumeClaim {
    let mut b = pvc(NS, name).size(size).class("local").selected_node(node);
    for key in annotations {
        b = b.annotation(key, names::PROVISIONER_LOCAL);
    }
    cluster
        .claims()
        .create(&PostParams::default(), &b.build())
        .await
        .unwrap()
}

async fn wait_pv(cluster: &Cluster, name: &str) -> PersistentVolume {
    let pvs = cluster.pvs();
    wait_until(WAIT, &format!("PV {name} exists"), || async {
        pvs.get_opt(name).await.ok().flatten()
    })
    .await
    .unwrap()
}

fn pv_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.clone().unwrap())
}

/// One node `n1` of 100 GiB, class `local`, the controller and the in-test agent running,
/// and pod `apps/db` using claims `first` and `second` (not made yet).
async fn pod_of_two() -> (Cluster, Running, Agent, JoinHandle<()>) {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (agent, task) = Agent::start(&cluster.client);
    Api::<Pod>::namespaced(cluster.client.clone(), NS)
        .create(
            &PostParams::default(),
            &pod(NS, "db").claims(["first", "second"]).build(),
        )
        .await
        .unwrap();
    (cluster, running, agent, task)
}

/// A claim of class `local` with no selected node.
async fn unselected_claim(cluster: &Cluster, name: &str, size: &str) -> PersistentVolumeClaim {
    cluster
        .claims()
        .create(
            &PostParams::default(),
            &pvc(NS, name).size(size).class("local").build(),
        )
        .await
        .unwrap()
}

// === tests ===

#[tokio::test]
async fn a_scheduled_pod_gets_a_bound_local_pv_with_every_field_right() {
    let cluster = Cluster::start(&[("n1", "host-n1.example", 100)]).await;
    cluster
        .class("local", "Delete", false, &[("onDelete", "archive")])
        .await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _agent_task) = Agent::start(&cluster.client);
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.pod_with_claim("data", "local", "1500Mi").await;

    let claim = cluster.bound("data").await;
    let name = pv_name(&claim);
    assert_eq!(
        claim.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(name.as_str())
    );
    let pv = cluster.pvs().get(&name).await.unwrap();
    let v = serde_json::to_value(&pv).unwrap();
    assert_eq!(
        v["metadata"]["annotations"][names::ANNOTATION_PROVISIONED_BY],
        names::PROVISIONER_LOCAL
    );
    assert!(
        pv.finalizers()
            .iter()
            .any(|f| f == names::FINALIZER_PV_CLEANUP),
        "{:?}",
        pv.finalizers()
    );
    let spec = &v["spec"];
    assert_eq!(spec["local"]["path"], format!("/pools/default/{name}"));
    assert_eq!(
        spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-n1.example"]}),
        "affinity on the hostname label's value, not the node name"
    );
    assert_eq!(spec["capacity"]["storage"], "1500Mi");
    assert_eq!(spec["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(spec["volumeMode"], "Filesystem");
    assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(spec["mountOptions"], json!(["noatime"]));
    assert_eq!(spec["storageClassName"], "local");
    assert_eq!(spec["claimRef"]["name"], "data");
    assert_eq!(spec["claimRef"]["namespace"], NS);
    assert_eq!(spec["claimRef"]["uid"], claim.metadata.uid.clone().unwrap());

    let lv = cluster.lvs().get(&name).await.unwrap();
    assert_eq!(lv.spec.node_name, "n1");
    assert_eq!(lv.spec.size_bytes, 1500 << 20);
    assert_eq!(lv.spec.on_delete, OnDelete::Archive);
    assert_eq!(lv.spec.claim.uid, claim.metadata.uid.clone().unwrap());
    assert_eq!(lv.labels()[names::LABEL_NODE], "n1");
    assert_eq!(lv.labels()[names::LABEL_POOL], "default");
    assert!(
        lv.finalizers()
            .iter()
            .any(|f| f == names::FINALIZER_AGENT_CLEANUP)
    );

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NS);
    wait_for(WAIT, "the pod is bound to n1", || async {
        pods.get("data")
            .await
            .ok()
            .and_then(|p| p.spec?.node_name)
            .as_deref()
            == Some("n1")
    })
    .await
    .unwrap();
    let succeeded = cluster.event(NS, "data", "ProvisioningSucceeded").await;
    assert!(succeeded.contains(&name), "{succeeded}");
    assert!(!cluster.events(NS, "data", "Provisioning").await.is_empty());
    assert_eq!(
        running.metric("stowage_provisions_total{result=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        running.metric("stowage_provision_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        running.metric("stowage_node_pool_allocated_bytes{node=\"n1\",pool=\"default\"}"),
        (1500u64 << 20) as f64
    );
    scheduler.shutdown().await;
}

#[tokio::test]
async fn nothing_is_written_until_this_replica_leads() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let (_agent, _task) = Agent::start(&cluster.client);
    let running = start_controller_leading(&cluster.client, Duration::from_secs(300), false);
    let claim = selected_claim(
        &cluster,
        "data",
        "1Gi",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let name = pv_name(&claim);
    // A follower keeps its caches warm: wait until its index has seen the claim, then a
    // while longer, and nothing may have been created.
    wait_for(
        WAIT,
        "the follower's index holds the claim's reservation",
        || async { !running.index.read().reservations_on("n1").is_empty() },
    )
    .await
    .unwrap();
    running
        .settled("the follower has looked at everything it saw", |_| true)
        .await;
    assert!(cluster.lvs().get_opt(&name).await.unwrap().is_none());
    running.leader.send(true).unwrap();
    wait_pv(&cluster, &name).await;
}

#[tokio::test]
async fn the_ga_and_the_beta_provisioner_annotation_are_each_enough() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let _running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let foreign = {
        let b = pvc(NS, "foreign")
            .size("1Gi")
            .class("local")
            .selected_node("n1")
            .annotation(names::ANNOTATION_STORAGE_PROVISIONER, "other.example.com")
            .annotation(
                names::ANNOTATION_BETA_STORAGE_PROVISIONER,
                names::PROVISIONER_LOCAL,
            );
        cluster
            .claims()
            .create(&PostParams::default(), &b.build())
            .await
            .unwrap()
    };
    let ga = selected_claim(
        &cluster,
        "ga",
        "1Gi",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let beta = selected_claim(
        &cluster,
        "beta",
        "1Gi",
        "n1",
        &[names::ANNOTATION_BETA_STORAGE_PROVISIONER],
    )
    .await;
    for claim in [&ga, &beta] {
        let pv = wait_pv(&cluster, &pv_name(claim)).await;
        let r = pv.spec.unwrap().claim_ref.unwrap();
        assert_eq!(r.uid, claim.metadata.uid);
        assert_eq!(r.name, claim.metadata.name);
    }
    // The GA key names another provisioner: it wins over the beta key.
    assert!(
        cluster
            .lvs()
            .get_opt(&pv_name(&foreign))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        cluster
            .pvs()
            .get_opt(&pv_name(&foreign))
            .await
            .unwrap()
            .is_none()
    );
}

/// A pod's claim is not made alone on a node where its pod's other claims cannot follow it.
/// kube-scheduler writes `selected-node` to a pod's claims one after another; when its
/// write to the second fails (a conflict with another writer), the first keeps the node
/// and the second has none until the pod's retry, which may come after the controller's
/// sibling wait. The first may then not be made on a node that cannot hold both: it goes
/// back to the scheduler, so the pod is placed again whole (this split a pod on the real
/// lane once).
#[tokio::test]
async fn a_claim_is_not_made_alone_where_its_pods_other_claims_cannot_follow() {
    let (cluster, running, _agent, _task) = pod_of_two().await;
    let annotations = [names::ANNOTATION_STORAGE_PROVISIONER];
    let first = selected_claim(&cluster, "first", "60Gi", "n1", &annotations).await;
    unselected_claim(&cluster, "second", "60Gi").await;
    let claims = cluster.claims();
    wait_for(
        WAIT + stowage::controller::claim::SIBLING_WAIT,
        "the first claim is sent back to the scheduler",
        || async {
            claims.get("first").await.is_ok_and(|c| {
                !c.metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key(names::ANNOTATION_SELECTED_NODE)
            })
        },
    )
    .await
    .unwrap();
    running
        .settled("the controller is done with both claims", |index| {
            index.claim(NS, "second").is_some()
        })
        .await;
    assert!(
        cluster
            .lvs()
            .get_opt(&pv_name(&first))
            .await
            .unwrap()
            .is_none(),
        "no volume made for the first claim alone"
    );
}

/// A pod's claim with no `selected-node` yet gets its volume with its sibling's, but no PV;
/// were the scheduler to bind it to an existing PV instead, that volume is collected.
#[tokio::test]
async fn a_sibling_made_before_its_selected_node_gets_no_pv_and_is_collected_if_bound_elsewhere() {
    let (cluster, running, agent, _task) = pod_of_two().await;
    let second = unselected_claim(&cluster, "second", "30Gi").await;
    let first = selected_claim(&cluster, "first", "30Gi", "n1", &[]).await;
    let lvs = cluster.lvs();
    wait_for(WAIT, "both claims' volumes are Ready on n1", || async {
        let mut ready = 0;
        for claim in [&first, &second] {
            if let Ok(Some(lv)) = lvs.get_opt(&pv_name(claim)).await
                && lv.spec.node_name == "n1"
                && lv
                    .status
                    .is_some_and(|s| s.phase == LocalVolumePhase::Ready)
            {
                ready += 1;
            }
        }
        ready == 2
    })
    .await
    .unwrap();
    wait_pv(&cluster, &pv_name(&first)).await;
    running
        .settled("the controller is done with both claims", |index| {
            index.persistent_volume(&pv_name(&first)).is_some()
        })
        .await;
    assert!(
        cluster
            .pvs()
            .get_opt(&pv_name(&second))
            .await
            .unwrap()
            .is_none(),
        "the second claim got a PV without a selected node"
    );

    // Bound to a PV made by hand instead (as the scheduler does with a matching one).
    cluster
        .pvs()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "by-hand"},
                "spec": {
                    "capacity": {"storage": "30Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "local",
                    "hostPath": {"path": "/srv/by-hand"},
                    "claimRef": {"namespace": NS, "name": "second", "uid": second.uid().unwrap()},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    cluster
        .claims()
        .patch(
            "second",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": "by-hand"}})),
        )
        .await
        .unwrap();
    wait_for(
        WAIT,
        "the second claim's unused volume is collected",
        || async {
            lvs.get_opt(&pv_name(&second))
                .await
                .is_ok_and(|l| l.is_none())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        agent.cleaned.lock().get(&pv_name(&second)),
        Some(&OnDelete::Delete)
    );
    assert!(
        lvs.get_opt(&pv_name(&first)).await.unwrap().is_some(),
        "the first claim keeps its volume"
    );
}

#[tokio::test]
async fn a_pv_made_before_the_pv_controller_has_seen_its_claim_is_bound_never_released() {
    // kube-controller-manager's PV controller reaches a claim seconds into a burst (its own
    // store of claims, filled by a throttled worker), after stowage has made the PV. A PV
    // pre-bound to a claim missing from that store is released on the spot unless it says a
    // controller bound it (seen on a real 1.19 cluster); then it is checked with the API
    // server, and the claim, once reached, binds to it without a provisioner annotation.
    // The stand-in reaches the claim only after a pass that judged the PV without it: the
    // order is forced, not hoped for from a lag (and stowage must make the PV without any
    // word from the PV controller).
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let _running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let _scheduler = Scheduler::start(
        cluster.client.clone(),
        SchedulerConfig {
            pv_controller_after_pre_bound_pv: true,
            ..SchedulerConfig::default()
        },
    );
    // Every phase any PV goes through, from a watch.
    let phases: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorder = {
        let phases = phases.clone();
        let pvs = cluster.pvs();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            use kube::runtime::watcher;
            let mut events = watcher(pvs, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Apply(pv) | watcher::Event::InitApply(pv) = event {
                    let phase = pv.status.and_then(|s| s.phase).unwrap_or_default();
                    phases
                        .lock()
                        .push((pv.metadata.name.unwrap_or_default(), phase));
                }
            }
        })
    };
    cluster.pod_with_claim("data", "local", "1Gi").await;
    let claim = wait_until(WAIT, "the claim has a selected node", || async {
        cluster.claims().get("data").await.ok().filter(|c| {
            c.annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE)
        })
    })
    .await
    .unwrap();
    let name = pv_name(&claim);
    wait_pv(&cluster, &name).await;
    let bound = cluster.bound("data").await;
    assert_eq!(
        bound.spec.unwrap().volume_name.as_deref(),
        Some(name.as_str())
    );
    let annotations = bound.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(names::ANNOTATION_STORAGE_PROVISIONER),
        "bound to the PV it found, without provisioning: {annotations:?}"
    );
    let pv = cluster.pvs().get(&name).await.unwrap();
    assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    recorder.abort();
    let seen = phases.lock().clone();
    assert!(
        seen.iter().all(|(_, phase)| phase != "Released"),
        "a PV was released on the way: {seen:?}"
    );
    assert!(
        seen.iter().any(|(pv, _)| *pv == name),
        "the watch saw the PV: {seen:?}"
    );
}

#[tokio::test]
async fn the_volume_and_its_pv_are_made_at_the_selected_node_before_the_provisioner_annotation() {
    // kube-controller-manager writes the provisioner annotation at its own pace (seconds
    // into a burst on a real cluster). The scheduler's choice is enough to make the volume
    // and the PV; the PV says a controller bound it, so the PV controller checks with the
    // API server before releasing it for a claim it has not seen yet.
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let early = selected_claim(&cluster, "early", "1Gi", "n1", &[]).await;
    let name = pv_name(&early);
    let pv = wait_pv(&cluster, &name).await;
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().uid, early.metadata.uid);
    assert_eq!(
        pv.metadata.annotations.unwrap()[names::ANNOTATION_BOUND_BY_CONTROLLER],
        "yes"
    );
    let claim = cluster.claims().get("early").await.unwrap();
    let annotations = claim.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key(names::ANNOTATION_STORAGE_PROVISIONER)
            && !annotations.contains_key(names::ANNOTATION_BETA_STORAGE_PROVISIONER),
        "made with no provisioner annotation on the claim: {annotations:?}"
    );
    // Without a selected node nothing starts.
    let unscheduled = cluster
        .claims()
        .create(
            &PostParams::default(),
            &pvc(NS, "unscheduled").size("1Gi").class("local").build(),
        )
        .await
        .unwrap();
    running
        .settled("the controller has seen the unscheduled claim", |index| {
            index.claim(NS, "unscheduled").is_some()
        })
        .await;
    assert!(
        cluster
            .lvs()
            .get_opt(&pv_name(&unscheduled))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_claim_that_does_not_fit_its_node_is_sent_back_with_the_numbers() {
    let cluster = Cluster::start(&[("n1", "n1", 10)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let claim = selected_claim(
        &cluster,
        "big",
        "50Gi",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let claims = cluster.claims();
    wait_for(WAIT, "selected-node is removed", || async {
        claims.get("big").await.is_ok_and(|c| {
            !c.annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE)
        })
    })
    .await
    .unwrap();
    let message = cluster.event(NS, "big", "ProvisioningFailed").await;
    assert!(message.contains("node n1"), "{message}");
    assert!(
        message.contains("10Gi free") && message.contains("50Gi"),
        "{message}"
    );
    assert!(
        cluster
            .lvs()
            .get_opt(&pv_name(&claim))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        running.metric("stowage_reschedules_total{reason=\"insufficient_capacity\"}"),
        1.0
    );

    // A node without a Node object: same, with its own reason.
    let gone = selected_claim(
        &cluster,
        "ghost",
        "1Gi",
        "vanished",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    wait_for(WAIT, "selected-node vanished is removed", || async {
        claims.get("ghost").await.is_ok_and(|c| {
            !c.annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE)
        })
    })
    .await
    .unwrap();
    let message = cluster.event(NS, "ghost", "ProvisioningFailed").await;
    assert!(
        message.contains("node vanished no longer exists"),
        "{message}"
    );
    assert!(
        cluster
            .lvs()
            .get_opt(&pv_name(&gone))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        running.metric("stowage_reschedules_total{reason=\"node_gone\"}"),
        1.0
    );
}

#[tokio::test]
async fn unsupported_requests_fail_with_an_event_and_keep_the_node() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let _running = start_controller(&cluster.client, Duration::from_secs(300));
    let mut block = pvc(NS, "raw")
        .size("1Gi")
        .class("local")
        .selected_node("n1")
        .annotation(
            names::ANNOTATION_STORAGE_PROVISIONER,
            names::PROVISIONER_LOCAL,
        )
        .build();
    block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    let block = cluster
        .claims()
        .create(&PostParams::default(), &block)
        .await
        .unwrap();
    let shared = pvc(NS, "shared")
        .size("1Gi")
        .class("local")
        .access_modes(["ReadWriteMany"])
        .selected_node("n1")
        .annotation(
            names::ANNOTATION_STORAGE_PROVISIONER,
            names::PROVISIONER_LOCAL,
        )
        .build();
    let shared = cluster
        .claims()
        .create(&PostParams::default(), &shared)
        .await
        .unwrap();
    let message = cluster.event(NS, "raw", "ProvisioningFailed").await;
    assert!(
        message.contains("volumeMode Block is not supported"),
        "{message}"
    );
    let message = cluster.event(NS, "shared", "ProvisioningFailed").await;
    assert!(
        message.contains("ReadWriteMany is not supported"),
        "{message}"
    );
    for c in [&block, &shared] {
        assert!(cluster.lvs().get_opt(&pv_name(c)).await.unwrap().is_none());
        let now = cluster.claims().get(&c.name_any()).await.unwrap();
        assert!(
            now.annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE),
            "no rescheduling helps"
        );
    }
}

#[tokio::test]
async fn released_volumes_are_deleted_or_retained_by_reclaim_policy() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    cluster.class("keep", "Retain", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (agent, _task) = Agent::start(&cluster.client);
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.pod_with_claim("scratch", "local", "1Gi").await;
    cluster.pod_with_claim("precious", "keep", "1Gi").await;
    let scratch = pv_name(&cluster.bound("scratch").await);
    let precious = pv_name(&cluster.bound("precious").await);
    let kept = cluster.pvs().get(&precious).await.unwrap();
    assert!(
        kept.finalizers()
            .iter()
            .all(|f| f != names::FINALIZER_PV_CLEANUP)
    );

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NS);
    for name in ["scratch", "precious"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
        cluster
            .claims()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let pvs = cluster.pvs();
    wait_for(WAIT, "the Delete PV is gone", || async {
        pvs.get_opt(&scratch).await.is_ok_and(|p| p.is_none())
    })
    .await
    .unwrap();
    assert!(cluster.lvs().get_opt(&scratch).await.unwrap().is_none());
    assert_eq!(agent.cleaned.lock().get(&scratch), Some(&OnDelete::Delete));
    assert_eq!(
        running.metric("stowage_deletions_total{result=\"succeeded\"}"),
        1.0
    );

    wait_for(WAIT, "the Retain PV is Released", || async {
        pvs.get(&precious)
            .await
            .is_ok_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Released"))
    })
    .await
    .unwrap();
    // Once the controller has seen it Released and done with it, nothing may have moved.
    running
        .settled("the controller has seen the Released PV", |index| {
            index
                .persistent_volume(&precious)
                .and_then(|pv| pv.status?.phase)
                .as_deref()
                == Some("Released")
        })
        .await;
    assert!(pvs.get_opt(&precious).await.unwrap().is_some());
    let lv = cluster.lvs().get(&precious).await.unwrap();
    assert!(lv.metadata.deletion_timestamp.is_none());
    assert!(!agent.cleaned.lock().contains_key(&precious));
    scheduler.shutdown().await;
}

#[tokio::test]
async fn bound_claims_grow_when_the_node_has_room_and_are_refused_when_not() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", true, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.pod_with_claim("data", "local", "10Gi").await;
    let name = pv_name(&cluster.bound("data").await);

    let grow = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
    cluster
        .claims()
        .patch("data", &PatchParams::default(), &Patch::Merge(grow("30Gi")))
        .await
        .unwrap();
    let claims = cluster.claims();
    let grown = wait_until(WAIT, "the claim reports 30Gi", || async {
        claims.get("data").await.ok().filter(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .is_some_and(|q| q.0 == "30Gi")
        })
    })
    .await
    .unwrap();
    let conditions = grown.status.unwrap().conditions.unwrap_or_default();
    assert!(
        conditions.iter().all(|c| c.type_ != "Resizing"),
        "{conditions:?}"
    );
    let pv = cluster.pvs().get(&name).await.unwrap();
    assert_eq!(pv.spec.unwrap().capacity.unwrap()["storage"].0, "30Gi");
    assert_eq!(
        cluster.lvs().get(&name).await.unwrap().spec.size_bytes,
        30 * GI
    );
    assert!(
        !cluster
            .events(NS, "data", "VolumeResizeSuccessful")
            .await
            .is_empty()
    );

    cluster
        .claims()
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(grow("500Gi")),
        )
        .await
        .unwrap();
    let message = cluster.event(NS, "data", "VolumeResizeFailed").await;
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(message.contains("500Gi"), "{message}");
    assert_eq!(
        cluster.lvs().get(&name).await.unwrap().spec.size_bytes,
        30 * GI
    );
    let pv = cluster.pvs().get(&name).await.unwrap();
    assert_eq!(pv.spec.unwrap().capacity.unwrap()["storage"].0, "30Gi");
    assert_eq!(
        running.metric("stowage_expansions_total{result=\"succeeded\"}"),
        1.0
    );
    assert!(running.metric("stowage_expansions_total{result=\"infeasible\"}") >= 1.0);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn a_controller_killed_between_local_volume_and_pv_converges_after_restart() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let (agent, _task) = Agent::start(&cluster.client);
    agent.paused.store(true, Ordering::SeqCst);
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    let first = start_controller(&cluster.client, Duration::from_secs(300));
    cluster.pod_with_claim("data", "local", "5Gi").await;
    let claims = cluster.claims();
    let claim = wait_until(WAIT, "the claim has a node", || async {
        claims.get("data").await.ok().filter(|c| {
            c.annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE)
        })
    })
    .await
    .unwrap();
    let name = pv_name(&claim);
    let lvs = cluster.lvs();
    wait_for(WAIT, "the LocalVolume is created", || async {
        lvs.get_opt(&name).await.is_ok_and(|l| l.is_some())
    })
    .await
    .unwrap();
    drop(first);

    let _second = start_controller(&cluster.client, Duration::from_secs(300));
    agent.paused.store(false, Ordering::SeqCst);
    cluster.bound("data").await;
    assert_eq!(
        lvs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let pvs = cluster
        .pvs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(pvs.len(), 1);
    assert_eq!(pvs[0].name_any(), name);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn a_local_volume_whose_claim_was_deleted_mid_provisioning_is_cleaned_up() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let (agent, _task) = Agent::start(&cluster.client);
    agent.paused.store(true, Ordering::SeqCst);
    let _running = start_controller(&cluster.client, Duration::from_secs(300));
    let claim = selected_claim(
        &cluster,
        "data",
        "1Gi",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let name = pv_name(&claim);
    let lvs = cluster.lvs();
    wait_for(WAIT, "the LocalVolume is created", || async {
        lvs.get_opt(&name).await.is_ok_and(|l| l.is_some())
    })
    .await
    .unwrap();
    cluster
        .claims()
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, "the orphaned LocalVolume is gone", || async {
        lvs.get_opt(&name).await.is_ok_and(|l| l.is_none())
    })
    .await
    .unwrap();
    assert_eq!(agent.cleaned.lock().get(&name), Some(&OnDelete::Delete));
    assert!(cluster.pvs().get_opt(&name).await.unwrap().is_none());
}

#[tokio::test]
async fn a_pv_whose_node_vanished_is_reported_after_the_grace() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_millis(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let claim = selected_claim(
        &cluster,
        "data",
        "1Gi",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let name = pv_name(&claim);
    wait_pv(&cluster, &name).await;
    Api::<Node>::all(cluster.client.clone())
        .delete("n1", &DeleteParams::default())
        .await
        .unwrap();
    // The PV changes (a label) so the controller looks at it at once.
    cluster
        .pvs()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    let message = cluster.event("default", &name, "VolumeNodeGone").await;
    assert!(message.contains("node n1"), "{message}");
    assert_eq!(
        running.metric("stowage_volumes_node_gone{node=\"n1\"}"),
        1.0
    );
    assert!(
        cluster.pvs().get_opt(&name).await.unwrap().is_some(),
        "reported, not dropped"
    );
}

/// The extender over the controller's own index, on a loopback port.
async fn serve_extender(index: Arc<RwLock<ClusterIndex>>) -> String {
    let policy = Arc::new(StowagePolicy::new(index, FitOptions::default()));
    let app = stowage_extender::router(policy, stowage_extender::RouterConfig::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_burst_of_fifty_claims_is_all_bound_without_overcommitting_any_pool() {
    let cluster = Cluster::start(&[("n1", "n1", 120), ("n2", "n2", 80), ("n3", "n3", 60)]).await;
    cluster.class("local", "Delete", false, &[]).await;
    let running = start_controller(&cluster.client, Duration::from_secs(300));
    let (_agent, _task) = Agent::start(&cluster.client);
    let url = serve_extender(running.index.clone()).await;
    let scheduler = Scheduler::start(
        cluster.client.clone(),
        SchedulerConfig::with_extender(ExtenderConfig::new(url)),
    );
    // 50 claims of 1..=7 GiB: 196 GiB of 260 GiB.
    let mut total = 0;
    for i in 0..50u64 {
        let gib = 1 + (i * 5) % 7;
        total += gib;
        cluster
            .pod_with_claim(&format!("c{i:02}"), "local", &format!("{gib}Gi"))
            .await;
    }
    assert!(total < 260);
    let claims = cluster.claims();
    wait_for(
        Duration::from_secs(60),
        "all 50 claims are Bound",
        || async {
            claims.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.len() == 50
                    && l.items.iter().all(|c| {
                        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                    })
            })
        },
    )
    .await
    .unwrap();
    let lvs = cluster
        .lvs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(lvs.len(), 50, "one LocalVolume per claim");
    assert_eq!(
        cluster
            .pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        50
    );
    let mut per_node: HashMap<String, u64> = HashMap::new();
    for lv in &lvs {
        *per_node.entry(lv.spec.node_name.clone()).or_default() += lv.spec.size_bytes;
    }
    for (node, gib) in [("n1", 120u64), ("n2", 80), ("n3", 60)] {
        let used = per_node.get(node).copied().unwrap_or_default();
        assert!(
            used <= gib * GI,
            "{node}: {used} bytes allocated of {gib}Gi"
        );
    }
    assert_eq!(
        running.metric("stowage_provisions_total{result=\"succeeded\"}"),
        50.0
    );
    scheduler.shutdown().await;
}

/// Invalid class parameters and absurd sizes: each claim gets a Warning `ProvisioningFailed`
/// Event naming the parameter (or the size) and the fix, and nothing changes: no
/// LocalVolume, no PV, and `selected-node` stays unless a reschedule can help (a size that
/// fits no node). Quantities the API server cannot parse never reach stowage.
#[tokio::test]
async fn invalid_class_parameters_and_absurd_sizes_get_a_warning_and_change_nothing() {
    let cluster = Cluster::start(&[("n1", "n1", 100)]).await;
    // (class, parameters) of classes that cannot be used.
    let classes: &[(&str, &[(&str, &str)])] = &[
        ("bad-placement", &[("placement", "random")]),
        ("bad-on-delete", &[("onDelete", "shred")]),
        ("typo-key", &[("ondelete", "retain")]),
        ("empty-pool", &[("pool", " ")]),
        ("path-pool", &[("pool", "../../etc")]),
        ("upper-pool", &[("pool", "Fast")]),
    ];
    for (name, params) in classes {
        cluster.class(name, "Delete", false, params).await;
    }
    cluster.class("local", "Delete", false, &[]).await;
    let _running = start_controller(&cluster.client, Duration::from_secs(300));

    // (claim, class, size, what the Event says, whether selected-node stays)
    let cases: &[(&str, &str, &str, &[&str], bool)] = &[
        (
            "c-placement",
            "bad-placement",
            "1Gi",
            &["bad-placement", "\"placement\"", "spread"],
            true,
        ),
        (
            "c-on-delete",
            "bad-on-delete",
            "1Gi",
            &["\"onDelete\"", "\"archive\""],
            true,
        ),
        (
            "c-typo",
            "typo-key",
            "1Gi",
            &["\"ondelete\"", "\"onDelete\""],
            true,
        ),
        (
            "c-empty-pool",
            "empty-pool",
            "1Gi",
            &["\"pool\"", "empty"],
            true,
        ),
        (
            "c-path-pool",
            "path-pool",
            "1Gi",
            &["\"pool\"", "../../etc", "lowercase"],
            true,
        ),
        (
            "c-upper-pool",
            "upper-pool",
            "1Gi",
            &["\"pool\"", "Fast"],
            true,
        ),
        (
            "c-exabytes",
            "local",
            "16Ei",
            &["16Ei", "larger than"],
            true,
        ),
        (
            "c-two-pow-63",
            "local",
            "9223372036854775808",
            &["node n1", "free"],
            false,
        ),
        (
            "c-huge",
            "local",
            "100Ti",
            &["node n1", "free", "100Ti"],
            false,
        ),
    ];
    let mut made = Vec::new();
    for &(name, class, size, _, _) in cases {
        let claim = pvc(NS, name)
            .size(size)
            .class(class)
            .selected_node("n1")
            .annotation(
                names::ANNOTATION_STORAGE_PROVISIONER,
                names::PROVISIONER_LOCAL,
            )
            .build();
        made.push(
            cluster
                .claims()
                .create(&PostParams::default(), &claim)
                .await
                .unwrap(),
        );
    }
    // Sizes the API server refuses, as a real one does, never reach the controller.
    for (name, size) in [("c-zero", "0"), ("c-lots", "lots"), ("c-negative", "-1Gi")] {
        let claim = pvc(NS, name)
            .size(size)
            .class("local")
            .selected_node("n1")
            .build();
        let err = cluster
            .claims()
            .create(&PostParams::default(), &claim)
            .await;
        assert!(err.is_err(), "{size}: the API server accepted it");
    }

    let events: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    for (&(name, _, size, needles, keeps_node), claim) in cases.iter().zip(&made) {
        let message = cluster.event(NS, name, "ProvisioningFailed").await;
        for needle in needles {
            assert!(
                message.contains(needle),
                "{name} ({size}): {message:?} lacks {needle:?}"
            );
        }
        let warning = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some("ProvisioningFailed")
                    && e.type_.as_deref() == Some("Warning")
            });
        assert!(warning, "{name}: the Event is a Warning");
        let pv = pv_name(claim);
        assert!(
            cluster.lvs().get_opt(&pv).await.unwrap().is_none(),
            "{name}: a LocalVolume"
        );
        assert!(
            cluster.pvs().get_opt(&pv).await.unwrap().is_none(),
            "{name}: a PV"
        );
        if keeps_node {
            let now = cluster.claims().get(name).await.unwrap();
            assert!(
                now.annotations()
                    .contains_key(names::ANNOTATION_SELECTED_NODE),
                "{name}: rescheduling cannot fix a class or a size, so selected-node stays"
            );
            assert_eq!(
                now.metadata.resource_version, claim.metadata.resource_version,
                "{name}: the claim was not written"
            );
        }
    }
    // A good claim beside them is still provisioned: one bad claim does not wedge the rest.
    let good = selected_claim(
        &cluster,
        "good",
        "1",
        "n1",
        &[names::ANNOTATION_STORAGE_PROVISIONER],
    )
    .await;
    let lv = wait_until(WAIT, "the good claim's LocalVolume", || async {
        cluster.lvs().get_opt(&pv_name(&good)).await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(lv.spec.size_bytes, 1 << 20, "one byte takes one whole MiB");
}
