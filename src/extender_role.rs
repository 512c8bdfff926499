//! `stowage extender`: the kube-scheduler extender alone, read-only, over watched state.
//!
//! Four watchers fill a [`ClusterIndex`]; the [`StowagePolicy`] answers filter and
//! prioritize from it. Until every kind is listed the index is (partly) empty and pods
//! whose claims or classes are unknown pass through; `/readyz` says 503 meanwhile.
//!
//! [`extender_app`] builds the filter and prioritize routes with their metrics; the
//! controller mounts the same routes beside its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use stowage_extender::{RouterConfig, router};

use crate::cache::ClusterIndex;
use crate::cache::metrics::ExtenderMetrics;
use crate::cache::policy::StowagePolicy;
use crate::cache::watch::{Readiness, run_watchers};
use crate::ledger::FitOptions;

/// The scheduler's `filterVerb` the routes answer (`deploy/scheduler-config.yaml`).
pub const FILTER_VERB: &str = "filter";
/// The scheduler's `prioritizeVerb` the routes answer (`deploy/scheduler-config.yaml`).
pub const PRIORITIZE_VERB: &str = "prioritize";

/// Flags of `stowage extender`.
#[derive(Debug, Args)]
pub struct ExtenderArgs {
    /// Address to serve the extender, /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "0.0.0.0:8888", env = "STOWAGE_LISTEN")]
    pub listen: SocketAddr,

    /// Path prefix of the routes: POST {prefix}/filter and {prefix}/prioritize.
    #[arg(long, default_value = "", env = "STOWAGE_URL_PREFIX")]
    pub url_prefix: String,

    /// Seconds after which a node whose agent has not reported is treated as unknown.
    #[arg(long, default_value_t = 45, env = "STOWAGE_STALE_AFTER")]
    pub stale_after: u64,

    /// Kubeconfig file to use; without it, in-cluster config or the default kubeconfig.
    #[arg(long, env = "STOWAGE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// The extender's routes over `index`: `POST {prefix}/filter` and `POST {prefix}/prioritize`
/// answered by a [`StowagePolicy`] with `opts`, their metrics (see [`ExtenderMetrics`])
/// registered in `registry`.
///
/// The router has no fallback and no state left to fill, so it merges with the caller's own
/// routes (`/metrics` over the same `registry`, `/healthz`, ...). Fails when `prefix` is not
/// a plain URL path, or when `registry` already holds the extender metrics (build it once
/// per registry).
pub fn extender_app(
    index: Arc<RwLock<ClusterIndex>>,
    opts: FitOptions,
    prefix: &str,
    registry: &prometheus::Registry,
) -> anyhow::Result<axum::Router> {
    let metrics =
        ExtenderMetrics::register(registry).context("registering the extender metrics")?;
    let policy = Arc::new(StowagePolicy::new(index, opts));
    let config = RouterConfig::new()
        .prefix(prefix)
        .filter_verb(FILTER_VERB)
        .prioritize_verb(PRIORITIZE_VERB)
        .observer(Arc::new(metrics));
    router(policy, config).with_context(|| format!("building the extender routes under {prefix:?}"))
}

impl ExtenderArgs {
    /// Runs the extender until SIGTERM or ctrl-c.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listen,
            url_prefix,
            stale_after,
            kubeconfig,
        } = self;
        let client = crate::serve::kube_client(kubeconfig.as_deref()).await?;
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        let ready = Readiness::new();
        let opts = FitOptions {
            stale_after: Duration::from_secs(stale_after),
        };
        let registry = prometheus::Registry::new();
        let app = extender_app(index.clone(), opts, &url_prefix, &registry)?
            .merge(crate::serve::health_routes(ready.clone()))
            .merge(crate::serve::metrics_routes(registry));

        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, prefix = %url_prefix, "listening");

        let watchers = tokio::spawn(run_watchers(client, index, ready));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(crate::serve::shutdown_signal())
            .await
            .context("serving the extender");
        watchers.abort();
        tracing::info!("stopped");
        served
    }
}
