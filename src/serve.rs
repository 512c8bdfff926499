//! Plumbing every long-running role shares: the Kubernetes client, `/healthz` and `/readyz`,
//! `/metrics` in the Prometheus text format, and the HTTP server itself (signals, backoff and
//! error chains are in [`crate::runtime`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::cache::watch::Readiness;

/// Default of `--drain-timeout` (controller and agent): seconds a role waits after SIGTERM
/// for its running work to finish. With the Lease release (at most the renew deadline,
/// 10 s, usually milliseconds) and [`HTTP_STOP_TIMEOUT`] after it, the whole shutdown stays
/// inside Kubernetes' default terminationGracePeriodSeconds of 30.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

/// How long open HTTP requests get to finish once a role stops its server.
pub const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Test-only: set to `1` to turn off kube-client's own retry of 429s and connection errors,
/// so that a fault-injection test sees every failed request reach stowage's own handling.
/// Not a flag and not documented for users: production clients keep the default retry.
pub const NO_CLIENT_RETRY_ENV: &str = "STOWAGE_TEST_NO_CLIENT_RETRY";

/// A Kubernetes client from `kubeconfig`, or without one from the in-cluster service account
/// or the default kubeconfig (`KUBECONFIG`, `~/.kube/config`), whose failed writes are
/// counted in [`ApiWriteErrors`], registered in `registry`.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    registry: &Registry,
) -> anyhow::Result<kube::Client> {
    let write_errors =
        ApiWriteErrors::register(registry).context("registering the API write metrics")?;
    let mut config = match kubeconfig {
        None => kube::Config::infer()
            .await
            .context("loading the default Kubernetes client configuration")?,
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
    };
    if std::env::var_os(NO_CLIENT_RETRY_ENV).is_some_and(|v| v == "1") {
        config.default_retry = false;
    }
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&write_errors)
        .build())
}

/// `stowage_api_write_errors_total{verb, code}`: writes to the Kubernetes API (create,
/// update, patch, delete) that the API server refused or failed, by verb and HTTP status
/// (`transport` when no answer came). Every role registers it and counts through the
/// [`kube_client`] it builds: as a [`tower::Layer`] around the whole client, it sees each
/// write's final answer, after kube-client's own retries of 429s (when those are on).
/// Reads and watches are not counted (the watch metrics of [`crate::cache::watch`] cover
/// the reflectors).
#[derive(Clone, Debug)]
pub struct ApiWriteErrors(prometheus::IntCounterVec);

impl ApiWriteErrors {
    /// Creates the counter and registers it in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_api_write_errors_total",
                "Writes to the Kubernetes API (create, update, patch, delete) answered with an \
                 error, by verb and HTTP status code (transport: no answer); each is retried.",
            ),
            &["verb", "code"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self(errors))
    }

    /// Counts the answer to a request of `method`, if it is a write that failed.
    fn observe<B, E>(&self, method: &Method, answer: &Result<axum::http::Response<B>, E>) {
        let Some(verb) = write_verb(method) else {
            return;
        };
        let status = match answer {
            Ok(response)
                if response.status().is_client_error() || response.status().is_server_error() =>
            {
                Some(response.status())
            }
            Ok(_) => return,
            Err(_) => None,
        };
        let code = status.as_ref().map_or("transport", |s| s.as_str());
        self.0.with_label_values(&[verb, code]).inc();
    }
}

/// The Kubernetes verb of a write by its HTTP method; `None` for reads (and watches).
fn write_verb(method: &Method) -> Option<&'static str> {
    match *method {
        Method::POST => Some("create"),
        Method::PUT => Some("update"),
        Method::PATCH => Some("patch"),
        Method::DELETE => Some("delete"),
        _ => None,
    }
}

impl<S> tower::Layer<S> for ApiWriteErrors {
    type Service = CountWriteErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountWriteErrors {
            inner,
            errors: self.clone(),
        }
    }
}

/// The client service of [`ApiWriteErrors`]: passes every request on and counts the writes
/// that failed.
#[derive(Clone, Debug)]
pub struct CountWriteErrors<S> {
    inner: S,
    errors: ApiWriteErrors,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for CountWriteErrors<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let method = request.method().clone();
        let answer = self.inner.call(request);
        let errors = self.errors.clone();
        Box::pin(async move {
            let answer = answer.await;
            errors.observe(&method, &answer);
            answer
        })
    }
}

/// `GET /healthz` (always 200) and `GET /readyz` (200 once `ready` says so, else 503 with
/// what is still awaited).
pub fn health_routes(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, String) {
    if ready.is_ready() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "waiting for the first list of: {}",
                ready.pending().join(", ")
            ),
        )
    }
}

/// `GET /metrics`: everything registered in `registry`, in the Prometheus text format.
pub fn metrics_routes(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Registry>) -> Response {
    // Off the serving thread: at thousands of nodes a scrape takes milliseconds, which a
    // kube-scheduler call behind it would otherwise wait for.
    let rendered = tokio::task::spawn_blocking(move || render(&registry))
        .await
        .unwrap_or_else(|join| Err(prometheus::Error::Msg(join.to_string())));
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {error}"),
        )
            .into_response(),
    }
}

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric of `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Serves `app` on `listener` from an OS thread of its own, named `name`, with a
/// single-threaded runtime, until `stop` turns true (open requests are then finished).
///
/// The scheduler extender is on kube-scheduler's critical path: it schedules one pod at a
/// time and waits for each filter and prioritize answer. On the role's shared runtime such a
/// request waits behind whatever reconciles and watch events are queued (2–3 ms under a
/// burst, for 0.1 ms of work); on its own thread the OS wakes it at once. The returned task
/// ends with the server's result.
pub fn serve_on_own_thread(
    name: &str,
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = listener
        .into_std()
        .context("detaching the listener from the runtime")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the HTTP server's runtime")?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            });
            let _ = done.send(served);
        })
        .with_context(|| format!("starting the {name} thread"))?;
    Ok(tokio::spawn(async move {
        result
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP server thread panicked")))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_writes_registered_metrics_in_text_format() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("stowage_test_total", "A test counter.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let text = render(&registry).unwrap();
        assert!(
            text.contains("# HELP stowage_test_total A test counter."),
            "{text}"
        );
        assert!(text.contains("stowage_test_total 3"), "{text}");
    }

    #[tokio::test]
    async fn failed_writes_are_counted_by_verb_and_code_and_reads_are_not() {
        use tower::{Layer, ServiceExt};
        let registry = Registry::new();
        let errors = ApiWriteErrors::register(&registry).unwrap();
        // Answers with the status the path names; `/0` gets no answer at all.
        let server = tower::service_fn(|request: axum::http::Request<()>| async move {
            match request.uri().path()[1..].parse::<u16>().unwrap() {
                0 => Err("connection refused"),
                code => Ok(axum::http::Response::builder()
                    .status(code)
                    .body(())
                    .unwrap()),
            }
        });
        let client = errors.layer(server);
        for (method, code) in [
            (Method::POST, 500),
            (Method::POST, 500),
            (Method::POST, 201),
            (Method::PUT, 429),
            (Method::PATCH, 409),
            (Method::PATCH, 200),
            (Method::DELETE, 0),
            (Method::GET, 500),
            (Method::GET, 404),
        ] {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(format!("/{code}"))
                .body(())
                .unwrap();
            let _ = client.clone().oneshot(request).await;
        }
        let text = render(&registry).unwrap();
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("stowage_api_write_errors_total{"))
            .collect();
        assert_eq!(
            counted,
            [
                "stowage_api_write_errors_total{code=\"409\",verb=\"patch\"} 1",
                "stowage_api_write_errors_total{code=\"429\",verb=\"update\"} 1",
                "stowage_api_write_errors_total{code=\"500\",verb=\"create\"} 2",
                "stowage_api_write_errors_total{code=\"transport\",verb=\"delete\"} 1",
            ],
            "{text}"
        );
    }
}
