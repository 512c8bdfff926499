//! Tests of the scheduler and PV-controller stand-in, with a fake extender (stowage_extender's
//! router over a test policy) and a test provisioner.

// Helpers outside `#[test]` functions panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, to_bytes},
    extract::Request,
    middleware::{self, Next},
};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::Value;
use stowage_extender::{FilterVerdict, NodeScore, Policy, Rejection, RouterConfig};
use stowage_testkit::{
    ApiServer, ExtenderConfig, Scheduler, SchedulerConfig,
    fixtures::{node, pod, pv, pvc, storage_class},
    wait_for, wait_until,
};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);
const NS: &str = "default";
const PROVISIONER: &str = "local.stowage.io";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

// === fake extender ===

/// Rejects the nodes in `rejected` with their reason and scores the rest from `scores`.
#[derive(Default)]
struct TestPolicy {
    rejected: Mutex<BTreeMap<String, String>>,
    scores: Mutex<BTreeMap<String, i64>>,
}

impl TestPolicy {
    fn reject(&self, node: &str, reason: &str) {
        self.rejected
            .lock()
            .unwrap()
            .insert(node.to_string(), reason.to_string());
    }

    fn score(&self, node: &str, score: i64) {
        self.scores.lock().unwrap().insert(node.to_string(), score);
    }
}

impl Policy for TestPolicy {
    fn filter<'n>(&self, _pod: &Pod, nodes: &[&'n str]) -> FilterVerdict<'n> {
        let rejected = self.rejected.lock().unwrap();
        FilterVerdict::Reject(
            nodes
                .iter()
                .filter_map(|n| {
                    let reason = rejected.get(*n)?;
                    Some(Rejection::unresolvable(
                        n,
                        "Test",
                        Cow::Owned(reason.clone()),
                    ))
                })
                .collect(),
        )
    }

    fn prioritize<'n>(&self, _pod: &Pod, nodes: &[&'n str]) -> Vec<NodeScore<'n>> {
        let scores = self.scores.lock().unwrap();
        nodes
            .iter()
            .map(|node| NodeScore {
                node,
                score: scores.get(*node).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A served fake extender: its URL prefix, and every request body it received, by path.
struct FakeExtender {
    url_prefix: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    task: JoinHandle<()>,
}

impl FakeExtender {
    async fn start(policy: Arc<TestPolicy>) -> FakeExtender {
        let requests: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let log = requests.clone();
        let app = stowage_extender::router(policy, RouterConfig::new().prefix("/ext"))
            .unwrap()
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                let log = log.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = to_bytes(body, usize::MAX).await.unwrap();
                    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    log.lock()
                        .unwrap()
                        .push((parts.uri.path().to_string(), json));
                    next.run(Request::from_parts(parts, Body::from(bytes)))
                        .await
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeExtender {
            url_prefix: format!("http://{addr}/ext"),
            requests,
            task,
        }
    }

    fn requests(&self, verb: &str) -> Vec<Value> {
        let path = format!("/ext/{verb}");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Drop for FakeExtender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === test provisioner ===

/// Provisions claims announced to `local.stowage.io` that have a selected node: a `local` PV
/// pre-bound to the claim, with node affinity. When `refuse` says so for the node, it asks for
/// rescheduling instead, by removing `selected-node` (once per node).
fn start_provisioner(
    client: Client,
    refuse: impl Fn(&str) -> bool + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        loop {
            for claim in claims.list(&ListParams::default()).await.unwrap().items {
                let annotations = claim.metadata.annotations.clone().unwrap_or_default();
                let ours = annotations
                    .get("volume.kubernetes.io/storage-provisioner")
                    .map(String::as_str)
                    == Some(PROVISIONER)
                    && annotations
                        .get("volume.beta.kubernetes.io/storage-provisioner")
                        .map(String::as_str)
                        == Some(PROVISIONER);
                let Some(node) = annotations.get(SELECTED_NODE) else {
                    continue;
                };
                let spec = claim.spec.clone().unwrap();
                if !ours || spec.volume_name.is_some() {
                    continue;
                }
                let ns = claim.metadata.namespace.clone().unwrap();
                let name = claim.metadata.name.clone().unwrap();
                if refuse(node) {
                    let mut claim = claim.clone();
                    claim
                        .metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .remove(SELECTED_NODE);
                    let _ = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                        .replace(&name, &PostParams::default(), &claim)
                        .await;
                    continue;
                }
                let pv_name = format!("pvc-{}", claim.metadata.uid.clone().unwrap());
                if pvs.get_opt(&pv_name).await.unwrap().is_some() {
                    continue;
                }
                let size = spec.resources.unwrap().requests.unwrap()["storage"]
                    .0
                    .clone();
                let volume = pv(&pv_name)
                    .size(&size)
                    .class(spec.storage_class_name.as_deref().unwrap())
                    .local(node, &format!("/pool/{pv_name}"))
                    .claim(&ns, &name)
                    .annotation("pv.kubernetes.io/provisioned-by", PROVISIONER)
                    .claim_uid(claim.metadata.uid.as_deref())
                    .build();
                let _ = pvs.create(&PostParams::default(), &volume).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

// === setup ===

struct Cluster {
    server: ApiServer,
    client: Client,
}

/// Nodes a, b, c; class `local` (WFFC, `local.stowage.io`); class `fast` (Immediate).
async fn cluster() -> Cluster {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let pp = PostParams::default();
    for name in ["node-a", "node-b", "node-c"] {
        Api::all(client.clone())
            .create(&pp, &node(name).build())
            .await
            .unwrap();
    }
    let classes = Api::all(client.clone());
    classes
        .create(
            &pp,
            &storage_class("local").wait_for_first_consumer().build(),
        )
        .await
        .unwrap();
    classes
        .create(&pp, &storage_class("fast").build())
        .await
        .unwrap();
    Cluster { server, client }
}

fn fast(mut config: SchedulerConfig) -> SchedulerConfig {
    config.retry_interval = Duration::from_millis(100);
    config
}

impl Cluster {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// Creates claim `data-<pod>` of `class` and a pod mounting it.
    async fn pod_with_claim(&self, name: &str, class: &str) {
        let pp = PostParams::default();
        let claim = format!("data-{name}");
        self.claims()
            .create(&pp, &pvc(NS, &claim).size("2Gi").class(class).build())
            .await
            .unwrap();
        self.pods()
            .create(&pp, &pod(NS, name).claims([&claim]).build())
            .await
            .unwrap();
    }

    async fn node_of(&self, pod: &str) -> String {
        wait_until(WAIT, &format!("pod {pod} is bound"), || async {
            self.pods().get(pod).await.ok()?.spec?.node_name
        })
        .await
        .unwrap()
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

// === tests ===

#[tokio::test]
async fn pod_with_a_wffc_claim_is_placed_on_the_best_scored_node_and_bound() {
    let c = cluster().await;
    let policy = Arc::new(TestPolicy::default());
    policy.reject("node-a", "local-volume: 1Gi free, 2Gi requested");
    policy.score("node-b", 3);
    policy.score("node-c", 8);
    let ext = FakeExtender::start(policy).await;
    let _provisioner = start_provisioner(c.client.clone(), |_| false);
    let scheduler = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(ExtenderConfig::new(
            &ext.url_prefix,
        ))),
    );

    c.pod_with_claim("db-0", "local").await;

    assert_eq!(c.node_of("db-0").await, "node-c");
    let claim = c.claims().get("data-db-0").await.unwrap();
    let annotations = claim.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[SELECTED_NODE], "node-c");
    assert_eq!(
        annotations["volume.kubernetes.io/storage-provisioner"],
        PROVISIONER
    );
    assert_eq!(
        annotations["volume.beta.kubernetes.io/storage-provisioner"],
        PROVISIONER
    );
    assert_eq!(annotations["pv.kubernetes.io/bind-completed"], "yes");
    let pv_name = format!("pvc-{}", claim.metadata.uid.unwrap());
    assert_eq!(
        claim.spec.unwrap().volume_name.as_deref(),
        Some(pv_name.as_str())
    );
    let status = claim.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Bound"));
    assert_eq!(status.capacity.unwrap()["storage"].0, "2Gi");
    assert_eq!(status.access_modes.unwrap(), ["ReadWriteOnce"]);
    let volume = c.pvs().get(&pv_name).await.unwrap();
    assert_eq!(volume.status.unwrap().phase.as_deref(), Some("Bound"));
    assert!(volume.spec.unwrap().claim_ref.unwrap().uid.is_some());

    // The wire: PascalCase, NodeNames only, the VolumeBinding survivors, prioritize on two.
    let filter = &ext.requests("filter")[0];
    assert_eq!(
        filter["NodeNames"],
        serde_json::json!(["node-a", "node-b", "node-c"])
    );
    assert!(filter["Nodes"].is_null());
    assert_eq!(filter["Pod"]["metadata"]["name"], "db-0");
    let prioritize = &ext.requests("prioritize")[0];
    assert_eq!(
        prioritize["NodeNames"],
        serde_json::json!(["node-b", "node-c"])
    );
    assert!(
        c.events("Scheduled")
            .await
            .iter()
            .any(|e| e.message.as_deref() == Some("Successfully assigned default/db-0 to node-c"))
    );
    assert_eq!(scheduler.last_failure(NS, "db-0"), None);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn pod_stays_pending_with_the_extenders_reasons_when_no_node_passes() {
    let c = cluster().await;
    let policy = Arc::new(TestPolicy::default());
    for n in ["node-a", "node-b"] {
        policy.reject(n, "local-volume: 1Gi free, 2Gi requested");
    }
    policy.reject("node-c", "local-volume: node has no storage pool");
    let ext = FakeExtender::start(policy).await;
    // The claim and the pod exist before the stand-in starts, so its first cycle runs on an
    // initial list holding both. Started first, its claim and pod watches (independent, like
    // kube-scheduler's informers) could deliver the pod before the claim, and that cycle would
    // rightly fail with "persistentvolumeclaim not found": another message, another Event.
    c.pod_with_claim("db-0", "local").await;
    let scheduler = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(ExtenderConfig::new(
            &ext.url_prefix,
        ))),
    );

    let expected = "0/3 nodes are available: 2 local-volume: 1Gi free, 2Gi requested, \
                    1 local-volume: node has no storage pool.";
    wait_for(WAIT, "the failure is recorded", || async {
        scheduler.last_failure(NS, "db-0").as_deref() == Some(expected)
    })
    .await
    .unwrap();
    // Retried with the extender called again, and still pending.
    wait_for(WAIT, "the pod is retried", || async {
        scheduler.attempts(NS, "db-0") >= 3 && ext.requests("filter").len() >= 3
    })
    .await
    .unwrap();
    let events = c.events("FailedScheduling").await;
    assert_eq!(
        events.len(),
        1,
        "one event per distinct message: {events:?}"
    );
    assert_eq!(events[0].message.as_deref(), Some(expected));
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let p = c.pods().get("db-0").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name, None);
    let condition = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        (
            condition.status.as_str(),
            condition.reason.as_deref(),
            condition.message.as_deref()
        ),
        ("False", Some("Unschedulable"), Some(expected))
    );
    let claim = c.claims().get("data-db-0").await.unwrap();
    assert!(
        !claim
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SELECTED_NODE)
    );
    scheduler.shutdown().await;
}

#[tokio::test]
async fn non_cache_capable_mode_sends_full_nodes() {
    let c = cluster().await;
    let policy = Arc::new(TestPolicy::default());
    policy.reject("node-b", "full");
    policy.reject("node-c", "full");
    let ext = FakeExtender::start(policy).await;
    let _provisioner = start_provisioner(c.client.clone(), |_| false);
    let scheduler = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(
            ExtenderConfig::new(&ext.url_prefix).node_cache_capable(false),
        )),
    );

    c.pod_with_claim("db-0", "local").await;

    assert_eq!(c.node_of("db-0").await, "node-a");
    let filter = &ext.requests("filter")[0];
    assert!(filter["NodeNames"].is_null());
    let items = filter["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0]["metadata"]["labels"]["kubernetes.io/hostname"],
        "node-a"
    );
    assert!(
        items[0].get("kind").is_none(),
        "embedded nodes carry no kind"
    );
    // One node left after the filter: prioritize is skipped.
    assert!(ext.requests("prioritize").is_empty());
    scheduler.shutdown().await;
}

#[tokio::test]
async fn removing_selected_node_makes_the_pod_rescheduled() {
    let c = cluster().await;
    let policy = Arc::new(TestPolicy::default());
    policy.score("node-a", 10);
    policy.score("node-b", 5);
    policy.reject("node-c", "full");
    let ext = FakeExtender::start(policy.clone()).await;
    // The provisioner finds node-a full after all: it asks for rescheduling, and the extender
    // learns of it.
    let learned = policy.clone();
    let _provisioner = start_provisioner(c.client.clone(), move |node| {
        if node == "node-a" {
            learned.reject("node-a", "full");
            true
        } else {
            false
        }
    });
    let scheduler = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(ExtenderConfig::new(
            &ext.url_prefix,
        ))),
    );

    c.pod_with_claim("db-0", "local").await;

    assert_eq!(c.node_of("db-0").await, "node-b");
    assert!(scheduler.attempts(NS, "db-0") >= 2);
    assert!(ext.requests("filter").len() >= 2);
    let failures = c.events("FailedScheduling").await;
    assert!(
        failures.iter().any(|e| e
            .message
            .as_deref()
            .is_some_and(|m| m.contains("provisioning failed for PVC \"data-db-0\""))),
        "{failures:?}"
    );
    let claim = c.claims().get("data-db-0").await.unwrap();
    assert_eq!(claim.metadata.annotations.unwrap()[SELECTED_NODE], "node-b");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn deleted_claim_releases_its_pv() {
    let c = cluster().await;
    let _provisioner = start_provisioner(c.client.clone(), |_| false);
    let scheduler = Scheduler::start(c.client.clone(), fast(SchedulerConfig::default()));
    c.pod_with_claim("db-0", "local").await;
    let node = c.node_of("db-0").await;
    let claim = c.claims().get("data-db-0").await.unwrap();
    let pv_name = claim.spec.unwrap().volume_name.unwrap();
    assert_eq!(pv_name, format!("pvc-{}", claim.metadata.uid.unwrap()));
    assert!(node.starts_with("node-"));

    c.pods()
        .delete("db-0", &DeleteParams::default())
        .await
        .unwrap();
    c.claims()
        .delete("data-db-0", &DeleteParams::default())
        .await
        .unwrap();

    wait_for(WAIT, "the volume is Released", || async {
        c.pvs()
            .get(&pv_name)
            .await
            .ok()
            .and_then(|v| v.status?.phase)
            .as_deref()
            == Some("Released")
    })
    .await
    .unwrap();
    scheduler.shutdown().await;
}

#[tokio::test]
async fn without_an_extender_placement_still_works() {
    let c = cluster().await;
    // A cordoned node is never chosen.
    let pp = PostParams::default();
    Api::all(c.client.clone())
        .create(&pp, &node("node-d").unschedulable().build())
        .await
        .unwrap();
    let _provisioner = start_provisioner(c.client.clone(), |_| false);
    let scheduler = Scheduler::start(c.client.clone(), fast(SchedulerConfig::default()));

    c.pod_with_claim("db-0", "local").await;
    c.pods()
        .create(&pp, &pod(NS, "plain").build())
        .await
        .unwrap();

    let node = c.node_of("db-0").await;
    assert!(["node-a", "node-b", "node-c"].contains(&node.as_str()));
    let claim = c.claims().get("data-db-0").await.unwrap();
    assert_eq!(claim.metadata.annotations.unwrap()[SELECTED_NODE], node);
    assert_ne!(c.node_of("plain").await, "node-d");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn unbound_immediate_claim_keeps_the_pod_pending_and_gets_the_provisioner_annotations() {
    let c = cluster().await;
    let scheduler = Scheduler::start(c.client.clone(), fast(SchedulerConfig::default()));

    c.pod_with_claim("db-0", "fast").await;

    wait_for(WAIT, "the failure is recorded", || async {
        scheduler.last_failure(NS, "db-0").as_deref()
            == Some("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
    })
    .await
    .unwrap();
    wait_for(
        WAIT,
        "the claim is announced to its provisioner",
        || async {
            let claim = c.claims().get("data-db-0").await.unwrap();
            let annotations = claim.metadata.annotations.unwrap_or_default();
            annotations
                .get("volume.kubernetes.io/storage-provisioner")
                .map(String::as_str)
                == Some(PROVISIONER)
                && annotations
                    .get("volume.beta.kubernetes.io/storage-provisioner")
                    .map(String::as_str)
                    == Some(PROVISIONER)
                && !annotations.contains_key(SELECTED_NODE)
        },
    )
    .await
    .unwrap();

    // A volume pre-bound to the claim is bound to it; then the pod is placed on its node.
    let claim = c.claims().get("data-db-0").await.unwrap();
    let volume = pv("manual")
        .size("5Gi")
        .class("fast")
        .local("node-b", "/pool/manual")
        .claim(NS, "data-db-0")
        .claim_uid(claim.metadata.uid.as_deref())
        .build();
    c.pvs()
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    assert_eq!(c.node_of("db-0").await, "node-b");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn failing_filter_blocks_the_pod_unless_the_extender_is_ignorable() {
    let c = cluster().await;
    // Nothing listens here: every call fails to connect.
    let dead = "http://127.0.0.1:9/ext";
    let strict = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(ExtenderConfig::new(dead))),
    );
    c.pods()
        .create(&PostParams::default(), &pod(NS, "p").build())
        .await
        .unwrap();
    wait_for(WAIT, "the filter error is recorded", || async {
        strict
            .last_failure(NS, "p")
            .is_some_and(|m| m.contains("/ext/filter"))
    })
    .await
    .unwrap();
    strict.shutdown().await;

    let lenient = Scheduler::start(
        c.client.clone(),
        fast(SchedulerConfig::with_extender(
            ExtenderConfig::new(dead).ignorable(true),
        )),
    );
    let _ = c.node_of("p").await;
    lenient.shutdown().await;
    drop(c.server);
}

#[tokio::test]
async fn a_pod_waiting_for_its_volumes_does_not_hold_up_the_next_pod() {
    let c = cluster().await;
    // A WFFC class whose provisioner never runs: its claims wait in the binding cycle.
    Api::all(c.client.clone())
        .create(
            &PostParams::default(),
            &storage_class("manual")
                .provisioner("example.com/nobody")
                .wait_for_first_consumer()
                .build(),
        )
        .await
        .unwrap();
    let _provisioner = start_provisioner(c.client.clone(), |_| false);
    let scheduler = Scheduler::start(c.client.clone(), fast(SchedulerConfig::default()));

    c.pod_with_claim("slow", "manual").await;
    let node = wait_until(WAIT, "the slow pod's claim has a node", || async {
        let claim = c.claims().get("data-slow").await.ok()?;
        claim.metadata.annotations?.get(SELECTED_NODE).cloned()
    })
    .await
    .unwrap();

    // Scheduled and bound while the first pod still waits for its volume.
    c.pod_with_claim("quick", "local").await;
    c.node_of("quick").await;
    let slow = c.pods().get("slow").await.unwrap();
    assert_eq!(slow.spec.unwrap().node_name, None);
    assert_eq!(scheduler.last_failure(NS, "slow"), None);
    assert_eq!(scheduler.attempts(NS, "slow"), 1, "one cycle, then binding");

    // Its volume appears: the waiting binding cycle finishes on that node.
    let claim = c.claims().get("data-slow").await.unwrap();
    let volume = pv("slow-volume")
        .size("2Gi")
        .class("manual")
        .local(&node, "/pool/slow")
        .claim(NS, "data-slow")
        .claim_uid(claim.metadata.uid.as_deref())
        .build();
    c.pvs()
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    assert_eq!(c.node_of("slow").await, node);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn a_volume_provisioned_for_a_claim_deleted_meanwhile_is_released() {
    let c = cluster().await;
    let scheduler = Scheduler::start(c.client.clone(), fast(SchedulerConfig::default()));
    let claim = c
        .claims()
        .create(
            &PostParams::default(),
            &pvc(NS, "gone").size("1Gi").class("local").build(),
        )
        .await
        .unwrap();
    c.claims()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    // The provisioner's volume arrives after the claim is gone, pre-bound to its uid.
    let volume = pv("pvc-late")
        .size("1Gi")
        .class("local")
        .local("node-a", "/pool/late")
        .claim(NS, "gone")
        .claim_uid(claim.metadata.uid.as_deref())
        .build();
    c.pvs()
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    wait_for(WAIT, "the volume is Released", || async {
        c.pvs()
            .get("pvc-late")
            .await
            .ok()
            .and_then(|v| v.status?.phase)
            .as_deref()
            == Some("Released")
    })
    .await
    .unwrap();
    scheduler.shutdown().await;
}
