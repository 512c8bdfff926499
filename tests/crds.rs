//! The generated CRDs against testkit's strict API server: they install and get served,
//! their objects take status through the subresource, their schemas reject what the types
//! reject, and the agent-cleanup finalizer holds a LocalVolume's deletion.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Resource,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use stowage::api::{
    crds,
    local_volume::{ClaimRef, LocalVolume, LocalVolumePhase, LocalVolumeSpec, OnDelete},
    names,
    storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus},
};
use stowage_testkit::{ApiServer, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// Starts a server with stowage's CRDs installed and served.
async fn server_with_crds() -> anyhow::Result<ApiServer> {
    let server = ApiServer::start().await?;
    let api: Api<CustomResourceDefinition> = Api::all(server.client());
    for crd in crds() {
        api.create(&PostParams::default(), &crd).await?;
    }
    let nodes: Api<StorageNode> = Api::all(server.client());
    let volumes: Api<LocalVolume> = Api::all(server.client());
    wait_for(WAIT, "storagenodes and localvolumes are served", || async {
        nodes.list(&Default::default()).await.is_ok()
            && volumes.list(&Default::default()).await.is_ok()
    })
    .await?;
    Ok(server)
}

fn local_volume(name: &str) -> LocalVolume {
    let mut lv = LocalVolume::new(
        name,
        LocalVolumeSpec {
            node_name: "n1".into(),
            pool: "default".into(),
            size_bytes: 1 << 30,
            claim: ClaimRef {
                namespace: "apps".into(),
                name: "data".into(),
                uid: "1234".into(),
            },
            on_delete: OnDelete::Delete,
        },
    );
    lv.meta_mut().finalizers = Some(vec![names::FINALIZER_AGENT_CLEANUP.to_string()]);
    lv
}

#[tokio::test]
async fn storage_node_status_is_written_through_the_subresource() {
    let server = server_with_crds().await.unwrap();
    let nodes: Api<StorageNode> = Api::all(server.client());
    let created = nodes
        .create(
            &PostParams::default(),
            &StorageNode::new("n1", StorageNodeSpec {}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, None);

    let mut status = StorageNodeStatus {
        pools: vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            path: "/var/lib/stowage".into(),
            capacity_bytes: 1000,
            allocatable_bytes: 900,
            allocated_bytes: 100,
            available_bytes: 700,
            volumes: 1,
            orphans: 0,
            ready: true,
            message: None,
        }],
        heartbeat_time: Some("2025-01-02T03:04:05Z".into()),
        agent_version: Some("0.1.0".into()),
        ..Default::default()
    };
    status.refresh_totals();
    let params = PatchParams::apply(names::FIELD_MANAGER_AGENT);
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();

    let read = nodes.get("n1").await.unwrap();
    assert_eq!(read.status.as_ref(), Some(&status));
    assert_eq!(read.metadata.generation, Some(1));

    // A write to the main resource cannot touch status; the subresource owns it.
    let after = nodes
        .patch(
            "n1",
            &params,
            &Patch::Apply(json!({
                "apiVersion": names::API_VERSION, "kind": "StorageNode",
                "spec": {}, "status": {"ready": false}
            })),
        )
        .await
        .unwrap();
    assert_eq!(after.status.as_ref().map(|s| s.ready), Some(true));
}

#[tokio::test]
async fn local_volume_status_round_trips_and_leaves_the_spec_alone() {
    let server = server_with_crds().await.unwrap();
    let volumes: Api<LocalVolume> = Api::all(server.client());
    let created = volumes
        .create(&PostParams::default(), &local_volume("pvc-1234"))
        .await
        .unwrap();
    assert_eq!(created.spec.on_delete, OnDelete::Delete);

    let written = volumes
        .patch_status(
            "pvc-1234",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": {"nodeName": "elsewhere"},
                "status": {
                    "phase": "Ready", "path": "/var/lib/stowage/pvc-1234",
                    "sizeBytes": 1u64 << 30, "observedGeneration": 1
                }
            })),
        )
        .await
        .unwrap();
    let status = written.status.unwrap();
    assert_eq!(status.phase, LocalVolumePhase::Ready);
    assert_eq!(status.path.as_deref(), Some("/var/lib/stowage/pvc-1234"));
    assert_eq!(status.size_bytes, Some(1 << 30));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        written.spec.node_name, "n1",
        "status writes ignore the spec"
    );

    let read = volumes.get("pvc-1234").await.unwrap();
    assert_eq!(read.status.map(|s| s.phase), Some(LocalVolumePhase::Ready));
}

#[tokio::test]
async fn local_volume_schema_defaults_on_delete_and_rejects_unknown_policies() {
    let server = server_with_crds().await.unwrap();
    let ar = ApiResource::erase::<LocalVolume>(&());
    let dynamic: Api<DynamicObject> = Api::all_with(server.client(), &ar);
    let spec = json!({
        "nodeName": "n1", "pool": "default", "sizeBytes": 1,
        "claim": {"namespace": "apps", "name": "data", "uid": "1234"}
    });
    let obj = |name: &str, spec: serde_json::Value| {
        DynamicObject::new(name, &ar).data(json!({ "spec": spec }))
    };

    dynamic
        .create(&PostParams::default(), &obj("defaulted", spec.clone()))
        .await
        .unwrap();
    let volumes: Api<LocalVolume> = Api::all(server.client());
    let defaulted = volumes.get("defaulted").await.unwrap();
    assert_eq!(defaulted.spec.on_delete, OnDelete::Delete);

    let mut shred = spec.clone();
    shred["onDelete"] = json!("shred");
    match dynamic
        .create(&PostParams::default(), &obj("shredded", shred))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{s:?}"),
        other => panic!("expected 422 Invalid, got {other:?}"),
    }

    let mut negative = spec;
    negative["sizeBytes"] = json!(-1);
    match dynamic
        .create(&PostParams::default(), &obj("negative", negative))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{s:?}"),
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_cleanup_finalizer_holds_local_volume_deletion_until_removed() {
    let server = server_with_crds().await.unwrap();
    let volumes: Api<LocalVolume> = Api::all(server.client());
    volumes
        .create(&PostParams::default(), &local_volume("pvc-1234"))
        .await
        .unwrap();

    volumes
        .delete("pvc-1234", &DeleteParams::default())
        .await
        .unwrap();
    let held = volumes.get("pvc-1234").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers.as_deref(),
        Some(&[names::FINALIZER_AGENT_CLEANUP.to_string()][..])
    );

    // The agent marks the volume as being cleaned up, then lets it go.
    volumes
        .patch_status(
            "pvc-1234",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Deleting"}})),
        )
        .await
        .unwrap();
    assert!(volumes.get_opt("pvc-1234").await.unwrap().is_some());
    volumes
        .patch(
            "pvc-1234",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_until(WAIT, "pvc-1234 is gone", || async {
        volumes
            .get_opt("pvc-1234")
            .await
            .ok()
            .and_then(|lv| lv.is_none().then_some(()))
    })
    .await
    .unwrap();
}
