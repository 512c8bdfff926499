//! CSIStorageCapacity publishing (`stowage controller --publish-capacity`).
//!
//! The publisher against testkit's API server (one object per node and node-local class with
//! the ledger's free bytes, the threshold, nodes and classes that go away, the API version
//! chosen by discovery, a restart), the flag as a real process in both lanes (off: nothing
//! written), and, on the real lane only (`scripts/test-real`), kube-scheduler 1.19's
//! VolumeBinding plugin placing claims by the published objects with the extender off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::RwLock;
use prometheus::Registry;
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage::cache::ClusterIndex;
use stowage::cache::watch::{Readiness, run_controller_watchers};
use stowage::controller::Metrics;
use stowage::controller::capacity::{self, CapacityConfig, Publisher};
use stowage::ledger::FitOptions;
use stowage_testkit::fixtures::{namespace, node, pvc, storage_class};
use stowage_testkit::{ApiServer, wait_for, wait_until};
use tokio::sync::watch;

mod support;

use support::cluster::report_storage_node;

const WAIT: Duration = Duration::from_secs(20);
const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;
const NS: &str = "apps";
const HOME: &str = "stowage-system";

// === harness ===

/// An in-memory API server serving CSIStorageCapacity in `versions`, with stowage's CRDs,
/// namespaces `apps` and `stowage-system`, an index fed by the controller's watchers, and
/// nodes `(name, hostname label, GiB)` reporting one ready pool `default`.
struct Fixture {
    server: ApiServer,
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    metrics: Metrics,
    _leader: watch::Sender<bool>,
    watchers: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.watchers.abort();
    }
}

impl Fixture {
    async fn start(versions: &[&str], nodes: &[(&str, &str, u64)]) -> Fixture {
        let server = ApiServer::builder()
            .csi_storage_capacity_versions(versions)
            .start()
            .await
            .unwrap();
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
        for ns in [NS, HOME] {
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &namespace(ns).build())
                .await
                .unwrap();
        }
        for (name, hostname, gib) in nodes {
            let mut n = node(name).build();
            n.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(names::LABEL_HOSTNAME.into(), hostname.to_string());
            Api::<Node>::all(client.clone())
                .create(&PostParams::default(), &n)
                .await
                .unwrap();
            report_storage_node(&client, name, gib * GI).await.unwrap();
        }
        let index = Arc::new(RwLock::new(ClusterIndex::for_provisioner(
            names::PROVISIONER_LOCAL,
        )));
        let ready = Readiness::for_controller();
        let watchers = tokio::spawn(run_controller_watchers(
            client.clone(),
            index.clone(),
            ready.clone(),
        ));
        tokio::time::timeout(WAIT, ready.wait()).await.unwrap();
        let registry = Registry::new();
        let (leader, leader_rx) = watch::channel(true);
        let metrics = Metrics::register(&registry, index.clone(), leader_rx).unwrap();
        Fixture {
            server,
            client,
            index,
            metrics,
            _leader: leader,
            watchers,
        }
    }

    async fn class(&self, name: &str, provisioner: &str, params: &[(&str, &str)]) {
        let mut b = storage_class(name)
            .provisioner(provisioner)
            .wait_for_first_consumer()
            .reclaim("Delete");
        for (k, v) in params {
            b = b.param(k, v);
        }
        Api::<StorageClass>::all(self.client.clone())
            .create(&PostParams::default(), &b.build())
            .await
            .unwrap();
        self.until_index("the class is indexed", |i| i.storage_class(name).is_some())
            .await;
    }

    async fn until_index(&self, what: &str, f: impl Fn(&ClusterIndex) -> bool) {
        let index = self.index.clone();
        wait_for(WAIT, what, || {
            let ok = f(&index.read());
            async move { ok }
        })
        .await
        .unwrap();
    }

    fn free(&self, node: &str) -> u64 {
        let state = self
            .index
            .read()
            .node_state(node, k8s_openapi::jiff::Timestamp::now())
            .unwrap();
        state.pool("default").unwrap().free().0
    }

    async fn publisher(&self, min_change_percent: u8) -> Publisher {
        self.publisher_owned_by(min_change_percent, None).await
    }

    async fn publisher_owned_by(&self, min_change_percent: u8, owner: Option<&str>) -> Publisher {
        let resource = capacity::discover(&self.client).await.unwrap().unwrap();
        Publisher::new(
            self.client.clone(),
            self.index.clone(),
            CapacityConfig {
                namespace: HOME.into(),
                provisioner: names::PROVISIONER_LOCAL.into(),
                fit: FitOptions::default(),
                interval: Duration::ZERO,
                min_change_percent,
                owner: owner.map(str::to_string),
            },
            self.metrics.clone(),
            resource,
        )
    }

    /// The published objects as `(hostname, class) → capacity` (read in `version`).
    async fn objects(&self, version: &str) -> BTreeMap<(String, String), String> {
        objects(&self.client, version).await
    }

    fn written(&self, op: &str) -> u64 {
        self.metrics.capacity_writes.with_label_values(&[op]).get()
    }
}

fn resource(version: &str) -> ApiResource {
    ApiResource {
        group: "storage.k8s.io".into(),
        version: version.into(),
        api_version: format!("storage.k8s.io/{version}"),
        kind: "CSIStorageCapacity".into(),
        plural: "csistoragecapacities".into(),
    }
}

/// Every CSIStorageCapacity in `stowage-system`, as `(hostname, class) → capacity`; each
/// must carry stowage's label and `maximumVolumeSize` equal to `capacity` (where served).
async fn objects(client: &Client, version: &str) -> BTreeMap<(String, String), String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), HOME, &resource(version));
    let mut out = BTreeMap::new();
    for o in api.list(&ListParams::default()).await.unwrap().items {
        assert_eq!(
            o.labels()
                .get(capacity::MANAGED_BY_LABEL)
                .map(String::as_str),
            Some(capacity::MANAGED_BY),
            "{o:?}"
        );
        let hostname = o.data["nodeTopology"]["matchLabels"][names::LABEL_HOSTNAME]
            .as_str()
            .unwrap()
            .to_string();
        let class = o.data["storageClassName"].as_str().unwrap().to_string();
        let cap = o.data["capacity"].as_str().unwrap().to_string();
        if let Some(max) = o.data.get("maximumVolumeSize") {
            assert_eq!(max.as_str(), Some(cap.as_str()), "{o:?}");
        }
        assert!(
            out.insert((hostname, class), cap).is_none(),
            "one object per key"
        );
    }
    out
}

fn entry(hostname: &str, class: &str, bytes: u64) -> ((String, String), String) {
    ((hostname.into(), class.into()), bytes.to_string())
}

// === the publisher on the in-memory server ===

#[tokio::test]
async fn one_object_per_node_and_local_class_with_the_ledgers_free_bytes() {
    let f = Fixture::start(&["v1"], &[("n1", "h1", 4), ("n2", "h2", 8)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    // A pool the nodes do not have: published as 0, so the scheduler sends no claim there.
    f.class("fast", names::PROVISIONER_LOCAL, &[("pool", "fast")])
        .await;
    // Another provisioner's class: not stowage's business.
    f.class("other", "example.com/other", &[]).await;
    // A claim already sent to n1 holds 1Gi of it (reserved in the ledger).
    Api::<PersistentVolumeClaim>::namespaced(f.client.clone(), NS)
        .create(
            &PostParams::default(),
            &pvc(NS, "held")
                .size("1Gi")
                .class("local")
                .selected_node("n1")
                .build(),
        )
        .await
        .unwrap();
    f.until_index("the claim reserves 1Gi on n1", |_| true)
        .await;
    wait_for(WAIT, "n1's free space counts the claim", || async {
        f.free("n1") == 3 * GI
    })
    .await
    .unwrap();

    // The controller's Deployment owns the objects, so that deleting stowage deletes them.
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stowage-controller", "namespace": HOME},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
                 "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}},
    }))
    .unwrap();
    let deployment = Api::<Deployment>::namespaced(f.client.clone(), HOME)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    // A pool whose free space is not a whole number of MiB: published rounded down.
    let mut odd = node("n3").build();
    odd.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(names::LABEL_HOSTNAME.into(), "h3".into());
    Api::<Node>::all(f.client.clone())
        .create(&PostParams::default(), &odd)
        .await
        .unwrap();
    report_storage_node(&f.client, "n3", 2 * GI + 12_345)
        .await
        .unwrap();
    f.until_index("n3 is indexed", |i| {
        i.node_hostname("n3").is_some() && i.has_storage_node("n3")
    })
    .await;

    let mut publisher = f.publisher_owned_by(5, Some("stowage-controller")).await;
    assert_eq!(publisher.api_version(), "storage.k8s.io/v1");
    assert_eq!(publisher.sync().await.unwrap(), 6);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([
            entry("h1", "fast", 0),
            entry("h1", "local", 3 * GI),
            entry("h2", "fast", 0),
            entry("h2", "local", 8 * GI),
            entry("h3", "fast", 0),
            entry("h3", "local", 2 * GI),
        ])
    );
    assert_eq!(f.written("create"), 6);
    let api: Api<DynamicObject> = Api::namespaced_with(f.client.clone(), HOME, &resource("v1"));
    for o in api.list(&ListParams::default()).await.unwrap().items {
        let owners = o.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{o:?}");
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                Some(&owners[0].uid)
            ),
            (
                "Deployment",
                "stowage-controller",
                deployment.metadata.uid.as_ref()
            )
        );
    }
    // Nothing moved: nothing written.
    assert_eq!(publisher.sync().await.unwrap(), 0);
    assert_eq!(f.server.request_count("patch", "csistoragecapacities"), 0);
}

#[tokio::test]
async fn moves_below_the_threshold_are_not_written_and_larger_ones_are() {
    let f = Fixture::start(&["v1"], &[("n1", "h1", 8)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    let mut publisher = f.publisher(5).await;
    assert_eq!(publisher.sync().await.unwrap(), 1);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), NS);

    // 100Mi of 8Gi is 1.2 %: below the 5 % threshold.
    claims
        .create(
            &PostParams::default(),
            &pvc(NS, "small")
                .size("100Mi")
                .class("local")
                .selected_node("n1")
                .build(),
        )
        .await
        .unwrap();
    wait_for(WAIT, "the ledger counts the small claim", || async {
        f.free("n1") == 8 * GI - 100 * MI
    })
    .await
    .unwrap();
    assert_eq!(publisher.sync().await.unwrap(), 0);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 8 * GI)])
    );
    assert_eq!(f.server.request_count("patch", "csistoragecapacities"), 0);

    // 1Gi more: 13.7 % below the published 8Gi, written with the ledger's exact figure.
    claims
        .create(
            &PostParams::default(),
            &pvc(NS, "big")
                .size("1Gi")
                .class("local")
                .selected_node("n1")
                .build(),
        )
        .await
        .unwrap();
    let want = 7 * GI - 100 * MI;
    wait_for(WAIT, "the ledger counts the big claim", || async {
        f.free("n1") == want
    })
    .await
    .unwrap();
    assert_eq!(publisher.sync().await.unwrap(), 1);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", want)])
    );
    assert_eq!(f.written("update"), 1);

    // The claims go away: back to 8Gi (a 14.6 % move up).
    claims
        .delete("small", &DeleteParams::default())
        .await
        .unwrap();
    claims
        .delete("big", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, "the ledger forgets the claims", || async {
        f.free("n1") == 8 * GI
    })
    .await
    .unwrap();
    assert_eq!(publisher.sync().await.unwrap(), 1);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 8 * GI)])
    );
}

#[tokio::test]
async fn objects_of_nodes_and_classes_that_are_gone_are_deleted_and_not_ready_is_zero() {
    let f = Fixture::start(&["v1"], &[("n1", "h1", 4), ("n2", "h2", 8)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    f.class(
        "local-binpack",
        names::PROVISIONER_LOCAL,
        &[("placement", "binpack")],
    )
    .await;
    let mut publisher = f.publisher(5).await;
    assert_eq!(publisher.sync().await.unwrap(), 4);

    Api::<StorageClass>::all(f.client.clone())
        .delete("local-binpack", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Node>::all(f.client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    f.until_index("the class and the node are gone", |i| {
        i.storage_class("local-binpack").is_none() && i.node_hostname("n2").is_none()
    })
    .await;
    assert_eq!(publisher.sync().await.unwrap(), 3);
    assert_eq!(f.written("delete"), 3);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 4 * GI)])
    );

    // The agent reports its pool not ready: 0 at once, whatever the threshold.
    let sns: Api<StorageNode> = Api::all(f.client.clone());
    sns.patch_status(
        "n1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(
            serde_json::from_value(serde_json::json!([
                {"op": "replace", "path": "/status/pools/0/ready", "value": false},
                {"op": "add", "path": "/status/pools/0/message", "value": "disk gone"},
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    f.until_index("the pool is not ready", |i| {
        i.node_state("n1", k8s_openapi::jiff::Timestamp::now())
            .is_some_and(|n| n.pool("default").is_some_and(|p| !p.ready))
    })
    .await;
    assert_eq!(publisher.sync().await.unwrap(), 1);
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 0)])
    );
}

#[tokio::test]
async fn a_new_leader_adopts_the_objects_and_deletes_the_ones_of_unknown_nodes() {
    let f = Fixture::start(&["v1"], &[("n1", "h1", 4)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    let mut first = f.publisher(5).await;
    assert_eq!(first.sync().await.unwrap(), 1);
    // A stale object of a node that no longer exists, as a crashed leader leaves it.
    let api: Api<DynamicObject> = Api::namespaced_with(f.client.clone(), HOME, &resource("v1"));
    let stale: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": {"name": "stale", "labels": {capacity::MANAGED_BY_LABEL: capacity::MANAGED_BY}},
        "storageClassName": "local",
        "nodeTopology": {"matchLabels": {names::LABEL_HOSTNAME: "gone"}},
        "capacity": "1Gi",
    }))
    .unwrap();
    api.create(&PostParams::default(), &stale).await.unwrap();

    let creates = f.server.request_count("create", "csistoragecapacities");
    let mut second = f.publisher(5).await;
    assert_eq!(second.sync().await.unwrap(), 0, "nothing to write for n1");
    assert_eq!(
        f.server.request_count("create", "csistoragecapacities"),
        creates,
        "the existing object was adopted, not created again"
    );
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 4 * GI)])
    );
}

#[tokio::test]
async fn a_create_answered_with_an_error_after_its_commit_is_adopted_not_duplicated() {
    let f = Fixture::start(&["v1"], &[("n1", "h1", 4), ("n2", "h2", 8)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    let mut publisher = f.publisher(5).await;
    // etcd commits, the API server answers 500: the publisher cannot tell it from a failure.
    f.server.faults().fail_writes_to(
        "csistoragecapacities",
        1.0,
        stowage_testkit::WriteFailure::InternalErrorAfterCommit,
    );
    assert_eq!(publisher.sync().await.unwrap(), 0);
    assert!(publisher.failed_last_pass());
    assert_eq!(
        f.metrics
            .capacity_write_errors
            .with_label_values(&["create"])
            .get(),
        2
    );
    f.server.faults().stop_failing_writes();
    // The retried creates meet 409 (the names are the keys') and write into the objects.
    assert_eq!(publisher.sync().await.unwrap(), 2);
    assert!(!publisher.failed_last_pass());
    assert_eq!(
        f.objects("v1").await,
        BTreeMap::from([entry("h1", "local", 4 * GI), entry("h2", "local", 8 * GI)])
    );
}

#[tokio::test]
async fn the_version_is_chosen_by_discovery() {
    for (served, chosen) in [
        (&["v1"][..], Some("v1")),
        (&["v1", "v1beta1"][..], Some("v1")),
        (&["v1beta1", "v1alpha1"][..], Some("v1beta1")),
        (&["v1alpha1"][..], Some("v1alpha1")),
        (&[][..], None),
    ] {
        let server = ApiServer::builder()
            .csi_storage_capacity_versions(served)
            .start()
            .await
            .unwrap();
        let found = capacity::discover(&server.client()).await.unwrap();
        assert_eq!(
            found.as_ref().map(|r| r.version.as_str()),
            chosen,
            "served {served:?}"
        );
    }
    // A cluster without the API: the publisher warns and ends; nothing else is disturbed.
    let none = Fixture::start(&[], &[("n1", "h1", 4)]).await;
    let (_stop, stop) = watch::channel(false);
    let (_leader, leader) = watch::channel(true);
    tokio::time::timeout(
        Duration::from_secs(5),
        capacity::publish(
            none.client.clone(),
            none.index.clone(),
            CapacityConfig {
                namespace: HOME.into(),
                provisioner: names::PROVISIONER_LOCAL.into(),
                fit: FitOptions::default(),
                interval: Duration::ZERO,
                min_change_percent: 2,
                owner: None,
            },
            none.metrics.clone(),
            leader,
            Readiness::for_controller(),
            stop,
        ),
    )
    .await
    .expect("publish returns at once when no version serves CSIStorageCapacity");
    assert_eq!(
        none.server.request_count("create", "csistoragecapacities"),
        0
    );

    // And objects are written in it: a 1.19 server with the feature gate.
    let f = Fixture::start(&["v1alpha1"], &[("n1", "h1", 4)]).await;
    f.class("local", names::PROVISIONER_LOCAL, &[]).await;
    let mut publisher = f.publisher(5).await;
    assert_eq!(publisher.api_version(), "storage.k8s.io/v1alpha1");
    assert_eq!(publisher.sync().await.unwrap(), 1);
    assert_eq!(
        f.objects("v1alpha1").await,
        BTreeMap::from([entry("h1", "local", 4 * GI)])
    );
}

// === the flag, as a real process ===

use support::stack::{Env, Options, wait};

async fn process_objects(env: &Env) -> BTreeMap<(String, String), String> {
    let version = capacity::discover(&env.client)
        .await
        .unwrap()
        .expect("the cluster serves CSIStorageCapacity")
        .version;
    objects(&env.client, &version).await
}

/// The feature gate and API version a real 1.19 needs to serve CSIStorageCapacity (ignored
/// in memory).
fn capacity_served() -> stowage_testkit::real::UpOptions {
    stowage_testkit::real::UpOptions {
        feature_gates: Some("CSIStorageCapacity=true".into()),
        runtime_config: Some("storage.k8s.io/v1alpha1=true".into()),
    }
}

/// The controller's `/metrics`, as lines.
async fn controller_metrics(env: &Env) -> Vec<String> {
    match stowage_testkit::net::get(env.controller_port, "/metrics").await {
        Some((200, body)) => body.lines().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// The `renewTime` of the controller's Lease, in microseconds.
async fn lease_renewed(env: &Env) -> Option<i64> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), HOME);
    let spec = leases.get_opt("stowage-controller").await.ok()??.spec?;
    Some(spec.renew_time?.0.as_microsecond())
}

#[tokio::test]
async fn without_the_flag_nothing_is_published_and_with_it_every_node_gets_its_objects() {
    let env = Env::start(
        &[("n1", 4 * GI)],
        Options {
            up: capacity_served(),
            ..Options::default()
        },
    )
    .await;
    // The controller has what it would publish for: it leads, its index has listed every
    // class (it is ready), and its ledger holds n1's pool (whose gauges only the leader
    // exports). A publisher makes its first pass as soon as the controller leads with its
    // index ready, and that pass lists and creates at once, with no TICK to wait for.
    let n1_free = "stowage_node_pool_free_bytes{node=\"n1\",pool=\"default\"} ";
    wait_for(
        wait(),
        "the controller leads with n1's pool in its ledger",
        || async {
            let lines = controller_metrics(&env).await;
            lines.iter().any(|l| l == "stowage_leader 1")
                && lines.iter().any(|l| l.starts_with(n1_free))
        },
    )
    .await
    .unwrap();
    // Then it renews its Lease twice: it has kept running for a retry period (2 s, two
    // TICKs) or more since, however slow the machine.
    let mut renewed = wait_until(wait(), "the controller's Lease is renewed", || {
        lease_renewed(&env)
    })
    .await
    .unwrap();
    for _ in 0..2 {
        renewed = wait_until(wait(), "the controller renews its Lease", || async {
            lease_renewed(&env).await.filter(|t| *t > renewed)
        })
        .await
        .unwrap();
    }
    if let Some(server) = env.cluster.server() {
        for verb in ["create", "list"] {
            assert_eq!(
                server.request_count(verb, "csistoragecapacities"),
                0,
                "{verb} csistoragecapacities without --publish-capacity"
            );
        }
    }
    let published = process_objects(&env).await;
    assert!(
        published.is_empty(),
        "published without --publish-capacity: {published:?}"
    );
    drop(env);

    let env = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI)],
        Options {
            controller_args: vec!["--publish-capacity".into()],
            up: capacity_served(),
            ..Options::default()
        },
    )
    .await;
    let want: BTreeMap<_, _> = ["local", "local-binpack", "local-archive", "local-keep"]
        .iter()
        .flat_map(|c| [entry("n1", c, 4 * GI), entry("n2", c, 6 * GI)])
        .collect();
    let found = wait_for(wait(), "the controller publishes 8 objects", || async {
        process_objects(&env).await == want
    })
    .await;
    assert!(
        found.is_ok(),
        "published {:?}, want {want:?}",
        process_objects(&env).await
    );
    env.assert_clean_logs();
}

// === the real kube-scheduler (real lane only) ===

/// On 1.19.16 with the `CSIStorageCapacity` feature gate (kube-apiserver, kube-scheduler) and
/// `storage.k8s.io/v1alpha1`, the extender off and `--publish-capacity` on, with the
/// CSIDriver `local.stowage.io` (`storageCapacity: true`) of `variants/capacity`:
/// kube-scheduler never sends a claim to a node whose published capacity is too small, and a
/// claim bigger than every node stays Pending with VolumeBinding's reason.
#[tokio::test]
#[ignore = "needs a real control plane: scripts/test-real"]
async fn kube_scheduler_places_claims_by_the_published_capacity_without_the_extender() {
    placed_by_capacity(false).await;
}

/// The same with the extender on as well: the two checks agree (every pod placed and bound
/// at the first try, none sent back, the too-big claim refused by both).
#[tokio::test]
#[ignore = "needs a real control plane: scripts/test-real"]
async fn capacity_objects_and_the_extender_agree() {
    placed_by_capacity(true).await;
}

/// Whether this is the real lane (`STOWAGE_E2E=real`). Outside it `test` prints SKIP, or,
/// under CI, fails: CI runs the ignored tests only in the real lane (`scripts/test-real`),
/// so one running without it there would pass having tested nothing.
fn real_lane(test: &str) -> bool {
    if stowage_testkit::real::lane_is_real() {
        return true;
    }
    assert!(
        !stowage_testkit::in_ci(),
        "{test} needs the real lane (STOWAGE_E2E=real, scripts/test-real); under CI it must not pass without it"
    );
    eprintln!("SKIP {test}: the real lane only (STOWAGE_E2E=real)");
    false
}

async fn placed_by_capacity(with_extender: bool) {
    let test = if with_extender {
        "capacity_objects_and_the_extender_agree"
    } else {
        "kube_scheduler_places_claims_by_the_published_capacity_without_the_extender"
    };
    if !real_lane(test) {
        return;
    }
    let env = Env::start(
        &[("small", 512 * MI), ("big", 4 * GI)],
        Options {
            without_extender: !with_extender,
            controller_args: vec!["--publish-capacity".into(), "--capacity-interval=1".into()],
            up: stowage_testkit::real::UpOptions {
                feature_gates: Some("CSIStorageCapacity=true".into()),
                runtime_config: Some("storage.k8s.io/v1alpha1=true".into()),
            },
            csi_driver: true,
            ..Options::default()
        },
    )
    .await;
    let want = BTreeMap::from([
        entry("big", "local", 4 * GI),
        entry("small", "local", 512 * MI),
    ]);
    let local = || async {
        process_objects(&env)
            .await
            .into_iter()
            .filter(|((_, class), _)| class == "local")
            .collect::<BTreeMap<_, _>>()
    };
    let published = wait_for(WAIT, "the controller publishes both nodes", || async {
        local().await == want
    })
    .await;
    assert!(
        published.is_ok(),
        "published {:?}, want {want:?}",
        local().await
    );

    // Six 600Mi claims, one per pod: `small` (512Mi) can take none of them. Without the
    // capacity objects kube-scheduler spreads pods over both nodes and the controller sends
    // the claims on `small` back (a reschedule); with them, none ever goes there.
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for name in &names {
        env.pod(name, "local", &[600]).await;
    }
    let placed = env.scheduled(&names).await;
    assert!(
        placed.values().all(|n| n == "big"),
        "every pod on big: {placed:?}"
    );
    let bound = env.all_bound("p", 6).await;
    assert_eq!(bound.len(), 6);
    let rescheduled = reschedules(&env).await;
    assert_eq!(rescheduled, 0.0, "no claim was sent back by the controller");

    // Capacity follows the ledger: big has 4Gi - 6 x 600Mi = 496Mi left, published within
    // a few passes (a move of 88 %).
    let left = 4 * GI - 6 * 600 * MI;
    let followed = wait_for(WAIT, "big's object follows its volumes", || async {
        process_objects(&env)
            .await
            .get(&("big".into(), "local".into()))
            == Some(&left.to_string())
    })
    .await;
    assert!(followed.is_ok(), "{:?}", process_objects(&env).await);

    // A claim bigger than every node: Pending, with VolumeBinding's reason.
    env.pod("huge", "local", &[5120]).await;
    let refused = wait_for(WAIT, "kube-scheduler refuses the huge claim", || async {
        pod_scheduled_message(&env, "huge")
            .await
            .is_some_and(|m| m.contains("did not have enough free storage"))
    })
    .await;
    assert!(
        refused.is_ok(),
        "PodScheduled condition: {:?}",
        pod_scheduled_message(&env, "huge").await
    );
    let claim = env.claims().get("huge-0").await.unwrap();
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    let pod = env.pods().get("huge").await.unwrap();
    assert!(pod.spec.unwrap().node_name.is_none());
    env.assert_clean_logs();
}

/// The message of pod `name`'s `PodScheduled` condition when it is False.
async fn pod_scheduled_message(env: &Env, name: &str) -> Option<String> {
    let pod: Pod = env.pods().get(name).await.ok()?;
    pod.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message)
}

/// The controller's `stowage_reschedules_total`, summed over reasons.
async fn reschedules(env: &Env) -> f64 {
    let (_, body) = stowage_testkit::net::get(env.controller_port, "/metrics")
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with("stowage_reschedules_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `variants/capacity` on 1.19.16 with the feature gate: applied whole (the CSIDriver keeps
/// `storageCapacity: true`), and `stowage controller` run as the ServiceAccount it installs
/// (impersonated: no pod runs here) with the environment its Deployment sets publishes the
/// objects of both shipped node-local classes, owned by that Deployment, with no RBAC
/// refusal in its log.
#[tokio::test]
#[ignore = "needs a real control plane: scripts/test-real"]
async fn the_capacity_variant_installs_and_its_controller_publishes_owned_objects() {
    use std::process::Command;
    use stowage_testkit::e2e::Cluster;
    use stowage_testkit::net::{free_port, get};

    if !real_lane("the_capacity_variant_installs_and_its_controller_publishes_owned_objects") {
        return;
    }
    let cluster = Cluster::start_with(&stowage_testkit::real::UpOptions {
        feature_gates: Some("CSIStorageCapacity=true".into()),
        runtime_config: Some("storage.k8s.io/v1alpha1=true".into()),
    })
    .await
    .unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let kubectl = |kubeconfig: &std::path::Path, args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .current_dir(repo)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    };
    let admin = cluster.kubeconfig().to_path_buf();
    kubectl(&admin, &["apply", "-k", "variants/capacity"]);
    let driver = kubectl(
        &admin,
        &[
            "get",
            "csidriver",
            names::PROVISIONER_LOCAL,
            "-o",
            "jsonpath={.spec.storageCapacity}",
        ],
    );
    assert_eq!(driver.trim(), "true");

    let client = cluster.client();
    let mut n = node("n1").build();
    n.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(names::LABEL_HOSTNAME.into(), "n1".into());
    cluster.add_node(&n).await.unwrap();
    let wait = Duration::from_secs(120);
    wait_for(wait, "StorageNode n1 is written", || async {
        report_storage_node(&client, "n1", 4 * GI).await.is_ok()
    })
    .await
    .unwrap();

    // The controller as its ServiceAccount, with its Deployment's environment.
    let mut config = kube::config::Kubeconfig::read_from(&admin).unwrap();
    for user in &mut config.auth_infos {
        let auth = user.auth_info.get_or_insert_with(Default::default);
        auth.impersonate = Some("system:serviceaccount:stowage-system:stowage-controller".into());
        auth.impersonate_groups = Some(vec![
            "system:authenticated".into(),
            "system:serviceaccounts".into(),
            "system:serviceaccounts:stowage-system".into(),
        ]);
    }
    let as_controller = cluster.dir().join("controller.kubeconfig");
    std::fs::write(&as_controller, serde_json::to_string(&config).unwrap()).unwrap();
    let deployment: serde_json::Value = serde_json::from_str(&kubectl(
        &admin,
        &[
            "-n",
            HOME,
            "get",
            "deployment",
            "stowage-controller",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let env: Vec<(String, String)> = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(
        env.contains(&("STOWAGE_PUBLISH_CAPACITY".into(), "true".into())),
        "{env:?}"
    );
    let port = free_port();
    let mut controller = cluster
        .role(support::stack::stowage_binary(), "controller")
        .arg("controller")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&as_controller)
        .env("POD_NAMESPACE", HOME)
        .env("POD_NAME", "stowage-controller-0")
        .env("RUST_LOG", "info");
    for (k, v) in &env {
        controller = controller.env(k, v);
    }
    let controller = controller.spawn().unwrap();
    wait_for(wait, "the controller's /readyz is 200", || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await
    .unwrap();

    let want = BTreeMap::from([
        entry("n1", "stowage-local", 4 * GI),
        entry("n1", "stowage-local-binpack", 4 * GI),
    ]);
    let published = wait_for(wait, "the controller publishes n1's objects", || async {
        objects(&client, "v1alpha1").await == want
    })
    .await;
    assert!(
        published.is_ok(),
        "published {:?}, want {want:?}\n{}",
        objects(&client, "v1alpha1").await,
        controller.logs()
    );
    let uid = deployment["metadata"]["uid"].as_str().unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), HOME, &resource("v1alpha1"));
    for o in api.list(&ListParams::default()).await.unwrap().items {
        let owners = o.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(
            owners
                .iter()
                .map(|r| (r.kind.as_str(), r.name.as_str(), r.uid.as_str()))
                .collect::<Vec<_>>(),
            [("Deployment", "stowage-controller", uid)],
            "{o:?}"
        );
    }
    let logs = controller.logs();
    assert!(!logs.contains("forbidden"), "{logs}");
    assert!(!logs.contains("without an owner"), "{logs}");
}
