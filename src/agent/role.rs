//! `stowage agent`: the DaemonSet role that owns one node's storage pools.
//!
//! ```text
//!   pool config ─▶ PoolSet ◀─┬─ reconcile (kube-runtime Controller over this node's LocalVolumes)
//!                            └─ Reporter  (StorageNode status: on change and every --heartbeat)
//!   --listen: /metrics /healthz /readyz   (the only port the agent opens)
//! ```
//!
//! The pool config is read and validated before anything touches the API, so a malformed
//! file stops the agent with an error that names the file, the pool and the field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use futures::StreamExt;
use kube::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use prometheus::Registry;
use tokio::sync::{Notify, mpsc, watch};

use super::metrics::Metrics;
use super::pool::{ConfigError, PoolConfig};
use super::pool_set::PoolSet;
use super::reconcile::{Context, error_policy, reconcile};
use super::report::Reporter;
use crate::api::local_volume::LocalVolume;
use crate::api::names::LABEL_NODE;
use crate::cache::slim::strip;
use crate::cache::watch::{Kind, WatchMetrics};
use crate::runtime::error_chain;

/// Flags of `stowage agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Name of the node this agent runs on: the StorageNode it writes and the
    /// `spec.nodeName` of the LocalVolumes it serves (set it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Pool config file (YAML, usually a mounted ConfigMap); re-read on every heartbeat.
    #[arg(long, env = "STOWAGE_POOLS", default_value = "/etc/stowage/pools.yaml")]
    pub pools: PathBuf,

    /// The only directory under which a pool with `create: true` may be made: it must
    /// exist (it is the DaemonSet's hostPath, mounted at the same path as on the host), and
    /// the agent makes the missing directories between it and the pool. A `create` pool
    /// outside it is refused when the config is read. Absolute, without "..".
    #[arg(
        long,
        env = "STOWAGE_POOL_ROOT",
        default_value = super::pool::DEFAULT_POOL_ROOT,
        value_parser = parse_pool_root
    )]
    pub pool_root: PathBuf,

    /// Seconds between StorageNode status heartbeats; the status is also written on every
    /// change.
    #[arg(
        long,
        env = "STOWAGE_HEARTBEAT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub heartbeat: u64,

    /// Address of /metrics, /healthz and /readyz; the agent opens no other port.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "0.0.0.0:9808")]
    pub listen: SocketAddr,

    /// Kubeconfig file to use; without it, in-cluster config or the default kubeconfig.
    #[arg(long, env = "STOWAGE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Seconds to wait, after SIGTERM, for the volume operations already running (make,
    /// grow, delete, archive) to finish and be reported before the agent exits; what still
    /// runs then is abandoned and redone by the next start. Keep it under the pod's
    /// terminationGracePeriodSeconds (30 by default).
    #[arg(long, default_value_t = crate::serve::DEFAULT_DRAIN_TIMEOUT_SECS, env = "STOWAGE_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,
}

/// How long the last StorageNode status write on shutdown may take.
const FINAL_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the agent refused to start; the process exits with the usage status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--node-name` is not a node name.
    #[error(
        "--node-name {0:?} is not a valid node name; use the node's name as Kubernetes shows it (lowercase letters, digits, '-' and '.'), e.g. from the downward API's spec.nodeName"
    )]
    NodeName(String),
    /// The pool config file cannot be read.
    #[error("cannot read the pool config {path} (--pools)")]
    ReadPools {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pool config file is malformed.
    #[error("the pool config {path} (--pools) is not valid")]
    Pools {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the pool and field.
        #[source]
        source: ConfigError,
    },
}

impl AgentArgs {
    /// Runs the agent until SIGTERM or ctrl-c, then drains: no new volume work starts, the
    /// operations already running finish and write their LocalVolume status (at most
    /// `--drain-timeout`), the StorageNode status is written once more if it changed, the
    /// HTTP server stops, and the process exits 0.
    pub async fn run(self) -> anyhow::Result<()> {
        let AgentArgs {
            node_name: node,
            pools: config_path,
            pool_root,
            heartbeat,
            listen,
            kubeconfig,
            drain_timeout,
        } = self;
        let drain_timeout = Duration::from_secs(drain_timeout);
        if !is_dns_subdomain(&node) {
            return Err(StartError::NodeName(node).into());
        }
        crate::crash::init(crate::crash::Role::Agent)?;
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|source| StartError::ReadPools {
                path: config_path.clone(),
                source,
            })?;
        let specs =
            PoolConfig::parse(&config_text, &pool_root).map_err(|source| StartError::Pools {
                path: config_path.clone(),
                source,
            })?;

        let pool_set = PoolSet::new(specs);
        for pool in pool_set.pools() {
            let r = &pool.report;
            if r.ready {
                tracing::info!(pool = %r.name, driver = %r.driver, path = %r.path.display(), capacity = r.capacity.0, "pool ready");
            } else {
                tracing::warn!(pool = %r.name, driver = %r.driver, path = %r.path.display(), reason = r.reason.as_deref().unwrap_or(""), "pool not ready; the other pools keep working");
            }
        }
        let pools = Arc::new(Mutex::new(pool_set));

        let registry = Registry::new();
        let metrics = Metrics::register(&registry).context("registering the agent metrics")?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding --listen {listen}"))?;
        let watch_metrics =
            WatchMetrics::register(&registry).context("registering the watch metrics")?;
        let client = crate::serve::kube_client(kubeconfig.as_deref(), &registry).await?;

        // `stop`: SIGTERM arrived, take no new work. `drained`: the running work is done (or
        // abandoned); the reporter writes its last status and ends, then the HTTP server.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (drained_tx, drained_rx) = watch::channel(false);
        let mut signal = tokio::spawn(async move {
            crate::runtime::shutdown_signal().await;
            stop_tx.send_replace(true);
            // A second signal skips the rest of the drain.
            crate::runtime::shutdown_signal().await;
            tracing::warn!("second signal: abandoning the running volume operations");
        });

        let api: Api<LocalVolume> = Api::all(client.clone());
        let selector = format!(
            "{LABEL_NODE}={}",
            crate::api::names::node_label_value(&node)
        );
        // Controller::new's watch and store, with managedFields stripped before caching; its
        // lists and errors (a 410 after a compaction, say) counted as the controller's are.
        let (store, writer) = reflector::store();
        let volumes = reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector))
                .inspect(move |event| watch_metrics.observe(Kind::LocalVolume, event))
                .modify(strip::<LocalVolume>),
        )
        .applied_objects();
        let controller = Controller::for_stream(volumes, store.clone());
        let changed = Arc::new(Notify::new());
        let (all_tx, all_rx) = mpsc::channel::<()>(1);
        let (written_tx, written_rx) = watch::channel(false);

        let reporter = Reporter {
            client: client.clone(),
            node: node.clone(),
            pools: pools.clone(),
            config_path,
            config_text,
            pool_root,
            store: store.clone(),
            metrics: metrics.clone(),
            heartbeat: Duration::from_secs(heartbeat),
            changed: changed.clone(),
            reconcile_all: all_tx,
            written: written_tx,
        };
        let mut reporter = tokio::spawn(reporter.run(drained_rx.clone()));

        let ready = AgentReadiness {
            written: written_rx,
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(ready)
            .merge(crate::serve::metrics_routes(registry));
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, node = %node, selector = %selector, "agent started");
        let (http_stop_tx, mut http_stop) = watch::channel(false);
        let mut server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });

        let ctx = Arc::new(Context::new(client, node, pools, metrics, changed));
        let trigger = futures::stream::unfold(all_rx, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let mut controller_stop = stop_rx.clone();
        let mut reconciler = tokio::spawn(
            controller
                .reconcile_all_on(trigger)
                .graceful_shutdown_on(async move {
                    let _ = controller_stop.wait_for(|s| *s).await;
                })
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::trace!(volume = %obj.name, "reconciled"),
                        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                        // The object was deleted between being queued and being
                        // reconciled: nothing is left to do, and nothing went wrong.
                        Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                            tracing::debug!(volume = %obj.name, "gone before its reconcile")
                        }
                        Err(error) => tracing::warn!(error = %error_chain(&error), "controller"),
                    }
                }),
        );

        let mut stop = stop_rx;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            done = &mut reconciler => {
                // The reconciler never ends on its own; treat it as fatal.
                signal.abort();
                reporter.abort();
                http_stop_tx.send_replace(true);
                let _ = tokio::time::timeout(crate::serve::HTTP_STOP_TIMEOUT, &mut server).await;
                server.abort();
                done.context("the LocalVolume reconciler task")?;
                anyhow::bail!("the LocalVolume reconciler stopped unexpectedly");
            }
        }
        tracing::info!(
            timeout_s = drain_timeout.as_secs(),
            "draining: no new volume work; waiting for the running operations"
        );
        let drained = tokio::select! {
            done = tokio::time::timeout(drain_timeout, &mut reconciler) => done.is_ok(),
            _ = &mut signal => false,
        };
        if drained {
            tracing::info!("drained: every running volume operation finished");
        } else {
            tracing::warn!(
                timeout_s = drain_timeout.as_secs(),
                "the drain did not finish; abandoning the running volume operations (redone on the next start)"
            );
            reconciler.abort();
        }
        signal.abort();
        drained_tx.send_replace(true);
        if tokio::time::timeout(FINAL_STATUS_TIMEOUT, &mut reporter)
            .await
            .is_err()
        {
            tracing::warn!("the last StorageNode status write did not finish in time");
            reporter.abort();
        }
        http_stop_tx.send_replace(true);
        let served = match tokio::time::timeout(crate::serve::HTTP_STOP_TIMEOUT, &mut server).await
        {
            Ok(served) => served
                .context("the HTTP server task")?
                .context("serving /metrics and health"),
            Err(_) => {
                server.abort();
                Ok(())
            }
        };
        tracing::info!("stopped");
        served
    }
}

/// Ready once this node's LocalVolumes were listed and the StorageNode status written.
#[derive(Clone)]
struct AgentReadiness {
    written: watch::Receiver<bool>,
}

async fn readyz(State(ready): State<AgentReadiness>) -> (StatusCode, String) {
    // The reporter writes the first status only after the first list of LocalVolumes, so
    // one flag covers both.
    if *ready.written.borrow() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of LocalVolumes and the first StorageNode status write"
                .to_string(),
        )
    }
}

/// A DNS-1123 subdomain, which is what node names are.
/// `--pool-root`: an absolute path without "..", so that "under the root" means what it says.
fn parse_pool_root(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(format!(
            "{s:?} is relative; give the absolute path of the pools hostPath, e.g. {}",
            super::pool::DEFAULT_POOL_ROOT
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!("{s:?} contains \"..\"; write the path plainly"));
    }
    Ok(path)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn flags_have_the_documented_defaults() {
        let cli = Cli::try_parse_from(["stowage", "agent", "--node-name", "n1"]).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(args.node_name, "n1");
        assert_eq!(args.pools, PathBuf::from("/etc/stowage/pools.yaml"));
        assert_eq!(args.heartbeat, 10);
        assert_eq!(args.listen, "0.0.0.0:9808".parse::<SocketAddr>().unwrap());
        assert_eq!(args.kubeconfig, None);
        assert_eq!(args.drain_timeout, 10);
        assert_eq!(args.pool_root, PathBuf::from("/var/lib/stowage/pools"));
        for (bad, says) in [("pools", "is relative"), ("/var/../etc", "contains \"..\"")] {
            let e =
                Cli::try_parse_from(["stowage", "agent", "--node-name", "n1", "--pool-root", bad])
                    .unwrap_err()
                    .to_string();
            assert!(e.contains("--pool-root") && e.contains(says), "{e}");
        }
        assert!(
            Cli::try_parse_from(["stowage", "agent", "--node-name", "n1", "--heartbeat", "0"])
                .is_err()
        );
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for ok in ["n1", "node-1.example.com", "a"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "N1", "-a", "a-", "a..b", "a/b", &"x".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_malformed_pool_file_stops_the_agent_before_any_api_call() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pools.yaml");
        std::fs::write(&file, "pools:\n  - name: a\n    path: relative/a\n").unwrap();
        let args = AgentArgs {
            node_name: "n1".into(),
            pools: file.clone(),
            pool_root: dir.path().to_path_buf(),
            heartbeat: 10,
            listen: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: 10,
            // Would fail loudly if reached: the file does not exist.
            kubeconfig: Some(dir.path().join("no-kubeconfig")),
        };
        let error = args.run().await.unwrap_err();
        let start = error.downcast_ref::<StartError>().unwrap();
        assert!(matches!(start, StartError::Pools { .. }));
        let text = format!("{error:#}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(
            text.contains("\"a\"") && text.contains("relative"),
            "{text}"
        );
    }
}
