//! Shared helpers: a custom resource, error extraction, raw HTTP.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResource, CustomResourceExt, api::PostParams, core::Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stowage_testkit::{ApiServer, wait_for};

/// Generous upper bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);

/// A cluster-scoped custom resource with a status subresource, shaped like stowage's.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "LocalVolume",
    status = "LocalVolumeStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct LocalVolumeSpec {
    pub node: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LocalVolumeStatus {
    pub phase: Option<String>,
}

pub fn local_volume(name: &str, node: &str) -> LocalVolume {
    LocalVolume::new(
        name,
        LocalVolumeSpec {
            node: node.to_string(),
            size_bytes: 1 << 30,
            pool: None,
        },
    )
}

/// Installs the LocalVolume CRD and waits until discovery serves it.
pub async fn install_crd(server: &ApiServer) -> Api<LocalVolume> {
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    crds.create(&PostParams::default(), &LocalVolume::crd())
        .await
        .unwrap();
    let api: Api<LocalVolume> = Api::all(server.client());
    wait_for(WAIT, "localvolumes are served", || async {
        api.list(&Default::default()).await.is_ok()
    })
    .await
    .unwrap();
    api
}

/// The `Status` of a failed call; panics if it succeeded or failed otherwise.
pub fn status<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Asserts an API error's code and reason.
#[track_caller]
pub fn assert_api_error<T: std::fmt::Debug>(
    r: Result<T, kube::Error>,
    code: u16,
    reason: &str,
) -> Box<Status> {
    let s = status(r);
    assert_eq!((s.code, s.reason.as_str()), (code, reason), "{s:?}");
    s
}

pub fn client_without_retries(server: &ApiServer) -> Client {
    let mut config = server.config();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// One raw HTTP/1.1 request, for what kube-rs refuses to send. Returns the status code, the
/// headers (lowercased names) and the body.
pub async fn raw(
    server: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let addr = server.url().trim_start_matches("http://").to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Blocking std I/O on a worker thread keeps tokio's io-util feature out of the build.
    let buf = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).unwrap();
        buf
    })
    .await
    .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (
        code,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}
