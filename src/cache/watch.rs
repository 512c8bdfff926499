//! Reflectors feeding the [`ClusterIndex`]: one watcher per kind, cluster-wide. The
//! extender watches four kinds ([`run_watchers`]); the controller four more, PVs, Nodes,
//! the pods not bound to a node yet and Namespaces ([`run_controller_watchers`]), so that
//! its reconcilers read every object from the index and each kind is watched (listed,
//! decoded, held) exactly once.
//!
//! Each watcher is `watch_kind` of one kind, which takes everything from the kind's
//! [`Indexed`] implementation ([`super::kinds`]). A (re-)list between `Init` and `InitDone`
//! replaces the whole kind (buffered and `reset_*`, or staged row by row and committed, as
//! the kind says), so objects deleted while the watch was down disappear.
//! [`Readiness`] turns true once every kind has been listed once.
//!
//! The controller runs without stowage's own custom resources (an NFS-only install): it
//! asks API discovery whether `stowage.io` serves `storagenodes` and `localvolumes`
//! ([`served_local_kinds`]) and watches only those that are; the others count as listed
//! (there is nothing to list) and as [`Readiness::missing`], which turns node-local
//! provisioning off with an Event on each claim. It logs one warning naming the missing
//! CRDs, asks again every [`LOCAL_CRDS_RECHECK`], and starts a kind's watch once its CRD
//! is installed.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;

use super::ClusterIndex;
use super::kinds::{Indexed, Relist};
use crate::api::local_volume::LocalVolume;
use crate::api::names;
use crate::api::storage_node::StorageNode;

/// The kinds the watchers keep in the index. Each has one flag in [`Readiness`] (its
/// discriminant); the extender watches the first four, the controller all eight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// stowage.io StorageNode (a CRD the controller can run without).
    StorageNode = 0,
    /// stowage.io LocalVolume (a CRD the controller can run without).
    LocalVolume = 1,
    /// PersistentVolumeClaim.
    PersistentVolumeClaim = 2,
    /// StorageClass.
    StorageClass = 3,
    /// PersistentVolume (controller only).
    PersistentVolume = 4,
    /// Node, metadata only (controller only).
    Node = 5,
    /// Pod waiting for a node (controller only).
    Pod = 6,
    /// Namespace, metadata only (controller only).
    Namespace = 7,
}

impl Kind {
    /// Every kind, in flag order.
    pub const ALL: [Kind; 8] = [
        Kind::StorageNode,
        Kind::LocalVolume,
        Kind::PersistentVolumeClaim,
        Kind::StorageClass,
        Kind::PersistentVolume,
        Kind::Node,
        Kind::Pod,
        Kind::Namespace,
    ];

    /// The kind's name, as logs and the `kind` label of the watch metrics give it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::StorageNode => "StorageNode",
            Kind::LocalVolume => "LocalVolume",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::StorageClass => "StorageClass",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
        }
    }

    const fn flag(self) -> usize {
        self as usize
    }
}

/// Whether every watcher has completed its first list. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    synced: Arc<[AtomicBool; 8]>,
    metrics: Option<WatchMetrics>,
    /// Kinds whose CRD is not installed: not watched, counted as synced.
    absent: Arc<[AtomicBool; 8]>,
    /// Signalled after every change the watchers write into the index (one stored permit:
    /// a change while nobody waits is seen by the next [`Readiness::changed`]).
    changes: Arc<tokio::sync::Notify>,
    /// Signalled (to every waiter) whenever a kind is marked listed.
    listed: Arc<tokio::sync::Notify>,
}

/// What the reflectors count: lists completed (the first one and every re-list, as after a
/// `410 Gone`) and errors, by kind; the errors also by HTTP status code (`410`, `500`, ...,
/// or `transport` when no answer came).
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    lists: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
}

impl WatchMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let lists = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_watch_lists_total",
                "Lists completed by the reflectors that feed the cluster index (the first one \
                 and every re-list, e.g. after 410 Gone), by kind.",
            ),
            &["kind"],
        )?;
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_watch_errors_total",
                "Errors of the reflectors that feed the cluster index, by kind and HTTP status \
                 code (transport: no answer); each is retried with backoff.",
            ),
            &["kind", "code"],
        )?;
        registry.register(Box::new(lists.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self { lists, errors })
    }

    /// Counts what a watcher of `kind` yields: a list completed (`InitDone`) or an error.
    /// For watch streams outside the index (the agent's own LocalVolumes).
    pub fn observe<K>(&self, kind: Kind, event: &Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(watcher::Event::InitDone) => self.listed(kind.as_str()),
            Ok(_) => {}
            Err(error) => self.failed(kind.as_str(), error),
        }
    }

    fn listed(&self, kind: &str) {
        self.lists.with_label_values(&[kind]).inc();
    }

    fn failed(&self, kind: &str, error: &watcher::Error) {
        let code = match error {
            watcher::Error::WatchError(status) => status.code.to_string(),
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code.to_string(),
            _ => "transport".to_string(),
        };
        self.errors.with_label_values(&[kind, code.as_str()]).inc();
    }
}

impl Readiness {
    /// A handle for the extender's four kinds ([`run_watchers`]), none synced yet.
    pub fn new() -> Self {
        let ready = Self::default();
        for kind in &Kind::ALL[4..] {
            ready.mark(*kind);
        }
        ready
    }

    /// A handle for the controller's eight kinds ([`run_controller_watchers`]), none synced
    /// yet.
    pub fn for_controller() -> Self {
        Self::default()
    }

    /// Resolves at the next change the watchers write into the index, or at once if one was
    /// written since the last call returned. For whoever derives something from the index
    /// and must follow it closely (the capacity objects); one waiter at a time.
    pub async fn changed(&self) {
        self.changes.notified().await;
    }

    /// Counts the reflectors' lists and errors in `metrics`.
    pub fn with_metrics(mut self, metrics: WatchMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_list(&self, kind: &str) {
        if let Some(m) = &self.metrics {
            m.listed(kind);
        }
    }

    fn count_error(&self, kind: &str, error: &watcher::Error) {
        if let Some(m) = &self.metrics {
            m.failed(kind, error);
        }
    }

    /// True once every kind watched has been listed.
    pub fn is_ready(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// The kinds not listed yet.
    pub fn pending(&self) -> Vec<&'static str> {
        Kind::ALL
            .iter()
            .filter(|k| !self.synced[k.flag()].load(Ordering::Acquire))
            .map(|k| k.as_str())
            .collect()
    }

    /// Resolves once every kind has been listed.
    pub async fn wait(&self) {
        loop {
            // Registered before the check, so a mark between the two is not missed.
            let listed = self.listed.notified();
            if self.is_ready() {
                return;
            }
            listed.await;
        }
    }

    /// The CRDs (`storagenodes.stowage.io`, …) of the kinds not watched because they are
    /// not installed; empty when every kind is served.
    pub fn missing(&self) -> Vec<String> {
        LOCAL_KINDS
            .iter()
            .filter(|(kind, _)| self.absent[kind.flag()].load(Ordering::Acquire))
            .map(|(_, plural)| crd_name(plural))
            .collect()
    }

    fn mark(&self, kind: Kind) {
        self.synced[kind.flag()].store(true, Ordering::Release);
        self.listed.notify_waiters();
    }

    /// The kind's CRD is not installed: nothing to wait for.
    fn set_absent(&self, kind: Kind) {
        self.absent[kind.flag()].store(true, Ordering::Release);
        self.mark(kind);
    }

    /// The kind's CRD is installed (again): wait for its first list.
    fn set_expected(&self, kind: Kind) {
        self.synced[kind.flag()].store(false, Ordering::Release);
        self.absent[kind.flag()].store(false, Ordering::Release);
    }
}

/// How often the controller asks discovery again for the stowage CRDs it found missing.
pub const LOCAL_CRDS_RECHECK: Duration = Duration::from_secs(60);

/// stowage's own kinds the controller can run without, with their resource (plural) in the
/// `stowage.io` group.
const LOCAL_KINDS: [(Kind, &str); 2] = [
    (Kind::StorageNode, "storagenodes"),
    (Kind::LocalVolume, "localvolumes"),
];

fn crd_name(plural: &str) -> String {
    format!("{plural}.{}", names::GROUP)
}

/// Whether `stowage.io/v1alpha1` serves `storagenodes` and `localvolumes` (in that
/// order), from one discovery request. A group that is not served at all (404) is
/// `[false, false]`; any other failure is an error (nothing is known).
pub async fn served_local_kinds(client: &Client) -> Result<[bool; 2], kube::Error> {
    match client.list_api_group_resources(names::API_VERSION).await {
        Ok(list) => {
            Ok(LOCAL_KINDS.map(|(_, plural)| list.resources.iter().any(|r| r.name == plural)))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok([false, false]),
        Err(error) => Err(error),
    }
}

/// Objects in a list after which the freed decode buffers are given back to the system.
const TRIM_AFTER: usize = 1_000;

/// Runs the controller's eight watchers (the four of [`run_watchers`], PersistentVolumes,
/// Nodes, unbound pods and Namespaces) until they all end (they retry with backoff, so:
/// forever). `ready` should come from [`Readiness::for_controller`]. StorageNodes and
/// LocalVolumes are watched only while their CRDs are installed (see the module's
/// documentation); a missing one is looked for again every [`LOCAL_CRDS_RECHECK`].
pub async fn run_controller_watchers(
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    ready: Readiness,
) {
    run_controller_watchers_with(client, index, ready, LOCAL_CRDS_RECHECK).await;
}

/// [`run_controller_watchers`], looking for missing stowage CRDs again every `recheck`
/// (never, if zero: a restart picks them up).
pub async fn run_controller_watchers_with(
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    ready: Readiness,
    recheck: Duration,
) {
    let pvs = watch_kind(
        Api::<PersistentVolume>::all(client.clone()),
        index.clone(),
        ready.clone(),
    );
    // Of a Node only the name and labels are read: a metadata-only watch leaves out the
    // status (images, conditions, addresses), most of a Node's bytes.
    let nodes = watch_kind(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        index.clone(),
        ready.clone(),
    );
    // Pods only while they wait for a node: a pod's claims are provisioned together
    // (`controller::claim`), which needs to know which claims a pod uses while they are
    // being provisioned, that is before the pod is bound. Once bound, a pod leaves the
    // selector and the watch reports it deleted. Of a pod only its claim names are kept.
    let pods = watch_kind_with(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName="),
        index.clone(),
        ready.clone(),
    );
    // Of a Namespace only the name and uid are read (NFS ownership markers record the uid,
    // so that a namespace deleted and re-created under the same name is told apart):
    // metadata only, like Nodes.
    let namespaces = watch_kind(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        index.clone(),
        ready.clone(),
    );
    futures::join!(
        watch_local_kinds(client.clone(), index.clone(), ready.clone(), recheck),
        watch_kind(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            index.clone(),
            ready.clone()
        ),
        watch_kind(Api::<StorageClass>::all(client), index, ready),
        pvs,
        nodes,
        pods,
        namespaces
    );
}

/// Runs the four watchers until they all end (they retry with backoff, so: forever).
pub async fn run_watchers(client: Client, index: Arc<RwLock<ClusterIndex>>, ready: Readiness) {
    futures::join!(
        watch_kind(
            Api::<StorageNode>::all(client.clone()),
            index.clone(),
            ready.clone()
        ),
        watch_kind(
            Api::<LocalVolume>::all(client.clone()),
            index.clone(),
            ready.clone()
        ),
        watch_kind(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            index.clone(),
            ready.clone()
        ),
        watch_kind(Api::<StorageClass>::all(client), index, ready),
    );
}

/// The StorageNode and LocalVolume watches of the controller, each started once discovery
/// shows its CRD served. A CRD found missing is named in one warning (again only if the
/// set of missing CRDs changes) and looked for again every `recheck` (never, if zero);
/// until then its kind counts as listed and as [`Readiness::missing`].
async fn watch_local_kinds(
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    ready: Readiness,
    recheck: Duration,
) {
    let (started_tx, started) = tokio::sync::watch::channel([false; 2]);
    let discover = {
        let (client, ready) = (client.clone(), ready.clone());
        async move {
            let mut running = [false; 2];
            let mut warned: Vec<String> = Vec::new();
            let mut failures = 0u32;
            loop {
                let wait = match served_local_kinds(&client).await {
                    Ok(served) => {
                        failures = 0;
                        for (i, (kind, _)) in LOCAL_KINDS.iter().enumerate() {
                            if running[i] {
                                continue;
                            }
                            if served[i] {
                                ready.set_expected(*kind);
                                running[i] = true;
                            } else {
                                ready.set_absent(*kind);
                            }
                        }
                        started_tx.send_replace(running);
                        let missing = ready.missing();
                        if missing.is_empty() {
                            if !warned.is_empty() {
                                tracing::info!(
                                    installed = %warned.join(", "),
                                    "stowage CRDs installed; watching them, node-local volumes on"
                                );
                            }
                            break;
                        }
                        if missing != warned {
                            warn_missing(&missing, recheck);
                            warned = missing;
                        }
                        if recheck.is_zero() {
                            break;
                        }
                        recheck
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let wait = Duration::from_secs(1u64 << (failures - 1).min(5));
                        if failures == 1 || failures.is_multiple_of(10) {
                            tracing::warn!(
                                group_version = names::API_VERSION,
                                error = %error,
                                failures,
                                "API discovery of the stowage CRDs failed; retrying"
                            );
                        }
                        if recheck.is_zero() {
                            wait
                        } else {
                            wait.min(recheck)
                        }
                    }
                };
                tokio::time::sleep(wait).await;
            }
            // Keep the channel open: the watches started run on.
            std::future::pending::<()>().await;
        }
    };
    let when_served = |i: usize| {
        let mut started = started.clone();
        async move {
            started
                .wait_for(|s| s.get(i).copied().unwrap_or(false))
                .await
                .is_ok()
        }
    };
    let storage_nodes = {
        let (client, index, ready, served) =
            (client.clone(), index.clone(), ready.clone(), when_served(0));
        async move {
            if served.await {
                watch_kind(Api::<StorageNode>::all(client), index, ready).await;
            }
        }
    };
    let local_volumes = {
        let served = when_served(1);
        async move {
            if served.await {
                watch_kind(Api::<LocalVolume>::all(client), index, ready).await;
            }
        }
    };
    futures::join!(discover, storage_nodes, local_volumes);
}

fn warn_missing(missing: &[String], recheck: Duration) {
    let again = if recheck.is_zero() {
        "restart the controller after installing them".to_string()
    } else {
        format!(
            "the controller looks for them again every {}s",
            recheck.as_secs()
        )
    };
    tracing::warn!(
        missing = %missing.join(", "),
        "stowage CRDs not installed: {}. Without them node-local volumes (provisioner {}) \
         and the scheduler extender's view of node capacity are off; claims of a node-local \
         class get a ProvisioningFailed Event. NFS provisioning is not affected. To turn \
         node-local volumes on, install the CRDs (`stowage crds | kubectl apply -f -`) and \
         the agent DaemonSet, as `kubectl apply -k deploy/` does; {again}",
        missing.join(", "),
        names::PROVISIONER_LOCAL,
    );
}

/// Watches kind `K` cluster-wide and writes it into the index as its [`Indexed`]
/// implementation says.
async fn watch_kind<K>(api: Api<K>, index: Arc<RwLock<ClusterIndex>>, ready: Readiness)
where
    K: Indexed + Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watch_kind_with(api, watcher::Config::default(), index, ready).await;
}

/// [`watch_kind`] with its own watcher configuration (a field selector).
async fn watch_kind_with<K>(
    api: Api<K>,
    config: watcher::Config,
    index: Arc<RwLock<ClusterIndex>>,
    ready: Readiness,
) where
    K: Indexed + Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::KIND.as_str();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(super::slim::strip::<K>);
    let mut stream = std::pin::pin!(stream);
    let mut relist = K::Relist::default();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                ready.count_error(kind, &error);
                tracing::warn!(kind, error = %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        match event {
            // A list cut short (the watcher starts over with `Init`) leaves nothing behind.
            watcher::Event::Init => relist.start(&index),
            watcher::Event::InitApply(obj) => relist.add(&index, obj),
            watcher::Event::InitDone => {
                let count = relist.finish(&index);
                ready.mark(K::KIND);
                ready.count_list(kind);
                tracing::debug!(kind, count, "listed");
                // The pages decoded on the way (or the list buffered) are free now; a large
                // list's are worth giving back (see `crate::memory`).
                if count >= TRIM_AFTER {
                    crate::memory::release_free_memory();
                }
            }
            watcher::Event::Apply(obj) => K::apply(&mut write(&index), obj),
            watcher::Event::Delete(obj) => K::delete(&mut write(&index), &obj),
        }
        ready.changes.notify_one();
    }
}

fn write(index: &RwLock<ClusterIndex>) -> parking_lot::RwLockWriteGuard<'_, ClusterIndex> {
    index.write()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outside_watch_counts_its_lists_and_errors_by_code() {
        let registry = prometheus::Registry::new();
        let metrics = WatchMetrics::register(&registry).unwrap();
        let gone =
            kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        let events: [Result<watcher::Event<()>, watcher::Error>; 6] = [
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(())),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(())),
            Err(watcher::Error::WatchError(Box::new(gone))),
            Ok(watcher::Event::InitDone),
        ];
        for event in &events {
            metrics.observe(Kind::LocalVolume, event);
        }
        metrics.observe::<()>(Kind::LocalVolume, &Err(watcher::Error::NoResourceVersion));
        let text = crate::serve::render(&registry).unwrap();
        for line in [
            "stowage_watch_lists_total{kind=\"LocalVolume\"} 2",
            "stowage_watch_errors_total{code=\"410\",kind=\"LocalVolume\"} 1",
            "stowage_watch_errors_total{code=\"transport\",kind=\"LocalVolume\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_missing_crd_counts_as_listed_until_it_is_installed() {
        let ready = Readiness::for_controller();
        for kind in &Kind::ALL[2..] {
            ready.mark(*kind);
        }
        assert_eq!(ready.pending(), ["StorageNode", "LocalVolume"]);
        assert!(ready.missing().is_empty(), "nothing is known missing yet");

        ready.set_absent(Kind::StorageNode);
        ready.set_absent(Kind::LocalVolume);
        assert!(ready.is_ready(), "nothing to wait for without the CRDs");
        assert_eq!(
            ready.missing(),
            ["storagenodes.stowage.io", "localvolumes.stowage.io"]
        );

        // Installed later: waited for again until listed.
        ready.set_expected(Kind::LocalVolume);
        assert!(!ready.is_ready());
        assert_eq!(ready.pending(), ["LocalVolume"]);
        assert_eq!(ready.missing(), ["storagenodes.stowage.io"]);
        ready.mark(Kind::LocalVolume);
        assert!(ready.is_ready());
    }

    #[tokio::test]
    async fn wait_resolves_when_the_last_kind_is_listed_and_not_before() {
        let ready = Readiness::new();
        let waiter = tokio::spawn({
            let ready = ready.clone();
            async move { ready.wait().await }
        });
        for kind in &Kind::ALL[..3] {
            ready.mark(*kind);
        }
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "StorageClass is not listed yet");
        ready.mark(Kind::StorageClass);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait() resolves once the last kind is listed")
            .unwrap();
        // Already ready: at once.
        tokio::time::timeout(Duration::from_secs(5), ready.wait())
            .await
            .unwrap();
    }
}
