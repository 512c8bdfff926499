//! Lists: selectors, pagination, scopes, discovery and representations.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, Discovery, ResourceExt,
    api::{ListParams, PostParams, VersionMatch},
    discovery::{Scope, verbs},
};
use serde_json::json;
use stowage_testkit::{ApiServer, fixtures::pod};

use crate::common::{assert_api_error, raw};

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.name_any()).collect()
}

#[tokio::test]
async fn label_selectors_filter_lists() {
    let server = ApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    for (name, app, tier) in [
        ("a", "web", Some("front")),
        ("b", "web", None),
        ("c", "db", Some("back")),
        ("d", "cache", Some("back")),
    ] {
        let mut p = pod("default", name).label("app", app);
        if let Some(t) = tier {
            p = p.label("tier", t);
        }
        pods.create(&PostParams::default(), &p.build())
            .await
            .unwrap();
    }
    let list = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            names(
                &pods
                    .list(&ListParams::default().labels(sel))
                    .await
                    .unwrap()
                    .items,
            )
        }
    };
    assert_eq!(list("app=web").await, ["a", "b"]);
    assert_eq!(list("app==web").await, ["a", "b"]);
    assert_eq!(list("app!=web").await, ["c", "d"]);
    assert_eq!(list("app in (db, cache)").await, ["c", "d"]);
    assert_eq!(list("tier notin (back)").await, ["a", "b"]);
    assert_eq!(list("tier").await, ["a", "c", "d"]);
    assert_eq!(list("!tier").await, ["b"]);
    assert_eq!(list("app=web,tier").await, ["a"]);
    assert_api_error(
        pods.list(&ListParams::default().labels("app in ()")).await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn field_selectors_support_what_the_real_server_supports() {
    let server = ApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(
        &PostParams::default(),
        &pod("default", "on-n1").node("n1").build(),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("default", "pending").build())
        .await
        .unwrap();
    let on = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(names(&on.items), ["on-n1"]);
    let unscheduled = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .unwrap();
    assert_eq!(names(&unscheduled.items), ["pending"]);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name!=pending,metadata.namespace=default"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), ["on-n1"]);
    let s = assert_api_error(
        pods.list(&ListParams::default().fields("spec.priority=1"))
            .await,
        400,
        "BadRequest",
    );
    assert!(
        s.message
            .contains("field label not supported: spec.priority"),
        "{}",
        s.message
    );
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    assert_api_error(
        cms.list(&ListParams::default().fields("spec.nodeName=n1"))
            .await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn pagination_returns_every_object_once_from_a_consistent_snapshot() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut expected = BTreeSet::new();
    for i in 0..23 {
        let name = format!("cm-{i:02}");
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
        expected.insert(name);
    }
    let first = cms.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(13));
    let list_rv = first.metadata.resource_version.clone().unwrap();

    // Changes after the first page do not leak into later pages.
    cms.delete("cm-20", &Default::default()).await.unwrap();
    let late = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("cm-99".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &late).await.unwrap();

    let mut seen: Vec<String> = names(&first.items);
    let mut token = first.metadata.continue_;
    while let Some(t) = token {
        let page = cms
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(list_rv.as_str())
        );
        seen.extend(names(&page.items));
        token = page.metadata.continue_;
    }
    assert_eq!(seen.len(), 23, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);

    // An exact read at the old version sees the old state; the current list sees the new.
    let exact = ListParams {
        resource_version: Some(list_rv.clone()),
        version_match: Some(VersionMatch::Exact),
        ..Default::default()
    };
    let old = cms.list(&exact).await.unwrap();
    assert!(names(&old.items).contains(&"cm-20".to_string()));
    let now = cms.list(&ListParams::default()).await.unwrap();
    assert!(
        names(&now.items).contains(&"cm-99".to_string())
            && !names(&now.items).contains(&"cm-20".to_string())
    );
}

#[tokio::test]
async fn lists_span_namespaces_and_can_return_metadata_only() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod("default", "a").build())
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &pod("kube-system", "b").build())
        .await
        .unwrap();
    let all: Api<Pod> = Api::all(client.clone());
    let listed = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&listed.items), ["a", "b"]);
    let meta = all.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 2);
    assert_eq!(
        meta.items[1].metadata.namespace.as_deref(),
        Some("kube-system")
    );

    // Typed list items carry no apiVersion/kind on the wire, like the real server's.
    let (code, _, body) = raw(&server, "GET", "/api/v1/pods", "application/json", "").await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "PodList");
    assert!(body["items"][0].get("kind").is_none());
    assert_eq!(
        body["metadata"]["resourceVersion"],
        json!(server.resource_version().to_string())
    );
}

#[tokio::test]
async fn discovery_finds_every_builtin_kind() {
    let server = ApiServer::start().await.unwrap();
    let discovery = Discovery::new(server.client()).run().await.unwrap();
    let groups: BTreeSet<&str> = discovery.groups().map(|g| g.name()).collect();
    for g in [
        "",
        "storage.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.contains(g), "{groups:?}");
    }
    let core = discovery.get("").unwrap();
    let (pvc, caps) = core.recommended_kind("PersistentVolumeClaim").unwrap();
    assert_eq!(pvc.plural, "persistentvolumeclaims");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation(verbs::WATCH));
    assert!(caps.subresources.iter().any(|(sub, _)| sub.plural == "persistentvolumeclaims/status" || sub.plural == "status"));
    let (_, sc_caps) = discovery
        .get("storage.k8s.io")
        .unwrap()
        .recommended_kind("StorageClass")
        .unwrap();
    assert_eq!(sc_caps.scope, Scope::Cluster);

    let aggregated = Discovery::new(server.client())
        .run_aggregated()
        .await
        .unwrap();
    assert!(
        aggregated
            .get("coordination.k8s.io")
            .unwrap()
            .recommended_kind("Lease")
            .is_some()
    );
    assert!(
        aggregated
            .get("")
            .unwrap()
            .recommended_kind("Node")
            .is_some()
    );

    let version = server.client().apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
}
