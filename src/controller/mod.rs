//! `stowage controller`: the provisioner of `local.stowage.io` classes.
//!
//! Three reconcilers, one per kind, each `observe → plan (pure) → execute`. A claim or PV
//! goes to the node-local flow below or to the NFS flow (`nfs_volumes.rs`) by the
//! provisioner its class or its `provisioned-by` names ([`backend::Backend`]):
//!
//! ```text
//!   claim    (claim.rs)   selected-node set ─▶ ledger re-check ─▶ LocalVolume pvc-<uid>
//!                         LocalVolume Ready ─▶ PersistentVolume pvc-<uid> (pre-bound,
//!                         bound-by-controller; no wait for kube-controller-manager)
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
//! Every object is read from the [`ClusterIndex`], which `cache::watch::run_controller_watchers`
//! feeds with one watch per kind and which keeps claims, LocalVolumes and PVs as compact
//! rows. A change there queues the keys of the objects it concerns on the reconcilers'
//! [`queue::Queue`]s (a LocalVolume's change wakes its claim, its PV and itself); a
//! reconcile reads its object back from the index when it runs. The API server is read
//! only to adopt an object a create found existing and to confirm, right before a
//! destructive step, what the index says.
//!
//! The fit decision reads the shared [`ClusterIndex`] (the same ledger the extender uses).
//! Decisions on one node are serialised by a per-node lock, and a LocalVolume decided on is
//! counted in the index before the lock is released (assumed, until its create answers and
//! the LocalVolume itself is recorded), so two claims can never both take the last bytes,
//! and a node's creates do not wait for each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::cache::watch::Readiness;
use crate::cache::{ClusterIndex, Trigger};
use crate::ledger::FitOptions;

pub mod args;
pub mod backend;
pub mod capacity;
pub mod claim;
pub mod error;
pub use crate::events;
pub mod expand;
pub mod metrics;
pub mod nfs_metrics;
pub mod nfs_volumes;
pub mod queue;
pub mod release;
pub mod steps;
pub mod volume;

pub use crate::runtime::error_chain;
pub(crate) use crate::runtime::stopped;
use crate::runtime::{Backoff, Failures};
pub use args::ControllerArgs;
pub use error::{Error, Result};
pub use events::Recorder;
pub use metrics::Metrics;
pub use queue::{Next, Queue};

/// First retry after a transient error: well under a second, so a conflict or a hiccup of
/// the API server costs a claim ~150 ms, not the 15 s of the external-provisioner library.
pub const FIRST_RETRY: Duration = Duration::from_millis(150);
/// Longest wait between retries of a transient error.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// Retries of a transient error: [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`].
const RETRY: Backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
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
    pub nfs: Option<Arc<nfs_volumes::Nfs>>,
    /// Claims to reconcile, by namespace and name.
    pub claims: Arc<Queue<(String, String)>>,
    /// PersistentVolumes to reconcile, by name.
    pub pvs: Arc<Queue<String>>,
    /// LocalVolumes to reconcile (the orphan check), by name.
    pub volumes: Arc<Queue<String>>,
    node_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Failures,
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
    /// [`run_until`] connects the index's changes to the context's queues.
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
        let claims: Arc<Queue<(String, String)>> = Arc::default();
        let pvs: Arc<Queue<String>> = Arc::default();
        let volumes: Arc<Queue<String>> = Arc::default();
        Self {
            client,
            index,
            ready,
            config,
            metrics,
            recorder,
            leader,
            nfs: None,
            claims,
            pvs,
            volumes,
            node_locks: Mutex::default(),
            failures: Failures::default(),
            first_seen: Mutex::default(),
            gone_since: Mutex::default(),
        }
    }

    /// Turns on NFS cluster mode: claims of `nfs`'s provisioner name are served too.
    pub fn with_nfs(mut self, nfs: Arc<nfs_volumes::Nfs>) -> Self {
        self.index.write().keep_pvs_of(nfs.provisioner());
        self.nfs = Some(nfs);
        self
    }

    /// `None` when the index has no Node called `name`; otherwise its
    /// `kubernetes.io/hostname` label, if set.
    pub fn node_hostname(&self, name: &str) -> Option<Option<String>> {
        self.index.read().node_hostname(name)
    }

    /// From now on, a change in the index queues the objects it concerns on this
    /// context's queues (a claim, PV or LocalVolume change; see `ClusterIndex::set_trigger`).
    pub fn queue_changes(&self) {
        let (claims, pvs, volumes) = (self.claims.clone(), self.pvs.clone(), self.volumes.clone());
        let mut index = self.index.write();
        index.set_trigger(Arc::new(move |trigger| match trigger {
            Trigger::Claim(ns, name) => claims.add((ns, name)),
            Trigger::Pv(name) => pvs.add(name),
            Trigger::Volume(name) => volumes.add(name),
        }));
    }

    /// Queues every object the index holds on its reconciler's queue, a batch at a time:
    /// a queue is fed more only once fewer than [`QUEUE_ALL_BATCH`] keys wait in it, so
    /// looking at 150,000 objects again never holds 150,000 keys at once.
    pub async fn queue_all(&self) {
        let (claims, pvs, volumes) = {
            let index = self.index.read();
            (
                index.claim_keys(),
                index.persistent_volume_names(),
                index.local_volume_names(),
            )
        };
        futures::join!(
            feed(&self.claims, claims),
            feed(&self.pvs, pvs),
            feed(&self.volumes, volumes)
        );
    }

    /// [`Context::queue_all`], then, once the queues have drained, gives the memory the
    /// pass freed back to the system (`crate::memory`): the first pass over every object
    /// materialises each of them once.
    async fn queue_all_then_trim(&self) {
        self.queue_all().await;
        while self.claims.waiting() + self.pvs.waiting() + self.volumes.waiting() > 0
            || self.claims.running() + self.pvs.running() + self.volumes.running() > 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        crate::memory::release_free_memory();
    }

    /// Whether no object waits in any queue or is being reconciled (requeues for later may
    /// be pending): every reconcile the changes seen so far set off has ended. Tests wait
    /// for it before they check that something did not happen.
    pub fn is_idle(&self) -> bool {
        [
            (self.claims.waiting(), self.claims.running()),
            (self.pvs.waiting(), self.pvs.running()),
            (self.volumes.waiting(), self.volumes.running()),
        ]
        .iter()
        .all(|&(waiting, running)| waiting == 0 && running == 0)
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
        let mut locks = self.node_locks.lock();
        locks.entry(node.to_string()).or_default().clone()
    }

    /// Notes the first time a claim was seen with a node (the start of the provisioning
    /// latency).
    pub(crate) fn seen_with_node(&self, uid: &str) {
        let mut seen = self.first_seen.lock();
        if seen.len() > 65_536 {
            seen.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
        }
        seen.entry(uid.to_string()).or_insert_with(Instant::now);
    }

    /// How long ago this process first saw the claim with a node (zero if it has not).
    pub(crate) fn waiting_for(&self, uid: &str) -> Duration {
        let seen = self.first_seen.lock();
        seen.get(uid).map_or(Duration::ZERO, Instant::elapsed)
    }

    /// Ends the provisioning latency of a claim; `None` if its start was not seen.
    pub(crate) fn provisioned(&self, uid: &str) -> Option<Duration> {
        let mut seen = self.first_seen.lock();
        seen.remove(uid).map(|at| at.elapsed())
    }

    fn backoff(&self, key: &str, transient: bool) -> Duration {
        if transient {
            RETRY.delay(self.failures.failed(key))
        } else {
            USER_ERROR_RETRY
        }
    }

    /// Records that `pv`'s node has no Node object; returns `(node, how long)` and whether
    /// it is reported for the first time now that the grace has passed.
    pub(crate) fn node_missing(&self, pv: &str, node: &str) -> (Duration, bool) {
        let mut gone = self.gone_since.lock();
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
            let mut gone = self.gone_since.lock();
            gone.remove(pv).is_some()
        };
        if removed {
            self.refresh_node_gone_gauge();
        }
    }

    fn refresh_node_gone_gauge(&self) {
        let gone = self.gone_since.lock();
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

/// Keys [`Context::queue_all`] adds to a queue at a time.
pub const QUEUE_ALL_BATCH: usize = 512;

async fn feed<K>(queue: &Queue<K>, keys: Vec<K>)
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    // Taken from the end and shrunk as it empties, so the list of 50,000 keys is not held
    // whole until its last batch is queued.
    let mut keys = keys;
    keys.reverse();
    while !keys.is_empty() {
        while queue.waiting() >= QUEUE_ALL_BATCH {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rest = keys.len().saturating_sub(QUEUE_ALL_BATCH);
        keys.drain(rest..).rev().for_each(|k| queue.add(k));
        if keys.len() < keys.capacity() / 2 {
            keys.shrink_to_fit();
        }
    }
}

/// Queues every object each time `leader` turns true: nothing was written while another
/// replica led, so everything is looked at again. Returns when `leader`'s sender is gone.
async fn on_becoming_leader(ctx: Arc<Context>) {
    let mut rx = ctx.leader.clone();
    while rx.changed().await.is_ok() {
        if *rx.borrow_and_update() {
            ctx.queue_all().await;
        }
    }
}

/// What the queue does after a reconcile of `key`: the reconcile's own [`Next`], or after
/// an error a retry with the key's backoff.
fn settle(key: &str, result: Result<Next>, ctx: &Context) -> Next {
    let error = match result {
        Ok(action) => return action,
        Err(error) => error,
    };
    if matches!(error, Error::NotSynced(_)) {
        // Not a failure of this object: look again soon, without growing its backoff.
        tracing::debug!(object = %key, "waiting for the cluster index");
        return Next::requeue(FIRST_RETRY);
    }
    if error.is_conflict() {
        // Another writer changed the object first: read it again, quietly and soon.
        tracing::debug!(object = %key, error = %error_chain(&error), "conflict; retrying");
        return Next::requeue(FIRST_RETRY);
    }
    let delay = ctx.backoff(key, error.is_transient());
    tracing::warn!(
        object = %key,
        reason = error.reason(),
        retry_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        error = %error_chain(&error),
        "reconcile failed"
    );
    Next::requeue(delay)
}

/// Wraps a reconcile of the object `key`: nothing happens unless this replica leads and
/// the index is loaded, and a success resets the object's backoff.
async fn guarded<T, F, Fut>(key: &str, obj: T, ctx: Arc<Context>, f: F) -> Result<Next>
where
    F: FnOnce(Arc<T>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Next>>,
{
    if !ctx.is_leader() {
        return Ok(Next::await_change());
    }
    ctx.ensure_synced()?;
    let action = f(Arc::new(obj), ctx.clone()).await?;
    ctx.failures.succeeded(key);
    Ok(action)
}

/// Runs the three reconcilers (and, with NFS on, the NFS capacity refresh) until they end
/// (they retry forever, so: until the task is dropped). The caller runs
/// `cache::watch::run_controller_watchers` on `ctx.index` beside it.
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
    run_until_with(ctx, stop, None).await;
}

/// [`run_until`], with CSIStorageCapacity publishing ([`capacity`]) when `capacity` is set.
pub async fn run_until_with(
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
    capacity: Option<capacity::CapacityConfig>,
) {
    let client = ctx.client.clone();
    let publish = async {
        if let Some(config) = capacity {
            capacity::publish(
                client.clone(),
                ctx.index.clone(),
                config,
                ctx.metrics.clone(),
                ctx.leader.clone(),
                ctx.ready.clone(),
                stop.clone(),
            )
            .await;
        }
    };
    let nfs_refresh = async {
        if let Some(nfs) = ctx.nfs.clone() {
            tokio::select! {
                () = nfs.refresh_loop(ctx.index.clone(), ctx.ready.clone()) => {}
                () = stopped(stop.clone()) => {}
            }
        }
    };
    let reconcilers = run_reconcilers(ctx.clone(), stop.clone());
    futures::join!(reconcilers, nfs_refresh, publish);
}

/// The three reconcilers of [`run_until`], once every kind has been listed.
async fn run_reconcilers(ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    let workers = usize::from(ctx.config.concurrency);
    // Nothing is decided on a partial view, and a reconcile started now would only be
    // put back: wait for every kind's first list (whose changes queue every object).
    tokio::select! {
        () = ctx.ready.wait() => {}
        () = stopped(stop.clone()) => return,
    }
    // Changes from now on queue their objects; everything there now is queued once.
    ctx.queue_changes();
    let everything = async {
        tokio::select! {
            () = ctx.queue_all_then_trim() => {}
            () = stopped(stop.clone()) => {}
        }
    };

    let claims = serve(
        &ctx,
        ctx.claims.clone(),
        Reconciler {
            describe: |(ns, name)| format!("PersistentVolumeClaim {ns}/{name}"),
            read: |index, (ns, name)| index.claim(ns, name),
            gone: |_, _| {},
            reconcile: claim::reconcile,
        },
        workers,
        stop.clone(),
    );
    let pvs = serve(
        &ctx,
        ctx.pvs.clone(),
        Reconciler {
            describe: |name| format!("PersistentVolume {name}"),
            read: |index, name| index.persistent_volume(name),
            // A PV gone needs no "node gone" report any more.
            gone: |ctx, name| ctx.node_present(name),
            reconcile: release::reconcile_volume,
        },
        workers,
        stop.clone(),
    );
    // A claim deleted before its PV existed leaves a LocalVolume nothing else points to:
    // claim changes (deletions above all) queue the LocalVolume named after the claim's uid.
    let volumes = serve(
        &ctx,
        ctx.volumes.clone(),
        Reconciler {
            describe: |name| format!("LocalVolume {name}"),
            read: |index, name| index.local_volume(name),
            gone: |_, _| {},
            reconcile: release::reconcile_local_volume,
        },
        workers,
        stop.clone(),
    );
    let leader = async {
        tokio::select! {
            () = on_becoming_leader(ctx.clone()) => std::future::pending::<()>().await,
            () = stopped(stop.clone()) => {}
        }
    };
    futures::join!(claims, pvs, volumes, leader, everything);
}

/// One reconciler: how its keys name objects, how a key's object is read from the index,
/// what to do when it is gone, and the reconcile.
struct Reconciler<K, T, R> {
    describe: fn(&K) -> String,
    read: fn(&ClusterIndex, &K) -> Option<T>,
    gone: fn(&Context, &K),
    reconcile: R,
}

/// Runs `reconciler` on `queue` (see [`Queue::run`]): each key's object is read from the
/// index when its turn comes, reconciled through [`guarded`], and the outcome [`settle`]d.
async fn serve<K, T, R, Fut>(
    ctx: &Arc<Context>,
    queue: Arc<Queue<K>>,
    reconciler: Reconciler<K, T, R>,
    workers: usize,
    stop: watch::Receiver<bool>,
) where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    T: Send + Sync + 'static,
    R: Fn(Arc<T>, Arc<Context>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Next>> + Send,
{
    let ctx = ctx.clone();
    queue
        .run(workers, stop, move |key: K| {
            let ctx = ctx.clone();
            async move {
                let object = (reconciler.read)(&ctx.index.read(), &key);
                let Some(object) = object else {
                    (reconciler.gone)(&ctx, &key);
                    return Next::await_change();
                };
                let name = (reconciler.describe)(&key);
                let result = guarded(&name, object, ctx.clone(), reconciler.reconcile).await;
                settle(&name, result, &ctx)
            }
        })
        .await;
}

#[cfg(test)]
mod tests {

    /// No import cycle between the controller's files (`mod.rs`, the composition root that
    /// wires them all, aside): each `super::<file>` reference must point down the graph in
    /// `steps.rs`'s picture. Reads the sources, so a new cycle fails here, naming the files.
    #[test]
    fn the_controllers_files_import_each_other_without_a_cycle() {
        use std::collections::{BTreeMap, BTreeSet};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "rs") && name != "mod" {
                files.insert(name.to_string(), std::fs::read_to_string(&path).unwrap());
            }
        }
        let names: BTreeSet<String> = files.keys().cloned().collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, text) in &files {
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for part in line.split("super::").skip(1) {
                    let target: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if names.contains(&target) && target != *name {
                        edges.entry(name.clone()).or_default().insert(target);
                    }
                }
            }
        }
        assert!(
            edges.get("claim").is_some_and(|e| e.contains("steps")),
            "the reader found no edges: {edges:?}"
        );
        assert_eq!(crate::tests::cycle(&edges), None, "import cycle: {edges:?}");
    }

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn feed_queues_every_key_once_in_order_and_never_more_than_two_batches() {
        let queue = Arc::new(Queue::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let most_waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(queue.clone().run(4, stop, {
            let (queue, seen, most_waiting) = (queue.clone(), seen.clone(), most_waiting.clone());
            move |k: u32| {
                let (queue, seen, most_waiting) =
                    (queue.clone(), seen.clone(), most_waiting.clone());
                async move {
                    most_waiting.fetch_max(queue.waiting(), std::sync::atomic::Ordering::SeqCst);
                    seen.lock().push(k);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    queue::Next::await_change()
                }
            }
        }));
        let keys: Vec<u32> = (0..u32::try_from(QUEUE_ALL_BATCH * 3 + 7).unwrap()).collect();
        feed(&queue, keys.clone()).await;
        while queue.waiting() + queue.running() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop_tx.send_replace(true);
        task.await.unwrap();

        let seen = seen.lock().clone();
        assert_eq!(seen.len(), keys.len(), "every key ran exactly once");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, keys);
        assert_eq!(
            seen[..QUEUE_ALL_BATCH],
            keys[..QUEUE_ALL_BATCH],
            "the first batch is queued in the list's order"
        );
        let most = most_waiting.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            most < 2 * QUEUE_ALL_BATCH,
            "{most} keys waited at once; a batch is added only below {QUEUE_ALL_BATCH}"
        );
    }
}
