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

fn named_cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// kube-apiserver 1.19.16 after an etcd compaction (`/v3/kv/compaction`) under a paginated
/// list: the old token gets `410 Expired` with etcd3 store's `inconsistentContinue` message
/// and, in the Status's `metadata.continue`, a token that lists the rest at the latest
/// resourceVersion (objects created or deleted since the first page show up or not).
#[tokio::test]
async fn an_expired_continue_token_offers_the_rest_of_the_list_at_the_latest_version() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    for name in ["a", "b", "c", "d", "e"] {
        cms.create(&PostParams::default(), &named_cm(name))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    cms.delete("c", &Default::default()).await.unwrap();
    cms.create(&PostParams::default(), &named_cm("f"))
        .await
        .unwrap();
    server.compact();

    let token = first.metadata.continue_.unwrap();
    let expired = assert_api_error(
        cms.list(&ListParams::default().limit(2).continue_token(&token))
            .await,
        410,
        "Expired",
    );
    assert_eq!(
        expired.message,
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
    );
    let inconsistent = expired
        .metadata
        .and_then(|m| m.continue_)
        .expect("the 410 offers a token for the rest");

    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&inconsistent))
        .await
        .unwrap();
    assert_eq!(names(&rest.items), ["d", "e"], "c is gone, after b");
    let latest = server.resource_version().to_string();
    assert_eq!(
        rest.metadata.resource_version.as_deref(),
        Some(latest.as_str())
    );
    // Its own token is an ordinary one at that (latest) version.
    let last = cms
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(rest.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&last.items), ["f"], "created after the first page");
    assert_eq!(
        last.metadata.resource_version.as_deref(),
        Some(latest.as_str())
    );
}

/// kube-apiserver 1.19.16 (curl): a get or list at a resourceVersion ahead of the watch cache
/// waits 3 s (`waitUntilFreshAndBlock`), then answers `504 Timeout` with `Retry-After: 1`;
/// it is answered at once when the version is reached meanwhile. An exact read, or a
/// limited one (both go to etcd), is etcd's `500` at once.
#[tokio::test]
async fn reads_ahead_of_the_server_wait_3_s_then_get_504() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &named_cm("a"))
        .await
        .unwrap();
    let current = server.resource_version();
    let ahead = current + 100;
    for path in [
        format!("/api/v1/namespaces/default/configmaps?resourceVersion={ahead}"),
        format!("/api/v1/namespaces/default/configmaps/a?resourceVersion={ahead}"),
    ] {
        let started = std::time::Instant::now();
        let (code, headers, body) = raw(&server, "GET", &path, "", "").await;
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(2900),
            "{path}: answered after {waited:?}"
        );
        assert_eq!(
            (code, body["reason"].as_str()),
            (504, Some("Timeout")),
            "{body}"
        );
        assert_eq!(
            body["message"],
            format!("Timeout: Too large resource version: {ahead}, current: {current}")
        );
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
        assert_eq!(
            body["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert!(
            headers.contains(&("retry-after".into(), "1".into())),
            "{headers:?}"
        );
    }

    // Reached while waiting: answered then, at (at least) that version.
    let next = current + 1;
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            cms.create(&PostParams::default(), &named_cm("b"))
                .await
                .unwrap();
        })
    };
    let (code, _, body) = raw(
        &server,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={next}"),
        "",
        "",
    )
    .await;
    writer.await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));

    let ahead = server.resource_version() + 100;
    for query in [
        format!("resourceVersion={ahead}&resourceVersionMatch=Exact"),
        format!("resourceVersion={ahead}&limit=2"),
    ] {
        let started = std::time::Instant::now();
        let (code, _, body) = raw(
            &server,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?{query}"),
            "",
            "",
        )
        .await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{query}"
        );
        assert_eq!(code, 500, "{query}: {body}");
        assert_eq!(
            body["message"],
            "etcdserver: mvcc: required revision is a future revision"
        );
    }
}

/// kube-apiserver 1.19.16: a limited list with a resourceVersion and no
/// `resourceVersionMatch` reads exactly that version (etcd3 store's "legacy case").
#[tokio::test]
async fn a_limited_list_at_a_resource_version_reads_that_version() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &named_cm("a"))
        .await
        .unwrap();
    let then = server.resource_version().to_string();
    cms.create(&PostParams::default(), &named_cm("b"))
        .await
        .unwrap();
    let list = cms
        .list(&ListParams {
            resource_version: Some(then.clone()),
            limit: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&list.items), ["a"]);
    assert_eq!(
        list.metadata.resource_version.as_deref(),
        Some(then.as_str())
    );
}
