//! Watches: what kube-runtime's watcher and reflector rely on.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{reflector, watcher},
};
use serde_json::json;
use stowage_testkit::{ApiServer, fixtures::pvc, wait_for};

use crate::common::{WAIT, assert_api_error};

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `name → resourceVersion` for every object on the server.
async fn server_state<K>(api: &Api<K>) -> BTreeMap<String, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap()))
        .collect()
}

#[tokio::test]
async fn reflector_sees_every_change_in_order() {
    let server = ApiServer::start().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    // Some objects exist before the reflector starts; a small page size makes the initial
    // list paginate.
    for i in 0..12 {
        pvcs.create(
            &PostParams::default(),
            &pvc("default", &format!("early-{i}")).build(),
        )
        .await
        .unwrap();
    }
    let (store, writer) = reflector::store();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = reflector::reflector(
        writer,
        watcher(pvcs.clone(), watcher::Config::default().page_size(5)),
    );
    let task = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            let _ = tx.send(ev);
        }
    });
    store.wait_until_ready().await.unwrap();
    assert_eq!(store.state().len(), 12);

    for i in 0..30 {
        pvcs.create(
            &PostParams::default(),
            &pvc("default", &format!("claim-{i}")).build(),
        )
        .await
        .unwrap();
    }
    for i in (0..30).step_by(3) {
        let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
        pvcs.patch(
            &format!("claim-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    for i in (0..30).step_by(5) {
        pvcs.delete(&format!("claim-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    pvcs.delete("early-0", &DeleteParams::default())
        .await
        .unwrap();

    let expected = server_state(&pvcs).await;
    let rv = |o: &PersistentVolumeClaim| o.resource_version().unwrap().parse::<u64>().unwrap();
    wait_for(WAIT, "the reflector matches the server", || async {
        let cached: BTreeMap<String, String> = store
            .state()
            .iter()
            .map(|o| (o.name_any(), o.resource_version().unwrap()))
            .collect();
        cached == expected
    })
    .await
    .unwrap();

    // After the initial list, events arrive in resourceVersion order, one per change. The
    // reflector updates its store before yielding an event, so keep reading until all came.
    // A deleted claim changes twice: deletionTimestamp set (its pvc-protection finalizer
    // holds it), then gone once the protection controller sees no pod using it.
    let expected_changes = 30 + 10 + 2 * (6 + 1);
    let mut last = 0;
    let mut changes = 0;
    while changes < expected_changes {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let watcher::Event::Apply(o) | watcher::Event::Delete(o) = ev.unwrap() {
            assert!(rv(&o) > last, "{} after {last}", rv(&o));
            last = rv(&o);
            changes += 1;
        }
    }
    assert!(rx.try_recv().is_err(), "no more events than changes");
    let touched = store
        .state()
        .iter()
        .filter(|o| o.labels().contains_key("touched"))
        .count();
    assert_eq!(
        touched,
        10 - 2,
        "claims 0 and 15 were touched and then deleted"
    );
    task.abort();
}

#[tokio::test]
async fn a_watch_resumed_from_a_recent_version_misses_nothing() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let from = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // Changes happen while nobody is watching.
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.delete("b", &DeleteParams::default()).await.unwrap();

    let events: Vec<(String, String)> = cms
        .watch(&WatchParams::default().disable_bookmarks(), &from)
        .await
        .unwrap()
        .take(3)
        .map_ok(|e| match e {
            WatchEvent::Added(o) => ("ADDED".to_string(), o.name_any()),
            WatchEvent::Modified(o) => ("MODIFIED".to_string(), o.name_any()),
            WatchEvent::Deleted(o) => ("DELETED".to_string(), o.name_any()),
            other => (format!("{other:?}"), String::new()),
        })
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<(String, String)> = [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
    assert_eq!(events, expected);
}

#[tokio::test]
async fn a_watch_from_a_too_old_version_gets_410_gone() {
    let server = ApiServer::builder().history_limit(5).start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}")))
            .await
            .unwrap();
    }
    let mut stream = cms
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &first.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}")
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );

    // Continue tokens expire with the history too.
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    cms.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    server.compact();
    let token = page.metadata.continue_.unwrap();
    assert_api_error(
        cms.list(&ListParams::default().limit(2).continue_token(&token))
            .await,
        410,
        "Expired",
    );

    // A reflector started after compaction still works: it lists first.
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(cms.clone(), watcher::Config::default()))
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await.unwrap();
    assert_eq!(store.state().len(), 12);
    task.abort();
}

#[tokio::test]
async fn bookmarks_carry_the_latest_version() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let created = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    // Writes to another kind move the global resourceVersion; bookmarks follow it.
    let others: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    others
        .create(&PostParams::default(), &pvc("default", "x").build())
        .await
        .unwrap();
    let target = server.resource_version();
    loop {
        match stream.next().await {
            Some(Ok(WatchEvent::Bookmark(b))) => {
                if b.metadata.resource_version.parse::<u64>().unwrap() >= target {
                    break;
                }
            }
            other => panic!("expected only bookmarks, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn watch_timeouts_end_the_stream() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let stream = cms
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(events.is_empty());
}

#[tokio::test]
async fn objects_that_stop_matching_a_selector_are_seen_as_deleted() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut labelled = cm("a");
    labelled
        .labels_mut()
        .insert("stowage.io/managed".into(), "true".into());
    let created = cms.create(&PostParams::default(), &labelled).await.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams::default()
                .disable_bookmarks()
                .labels("stowage.io/managed=true"),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"stowage.io/managed": "false"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ignored": "yes"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"stowage.io/managed": "true"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(WatchEvent::Deleted(_)))
    ));
    match stream.next().await {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.data.unwrap()["ignored"], "yes"),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_lists_send_initial_events_then_a_bookmark() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    for n in ["a", "b", "c"] {
        cms.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        reflector::reflector(
            writer,
            watcher(cms.clone(), watcher::Config::default().streaming_lists()),
        )
        .for_each(|_| async {}),
    );
    store.wait_until_ready().await.unwrap();
    assert_eq!(store.state().len(), 3);
    cms.create(&PostParams::default(), &cm("d")).await.unwrap();
    wait_for(WAIT, "the streamed reflector sees d", || async {
        store.state().len() == 4
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test]
async fn a_reflector_relists_after_its_version_is_compacted_away() {
    // Long bookmark interval: the watcher's resourceVersion must stay behind the compaction.
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(cms.clone(), watcher::Config::default()))
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await.unwrap();

    // Other kinds move the resourceVersion past the watcher's; then history is compacted
    // and the watch drops, so the resumed watch gets 410 and the watcher lists again.
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    pvcs.create(&PostParams::default(), &pvc("default", "x").build())
        .await
        .unwrap();
    server.compact();
    server.faults().close_watches_now();
    wait_for(WAIT, "the watch is closed", || async {
        server.faults().counts().closed_watches >= 1
    })
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("b")).await.unwrap();

    wait_for(WAIT, "the reflector relisted", || async {
        server.request_count("list", "configmaps") >= 2
    })
    .await
    .unwrap();
    wait_for(WAIT, "the reflector has both objects", || async {
        store.state().len() == 2
    })
    .await
    .unwrap();
    task.abort();
}

#[tokio::test]
async fn shutting_down_ends_open_watches() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let stream = cms
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    server.shutdown().await;
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the initial ADDED, then the end");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cms.list(&ListParams::default()).await.is_err());
}

/// kube-apiserver 1.19.16 (curl): a watch from a resourceVersion the server has not reached
/// is no error; it waits, and sends only the changes after that version.
#[tokio::test]
async fn a_watch_from_a_future_version_sends_only_what_comes_after_it() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let from = server.resource_version() + 3;
    let mut stream = cms
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &from.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    for i in 1..=6 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(WatchEvent::Added(o))) => seen.push(o.name_any()),
            other => panic!("expected ADDED events only, got {other:?}"),
        }
    }
    assert_eq!(seen, ["c4", "c5", "c6"], "c1..c3 are at or below {from}");
}

/// kube-apiserver 1.19.16 (curl, `allowWatchBookmarks=true`): a bookmark about a minute
/// after the watch starts (`defaultBookmarkFrequency`), and one 2 s before its
/// `timeoutSeconds` end; none while nothing newer than the watch's start was written.
#[tokio::test]
async fn bookmarks_come_a_minute_apart_and_just_before_the_timeout() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let params = WatchParams {
        bookmarks: true,
        ..WatchParams::default()
    }
    .timeout(4);

    // Nothing written after the start: no bookmark at all, then the end.
    let quiet = cms
        .watch(&params, &server.resource_version().to_string())
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, quiet.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(events.is_empty(), "{events:?}");

    let started = std::time::Instant::now();
    let mut stream = cms
        .watch(&params, &server.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        events.push((e.unwrap(), started.elapsed()));
    }
    let bookmarks: Vec<Duration> = events
        .iter()
        .filter(|(e, _)| matches!(e, WatchEvent::Bookmark(_)))
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(events.len(), 2, "ADDED, one bookmark: {events:?}");
    assert!(matches!(events[0].0, WatchEvent::Added(_)));
    assert_eq!(bookmarks.len(), 1, "{events:?}");
    assert!(
        bookmarks[0] >= Duration::from_millis(1900) && bookmarks[0] < Duration::from_millis(3900),
        "the bookmark 2 s before the 4 s timeout came at {:?}",
        bookmarks[0]
    );
}
