//! `stowage controller` end to end: the real binary against testkit's API server. It must
//! serve /healthz, /readyz and /metrics on --listen and provision a claim whose node the
//! (simulated) scheduler selected, once an agent (played here) makes the volume.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage::api::local_volume::LocalVolume;
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage_testkit::fixtures::{namespace, pvc, storage_class};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::{ApiServer, wait_for, wait_until};
use support::cluster::reporting_node;

const WAIT: Duration = Duration::from_secs(20);

/// Kills the controller process when the test ends, however it ends.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_controller_binary_serves_health_and_metrics_and_provisions() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let sns: Api<StorageNode> = Api::all(client.clone());
    wait_for(WAIT, "storagenodes are served", || async {
        sns.list(&ListParams::default()).await.is_ok()
    })
    .await
    .unwrap();
    for ns in ["apps", "stowage-system"] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(ns).build())
            .await
            .unwrap();
    }
    reporting_node(&client, "n1", 100 << 30).await.unwrap();
    Api::all(client.clone())
        .create(
            &PostParams::default(),
            &storage_class("local")
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .build(),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let port = free_port();
    let _controller = Controller(
        Command::new(env!("CARGO_BIN_EXE_stowage"))
            .args(["controller", "--listen", &format!("127.0.0.1:{port}")])
            .env("POD_NAMESPACE", "stowage-system")
            .env("POD_NAME", "controller-0")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(WAIT, "/readyz is 200", || async {
        get(port, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await
    .unwrap();
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));
    // Leader election is on by default: the replica takes the Lease before it provisions.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "stowage-system");
    let lease = wait_until(WAIT, "the controller holds its Lease", || async {
        leases
            .get_opt("stowage-controller")
            .await
            .ok()
            .flatten()
            .filter(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    .is_some_and(|h| h.starts_with("controller-0_"))
            })
    })
    .await
    .unwrap();
    assert_eq!(lease.spec.unwrap().lease_duration_seconds, Some(15));

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    let claim = claims
        .create(
            &PostParams::default(),
            &pvc("apps", "data")
                .size("2Gi")
                .class("local")
                .selected_node("n1")
                .annotation(
                    names::ANNOTATION_STORAGE_PROVISIONER,
                    names::PROVISIONER_LOCAL,
                )
                .build(),
        )
        .await
        .unwrap();
    let name = format!("pvc-{}", claim.metadata.uid.unwrap());
    let lvs: Api<LocalVolume> = Api::all(client.clone());
    wait_for(WAIT, "the LocalVolume is created", || async {
        lvs.get_opt(&name).await.is_ok_and(|l| l.is_some())
    })
    .await
    .unwrap();
    // Play the agent once: the volume is made.
    lvs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Ready", "path": format!("/pools/default/{name}"), "sizeBytes": 2u64 << 30}})),
    )
    .await
    .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = wait_until(WAIT, "the PV is created", || async {
        pvs.get_opt(&name).await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(
        pv.spec.unwrap().local.unwrap().path,
        format!("/pools/default/{name}")
    );

    let expected = [
        "stowage_provisions_total{result=\"succeeded\"} 1",
        "stowage_node_pool_allocated_bytes{node=\"n1\",pool=\"default\"} 2147483648",
        "stowage_provision_duration_seconds_count 1",
        "stowage_leader 1",
        // The extender is served by every replica, with its metrics on the same endpoint.
        "stowage_extender_pods_passed_through_total 0",
    ];
    // The PV's creation is visible a moment before the reconcile that made it counts it:
    // wait for the counters, then say exactly which series is missing if they never come.
    let _ = wait_for(WAIT, "the provisioning is counted", || async {
        get(port, "/metrics")
            .await
            .is_some_and(|(code, m)| code == 200 && expected.iter().all(|s| m.contains(s)))
    })
    .await;
    let (code, metrics) = get(port, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for series in expected {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
}
