//! The router driven in-process with `oneshot`, plus one request over a real socket.

// clippy's allow-unwrap-in-tests covers `#[test]` functions, not this file's helpers.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_extender::{
    DEFAULT_BODY_LIMIT, ExtenderArgs, ExtenderFilterResult, Failure, FilterVerdict,
    HostPriorityList, NodeScore, Observer, Outcome, Policy, Rejection, RouterConfig, Verb, router,
};
use tower::ServiceExt;

/// Rejects and scores fixed nodes; answers with an error when `error` is set.
#[derive(Default)]
struct Stub {
    reject: Vec<(&'static str, Failure, &'static str)>,
    scores: Vec<(&'static str, i64)>,
    error: Option<&'static str>,
    /// Answers `PassThrough` instead of `PassAll` when nothing is rejected.
    pass_through: bool,
    /// Narrows to these candidate positions (with the rejections) when set.
    keep: Option<Vec<usize>>,
}

impl Policy for Stub {
    fn filter<'n>(&self, _pod: &Pod, _nodes: &[&'n str]) -> FilterVerdict<'n> {
        if let Some(error) = self.error {
            return FilterVerdict::Error(error.into());
        }
        if self.reject.is_empty() && self.keep.is_none() {
            return if self.pass_through {
                FilterVerdict::PassThrough
            } else {
                FilterVerdict::PassAll
            };
        }
        let rejections = self
            .reject
            .iter()
            .map(|&(node, failure, reason)| Rejection {
                node,
                failure,
                kind: "Stub",
                reason: reason.into(),
                position: None,
            })
            .collect();
        match &self.keep {
            Some(keep) => FilterVerdict::Narrow {
                keep: keep.clone(),
                rejections,
            },
            None => FilterVerdict::Reject(rejections),
        }
    }

    fn prioritize<'n>(&self, _pod: &Pod, _nodes: &[&'n str]) -> Vec<NodeScore<'n>> {
        self.scores
            .iter()
            .map(|&(node, score)| NodeScore { node, score })
            .collect()
    }
}

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<(Verb, Outcome, u16)>>,
    rejected: Mutex<Vec<(&'static str, Failure, u64)>>,
    passed_through: Mutex<u64>,
}

impl Observer for Recorder {
    fn request(&self, verb: Verb, outcome: Outcome, status: StatusCode, _elapsed: Duration) {
        self.requests
            .lock()
            .unwrap()
            .push((verb, outcome, status.as_u16()));
    }
    fn rejected(&self, kind: &'static str, failure: Failure, nodes: u64) {
        self.rejected.lock().unwrap().push((kind, failure, nodes));
    }
    fn passed_through(&self) {
        *self.passed_through.lock().unwrap() += 1;
    }
}

fn app(policy: Stub) -> Router {
    router(Arc::new(policy), RouterConfig::new()).unwrap()
}

fn rejecting() -> Stub {
    Stub {
        reject: vec![
            (
                "node-b",
                Failure::Unschedulable,
                "12Gi free, 20Gi requested",
            ),
            (
                "node-c",
                Failure::UnschedulableAndUnresolvable,
                "node has no storage pool",
            ),
        ],
        ..Stub::default()
    }
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, Bytes) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn post(app: Router, path: &str, body: impl Into<Body>) -> (StatusCode, Bytes) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    send(app, request).await
}

async fn post_json(app: Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let (status, bytes) = post(app, path, body.to_string()).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn pod() -> Value {
    json!({"metadata": {"name": "db-0", "namespace": "prod"}, "spec": {"containers": []}})
}

fn node(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"capacity": {"cpu": "4"}, "aFieldFromAFutureKubernetes": {"x": [1, 2]}}
    })
}

#[tokio::test]
async fn cache_capable_request_is_answered_with_node_names_and_reasons() {
    let request = json!({"Pod": pod(), "Nodes": null, "NodeNames": ["node-a", "node-b", "node-c"]});
    let (status, body) = post_json(app(rejecting()), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "Nodes": null,
            "NodeNames": ["node-a"],
            "FailedNodes": {"node-b": "12Gi free, 20Gi requested", "node-c": "node has no storage pool"},
            "FailedAndUnresolvableNodes": {"node-c": "node has no storage pool"},
            "Error": ""
        })
    );
}

#[tokio::test]
async fn full_node_request_is_answered_with_the_passing_input_objects_verbatim() {
    let request = json!({
        "Pod": pod(),
        "Nodes": {"metadata": {"resourceVersion": "7"}, "items": [node("node-a"), node("node-b"), node("node-c"), node("node-d")]},
        "NodeNames": null
    });
    let (status, body) = post_json(app(rejecting()), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["NodeNames"], Value::Null);
    assert_eq!(
        body["Nodes"],
        json!({"metadata": {"resourceVersion": "7"}, "items": [node("node-a"), node("node-d")]})
    );
    // Unresolvable nodes are in FailedNodes too: kube-scheduler 1.19 and 1.20 read no
    // other map, later versions let FailedAndUnresolvableNodes take precedence.
    assert_eq!(
        body["FailedNodes"],
        json!({"node-b": "12Gi free, 20Gi requested", "node-c": "node has no storage pool"})
    );
    assert_eq!(
        body["FailedAndUnresolvableNodes"],
        json!({"node-c": "node has no storage pool"})
    );
}

#[tokio::test]
async fn a_narrowing_verdict_passes_only_the_kept_nodes_and_gives_no_reason_for_the_rest() {
    let narrowing = || Stub {
        // node-c is rejected, node-a and node-d fit and are kept, node-b fits and is not.
        keep: Some(vec![3, 2, 0]),
        reject: vec![(
            "node-c",
            Failure::UnschedulableAndUnresolvable,
            "node has no storage pool",
        )],
        ..Stub::default()
    };
    let names = json!({"Pod": pod(), "NodeNames": ["node-a", "node-b", "node-c", "node-d"]});
    let (status, body) = post_json(app(narrowing()), "/filter", &names).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "Nodes": null,
            "NodeNames": ["node-a", "node-d"],
            "FailedNodes": {"node-c": "node has no storage pool"},
            "FailedAndUnresolvableNodes": {"node-c": "node has no storage pool"},
            "Error": ""
        })
    );
    let objects = json!({
        "Pod": pod(),
        "Nodes": {"items": [node("node-a"), node("node-b"), node("node-c"), node("node-d")]}
    });
    let (status, body) = post_json(app(narrowing()), "/filter", &objects).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["Nodes"],
        json!({"metadata": {}, "items": [node("node-a"), node("node-d")]})
    );
    assert_eq!(
        body["FailedNodes"],
        json!({"node-c": "node has no storage pool"})
    );
}

#[tokio::test]
async fn pass_all_keeps_every_node_and_omits_the_unresolvable_map() {
    let request = json!({"Pod": pod(), "NodeNames": ["b", "a"]});
    let (status, body) = post_json(app(Stub::default()), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"Nodes": null, "NodeNames": ["b", "a"], "FailedNodes": {}, "Error": ""})
    );
}

#[tokio::test]
async fn empty_candidate_list_is_answered_with_empty_node_names() {
    let request = json!({"Pod": pod(), "NodeNames": []});
    let (status, body) = post_json(app(rejecting()), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["NodeNames"], json!([]));
    assert_eq!(body["FailedNodes"], json!({}));
}

#[tokio::test]
async fn policy_error_is_a_200_with_the_error_field_set() {
    let policy = Stub {
        error: Some("caches not synced yet"),
        ..Stub::default()
    };
    let request = json!({"Pod": pod(), "NodeNames": ["a"]});
    let (status, body) = post_json(app(policy), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"Nodes": null, "NodeNames": null, "FailedNodes": {}, "Error": "caches not synced yet"})
    );
}

#[tokio::test]
async fn scores_are_clamped_and_sent_as_a_bare_array() {
    let policy = Stub {
        scores: vec![("a", 100), ("b", -3), ("c", 5), ("not-a-candidate", 7)],
        ..Stub::default()
    };
    let request = json!({"Pod": pod(), "NodeNames": ["a", "b", "c"]});
    let (status, body) = post(app(policy), "/prioritize", request.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"[{"Host":"a","Score":10},{"Host":"b","Score":0},{"Host":"c","Score":5}]"#
    );
    let list: HostPriorityList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.len(), 3);
}

#[tokio::test]
async fn prioritize_accepts_full_node_requests() {
    let policy = Stub {
        scores: vec![("node-a", 4)],
        ..Stub::default()
    };
    let request = json!({"Pod": pod(), "Nodes": {"metadata": {}, "items": [node("node-a")]}});
    let (status, body) = post_json(app(policy), "/prioritize", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{"Host": "node-a", "Score": 4}]));
}

#[tokio::test]
async fn lowercase_request_keys_are_accepted_like_go() {
    let request = json!({"pod": pod(), "nodes": null, "nodenames": ["node-a", "node-b"]});
    let (status, body) = post_json(app(rejecting()), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["NodeNames"], json!(["node-a"]));
}

/// The router's own request and reply types must agree with the public wire types.
#[tokio::test]
async fn public_wire_types_round_trip_through_the_router() {
    let args: ExtenderArgs = serde_json::from_value(json!({
        "Pod": pod(),
        "NodeNames": ["node-a", "node-b", "node-c"]
    }))
    .unwrap();
    let (status, body) = post(
        app(rejecting()),
        "/filter",
        serde_json::to_vec(&args).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let result: ExtenderFilterResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(result.node_names, Some(vec!["node-a".to_owned()]));
    assert_eq!(
        result.failed_nodes.len(),
        2,
        "both rejected nodes, with reasons"
    );
    assert_eq!(result.failed_and_unresolvable_nodes.len(), 1);
    // Byte-identical to what the public type encodes.
    assert_eq!(body, serde_json::to_vec(&result).unwrap());
}

/// The answers are written by hand; names and reasons that need escaping must come out as
/// the public types encode them, and the error answer too.
#[tokio::test]
async fn answers_with_names_that_need_escaping_are_byte_identical_to_the_public_types() {
    const ODD: &str = "we\"ird\\node\u{1}ü";
    let policy = Stub {
        reject: vec![(
            ODD,
            Failure::UnschedulableAndUnresolvable,
            "a \"quoted\" reason\n",
        )],
        scores: vec![("node-a", 3), (ODD, 10)],
        ..Stub::default()
    };
    let app = router(Arc::new(policy), RouterConfig::new()).unwrap();
    let request = json!({"Pod": pod(), "NodeNames": ["node-a", ODD]}).to_string();
    let (status, body) = post(app.clone(), "/filter", request.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let result: ExtenderFilterResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(result.node_names, Some(vec!["node-a".to_owned()]));
    assert_eq!(
        result.failed_and_unresolvable_nodes[ODD],
        "a \"quoted\" reason\n"
    );
    assert_eq!(body, serde_json::to_vec(&result).unwrap());

    let (status, body) = post(app, "/prioritize", request).await;
    assert_eq!(status, StatusCode::OK);
    let list: HostPriorityList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[1].host, ODD);
    assert_eq!(body, serde_json::to_vec(&list).unwrap());

    let policy = Stub {
        error: Some("not \"synced\""),
        ..Stub::default()
    };
    let request = json!({"Pod": pod(), "NodeNames": ["a"]}).to_string();
    let (_, body) = post(self::app(policy), "/filter", request).await;
    let result: ExtenderFilterResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(result.error, "not \"synced\"");
    assert_eq!(body, serde_json::to_vec(&result).unwrap());
}

#[tokio::test]
async fn malformed_requests_are_refused_with_400_and_a_reason() {
    let cases: [(&str, &str, &str); 7] = [
        ("truncated JSON", r#"{"Pod": {"metadata": {"#, "EOF"),
        ("empty body", "", "empty request body"),
        ("not an object", "[1,2]", "invalid type"),
        (
            "NodeNames is a string",
            r#"{"Pod": {}, "NodeNames": "node-a"}"#,
            "NodeNames",
        ),
        (
            "missing Pod",
            r#"{"NodeNames": ["a"]}"#,
            "missing field `Pod`",
        ),
        (
            "no candidates",
            r#"{"Pod": {}, "Nodes": null, "NodeNames": null}"#,
            "NodeNames and Nodes",
        ),
        (
            "node without name",
            r#"{"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}"#,
            "Nodes.items[0]",
        ),
    ];
    for (case, body, reason) in cases {
        for path in ["/filter", "/prioritize"] {
            let (status, bytes) = post(app(Stub::default()), path, body.to_owned()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{case} on {path}");
            let error: ExtenderFilterResult = serde_json::from_slice(&bytes).unwrap();
            assert!(error.error.contains(reason), "{case}: {}", error.error);
        }
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let mut huge = br#"{"Pod": {}, "NodeNames": [""#.to_vec();
    huge.resize(50 * 1024 * 1024, b'a');
    let (status, _) = post(app(Stub::default()), "/filter", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let small = router(
        Arc::new(Stub::default()),
        RouterConfig::new().body_limit(1024),
    )
    .unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("node-{i}")).collect();
    let request = json!({"Pod": {}, "NodeNames": names});
    let (status, bytes) = post(small, "/prioritize", request.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error: ExtenderFilterResult = serde_json::from_slice(&bytes).unwrap();
    assert!(!error.error.is_empty());

    // A streamed body (no Content-Length) is cut off at the limit; the answer names the
    // setting that raises it.
    let named = router(
        Arc::new(Stub::default()),
        RouterConfig::new()
            .body_limit(1024)
            .body_limit_setting("--body-limit"),
    )
    .unwrap();
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024])));
    let request = Request::post("/filter")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let (status, bytes) = send(named, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error: ExtenderFilterResult = serde_json::from_slice(&bytes).unwrap();
    assert!(
        error.error.contains("raise --body-limit"),
        "{}",
        error.error
    );
}

#[tokio::test]
async fn non_json_content_types_are_refused_with_415() {
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = Request::post("/filter");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let body = json!({"Pod": {}, "NodeNames": []}).to_string();
        let (status, _) = send(app(Stub::default()), request.body(body.into()).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let (status, _) = post(app(Stub::default()), "/bind", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let get = Request::builder()
        .method(Method::GET)
        .uri("/filter")
        .body(Body::empty())
        .unwrap();
    let (status, _) = send(app(Stub::default()), get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn prefix_and_verbs_follow_the_scheduler_configuration() {
    let config = RouterConfig::new()
        .prefix("/stowage/")
        .filter_verb("predicates/local")
        .prioritize_verb("");
    let app = router(Arc::new(Stub::default()), config).unwrap();
    let request = json!({"Pod": pod(), "NodeNames": ["a"]});
    let (status, _) = post_json(app.clone(), "/stowage/predicates/local", &request).await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/filter", "/stowage/filter", "/stowage/prioritize"] {
        let (status, _) = post(app.clone(), path, request.to_string()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn observer_sees_every_request_and_rejections_per_kind() {
    let recorder = Arc::new(Recorder::default());
    let config = RouterConfig::new().observer(recorder.clone());
    let app = router(Arc::new(rejecting()), config).unwrap();
    let request = json!({"Pod": pod(), "NodeNames": ["node-a", "node-b", "node-c"]});
    post_json(app.clone(), "/filter", &request).await;
    post_json(app.clone(), "/prioritize", &request).await;
    post(app.clone(), "/filter", "{").await;
    let mut huge = br#"{"Pod": {}, "NodeNames": [""#.to_vec();
    huge.resize(DEFAULT_BODY_LIMIT + 1, b'a');
    post(app.clone(), "/prioritize", huge).await;

    assert_eq!(
        *recorder.requests.lock().unwrap(),
        [
            (Verb::Filter, Outcome::Ok, 200),
            (Verb::Prioritize, Outcome::Ok, 200),
            (Verb::Filter, Outcome::Invalid, 400),
            (Verb::Prioritize, Outcome::Invalid, 413),
        ]
    );
    assert_eq!(*recorder.passed_through.lock().unwrap(), 0);
    assert_eq!(
        *recorder.rejected.lock().unwrap(),
        [
            ("Stub", Failure::Unschedulable, 1),
            ("Stub", Failure::UnschedulableAndUnresolvable, 1),
        ]
    );
}

#[tokio::test]
async fn pass_through_is_answered_like_pass_all_and_reported_to_the_observer() {
    let request = json!({"Pod": pod(), "NodeNames": ["b", "a"]});
    let recorder = Arc::new(Recorder::default());
    let config = RouterConfig::new().observer(recorder.clone());
    let policy = Stub {
        pass_through: true,
        ..Stub::default()
    };
    let through = router(Arc::new(policy), config).unwrap();
    let (status, body) = post_json(through.clone(), "/filter", &request).await;
    assert_eq!(status, StatusCode::OK);
    let (_, pass_all) = post_json(app(Stub::default()), "/filter", &request).await;
    assert_eq!(body, pass_all);
    post_json(through, "/prioritize", &request).await;
    assert_eq!(
        *recorder.passed_through.lock().unwrap(),
        1,
        "counted once per filter call, not on prioritize"
    );
    assert!(recorder.rejected.lock().unwrap().is_empty());
}

/// A request shaped exactly as kube-scheduler's `encoding/json` writes it (informer-cache pod
/// without `apiVersion`/`kind`, `creationTimestamp: null`, `"Nodes": null`), over TCP.
#[tokio::test]
async fn scheduler_shaped_request_over_a_real_socket() {
    use std::io::{Read, Write};

    let app = router(
        Arc::new(rejecting()),
        RouterConfig::new().prefix("/stowage"),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let body = concat!(
        r#"{"Pod":{"metadata":{"name":"db-0","namespace":"prod","uid":"6f1c2a9e-0000-4000-8000-000000000001","#,
        r#""creationTimestamp":null},"spec":{"volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"data-db-0"}}],"#,
        r#""containers":[{"name":"db","image":"postgres:16","resources":{}}],"schedulerName":"default-scheduler"},"#,
        r#""status":{"phase":"Pending","qosClass":"BestEffort"}},"Nodes":null,"NodeNames":["node-a","node-b","node-c"]}"#
    );
    let request = format!(
        "POST /stowage/filter HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A blocking std client on its own thread keeps the test free of extra tokio features.
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    server.abort();

    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let result: ExtenderFilterResult = serde_json::from_str(body).unwrap();
    assert_eq!(result.nodes, None);
    assert_eq!(result.node_names, Some(vec!["node-a".to_owned()]));
    assert_eq!(
        result.failed_nodes.get("node-b").map(String::as_str),
        Some("12Gi free, 20Gi requested")
    );
    assert_eq!(
        result
            .failed_and_unresolvable_nodes
            .get("node-c")
            .map(String::as_str),
        Some("node has no storage pool")
    );
    assert!(result.error.is_empty());
}
