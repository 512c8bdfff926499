//! A kube-scheduler and PV-controller stand-in, so tests can run the whole WaitForFirstConsumer
//! flow against [`ApiServer`](crate::ApiServer) without a cluster.
//!
//! Like the real components it is watch-driven, and the two are independent tasks over
//! shared informers (one watch + reflector store per kind):
//!
//! ```text
//!  watches: nodes, pods, volumes, claims, classes ──▶ stores
//!     │ pod added/changed                     "changed": node, volume, claim or class
//!     ▼                                                   ▼
//!  scheduling queue (one pod at a time)            PV controller (own task): a pass over
//!     │ pending pod of `scheduler_name`,           claims and volumes on every change,
//!     │ not binding, not backing off               retried after 100 ms if a write failed
//!     ▼                                             ├─ provisioner annotations (GA + beta)
//!  scheduling cycle: VolumeBinding filter          ├─ bind pre-bound PV ↔ claim
//!     ─▶ extender filter ─▶ prioritize ─▶ pick     └─ Available / Released / Lost phases
//!     │ nothing fits: FailedScheduling Event, PodScheduled=False, last_failure();
//!     │ queued again after `retry_interval`
//!     ▼ node picked
//!  binding cycle, a task per pod (the queue goes on with the next pod): PreBind writes
//!  selected-node (claimRef for a static match), then wakes on every change; all claims
//!  bound ─▶ pods/binding + Scheduled; a write failed, a claim lost its selected-node, is
//!  gone or `bind_timeout` passed ─▶ FailedScheduling, back to the queue
//! ```
//!
//! The extender is called over HTTP exactly as kube-scheduler's `HTTPExtender` does
//! (pkg/scheduler/core/extender.go): `POST <urlPrefix>/<verb>`, PascalCase `ExtenderArgs` with
//! `NodeNames` when `nodeCacheCapable` and a full `Nodes` list otherwise, only a 200 counts.
//! A filter error fails the attempt unless the extender is `ignorable`; prioritize errors are
//! ignored; prioritize is skipped when one node is left; a node's score is the extender's
//! score × weight × 10, the highest wins and ties are broken by a seeded generator.
//!
//! The scheduling queue runs on a thread of its own with its own runtime, as kube-scheduler
//! is a process of its own: on the runtime it shares with the in-memory API server, each
//! extender round trip waited 2–3 ms behind watch traffic for 0.1 ms of extender work, and
//! the one-pod-at-a-time queue measured that instead of the system under test.
//!
//! Approximations: no resources, preemption, inter-pod affinity or nominated nodes; in-tree
//! score plugins all score 0; taints with effect `NoSchedule`/`NoExecute` are honoured with
//! the basic toleration rules; the assume cache covers only static volumes chosen for a pod
//! still binding (as in kube-scheduler, the extender learns of a pod's claims only when
//! PreBind has written selected-node, so the next pod's filter may not count them yet; the
//! controller checks the ledger again); an unschedulable pod is retried on a timer only, not
//! on cluster events.

mod cache;
mod extender;
mod pv_controller;
mod volumes;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{
            Event, EventSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
            Pod, PodCondition, Taint,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use cache::Cache;
use extender::HttpExtender;
use volumes::{
    SELECTED_NODE, claim_class, dynamic_provisioner, fully_bound, is_wait_for_first_consumer,
    node_labels, pv_admits, pv_statically_matches, selected_node, topology_admits, volume_name,
};

/// Event and condition reason for a pod that could not be placed.
pub const FAILED_SCHEDULING: &str = "FailedScheduling";
/// Event reason for a pod that was bound to a node.
pub const SCHEDULED: &str = "Scheduled";
/// The message VolumeBinding gives for an unbound claim of an Immediate (or missing) class.
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// How to reach one HTTP extender: the `extenders[]` entry of a KubeSchedulerConfiguration.
#[derive(Clone, Debug)]
pub struct ExtenderConfig {
    /// `urlPrefix`, e.g. `http://127.0.0.1:8888/stowage`; the verb is appended after a `/`.
    pub url_prefix: String,
    /// `filterVerb`; `None` or empty: every node passes.
    pub filter_verb: Option<String>,
    /// `prioritizeVerb`; `None` or empty: no extender scores.
    pub prioritize_verb: Option<String>,
    /// `weight` of the extender's scores.
    pub weight: i64,
    /// `nodeCacheCapable`: send `NodeNames` (true) or a full `Nodes` list (false).
    pub node_cache_capable: bool,
    /// `ignorable`: a failing filter is skipped instead of failing the attempt.
    pub ignorable: bool,
    /// `httpTimeout` for a whole exchange (default 5 s).
    pub http_timeout: Duration,
}

impl ExtenderConfig {
    /// An extender at `url_prefix` with verbs `filter` and `prioritize`, weight 1,
    /// `nodeCacheCapable: true`, not ignorable, 5 s timeout (stowage's recommended entry).
    pub fn new(url_prefix: impl Into<String>) -> Self {
        Self {
            url_prefix: url_prefix.into(),
            filter_verb: Some("filter".to_string()),
            prioritize_verb: Some("prioritize".to_string()),
            weight: 1,
            node_cache_capable: true,
            ignorable: false,
            http_timeout: Duration::from_secs(5),
        }
    }

    /// Sets `nodeCacheCapable`.
    pub fn node_cache_capable(mut self, yes: bool) -> Self {
        self.node_cache_capable = yes;
        self
    }

    /// Sets `ignorable`.
    pub fn ignorable(mut self, yes: bool) -> Self {
        self.ignorable = yes;
        self
    }

    /// Sets `weight`.
    pub fn weight(mut self, weight: i64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the filter and prioritize verbs (`None`: not called).
    pub fn verbs(mut self, filter: Option<&str>, prioritize: Option<&str>) -> Self {
        self.filter_verb = filter.map(str::to_string);
        self.prioritize_verb = prioritize.map(str::to_string);
        self
    }

    /// Sets `httpTimeout`.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }
}

/// Configuration of the stand-in.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The extender, or `None` for none (capacity-blind placement, as with an unreachable
    /// ignorable extender).
    pub extender: Option<ExtenderConfig>,
    /// Pods whose `spec.schedulerName` is this are scheduled (default `default-scheduler`).
    pub scheduler_name: String,
    /// How long an unplaceable pod waits before the next attempt (default 200 ms; the real
    /// scheduler backs off from 1 s to 10 s).
    pub retry_interval: Duration,
    /// How long binding waits for the pod's claims to be bound (VolumeBinding
    /// `bindTimeoutSeconds`, default 600 s).
    pub bind_timeout: Duration,
    /// Seed of the generator that breaks ties between equally scored nodes.
    pub seed: u64,
    /// How long after a claim appears the PV-controller emulation first acts on it (default
    /// none). kube-controller-manager's PV controller keeps its own store of claims, filled
    /// as its worker (behind a client throttled to 20 requests/s) gets to each one: in a
    /// burst that is seconds. Until then the claim gets no provisioner annotation, and a
    /// volume pre-bound to it counts as pre-bound to a missing claim.
    pub pv_controller_lag: Duration,
    /// The PV-controller emulation reaches a claim only after a pass that judged a volume
    /// pre-bound to it while the claim was missing from its store (default false), besides
    /// any `pv_controller_lag`: the order of a burst on a real cluster (the provisioner's
    /// PV first, kube-controller-manager's worker at the claim later), forced rather than
    /// timed. A claim no volume is ever pre-bound to is never reached.
    pub pv_controller_after_pre_bound_pv: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            extender: None,
            scheduler_name: "default-scheduler".to_string(),
            retry_interval: Duration::from_millis(200),
            bind_timeout: Duration::from_secs(600),
            seed: 0x5eed,
            pv_controller_lag: Duration::ZERO,
            pv_controller_after_pre_bound_pv: false,
        }
    }
}

impl SchedulerConfig {
    /// The default configuration with this extender.
    pub fn with_extender(extender: ExtenderConfig) -> Self {
        Self {
            extender: Some(extender),
            ..Self::default()
        }
    }
}

/// A pod's namespace and name.
type PodKey = (String, String);

/// What the stand-in remembers about one pod it is scheduling.
#[derive(Debug, Default)]
struct PodRecord {
    uid: String,
    /// The last failure message (FailedScheduling), if the last attempt failed.
    last_failure: Option<String>,
    /// The message of the last FailedScheduling Event emitted (to avoid a storm).
    last_event: Option<String>,
    /// Number of scheduling cycles run.
    attempts: usize,
    phase: PodPhase,
}

#[derive(Debug, Default)]
enum PodPhase {
    /// Nothing in flight: the next event about the pod starts a scheduling cycle.
    #[default]
    Idle,
    /// Backing off until the instant; a timer queues the pod again then.
    Backoff(Instant),
    /// A binding cycle runs: waiting for the claims to be bound (PreBind), then binding.
    Binding,
}

type Records = Arc<Mutex<HashMap<PodKey, PodRecord>>>;

/// The running stand-in. Dropping it stops it.
#[derive(Debug)]
pub struct Scheduler {
    records: Records,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts scheduling pending pods (and emulating the PV controller) through `client`.
    pub fn start(client: Client, config: SchedulerConfig) -> Scheduler {
        let records = Records::default();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(client, config, records.clone(), stopped));
        Scheduler {
            records,
            stop,
            task: Some(task),
        }
    }

    /// The reason the last attempt to place pod `ns/name` failed, as its FailedScheduling
    /// Event carries it (cut to 1,024 characters), or `None` if it has not failed, or
    /// succeeded since.
    pub fn last_failure(&self, ns: &str, name: &str) -> Option<String> {
        self.with_record(ns, name, |r| r.last_failure.clone())
            .flatten()
    }

    /// How many scheduling cycles have run for pod `ns/name`.
    pub fn attempts(&self, ns: &str, name: &str) -> usize {
        self.with_record(ns, name, |r| r.attempts).unwrap_or(0)
    }

    fn with_record<T>(&self, ns: &str, name: &str, f: impl FnOnce(&PodRecord) -> T) -> Option<T> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.get(&(ns.to_string(), name.to_string())).map(f)
    }

    /// Stops the stand-in and waits for it to finish its current steps.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the supervisor drops its task set, which aborts every other task.
            task.abort();
        }
    }
}

/// Starts the watches, the PV controller and the scheduling queue, and waits for all of
/// them (they end when `stopped` turns true).
async fn supervise(
    client: Client,
    config: SchedulerConfig,
    records: Records,
    stopped: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let (pods_tx, pods_rx) = mpsc::unbounded_channel();
    let cache = Cache::start(&client, &mut tasks, &stopped, pods_tx.clone());
    tasks.spawn(pv_controller::run(
        client.clone(),
        cache.clone(),
        pv_controller::Reach {
            lag: config.pv_controller_lag,
            after_pre_bound_pv: config.pv_controller_after_pre_bound_pv,
        },
        stopped.clone(),
    ));
    let queue = Queue {
        seed: config.seed,
        extender: config.extender.clone().map(HttpExtender::new),
        core: Arc::new(Core {
            client,
            config,
            records,
            cache,
        }),
        rx: pods_rx,
        tx: pods_tx,
        queue: VecDeque::new(),
        queued: HashSet::new(),
        binding: JoinSet::new(),
        timers: JoinSet::new(),
        assumed: HashMap::new(),
    };
    tasks.spawn(run_on_own_thread(queue, stopped));
    while tasks.join_next().await.is_some() {}
}

/// Runs the scheduling queue on a thread of its own with its own runtime (see the module
/// docs); resolves when it has ended.
async fn run_on_own_thread(queue: Queue, stopped: watch::Receiver<bool>) {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let spawned = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| {
            std::thread::Builder::new()
                .name("scheduler".to_string())
                .spawn(move || {
                    runtime.block_on(queue.run(stopped));
                    let _ = done.send(());
                })
        });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => tracing::error!(
            error = %e,
            "scheduler stand-in: cannot start the scheduling queue's thread; no pod is scheduled"
        ),
    }
}

/// One view of the cluster for a scheduling cycle or a PV-controller pass, read from the
/// stores.
pub(crate) struct Snapshot {
    nodes: Vec<Arc<Node>>,
    pvs: BTreeMap<String, Arc<PersistentVolume>>,
    claims: BTreeMap<(String, String), Arc<PersistentVolumeClaim>>,
    classes: BTreeMap<String, Arc<StorageClass>>,
}

impl Snapshot {
    fn of(cache: &Cache) -> Snapshot {
        // By name, as a list returns them: extenders see a stable order.
        let mut nodes = cache.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Snapshot {
            nodes,
            pvs: cache.pvs_by_name(),
            claims: cache.claims_by_key(),
            classes: cache
                .classes
                .state()
                .into_iter()
                .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
                .collect(),
        }
    }

    fn claim(&self, ns: &str, name: &str) -> Option<&PersistentVolumeClaim> {
        self.claims
            .get(&(ns.to_string(), name.to_string()))
            .map(Arc::as_ref)
    }

    fn class_of(&self, claim: &PersistentVolumeClaim) -> Option<&StorageClass> {
        claim_class(claim)
            .and_then(|c| self.classes.get(c))
            .map(Arc::as_ref)
    }
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// The claim names a pod mounts.
fn pod_claims(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

/// The outcome of one scheduling cycle.
enum Cycle {
    /// Place on this node.
    Place(String),
    /// No node fits; the FailedScheduling message.
    Unschedulable(String),
}

/// A claim the binding cycle waits for, with what the scheduling cycle wrote for it: until
/// the stores show that write, they still hold the version it replaced.
#[derive(Debug)]
struct Awaited {
    claim: String,
    /// `selected-node` was written over this resourceVersion of the claim.
    selected_over: Option<String>,
    /// This static volume's `claimRef` was written over this resourceVersion of it.
    prebound_over: Option<(String, String)>,
}

/// What PreBind sees of a pod's claims.
enum Volumes {
    /// Every claim is bound to a volume that admits the node.
    Bound,
    /// Still provisioning or binding.
    Waiting,
    /// The binding cannot finish; the FailedScheduling message.
    Failed(String),
}

/// What a scheduling cycle decided.
enum Outcome {
    /// Nothing fits; the FailedScheduling message.
    Unschedulable(String),
    /// A node was chosen: the binding cycle pins the claims to it and waits for them.
    Bind {
        node: String,
        pins: Pins,
        awaited: Vec<Awaited>,
    },
}

/// The writes that pin a pod's claims to its node (VolumeBinding PreBind's API updates):
/// `selected-node` on claims to provision, `claimRef` on matched static volumes.
#[derive(Default)]
struct Pins {
    volumes: Vec<(String, PersistentVolume)>,
    claims: Vec<(String, PersistentVolumeClaim)>,
}

/// State shared by the scheduling queue and the binding cycles.
struct Core {
    client: Client,
    config: SchedulerConfig,
    records: Records,
    cache: Arc<Cache>,
}

/// The scheduling queue: one scheduling cycle at a time, binding cycles in the background.
struct Queue {
    core: Arc<Core>,
    extender: Option<HttpExtender>,
    seed: u64,
    /// Pods to look at: changed pods (from the pod watch), and backoff timers.
    rx: mpsc::UnboundedReceiver<PodKey>,
    tx: mpsc::UnboundedSender<PodKey>,
    queue: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    /// The binding cycles in flight (dropped, hence aborted, with the queue).
    binding: JoinSet<()>,
    /// Backoff timers (aborted with the queue).
    timers: JoinSet<()>,
    /// Static volumes chosen for a pod whose binding cycle has not written their claimRef
    /// yet, with the resourceVersion they were chosen at: no other pod may take them (the
    /// real scheduler's assume cache).
    assumed: HashMap<String, String>,
}

impl Queue {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let cache = self.core.cache.clone();
        tokio::select! {
            ready = cache.ready() => if !ready { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
        for pod in cache.pods.state() {
            self.push(cache::pod_key(&pod));
        }
        loop {
            while let Ok(key) = self.rx.try_recv() {
                self.push(key);
            }
            while self.binding.try_join_next().is_some() {}
            while self.timers.try_join_next().is_some() {}
            if *stopped.borrow() {
                break;
            }
            if let Some(key) = self.queue.pop_front() {
                self.queued.remove(&key);
                self.schedule_one(key, &stopped).await;
                continue;
            }
            tokio::select! {
                key = self.rx.recv() => match key {
                    Some(key) => self.push(key),
                    None => break,
                },
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
        // Binding cycles end on `stopped` themselves; timers just go.
        self.timers.abort_all();
        while self.binding.join_next().await.is_some() {}
    }

    fn push(&mut self, key: PodKey) {
        if self.queued.insert(key.clone()) {
            self.queue.push_back(key);
        }
    }

    /// splitmix64: a seeded, dependency-free tie breaker.
    fn next_random(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Queues `key` again after `delay`.
    fn requeue_after(&mut self, key: PodKey, delay: Duration) {
        let tx = self.tx.clone();
        self.timers.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(key);
        });
    }

    /// Runs a scheduling cycle for the pod if it is pending, ours, and neither binding nor
    /// backing off; hands a placed pod to a binding cycle.
    async fn schedule_one(&mut self, key: PodKey, stopped: &watch::Receiver<bool>) {
        let core = self.core.clone();
        let Some(pod) = core.cache.pod(&key) else {
            core.lock().remove(&key);
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let pending = spec
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty)
            && spec
                .and_then(|s| s.scheduler_name.as_deref())
                .unwrap_or("default-scheduler")
                == core.config.scheduler_name
            && pod.metadata.deletion_timestamp.is_none();
        {
            let mut records = core.lock();
            if !pending {
                // Placed (by anyone) or being deleted: keep its last failure, unless it is
                // another pod of the same name.
                if records.get(&key).is_some_and(|r| r.uid != uid) {
                    records.remove(&key);
                }
                return;
            }
            let record = records.entry(key.clone()).or_default();
            if record.uid != uid {
                *record = PodRecord {
                    uid,
                    ..PodRecord::default()
                };
            }
            match record.phase {
                PodPhase::Binding => return,
                PodPhase::Backoff(until) if until > Instant::now() => return,
                PodPhase::Idle | PodPhase::Backoff(_) => {}
            }
            record.attempts += 1;
            record.phase = PodPhase::Idle;
        }
        let retry = core.config.retry_interval;
        let next = match self.attempt(&pod).await {
            Ok(Outcome::Unschedulable(message)) => {
                core.record_failure(&pod, &message).await;
                PodPhase::Backoff(Instant::now() + retry)
            }
            Ok(Outcome::Bind {
                node,
                pins,
                awaited,
            }) => {
                let deadline = Instant::now() + core.config.bind_timeout;
                self.binding.spawn(core.clone().binding_cycle(
                    pod.clone(),
                    node,
                    pins,
                    awaited,
                    deadline,
                    self.tx.clone(),
                    stopped.clone(),
                ));
                PodPhase::Binding
            }
            Err(e) => {
                tracing::debug!(error = %e, pod = ?pod.metadata.name, "scheduler stand-in: step failed");
                PodPhase::Backoff(Instant::now() + retry)
            }
        };
        if matches!(next, PodPhase::Backoff(_)) {
            self.requeue_after(key.clone(), retry);
        }
        if let Some(record) = core.lock().get_mut(&key) {
            record.phase = next;
        }
    }

    /// One scheduling cycle: pick a node and decide how each claim gets there (the writes
    /// are the binding cycle's), or say why nothing fits.
    async fn attempt(&mut self, pod: &Pod) -> Result<Outcome, kube::Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let snap = Snapshot::of(&self.core.cache);
        let node = match self.cycle(&snap, pod).await {
            Cycle::Place(node) => node,
            Cycle::Unschedulable(message) => return Ok(Outcome::Unschedulable(message)),
        };
        let labels = snap
            .nodes
            .iter()
            .find(|n| name_of(&n.metadata) == node)
            .map(|n| node_labels(n))
            .unwrap_or_default();
        // Volumes assumed for other pods stay taken while the store shows them unchanged.
        self.assumed.retain(|pv, over| {
            snap.pvs
                .get(pv)
                .is_some_and(|v| v.metadata.resource_version.as_ref() == Some(over))
        });
        let mut taken: Vec<String> = self.assumed.keys().cloned().collect();
        let mut awaited = Vec::new();
        let mut pins = Pins::default();
        for claim_name in pod_claims(pod) {
            let Some(claim) = snap.claim(&ns, &claim_name) else {
                continue;
            };
            let mut wait = Awaited {
                claim: claim_name.clone(),
                selected_over: None,
                prebound_over: None,
            };
            if volume_name(claim).is_some() {
                if !fully_bound(claim) {
                    awaited.push(wait);
                }
                continue;
            }
            if selected_node(claim) == Some(node.as_str()) {
                awaited.push(wait);
                continue;
            }
            let static_match = snap.pvs.values().find(|pv| {
                !taken.contains(&name_of(&pv.metadata)) && pv_statically_matches(pv, claim, &labels)
            });
            if let Some(pv) = static_match {
                let pv_name = name_of(&pv.metadata);
                taken.push(pv_name.clone());
                let mut pv = PersistentVolume::clone(pv);
                if let Some(spec) = pv.spec.as_mut() {
                    spec.claim_ref = Some(ObjectReference {
                        api_version: Some("v1".to_string()),
                        kind: Some("PersistentVolumeClaim".to_string()),
                        namespace: Some(ns.clone()),
                        name: Some(claim_name.clone()),
                        uid: claim.metadata.uid.clone(),
                        resource_version: claim.metadata.resource_version.clone(),
                        ..ObjectReference::default()
                    });
                }
                let over = pv.metadata.resource_version.clone().unwrap_or_default();
                self.assumed.insert(pv_name.clone(), over.clone());
                pins.volumes.push((pv_name.clone(), pv));
                wait.prebound_over = Some((pv_name, over));
            } else {
                let mut claim = claim.clone();
                claim
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(SELECTED_NODE.to_string(), node.clone());
                wait.selected_over = claim.metadata.resource_version.clone();
                pins.claims.push((claim_name, claim));
            }
            awaited.push(wait);
        }
        Ok(Outcome::Bind {
            node,
            pins,
            awaited,
        })
    }

    /// Filters and scores the nodes for `pod`.
    async fn cycle(&mut self, snap: &Snapshot, pod: &Pod) -> Cycle {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let total = snap.nodes.len();
        let unavailable = |reason: &str| {
            Cycle::Unschedulable(format!("0/{total} nodes are available: {reason}."))
        };

        // VolumeBinding PreFilter.
        let mut claims = Vec::new();
        for claim_name in pod_claims(pod) {
            let Some(claim) = snap.claim(&ns, &claim_name) else {
                return unavailable(&format!("persistentvolumeclaim {claim_name:?} not found"));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return unavailable(&format!(
                    "persistentvolumeclaim {claim_name:?} is being deleted"
                ));
            }
            let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Lost") {
                return unavailable(&format!(
                    "persistentvolumeclaim {claim_name:?} bound to non-existent persistentvolume {:?}",
                    volume_name(claim).unwrap_or_default()
                ));
            }
            if volume_name(claim).is_none() && !is_wait_for_first_consumer(snap.class_of(claim)) {
                return unavailable(UNBOUND_IMMEDIATE);
            }
            claims.push(claim);
        }

        // In-tree filters.
        let spec = pod.spec.clone().unwrap_or_default();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        let mut feasible: Vec<&Node> = Vec::new();
        for node in &snap.nodes {
            let name = name_of(&node.metadata);
            match self.node_rejection(snap, &spec, &claims, node) {
                Some(reason) => {
                    reasons.insert(name, reason);
                }
                None => feasible.push(node),
            }
        }

        // Extender filter.
        if let Some(ext) = &self.extender
            && !feasible.is_empty()
        {
            match ext.filter(pod, &feasible).await {
                Ok(None) => {}
                Ok(Some(filtered)) => {
                    for (node, reason) in filtered.failed {
                        if feasible.iter().any(|n| name_of(&n.metadata) == node) {
                            reasons.insert(node, reason);
                        }
                    }
                    feasible.retain(|n| filtered.passed.contains(&name_of(&n.metadata)));
                }
                Err(e) if ext.config().ignorable => {
                    tracing::debug!(error = %e, "ignorable extender failed; skipped");
                }
                Err(e) => return Cycle::Unschedulable(format!("{e:#}")),
            }
        }
        if feasible.is_empty() {
            return Cycle::Unschedulable(aggregate(total, &reasons));
        }
        if feasible.len() == 1 {
            return Cycle::Place(name_of(&feasible[0].metadata));
        }

        // Prioritize.
        let mut scores: BTreeMap<String, i64> =
            feasible.iter().map(|n| (name_of(&n.metadata), 0)).collect();
        if let Some(ext) = &self.extender {
            match ext.prioritize(pod, &feasible).await {
                Ok(given) => {
                    for (host, score) in given {
                        if let Some(total) = scores.get_mut(&host) {
                            *total += score * ext.config().weight * 10;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "extender prioritize failed; ignored"),
            }
        }
        let best = scores.values().copied().max().unwrap_or(0);
        let top: Vec<&String> = scores
            .iter()
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| n)
            .collect();
        let pick = usize::try_from(self.next_random() % top.len() as u64).unwrap_or(0);
        Cycle::Place(top[pick].clone())
    }

    /// Why an in-tree filter (readiness, cordon, taints, nodeSelector, VolumeBinding) rejects
    /// `node`, if it does.
    fn node_rejection(
        &self,
        snap: &Snapshot,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        claims: &[&PersistentVolumeClaim],
        node: &Node,
    ) -> Option<String> {
        let labels = node_labels(node);
        let node_spec = node.spec.clone().unwrap_or_default();
        if node_spec.unschedulable == Some(true) {
            return Some("node(s) were unschedulable".to_string());
        }
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            return Some(
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_string(),
            );
        }
        for taint in node_spec.taints.as_deref().unwrap_or_default() {
            if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !tolerated(spec, taint)
            {
                return Some(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or_default()
                ));
            }
        }
        if let Some(selector) = &spec.node_selector
            && selector.iter().any(|(k, v)| labels.get(k) != Some(v))
        {
            return Some("node(s) didn't match Pod's node affinity/selector".to_string());
        }
        // VolumeBinding Filter.
        let mut taken: Vec<String> = Vec::new();
        for claim in claims {
            if let Some(volume) = volume_name(claim) {
                match snap.pvs.get(volume) {
                    Some(pv) if pv_admits(pv, &labels) => continue,
                    Some(_) => {
                        return Some("node(s) had volume node affinity conflict".to_string());
                    }
                    None => {
                        return Some(format!("persistentvolume {volume:?} not found"));
                    }
                }
            }
            let no_volume = "node(s) didn't find available persistent volumes to bind";
            if let Some(selected) = selected_node(claim) {
                if selected != name_of(&node.metadata) {
                    return Some(no_volume.to_string());
                }
                continue;
            }
            if let Some(pv) = snap.pvs.values().find(|pv| {
                !taken.contains(&name_of(&pv.metadata)) && pv_statically_matches(pv, claim, &labels)
            }) {
                taken.push(name_of(&pv.metadata));
                continue;
            }
            match snap.class_of(claim) {
                Some(class) if dynamic_provisioner(class).is_some() => {
                    if !topology_admits(class, &labels) {
                        return Some("node(s) had volume node affinity conflict".to_string());
                    }
                }
                _ => return Some(no_volume.to_string()),
            }
        }
        None
    }
}

impl Core {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PodKey, PodRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The binding cycle of one pod, beside the scheduling cycles of the next ones (PreBind,
    /// then Bind): pin the claims to the node, wait until the PV controller has bound every
    /// one, then `pods/binding`. A failure sends the pod back to the queue after
    /// `retry_interval`.
    #[allow(clippy::too_many_arguments)]
    async fn binding_cycle(
        self: Arc<Self>,
        pod: Arc<Pod>,
        node: String,
        pins: Pins,
        awaited: Vec<Awaited>,
        deadline: Instant,
        queue: mpsc::UnboundedSender<PodKey>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let key = cache::pod_key(&pod);
        let fail = |detail: String| {
            format!("running PreBind plugin \"VolumeBinding\": binding volumes: {detail}")
        };
        let mut changed = self.cache.subscribe();
        let pinned = self.pin(&pod, &pins).await;
        let failure = loop {
            if let Err(e) = &pinned {
                break Some(fail(e.to_string()));
            }
            changed.borrow_and_update();
            match self.volumes(&pod, &node, &awaited) {
                Volumes::Bound => match self.bind(&pod, &node).await {
                    Ok(()) => {
                        if let Some(r) = self.lock().get_mut(&key) {
                            r.phase = PodPhase::Idle;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, pod = ?pod.metadata.name, "scheduler stand-in: binding failed");
                        break None;
                    }
                },
                Volumes::Failed(detail) => break Some(fail(detail)),
                Volumes::Waiting if Instant::now() >= deadline => {
                    break Some(fail("context deadline exceeded".to_string()));
                }
                Volumes::Waiting => {}
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        };
        if let Some(message) = failure {
            self.record_failure(&pod, &message).await;
        }
        let retry = self.config.retry_interval;
        if let Some(r) = self.lock().get_mut(&key) {
            r.phase = PodPhase::Backoff(Instant::now() + retry);
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {
                let _ = queue.send(key);
            }
            _ = stopped.wait_for(|s| *s) => {}
        }
    }

    /// PreBind's API updates, side by side: one round trip, not one per claim.
    async fn pin(&self, pod: &Pod, pins: &Pins) -> Result<(), kube::Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let pp = PostParams::default();
        let volume_writes: Vec<_> = pins
            .volumes
            .iter()
            .map(|(name, pv)| pvs.replace(name, &pp, pv))
            .collect();
        let claim_writes: Vec<_> = pins
            .claims
            .iter()
            .map(|(name, claim)| claims.replace(name, &pp, claim))
            .collect();
        futures::try_join!(
            futures::future::try_join_all(volume_writes),
            futures::future::try_join_all(claim_writes)
        )?;
        Ok(())
    }

    /// PreBind's check: every claim bound to a volume that admits the node, or a reason the
    /// binding cannot finish (a claim gone, or its selected-node removed: the provisioner
    /// asked for another node).
    fn volumes(&self, pod: &Pod, node: &str, awaited: &[Awaited]) -> Volumes {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = self.cache.node(node).map(|n| node_labels(&n));
        let mut all_bound = true;
        for wait in awaited {
            let claim_name = &wait.claim;
            let Some(claim) = self.cache.claim(&ns, claim_name) else {
                return Volumes::Failed(format!("persistentvolumeclaim {claim_name:?} not found"));
            };
            if fully_bound(&claim) {
                let volume = volume_name(&claim).and_then(|v| self.cache.pv(v));
                let admits = volume
                    .zip(labels.as_ref())
                    .is_some_and(|(pv, labels)| pv_admits(&pv, labels));
                if !admits {
                    let pv = volume_name(&claim).unwrap_or_default();
                    return Volumes::Failed(format!(
                        "pv {pv:?} node affinity doesn't match node {node:?}"
                    ));
                }
                continue;
            }
            all_bound = false;
            // Our own write not seen yet counts as done.
            let unchanged = |over: &Option<String>, current: &ObjectMeta| {
                over.is_some() && *over == current.resource_version
            };
            let pinned = selected_node(&claim) == Some(node)
                || unchanged(&wait.selected_over, &claim.metadata);
            if pinned {
                continue;
            }
            let prebound = volume_name(&claim).is_some()
                || wait.prebound_over.as_ref().is_some_and(|(pv, over)| {
                    self.cache
                        .pv(pv)
                        .is_some_and(|pv| unchanged(&Some(over.clone()), &pv.metadata))
                })
                || self
                    .cache
                    .pvs
                    .state()
                    .iter()
                    .any(|pv| volumes::pv_claims(pv, &claim));
            if !prebound {
                return Volumes::Failed(format!("provisioning failed for PVC {claim_name:?}"));
            }
        }
        if all_bound {
            Volumes::Bound
        } else {
            Volumes::Waiting
        }
    }

    /// FailedScheduling: remember it, emit an Event when the message changes, and set
    /// `PodScheduled=False` with reason `Unschedulable`.
    async fn record_failure(&self, pod: &Pod, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = name_of(&pod.metadata);
        let emit = {
            let mut records = self.lock();
            let record = records.entry((ns.clone(), name.clone())).or_default();
            // What a user reads in the Event, as the real one's is cut.
            record.last_failure = Some(event_note(message));
            let emit = record.last_event.as_deref() != Some(message);
            record.last_event = Some(message.to_string());
            emit
        };
        if emit && let Err(e) = self.event(pod, "Warning", FAILED_SCHEDULING, message).await {
            tracing::debug!(error = %e, "scheduler stand-in: event failed");
        }
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        let up_to_date = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        });
        if up_to_date {
            return;
        }
        let mut pod = pod.clone();
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Pending".to_string());
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "PodScheduled");
        conditions.push(PodCondition {
            type_: "PodScheduled".to_string(),
            status: "False".to_string(),
            reason: Some("Unschedulable".to_string()),
            message: Some(message.to_string()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..PodCondition::default()
        });
        if let Err(e) = Api::<Pod>::namespaced(self.client.clone(), &ns)
            .replace_status(&name, &PostParams::default(), &pod)
            .await
        {
            tracing::debug!(error = %e, "scheduler stand-in: pod status failed");
        }
    }

    /// `pods/binding`, then a `Scheduled` Event.
    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = name_of(&pod.metadata);
        let binding = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        Api::<Pod>::namespaced(self.client.clone(), &ns)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await?;
        if let Some(r) = self.lock().get_mut(&(ns.clone(), name.clone())) {
            r.last_failure = None;
        }
        let message = format!("Successfully assigned {ns}/{name} to {node}");
        self.event(pod, "Normal", SCHEDULED, &message).await
    }

    /// A core/v1 Event about `pod`, as the scheduler's recorder writes it.
    async fn event(
        &self,
        pod: &Pod,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = name_of(&pod.metadata);
        let now = Time(Timestamp::now());
        let note = event_note(message);
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Pod".to_string()),
                namespace: Some(ns.clone()),
                name: Some(name),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_string()),
            message: Some(note),
            type_: Some(type_.to_string()),
            source: Some(EventSource {
                component: Some(self.config.scheduler_name.clone()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(self.config.scheduler_name.clone()),
            reporting_instance: Some(format!("{}-testkit", self.config.scheduler_name)),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }
}

/// Whether the pod tolerates the taint (key/operator/value/effect, as `ToleratesTaint`).
fn tolerated(spec: &k8s_openapi::api::core::v1::PodSpec, taint: &Taint) -> bool {
    spec.tolerations
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            let key = t.key.as_deref().unwrap_or_default();
            match t.operator.as_deref().unwrap_or("Equal") {
                "Exists" => effect_ok && (key.is_empty() || key == taint.key),
                _ => {
                    effect_ok
                        && key == taint.key
                        && t.value.as_deref().unwrap_or_default()
                            == taint.value.as_deref().unwrap_or_default()
                }
            }
        })
}

/// An Event's message as the API server takes it: at most 1,024 characters. A longer
/// `FailedScheduling` message is refused outright by the API server of 1.19 (the Event is
/// lost); later kube-schedulers cut it to fit, ending in `...`, as this does.
fn event_note(message: &str) -> String {
    let mut note = message.to_string();
    if note.len() > 1024 {
        let mut cut = 1021;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// `0/N nodes are available: 2 <reason>, 1 <reason>.` with identical reasons counted, sorted
/// by reason as the scheduler does.
fn aggregate(total: usize, reasons: &BTreeMap<String, String>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons.values() {
        *counts.entry(reason.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_reason_like_failed_scheduling() {
        let reasons = BTreeMap::from([
            ("a".to_string(), "full".to_string()),
            ("b".to_string(), "full".to_string()),
            ("c".to_string(), "node(s) were unschedulable".to_string()),
        ]);
        assert_eq!(
            aggregate(3, &reasons),
            "0/3 nodes are available: 2 full, 1 node(s) were unschedulable."
        );
    }
}
