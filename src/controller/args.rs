//! The flags of `stowage controller` and the wiring of the role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use clap::Args;
use prometheus::Registry;
use tokio::sync::watch;

use super::{Config, Context, Metrics};
use crate::cache::ClusterIndex;
use crate::cache::watch::{Readiness, run_watchers};
use crate::leader::{LeaderArgs, LeaderMetrics};
use crate::ledger::FitOptions;

/// Flags of `stowage controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address to serve /metrics, /healthz and /readyz (and the scheduler extender) on.
    #[arg(long, default_value = "0.0.0.0:8888", env = "STOWAGE_LISTEN")]
    pub listen: SocketAddr,

    /// Kubeconfig file to use; without it, in-cluster config or the default kubeconfig.
    #[arg(long, env = "STOWAGE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Seconds after which a node whose agent has not reported is treated as unknown: no
    /// volume is placed there.
    #[arg(long, default_value_t = 45, env = "STOWAGE_STALE_AFTER")]
    pub stale_after: u64,

    /// Provisioner name: claims and StorageClasses naming it are served.
    #[arg(long, default_value = crate::api::names::PROVISIONER_LOCAL, env = "STOWAGE_PROVISIONER_NAME")]
    pub provisioner_name: String,

    /// Seconds a PersistentVolume's node may be without a Node object before the volume is
    /// reported (Warning Event, stowage_volumes_node_gone).
    #[arg(long, default_value_t = 300, env = "STOWAGE_NODE_GONE_GRACE")]
    pub node_gone_grace: u64,

    /// Objects each reconciler (claims, PersistentVolumes, LocalVolumes) works on in parallel.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..), env = "STOWAGE_WORKERS")]
    pub workers: u16,
    /// Leader election among the replicas: only the Lease holder provisions; every replica
    /// serves the extender and metrics.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

impl ControllerArgs {
    /// Runs the controller until SIGTERM or ctrl-c: the scheduler extender and metrics on
    /// every replica, provisioning on the Lease holder only. Losing the Lease ends the
    /// process with an error (as client-go does), so the Deployment restarts it as a
    /// follower; a clean shutdown releases the Lease for the other replica.
    pub async fn run(self) -> anyhow::Result<()> {
        // Check every flag before any I/O.
        self.leader
            .config()
            .context("checking the --leader-elect-* flags")?;
        let client = crate::serve::kube_client(self.kubeconfig.as_deref()).await?;
        let registry = Registry::new();
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        let fit = FitOptions {
            stale_after: Duration::from_secs(self.stale_after),
        };
        let extender = crate::extender_role::extender_app(index.clone(), fit, "", &registry)
            .context("building the extender routes")?;
        let leader_metrics =
            LeaderMetrics::register(&registry).context("registering the leader metrics")?;
        let leader = self
            .leader
            .start(client.clone(), leader_metrics)
            .context("starting leader election")?;
        let lost = leader.lost();
        let served = tokio::select! {
            served = self.serve(client, registry, index, extender, leader.subscribe()) => served,
            () = lost => Err(anyhow::anyhow!(
                "lost the leader Lease; exiting so that this replica restarts as a follower"
            )),
        };
        leader.shutdown().await;
        served
    }

    /// Serves `extra_routes` (the scheduler extender over `index`) beside /metrics,
    /// /healthz and /readyz, and provisions only while `leader` is true.
    async fn serve(
        self,
        client: kube::Client,
        registry: Registry,
        index: Arc<RwLock<ClusterIndex>>,
        extra_routes: Router,
        leader: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let Self {
            listen,
            kubeconfig: _,
            stale_after,
            provisioner_name,
            node_gone_grace,
            workers,
            leader: _,
        } = self;
        let ready = Readiness::new();
        let metrics = Metrics::register(&registry, index.clone())
            .context("registering the controller metrics")?;
        let config = Config {
            provisioner: provisioner_name,
            fit: FitOptions {
                stale_after: Duration::from_secs(stale_after),
            },
            node_gone_grace: Duration::from_secs(node_gone_grace),
            concurrency: workers,
            instance: instance_name(),
        };
        let ctx = Arc::new(Context::new(
            client.clone(),
            index.clone(),
            ready.clone(),
            config,
            metrics,
            leader,
        ));
        let app = extra_routes
            .merge(crate::serve::health_routes(ready.clone()))
            .merge(crate::serve::metrics_routes(registry));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding --listen {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, provisioner = %ctx.config.provisioner, "listening");

        let watchers = tokio::spawn(run_watchers(client, index, ready));
        let controllers = tokio::spawn(super::run(ctx));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(crate::serve::shutdown_signal())
            .await
            .context("serving HTTP");
        controllers.abort();
        watchers.abort();
        tracing::info!("stopped");
        served
    }
}

/// This replica's identity in Events: the pod name where the Deployment sets it, else the
/// host name.
fn instance_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "stowage-controller".to_string())
}
