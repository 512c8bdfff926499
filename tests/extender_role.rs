//! `stowage extender` end to end: the real binary against testkit's API server, asked by
//! testkit's scheduler stand-in.

// clippy's allow-unwrap-in-tests covers `#[test]` functions, not this file's helpers.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage_testkit::fixtures::{namespace, pod, pvc, storage_class};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::scheduler::{ExtenderConfig, Scheduler, SchedulerConfig};
use stowage_testkit::{ApiServer, wait_for, wait_until};
use support::cluster::reporting_node;

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

/// `POST path` with a JSON body on 127.0.0.1:port over a fresh connection; the status and
/// the response body. The body is written from another thread while the response is read,
/// so a server that answers before reading a large body (413) is seen answering.
fn post(port: u16, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    let mut writer = stream.try_clone()?;
    // The server may stop reading and close after answering; a failed write is expected then.
    let sender = std::thread::spawn(move || writer.write_all(&body).is_ok());
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let _ = sender.join();
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status line: {head:?}"))?
        .parse()?;
    Ok((status, body.to_owned()))
}

async fn post_async(port: u16, path: &'static str, body: Vec<u8>) -> (u16, String) {
    tokio::task::spawn_blocking(move || post(port, path, body))
        .await
        .unwrap()
        .unwrap()
}

/// `GET /metrics`: the value of every sample, keyed by the series as written.
fn scrape(port: u16) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP response"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// An API server with the CRDs, namespace `apps`, StorageNodes `big` (100Gi) and `small`
/// (10Gi), the local class `local` and the claims `data` (20Gi) and `huge` (500Gi).
async fn cluster() -> ApiServer {
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

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .create(&PostParams::default(), &namespace("apps").build())
        .await;
    reporting_node(&client, "big", 100 * GI).await.unwrap();
    reporting_node(&client, "small", 10 * GI).await.unwrap();
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
    server
}

/// Starts `stowage extender` against `server` and waits until `/readyz` is 200. The cluster
/// state goes in before, so that the first list (and hence /readyz) already holds it and no
/// request can outrun the watch.
async fn start_extender(server: &ApiServer) -> (Extender, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let port = free_port();
    let extender = Extender(
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
        get(port, "/healthz").await.map(|(code, _)| code) == Some(200)
    })
    .await
    .unwrap();
    wait_for(WAIT, "/readyz is 200", || async {
        get(port, "/readyz").await.map(|(code, _)| code) == Some(200)
    })
    .await
    .unwrap();
    (extender, port, dir)
}

#[tokio::test]
async fn the_extender_binary_filters_nodes_by_free_capacity() {
    let server = cluster().await;
    let client = server.client();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    let (_extender, port, _dir) = start_extender(&server).await;

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
        reason.contains("too little free space in storage pool")
            && reason.contains("the most free"),
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

/// The pod of claim `data` (20Gi) as kube-scheduler sends it: from its informer cache, without
/// `apiVersion` and `kind`.
fn pod_json(claims: &[&str]) -> serde_json::Value {
    let volumes: Vec<_> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    json!({
        "metadata": {"name": "app", "namespace": "apps", "uid": "6f1c2a9e-0000-4000-8000-000000000001"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], "volumes": volumes},
        "status": {"phase": "Pending"}
    })
}

/// A well-formed filter call must still be answered correctly: `big` passes, `small` is too
/// small and `ghost` has no agent.
async fn good_filter_is_served(port: u16, after: &str) {
    let body =
        json!({"Pod": pod_json(&["data"]), "Nodes": null, "NodeNames": ["big", "small", "ghost"]});
    let (status, reply) = post_async(port, "/filter", body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "good filter after {after}: {reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["NodeNames"], json!(["big"]), "after {after}");
    let failed = &reply["FailedAndUnresolvableNodes"];
    assert!(
        failed["small"].as_str().is_some_and(|r| r.contains("free")),
        "after {after}: {reply}"
    );
    assert!(failed["ghost"].is_string(), "after {after}: {reply}");
}

#[tokio::test]
async fn the_extender_binary_refuses_malformed_input_keeps_serving_and_counts_it() {
    let server = cluster().await;
    let (mut extender, port, _dir) = start_extender(&server).await;

    let mut fifty_mb = br#"{"Pod": {}, "NodeNames": [""#.to_vec();
    fifty_mb.resize(50 * 1024 * 1024, b'a');
    // (what, path, body, status, a piece of the reason)
    let refused: Vec<(&str, &'static str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            "/filter",
            br#"{"Pod": {"metadata": {"#.to_vec(),
            400,
            "EOF",
        ),
        (
            "NodeNames of the wrong type",
            "/filter",
            br#"{"Pod": {}, "NodeNames": "big"}"#.to_vec(),
            400,
            "NodeNames",
        ),
        (
            "a pod name of the wrong type",
            "/prioritize",
            br#"{"Pod": {"metadata": {"name": 7}}, "NodeNames": ["big"]}"#.to_vec(),
            400,
            "Pod.metadata",
        ),
        (
            "a missing Pod",
            "/prioritize",
            br#"{"Nodes": null, "NodeNames": ["big"]}"#.to_vec(),
            400,
            "missing field `Pod`",
        ),
        ("a 50 MB body", "/filter", fifty_mb, 413, "length limit"),
    ];
    for (what, path, body, want, reason) in refused {
        let (status, reply) = post_async(port, path, body).await;
        assert_eq!(status, want, "{what}: {reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{what}: the refusal is not JSON ({e}): {reply}"));
        let error = reply["Error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{what}: {error:?} lacks {reason:?}");
        assert!(
            extender.0.try_wait().unwrap().is_none(),
            "{what}: the process exited"
        );
        good_filter_is_served(port, what).await;
    }

    // An empty candidate list is a valid, if pointless, call: answered with empty lists.
    let empty = json!({"Pod": pod_json(&["data"]), "NodeNames": []}).to_string();
    let (status, reply) = post_async(port, "/filter", empty.clone().into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["NodeNames"], json!([]));
    assert_eq!(reply["FailedNodes"], json!({}));
    assert_eq!(reply["Error"], "");
    let (status, reply) = post_async(port, "/prioritize", empty.into_bytes()).await;
    assert_eq!((status, reply.as_str()), (200, "[]"));
    good_filter_is_served(port, "an empty node list").await;

    // A pod without stowage claims passes untouched.
    let plain = json!({"Pod": pod_json(&[]), "NodeNames": ["big", "small", "ghost"]}).to_string();
    let (status, reply) = post_async(port, "/filter", plain.into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["NodeNames"], json!(["big", "small", "ghost"]));

    let good = json!({"Pod": pod_json(&["data"]), "NodeNames": ["big"]}).to_string();
    let (status, reply) = post_async(port, "/prioritize", good.into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    let scores: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(scores[0]["Host"], "big", "{reply}");

    let metrics = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap()
        .unwrap();
    let good_filters = 6.0; // one after each refusal and one after the empty list
    for (series, want) in [
        (
            r#"stowage_extender_requests_total{code="400",verb="filter"}"#,
            2.0,
        ),
        (
            r#"stowage_extender_requests_total{code="413",verb="filter"}"#,
            1.0,
        ),
        (
            r#"stowage_extender_requests_total{code="400",verb="prioritize"}"#,
            2.0,
        ),
        (
            r#"stowage_extender_requests_total{code="200",verb="filter"}"#,
            good_filters + 2.0,
        ),
        (
            r#"stowage_extender_requests_total{code="200",verb="prioritize"}"#,
            2.0,
        ),
        (r#"stowage_extender_errors_total{verb="filter"}"#, 3.0),
        (r#"stowage_extender_errors_total{verb="prioritize"}"#, 2.0),
        (
            r#"stowage_extender_nodes_filtered_total{reason="insufficient_capacity"}"#,
            good_filters,
        ),
        (
            r#"stowage_extender_nodes_filtered_total{reason="no_report"}"#,
            good_filters,
        ),
        (
            r#"stowage_extender_nodes_filtered_total{reason="stale"}"#,
            0.0,
        ),
        ("stowage_extender_pods_passed_through_total", 1.0),
        (
            r#"stowage_extender_request_duration_seconds_count{verb="filter"}"#,
            good_filters + 5.0,
        ),
        (
            r#"stowage_extender_request_duration_seconds_count{verb="prioritize"}"#,
            4.0,
        ),
    ] {
        assert_eq!(metrics.get(series).copied(), Some(want), "{series}");
    }
}
