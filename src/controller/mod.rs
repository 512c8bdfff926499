//! `stowage controller`: the provisioner of `local.stowage.io` classes.
//!
//! Three reconcilers, one per kind, each `observe → plan (pure) → execute`:
//!
//! ```text
//!   claim    (claim.rs)   selected-node set ─▶ ledger re-check ─▶ LocalVolume pvc-<uid>
//!                         LocalVolume Ready ─▶ PersistentVolume pvc-<uid> (pre-bound)
//!                         does not fit / node gone ─▶ selected-node removed + Event
//!                         bound, asks for more (expand.rs) ─▶ LocalVolume grown ─▶ PV, claim
//!   volume   (release.rs) PV Released + Delete ─▶ LocalVolume deleted ─▶ gone ─▶ PV deleted
//!                         node without Node object > grace ─▶ Warning Event + gauge
//!   orphan   (release.rs) LocalVolume whose claim is gone and that has no PV ─▶ deleted
//! ```
//!
//! Everything is keyed by the claim uid (`pvc-<uid>` names both the LocalVolume and the
//! PV), every write is a create that adopts an existing object made for the same uid, a
//! conditional patch, or a delete with a uid precondition; so a controller killed anywhere
//! and restarted converges without duplicates. Only while the `leader` receiver says
//! `true` does anything get written; every replica keeps its caches warm meanwhile.
//!
//! The fit decision reads the shared [`ClusterIndex`] (the same ledger the extender uses).
//! Decisions on one node are serialised by a per-node lock, and a LocalVolume just created
//! is written into the index at once, so two claims can never both take the last bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;

use crate::api::local_volume::LocalVolume;
use crate::cache::ClusterIndex;
use crate::cache::slim::strip;
use crate::cache::watch::Readiness;
use crate::ledger::FitOptions;

pub mod args;
pub mod claim;
pub mod error;
pub mod events;
pub mod expand;
pub mod metrics;
pub mod nfs;
pub mod release;
pub mod volume;

pub use args::ControllerArgs;
pub use error::{Error, Result};
pub use events::Recorder;
pub use metrics::Metrics;

/// First retry after a transient error: well under a second, so a conflict or a hiccup of
/// the API server costs a claim ~150 ms, not the 15 s of the external-provisioner library.
pub const FIRST_RETRY: Duration = Duration::from_millis(150);
/// Longest wait between retries of a transient error.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// Wait before looking again at a request only a person can fix (an unsupported claim, an
/// invalid class parameter, a claim that does not fit for growth).
pub const USER_ERROR_RETRY: Duration = Duration::from_secs(300);
/// Safety-net requeue of every object, in case an event was missed.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Validated configuration of the provisioner.
#[derive(Clone, Debug)]
pub struct Config {
    /// Provisioner name: claims and classes naming it are served (`local.stowage.io`).
    pub provisioner: String,
    /// Fit-check settings (how old a heartbeat may be).
    pub fit: FitOptions,
    /// How long a PV's node may have no Node object before it is reported.
    pub node_gone_grace: Duration,
    /// Objects reconciled in parallel, per reconciler.
    pub concurrency: u16,
    /// This replica's identity in Events (`reportingInstance`, `source.host`).
    pub instance: String,
}

impl Config {
    /// The defaults of the command line, with `instance` as the replica identity.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            provisioner: crate::api::names::PROVISIONER_LOCAL.to_string(),
            fit: FitOptions::default(),
            node_gone_grace: Duration::from_secs(300),
            concurrency: 8,
            instance: instance.into(),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The shared cluster view (fed by `cache::watch::run_watchers`).
    pub index: Arc<RwLock<ClusterIndex>>,
    /// Whether the index has listed every kind once.
    pub ready: Readiness,
    /// Configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// `true` while this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// NFS cluster mode, when configured ([`Context::with_nfs`]).
    pub nfs: Option<Arc<nfs::Nfs>>,
    node_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, u32>>,
    first_seen: Mutex<HashMap<String, Instant>>,
    gone_since: Mutex<HashMap<String, GoneNode>>,
}

/// A PV whose node has no Node object.
#[derive(Clone, Debug)]
struct GoneNode {
    node: String,
    since: Instant,
    reported: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `client` and `index`; Events are recorded as the provisioner name.
    pub fn new(
        client: Client,
        index: Arc<RwLock<ClusterIndex>>,
        ready: Readiness,
        config: Config,
        metrics: Metrics,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            config.provisioner.clone(),
            config.instance.clone(),
        );
        Self {
            client,
            index,
            ready,
            config,
            metrics,
            recorder,
            leader,
            nfs: None,
            node_locks: Mutex::default(),
            failures: Mutex::default(),
            first_seen: Mutex::default(),
            gone_since: Mutex::default(),
        }
    }

    /// Turns on NFS cluster mode: claims of `nfs`'s provisioner name are served too.
    pub fn with_nfs(mut self, nfs: Arc<nfs::Nfs>) -> Self {
        self.nfs = Some(nfs);
        self
    }

    /// Whether this replica may write.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Fails (transiently) until the index has listed every kind once.
    pub fn ensure_synced(&self) -> Result<()> {
        if self.ready.is_ready() {
            Ok(())
        } else {
            Err(Error::NotSynced(self.ready.pending().join(", ")))
        }
    }

    /// The lock serialising fit decisions on `node`.
    pub(crate) fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.node_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(node.to_string()).or_default().clone()
    }

    /// Notes the first time a claim was seen with a node (the start of the provisioning
    /// latency).
    pub(crate) fn seen_with_node(&self, uid: &str) {
        let mut seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 65_536 {
            seen.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
        }
        seen.entry(uid.to_string()).or_insert_with(Instant::now);
    }

    /// Ends the provisioning latency of a claim; `None` if its start was not seen.
    pub(crate) fn provisioned(&self, uid: &str) -> Option<Duration> {
        let mut seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(uid).map(|at| at.elapsed())
    }

    fn backoff(&self, key: &str, transient: bool) -> Duration {
        if !transient {
            return USER_ERROR_RETRY;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_default();
        let delay = FIRST_RETRY
            .saturating_mul(1u32 << (*n).min(16))
            .min(MAX_RETRY);
        *n = n.saturating_add(1);
        delay
    }

    fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }

    /// Records that `pv`'s node has no Node object; returns `(node, how long)` and whether
    /// it is reported for the first time now that the grace has passed.
    pub(crate) fn node_missing(&self, pv: &str, node: &str) -> (Duration, bool) {
        let mut gone = self.gone_since.lock().unwrap_or_else(|e| e.into_inner());
        let entry = gone.entry(pv.to_string()).or_insert_with(|| GoneNode {
            node: node.to_string(),
            since: Instant::now(),
            reported: false,
        });
        let elapsed = entry.since.elapsed();
        let first_report = elapsed >= self.config.node_gone_grace && !entry.reported;
        if first_report {
            entry.reported = true;
        }
        drop(gone);
        self.refresh_node_gone_gauge();
        (elapsed, first_report)
    }

    /// Forgets that `pv`'s node was missing (it is back, or the PV is gone).
    pub(crate) fn node_present(&self, pv: &str) {
        let removed = {
            let mut gone = self.gone_since.lock().unwrap_or_else(|e| e.into_inner());
            gone.remove(pv).is_some()
        };
        if removed {
            self.refresh_node_gone_gauge();
        }
    }

    fn refresh_node_gone_gauge(&self) {
        let gone = self.gone_since.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_node: HashMap<&str, i64> = HashMap::new();
        for g in gone.values() {
            if g.since.elapsed() >= self.config.node_gone_grace {
                *per_node.entry(g.node.as_str()).or_default() += 1;
            }
        }
        self.metrics.volumes_node_gone.reset();
        for (node, count) in per_node {
            self.metrics
                .volumes_node_gone
                .with_label_values(&[node])
                .set(count);
        }
    }
}

/// Emits `()` every time `leader` turns true: the controllers then look at every object
/// again, because nothing was written while another replica led.
fn on_becoming_leader(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(leader, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = ObjectRef::from_obj(obj.as_ref()).to_string();
    if matches!(error, Error::NotSynced(_)) {
        // Not a failure of this object: look again soon, without growing its backoff.
        tracing::debug!(object = %key, "waiting for the cluster index");
        return Action::requeue(FIRST_RETRY);
    }
    let delay = ctx.backoff(&key, error.is_transient());
    tracing::warn!(
        object = %key,
        reason = error.reason(),
        retry_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        error = %error_chain(error),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// An error and its sources, `: `-joined, for logs and Event messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Wraps a reconcile: nothing happens unless this replica leads and the index is loaded,
/// and a success resets the object's backoff.
async fn guarded<K, F, Fut>(obj: Arc<K>, ctx: Arc<Context>, f: F) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action>>,
{
    if !ctx.is_leader() {
        return Ok(Action::await_change());
    }
    ctx.ensure_synced()?;
    let key = ObjectRef::from_obj(obj.as_ref()).to_string();
    let action = f(obj, ctx.clone()).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// `Controller::new(api, watcher::Config::default())`, but the objects are stripped
/// ([`crate::cache::slim::strip`]: managedFields, last-applied annotation) before its store
/// keeps them: the reconcilers never read those, and at tens of thousands of objects they
/// are much of the controller's memory.
fn stripped_controller<K>(api: Api<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let objects = reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(strip::<K>),
    )
    .applied_objects();
    Controller::for_stream(objects, store)
}

/// Runs the three reconcilers (and, with NFS on, the NFS capacity refresh) until they end
/// (they retry forever, so: until the task is dropped). The caller runs
/// `cache::watch::run_watchers` on `ctx.index` beside it.
pub async fn run(ctx: Arc<Context>) {
    let (_never, stop) = watch::channel(false);
    run_until(ctx, stop).await;
}

/// Runs like [`run`] until `stop` turns true, then drains: the reconcilers start no new
/// work (queued and requeued objects are left for the next leader), the reconciles already
/// running finish, and the NFS capacity refresh stops. Returns once nothing runs any more.
/// A dropped sender never stops it. Bound the wait with a timeout and drop the future to
/// abort what is still running (every step is idempotent, so the next leader redoes it).
pub async fn run_until(ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let nfs_refresh = async {
        if let Some(nfs) = ctx.nfs.clone() {
            tokio::select! {
                () = nfs.refresh_loop(client.clone()) => {}
                () = stopped(stop.clone()) => {}
            }
        }
    };
    let config = ControllerConfig::default().concurrency(ctx.config.concurrency);

    let claims = stripped_controller(Api::<PersistentVolumeClaim>::all(client.clone()))
        .watches(
            Api::<LocalVolume>::all(client.clone()),
            watcher::Config::default(),
            |lv| {
                Some(
                    ObjectRef::<PersistentVolumeClaim>::new(&lv.spec.claim.name)
                        .within(&lv.spec.claim.namespace),
                )
            },
        )
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            |pv| {
                let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
                Some(
                    ObjectRef::<PersistentVolumeClaim>::new(r.name.as_deref()?)
                        .within(r.namespace.as_deref()?),
                )
            },
        )
        .with_config(config.clone())
        .reconcile_all_on(on_becoming_leader(ctx.leader.clone()))
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(
            |c, ctx| guarded(c, ctx, claim::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let volumes = stripped_controller(Api::<PersistentVolume>::all(client.clone()))
        .watches(
            Api::<LocalVolume>::all(client.clone()),
            watcher::Config::default(),
            |lv| Some(ObjectRef::<PersistentVolume>::new(&lv.name_any())),
        )
        .with_config(config.clone())
        .reconcile_all_on(on_becoming_leader(ctx.leader.clone()))
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(
            |pv, ctx| guarded(pv, ctx, release::reconcile_volume),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    // A claim deleted before its PV existed leaves a LocalVolume nothing else points to:
    // claim events (deletions above all) wake the LocalVolume named after the claim's uid.
    let orphans = stripped_controller(Api::<LocalVolume>::all(client.clone()))
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            |claim| {
                let uid = claim.metadata.uid.as_deref()?;
                Some(ObjectRef::<LocalVolume>::new(&volume::volume_name(uid)))
            },
        )
        .with_config(config)
        .reconcile_all_on(on_becoming_leader(ctx.leader.clone()))
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(
            |lv, ctx| guarded(lv, ctx, release::reconcile_local_volume),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    futures::join!(claims, volumes, orphans, nfs_refresh);
}

/// Resolves once `stop` turns true; never if its sender is dropped first.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
