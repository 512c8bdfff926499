//! `stowage extender` end to end: the real binary against testkit's API server, asked by
//! testkit's scheduler stand-in.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use stowage::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};
use stowage::api::{crds, names};
use stowage_testkit::fixtures::{namespace, node, pod, pvc, storage_class};
use stowage_testkit::scheduler::{ExtenderConfig, Scheduler, SchedulerConfig};
use stowage_testkit::{ApiServer, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(8);
const GI: u64 = 1 << 30;

/// Kills the extender process when the test ends, however it ends.
struct Extender(Child);

impl Drop for Extender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:port; the status code, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

async fn status_of(port: u16, path: &'static str) -> Option<u16> {
    tokio::task::spawn_blocking(move || http_status(port, path))
        .await
        .ok()
        .flatten()
}

async fn storage_node(client: &kube::Client, name: &str, capacity: u64) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node(name).build())
        .await?;
    let storage_nodes: Api<StorageNode> = Api::all(client.clone());
    storage_nodes
        .create(
            &PostParams::default(),
            &StorageNode::new(name, StorageNodeSpec {}),
        )
        .await?;
    let mut status = StorageNodeStatus {
        pools: vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            path: "/var/lib/stowage".into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity,
            allocated_bytes: 0,
            available_bytes: capacity,
            volumes: 0,
            orphans: 0,
            ready: true,
            message: None,
        }],
        heartbeat_time: Some(Timestamp::now().to_string()),
        agent_version: Some("0.1.0".into()),
        ..Default::default()
    };
    status.refresh_totals();
    storage_nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_extender_binary_filters_nodes_by_free_capacity() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let sn_api: Api<StorageNode> = Api::all(client.clone());
    wait_for(WAIT, "storagenodes are served", || async {
        sn_api.list(&Default::default()).await.is_ok()
    })
    .await
    .unwrap();

    // The cluster state goes in before the extender starts, so that its first list (and
    // hence /readyz) already holds it and the scheduler cannot outrun the watch.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .create(&PostParams::default(), &namespace("apps").build())
        .await;
    storage_node(&client, "big", 100 * GI).await.unwrap();
    storage_node(&client, "small", 10 * GI).await.unwrap();
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
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    for (name, size) in [("data", "20Gi"), ("huge", "500Gi")] {
        claims
            .create(
                &PostParams::default(),
                &pvc("apps", name).size(size).class("local").build(),
            )
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let port = free_port().unwrap();
    let _extender = Extender(
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .arg("extender")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(WAIT, "/healthz answers", || async {
        status_of(port, "/healthz").await == Some(200)
    })
    .await
    .unwrap();
    wait_for(WAIT, "/readyz is 200", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    for (name, claim) in [("app", "data"), ("hog", "huge")] {
        pods.create(
            &PostParams::default(),
            &pod("apps", name).claims([claim]).build(),
        )
        .await
        .unwrap();
    }
    let scheduler = Scheduler::start(
        client.clone(),
        SchedulerConfig::with_extender(ExtenderConfig::new(format!("http://127.0.0.1:{port}"))),
    );

    let selected = wait_until(WAIT, "the claim gets a selected node", || async {
        claims
            .get("data")
            .await
            .ok()
            .and_then(|c| c.metadata.annotations)
            .and_then(|a| a.get(names::ANNOTATION_SELECTED_NODE).cloned())
    })
    .await
    .unwrap();
    assert_eq!(selected, "big", "the 10Gi node must be filtered out");
    assert_eq!(scheduler.last_failure("apps", "app"), None);

    let reason = wait_until(WAIT, "the 500Gi pod fails to schedule", || async {
        scheduler.last_failure("apps", "hog")
    })
    .await
    .unwrap();
    assert!(
        reason.contains("has") && reason.contains("free"),
        "unexpected reason: {reason}"
    );
    let hog = pods.get("hog").await.unwrap();
    assert_eq!(
        hog.spec.and_then(|s| s.node_name),
        None,
        "the pod stays pending"
    );
    let huge = claims.get("huge").await.unwrap();
    assert!(
        !huge
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(names::ANNOTATION_SELECTED_NODE)
    );
    scheduler.shutdown().await;
}
