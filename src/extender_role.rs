//! `stowage extender`: the kube-scheduler extender alone, read-only, over watched state.
//!
//! Four watchers fill a [`ClusterIndex`]; the [`StowagePolicy`] answers filter and
//! prioritize from it. Until every kind is listed the index is (partly) empty and pods
//! whose claims or classes are unknown pass through; `/readyz` says 503 meanwhile.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use stowage_extender::{RouterConfig, router};

use crate::cache::ClusterIndex;
use crate::cache::policy::StowagePolicy;
use crate::cache::watch::{Readiness, run_watchers};
use crate::ledger::FitOptions;

/// Flags of `stowage extender`.
#[derive(Debug, Args)]
pub struct ExtenderArgs {
    /// Address to serve the extender, /healthz and /readyz on.
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

impl ExtenderArgs {
    /// Runs the extender until SIGTERM or ctrl-c.
    pub async fn run(self) -> anyhow::Result<()> {
        let client = crate::serve::kube_client(self.kubeconfig.as_deref()).await?;
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        let ready = Readiness::new();
        let opts = FitOptions {
            stale_after: Duration::from_secs(self.stale_after),
        };
        let policy = Arc::new(StowagePolicy::new(index.clone(), opts));
        let extender = router(policy, RouterConfig::new().prefix(self.url_prefix.clone()))
            .context("building the extender routes")?;
        let app = extender.merge(crate::serve::health_routes(ready.clone()));

        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, prefix = %self.url_prefix, "listening");

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
