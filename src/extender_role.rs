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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parking_lot::RwLock;
use stowage_extender::{RouterConfig, router};

use crate::cache::ClusterIndex;
use crate::cache::metrics::ExtenderMetrics;
use crate::cache::policy::StowagePolicy;
use crate::cache::watch::{Readiness, WatchMetrics, run_watchers};
use crate::ledger::FitOptions;

/// The scheduler's `filterVerb` the routes answer (`deploy/scheduler-config.yaml`).
pub const FILTER_VERB: &str = "filter";
/// The scheduler's `prioritizeVerb` the routes answer (`deploy/scheduler-config.yaml`).
pub const PRIORITIZE_VERB: &str = "prioritize";

/// The flag (and environment variable) that sets the extender's body limit, in both roles
/// that serve it; named in the 413 answer.
pub const BODY_LIMIT_FLAG: &str = "--extender-body-limit-mib (STOWAGE_EXTENDER_BODY_LIMIT_MIB)";

/// Default of `--extender-body-limit-mib`: [`stowage_extender::DEFAULT_BODY_LIMIT`], 4 MiB,
/// sized for `nodeCacheCapable: true` (its documentation has the figures).
pub const DEFAULT_BODY_LIMIT_MIB: u64 = (stowage_extender::DEFAULT_BODY_LIMIT >> 20) as u64;

/// The largest extender request body, in MiB (a 413 above it).
///
/// The default fits what kube-scheduler sends with `nodeCacheCapable: true` (the shipped
/// configuration: the pod and the node names, ~100-250 KiB at 5,000 nodes). With
/// `nodeCacheCapable: false` it sends whole Node objects, 10-30 KiB each, for up to
/// `percentageOfNodesToScore` of the nodes: raise the limit to match (32 for the 500 nodes
/// of the default at 5,000, 256 for all 5,000), and the memory limit by twice that, as two
/// large bodies are decoded at a time.
#[derive(Clone, Copy, Debug, Args)]
pub struct BodyLimit {
    /// Largest extender request body in MiB; raise it only for nodeCacheCapable: false
    /// (whole Node objects, 10-30 KiB each), and the memory limit by twice the increase.
    #[arg(
        long = "extender-body-limit-mib",
        default_value_t = DEFAULT_BODY_LIMIT_MIB,
        value_parser = clap::value_parser!(u64).range(1..=4096),
        env = "STOWAGE_EXTENDER_BODY_LIMIT_MIB"
    )]
    pub mib: u64,
}

impl BodyLimit {
    /// The limit in bytes.
    pub fn bytes(self) -> usize {
        usize::try_from(self.mib << 20).unwrap_or(usize::MAX)
    }
}

impl Default for BodyLimit {
    fn default() -> Self {
        Self {
            mib: DEFAULT_BODY_LIMIT_MIB,
        }
    }
}

/// Default of `--extender-keep-best`: 20 nodes.
///
/// kube-scheduler's cost of an extender grows with the candidates it sends and scores: at
/// 5,000 nodes it finds about 500 that pass its own filters (`percentageOfNodesToScore`),
/// encodes their names to filter and prioritize, decodes the answers and runs its score
/// plugins over all of them. Passing every one, kube-scheduler 1.19 made 0.7-0.9 times the
/// placement decisions a second it makes without the extender; passing the best 20 (or 5,
/// or 1), 1.04-1.32 times: as fast as without or faster, since it then scores 20 nodes
/// instead of 500 (BENCHMARKS.md). 20 leaves its soft preferences (preferred affinity and
/// anti-affinity, ScheduleAnyway topology spread) a choice, and on clusters of up to 20
/// nodes changes nothing.
pub const DEFAULT_KEEP_BEST: usize = 20;

/// How many of the nodes that can host a pod the extender's filter passes at most
/// ([`StowagePolicy::keep_best`]), in both roles that serve it.
#[derive(Clone, Copy, Debug, Args)]
pub struct KeepBest {
    /// Pass at most this many of the nodes with room for a pod's claims: the best for its
    /// storage by the class's placement (spread: most room left; binpack: least room that
    /// still fits); the others are left out without a reason. With 1, kube-scheduler places
    /// such pods without scoring (no prioritize call, none of its own score plugins): the
    /// fastest scheduling and the most even fill, but its soft preferences (preferred pod
    /// affinity and anti-affinity, ScheduleAnyway topology spread, image locality) choose
    /// only among the nodes kept. 0 passes every node with room; the default, 20, keeps
    /// kube-scheduler faster with the extender than without it at thousands of nodes.
    #[arg(
        long = "extender-keep-best",
        default_value_t = DEFAULT_KEEP_BEST,
        env = "STOWAGE_EXTENDER_KEEP_BEST"
    )]
    pub nodes: usize,
}

impl Default for KeepBest {
    fn default() -> Self {
        Self {
            nodes: DEFAULT_KEEP_BEST,
        }
    }
}

/// Flags of `stowage extender`.
#[derive(Debug, Args)]
pub struct ExtenderRoleArgs {
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

    /// Provisioner name of the node-local classes whose claims are placed by capacity; set
    /// it to the controller's --provisioner-name.
    #[arg(long, default_value = crate::api::names::PROVISIONER_LOCAL, env = "STOWAGE_PROVISIONER_NAME")]
    pub provisioner_name: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub body_limit: BodyLimit,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub keep_best: KeepBest,
}

/// The extender's routes over `index`: `POST {prefix}/filter` and `POST {prefix}/prioritize`
/// answered by a [`StowagePolicy`] with `opts` and `keep_best`, bodies up to `body_limit`,
/// their metrics (see [`ExtenderMetrics`]) registered in `registry`.
///
/// The router has no fallback and no state left to fill, so it merges with the caller's own
/// routes (`/metrics` over the same `registry`, `/healthz`, ...). Fails when `prefix` is not
/// a plain URL path, or when `registry` already holds the extender metrics (build it once
/// per registry).
pub fn extender_app(
    index: Arc<RwLock<ClusterIndex>>,
    opts: FitOptions,
    prefix: &str,
    body_limit: BodyLimit,
    keep_best: KeepBest,
    registry: &prometheus::Registry,
) -> anyhow::Result<axum::Router> {
    let metrics =
        ExtenderMetrics::register(registry).context("registering the extender metrics")?;
    let policy = Arc::new(StowagePolicy::new(index, opts).with_keep_best(keep_best.nodes));
    let config = RouterConfig::new()
        .prefix(prefix)
        .filter_verb(FILTER_VERB)
        .prioritize_verb(PRIORITIZE_VERB)
        .body_limit(body_limit.bytes())
        .body_limit_setting(BODY_LIMIT_FLAG)
        .observer(Arc::new(metrics));
    router(policy, config).with_context(|| format!("building the extender routes under {prefix:?}"))
}

impl ExtenderRoleArgs {
    /// Runs the extender until SIGTERM or ctrl-c.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listen,
            url_prefix,
            stale_after,
            kubeconfig,
            provisioner_name,
            body_limit,
            keep_best,
        } = self;
        let registry = prometheus::Registry::new();
        let client = crate::serve::kube_client(kubeconfig.as_deref(), &registry).await?;
        let index = Arc::new(RwLock::new(ClusterIndex::for_provisioner(provisioner_name)));
        let opts = FitOptions {
            stale_after: Duration::from_secs(stale_after),
        };
        let ready = Readiness::new().with_metrics(
            WatchMetrics::register(&registry).context("registering the watch metrics")?,
        );
        let app = extender_app(
            index.clone(),
            opts,
            &url_prefix,
            body_limit,
            keep_best,
            &registry,
        )?
        .merge(crate::serve::health_routes(ready.clone()))
        .merge(crate::serve::metrics_routes(registry));

        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(addr = %addr, prefix = %url_prefix, "listening");

        let watchers = tokio::spawn(run_watchers(client, index, ready));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut server = crate::serve::serve_on_own_thread("http", listener, app, stopped)?;
        let served = tokio::select! {
            served = &mut server => served,
            () = crate::runtime::shutdown_signal() => {
                stop.send_replace(true);
                server.await
            }
        };
        let served = served
            .context("the HTTP server task")
            .and_then(|served| served.context("serving the extender"));
        watchers.abort();
        tracing::info!("stopped");
        served
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, Uri, header};
    use clap::Parser;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;
    use crate::cli::{Cli, Command};

    /// The shipped configurations and the API version each must use.
    const CONFIGS: [(&str, &str); 3] = [
        ("scheduler-config.yaml", "kubescheduler.config.k8s.io/v1"),
        (
            "scheduler-config-v1beta3.yaml",
            "kubescheduler.config.k8s.io/v1beta3",
        ),
        (
            "scheduler-config-v1beta1.yaml",
            "kubescheduler.config.k8s.io/v1beta1",
        ),
    ];

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SchedulerConfig {
        api_version: String,
        kind: String,
        client_connection: ClientConnection,
        #[serde(default)]
        leader_election: LeaderElection,
        profiles: Vec<Profile>,
        extenders: Vec<Extender>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LeaderElection {
        leader_elect: bool,
        resource_lock: Option<String>,
        resource_name: Option<String>,
        resource_namespace: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct ClientConnection {
        kubeconfig: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Profile {
        scheduler_name: String,
    }

    /// Exactly the keys stowage relies on: a bind or preempt verb, `managedResources` (which
    /// would hide every other pod from the extender) or a misspelt key fail to parse.
    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Extender {
        url_prefix: String,
        filter_verb: String,
        prioritize_verb: String,
        weight: i64,
        node_cache_capable: bool,
        ignorable: bool,
        http_timeout: String,
    }

    /// The placeholder for the controller Service's ClusterIP in the files for the cluster's
    /// own (host-network) scheduler, and the Service's name, which only pods resolve.
    const CLUSTER_IP_PLACEHOLDER: &str = "CONTROLLER-CLUSTER-IP";
    const SERVICE_HOST: &str = "stowage-controller.stowage-system.svc";

    /// The second scheduler's configuration (`variants/second-scheduler`).
    const SECOND_SCHEDULER_CONFIG: &str = "../variants/second-scheduler/scheduler-config.yaml";

    fn load(file: &str) -> SchedulerConfig {
        let path = format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A Go duration of the simple forms `1s`, `500ms`.
    fn go_duration(s: &str) -> Duration {
        if let Some(ms) = s.strip_suffix("ms") {
            Duration::from_millis(ms.parse().unwrap())
        } else if let Some(secs) = s.strip_suffix('s') {
            Duration::from_secs_f64(secs.parse().unwrap())
        } else {
            panic!("httpTimeout {s:?} is not a duration like 1s or 500ms")
        }
    }

    fn role_defaults() -> ExtenderRoleArgs {
        match Cli::try_parse_from(["stowage", "extender"])
            .unwrap()
            .command
        {
            Command::Extender(args) => args,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_provisioner_name_defaults_to_local_and_can_be_set() {
        assert_eq!(
            role_defaults().provisioner_name,
            crate::api::names::PROVISIONER_LOCAL
        );
        let cli = Cli::try_parse_from([
            "stowage",
            "extender",
            "--provisioner-name",
            "disks.example.com",
        ])
        .unwrap();
        let Command::Extender(args) = cli.command else {
            panic!("not the extender");
        };
        assert_eq!(args.provisioner_name, "disks.example.com");
    }

    #[test]
    fn shipped_scheduler_configs_hold_what_the_extender_relies_on() {
        let defaults = role_defaults();
        for (file, api_version) in CONFIGS {
            let config = load(file);
            assert_eq!(config.api_version, api_version, "{file}");
            assert_eq!(config.kind, "KubeSchedulerConfiguration", "{file}");
            assert_eq!(
                config.client_connection.kubeconfig, "/etc/kubernetes/scheduler.conf",
                "{file}: for kubeadm's static pod; --kubeconfig is ignored with --config"
            );
            assert!(config.leader_election.leader_elect, "{file}");
            assert_eq!(
                config
                    .profiles
                    .iter()
                    .map(|p| p.scheduler_name.as_str())
                    .collect::<Vec<_>>(),
                ["default-scheduler"],
                "{file}"
            );
            let [extender] = &config.extenders[..] else {
                panic!(
                    "{file}: want exactly one extender, got {:?}",
                    config.extenders
                );
            };
            assert_eq!(extender.filter_verb, FILTER_VERB, "{file}");
            assert_eq!(extender.prioritize_verb, PRIORITIZE_VERB, "{file}");
            assert!(
                extender.node_cache_capable,
                "{file}: the answers carry NodeNames"
            );
            assert!(
                extender.ignorable,
                "{file}: a down extender must not block scheduling"
            );
            assert!(
                (1..=10).contains(&extender.weight),
                "{file}: weight must be > 0 with a prioritize verb, and small enough not \
                 to override every in-tree plugin: {}",
                extender.weight
            );
            let timeout = go_duration(&extender.http_timeout);
            assert!(
                timeout > Duration::ZERO && timeout <= Duration::from_secs(5),
                "{file}: httpTimeout {timeout:?}"
            );

            let uri: Uri = extender.url_prefix.parse().unwrap();
            assert_eq!(uri.scheme_str(), Some("http"), "{file}");
            assert_eq!(
                uri.host(),
                Some(CLUSTER_IP_PLACEHOLDER),
                "{file}: a host-network static pod does not resolve Service names"
            );
            assert_eq!(uri.port_u16(), Some(defaults.listen.port()), "{file}");
            assert_eq!(
                uri.path().trim_end_matches('/'),
                defaults.url_prefix.trim_end_matches('/'),
                "{file}: urlPrefix path and the role's default --url-prefix differ"
            );
            assert_eq!(extender, &load(CONFIGS[0].0).extenders[0], "{file}");
        }
    }

    /// The second scheduler (`variants/second-scheduler`): in-cluster, its own scheduler name
    /// and Lease, and the shipped extender except that it reaches the controller by the
    /// Service's name, which a Deployment pod resolves.
    #[test]
    fn the_second_scheduler_config_is_the_shipped_extender_under_its_own_name() {
        let file = SECOND_SCHEDULER_CONFIG;
        let config = load(file);
        assert_eq!(config.api_version, CONFIGS[0].1, "{file}");
        assert_eq!(config.kind, "KubeSchedulerConfiguration", "{file}");
        assert_eq!(
            config.client_connection.kubeconfig, "",
            "{file}: in-cluster, as its ServiceAccount"
        );
        assert_eq!(
            config
                .profiles
                .iter()
                .map(|p| p.scheduler_name.as_str())
                .collect::<Vec<_>>(),
            ["stowage-scheduler"],
            "{file}"
        );
        let election = &config.leader_election;
        assert!(election.leader_elect, "{file}");
        assert_eq!(
            (
                election.resource_lock.as_deref(),
                election.resource_name.as_deref(),
                election.resource_namespace.as_deref()
            ),
            (
                Some("leases"),
                Some("stowage-scheduler"),
                Some("stowage-system")
            ),
            "{file}: its own Lease (the Role in scheduler.yaml names it), not the default \
             scheduler's"
        );
        let [extender] = &config.extenders[..] else {
            panic!(
                "{file}: want exactly one extender, got {:?}",
                config.extenders
            );
        };
        let uri: Uri = extender.url_prefix.parse().unwrap();
        assert_eq!(uri.host(), Some(SERVICE_HOST), "{file}");
        let shipped = &load(CONFIGS[0].0).extenders[0];
        let same_but_url = Extender {
            url_prefix: shipped
                .url_prefix
                .replace(CLUSTER_IP_PLACEHOLDER, SERVICE_HOST),
            ..shipped.clone()
        };
        assert_eq!(extender, &same_but_url, "{file}");
    }

    /// The scheduler posts to `TrimRight(urlPrefix, "/") + "/" + verb`; each such URL of the
    /// shipped configuration must reach a route of the role's default layout.
    #[tokio::test]
    async fn the_scheduler_urls_of_the_shipped_config_reach_the_routes() {
        let defaults = role_defaults();
        let app = extender_app(
            Arc::new(RwLock::new(ClusterIndex::new())),
            FitOptions::default(),
            &defaults.url_prefix,
            BodyLimit::default(),
            KeepBest::default(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        let config = load(CONFIGS[0].0);
        let extender = &config.extenders[0];
        let uri: Uri = extender.url_prefix.parse().unwrap();
        for verb in [&extender.filter_verb, &extender.prioritize_verb] {
            let path = format!("{}/{verb}", uri.path().trim_end_matches('/'));
            let request = Request::post(&path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"Pod": {}, "Nodes": null, "NodeNames": ["n1"]}"#,
                ))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }

    #[test]
    fn extender_app_registers_its_metrics_once_per_registry() {
        let registry = prometheus::Registry::new();
        let index = Arc::new(RwLock::new(ClusterIndex::new()));
        let (limit, keep) = (BodyLimit::default(), KeepBest::default());
        let opts = FitOptions::default();
        let _app = extender_app(index.clone(), opts, "", limit, keep, &registry).unwrap();
        assert_eq!(registry.gather().len(), crate::cache::metrics::NAMES.len());
        let err = extender_app(index, opts, "", limit, keep, &registry).unwrap_err();
        assert!(format!("{err:#}").contains("extender metrics"), "{err:#}");
    }
}
