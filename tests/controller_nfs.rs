//! NFS cluster mode of `stowage controller` against testkit's strict API server, with temp
//! directories standing in for the NFS mounts: both binding modes, reuse of a re-created
//! claim's data after a server is added, the three delete modes, and the real binary's
//! start-up (environment compatibility) and `/metrics`.

// The harness helpers below are test code too: a failed set-up step should fail the test
// loudly where it happened (clippy's allow-unwrap-in-tests covers only #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::RwLock;
use prometheus::Registry;
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage::cache::ClusterIndex;
use stowage::cache::watch::{Readiness, run_controller_watchers};
use stowage::controller::nfs_volumes::Nfs;
use stowage::controller::{self, Config, Context, Metrics};
use stowage::nfs::capacity::{Allocation, probe};
use stowage::nfs::{NfsCluster, NfsConfig};
use stowage_testkit::fixtures::{namespace, node, pod, pvc, storage_class};
use stowage_testkit::net::{free_port, http_get};
use stowage_testkit::scheduler::{Scheduler, SchedulerConfig};
use stowage_testkit::{ApiServer, wait_for, wait_until};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);
const NS: &str = "apps";

// === harness ===

struct Cluster {
    server: ApiServer,
    client: Client,
    /// Holds the server mounts: `<dir>/a`, `<dir>/b`.
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        // The cluster index (and so the controller) waits for every kind, CRDs included.
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
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node("n1").build())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for s in ["a", "b"] {
            std::fs::create_dir(dir.path().join(s)).unwrap();
        }
        Cluster {
            server,
            client,
            dir,
        }
    }

    fn mount(&self, server: &str) -> PathBuf {
        self.dir.path().join(server)
    }

    /// The config of servers `a` (10.0.0.1:/exports/a) and, with `two`, `b`
    /// (10.0.0.2:/exports/b), each weighted 1Ti so the ring does not depend on the disk.
    fn config(&self, two: bool) -> NfsConfig {
        let mut yaml = format!(
            "servers:\n  - {{name: a, address: 10.0.0.1, export: /exports/a, mount: {:?}, weight: 1Ti}}\n",
            self.mount("a")
        );
        if two {
            yaml.push_str(&format!(
                "  - {{name: b, address: 10.0.0.2, export: /exports/b, mount: {:?}, weight: 1Ti}}\n",
                self.mount("b")
            ));
        }
        let config = NfsConfig::parse_yaml(&yaml).unwrap();
        config.check_mounts().unwrap();
        config
    }

    async fn class(&self, name: &str, wffc: bool, reclaim: &str, params: &[(&str, &str)]) {
        let mut b = storage_class(name)
            .provisioner(names::PROVISIONER_NFS)
            .reclaim(reclaim);
        if wffc {
            b = b.wait_for_first_consumer();
        }
        for (k, v) in params {
            b = b.param(k, v);
        }
        let mut class = b.build();
        class.mount_options = Some(vec!["nfsvers=4.1".into()]);
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

    async fn claim(&self, name: &str, class: &str, modes: &[&str]) {
        self.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, name)
                    .size("1Gi")
                    .class(class)
                    .access_modes(modes.iter().copied())
                    .build(),
            )
            .await
            .unwrap();
    }

    async fn bound(&self, claim: &str) -> PersistentVolume {
        self.bound_in(NS, claim).await
    }

    async fn bound_in(&self, ns: &str, claim: &str) -> PersistentVolume {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let c = wait_until(WAIT, &format!("claim {ns}/{claim} is Bound"), || async {
            claims
                .get(claim)
                .await
                .ok()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        })
        .await
        .unwrap();
        let pv = format!("pvc-{}", c.metadata.uid.unwrap());
        self.pvs().get(&pv).await.unwrap()
    }

    async fn delete_claim(&self, name: &str) {
        self.claims()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    async fn gone(&self, pv: &str) {
        let pvs = self.pvs();
        wait_for(WAIT, &format!("PV {pv} is gone"), || async {
            pvs.get_opt(pv).await.is_ok_and(|p| p.is_none())
        })
        .await
        .unwrap();
    }

    /// Messages of `reason` Events about claim `object`, checking they come from the NFS
    /// provisioner.
    async fn events(&self, object: &str, reason: &str) -> Vec<String> {
        self.events_in(NS, object, reason).await
    }

    /// [`Cluster::events`] about claim `object` of namespace `ns`.
    async fn events_in(&self, ns: &str, object: &str, reason: &str) -> Vec<String> {
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
                    Some(names::PROVISIONER_NFS)
                );
                e.message.unwrap_or_default()
            })
            .collect()
    }
}

/// A running controller with NFS mode on; dropping it kills it.
struct Running {
    registry: Registry,
    ctx: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
    _leader: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn start_controller(client: &Client, config: NfsConfig) -> Running {
    let index = Arc::new(RwLock::new(ClusterIndex::new()));
    let ready = Readiness::for_controller();
    let registry = Registry::new();
    let (leader_tx, leader) = watch::channel(true);
    let metrics = Metrics::register(&registry, index.clone(), leader.clone()).unwrap();
    let nfs = Nfs::new(
        config,
        client.clone(),
        "test-replica",
        &registry,
        leader.clone(),
    )
    .unwrap();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            index.clone(),
            ready.clone(),
            Config::new("test-replica"),
            metrics,
            leader,
        )
        .with_nfs(Arc::new(nfs)),
    );
    let tasks = vec![
        tokio::spawn(run_controller_watchers(client.clone(), index, ready)),
        tokio::spawn(controller::run(ctx.clone())),
    ];
    Running {
        registry,
        ctx,
        tasks,
        _leader: leader_tx,
    }
}

impl Running {
    fn metrics(&self) -> String {
        stowage::serve::render(&self.registry).unwrap()
    }
}

/// `(server address, export path)` of a PV.
fn nfs_source(pv: &PersistentVolume) -> (String, String) {
    let nfs = pv.spec.as_ref().unwrap().nfs.as_ref().unwrap();
    (nfs.server.clone(), nfs.path.clone())
}

fn server_of(pv: &PersistentVolume) -> String {
    pv.annotations()[names::ANNOTATION_NFS_SERVER].clone()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// === tests ===

#[tokio::test]
async fn immediate_and_wait_for_first_consumer_claims_get_nfs_pvs() {
    let cluster = Cluster::start().await;
    cluster.class("nfs-now", false, "Delete", &[]).await;
    cluster
        .class("nfs-later", true, "Retain", &[("archiveOnDelete", "true")])
        .await;
    let running = start_controller(&cluster.client, cluster.config(true));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());

    // Immediate: no pod at all, shared by many nodes.
    cluster.claim("shared", "nfs-now", &["ReadWriteMany"]).await;
    // WaitForFirstConsumer: provisioned once the pod is scheduled (selected-node set).
    cluster
        .claim("later", "nfs-later", &["ReadWriteOnce"])
        .await;
    let later_claim = cluster.claims().get("later").await.unwrap();
    let index = running.ctx.index.clone();
    wait_for(
        WAIT,
        "the controller has seen the claim and is done with it",
        || async { index.read().claim(NS, "later").is_some() && running.ctx.is_idle() },
    )
    .await
    .unwrap();
    assert!(
        cluster
            .pvs()
            .get_opt(&format!("pvc-{}", later_claim.uid().unwrap()))
            .await
            .unwrap()
            .is_none(),
        "a WaitForFirstConsumer claim without a pod must wait"
    );
    Api::<Pod>::namespaced(cluster.client.clone(), NS)
        .create(
            &PostParams::default(),
            &pod(NS, "later").claims(["later"]).build(),
        )
        .await
        .unwrap();

    for (claim, class, modes, policy, on_delete) in [
        ("shared", "nfs-now", "ReadWriteMany", "Delete", "retain"),
        ("later", "nfs-later", "ReadWriteOnce", "Retain", "archive"),
    ] {
        let pv = cluster.bound(claim).await;
        let server = server_of(&pv);
        let (address, path) = nfs_source(&pv);
        let (want_address, export) = match server.as_str() {
            "a" => ("10.0.0.1", "/exports/a"),
            "b" => ("10.0.0.2", "/exports/b"),
            other => panic!("unknown server {other}"),
        };
        assert_eq!(address, want_address);
        assert_eq!(path, format!("{export}/{NS}/{claim}"));
        assert!(cluster.mount(&server).join(NS).join(claim).is_dir());
        let spec = pv.spec.clone().unwrap();
        assert_eq!(spec.access_modes.unwrap(), vec![modes.to_string()]);
        assert_eq!(spec.storage_class_name.as_deref(), Some(class));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(spec.mount_options.unwrap(), vec!["nfsvers=4.1"]);
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some(policy)
        );
        assert!(spec.node_affinity.is_none());
        let a = pv.annotations();
        assert_eq!(a[names::ANNOTATION_PROVISIONED_BY], names::PROVISIONER_NFS);
        assert_eq!(a[names::ANNOTATION_NFS_ON_DELETE], on_delete);
        assert_eq!(
            pv.finalizers()
                .contains(&names::FINALIZER_PV_CLEANUP.to_string()),
            policy == "Delete"
        );
        let succeeded = cluster.events(claim, "ProvisioningSucceeded").await;
        assert_eq!(succeeded.len(), 1, "{succeeded:?}");
        assert!(succeeded[0].contains(&format!("NFS server {server}")));
        assert_eq!(cluster.events(claim, "Provisioning").await.len(), 1);
    }

    // The capacity refresh after the provisions counts both volumes.
    wait_for(WAIT, "the NFS gauges count both volumes", || async {
        let text = running.metrics();
        let volumes: f64 = ["a", "b"]
            .iter()
            .filter_map(|s| {
                let series = format!("stowage_nfs_server_volumes{{server=\"{s}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .sum();
        volumes == 2.0
    })
    .await
    .unwrap();
    let text = running.metrics();
    for s in ["a", "b"] {
        assert!(
            text.contains(&format!("stowage_nfs_server_reachable{{server=\"{s}\"}} 1")),
            "{text}"
        );
    }
    scheduler.shutdown().await;
}

/// The value of `series` (name and labels exactly) in a scrape, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_failed_nfs_pv_create_is_counted_and_reported_then_retried() {
    let cluster = Cluster::start().await;
    cluster.class("nfs", false, "Delete", &[]).await;
    cluster.server.faults().fail_writes_to(
        "persistentvolumes",
        1.0,
        stowage_testkit::WriteFailure::InternalError,
    );
    let running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.claim("flaky", "nfs", &["ReadWriteMany"]).await;
    let failed = "stowage_provisions_total{result=\"failed\"}";
    wait_for(WAIT, "a failed provision is counted", || async {
        sample(&running.metrics(), failed) >= 1.0
    })
    .await
    .unwrap();
    let message = wait_until(WAIT, "a ProvisioningFailed event", || async {
        cluster
            .events("flaky", "ProvisioningFailed")
            .await
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    assert!(message.contains("PersistentVolume"), "{message}");
    assert!(message.contains("injected fault"), "{message}");
    assert_eq!(
        sample(
            &running.metrics(),
            "stowage_provisions_total{result=\"succeeded\"}"
        ),
        0.0
    );

    cluster.server.faults().stop_failing_writes();
    cluster.bound("flaky").await;
    let text = running.metrics();
    assert_eq!(
        sample(&text, "stowage_provisions_total{result=\"succeeded\"}"),
        1.0,
        "{text}"
    );
    assert!(sample(&text, failed) >= 1.0, "{text}");
    assert_eq!(
        cluster.events("flaky", "ProvisioningSucceeded").await.len(),
        1
    );
    scheduler.shutdown().await;
}

#[tokio::test]
async fn a_bound_nfs_claim_grows_on_record_when_the_class_allows_it_and_the_export_has_room() {
    let cluster = Cluster::start().await;
    Api::<StorageClass>::all(cluster.client.clone())
        .create(
            &PostParams::default(),
            &storage_class("nfs-grow")
                .provisioner(names::PROVISIONER_NFS)
                .allow_expansion(true)
                .build(),
        )
        .await
        .unwrap();
    let running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.claim("grows", "nfs-grow", &["ReadWriteMany"]).await;
    let pv = cluster.bound("grows").await;
    let name = pv.name_any();
    let allocated = "stowage_nfs_server_allocated_bytes{server=\"a\"}";
    wait_for(WAIT, "the server counts 1Gi", || async {
        sample(&running.metrics(), allocated) == (1u64 << 30) as f64
    })
    .await
    .unwrap();

    let patch =
        |size: &str| serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
    cluster
        .claims()
        .patch(
            "grows",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch("3Gi")),
        )
        .await
        .unwrap();
    let claims = cluster.claims();
    wait_for(WAIT, "the claim's status says 3Gi", || async {
        claims.get("grows").await.ok().is_some_and(|c| {
            c.status
                .and_then(|s| s.capacity)
                .is_some_and(|c| c["storage"].0 == "3Gi")
        })
    })
    .await
    .unwrap();
    let grown = cluster.pvs().get(&name).await.unwrap();
    assert_eq!(grown.spec.unwrap().capacity.unwrap()["storage"].0, "3Gi");
    let done = cluster.events("grows", "VolumeResizeSuccessful").await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].contains("no quota"), "{done:?}");
    // The per-server accounting follows the PV's new size.
    wait_for(WAIT, "the server counts 3Gi", || async {
        sample(&running.metrics(), allocated) == (3u64 << 30) as f64
    })
    .await
    .unwrap();
    assert_eq!(
        sample(
            &running.metrics(),
            "stowage_expansions_total{result=\"succeeded\"}"
        ),
        1.0
    );

    // More than the export's free space: refused with a reason, nothing changes.
    cluster
        .claims()
        .patch(
            "grows",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch("1Ei")),
        )
        .await
        .unwrap();
    let refused = wait_until(WAIT, "a VolumeResizeFailed event", || async {
        cluster
            .events("grows", "VolumeResizeFailed")
            .await
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    assert!(refused.contains("free space on the export"), "{refused}");
    assert!(refused.contains("NFS server a"), "{refused}");
    let pv = cluster.pvs().get(&name).await.unwrap();
    assert_eq!(pv.spec.unwrap().capacity.unwrap()["storage"].0, "3Gi");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn unsupported_claims_fail_with_an_event() {
    let cluster = Cluster::start().await;
    cluster
        .class("nfs-bad", false, "Delete", &[("layout", "spiral")])
        .await;
    let _running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.claim("odd", "nfs-bad", &["ReadWriteMany"]).await;
    let message = wait_until(WAIT, "a ProvisioningFailed event", || async {
        cluster
            .events("odd", "ProvisioningFailed")
            .await
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    assert!(message.contains("layout"), "{message}");
    assert!(message.contains("nfs-bad"), "{message}");
    assert!(
        cluster
            .pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    scheduler.shutdown().await;
}

/// The first name `data-<n>` whose fresh placement over servers a and b goes to b, as the
/// controller's ring (weights from the config, both servers probed) computes it.
fn name_placed_on_b(config: &NfsConfig) -> String {
    let mut cluster = NfsCluster::new(config.clone()).unwrap();
    let states = config
        .servers
        .iter()
        .map(|s| probe(s, Allocation::default()))
        .collect();
    cluster.refresh(states).unwrap();
    let ring = cluster.ring();
    (0..)
        .map(|n| format!("data-{n}"))
        .find(|name| ring.servers()[ring.primary(&format!("{NS}/{name}"))].name == "b")
        .unwrap()
}

#[tokio::test]
async fn a_recreated_claim_goes_back_to_the_server_holding_its_data() {
    let cluster = Cluster::start().await;
    cluster.class("nfs", false, "Delete", &[]).await;
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    let two = cluster.config(true);
    let name = name_placed_on_b(&two);

    // With server a alone, the claim lands there; deleting it keeps the data (no
    // archiveOnDelete, no deleteFile).
    let running = start_controller(&cluster.client, cluster.config(false));
    cluster.claim(&name, "nfs", &["ReadWriteMany"]).await;
    let first = cluster.bound(&name).await;
    assert_eq!(server_of(&first), "a");
    let dir = cluster.mount("a").join(NS).join(&name);
    std::fs::write(dir.join("orders.db"), b"precious").unwrap();
    cluster.delete_claim(&name).await;
    cluster.gone(&first.name_any()).await;
    assert_eq!(std::fs::read(dir.join("orders.db")).unwrap(), b"precious");
    drop(running);

    // Server b is added; a fresh key of this name would go to b, but the data is on a.
    let _running = start_controller(&cluster.client, two);
    cluster.claim(&name, "nfs", &["ReadWriteMany"]).await;
    let second = cluster.bound(&name).await;
    assert_ne!(second.name_any(), first.name_any());
    assert_eq!(server_of(&second), "a");
    assert_eq!(
        nfs_source(&second),
        ("10.0.0.1".to_string(), format!("/exports/a/{NS}/{name}"))
    );
    assert!(!cluster.mount("b").join(NS).join(&name).exists());
    let provisioning = cluster.events(&name, "Provisioning").await;
    assert!(
        provisioning.iter().any(|m| m.contains("reusing")),
        "{provisioning:?}"
    );
    // A fresh claim with another name still can go to b: the ring does include it.
    let other = format!("{name}-x");
    let other_name = {
        let config = cluster.config(true);
        let mut c = NfsCluster::new(config.clone()).unwrap();
        c.refresh(
            config
                .servers
                .iter()
                .map(|s| probe(s, Allocation::default()))
                .collect(),
        )
        .unwrap();
        let ring = c.ring();
        (0..)
            .map(|n| format!("{other}{n}"))
            .find(|n| ring.servers()[ring.primary(&format!("{NS}/{n}"))].name == "b")
            .unwrap()
    };
    cluster.claim(&other_name, "nfs", &["ReadWriteMany"]).await;
    assert_eq!(server_of(&cluster.bound(&other_name).await), "b");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn released_volumes_are_archived_deleted_or_kept_as_recorded() {
    let cluster = Cluster::start().await;
    cluster
        .class(
            "nfs-archive",
            false,
            "Delete",
            &[("archiveOnDelete", "true")],
        )
        .await;
    cluster
        .class("nfs-delete", false, "Delete", &[("deleteFile", "true")])
        .await;
    cluster.class("nfs-keep", false, "Delete", &[]).await;
    // One server, so every directory is under mount a.
    let _running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    let mut pvs = Vec::new();
    // The PVs' list of the controller's watch; placements, refreshes and releases read the
    // index, so no other list of every PV in the cluster follows.
    let mut lists = None;
    for (claim, class) in [
        ("arch", "nfs-archive"),
        ("del", "nfs-delete"),
        ("keep", "nfs-keep"),
    ] {
        cluster.claim(claim, class, &["ReadWriteMany"]).await;
        let pv = cluster.bound(claim).await;
        lists.get_or_insert_with(|| cluster.server.request_count("list", "persistentvolumes"));
        std::fs::write(
            cluster.mount("a").join(NS).join(claim).join("file"),
            claim.as_bytes(),
        )
        .unwrap();
        pvs.push(pv.name_any());
    }
    // The class changing afterwards does not change what happens: the mode is on the PV.
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    classes
        .delete("nfs-delete", &DeleteParams::default())
        .await
        .unwrap();
    for claim in ["arch", "del", "keep"] {
        cluster.delete_claim(claim).await;
    }
    for pv in &pvs {
        cluster.gone(pv).await;
    }
    let ns_dir = cluster.mount("a").join(NS);
    assert_eq!(entries(&ns_dir), vec![".stowage-owner", "keep"]);
    assert_eq!(std::fs::read(ns_dir.join("keep/file")).unwrap(), b"keep");
    let archived: Vec<String> = entries(&cluster.mount("a"))
        .into_iter()
        .filter(|e| e.starts_with("archived-"))
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert!(archived[0].contains("arch"), "{archived:?}");
    assert_eq!(
        std::fs::read(cluster.mount("a").join(&archived[0]).join("file")).unwrap(),
        b"arch"
    );
    let lists = (
        lists.unwrap(),
        cluster.server.request_count("list", "persistentvolumes"),
    );
    assert_eq!(
        lists.0, lists.1,
        "PVs listed again while provisioning and releasing (after the first claim, at the end)"
    );
    scheduler.shutdown().await;
}

// === flat and nested layouts on the same servers ===

/// Makes namespace `ns` and claim `ns/name` of `class` (1Gi, ReadWriteMany).
async fn claim_in(cluster: &Cluster, ns: &str, name: &str, class: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        namespaces
            .create(&PostParams::default(), &namespace(ns).build())
            .await
            .unwrap();
    }
    Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), ns)
        .create(
            &PostParams::default(),
            &pvc(ns, name)
                .size("1Gi")
                .class(class)
                .access_modes(["ReadWriteMany"])
                .build(),
        )
        .await
        .unwrap();
}

/// The claim `ns/name` either binds (`Ok(its PV)`) or is refused (`Err(the Event's message)`).
async fn bound_or_refused(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Result<PersistentVolume, String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
    wait_until(
        WAIT,
        &format!("claim {ns}/{name} is bound or refused"),
        || async {
            if let Some(message) = cluster
                .events_in(ns, name, "ProvisioningFailed")
                .await
                .into_iter()
                .next()
            {
                return Some(Err(message));
            }
            let c = claims.get(name).await.ok()?;
            if c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                return None;
            }
            let pv = format!("pvc-{}", c.metadata.uid.unwrap());
            Some(Ok(cluster.pvs().get(&pv).await.unwrap()))
        },
    )
    .await
    .unwrap()
}

/// The collision of the security finding: claim `db` of namespace `team` in a flat class
/// has the directory `<export>/team-db`, which is namespace `team-db`'s directory in the
/// nested layout. The flat claim must neither get that directory nor, when released,
/// delete it with namespace `team-db`'s volumes.
#[tokio::test]
async fn a_flat_claim_never_takes_or_removes_a_nested_namespace_of_the_same_name() {
    let cluster = Cluster::start().await;
    cluster
        .class("nfs", false, "Delete", &[("deleteFile", "true")])
        .await;
    cluster
        .class(
            "nfs-flat",
            false,
            "Delete",
            &[("layout", "flat"), ("deleteFile", "true")],
        )
        .await;
    // Both layouts allowed: the ownership markers and the in-use check are what protect.
    let mut config = cluster.config(false);
    config.allow_mixed_layouts = true;
    let _running = start_controller(&cluster.client, config);
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());

    claim_in(&cluster, "team-db", "x", "nfs").await;
    let nested = cluster.bound_in("team-db", "x").await;
    let orders = cluster.mount("a").join("team-db/x/orders");
    std::fs::write(&orders, b"team-db's data").unwrap();

    claim_in(&cluster, "team", "db", "nfs-flat").await;
    let outcome = bound_or_refused(&cluster, "team", "db").await;
    Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), "team")
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    if let Ok(flat) = &outcome {
        // What the old code did: the flat claim got <export>/team-db; its release follows.
        eprintln!("team/db was bound to {:?}", nfs_source(flat));
        cluster.gone(&flat.name_any()).await;
    }
    assert!(
        orders.exists(),
        "namespace team-db's data was removed by the release of the flat claim team/db"
    );
    assert!(
        cluster
            .pvs()
            .get_opt(&nested.name_any())
            .await
            .unwrap()
            .is_some(),
        "team-db/x's PV is still there"
    );
    let message = outcome.expect_err("the flat claim team/db must be refused");
    eprintln!("team/db: {message}");
    for part in ["team-db", "team/db"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    scheduler.shutdown().await;
}

/// A flat PV an older version made across the collision (`<export>/team-db` for claim
/// `team/db`, which is namespace `team-db`'s directory) is released: the directory holds
/// another PV's directory (and has a namespace marker), so it is kept, the PV goes, and a
/// Warning on the PV says why.
#[tokio::test]
async fn a_released_flat_pv_of_an_older_version_keeps_the_nested_namespace_it_points_at() {
    let cluster = Cluster::start().await;
    cluster
        .class("nfs", false, "Delete", &[("deleteFile", "true")])
        .await;
    let _running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    claim_in(&cluster, "team-db", "x", "nfs").await;
    let nested = cluster.bound_in("team-db", "x").await;
    let orders = cluster.mount("a").join("team-db/x/orders");
    std::fs::write(&orders, b"team-db's data").unwrap();

    // What an older version left: a PV of ours for claim team/db (gone) at <export>/team-db.
    let legacy = stowage_testkit::fixtures::pv("pvc-legacy")
        .annotation(names::ANNOTATION_PROVISIONED_BY, names::PROVISIONER_NFS)
        .annotation(names::ANNOTATION_NFS_ON_DELETE, "delete")
        .finalizer(names::FINALIZER_PV_CLEANUP)
        .nfs("10.0.0.1", "/exports/a/team-db")
        .claim("team", "db")
        .claim_uid(Some("00000000-0000-4000-8000-00000000dead"))
        .reclaim("Delete")
        .build();
    cluster
        .pvs()
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    cluster.gone("pvc-legacy").await;
    assert_eq!(std::fs::read(&orders).unwrap(), b"team-db's data");
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let warning = wait_until(WAIT, "a VolumeFailedDelete Event on pvc-legacy", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("pvc-legacy")
                    && e.reason.as_deref() == Some("VolumeFailedDelete")
            })
            .and_then(|e| e.message)
    })
    .await
    .unwrap();
    eprintln!("pvc-legacy: {warning}");
    for part in ["/exports/a/team-db", "team-db/x", "left as it is"] {
        assert!(warning.contains(part), "{part}: {warning}");
    }
    assert!(
        cluster
            .pvs()
            .get_opt(&nested.name_any())
            .await
            .unwrap()
            .is_some()
    );
    scheduler.shutdown().await;
}

/// Without `--nfs-allow-mixed-layouts`, a flat class beside a nested one (or the other way
/// round) provisions nothing, and the Event names both classes and the flag.
#[tokio::test]
async fn flat_and_nested_classes_on_the_same_servers_are_refused_unless_allowed() {
    let cluster = Cluster::start().await;
    cluster.class("nfs", false, "Delete", &[]).await;
    cluster
        .class("nfs-flat", false, "Delete", &[("layout", "flat")])
        .await;
    let _running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    cluster.claim("old", "nfs-flat", &["ReadWriteMany"]).await;
    cluster.claim("new", "nfs", &["ReadWriteMany"]).await;
    for claim in ["old", "new"] {
        let message = bound_or_refused(&cluster, NS, claim)
            .await
            .expect_err("mixed layouts must be refused");
        eprintln!("{claim}: {message}");
        for part in ["nfs-flat", "nested", "--nfs-allow-mixed-layouts"] {
            assert!(message.contains(part), "{claim}: {part}: {message}");
        }
    }
    assert!(
        cluster
            .pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    scheduler.shutdown().await;
}

/// The security finding about re-created namespaces: namespace `team` is deleted with its
/// claim's data kept (a class with neither `archiveOnDelete` nor `deleteFile`) and created
/// again, perhaps by another tenant. A claim of the same name there must not get the old
/// namespace's data: the directory's marker records the old namespace's uid, and the claim
/// is refused with a ProvisioningFailed Event naming the directory, both uids and the fix.
/// A class with `adoptFromRecreatedNamespace: "true"` adopts it and records the new uid.
#[tokio::test]
async fn a_recreated_namespace_gets_the_old_namespaces_data_only_when_its_class_says_so() {
    let cluster = Cluster::start().await;
    cluster.class("nfs", false, "Delete", &[]).await;
    cluster
        .class(
            "nfs-adopt",
            false,
            "Delete",
            &[("adoptFromRecreatedNamespace", "true")],
        )
        .await;
    let _running = start_controller(&cluster.client, cluster.config(false));
    let scheduler = Scheduler::start(cluster.client.clone(), SchedulerConfig::default());
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());

    claim_in(&cluster, "team", "db", "nfs").await;
    let first = cluster.bound_in("team", "db").await;
    let old_uid = namespaces.get("team").await.unwrap().uid().unwrap();
    let dir = cluster.mount("a").join("team/db");
    std::fs::write(dir.join("orders"), b"the old team's data").unwrap();

    // The namespace goes (its claim with it; the data is kept) and comes back.
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, "namespace team is gone", || async {
        namespaces.get_opt("team").await.unwrap().is_none()
    })
    .await
    .unwrap();
    cluster.gone(&first.name_any()).await;
    assert_eq!(
        std::fs::read(dir.join("orders")).unwrap(),
        b"the old team's data"
    );
    claim_in(&cluster, "team", "db", "nfs").await;
    let new_uid = namespaces.get("team").await.unwrap().uid().unwrap();
    assert_ne!(new_uid, old_uid);
    let outcome = bound_or_refused(&cluster, "team", "db").await;
    if let Ok(pv) = &outcome {
        eprintln!(
            "the re-created namespace's team/db was bound to {:?}",
            nfs_source(pv)
        );
    }
    let message = outcome.expect_err("the re-created namespace's claim team/db must be refused");
    eprintln!("team/db: {message}");
    for part in [
        dir.to_str().unwrap(),
        old_uid.as_str(),
        new_uid.as_str(),
        "adoptFromRecreatedNamespace",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(
        cluster
            .pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no PV for the refused claim"
    );

    // With the class parameter the claim adopts the data, and the marker records the new
    // namespace's uid (so the same claim is not refused again).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "team");
    claims.delete("db", &DeleteParams::default()).await.unwrap();
    wait_for(WAIT, "claim team/db is gone", || async {
        claims.get_opt("db").await.unwrap().is_none()
    })
    .await
    .unwrap();
    claim_in(&cluster, "team", "db", "nfs-adopt").await;
    let adopted = cluster.bound_in("team", "db").await;
    assert_eq!(
        nfs_source(&adopted),
        ("10.0.0.1".to_string(), "/exports/a/team/db".to_string())
    );
    assert_eq!(
        std::fs::read(dir.join("orders")).unwrap(),
        b"the old team's data"
    );
    let marker = std::fs::read_to_string(dir.join(".stowage-owner")).unwrap();
    assert!(
        marker.contains(&format!("namespace-uid={new_uid}\n")),
        "{marker}"
    );
    scheduler.shutdown().await;
}

// === the real binary ===

/// Kills the controller process when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `stowage controller --kubeconfig <kubeconfig>` with env-mode mounts under `dir`.
fn controller_command(dir: &Path, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
    cmd.arg("controller")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("STOWAGE_NFS_CONFIG")
        .env_remove("PROVISIONER_NAME")
        .env_remove("LOG")
        .env("STOWAGE_NFS_MOUNT_BASE", dir);
    cmd
}

#[test]
fn bad_nfs_environment_stops_the_binary_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mismatch = controller_command(dir.path(), &dir.path().join("no-such-kubeconfig"))
        .env("NFS_SERVER", "10.0.0.1:10.0.0.2")
        .env("NFS_PATH", "/exports/a")
        .output()
        .unwrap();
    assert!(!mismatch.status.success());
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert!(
        stderr.contains("NFS_SERVER lists 2 servers but NFS_PATH lists 1"),
        "{stderr}"
    );
    // Failed before any API I/O: the missing kubeconfig was never read.
    assert!(!stderr.contains("no-such-kubeconfig"), "{stderr}");

    let unmounted = controller_command(dir.path(), &dir.path().join("no-such-kubeconfig"))
        .env("NFS_SERVER", "10.0.0.1")
        .env("NFS_PATH", "/exports/a")
        .output()
        .unwrap();
    assert!(!unmounted.status.success());
    let stderr = String::from_utf8_lossy(&unmounted.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("10.0.0.1:/exports/a"), "{stderr}");

    // The file wins over the environment, and its errors name the file.
    let file = dir.path().join("nfs.yaml");
    std::fs::write(
        &file,
        "servers:\n  - {name: a, address: 10.0.0.1, export: /x, mont: /y}\n",
    )
    .unwrap();
    let typo = controller_command(dir.path(), &dir.path().join("no-such-kubeconfig"))
        .arg("--nfs-config")
        .arg(&file)
        .env("NFS_SERVER", "10.0.0.1")
        .env("NFS_PATH", "/exports/a")
        .output()
        .unwrap();
    assert!(!typo.status.success());
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(stderr.contains("nfs.yaml"), "{stderr}");
    assert!(stderr.contains("mont"), "{stderr}");
}

#[tokio::test]
async fn the_binary_in_environment_mode_serves_per_server_gauges() {
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for address in ["10.0.0.1", "10.0.0.2"] {
        std::fs::create_dir(dir.path().join(address)).unwrap();
    }
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let port = free_port();
    let _controller = Process(
        controller_command(dir.path(), &kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--leader-elect=false")
            .env("NFS_SERVER", "10.0.0.1:10.0.0.2")
            .env("NFS_PATH", "/exports/a:/exports/b")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let body = wait_until(WAIT, "/metrics shows both servers reachable", || async {
        tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .ok()
            .flatten()
            .filter(|(code, body)| {
                *code == 200
                    && body.contains("stowage_nfs_server_reachable{server=\"10.0.0.1\"} 1")
                    && body.contains("stowage_nfs_server_reachable{server=\"10.0.0.2\"} 1")
            })
            .map(|(_, body)| body)
    })
    .await
    .unwrap();
    for metric in [
        "stowage_nfs_server_capacity_bytes{server=\"10.0.0.1\"}",
        "stowage_nfs_server_available_bytes{server=\"10.0.0.2\"}",
        "stowage_nfs_server_volumes{server=\"10.0.0.1\"} 0",
        "stowage_nfs_load_max_over_mean",
    ] {
        assert!(body.contains(metric), "{metric} missing:\n{body}");
    }
}
