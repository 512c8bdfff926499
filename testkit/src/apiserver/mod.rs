//! The strict in-memory Kubernetes API server. See the crate documentation for what it
//! emulates and where it approximates.

mod discovery;
mod events;
mod faults;
mod handlers;
mod kinds;
mod ops;
mod patch;
mod schema;
mod selectors;
mod status;
mod store;
mod util;
mod validate;
mod watch;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::Router;
use tokio::{net::TcpListener, sync::watch as signal, task::JoinHandle};

pub use faults::{FaultCounts, Faults, WriteFailure};
pub use ops::PodTermination;
use ops::State;
pub(crate) use util::parse_quantity;

/// State shared by the handlers and the watch streams.
pub(crate) struct Shared {
    state: Mutex<State>,
    faults: Faults,
    bookmark_interval: Duration,
    shutdown: signal::Receiver<bool>,
    requests: Mutex<BTreeMap<String, u64>>,
    address: String,
}

impl Shared {
    /// The state lock. Handlers never hold it across an `.await`. A poisoned lock means a
    /// handler panicked; the state is still consistent (every write is a single `put` or
    /// `remove`), so it is used anyway rather than failing every later request.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, verb: &str, resource: &str) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry(format!("{verb} {resource}")).or_default() += 1;
    }
}

/// Options for [`ApiServer::builder`].
#[derive(Debug, Clone)]
pub struct ApiServerBuilder {
    history_limit: usize,
    bookmark_interval: Duration,
    pod_termination: PodTermination,
    capacity_versions: Vec<String>,
}

impl Default for ApiServerBuilder {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(60),
            pod_termination: PodTermination::Kubelet {
                delay: Duration::from_secs(1),
            },
            capacity_versions: kinds::DEFAULT_CAPACITY_VERSIONS
                .iter()
                .map(|v| v.to_string())
                .collect(),
        }
    }
}

impl ApiServerBuilder {
    /// How many changes are kept for watch resumption and paginated lists (default 10 000).
    /// Older resourceVersions get `410 Gone`.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// How often watches that asked for bookmarks get one: default 1 min, kube-apiserver's
    /// `defaultBookmarkFrequency`. As on the real server, each such watch also gets one 2 s
    /// before its `timeoutSeconds` ends, and none while nothing newer than the watch's start
    /// has been written. Tests that need resume points to move sooner set a shorter one.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every.max(Duration::from_millis(10));
        self
    }

    /// How deleted pods go, there being no kubelet (default: a bound pod deleted with a
    /// grace period is Terminating for up to 1 s, [`PodTermination::Kubelet`]).
    pub fn pod_termination(mut self, how: PodTermination) -> Self {
        self.pod_termination = how;
        self
    }

    /// The versions of `storage.k8s.io` `csistoragecapacities` served (default `v1`, as from
    /// 1.27): `["v1alpha1"]` is a 1.19-1.20 server with the `CSIStorageCapacity` feature gate,
    /// `["v1beta1", "v1alpha1"]` a 1.21-1.23 one, `[]` one without the API.
    pub fn csi_storage_capacity_versions(mut self, versions: &[&str]) -> Self {
        self.capacity_versions = versions.iter().map(|v| v.to_string()).collect();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> anyhow::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the test API server")?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(
                self.history_limit,
                self.pod_termination,
                self.capacity_versions,
            )),
            faults: Faults::new(),
            bookmark_interval: self.bookmark_interval,
            shutdown: shutdown_rx.clone(),
            requests: Mutex::new(BTreeMap::new()),
            address: addr.to_string(),
        });
        let app = Router::new()
            .fallback(handlers::handle)
            .with_state(shared.clone());
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                // Resolves on `true` or when the handle (the sender) is dropped.
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "test API server stopped with an error");
            }
        });
        // The kubelet stand-in: removes Terminating pods when their kubelet would confirm.
        let kubelet = Arc::downgrade(&shared);
        let mut kubelet_stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = kubelet_stop.wait_for(|s| *s) => break,
                }
                let Some(shared) = kubelet.upgrade() else {
                    break;
                };
                shared
                    .lock()
                    .confirm_terminated_pods(std::time::Instant::now());
            }
        });
        let config = client_config(addr)?;
        let client = kube::Client::try_from(config.clone()).context("building the kube client")?;
        Ok(ApiServer {
            shared,
            addr,
            config,
            client,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

fn client_config(addr: SocketAddr) -> anyhow::Result<kube::Config> {
    let url = format!("http://{addr}")
        .parse()
        .context("parsing the server URL")?;
    Ok(kube::Config::new(url))
}

/// A running in-memory API server. Dropping it (or [`ApiServer::shutdown`]) stops serving
/// and ends every open watch.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    config: kube::Config,
    client: kube::Client,
    shutdown: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts a server with the default options.
    pub async fn start() -> anyhow::Result<ApiServer> {
        ApiServerBuilder::default().start().await
    }

    /// Options: history length, bookmark interval.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for this server (default namespace `default`), for tests that
    /// want to change it, e.g. turn off kube-rs's default retry of 429s.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A `kube::Client` connected to this server, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The kubeconfig document for this server (no credentials: the server does not
    /// authenticate).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testkit\n  cluster:\n    server: {url}\ncontexts:\n- name: testkit\n  context:\n    cluster: testkit\n    user: testkit\n    namespace: default\ncurrent-context: testkit\nusers:\n- name: testkit\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path`, for child processes (`--kubeconfig`
    /// or `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
            .with_context(|| format!("writing kubeconfig {}", path.display()))
    }

    /// The fault-injection knob.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Requests served so far, keyed `"<verb> <resource>"` as in audit logs and RBAC:
    /// `"list pods"`, `"patch localvolumes/status"`, `"create pods/binding"`.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many `verb` requests `resource` has served (see [`ApiServer::request_counts`]).
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.request_counts()
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0)
    }

    /// The latest resourceVersion (shared by all kinds, like etcd's revision).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.rv()
    }

    /// Forgets the change history, as an etcd compaction does: watches and continue tokens
    /// from before now get `410 Gone`.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Compacts the history every `period` (see [`ApiServer::compact`]), as etcd's
    /// periodic compaction does, until the returned handle is aborted or the server is
    /// dropped: a watch re-established from an older resourceVersion then gets `410 Gone`
    /// and must list again. [`FaultCounts::compactions`](crate::FaultCounts) counts them.
    pub fn compact_every(&self, period: Duration) -> tokio::task::AbortHandle {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                shared.lock().store.compact();
                shared.faults.note_compaction();
            }
        })
        .abort_handle()
    }

    /// Serves one request inside this process, without HTTP: the same routing, admission
    /// and validation as a request over the socket (but no injected faults), for benches
    /// that load tens of thousands of objects before the code under test starts.
    /// `uri` is a path with an optional query (`/api/v1/namespaces/a/persistentvolumeclaims`),
    /// `content_type` the body's type (e.g. `application/apply-patch+yaml` for server-side
    /// apply). Returns the status code and the decoded body. Watches are not served here.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(axum::http::header::CONTENT_TYPE, content_type)
            .body(())
            .with_context(|| format!("building the request {method} {uri}"))?;
        if request.uri().query().is_some_and(|q| q.contains("watch=")) {
            anyhow::bail!("{method} {uri}: watches are served over HTTP only");
        }
        let (parts, ()) = request.into_parts();
        let response = handlers::dispatch_in_process(&self.shared, &parts, body.into());
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .with_context(|| format!("reading the answer to {method} {uri}"))?;
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        Ok((status, value))
    }

    /// Stops serving, ends open watches and waits (up to 5 s) for connections to close.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
