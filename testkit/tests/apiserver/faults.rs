//! The fault knob, and that kube-runtime recovers from the faults it injects.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{reflector, watcher},
};
use serde_json::json;
use stowage_testkit::{ApiServer, WriteFailure, wait_for};

use crate::common::{WAIT, client_without_retries, status};

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn a_fraction_of_writes_fails_with_the_configured_code() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    server.faults().seed(7);
    server
        .faults()
        .fail_writes(0.5, WriteFailure::InternalError);
    let mut failed = 0;
    for i in 0..40 {
        match cms
            .create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let s = status::<()>(Err(e));
                assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
                failed += 1;
            }
        }
    }
    assert!((8..=32).contains(&failed), "{failed} of 40 failed");
    assert_eq!(server.faults().counts().internal_errors, failed);
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len() as u64,
        40 - failed,
        "failed writes did not happen"
    );
    // Reads are never failed.
    for _ in 0..10 {
        cms.list(&ListParams::default()).await.unwrap();
    }

    // 429 with Retry-After; a client without retries sees it.
    server
        .faults()
        .fail_writes_to("configmaps", 1.0, WriteFailure::TooManyRequests);
    let plain: Api<ConfigMap> = Api::default_namespaced(client_without_retries(&server));
    let s = status(plain.create(&PostParams::default(), &cm("throttled")).await);
    assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(s.details.unwrap().retry_after_seconds, 1);

    // kube-rs's default client retries 429s until the fault goes away.
    server.faults().retry_after(0);
    server
        .faults()
        .fail_writes(0.5, WriteFailure::TooManyRequests);
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("retried{i}")))
            .await
            .unwrap();
    }
    assert!(server.faults().counts().too_many_requests > 1);
    server.faults().reset();
    cms.create(&PostParams::default(), &cm("fine"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_reflector_converges_while_watches_are_closed_early() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    server
        .faults()
        .close_watches_every(Some(Duration::from_millis(150)));
    server
        .faults()
        .delay_responses(Duration::ZERO, Duration::from_millis(5));
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(cms.clone(), watcher::Config::default()))
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await.unwrap();

    server
        .faults()
        .fail_writes(0.2, WriteFailure::InternalError);
    let mut written = 0;
    for round in 0..6 {
        for i in 0..10 {
            let name = format!("c{i}");
            let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"round": round.to_string()}});
            if cms
                .patch(
                    &name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&patch),
                )
                .await
                .is_ok()
            {
                written += 1;
            }
        }
        server.faults().close_watches_now();
        if round == 3 {
            // Writes while no watch is open are replayed from the history on resume.
            for i in 0..3 {
                let _ = cms.delete(&format!("c{i}"), &Default::default()).await;
            }
        }
    }
    server.faults().reset();
    assert!(written > 0);

    let expected: BTreeMap<String, String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap()))
        .collect();
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
    let counts = server.faults().counts();
    assert!(counts.closed_watches >= 1, "{counts:?}");
    assert!(counts.delayed_requests > 0, "{counts:?}");
    assert!(
        server.request_count("watch", "configmaps") >= 2,
        "{:?}",
        server.request_counts()
    );
    task.abort();
}

#[tokio::test]
async fn a_write_failed_after_commit_took_effect_and_its_retry_conflicts() {
    let server = ApiServer::start().await.unwrap();
    let plain: Api<ConfigMap> = Api::default_namespaced(client_without_retries(&server));
    server
        .faults()
        .fail_writes_to("configmaps", 1.0, WriteFailure::InternalErrorAfterCommit);
    let s = status(plain.create(&PostParams::default(), &cm("ghost")).await);
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    server.faults().stop_failing_writes();
    // The 500 lied: the object exists, and creating it again conflicts.
    assert!(plain.get_opt("ghost").await.unwrap().is_some());
    let s = status(plain.create(&PostParams::default(), &cm("ghost")).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    let counts = server.faults().counts();
    assert_eq!(
        (counts.internal_errors, counts.committed_then_failed),
        (1, 1)
    );

    // A failure before commit leaves nothing behind.
    server
        .faults()
        .fail_writes_to("configmaps", 1.0, WriteFailure::InternalError);
    status(plain.create(&PostParams::default(), &cm("never")).await);
    server.faults().stop_failing_writes();
    assert!(plain.get_opt("never").await.unwrap().is_none());
}

#[tokio::test]
async fn periodic_compaction_makes_resumed_watches_relist() {
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
    let compacting = server.compact_every(Duration::from_millis(200));
    server
        .faults()
        .close_watches_every(Some(Duration::from_millis(300)));
    server.faults().close_watches_now();
    // Writes to another kind move the resourceVersion past the watcher's, so a compaction
    // leaves its version behind.
    let others: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(server.client());
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("b{i}")))
            .await
            .unwrap();
        let mut other = k8s_openapi::api::core::v1::Secret::default();
        other.metadata.name = Some(format!("s{i}"));
        others.create(&PostParams::default(), &other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        WAIT,
        "the reflector relisted after a compaction",
        || async { server.request_count("list", "configmaps") >= 2 },
    )
    .await
    .unwrap();
    wait_for(WAIT, "the reflector has every object", || async {
        store.state().len() == 11
    })
    .await
    .unwrap();
    assert!(server.faults().counts().compactions >= 1);
    compacting.abort();
    task.abort();
}
