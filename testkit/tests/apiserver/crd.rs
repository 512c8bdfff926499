//! CustomResourceDefinitions: served on creation, schema-checked, removed with their objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Discovery, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};
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
            "spec.versions[0].schema.openAPIV3Schema.properties[status].properties[pools].items.properties[driver].default: Invalid value: \"integer\":  in body must be of type string: \"integer\""
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

fn raw_crd(name: &str, version_extra: Value, schema: Value) -> String {
    let mut version = json!({"name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": schema}});
    if let (Some(v), Some(extra)) = (version.as_object_mut(), version_extra.as_object()) {
        v.extend(extra.clone());
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{name}.kit.example.com")},
        "spec": {
            "group": "kit.example.com",
            "scope": "Cluster",
            "names": {"plural": name, "kind": "Thing"},
            "bogusField": 1,
            "versions": [version]
        }
    })
    .to_string()
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

/// What kube-apiserver 1.19.16 answered to the same CRDs (kubectl create --validate=false):
/// structural schemas required, patterns that compile, defaults validated (types, enums,
/// patterns, formats, no unknown fields), and fields
/// its CRD types lack (`selectableFields`, anything unknown) silently dropped.
#[tokio::test]
async fn v1_crds_need_structural_schemas_and_lose_fields_1_19_does_not_know() {
    let server = ApiServer::start().await.unwrap();
    let obj = |props: Value| json!({"type": "object", "properties": {"spec": {"type": "object", "properties": props}}});
    let refused = [
        (
            json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}}),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
        ),
        (
            json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
            "spec.versions[0].schema.openAPIV3Schema.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified",
        ),
        (
            json!({"type": "object", "properties": {"spec": {"type": "array"}}}),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].items: Required value: must be specified",
        ),
        (
            json!({"properties": {"spec": {"type": "object"}}}),
            "spec.versions[0].schema.openAPIV3Schema.type: Required value: must not be empty at the root",
        ),
        (
            json!({"type": "object", "properties": {"spec": {"type": "object", "anyOf": [{"properties": {"a": {"type": "string"}}}]}}}),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].anyOf[0].properties[a].type: Forbidden: must be empty to be structural",
        ),
        (
            obj(json!({"size": {"type": "integer", "default": 9223372036854775808u64}})),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[size].default: Invalid value: \"number\":  in body must be of type integer: \"number\"",
        ),
        (
            obj(json!({"node": {"type": "string", "pattern": "^[a-z]+$", "default": "ABC"}})),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[node].default: Invalid value: \"\":  in body should match '^[a-z]+$'",
        ),
        (
            obj(json!({"when": {"type": "string", "format": "date-time", "default": "x"}})),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[when].default: Invalid value: \"x\":  in body must be of type date-time: \"x\"",
        ),
        (
            obj(
                json!({"o": {"type": "object", "properties": {"a": {"type": "string"}}, "default": {"a": "x", "zz": 1}}}),
            ),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[o].default: Invalid value: {\"a\":\"x\",\"zz\":1}: must not have unknown fields",
        ),
        (
            obj(json!({"o": {"type": "string", "enum": ["a", "b"], "default": "c"}})),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[o].default: Unsupported value: \"c\": supported values: \"a\", \"b\"",
        ),
        (
            obj(json!({"o": {"type": "string", "pattern": "(["}})),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[o].pattern: Invalid value: \"([\": must be a valid regular expression, but isn't",
        ),
    ];
    for (schema, message) in refused {
        let (code, _, body) = raw(
            &server,
            "POST",
            CRDS,
            "application/json",
            &raw_crd("bads", json!({}), schema),
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (422, Some("Invalid")),
            "{body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "expected {message:?} in {body}"
        );
    }

    // A format 1.19 does not know is no error.
    let schema = obj(json!({"o": {"type": "string", "format": "bogus"}}));
    let (code, _, body) = raw(
        &server,
        "POST",
        CRDS,
        "application/json",
        &raw_crd("formats", json!({}), schema),
    )
    .await;
    assert_eq!(code, 201, "{body}");

    // Untyped is fine where unknown fields are preserved.
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {"raw": {"x-kubernetes-preserve-unknown-fields": true}}}}});
    let (code, _, body) = raw(
        &server,
        "POST",
        CRDS,
        "application/json",
        &raw_crd("rawthings", json!({}), schema),
    )
    .await;
    assert_eq!(code, 201, "{body}");

    // selectableFields (1.30+) and unknown fields are dropped, as 1.19 drops them; a field
    // selector on the would-be selectable field is then refused.
    let schema = obj(json!({"node": {"type": "string"}}));
    let (code, _, body) = raw(
        &server,
        "POST",
        CRDS,
        "application/json",
        &raw_crd(
            "things",
            json!({"selectableFields": [{"jsonPath": ".spec.node"}]}),
            schema,
        ),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert!(body["spec"].get("bogusField").is_none(), "{body}");
    assert!(
        body["spec"]["versions"][0]
            .get("selectableFields")
            .is_none(),
        "{body}"
    );
    wait_for(WAIT, "things are served", || async {
        raw(&server, "GET", "/apis/kit.example.com/v1/things", "", "")
            .await
            .0
            == 200
    })
    .await
    .unwrap();
    let (code, _, body) = raw(
        &server,
        "GET",
        "/apis/kit.example.com/v1/things?fieldSelector=spec.node%3Dn1",
        "",
        "",
    )
    .await;
    assert_eq!(code, 400, "{body}");
}

/// Custom resources against their schema, as kube-apiserver 1.19.16 answered (kubectl
/// create): integers decode to int64, so one above i64::MAX (the ledger's `MAX_BYTES` is
/// 2^63) is "number", not "integer", and refused; `2.0` is an integer; `pattern` and
/// `date-time` are checked; `int32`'s range is not.
#[tokio::test]
async fn custom_resources_are_validated_as_1_19_validates_them() {
    let server = ApiServer::start().await.unwrap();
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "size": {"type": "integer", "format": "int64"},
        "count": {"type": "integer", "format": "int32"},
        "node": {"type": "string", "pattern": "^[a-z]+$"},
        "when": {"type": "string", "format": "date-time"},
    }}}});
    let (code, _, body) = raw(
        &server,
        "POST",
        CRDS,
        "application/json",
        &raw_crd("things", json!({}), schema),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let path = "/apis/kit.example.com/v1/things";
    wait_for(WAIT, "things are served", || async {
        raw(&server, "GET", path, "", "").await.0 == 200
    })
    .await
    .unwrap();
    let mut n = 0;
    let mut create = |spec: &str| {
        n += 1;
        let body = format!(
            r#"{{"apiVersion":"kit.example.com/v1","kind":"Thing","metadata":{{"name":"t{n}"}},"spec":{spec}}}"#
        );
        let server = &server;
        async move { raw(server, "POST", path, "application/json", &body).await }
    };
    for ok in [
        r#"{"size": 9223372036854775807}"#,
        r#"{"size": 2.0}"#,
        r#"{"count": 3000000000}"#,
        r#"{"node": "abc", "when": "2026-12-06T06:16:30Z"}"#,
        r#"{"when": "2026-12-06T06:16:30.378578509+01:00"}"#,
    ] {
        let (code, _, body) = create(ok).await;
        assert_eq!(code, 201, "{ok}: {body}");
    }
    for (bad, message) in [
        (
            r#"{"size": 9223372036854775808}"#,
            r#"spec.size: Invalid value: "number": spec.size in body must be of type integer: "number""#,
        ),
        (
            r#"{"size": 18446744073709551616}"#,
            r#"spec.size: Invalid value: "number": spec.size in body must be of type integer: "number""#,
        ),
        (
            r#"{"size": 1.5}"#,
            r#"spec.size: Invalid value: "number": spec.size in body must be of type integer: "number""#,
        ),
        (
            r#"{"node": "ABC"}"#,
            r#"spec.node: Invalid value: "": spec.node in body should match '^[a-z]+$'"#,
        ),
        (
            r#"{"when": "yesterday"}"#,
            r#"spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday""#,
        ),
    ] {
        let (code, _, body) = create(bad).await;
        assert_eq!(code, 422, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "expected {message:?} in {body}"
        );
    }
}
