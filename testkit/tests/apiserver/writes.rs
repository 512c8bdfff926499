//! Create, update, patch, apply, delete: the semantics and the errors.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{
        ConfigMap, Event as CoreEvent, Namespace, Node, ObjectReference, PersistentVolume,
        PersistentVolumeClaim, Pod,
    },
    events::v1::Event,
    storage::v1::StorageClass,
};
use kube::{
    Api, ResourceExt,
    api::{
        DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
        WatchParams,
    },
    runtime::events::{Event as Publish, EventType, Recorder, Reporter},
};
use serde_json::json;
use stowage_testkit::{
    ApiServer, PodTermination,
    fixtures::{namespace, node, pod, pv, pvc, storage_class},
    wait_for,
};

use crate::common::{WAIT, assert_api_error, raw};

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn stale_resource_version_update_is_a_conflict() {
    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let created = pvcs
        .create(
            &PostParams::default(),
            &pvc("default", "data").size("1Gi").build(),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.uid.as_ref().map(String::len), Some(36));
    assert!(created.metadata.creation_timestamp.is_some());

    let mut first = created.clone();
    first.labels_mut().insert("a".into(), "1".into());
    let updated = pvcs
        .replace("data", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());

    let mut stale = created.clone();
    stale.labels_mut().insert("b".into(), "2".into());
    let s = assert_api_error(
        pvcs.replace("data", &PostParams::default(), &stale).await,
        409,
        "Conflict",
    );
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
    assert!(s.is_conflict());

    // A patch carrying a stale resourceVersion is checked too.
    let patch =
        json!({"metadata": {"resourceVersion": created.resource_version(), "labels": {"c": "3"}}});
    assert_api_error(
        pvcs.patch("data", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
        409,
        "Conflict",
    );
}

#[tokio::test]
async fn duplicate_create_is_already_exists_and_missing_objects_are_not_found() {
    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let claim = pvc("default", "data").build();
    pvcs.create(&PostParams::default(), &claim).await.unwrap();
    let s = assert_api_error(
        pvcs.create(&PostParams::default(), &claim).await,
        409,
        "AlreadyExists",
    );
    assert_eq!(s.message, r#"persistentvolumeclaims "data" already exists"#);
    assert_eq!(s.details.as_ref().map(|d| d.name.as_str()), Some("data"));

    let s = assert_api_error(pvcs.get("nope").await, 404, "NotFound");
    assert_eq!(s.message, r#"persistentvolumeclaims "nope" not found"#);
    assert!(pvcs.get_opt("nope").await.unwrap().is_none());
    assert_api_error(
        pvcs.delete("nope", &DeleteParams::default()).await,
        404,
        "NotFound",
    );
    let patch = json!({"metadata": {"labels": {"a": "b"}}});
    assert_api_error(
        pvcs.patch("nope", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
        404,
        "NotFound",
    );
    let mut ghost = pvc("default", "nope").build();
    ghost.metadata.resource_version = Some("1".into());
    assert_api_error(
        pvcs.replace("nope", &PostParams::default(), &ghost).await,
        404,
        "NotFound",
    );

    // Namespaced objects need their namespace.
    let elsewhere: Api<PersistentVolumeClaim> = Api::namespaced(server.client(), "missing");
    let s = assert_api_error(
        elsewhere
            .create(&PostParams::default(), &pvc("missing", "x").build())
            .await,
        404,
        "NotFound",
    );
    assert_eq!(s.message, r#"namespaces "missing" not found"#);

    let classes: Api<StorageClass> = Api::all(server.client());
    let s = assert_api_error(classes.get("x").await, 404, "NotFound");
    assert_eq!(s.message, r#"storageclasses.storage.k8s.io "x" not found"#);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_the_last_is_removed() {
    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let created = pvcs
        .create(
            &PostParams::default(),
            &pvc("default", "data")
                .finalizer("stowage.io/agent-cleanup")
                .build(),
        )
        .await
        .unwrap();
    let events = pvcs
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    let deleting = pvcs
        .delete("data", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let still = pvcs.get("data").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());

    // No new finalizers on an object that is going away.
    let add =
        json!({"metadata": {"finalizers": ["stowage.io/agent-cleanup", "example.com/other"]}});
    let s = assert_api_error(
        pvcs.patch("data", &PatchParams::default(), &Patch::Merge(&add))
            .await,
        422,
        "Invalid",
    );
    assert!(s.message.contains("no new finalizers"), "{}", s.message);

    let remove = json!({"metadata": {"finalizers": null}});
    pvcs.patch("data", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    assert!(pvcs.get_opt("data").await.unwrap().is_none());

    let seen: Vec<&str> = events
        .take(4)
        .map_ok(|e| match e {
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Added(_) => "ADDED",
            _ => "OTHER",
        })
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    // Marked deleting; the pvc-protection finalizer (set at admission) released, no pod
    // using the claim; the last finalizer removed; gone.
    assert_eq!(seen, vec!["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn kube_runtime_finalizer_helper_adds_and_removes_its_finalizer() {
    use kube::runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    };
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    pvcs.create(&PostParams::default(), &pvc("default", "data").build())
        .await
        .unwrap();
    let cleaned = Arc::new(AtomicBool::new(false));
    let run = |obj: PersistentVolumeClaim| {
        let pvcs = pvcs.clone();
        let cleaned = cleaned.clone();
        async move {
            finalizer(
                &pvcs,
                "stowage.io/agent-cleanup",
                Arc::new(obj),
                |event| async move {
                    if let Finalizer::Cleanup(_) = event {
                        cleaned.store(true, Ordering::SeqCst);
                    }
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                },
            )
            .await
        }
    };
    run(pvcs.get("data").await.unwrap()).await.unwrap();
    assert_eq!(
        pvcs.get("data").await.unwrap().finalizers(),
        ["kubernetes.io/pvc-protection", "stowage.io/agent-cleanup"],
        "the admission plugin's protection first, then the helper's"
    );
    run(pvcs.get("data").await.unwrap()).await.unwrap();

    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    run(pvcs.get("data").await.unwrap()).await.unwrap();
    assert!(cleaned.load(Ordering::SeqCst));
    assert!(pvcs.get_opt("data").await.unwrap().is_none());
}

#[tokio::test]
async fn status_subresource_is_isolated_both_ways() {
    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let mut claim = pvc("default", "data").phase("Bound").build();
    let created = pvcs.create(&PostParams::default(), &claim).await.unwrap();
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending"),
        "status is reset on create"
    );

    // Main resource: status changes are ignored, label changes apply.
    claim.labels_mut().insert("a".into(), "1".into());
    let after = pvcs
        .replace("data", &PostParams::default(), &claim)
        .await
        .unwrap();
    assert_eq!(after.labels()["a"], "1");
    assert_eq!(after.status.unwrap().phase.as_deref(), Some("Pending"));

    // Status subresource: only status changes apply.
    let patch = json!({"metadata": {"labels": {"b": "2"}}, "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}});
    let after = pvcs
        .patch_status("data", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Bound")
    );
    assert!(!after.labels().contains_key("b"));
    assert_eq!(after.spec.as_ref().unwrap().volume_name, None);
    assert_eq!(
        pvcs.get_status("data")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Bound")
    );

    // replace_status needs a current resourceVersion too.
    let mut stale = created.clone();
    stale.status.as_mut().unwrap().phase = Some("Lost".into());
    assert_api_error(
        pvcs.replace_status("data", &PostParams::default(), &stale)
            .await,
        409,
        "Conflict",
    );
}

#[tokio::test]
async fn merge_json_and_strategic_patches_apply() {
    let server = ApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(
        &PostParams::default(),
        &pod("default", "p").label("app", "web").build(),
    )
    .await
    .unwrap();

    let merged = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "db", "app": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.labels(),
        &BTreeMap::from([("tier".to_string(), "db".to_string())])
    );

    // JSON patch (kube-rs needs its `jsonpatch` feature for this, so send it raw).
    let path = "/api/v1/namespaces/default/pods/p";
    let ops = r#"[{"op": "test", "path": "/metadata/labels/tier", "value": "db"}, {"op": "add", "path": "/metadata/annotations", "value": {"note": "x"}}]"#;
    let (code, _, body) = raw(&server, "PATCH", path, "application/json-patch+json", ops).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["annotations"]["note"], "x");
    let failing = r#"[{"op": "test", "path": "/metadata/labels/tier", "value": "web"}]"#;
    let (code, _, body) = raw(
        &server,
        "PATCH",
        path,
        "application/json-patch+json",
        failing,
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );

    // Strategic merge: containers merge by name, so the image changes and the list stays.
    let smp = json!({"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}, "metadata": {"finalizers": ["example.com/a"]}});
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let spec = patched.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].image.as_deref(), Some("busybox:2"));
    let smp = json!({"metadata": {"finalizers": ["example.com/b"]}});
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    assert_eq!(patched.finalizers(), ["example.com/a", "example.com/b"]);
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_reports_conflicts() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let a = PatchParams::apply("manager-a");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"x": "1"}}, "data": {"one": "1", "two": "2"}});
    let created = cms.patch("c", &a, &Patch::Apply(&first)).await.unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);
    let managed = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(managed[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));

    // Applying the same configuration again is a no-op: no new resourceVersion.
    let again = cms.patch("c", &a, &Patch::Apply(&first)).await.unwrap();
    assert_eq!(again.resource_version(), created.resource_version());

    // Fields the manager stops applying are removed; other fields are kept.
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"three": "3"}})),
    )
    .await
    .unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"one": "1"}});
    let after = cms.patch("c", &a, &Patch::Apply(&second)).await.unwrap();
    assert_eq!(
        after.data.unwrap(),
        BTreeMap::from([
            ("one".to_string(), "1".to_string()),
            ("three".to_string(), "3".to_string())
        ])
    );
    assert!(after.metadata.labels.unwrap_or_default().is_empty());

    // Another manager setting an owned field to another value conflicts, unless forced.
    let b = PatchParams::apply("manager-b");
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"one": "9"}});
    let s = assert_api_error(
        cms.patch("c", &b, &Patch::Apply(&theirs)).await,
        409,
        "Conflict",
    );
    assert!(
        s.message
            .contains(r#"conflict with "manager-a": .data.one"#),
        "{}",
        s.message
    );
    let forced = cms
        .patch("c", &b.clone().force(), &Patch::Apply(&theirs))
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["one"], "9");

    // Applying an object read back from the server is a mistake the real server rejects.
    let fetched = cms.get("c").await.unwrap();
    let mut fetched = serde_json::to_value(&fetched).unwrap();
    fetched["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    assert_api_error(
        cms.patch("c", &a, &Patch::Apply(&fetched)).await,
        400,
        "BadRequest",
    );

    // fieldManager is required (kube-rs checks it too, so send the request raw).
    let (code, _, body) = raw(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c",
        "application/apply-patch+yaml",
        "data: {one: '1'}",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    // Unknown patch types are 415.
    let (code, _, body) = raw(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c",
        "text/plain",
        "{}",
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
}

#[tokio::test]
async fn generate_name_appends_a_random_suffix() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut template = cm("");
    template.metadata.name = None;
    template.metadata.generate_name = Some("lv-".into());
    let a = cms.create(&PostParams::default(), &template).await.unwrap();
    let b = cms.create(&PostParams::default(), &template).await.unwrap();
    assert!(
        a.name_any().starts_with("lv-") && a.name_any().len() == 8,
        "{}",
        a.name_any()
    );
    assert_ne!(a.name_any(), b.name_any());

    template.metadata.generate_name = None;
    let s = assert_api_error(
        cms.create(&PostParams::default(), &template).await,
        422,
        "Invalid",
    );
    assert!(
        s.message.contains("name or generateName is required"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn invalid_objects_are_rejected_like_a_real_cluster_does() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    let s = assert_api_error(
        pvcs.create(&PostParams::default(), &pvc("default", "Data_1").build())
            .await,
        422,
        "Invalid",
    );
    assert!(s.message.contains("RFC 1123"), "{}", s.message);
    let bad_label = pvc("default", "x").label("stowage.io/node", "a/b").build();
    assert_api_error(
        pvcs.create(&PostParams::default(), &bad_label).await,
        422,
        "Invalid",
    );
    let mut no_size = pvc("default", "x").build();
    no_size.spec.as_mut().unwrap().resources = None;
    assert_api_error(
        pvcs.create(&PostParams::default(), &no_size).await,
        422,
        "Invalid",
    );

    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut local = pv("pv-1").local("n1", "/var/lib/stowage/pv-1").build();
    local.spec.as_mut().unwrap().node_affinity = None;
    let s = assert_api_error(
        pvs.create(&PostParams::default(), &local).await,
        422,
        "Invalid",
    );
    assert!(
        s.message.contains("Local volume requires node affinity"),
        "{}",
        s.message
    );
    pvs.create(
        &PostParams::default(),
        &pv("pv-1").local("n1", "/var/lib/stowage/pv-1").build(),
    )
    .await
    .unwrap();
    // claimRef is mutable, the source is not.
    pvs.patch(
        "pv-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"claimRef": {"namespace": "default", "name": "data"}}})),
    )
    .await
    .unwrap();
    assert_api_error(
        pvs.patch(
            "pv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"local": {"path": "/elsewhere"}}})),
        )
        .await,
        422,
        "Invalid",
    );

    // A claim's class is immutable; its size grows only when bound and the class allows it.
    let classes: Api<StorageClass> = Api::all(client.clone());
    classes
        .create(&PostParams::default(), &storage_class("fixed").build())
        .await
        .unwrap();
    pvcs.create(
        &PostParams::default(),
        &pvc("default", "data").class("fixed").size("1Gi").build(),
    )
    .await
    .unwrap();
    let s = assert_api_error(
        pvcs.patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storageClassName": "other"}})),
        )
        .await,
        422,
        "Invalid",
    );
    // 1.19's message, with (approximately) its diff naming the field.
    assert!(
        s.message.contains(
            "spec: Forbidden: spec is immutable after creation except resources.requests for bound claims"
        ) && s.message.contains("StorageClassName: &\"other\""),
        "{}",
        s.message
    );
    pvcs.patch_status(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}})),
    )
    .await
    .unwrap();
    let grow = json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
    assert_api_error(
        pvcs.patch("data", &PatchParams::default(), &Patch::Merge(&grow))
            .await,
        403,
        "Forbidden",
    );
    let shrink = json!({"spec": {"resources": {"requests": {"storage": "512Mi"}}}});
    assert_api_error(
        pvcs.patch("data", &PatchParams::default(), &Patch::Merge(&shrink))
            .await,
        422,
        "Invalid",
    );

    // StorageClass parameters are immutable.
    let s = assert_api_error(
        classes
            .patch(
                "fixed",
                &PatchParams::default(),
                &Patch::Merge(json!({"parameters": {"pool": "x"}})),
            )
            .await,
        422,
        "Invalid",
    );
    assert!(
        s.message.contains("updates to parameters are forbidden"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn default_storage_class_and_expansion_follow_admission() {
    let server = ApiServer::start().await.unwrap();
    let classes: Api<StorageClass> = Api::all(server.client());
    let class = storage_class("local")
        .wait_for_first_consumer()
        .param("pool", "default")
        .reclaim("Delete")
        .allow_expansion(true)
        .default_class()
        .build();
    let created = classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    assert_eq!(
        created.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let claim = pvcs
        .create(
            &PostParams::default(),
            &pvc("default", "data").size("1Gi").build(),
        )
        .await
        .unwrap();
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("local")
    );
    assert_eq!(
        claim.spec.as_ref().unwrap().volume_mode.as_deref(),
        Some("Filesystem")
    );
    // volumeName may be set once.
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"volumeName": "pv-1"}})),
    )
    .await
    .unwrap();
    assert_api_error(
        pvcs.patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": "pv-2"}})),
        )
        .await,
        422,
        "Invalid",
    );
    pvcs.patch_status(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}})),
    )
    .await
    .unwrap();
    let grown = pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        grown.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "5Gi"
    );
}

#[tokio::test]
async fn binding_sets_the_node_once_and_the_spec_is_otherwise_immutable() {
    let server = ApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let created = pods
        .create(
            &PostParams::default(),
            &pod("default", "p")
                .claims(["data"])
                .scheduler("stowage")
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        created.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("stowage")
    );
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let direct = json!({"spec": {"nodeName": "n1"}});
    assert_api_error(
        pods.patch("p", &PatchParams::default(), &Patch::Merge(&direct))
            .await,
        422,
        "Invalid",
    );

    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    let _: kube::core::Status = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding)
        .await
        .unwrap();
    let bound = pods.get("p").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("n1")
    );
    let conditions = bound.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let again = pods
        .create_subresource::<_, kube::core::Status>(
            "binding",
            "p",
            &PostParams::default(),
            &binding,
        )
        .await;
    let s = assert_api_error(again, 409, "Conflict");
    assert!(
        s.message.contains("already assigned to node"),
        "{}",
        s.message
    );

    // Field selectors see the binding.
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(on_n1.items.len(), 1);
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let created = cms.create(&PostParams::default(), &cm("c")).await.unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("00000000-0000-4000-8000-000000000000".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let s = assert_api_error(cms.delete("c", &wrong_uid).await, 409, "Conflict");
    assert!(
        s.message
            .contains("Precondition failed: UID in precondition"),
        "{}",
        s.message
    );
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.uid(),
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    assert_api_error(cms.delete("c", &stale).await, 409, "Conflict");
    let exact = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.uid(),
            resource_version: created.resource_version(),
        }),
        ..DeleteParams::default()
    };
    // A ConfigMap without finalizers is removed at once; the answer is a Success status.
    let gone = cms.delete("c", &exact).await.unwrap();
    assert!(gone.is_right(), "{gone:?}");
    assert!(cms.get_opt("c").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents_first() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let nss: Api<Namespace> = Api::all(client.clone());
    let created = nss
        .create(
            &PostParams::default(),
            &namespace("team").label("a", "b").build(),
        )
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("plain"))
        .await
        .unwrap();
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["stowage.io/agent-cleanup".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let terminating = nss.get("team").await.unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert!(cms.get_opt("plain").await.unwrap().is_none());
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let s = assert_api_error(
        cms.create(&PostParams::default(), &cm("new")).await,
        403,
        "Forbidden",
    );
    assert!(s.message.contains("being terminated"), "{}", s.message);

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(nss.get_opt("team").await.unwrap().is_none());
}

#[tokio::test]
async fn owner_references_garbage_collect_dependents() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let owner = cms
        .create(&PostParams::default(), &cm("owner"))
        .await
        .unwrap();
    let other = cms
        .create(&PostParams::default(), &cm("other"))
        .await
        .unwrap();
    let reference =
        |o: &ConfigMap| k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: o.name_any(),
            uid: o.uid().unwrap(),
            ..Default::default()
        };
    let mut only = cm("only-owned");
    only.metadata.owner_references = Some(vec![reference(&owner)]);
    cms.create(&PostParams::default(), &only).await.unwrap();
    let mut shared = cm("shared");
    shared.metadata.owner_references = Some(vec![reference(&owner), reference(&other)]);
    cms.create(&PostParams::default(), &shared).await.unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("only-owned").await.unwrap().is_none());
    let survivor = cms.get("shared").await.unwrap();
    assert_eq!(survivor.owner_references().len(), 1);
    assert_eq!(survivor.owner_references()[0].name, "other");

    // Orphan propagation keeps dependents and drops the reference.
    cms.delete("other", &DeleteParams::orphan()).await.unwrap();
    assert!(
        cms.get("shared")
            .await
            .unwrap()
            .owner_references()
            .is_empty()
    );
}

#[tokio::test]
async fn events_are_recorded_through_events_v1_and_visible_as_core_events() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let n1 = nodes
        .create(
            &PostParams::default(),
            &node("n1").label("stowage.io/pool", "fast").build(),
        )
        .await
        .unwrap();
    assert_eq!(
        n1.status.unwrap().conditions.unwrap()[0].status,
        "True",
        "nodes keep their status on create"
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "stowage-controller".into(),
            instance: Some("test".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some("n1".into()),
        uid: n1.metadata.uid.clone(),
        ..Default::default()
    };
    let event = Publish {
        type_: EventType::Warning,
        reason: "PoolFull".into(),
        note: Some("no space".into()),
        action: "Reschedule".into(),
        secondary: None,
    };
    // kube-runtime's recorder puts Events about cluster-scoped objects in "default", which
    // Kubernetes 1.19 and 1.20 refuse for new-style Events (later versions accept it).
    let s = assert_api_error(recorder.publish(&event, &reference).await, 422, "Invalid");
    assert!(
        s.message.contains(
            "involvedObject.namespace: Invalid value: \"\": does not match event.namespace"
        ),
        "{}",
        s.message
    );
    // About a namespaced object they live in its namespace.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm1 = cms
        .create(&PostParams::default(), &cm("cm1"))
        .await
        .unwrap();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        name: Some("cm1".into()),
        namespace: Some("default".into()),
        uid: cm1.metadata.uid.clone(),
        ..Default::default()
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let v1: Api<Event> = Api::namespaced(client.clone(), "default");
    let listed = v1.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].series.as_ref().map(|s| s.count), Some(2));
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let core_events = core
        .list(&ListParams::default().fields("involvedObject.name=cm1,reason=PoolFull"))
        .await
        .unwrap();
    assert_eq!(core_events.items[0].message.as_deref(), Some("no space"));

    let too_long = Publish {
        note: Some("x".repeat(2000)),
        reason: "Other".into(),
        ..event
    };
    let s = assert_api_error(
        recorder.publish(&too_long, &reference).await,
        422,
        "Invalid",
    );
    assert!(s.message.contains("note"), "{}", s.message);
    // New-style Events about cluster-scoped objects live in "kube-system" only.
    let mut misplaced = listed.items[0].clone();
    misplaced.series = None;
    misplaced.regarding = Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some("n1".into()),
        uid: n1.metadata.uid.clone(),
        ..Default::default()
    });
    misplaced.metadata = kube::api::ObjectMeta {
        name: Some("misplaced".into()),
        namespace: Some("kube-public".into()),
        ..Default::default()
    };
    let public: Api<Event> = Api::namespaced(client.clone(), "kube-public");
    assert_api_error(
        public.create(&PostParams::default(), &misplaced).await,
        422,
        "Invalid",
    );
    misplaced.metadata.namespace = Some("default".into());
    assert_api_error(
        v1.create(&PostParams::default(), &misplaced).await,
        422,
        "Invalid",
    );
    misplaced.metadata.namespace = Some("kube-system".into());
    let system: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    system
        .create(&PostParams::default(), &misplaced)
        .await
        .unwrap();
}

#[tokio::test]
async fn dry_run_validates_without_storing() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let before = server.resource_version();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    cms.create(&dry, &cm("c")).await.unwrap();
    assert!(cms.get_opt("c").await.unwrap().is_none());
    assert_eq!(server.resource_version(), before);
    assert_eq!(server.request_count("create", "configmaps"), 1);
}

#[tokio::test]
async fn kubeconfig_lets_another_client_connect() {
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    let nss: Api<Namespace> = Api::all(client);
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");
    wait_for(WAIT, "the server answers /version", || async {
        server.client().apiserver_version().await.is_ok()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn claims_in_use_and_bound_volumes_are_protected_from_deletion_as_on_a_real_cluster() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    // StorageObjectInUseProtection admission adds the finalizers.
    let claim = pvcs
        .create(&PostParams::default(), &pvc("default", "data").build())
        .await
        .unwrap();
    assert_eq!(claim.finalizers(), ["kubernetes.io/pvc-protection"]);
    let volume = pvs
        .create(&PostParams::default(), &pv("vol").local("n1", "/d").build())
        .await
        .unwrap();
    assert_eq!(volume.finalizers(), ["kubernetes.io/pv-protection"]);

    // A claim a scheduled pod mounts stays, deleting, until the pod is gone; a pod not
    // scheduled yet does not hold it (1.19's pvc-protection controller: kubelet never
    // starts a pod that names a deleting claim).
    pods.create(
        &PostParams::default(),
        &pod("default", "app").claims(["data"]).node("n1").build(),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("default", "waiting").claims(["data"]).build(),
    )
    .await
    .unwrap();
    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    let held = pvcs.get("data").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.finalizers(), ["kubernetes.io/pvc-protection"]);
    pods.delete("app", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(
        pvcs.get_opt("data").await.unwrap().is_none(),
        "released with the pod, whatever the unscheduled pod names"
    );

    // A finished pod still on its node holds its claims until the pod object is gone.
    pvcs.create(&PostParams::default(), &pvc("default", "logs").build())
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("default", "job").claims(["logs"]).node("n1").build(),
    )
    .await
    .unwrap();
    pods.patch_status(
        "job",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    pvcs.delete("logs", &DeleteParams::default()).await.unwrap();
    assert!(
        pvcs.get("logs")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some(),
        "held by the Succeeded pod"
    );
    pods.delete("job", &DeleteParams::default()).await.unwrap();
    assert!(pvcs.get_opt("logs").await.unwrap().is_none());

    // A Bound PV stays, deleting, until it is not Bound any more.
    let set_phase = |phase: &'static str| {
        let pvs = pvs.clone();
        async move {
            let mut pv = pvs.get("vol").await.unwrap();
            pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            pvs.replace_status("vol", &PostParams::default(), &pv)
                .await
                .unwrap();
        }
    };
    set_phase("Bound").await;
    pvs.delete("vol", &DeleteParams::default()).await.unwrap();
    assert!(
        pvs.get("vol")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    set_phase("Released").await;
    assert!(
        pvs.get_opt("vol").await.unwrap().is_none(),
        "released once not Bound"
    );
}

/// kube-apiserver 1.19.16 (kubectl patch) and ValidatePersistentVolumeClaimUpdate of
/// 1.19–1.31: a claim's request never decreases, not even to a value above
/// `status.capacity` (1.32's RecoverVolumeExpansionFailure allows that); an unbound claim's
/// spec is immutable; a class is not set later on a claim created without one.
#[tokio::test]
async fn claims_never_shrink_and_their_spec_is_immutable_as_on_1_19() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    let classes: Api<StorageClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &storage_class("grows").allow_expansion(true).build(),
        )
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    pvcs.create(
        &PostParams::default(),
        &pvc("default", "data").class("grows").size("1Gi").build(),
    )
    .await
    .unwrap();

    // Unbound: the size is part of the immutable spec, and a decrease is refused besides.
    let s = assert_api_error(
        pvcs.patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "512Mi"}}}})),
        )
        .await,
        422,
        "Invalid",
    );
    assert!(
        s.message.contains("spec: Forbidden: spec is immutable after creation except resources.requests for bound claims")
            && s.message.contains("spec.resources.requests.storage: Forbidden: field can not be less than previous value"),
        "{}",
        s.message
    );

    pvcs.patch_status(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}})),
    )
    .await
    .unwrap();
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
    )
    .await
    .unwrap();
    // Back down to 1536Mi, still above status.capacity (1Gi): refused all the same.
    let s = assert_api_error(
        pvcs.patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "1536Mi"}}}})),
        )
        .await,
        422,
        "Invalid",
    );
    assert_eq!(
        s.message,
        "PersistentVolumeClaim \"data\" is invalid: spec.resources.requests.storage: Forbidden: field can not be less than previous value"
    );

    // No default class: the claim has none, and none can be set later.
    let classless = pvcs
        .create(&PostParams::default(), &pvc("default", "classless").build())
        .await
        .unwrap();
    assert_eq!(classless.spec.unwrap().storage_class_name, None);
    assert_api_error(
        pvcs.patch(
            "classless",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storageClassName": "grows"}})),
        )
        .await,
        422,
        "Invalid",
    );
}

/// The pod registry's graceful deletion (kube-apiserver 1.19.16, kubectl delete without
/// `--grace-period`): a pod bound to a node is Terminating, `deletionTimestamp` its grace
/// period ahead, until a kubelet confirms; an unscheduled or finished one goes at once; a
/// delete with a grace period of 0 ends it. testkit's kubelet stand-in confirms after
/// [`PodTermination::Kubelet`]'s delay; with [`PodTermination::NoKubelet`] (the real lane)
/// never.
#[tokio::test]
async fn bound_pods_terminate_gracefully_and_hold_their_claims_meanwhile() {
    let server = ApiServer::builder()
        .pod_termination(PodTermination::Kubelet {
            delay: std::time::Duration::from_millis(700),
        })
        .start()
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    pvcs.create(&PostParams::default(), &pvc("default", "data").build())
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("default", "app").claims(["data"]).node("n1").build(),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("default", "pending").build())
        .await
        .unwrap();

    pods.delete("pending", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        pods.get_opt("pending").await.unwrap().is_none(),
        "unscheduled: at once"
    );

    let deleted = pods.delete("app", &DeleteParams::default()).await.unwrap();
    let terminating = deleted.left().expect("the pod, still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    assert!(
        pvcs.get_opt("data").await.unwrap().is_some(),
        "held by the terminating pod"
    );
    // A longer grace period changes nothing.
    pods.delete("app", &DeleteParams::default().grace_period(60))
        .await
        .unwrap();
    assert_eq!(
        pods.get("app")
            .await
            .unwrap()
            .metadata
            .deletion_grace_period_seconds,
        Some(30)
    );
    wait_for(WAIT, "the kubelet stand-in confirms", || async {
        pods.get_opt("app").await.unwrap().is_none()
    })
    .await
    .unwrap();
    assert!(
        pvcs.get_opt("data").await.unwrap().is_none(),
        "released with the pod"
    );

    // No kubelet: Terminating until deleted with a grace period of 0.
    let server = ApiServer::builder()
        .pod_termination(PodTermination::NoKubelet)
        .start()
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(
        &PostParams::default(),
        &pod("default", "app").node("n1").build(),
    )
    .await
    .unwrap();
    pods.delete("app", &DeleteParams::default().grace_period(5))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        pods.get("app")
            .await
            .unwrap()
            .metadata
            .deletion_grace_period_seconds,
        Some(5)
    );
    pods.delete("app", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("app").await.unwrap().is_none());
}

/// The garbage collector deletes a dependent pod with the default grace period (kube-apiserver
/// and kube-controller-manager 1.19.16: a bound pod owned by a deleted ConfigMap was
/// Terminating, grace 30), and a namespace waits for its pods to go, as the namespace
/// controller does.
#[tokio::test]
async fn cascades_delete_bound_pods_gracefully_too() {
    let server = ApiServer::builder()
        .pod_termination(PodTermination::Kubelet {
            delay: std::time::Duration::from_millis(500),
        })
        .start()
        .await
        .unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut owned = pod("default", "owned").node("n1").build();
    owned.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &owned).await.unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("owned").await.unwrap();
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    wait_for(WAIT, "the kubelet stand-in confirms", || async {
        pods.get_opt("owned").await.unwrap().is_none()
    })
    .await
    .unwrap();

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &namespace("team").build())
        .await
        .unwrap();
    let team: Api<Pod> = Api::namespaced(client.clone(), "team");
    team.create(
        &PostParams::default(),
        &pod("team", "app").node("n1").build(),
    )
    .await
    .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(
        team.get("app")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
            && nss.get_opt("team").await.unwrap().is_some(),
        "the namespace waits for its terminating pod"
    );
    wait_for(WAIT, "the namespace goes with its pod", || async {
        nss.get_opt("team").await.unwrap().is_none()
    })
    .await
    .unwrap();
}
