//! The flags of `stowage controller` and the wiring of the role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use clap::Args;
use parking_lot::RwLock;
use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Config, Context, Metrics};
use crate::cache::ClusterIndex;
use crate::cache::watch::{Readiness, WatchMetrics, run_controller_watchers_with};
use crate::leader::{LeaderArgs, LeaderMetrics};
use crate::ledger::FitOptions;
use crate::nfs::NfsConfig;

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

    #[command(flatten)]
    #[allow(missing_docs)]
    pub extender_body_limit: crate::extender_role::BodyLimit,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub extender_keep_best: crate::extender_role::KeepBest,

    /// Seconds a PersistentVolume's node may be without a Node object before the volume is
    /// reported (Warning Event, stowage_volumes_node_gone).
    #[arg(long, default_value_t = 300, env = "STOWAGE_NODE_GONE_GRACE")]
    pub node_gone_grace: u64,

    /// Objects each reconciler (claims, PersistentVolumes, LocalVolumes) works on in parallel.
    /// The work is API round trips, not CPU: a burst of claims queues behind too few workers
    /// (the CSI external-provisioner runs 100).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..), env = "STOWAGE_WORKERS")]
    pub workers: u16,

    /// Seconds to wait, after SIGTERM, for the running reconciles to finish before the
    /// Lease is released and the process exits; reconciles still running then are
    /// abandoned (the next leader redoes them). Keep it well under the pod's
    /// terminationGracePeriodSeconds (30 by default): the Lease release and the HTTP
    /// shutdown come after it.
    #[arg(long, default_value_t = crate::serve::DEFAULT_DRAIN_TIMEOUT_SECS, env = "STOWAGE_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,

    /// Seconds between looks, through API discovery, for stowage's CRDs (StorageNode,
    /// LocalVolume) when they are not installed (an NFS-only install); their watches start
    /// once they are. 0: look only at start-up (a restart picks them up).
    #[arg(long, default_value_t = crate::cache::watch::LOCAL_CRDS_RECHECK.as_secs(), env = "STOWAGE_CRDS_RECHECK")]
    pub crds_recheck: u64,

    /// NFS cluster mode: YAML file listing the NFS servers (see `stowage::nfs::config`).
    /// Without it, the source design's environment (PROVISIONER_NAME, NFS_SERVER, NFS_PATH,
    /// LOG) is read; with neither, NFS provisioning is off.
    #[arg(long, env = "STOWAGE_NFS_CONFIG")]
    pub nfs_config: Option<PathBuf>,

    /// Where the exports are mounted in environment mode: server `<address>` at
    /// `<base>/<address>` (the source design's `/persistent-volumes/<server>`).
    #[arg(long, default_value = crate::nfs::config::DEFAULT_MOUNT_BASE, env = "STOWAGE_NFS_MOUNT_BASE")]
    pub nfs_mount_base: PathBuf,

    /// NFS cluster mode: let StorageClasses of the flat layout (`layout: flat`) and of the
    /// nested layout provision on the same NFS servers. Without it a claim of either layout
    /// is refused while a class of the other exists, because a flat `<namespace>-<claim>`
    /// can be a nested namespace's directory (claim `db` of namespace `team` and namespace
    /// `team-db`). Turn it on only when no namespace name can collide that way; ownership
    /// markers still refuse any directory that is another claim's or a namespace's.
    #[arg(
        long,
        env = "STOWAGE_NFS_ALLOW_MIXED_LAYOUTS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub nfs_allow_mixed_layouts: bool,

    /// Publish CSIStorageCapacity objects (one per node and node-local StorageClass, in
    /// --capacity-namespace) so that kube-scheduler's VolumeBinding plugin places claims by
    /// free space without the extender (clusters whose scheduler cannot be configured).
    /// Needs a CSIDriver object named like --provisioner-name with `storageCapacity: true`
    /// (variants/capacity ships it) and RBAC for csistoragecapacities. Per claim only: no
    /// whole-pod sums, no scoring. Only the Lease holder writes.
    #[arg(
        long,
        env = "STOWAGE_PUBLISH_CAPACITY",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub publish_capacity: bool,

    /// With --publish-capacity: least seconds between two increases of one
    /// CSIStorageCapacity object. Creates, deletes and decreases are never held back:
    /// kube-scheduler places claims against the published value until it changes, so less
    /// room is written as soon as the ledger shows it. 0: increases are written at once too.
    #[arg(long, default_value_t = 1, env = "STOWAGE_CAPACITY_INTERVAL")]
    pub capacity_interval: u64,

    /// With --publish-capacity: least move of a node's free space, in percent of the
    /// published value, that is written (a move to or from 0 always is). 0: every move.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=100), env = "STOWAGE_CAPACITY_MIN_CHANGE")]
    pub capacity_min_change: u8,

    /// With --publish-capacity: the namespace of the CSIStorageCapacity objects (the
    /// controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = crate::leader::DEFAULT_NAMESPACE)]
    pub capacity_namespace: String,

    /// With --publish-capacity: the Deployment (in --capacity-namespace) that owns the
    /// CSIStorageCapacity objects, so that deleting it deletes them. "": no owner.
    #[arg(
        long,
        default_value = "stowage-controller",
        env = "STOWAGE_CAPACITY_OWNER"
    )]
    pub capacity_owner: String,

    /// Leader election among the replicas: only the Lease holder provisions; every replica
    /// serves the extender and metrics.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

impl ControllerArgs {
    /// Runs the controller until SIGTERM or ctrl-c: the scheduler extender and metrics on
    /// every replica, provisioning on the Lease holder only.
    ///
    /// On SIGTERM (or ctrl-c) it drains: the reconcilers take no new work, the reconciles
    /// already running finish (at most `--drain-timeout`; whatever still runs then is
    /// abandoned, and the next leader redoes it, since every step is idempotent), the
    /// Events they recorded are written out (within what is left of the drain timeout, at
    /// least 1 s), then the Lease is released so the other replica takes over within one retry period, then
    /// the HTTP server stops, and the process exits 0. The extender, `/metrics` and the
    /// caches keep working throughout the drain. A second signal skips the rest of the
    /// drain.
    ///
    /// Losing the Lease ends the process with an error at once (as client-go does), without
    /// a drain, since another replica may already be leading; the Deployment restarts it
    /// as a follower.
    pub async fn run(self) -> anyhow::Result<()> {
        // Check every flag before any I/O.
        self.leader
            .config()
            .context("checking the --leader-elect-* flags")?;
        let nfs_config = self.nfs_config()?;
        let drain_timeout = Duration::from_secs(self.drain_timeout);
        crate::crash::init(crate::crash::Role::Controller)?;
        let registry = Registry::new();
        let client = crate::serve::kube_client(self.kubeconfig.as_deref(), &registry).await?;
        // The extender and the ledger count the claims of the classes this controller
        // serves: those naming --provisioner-name.
        let index = Arc::new(RwLock::new(ClusterIndex::for_provisioner(
            self.provisioner_name.clone(),
        )));
        let fit = FitOptions {
            stale_after: Duration::from_secs(self.stale_after),
        };
        let extender = crate::extender_role::extender_app(
            index.clone(),
            fit,
            "",
            self.extender_body_limit,
            self.extender_keep_best,
            &registry,
        )
        .context("building the extender routes")?;
        let leader_metrics =
            LeaderMetrics::register(&registry).context("registering the leader metrics")?;
        let leader = self
            .leader
            .start(client.clone(), leader_metrics)
            .context("starting leader election")?;
        let mut lost = std::pin::pin!(leader.lost());
        let nfs = match nfs_config {
            Some(config) => Some(Arc::new(
                super::nfs_volumes::Nfs::new(
                    config,
                    client.clone(),
                    instance_name(),
                    &registry,
                    leader.subscribe(),
                )
                .context("starting NFS cluster mode")?,
            )),
            None => None,
        };
        let mut running = self
            .start(client, registry, index, extender, leader.subscribe(), nfs)
            .await?;

        let why = tokio::select! {
            () = crate::runtime::shutdown_signal() => Stop::Signal,
            () = &mut lost => Stop::Lost,
            served = &mut running.server => Stop::ServerEnded(served),
        };
        match why {
            Stop::Signal => {
                tracing::info!(
                    timeout_s = drain_timeout.as_secs(),
                    "draining: no new reconciles; waiting for the running ones"
                );
                let drain_started = std::time::Instant::now();
                running.stop.send_replace(true);
                let drained = tokio::select! {
                    done = tokio::time::timeout(drain_timeout, &mut running.controllers) => done.is_ok(),
                    () = &mut lost => {
                        tracing::error!("lost the leader Lease while draining; abandoning the running reconciles");
                        false
                    }
                    () = crate::runtime::shutdown_signal() => {
                        tracing::warn!("second signal: abandoning the running reconciles");
                        false
                    }
                };
                if drained {
                    tracing::info!("drained: every running reconcile finished");
                } else {
                    tracing::warn!(
                        timeout_s = drain_timeout.as_secs(),
                        "the drain did not finish; abandoning the running reconciles (the next leader redoes them)"
                    );
                    running.controllers.abort();
                }
                // The Events of the last reconciles are written in the background: write
                // them out within what is left of the drain (at least a second).
                let flush_for = drain_timeout
                    .saturating_sub(drain_started.elapsed())
                    .max(EVENT_FLUSH_MIN);
                let deadline = tokio::time::Instant::now() + flush_for;
                for recorder in &running.recorders {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if !recorder.flush(left).await {
                        tracing::warn!(
                            timeout_ms = flush_for.as_millis(),
                            "events still queued at the end of the drain are dropped"
                        );
                    }
                }
                // Only now give the Lease up: nothing of ours writes any more.
                leader.shutdown().await;
                running.stop_http().await
            }
            Stop::Lost => {
                running.controllers.abort();
                leader.shutdown().await;
                running.stop_http().await?;
                Err(anyhow::anyhow!(
                    "lost the leader Lease; exiting so that this replica restarts as a follower"
                ))
            }
            Stop::ServerEnded(served) => {
                running.controllers.abort();
                leader.shutdown().await;
                running.watchers.abort();
                match served {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                    Ok(Err(error)) => Err(anyhow::Error::new(error).context("serving HTTP")),
                    Err(join) => Err(anyhow::Error::new(join).context("the HTTP server task")),
                }
            }
        }
    }

    /// Binds `--listen` and starts the HTTP server (`extra_routes`, the scheduler extender
    /// over `index`, beside /metrics, /healthz and /readyz), the watchers feeding `index`,
    /// and the reconcilers, which write only while `leader` is true.
    async fn start(
        self,
        client: kube::Client,
        registry: Registry,
        index: Arc<RwLock<ClusterIndex>>,
        extra_routes: Router,
        leader: watch::Receiver<bool>,
        nfs: Option<Arc<super::nfs_volumes::Nfs>>,
    ) -> anyhow::Result<Running> {
        let Self {
            listen,
            kubeconfig: _,
            stale_after,
            provisioner_name,
            extender_body_limit: _,
            extender_keep_best: _,
            node_gone_grace,
            workers,
            drain_timeout: _,
            nfs_config: _,
            nfs_mount_base: _,
            nfs_allow_mixed_layouts: _,
            crds_recheck,
            publish_capacity,
            capacity_interval,
            capacity_min_change,
            capacity_namespace,
            capacity_owner,
            leader: _,
        } = self;
        let ready = Readiness::for_controller().with_metrics(
            WatchMetrics::register(&registry).context("registering the watch metrics")?,
        );
        let metrics = Metrics::register(&registry, index.clone(), leader.clone())
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
        let mut ctx = Context::new(
            client.clone(),
            index.clone(),
            ready.clone(),
            config,
            metrics,
            leader,
        );
        if let Some(nfs) = nfs {
            ctx = ctx.with_nfs(nfs);
        }
        ctx.recorder
            .register(&registry)
            .context("registering the event recorder's metrics")?;
        let mut recorders = vec![ctx.recorder.clone()];
        recorders.extend(ctx.nfs.as_ref().map(|nfs| nfs.recorder().clone()));
        let ctx = Arc::new(ctx);
        let app = extra_routes
            .merge(crate::serve::health_routes(ready.clone()))
            .merge(crate::serve::metrics_routes(registry));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding --listen {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, provisioner = %ctx.config.provisioner, "listening");

        let (http_stop, http_stopped) = watch::channel(false);
        let server = crate::serve::serve_on_own_thread("http", listener, app, http_stopped)?;
        // After `Context::new` (which tells the index where to queue changes), so the
        // first lists queue every object.
        let watchers = tokio::spawn(run_controller_watchers_with(
            client,
            index,
            ready,
            Duration::from_secs(crds_recheck),
        ));
        let (stop, stop_rx) = watch::channel(false);
        let capacity = publish_capacity.then(|| super::capacity::CapacityConfig {
            namespace: capacity_namespace,
            provisioner: ctx.config.provisioner.clone(),
            fit: ctx.config.fit,
            interval: Duration::from_secs(capacity_interval),
            min_change_percent: capacity_min_change,
            owner: Some(capacity_owner).filter(|o| !o.is_empty()),
        });
        let controllers = tokio::spawn(super::run_until_with(ctx, stop_rx, capacity));
        Ok(Running {
            recorders,
            stop,
            controllers,
            watchers,
            http_stop,
            server,
        })
    }
}

/// The least time the drain gives queued Events to be written, even when the reconcilers
/// used up `--drain-timeout`.
const EVENT_FLUSH_MIN: Duration = Duration::from_secs(1);

/// Why [`ControllerArgs::run`] stops.
enum Stop {
    /// SIGTERM or ctrl-c: drain, release the Lease, exit 0.
    Signal,
    /// The Lease was lost: stop at once, exit with an error.
    Lost,
    /// The HTTP server ended by itself.
    ServerEnded(Result<std::io::Result<()>, tokio::task::JoinError>),
}

/// The tasks of a running controller.
struct Running {
    /// The reconcilers' Event recorders (the provisioner's, and NFS mode's), flushed by the
    /// drain.
    recorders: Vec<super::Recorder>,
    /// Set to true to make the reconcilers drain.
    stop: watch::Sender<bool>,
    /// The reconcilers; ends once drained.
    controllers: JoinHandle<()>,
    /// The watchers feeding the index (the extender's and the reconcilers' view).
    watchers: JoinHandle<()>,
    /// Set to true to stop the HTTP server gracefully.
    http_stop: watch::Sender<bool>,
    /// The HTTP server.
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops the HTTP server (open requests get [`crate::serve::HTTP_STOP_TIMEOUT`] to
    /// finish) and the watchers.
    async fn stop_http(mut self) -> anyhow::Result<()> {
        self.http_stop.send_replace(true);
        let served = tokio::time::timeout(crate::serve::HTTP_STOP_TIMEOUT, &mut self.server).await;
        self.watchers.abort();
        let result = match served {
            Ok(Ok(served)) => served.context("serving HTTP"),
            Ok(Err(join)) => Err(anyhow::Error::new(join).context("the HTTP server task")),
            Err(_) => {
                tracing::warn!("open HTTP requests did not finish in time; closing them");
                self.server.abort();
                Ok(())
            }
        };
        tracing::info!("stopped");
        result
    }
}

impl ControllerArgs {
    /// The NFS configuration from `--nfs-config` or the source design's environment,
    /// validated and with every mount checked; `None` when NFS mode is not configured.
    /// Called before any API I/O, so a bad configuration stops the process at once.
    pub fn nfs_config(&self) -> anyhow::Result<Option<NfsConfig>> {
        let config = match &self.nfs_config {
            Some(path) => Some(
                NfsConfig::load_file(path)
                    .with_context(|| format!("loading --nfs-config {}", path.display()))?,
            ),
            None => NfsConfig::from_process_env(&self.nfs_mount_base)
                .context("reading the NFS environment (NFS_SERVER, NFS_PATH, PROVISIONER_NAME)")?,
        };
        let Some(mut config) = config else {
            tracing::info!("NFS provisioning off: no --nfs-config and no NFS_SERVER");
            return Ok(None);
        };
        config.allow_mixed_layouts = self.nfs_allow_mixed_layouts;
        config.check_mounts().context("checking the NFS mounts")?;
        if config.provisioner_name == self.provisioner_name {
            anyhow::bail!(
                "the NFS provisioner name {:?} equals --provisioner-name of node-local \
                 volumes; give them different names",
                config.provisioner_name
            );
        }
        if config.verbose {
            tracing::debug!("LOG=true: stowage logs at debug unless RUST_LOG says otherwise");
        }
        let servers: Vec<String> = config
            .servers
            .iter()
            .map(|s| format!("{}={}:{}", s.name, s.address, s.export))
            .collect();
        tracing::info!(
            provisioner = %config.provisioner_name,
            servers = %servers.join(", "),
            allow_mixed_layouts = config.allow_mixed_layouts,
            "NFS provisioning on"
        );
        Ok(Some(config))
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
