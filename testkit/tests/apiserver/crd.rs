//! CustomResourceDefinitions: served on creation, schema-checked, removed with their objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Discovery, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{DynamicObject, GroupVersionKind},
};
use serde_json::json;
use stowage_testkit::{ApiServer, wait_for};

use crate::common::{
    LocalVolume, LocalVolumeStatus, WAIT, assert_api_error, install_crd, local_volume, raw,
};

#[tokio::test]
async fn creating_a_crd_serves_the_custom_resource() {
    let server = ApiServer::start().await.unwrap();
    let before = Api::<LocalVolume>::all(server.client())
        .list(&Default::default())
        .await;
    assert_api_error(before, 404, "NotFound");

    let lvs = install_crd(&server).await;
    let crd = Api::<CustomResourceDefinition>::all(server.client())
        .get("localvolumes.stowage.io")
        .await
        .unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let created = lvs
        .create(&PostParams::default(), &local_volume("lv-1", "n1"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.spec.node, "n1");

    let discovery = Discovery::new(server.client())
        .filter(&["stowage.io"])
        .run()
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("stowage.io", "v1alpha1", "LocalVolume");
    let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap();
    assert_eq!(ar.plural, "localvolumes");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let dynamic: Api<DynamicObject> = Api::all_with(server.client(), &ar);
    assert_eq!(
        dynamic.list(&Default::default()).await.unwrap().items[0].name_any(),
        "lv-1"
    );
}

#[tokio::test]
async fn custom_resource_status_is_a_subresource_and_generation_tracks_spec() {
    let server = ApiServer::start().await.unwrap();
    let lvs = install_crd(&server).await;
    let mut lv = local_volume("lv-1", "n1");
    lv.status = Some(LocalVolumeStatus {
        phase: Some("Ready".into()),
    });
    let created = lvs.create(&PostParams::default(), &lv).await.unwrap();
    assert_eq!(created.status, None, "status is dropped on create");

    let status = PatchParams::apply("stowage-agent");
    let patch = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "LocalVolume", "status": {"phase": "Ready"}, "spec": {"node": "elsewhere", "sizeBytes": 1}});
    let after = lvs
        .patch_status("lv-1", &status, &Patch::Apply(&patch))
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Ready")
    );
    assert_eq!(after.spec.node, "n1");
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes leave generation alone"
    );

    let spec = lvs
        .patch(
            "lv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sizeBytes": 2}, "status": {"phase": "Gone"}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(spec.status.unwrap().phase.as_deref(), Some("Ready"));
    let labels = lvs
        .patch(
            "lv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labels.metadata.generation,
        Some(2),
        "metadata changes leave generation alone"
    );

    // Custom resources allow no unconditional PUT.
    let mut unconditional = labels.clone();
    unconditional.metadata.resource_version = None;
    let s = assert_api_error(
        lvs.replace("lv-1", &PostParams::default(), &unconditional)
            .await,
        422,
        "Invalid",
    );
    assert!(
        s.message.contains("must be specified for an update"),
        "{}",
        s.message
    );
    lvs.replace("lv-1", &PostParams::default(), &labels)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_crd_schema_prunes_unknown_fields_and_rejects_wrong_types() {
    let server = ApiServer::start().await.unwrap();
    install_crd(&server).await;
    let path = "/apis/stowage.io/v1alpha1/localvolumes";
    let body = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "LocalVolume", "metadata": {"name": "lv-1"}, "spec": {"node": "n1", "sizeBytes": 5, "bogus": true}});
    let (code, headers, created) =
        raw(&server, "POST", path, "application/json", &body.to_string()).await;
    assert_eq!(code, 201, "{created}");
    assert!(created["spec"].get("bogus").is_none());
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "warning" && v.contains("spec.bogus")),
        "{headers:?}"
    );

    let strict = format!("{path}?fieldValidation=Strict");
    let body = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "LocalVolume", "metadata": {"name": "lv-2"}, "spec": {"node": "n1", "sizeBytes": 5, "bogus": true}});
    let (code, _, status) = raw(
        &server,
        "POST",
        &strict,
        "application/json",
        &body.to_string(),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (400, Some("BadRequest")),
        "{status}"
    );

    let body = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "LocalVolume", "metadata": {"name": "lv-3"}, "spec": {"node": 7}});
    let (code, _, status) = raw(&server, "POST", path, "application/json", &body.to_string()).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"spec.node") && fields.contains(&"spec.sizeBytes"),
        "{fields:?}"
    );

    // Strategic merge patch does not exist for custom resources.
    let lvs: Api<LocalVolume> = Api::all(server.client());
    let smp = lvs
        .patch(
            "lv-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"sizeBytes": 6}})),
        )
        .await;
    assert_api_error(smp, 415, "UnsupportedMediaType");
}

#[tokio::test]
async fn deleting_a_crd_removes_its_objects_and_then_the_endpoints() {
    let server = ApiServer::start().await.unwrap();
    let lvs = install_crd(&server).await;
    let mut held = local_volume("held", "n1");
    held.metadata.finalizers = Some(vec!["stowage.io/agent-cleanup".into()]);
    lvs.create(&PostParams::default(), &held).await.unwrap();
    lvs.create(&PostParams::default(), &local_volume("plain", "n1"))
        .await
        .unwrap();

    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    crds.delete("localvolumes.stowage.io", &DeleteParams::default())
        .await
        .unwrap();
    assert!(lvs.get_opt("plain").await.unwrap().is_none());
    assert!(
        lvs.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(
        crds.get("localvolumes.stowage.io")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let s = assert_api_error(
        lvs.create(&PostParams::default(), &local_volume("new", "n1"))
            .await,
        405,
        "MethodNotAllowed",
    );
    assert!(s.message.contains("terminating"), "{}", s.message);

    lvs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for(WAIT, "the CRD is gone", || async {
        crds.get_opt("localvolumes.stowage.io")
            .await
            .unwrap()
            .is_none()
    })
    .await
    .unwrap();
    assert_api_error(lvs.list(&Default::default()).await, 404, "NotFound");
}

#[tokio::test]
async fn a_crd_whose_defaults_break_their_own_schema_is_refused() {
    let server = ApiServer::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let crd = |name: &str, driver: serde_json::Value| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{name}.example.com")},
            "spec": {
                "group": "example.com",
                "names": {"plural": name, "kind": "Widget"},
                "scope": "Cluster",
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "status": {"type": "object", "properties": {
                            "pools": {"type": "array", "items": {"type": "object", "properties": {
                                "driver": driver
                            }}}
                        }}
                    }}}
                }]
            }
        }))
        .unwrap()
    };
    let wrong = crds
        .create(
            &PostParams::default(),
            &crd("wrongs", json!({"type": "string", "default": 3})),
        )
        .await;
    let status = assert_api_error(wrong, 422, "Invalid");
    assert!(
        status.message.contains(
            "spec.versions[0].schema.openAPIV3Schema.properties[status].properties[pools].items.properties[driver].default: Invalid value: 3"
        ),
        "{}",
        status.message
    );
    let bounded = crds
        .create(
            &PostParams::default(),
            &crd(
                "boundeds",
                json!({"type": "integer", "minimum": 1, "default": 0}),
            ),
        )
        .await;
    assert_api_error(bounded, 422, "Invalid");
    // Valid defaults are fine, the empty string included.
    for (name, default) in [("goods", "hostpath"), ("empties", "")] {
        crds.create(
            &PostParams::default(),
            &crd(name, json!({"type": "string", "default": default})),
        )
        .await
        .unwrap();
    }
}
