//! The controller's and extender's view of the cluster, in ledger terms.
//!
//! [`ClusterIndex`] holds the objects the reflectors deliver (StorageNodes, LocalVolumes,
//! PersistentVolumeClaims, StorageClasses; claims and LocalVolumes trimmed to what the
//! ledger reads, see [`slim`]) behind synchronous `apply_*`, `delete_*` and
//! `reset_*` methods, the shape of kubert's `IndexClusterResource`. `reset_*` replaces the
//! whole kind, so objects missing from a re-list disappear.
//!
//! ```text
//!   StorageNode.status.pools ──► capacity, reserve, ready, heartbeat
//!   LocalVolume.spec         ──► allocated  (per node/pool, max with the agent's figure)
//!   claim + selected-node    ──► reserved   (local class, unbound, no LocalVolume yet)
//!   pod's own claims         ──► Demand, minus what the cluster already holds for them
//! ```
//!
//! The time-independent part of the ledger is kept up to date by every change, node by
//! node: a running tally keeps allocated and reserved bytes per node and pool by deltas (a claim's
//! reservation starts and ends with its `selected-node`, its binding and its LocalVolume),
//! and each change rewrites only the entries of the nodes it touched, so no extender request
//! ever derives the ledger, whatever churns. Heartbeat ages are filled in per query from
//! `now`. Beside each node's ledger entry the index keeps a compact summary (free and
//! allocatable bytes per pool, readiness, heartbeat) in contiguous arrays, which
//! [`FitPlan`] reads on the extender's per-node path: a node that certainly fits, and every
//! score, is decided from the summary alone, and only a node that may not fit goes through
//! [`check_aged`] for the reason.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;

use crate::api::local_volume::LocalVolume;
use crate::api::names;
use crate::api::storage_node::{StorageNode, StorageNodeStatus};
use crate::ledger::{
    Bytes, ClaimKey, Demand, DemandOverflow, FitOptions, Ledger, NodeName, NodeState, Placement,
    PoolName, QuantityError, Unfit, check_aged, score_share,
};

pub mod class;
pub mod inflight;
pub mod metrics;
pub mod policy;
pub mod rows;
pub mod slim;
mod tally;
pub mod watch;

#[cfg(test)]
mod tests;

pub use class::{ClassError, ClassParams};
pub use metrics::ExtenderMetrics;
pub use policy::{Clock, StowagePolicy};
pub use rows::{ClaimRow, Id, Name, PvRow, Sym, Syms, VolumeRow};
use tally::{ClaimId, Hold, Tally};

/// Prefix of a LocalVolume's name; the rest is the claim's UID.
pub const LOCAL_VOLUME_PREFIX: &str = "pvc-";

/// The objects the ledger, the extender and the provisioner read, keyed as Kubernetes keys
/// them. Claims, LocalVolumes and PersistentVolumes are kept as compact [`rows`]; Nodes as
/// their hostname label; StorageNodes and StorageClasses whole (stripped, see [`slim`]).
#[derive(Default)]
pub struct ClusterIndex {
    /// StorageNodes by name: their status is all the index reads of them.
    nodes: HashMap<Box<str>, Option<StorageNodeStatus>>,
    volumes: Rows<Name, VolumeRow>,
    /// LocalVolumes this process decided to create and has not had answered yet, by name:
    /// counted as allocated on their node, so the node's next decision need not wait for
    /// the create (kube-scheduler's assume cache). Apart from `volumes`, so a re-list never
    /// drops one; see [`ClusterIndex::assume_local_volume`].
    assumed: HashMap<Name, Assumed>,
    /// By `(namespace, name)`.
    claims: Rows<(Sym, Box<str>), ClaimRow>,
    /// PersistentVolumes whose `provisioned-by` is one of `pv_provisioners`.
    pvs: Rows<Name, PvRow>,
    /// Node name → its `kubernetes.io/hostname` label (only fed in the controller).
    k8s_nodes: HashMap<Box<str>, Option<Sym>>,
    /// Pods not bound to a node yet that use claims, by `(namespace, name)`: the names of
    /// their claims (only fed in the controller, which provisions a pod's claims as one).
    pods: HashMap<(Sym, Box<str>), ClaimNames>,
    /// `(namespace, claim)` → the unbound pods in `pods` that use it.
    claim_pods: HashMap<(Sym, Box<str>), Vec<Box<str>>>,
    /// Namespace name → its uid, `None` while it is being deleted (only fed in the
    /// controller: NFS ownership markers record it, to tell a re-created namespace).
    namespaces: HashMap<Box<str>, Option<Box<str>>>,
    classes: HashMap<String, StorageClass>,
    syms: Syms,
    /// The node-local provisioner name: claims of classes naming it are placed.
    provisioner: ProvisionerName,
    /// The provisioner names whose PersistentVolumes are kept.
    pv_provisioners: Vec<String>,
    /// Told which objects changed, so their reconcilers look at them.
    trigger: Option<TriggerFn>,
    /// Rows of a re-list in progress, made as its pages arrive (see `stage_*`).
    staging: Staging,
    /// The node-local classes among `classes`, parsed, by name.
    local_classes: HashMap<Sym, LocalClass>,
    /// Allocated and reserved bytes per node and pool, kept by deltas ([`tally`]).
    tally: Tally,
    /// The ledger without heartbeat ages, with each node's parsed heartbeat and compact
    /// summary. Every change updates the nodes it concerns in place; only a StorageNode
    /// leaving, a node's pool list changing, or a re-list rebuilds it whole. Reads never
    /// derive anything.
    base: Base,
    /// How often `base` was rebuilt whole, for tests that prove a change did not.
    #[cfg(test)]
    rebuilds: usize,
}

impl std::fmt::Debug for ClusterIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIndex")
            .field("storage_nodes", &self.nodes.len())
            .field("local_volumes", &self.volumes.len())
            .field("assumed_local_volumes", &self.assumed.len())
            .field("claims", &self.claims.len())
            .field("persistent_volumes", &self.pvs.len())
            .field("nodes", &self.k8s_nodes.len())
            .field("unbound_pods", &self.pods.len())
            .field("namespaces", &self.namespaces.len())
            .field("classes", &self.classes.len())
            .field("provisioner", &self.provisioner.0)
            .finish_non_exhaustive()
    }
}

/// The names of the claims an unbound pod uses.
type ClaimNames = Box<[Box<str>]>;

/// Where an assumed LocalVolume takes its bytes.
#[derive(Clone, Copy, Debug)]
struct Assumed {
    node: Sym,
    pool: Sym,
    size: u64,
}

/// The rows of re-lists in progress: a watch's list is turned into rows page by page, so
/// 50,000 whole objects are never held at once; `commit_*` then replaces the kind.
#[derive(Default)]
struct Staging {
    volumes: Rows<Name, VolumeRow>,
    claims: Rows<(Sym, Box<str>), ClaimRow>,
    pvs: Rows<Name, PvRow>,
}

/// An object whose reconciler should look at it again (see [`ClusterIndex::set_trigger`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A claim, by namespace and name.
    Claim(String, String),
    /// A LocalVolume, by name.
    Volume(String),
    /// A PersistentVolume, by name.
    Pv(String),
}

/// Receives [`Trigger`]s; called with the index's write lock held, so it must not block.
pub type TriggerFn = std::sync::Arc<dyn Fn(Trigger) + Send + Sync>;

/// The hasher of the name-keyed map on the extender's per-node path: foldhash's fast
/// variant, seeded per process, several times cheaper than SipHash on short keys. The keys
/// are StorageNode names, which only the agents' service account writes.
type FastState = foldhash::fast::RandomState;

/// The derived, time-independent ledger.
#[derive(Debug, Default)]
struct Base {
    /// Node name → position in `nodes` and `summaries`.
    by_name: HashMap<Box<str>, usize, FastState>,
    /// The ledger entries.
    nodes: Vec<BaseNode>,
    /// What the fit check and the score read of each node, in `nodes` order.
    summaries: Vec<NodeSummary>,
    /// Every node's pools, flat; a node's are `pools[summary.pools]`.
    pools: Vec<PoolSummary>,
    /// The pool names any node has; [`PoolSummary::pool`] is a position here.
    pool_names: Vec<PoolName>,
    /// Entries of `pools` no node points at any more (its node left, or its pool list
    /// changed size); the index rebuilds `Base` when they are most of it.
    stale_pools: usize,
}

/// A node's ledger entry without its heartbeat age, and the heartbeat it is derived from.
#[derive(Debug)]
struct BaseNode {
    state: NodeState,
    heartbeat: Option<Timestamp>,
}

/// The part of a node's ledger entry the fit check and the score read.
#[derive(Clone, Debug)]
struct NodeSummary {
    heartbeat: Option<Timestamp>,
    ready: bool,
    pools: Range<usize>,
}

/// One pool's figures, as [`crate::ledger::PoolState`] computes them.
#[derive(Clone, Copy, Debug)]
struct PoolSummary {
    /// Position in [`Base::pool_names`].
    pool: usize,
    ready: bool,
    free: Bytes,
    allocatable: Bytes,
}

/// A pod's demand resolved against the index's pool names, for deciding many nodes in one
/// request without a string comparison per pool. Made by [`ClusterIndex::fit_plan`].
#[derive(Debug)]
pub struct FitPlan<'a> {
    base: &'a Base,
    /// Per demanded pool: its position in [`Base::pool_names`] (`None` when no node has
    /// it) and the bytes needed, in the demand's order.
    wanted: Vec<(Option<usize>, Bytes)>,
}

/// One node as seen through a [`FitPlan`].
#[derive(Clone, Copy, Debug)]
pub struct PlannedNode<'a> {
    plan: &'a FitPlan<'a>,
    index: usize,
}

/// What a pod asks of stowage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodDemand {
    /// The pod has no unbound claim of a `local.stowage.io` class: the extender lets every
    /// node pass and leaves the pod to the scheduler's own volume checks.
    NotOurs,
    /// One of the pod's claims, or its class, is not in the index yet: the watch is behind
    /// the scheduler (a pod is often scheduled milliseconds after its claims are created).
    /// The extender turns every node down for now, as unschedulable, and the scheduler
    /// tries again after its back-off; letting the pod pass would place it capacity-blind.
    Unseen(String),
    /// The pod's unbound local claims, summed per pool.
    Demand {
        /// Bytes needed per pool.
        demand: Demand,
        /// The placement of the pod's first local claim's class. When a pod's classes
        /// disagree the first claim (in `spec.volumes` order) decides: one score per node
        /// cannot follow two policies.
        placement: Placement,
        /// Bytes the cluster already holds for these very claims (a reservation on the
        /// selected node, or a LocalVolume being made). They are credited back when
        /// checking that node, so a claim is not counted twice.
        exclude_own_reservations: Vec<OwnHold>,
    },
}

/// Bytes already held on a node for one of the pod's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnHold {
    /// The node holding them.
    pub node: NodeName,
    /// The pool.
    pub pool: PoolName,
    /// How many.
    pub bytes: Bytes,
    /// In which counter.
    pub held: Held,
}

/// Which counter of a pool holds a claim's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Reserved: the claim has a selected node but no LocalVolume yet.
    Reserved,
    /// Allocated: the claim's LocalVolume exists but the claim is not bound yet.
    Allocated,
}

/// A claim's reservation on a node, as [`ClusterIndex::reservations_on`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The claim's uid.
    pub uid: String,
    /// The claim's namespace and name.
    pub claim: ClaimKey,
    /// The claim's creation time: the provisioner serves older claims first.
    pub created: Option<Timestamp>,
    /// The pool reserved in.
    pub pool: PoolName,
    /// How many bytes.
    pub bytes: Bytes,
}

/// The pod's demand cannot be worked out; the extender reports it as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    /// A claim's StorageClass has an invalid parameter.
    #[error(transparent)]
    Class(#[from] ClassError),
    /// A claim's storage request is not a size.
    #[error("claim {namespace}/{name}: spec.resources.requests.storage: {error}")]
    Quantity {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
        /// The parse error.
        error: QuantityError,
    },
    /// The claims add up to more than 64 bits.
    #[error(transparent)]
    Overflow(#[from] DemandOverflow),
}

/// A StorageClass of the node-local provisioner, as the index keeps it.
#[derive(Clone, Debug)]
struct LocalClass {
    /// Its parameters, or why they are invalid.
    params: Result<ClassParams, ClassError>,
    /// Its pool, interned (`None` when the parameters are invalid).
    pool: Option<Sym>,
}

/// A claim that stowage must place, as far as the index can tell.
struct LocalClaim<'a> {
    claim: &'a ClaimRow,
    params: &'a ClassParams,
    bytes: Bytes,
}

/// The node-local provisioner name the index serves; [`names::PROVISIONER_LOCAL`] unless
/// the controller's `--provisioner-name` says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProvisionerName(String);

impl Default for ProvisionerName {
    fn default() -> Self {
        Self(names::PROVISIONER_LOCAL.to_string())
    }
}

// === impl ClusterIndex ===

impl ClusterIndex {
    /// An empty index for classes of `local.stowage.io`.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index for classes whose provisioner is `provisioner` (the controller's
    /// `--provisioner-name`): only their claims count as demand and reservations.
    pub fn for_provisioner(provisioner: impl Into<String>) -> Self {
        Self {
            provisioner: ProvisionerName(provisioner.into()),
            ..Self::default()
        }
    }

    /// The node-local provisioner name this index serves.
    pub fn provisioner(&self) -> &str {
        &self.provisioner.0
    }

    /// Adds or replaces a StorageNode (keyed by name).
    ///
    /// Every agent writes a heartbeat every 10 s, so at 5,000 nodes hundreds of updates a
    /// second change nothing but `status.heartbeatTime`. Those update the derived ledger in
    /// place (the node's heartbeat) instead of discarding it, so extender requests do not
    /// re-derive the whole cluster after every heartbeat.
    pub fn apply_storage_node(&mut self, node: StorageNode) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = compact_status(node.status);
        let heartbeat_only = self
            .nodes
            .get(name.as_str())
            .is_some_and(|old| only_heartbeat_differs(old.as_ref(), status.as_ref()));
        let beat = heartbeat(status.as_ref());
        self.nodes.insert(name.as_str().into(), status);
        match self.base.by_name.get(name.as_str()) {
            Some(&i) if heartbeat_only => {
                self.base.nodes[i].heartbeat = beat;
                self.base.summaries[i].heartbeat = beat;
            }
            _ => self.refresh_node(&name),
        }
    }

    /// Removes a StorageNode.
    pub fn delete_storage_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.base.remove(name);
            self.compact_base();
        }
    }

    /// Replaces every StorageNode with a re-list.
    pub fn reset_storage_nodes(&mut self, nodes: impl IntoIterator<Item = StorageNode>) {
        self.nodes = nodes
            .into_iter()
            .map(|n| {
                (
                    n.metadata.name.as_deref().unwrap_or_default().into(),
                    compact_status(n.status),
                )
            })
            .collect();
        self.rebuild();
    }

    /// Sets who is told about changed claims, LocalVolumes and PersistentVolumes.
    pub fn set_trigger(&mut self, trigger: TriggerFn) {
        self.trigger = Some(trigger);
    }

    /// Keeps the PersistentVolumes of `provisioner` too (those of the node-local provisioner
    /// are always kept).
    pub fn keep_pvs_of(&mut self, provisioner: impl Into<String>) {
        self.pv_provisioners.push(provisioner.into());
    }

    fn fire(&self, triggers: impl IntoIterator<Item = Trigger>) {
        if let Some(trigger) = &self.trigger {
            for t in triggers {
                trigger(t);
            }
        }
    }

    // --- LocalVolumes ---

    /// Adds or replaces a LocalVolume (keyed by name).
    pub fn apply_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let row = VolumeRow::new(&volume, &mut self.syms);
        let unchanged = self.volumes.get(&name).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.volume_triggers(&name, &row));
        let before = self.counted(&name);
        self.volumes.insert(name.clone(), row);
        self.recount(&name, before);
        self.fire(triggers.into_iter().flatten());
    }

    /// Records a LocalVolume this process has just written (the answer to its create or
    /// patch), so the next fit check counts it before the watch delivers it. Unlike
    /// [`ClusterIndex::apply_local_volume`] (the watch, always in order) it never replaces a
    /// newer version: the watch may already have delivered a later change (an agent marks a
    /// volume Ready within milliseconds of its creation), which this older answer must not
    /// undo. It is kept when the index has no version of it, or an older one where resource
    /// versions compare as numbers (etcd's); otherwise the index's own is kept.
    pub fn note_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let old = self.volumes.get(&name).map(|row| &row.rv);
        if newer(old, volume.metadata.resource_version.as_deref()) {
            self.apply_local_volume(volume);
        }
    }

    /// Counts `volume` as allocated on its node until [`ClusterIndex::forget_assumed`],
    /// before it is created: the decision that it fits and this entry are made under the
    /// node's lock, and the create happens after it is released. Once the watch or the
    /// create's answer has put the LocalVolume itself in the index, that is counted instead
    /// (never both).
    pub fn assume_local_volume(&mut self, volume: &LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let assumed = Assumed {
            node: self.syms.intern(&volume.spec.node_name),
            pool: self.syms.intern(&volume.spec.pool),
            size: volume.spec.size_bytes,
        };
        let before = self.counted(&name);
        self.assumed.insert(name.clone(), assumed);
        self.recount(&name, before);
    }

    /// Ends [`ClusterIndex::assume_local_volume`] for the LocalVolume `name`, whether its
    /// create succeeded (then its row counts) or failed.
    pub fn forget_assumed(&mut self, name: &str) {
        let name = Name::new(name);
        let before = self.counted(&name);
        if self.assumed.remove(&name).is_some() {
            self.recount(&name, before);
        }
    }

    /// [`ClusterIndex::note_local_volume`] for a claim this process has just written.
    pub fn note_claim(&mut self, claim: PersistentVolumeClaim) {
        let old = self
            .claim_row(
                claim.metadata.namespace.as_deref().unwrap_or_default(),
                claim.metadata.name.as_deref().unwrap_or_default(),
            )
            .map(|row| &row.rv);
        if newer(old, claim.metadata.resource_version.as_deref()) {
            self.apply_claim(claim);
        }
    }

    /// [`ClusterIndex::note_local_volume`] for a PersistentVolume this process has just
    /// written.
    pub fn note_persistent_volume(&mut self, pv: PersistentVolume) {
        let name = Name::new(pv.metadata.name.as_deref().unwrap_or_default());
        let old = self.pvs.get(&name).map(|row| &row.rv);
        if newer(old, pv.metadata.resource_version.as_deref()) {
            self.apply_persistent_volume(pv);
        }
    }

    /// Removes a LocalVolume.
    pub fn delete_local_volume(&mut self, name: &str) {
        let name = Name::new(name);
        let before = self.counted(&name);
        if let Some(row) = self.volumes.swap_remove(&name) {
            self.recount(&name, before);
            let triggers = self.volume_triggers(&name, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every LocalVolume with a re-list.
    pub fn reset_local_volumes(&mut self, volumes: impl IntoIterator<Item = LocalVolume>) {
        self.begin_local_volumes();
        volumes.into_iter().for_each(|v| self.stage_local_volume(v));
        self.commit_local_volumes();
    }

    /// Starts a re-list of LocalVolumes: drops whatever an earlier, unfinished one staged.
    pub fn begin_local_volumes(&mut self) {
        self.staging.volumes.clear();
    }

    /// Adds a LocalVolume of a re-list in progress; [`ClusterIndex::commit_local_volumes`]
    /// ends it.
    pub fn stage_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let row = VolumeRow::new(&volume, &mut self.syms);
        self.staging.volumes.insert(name, row);
    }

    /// Replaces every LocalVolume with those staged; queues those that changed.
    pub fn commit_local_volumes(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.volumes);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.volumes, fresh);
        let triggers = relisted(&old, &self.volumes, |row| &row.rv)
            .flat_map(|(name, row)| self.volume_triggers(name, row))
            .collect::<Vec<_>>();
        self.retally();
        self.fire(triggers);
    }

    fn volume_triggers(&self, name: &Name, row: &VolumeRow) -> [Trigger; 3] {
        let name = name.to_string();
        [
            Trigger::Volume(name.clone()),
            Trigger::Pv(name),
            Trigger::Claim(
                self.syms.string(row.claim_namespace),
                row.claim_name.to_string(),
            ),
        ]
    }

    /// The LocalVolume called `name` ([`VolumeRow::FIELDS`]).
    pub fn local_volume(&self, name: &str) -> Option<LocalVolume> {
        self.volumes
            .get(&Name::new(name))
            .map(|row| row.to_object(name, &self.syms))
    }

    /// The names of every LocalVolume.
    pub fn local_volume_names(&self) -> Vec<String> {
        self.volumes.keys().map(Name::to_string).collect()
    }

    // --- claims ---

    /// Adds or replaces a claim (keyed by namespace and name).
    pub fn apply_claim(&mut self, claim: PersistentVolumeClaim) {
        let key = self.claim_id(&claim);
        let row = ClaimRow::new(&claim, &mut self.syms);
        let unchanged = self.claims.get(&key).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.claim_triggers(&key, &row));
        if let Some(old) = self.claims.insert(key.clone(), row) {
            self.tally.stop_waiting(&Name::for_uid(&old.uid), &key);
        }
        self.track_claim(&key);
        self.fire(triggers.into_iter().flatten());
    }

    /// Removes a claim.
    pub fn delete_claim(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.syms.lookup(namespace) else {
            return;
        };
        let key = (ns, Box::<str>::from(name));
        if let Some(row) = self.claims.swap_remove(&key) {
            self.tally.stop_waiting(&Name::for_uid(&row.uid), &key);
            self.retrack_claim(&key);
            let triggers = self.claim_triggers(&key, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every claim with a re-list.
    pub fn reset_claims(&mut self, claims: impl IntoIterator<Item = PersistentVolumeClaim>) {
        self.begin_claims();
        claims.into_iter().for_each(|c| self.stage_claim(c));
        self.commit_claims();
    }

    /// Starts a re-list of claims: drops whatever an earlier, unfinished one staged.
    pub fn begin_claims(&mut self) {
        self.staging.claims.clear();
    }

    /// Adds a claim of a re-list in progress; [`ClusterIndex::commit_claims`] ends it.
    pub fn stage_claim(&mut self, claim: PersistentVolumeClaim) {
        let key = self.claim_id(&claim);
        let row = ClaimRow::new(&claim, &mut self.syms);
        self.staging.claims.insert(key, row);
    }

    /// Replaces every claim with those staged; queues those that changed.
    pub fn commit_claims(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.claims);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.claims, fresh);
        let triggers = relisted(&old, &self.claims, |row| &row.rv)
            .flat_map(|(key, row)| self.claim_triggers(key, row))
            .collect::<Vec<_>>();
        self.retally();
        self.fire(triggers);
    }

    fn claim_id(&mut self, claim: &PersistentVolumeClaim) -> (Sym, Box<str>) {
        (
            self.syms
                .intern(claim.metadata.namespace.as_deref().unwrap_or_default()),
            claim.metadata.name.as_deref().unwrap_or_default().into(),
        )
    }

    /// The claim itself and, when one exists, the LocalVolume named after its uid (whose
    /// orphan check depends on the claim).
    fn claim_triggers(&self, key: &(Sym, Box<str>), row: &ClaimRow) -> Vec<Trigger> {
        let mut triggers = vec![Trigger::Claim(self.syms.string(key.0), key.1.to_string())];
        let volume = Name::for_uid(&row.uid);
        if self.volumes.contains_key(&volume) {
            triggers.push(Trigger::Volume(volume.to_string()));
        }
        triggers
    }

    /// The claim `namespace/name` ([`ClaimRow::FIELDS`]).
    pub fn claim(&self, namespace: &str, name: &str) -> Option<PersistentVolumeClaim> {
        self.claim_row(namespace, name)
            .map(|row| row.to_object(namespace, name, &self.syms))
    }

    /// The row of claim `namespace/name`.
    fn claim_row(&self, namespace: &str, name: &str) -> Option<&ClaimRow> {
        let ns = self.syms.lookup(namespace)?;
        self.claims.get(&(ns, Box::from(name)))
    }

    /// The namespace and name of every claim.
    pub fn claim_keys(&self) -> Vec<(String, String)> {
        self.claims
            .keys()
            .map(|(ns, name)| (self.syms.string(*ns), name.to_string()))
            .collect()
    }

    // --- PersistentVolumes ---

    fn keeps_pv(&self, pv: &PersistentVolume) -> bool {
        let by = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::ANNOTATION_PROVISIONED_BY));
        by.is_some_and(|p| *p == self.provisioner.0 || self.pv_provisioners.contains(p))
    }

    /// Adds or replaces a PersistentVolume (keyed by name) when it is one of stowage's; any
    /// other is dropped (and forgotten, should it have been one).
    pub fn apply_persistent_volume(&mut self, pv: PersistentVolume) {
        let name_text = pv.metadata.name.clone().unwrap_or_default();
        if !self.keeps_pv(&pv) {
            self.delete_persistent_volume(&name_text);
            return;
        }
        let name = Name::new(&name_text);
        let row = PvRow::new(&pv, &mut self.syms);
        let unchanged = self.pvs.get(&name).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.pv_triggers(&name, &row));
        self.pvs.insert(name, row);
        self.fire(triggers.into_iter().flatten());
    }

    /// Removes a PersistentVolume.
    pub fn delete_persistent_volume(&mut self, name: &str) {
        let name = Name::new(name);
        if let Some(row) = self.pvs.swap_remove(&name) {
            let triggers = self.pv_triggers(&name, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every PersistentVolume with a re-list.
    pub fn reset_persistent_volumes(&mut self, pvs: impl IntoIterator<Item = PersistentVolume>) {
        self.begin_persistent_volumes();
        pvs.into_iter()
            .for_each(|pv| self.stage_persistent_volume(pv));
        self.commit_persistent_volumes();
    }

    /// Starts a re-list of PersistentVolumes: drops whatever an earlier, unfinished one
    /// staged.
    pub fn begin_persistent_volumes(&mut self) {
        self.staging.pvs.clear();
    }

    /// Adds a PersistentVolume of a re-list in progress (if it is one of stowage's);
    /// [`ClusterIndex::commit_persistent_volumes`] ends it.
    pub fn stage_persistent_volume(&mut self, pv: PersistentVolume) {
        if self.keeps_pv(&pv) {
            let name = Name::new(pv.metadata.name.as_deref().unwrap_or_default());
            let row = PvRow::new(&pv, &mut self.syms);
            self.staging.pvs.insert(name, row);
        }
    }

    /// Replaces every PersistentVolume with those staged; queues those that changed.
    pub fn commit_persistent_volumes(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.pvs);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.pvs, fresh);
        let triggers = relisted(&old, &self.pvs, |row| &row.rv)
            .flat_map(|(name, row)| self.pv_triggers(name, row))
            .collect::<Vec<_>>();
        self.fire(triggers);
    }

    fn pv_triggers(&self, name: &Name, row: &PvRow) -> Vec<Trigger> {
        let mut triggers = vec![Trigger::Pv(name.to_string())];
        if let Some((ns, claim)) = row.claim_key(&self.syms) {
            triggers.push(Trigger::Claim(ns, claim));
        }
        triggers
    }

    /// The PersistentVolume called `name` if it is one of stowage's ([`PvRow::FIELDS`]).
    pub fn persistent_volume(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs
            .get(&Name::new(name))
            .map(|row| row.to_object(name, &self.syms))
    }

    /// The names of every PersistentVolume kept.
    pub fn persistent_volume_names(&self) -> Vec<String> {
        self.pvs.keys().map(Name::to_string).collect()
    }

    /// Every PersistentVolume kept whose `provisioned-by` is `provisioner`.
    pub fn persistent_volumes_of(&self, provisioner: &str) -> Vec<PersistentVolume> {
        let Some(sym) = self.syms.lookup(provisioner) else {
            return Vec::new();
        };
        self.pvs
            .iter()
            .filter(|(_, row)| row.provisioned_by == Some(sym))
            .map(|(name, row)| row.to_object(&name.to_string(), &self.syms))
            .collect()
    }

    // --- Nodes ---

    /// Adds or replaces a Node (its name and hostname label are kept).
    pub fn apply_node(&mut self, node: PartialObjectMeta<Node>) {
        let hostname = self.syms.intern_opt(
            node.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_HOSTNAME))
                .map(String::as_str),
        );
        let name: Box<str> = node.metadata.name.as_deref().unwrap_or_default().into();
        self.k8s_nodes.insert(name, hostname);
    }

    /// Removes a Node; its PersistentVolumes are queued (their node is gone).
    pub fn delete_node(&mut self, name: &str) {
        if self.k8s_nodes.remove(name).is_some() {
            self.fire_pvs_on(&[name]);
        }
    }

    /// Replaces every Node with a re-list; the PersistentVolumes of Nodes gone are queued.
    pub fn reset_nodes(&mut self, nodes: impl IntoIterator<Item = PartialObjectMeta<Node>>) {
        let old = std::mem::take(&mut self.k8s_nodes);
        for node in nodes {
            self.apply_node(node);
        }
        let gone: Vec<&str> = old
            .keys()
            .filter(|n| !self.k8s_nodes.contains_key(*n))
            .map(|n| &**n)
            .collect();
        self.fire_pvs_on(&gone);
    }

    fn fire_pvs_on(&self, nodes: &[&str]) {
        let syms: Vec<Sym> = nodes.iter().filter_map(|n| self.syms.lookup(n)).collect();
        if syms.is_empty() {
            return;
        }
        let triggers: Vec<Trigger> = self
            .pvs
            .iter()
            .filter(|(_, row)| row.node.is_some_and(|n| syms.contains(&n)))
            .map(|(name, _)| Trigger::Pv(name.to_string()))
            .collect();
        self.fire(triggers);
    }

    // --- Namespaces ---

    /// Adds or replaces a Namespace: its uid is kept, or, once it is being deleted, that it
    /// is going (a claim there is the old namespace's, or the watch has not seen the new
    /// namespace of that name yet).
    pub fn apply_namespace(&mut self, namespace: PartialObjectMeta<Namespace>) {
        let meta = namespace.metadata;
        let uid = meta
            .uid
            .filter(|_| meta.deletion_timestamp.is_none())
            .map(Box::from);
        let name: Box<str> = meta.name.as_deref().unwrap_or_default().into();
        self.namespaces.insert(name, uid);
    }

    /// Removes a Namespace.
    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Replaces every Namespace with a re-list.
    pub fn reset_namespaces(
        &mut self,
        namespaces: impl IntoIterator<Item = PartialObjectMeta<Namespace>>,
    ) {
        self.namespaces.clear();
        for namespace in namespaces {
            self.apply_namespace(namespace);
        }
    }

    /// The uid of the Namespace `name`; `None` when it is not cached (the watch is behind,
    /// or this process does not watch Namespaces) or is being deleted.
    pub fn namespace_uid(&self, name: &str) -> Option<String> {
        self.namespaces.get(name)?.as_deref().map(str::to_string)
    }

    // --- Pods (unbound only) ---

    /// Adds or replaces a pod not bound to a node yet (the controller watches those only,
    /// with the field selector `spec.nodeName=`); only the claims it uses are kept. Their
    /// claims are queued: a claim waiting for its pod's other claims looks again.
    pub fn apply_pod(&mut self, pod: Pod) {
        let (namespace, claims) = pod_claims(&pod);
        let ns = self.syms.intern(namespace);
        let name: Box<str> = pod.metadata.name.as_deref().unwrap_or_default().into();
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        self.delete_pod(namespace, &name);
        if bound || claims.is_empty() {
            return;
        }
        let claims: ClaimNames = claims.into_iter().map(Box::from).collect();
        for claim in claims.iter() {
            let users = self.claim_pods.entry((ns, claim.clone())).or_default();
            if !users.contains(&name) {
                users.push(name.clone());
            }
        }
        let triggers: Vec<Trigger> = claims
            .iter()
            .map(|c| Trigger::Claim(namespace.to_string(), c.to_string()))
            .collect();
        self.pods.insert((ns, name), claims);
        self.fire(triggers);
    }

    /// Removes a pod (deleted, or bound to a node).
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.syms.lookup(namespace) else {
            return;
        };
        let Some(claims) = self.pods.remove(&(ns, name.into())) else {
            return;
        };
        for claim in claims.iter() {
            let key = (ns, claim.clone());
            if let Some(users) = self.claim_pods.get_mut(&key) {
                users.retain(|u| &**u != name);
                if users.is_empty() {
                    self.claim_pods.remove(&key);
                }
            }
        }
    }

    /// Replaces every unbound pod with a re-list.
    pub fn reset_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        self.pods.clear();
        self.claim_pods.clear();
        for pod in pods {
            self.apply_pod(pod);
        }
    }

    /// The other claims of the unbound pods that use claim `namespace/name`, sorted, without
    /// duplicates; empty when no such pod is known (a single-claim pod, a pod bound
    /// already, or a controller that has not seen it yet).
    pub fn sibling_claims(&self, namespace: &str, name: &str) -> Vec<String> {
        let Some(ns) = self.syms.lookup(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .claim_pods
            .get(&(ns, name.into()))
            .into_iter()
            .flatten()
            .filter_map(|pod| self.pods.get(&(ns, pod.clone())))
            .flat_map(|claims| claims.iter())
            .filter(|c| &***c != name)
            .map(|c| c.to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The unbound pods known to use claim `namespace/name`, sorted.
    pub fn pods_using(&self, namespace: &str, name: &str) -> Vec<String> {
        let Some(ns) = self.syms.lookup(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .claim_pods
            .get(&(ns, name.into()))
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        out.sort();
        out
    }

    /// Whether this process is creating the LocalVolume `name` right now (see
    /// [`ClusterIndex::assume_local_volume`]).
    pub fn is_assumed(&self, name: &str) -> bool {
        self.assumed.contains_key(&Name::new(name))
    }

    /// The node of the LocalVolume `name` this process is creating right now, if it is.
    pub fn assumed_node(&self, name: &str) -> Option<String> {
        self.assumed
            .get(&Name::new(name))
            .map(|a| self.syms.string(a.node))
    }

    /// `None` when no Node called `name` is cached; otherwise its `kubernetes.io/hostname`
    /// label, if set and non-empty.
    pub fn node_hostname(&self, name: &str) -> Option<Option<String>> {
        let hostname = self.k8s_nodes.get(name)?;
        Some(
            hostname
                .map(|h| self.syms.string(h))
                .filter(|h| !h.is_empty()),
        )
    }

    /// The name of a cached Node whose `kubernetes.io/hostname` label is `hostname` (the
    /// first by name, should several share it).
    pub fn node_with_hostname(&self, hostname: &str) -> Option<String> {
        let sym = self.syms.lookup(hostname)?;
        self.k8s_nodes
            .iter()
            .filter(|(_, h)| **h == Some(sym))
            .map(|(name, _)| name.to_string())
            .min()
    }

    // --- StorageClasses ---

    /// Adds or replaces a StorageClass (keyed by name).
    pub fn apply_storage_class(&mut self, class: StorageClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        self.classes.insert(name, class);
        self.reclass();
    }

    /// Removes a StorageClass.
    pub fn delete_storage_class(&mut self, name: &str) {
        if self.classes.remove(name).is_some() {
            self.reclass();
        }
    }

    /// Replaces every StorageClass with a re-list.
    pub fn reset_storage_classes(&mut self, classes: impl IntoIterator<Item = StorageClass>) {
        self.classes = classes
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        self.reclass();
    }

    /// The StorageClass called `name`.
    pub fn storage_class(&self, name: &str) -> Option<&StorageClass> {
        self.classes.get(name)
    }

    /// Every StorageClass, in no particular order.
    pub fn storage_classes(&self) -> impl Iterator<Item = &StorageClass> {
        self.classes.values()
    }

    /// The path of pool `pool` on node `node`, as its StorageNode's status reports it.
    pub fn pool_path(&self, node: &str, pool: &str) -> Option<String> {
        self.nodes
            .get(node)?
            .as_ref()?
            .pools
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.path.clone())
    }

    /// Whether a StorageNode called `name` is cached.
    pub fn has_storage_node(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// The claims holding a reservation on node `name` (selected-node there, unbound, no
    /// LocalVolume yet), in no particular order. Claims with invalid classes or sizes hold
    /// nothing and are not listed.
    pub fn reservations_on(&self, name: &str) -> Vec<Reservation> {
        let Some(node) = self.syms.lookup(name) else {
            return Vec::new();
        };
        self.tally
            .holds_on(node)
            .filter_map(|(id, hold)| {
                let claim = self.claims.get(id)?;
                Some(Reservation {
                    uid: claim.uid.to_string(),
                    claim: ClaimKey::new(self.syms.string(id.0), id.1.to_string()),
                    created: claim.created.get(),
                    pool: PoolName(self.syms.string(hold.pool)),
                    bytes: Bytes(hold.bytes),
                })
            })
            .collect()
    }

    /// The whole ledger as of `now`.
    pub fn ledger(&self, now: Timestamp) -> Ledger {
        self.base()
            .nodes
            .iter()
            .map(|n| {
                let mut state = n.state.clone();
                state.heartbeat_age = age(n.heartbeat, now);
                state
            })
            .collect()
    }

    /// One node's ledger entry as of `now`; `None` when no StorageNode has that name.
    pub fn node_state(&self, name: &str, now: Timestamp) -> Option<NodeState> {
        let (node, heartbeat_age) = self.node_view(name, now)?;
        Some(NodeState {
            heartbeat_age,
            ..node.clone()
        })
    }

    /// One node's ledger entry, borrowed, with `heartbeat_age` left unset, and its heartbeat
    /// age as of `now` beside it: the extender's per-node path, which must not copy the node.
    /// `None` when no StorageNode has that name.
    pub fn node_view(&self, name: &str, now: Timestamp) -> Option<(&NodeState, Option<Duration>)> {
        let base = self.base();
        let node = base.nodes.get(*base.by_name.get(name)?)?;
        Some((&node.state, age(node.heartbeat, now)))
    }

    /// Every node's ledger entry, borrowed, with `heartbeat_age` left unset, and its heartbeat
    /// age as of `now` beside it: [`ClusterIndex::ledger`] without copying it (the capacity
    /// publisher reads it several times a second).
    pub fn node_views(
        &self,
        now: Timestamp,
    ) -> impl Iterator<Item = (&NodeState, Option<Duration>)> + '_ {
        self.base()
            .nodes
            .iter()
            .map(move |n| (&n.state, age(n.heartbeat, now)))
    }

    /// `demand` resolved for deciding many nodes: the extender's per-node path. See
    /// [`FitPlan::node`].
    pub fn fit_plan(&self, demand: &Demand) -> FitPlan<'_> {
        self.base().plan(demand)
    }

    fn base(&self) -> &Base {
        &self.base
    }

    // --- keeping the ledger ---

    /// The node and pool where the LocalVolume `name` takes its bytes, and how many: its
    /// row, or else the assumption of it ([`ClusterIndex::assume_local_volume`]).
    fn counted(&self, name: &Name) -> Option<(Sym, Sym, u64)> {
        self.volumes
            .get(name)
            .map(|v| (v.node, v.pool, v.size))
            .or_else(|| self.assumed.get(name).map(|a| (a.node, a.pool, a.size)))
    }

    /// Moves the tally from `before` (what the LocalVolume `name` counted before a change)
    /// to what it counts now, and updates the claim waiting for it, whose reservation ends
    /// when the volume appears and comes back when it goes.
    fn recount(&mut self, name: &Name, before: Option<(Sym, Sym, u64)>) {
        let after = self.counted(name);
        if before == after {
            return;
        }
        if let Some((node, pool, bytes)) = before {
            self.tally.free(node, pool, bytes);
        }
        if let Some((node, pool, bytes)) = after {
            self.tally.allocate(node, pool, bytes);
        }
        if before.is_some() != after.is_some()
            && let Some(id) = self.tally.waiting_for(name).cloned()
        {
            self.retrack_claim(&id);
        }
        for node in [before, after]
            .into_iter()
            .flatten()
            .map(|(node, _, _)| node)
        {
            self.refresh_sym(node);
        }
    }

    /// Starts tracking claim `id` as its row now is: waiting for its LocalVolume if it is
    /// unbound with a selected node, and its reservation.
    fn track_claim(&mut self, id: &ClaimId) {
        if let Some(row) = self.claims.get(id)
            && row.selected_node.is_some()
            && row.volume_name.is_none()
        {
            self.tally.wait(Name::for_uid(&row.uid), id.clone());
        }
        self.retrack_claim(id);
    }

    /// Brings claim `id`'s reservation in the tally up to date with its row (none when the
    /// row is gone), and the nodes it concerns.
    fn retrack_claim(&mut self, id: &ClaimId) {
        let old = self.tally.unhold(id);
        let new = self.claims.get(id).and_then(|row| self.reservation(row));
        if let Some(hold) = new {
            self.tally.hold(id.clone(), hold);
        }
        if old != new {
            for node in [old, new].into_iter().flatten().map(|h| h.node) {
                self.refresh_sym(node);
            }
        }
    }

    /// The reservation the claim `row` holds: its selected node, while it is unbound, of a
    /// valid node-local class and size, and has no LocalVolume (made or assumed) yet.
    fn reservation(&self, row: &ClaimRow) -> Option<Hold> {
        let node = row.selected_node?;
        if row.volume_name.is_some() {
            return None;
        }
        let pool = self.local_classes.get(&row.class?)?.pool?;
        let bytes = match row.request {
            None => Bytes::ZERO,
            Some(q) => self.syms.text(q).parse().ok()?,
        };
        let volume = Name::for_uid(&row.uid);
        if self.volumes.contains_key(&volume) || self.assumed.contains_key(&volume) {
            return None;
        }
        Some(Hold {
            node,
            pool,
            bytes: bytes.0,
        })
    }

    /// Parses the node-local classes again after a StorageClass change, and updates the
    /// claims whose reservation depends on them.
    fn reclass(&mut self) {
        let mut local = HashMap::new();
        for (name, class) in &self.classes {
            if !class::is_local(class, &self.provisioner.0) {
                continue;
            }
            let params = ClassParams::from_class(class);
            let pool = params
                .as_ref()
                .ok()
                .map(|p| self.syms.intern(p.pool.as_str()));
            local.insert(self.syms.intern(name), LocalClass { params, pool });
        }
        self.local_classes = local;
        let waiting: Vec<ClaimId> = self.tally.waiting().cloned().collect();
        for id in &waiting {
            self.retrack_claim(id);
        }
    }

    /// Counts everything again from the objects (a re-list replaced a kind), then rebuilds
    /// `base`.
    fn retally(&mut self) {
        self.tally = Tally::default();
        for v in self.volumes.values() {
            self.tally.allocate(v.node, v.pool, v.size);
        }
        for (name, a) in &self.assumed {
            if !self.volumes.contains_key(name) {
                self.tally.allocate(a.node, a.pool, a.size);
            }
        }
        for (id, row) in &self.claims {
            if row.selected_node.is_some() && row.volume_name.is_none() {
                self.tally.wait(Name::for_uid(&row.uid), id.clone());
            }
            if let Some(hold) = self.reservation(row) {
                self.tally.hold(id.clone(), hold);
            }
        }
        self.rebuild();
    }

    /// [`ClusterIndex::refresh_node`] for the node `node`.
    fn refresh_sym(&mut self, node: Sym) {
        let name = self.syms.string(node);
        self.refresh_node(&name);
    }

    /// Brings `base`'s entry of node `name` up to date with its StorageNode and the tally:
    /// in place, or appended for a node new to it. Nothing for a node without a
    /// StorageNode (its bytes wait in the tally).
    fn refresh_node(&mut self, name: &str) {
        let Some(status) = self.nodes.get(name) else {
            return;
        };
        let beat = heartbeat(status.as_ref());
        let state = self.ledger_entry(name, status.as_ref());
        self.base.put(name, state, beat);
        self.compact_base();
    }

    /// Rebuilds `base` when most of its pool table is left over from removed or changed
    /// nodes.
    fn compact_base(&mut self) {
        if self.base.stale_pools > self.base.pools.len() / 2 {
            self.rebuild();
        }
    }

    /// Builds `base` whole from the StorageNodes and the tally.
    fn rebuild(&mut self) {
        #[cfg(test)]
        {
            self.rebuilds += 1;
        }
        let mut base = Base::default();
        base.by_name.reserve(self.nodes.len());
        base.nodes.reserve(self.nodes.len());
        base.summaries.reserve(self.nodes.len());
        for (name, status) in &self.nodes {
            let state = self.ledger_entry(name, status.as_ref());
            base.put(name, state, heartbeat(status.as_ref()));
        }
        self.base = base;
    }

    /// Node `name`'s ledger entry without its heartbeat age: its StorageNode's figures,
    /// with allocated bytes the larger of the agent's and the LocalVolumes' (the tally's),
    /// and reserved bytes the tally's.
    ///
    /// The LocalVolumes are usually fresher (the controller creates them before the agent
    /// next reports); the agent's figure can be larger for a moment (a volume whose object
    /// is gone but whose data is not). Taking the larger never promises bytes either source
    /// says are taken.
    fn ledger_entry(&self, name: &str, status: Option<&StorageNodeStatus>) -> NodeState {
        let mut node = match status {
            Some(status) => status.to_node_state(name, None),
            None => StorageNodeStatus::default().to_node_state(name, None),
        };
        let node_sym = self.syms.lookup(name);
        for pool in &mut node.pools {
            let (allocated, reserved) = match (node_sym, self.syms.lookup(pool.name.as_str())) {
                (Some(n), Some(p)) => (self.tally.allocated(n, p), self.tally.reserved(n, p)),
                _ => (Bytes::ZERO, Bytes::ZERO),
            };
            pool.allocated = pool.allocated.max(allocated);
            pool.reserved = reserved;
        }
        node
    }

    /// The claim as stowage sees it: `Ok(None)` when it is not a local claim or not
    /// placeable yet (bound, no class or an unknown class). Invalid classes and sizes are
    /// errors.
    fn local_claim<'a>(
        &'a self,
        key: (&str, &str),
        claim: &'a ClaimRow,
    ) -> Result<Option<LocalClaim<'a>>, DemandError> {
        if claim.volume_name.is_some() {
            return Ok(None);
        }
        let Some(class) = claim.class.and_then(|c| self.local_classes.get(&c)) else {
            return Ok(None);
        };
        let params = class.params.as_ref().map_err(Clone::clone)?;
        let bytes = match claim.request {
            None => Bytes::ZERO,
            Some(q) => self
                .syms
                .text(q)
                .parse()
                .map_err(|error| DemandError::Quantity {
                    namespace: key.0.to_string(),
                    name: key.1.to_string(),
                    error,
                })?,
        };
        Ok(Some(LocalClaim {
            claim,
            params,
            bytes,
        }))
    }

    /// Where the cluster already holds bytes for an unbound local claim: the LocalVolume
    /// `pvc-<uid>` if it exists (allocated), otherwise the selected node (reserved).
    fn held_for_local(&self, local: &LocalClaim<'_>) -> Option<OwnHold> {
        let claim = local.claim;
        let name = Name::for_uid(&claim.uid);
        let volume = self
            .volumes
            .get(&name)
            .map(|lv| (lv.node, lv.pool, lv.size));
        if let Some((node, pool, size)) =
            volume.or_else(|| self.assumed.get(&name).map(|a| (a.node, a.pool, a.size)))
        {
            return Some(OwnHold {
                node: NodeName(self.syms.string(node)),
                pool: PoolName(self.syms.string(pool)),
                bytes: Bytes(size),
                held: Held::Allocated,
            });
        }
        let node = claim.selected_node?;
        Some(OwnHold {
            node: NodeName(self.syms.string(node)),
            pool: local.params.pool.clone(),
            bytes: local.bytes,
            held: Held::Reserved,
        })
    }

    /// The pod's local claims that nothing holds yet: no selected node, no volume, no
    /// LocalVolume. What an in-flight guess of the extender stands in for until the
    /// scheduler's `selected-node` arrives ([`inflight`]).
    pub fn pod_unplaced(&self, pod: &Pod) -> Vec<inflight::GuessedClaim> {
        let (namespace, claims) = pod_claims(pod);
        let mut out = Vec::new();
        for claim_name in claims {
            let Some(claim) = self.claim_row(namespace, &claim_name) else {
                continue;
            };
            let Ok(Some(local)) = self.local_claim((namespace, &claim_name), claim) else {
                continue;
            };
            if self.held_for_local(&local).is_none() {
                out.push(inflight::GuessedClaim {
                    namespace: namespace.to_string(),
                    name: claim_name,
                    pool: local.params.pool.clone(),
                    bytes: local.bytes,
                });
            }
        }
        out
    }

    /// Whether claim `namespace/name` exists and nothing holds it yet (see
    /// [`ClusterIndex::pod_unplaced`]).
    pub fn claim_unplaced(&self, namespace: &str, name: &str) -> bool {
        let Some(claim) = self.claim_row(namespace, name) else {
            return false;
        };
        let volume = Name::for_uid(&claim.uid);
        claim.volume_name.is_none()
            && claim.selected_node.is_none()
            && !self.volumes.contains_key(&volume)
            && !self.assumed.contains_key(&volume)
    }

    /// What `pod` asks of stowage; see [`PodDemand`].
    pub fn pod_demand(&self, pod: &Pod) -> Result<PodDemand, DemandError> {
        let (namespace, claims) = pod_claims(pod);
        let mut demand = Demand::new();
        let mut placement = None;
        let mut holds = Vec::new();
        for claim_name in claims {
            let Some(claim) = self.claim_row(namespace, &claim_name) else {
                return Ok(PodDemand::Unseen(format!(
                    "claim {namespace}/{claim_name} is not in stowage's view yet"
                )));
            };
            // A claim without a class (static binding) is not ours; one whose class is not
            // cached yet might be.
            match claim.class.map(|c| self.syms.text(c)) {
                None | Some("") => continue,
                Some(c) if !self.classes.contains_key(c) => {
                    return Ok(PodDemand::Unseen(format!(
                        "StorageClass {c} of claim {namespace}/{claim_name} is not in stowage's view yet"
                    )));
                }
                Some(_) => {}
            }
            let Some(local) = self.local_claim((namespace, &claim_name), claim)? else {
                continue;
            };
            demand.add(local.params.pool.clone(), local.bytes)?;
            placement.get_or_insert(local.params.placement);
            holds.extend(self.held_for_local(&local));
        }
        match placement {
            None => Ok(PodDemand::NotOurs),
            Some(placement) => Ok(PodDemand::Demand {
                demand,
                placement,
                exclude_own_reservations: holds,
            }),
        }
    }
}

// === impl Base ===

impl Base {
    /// Sets node `name`'s entry and summary: in place when it has one with as many pools,
    /// otherwise with its pools appended to the pool table.
    fn put(&mut self, name: &str, state: NodeState, heartbeat: Option<Timestamp>) {
        let index = self.by_name.get(name).copied();
        let in_place = index.map(|i| self.summaries[i].pools.clone());
        let pools = match in_place {
            Some(range) if range.len() == state.pools.len() => {
                for (slot, pool) in range.clone().zip(&state.pools) {
                    self.pools[slot] = summarize(&mut self.pool_names, pool);
                }
                range
            }
            old => {
                self.stale_pools += old.map_or(0, |r| r.len());
                let start = self.pools.len();
                for pool in &state.pools {
                    let summary = summarize(&mut self.pool_names, pool);
                    self.pools.push(summary);
                }
                start..self.pools.len()
            }
        };
        let summary = NodeSummary {
            heartbeat,
            ready: state.ready,
            pools,
        };
        let node = BaseNode { state, heartbeat };
        match index {
            Some(i) => {
                self.summaries[i] = summary;
                self.nodes[i] = node;
            }
            None => {
                self.by_name.insert(name.into(), self.nodes.len());
                self.summaries.push(summary);
                self.nodes.push(node);
            }
        }
    }

    /// Removes node `name`'s entry: the last node takes its place; its pools stay in the
    /// pool table, counted in `stale_pools`.
    fn remove(&mut self, name: &str) {
        let Some(i) = self.by_name.remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        let gone = self.summaries.swap_remove(i);
        self.stale_pools += gone.pools.len();
        if let Some(moved) = self.nodes.get(i)
            && let Some(slot) = self.by_name.get_mut(moved.state.name.as_str())
        {
            *slot = i;
        }
    }

    fn plan(&self, demand: &Demand) -> FitPlan<'_> {
        let wanted = demand
            .pools()
            .map(|(pool, bytes)| (self.pool_names.iter().position(|p| p == pool), bytes))
            .collect();
        FitPlan { base: self, wanted }
    }
}

/// A pool's summary, its name interned in `pool_names`.
fn summarize(pool_names: &mut Vec<PoolName>, pool: &crate::ledger::PoolState) -> PoolSummary {
    let id = match pool_names.iter().position(|p| *p == pool.name) {
        Some(id) => id,
        None => {
            pool_names.push(pool.name.clone());
            pool_names.len() - 1
        }
    };
    PoolSummary {
        pool: id,
        ready: pool.ready,
        free: pool.free(),
        allocatable: pool.allocatable(),
    }
}

// === impl FitPlan ===

impl<'a> FitPlan<'a> {
    /// The node called `name`; `None` when no StorageNode has that name.
    pub fn node(&'a self, name: &str) -> Option<PlannedNode<'a>> {
        let index = *self.base.by_name.get(name)?;
        Some(PlannedNode { plan: self, index })
    }
}

// === impl PlannedNode ===

impl<'a> PlannedNode<'a> {
    /// The node's ledger entry, borrowed, with `heartbeat_age` left unset (see
    /// [`ClusterIndex::node_view`]).
    pub fn state(&self) -> Option<&'a NodeState> {
        self.plan.base.nodes.get(self.index).map(|n| &n.state)
    }

    /// Time since the node's agent last reported, as of `now`.
    pub fn heartbeat_age(&self, now: Timestamp) -> Option<Duration> {
        self.summary().and_then(|s| age(s.heartbeat, now))
    }

    /// Whether the demand certainly fits: `true` exactly when [`check_aged`] on the node's
    /// entry would return `Ok`. Decided from the summary alone.
    pub fn fits(&self, now: Timestamp, opts: &FitOptions) -> bool {
        if self.plan.wanted.is_empty() {
            return true;
        }
        let Some(summary) = self.summary() else {
            return false;
        };
        let fresh = age(summary.heartbeat, now).is_some_and(|a| a <= opts.stale_after);
        if !fresh || !summary.ready {
            return false;
        }
        let pools = self.pools();
        self.plan.wanted.iter().all(|&(id, needed)| {
            id.and_then(|id| pools.iter().find(|p| p.pool == id))
                .is_some_and(|p| p.ready && needed <= p.free)
        })
    }

    /// Why the demand does not fit, as [`check_aged`] says; `Ok` when it fits.
    pub fn check(&self, now: Timestamp, opts: &FitOptions, demand: &Demand) -> Result<(), Unfit> {
        if self.fits(now, opts) {
            return Ok(());
        }
        match self.state() {
            Some(state) => check_aged(state, self.heartbeat_age(now), demand, opts),
            None => Err(Unfit::NoReport),
        }
    }

    /// The node's score for the demand: the same as [`crate::ledger::score`] on its entry.
    pub fn score(&self, placement: Placement) -> u8 {
        match self.room() {
            Some((left, whole)) => score_share(left, whole, placement),
            None => 0,
        }
    }

    /// The demanded pools' room after placement, `(left, whole)`: the same as
    /// [`crate::ledger::room_after`] on its entry.
    pub fn room(&self) -> Option<(u128, u128)> {
        let pools = self.pools();
        let mut left: u128 = 0;
        let mut whole: u128 = 0;
        for &(id, needed) in &self.plan.wanted {
            let pool = id.and_then(|id| pools.iter().find(|p| p.pool == id))?;
            let after = pool.free.checked_sub(needed)?;
            left += u128::from(after.0);
            whole += u128::from(pool.allocatable.0);
        }
        (whole > 0).then_some((left, whole))
    }

    fn summary(&self) -> Option<&'a NodeSummary> {
        self.plan.base.summaries.get(self.index)
    }

    fn pools(&self) -> &'a [PoolSummary] {
        self.summary()
            .and_then(|s| self.plan.base.pools.get(s.pools.clone()))
            .unwrap_or_default()
    }
}

/// Takes back from `node` what `holds` say the cluster already holds there for the pod.
pub fn credit(node: &mut NodeState, holds: &[OwnHold]) {
    let name = node.name.clone();
    for h in holds.iter().filter(|h| h.node == name) {
        if let Some(p) = node.pool_mut(h.pool.as_str()) {
            let slot = match h.held {
                Held::Reserved => &mut p.reserved,
                Held::Allocated => &mut p.allocated,
            };
            *slot = slot.saturating_sub(h.bytes);
        }
    }
}

/// The pod's namespace and the names of the claims it mounts, in `spec.volumes` order:
/// `persistentVolumeClaim` volumes, and generic ephemeral volumes (`<pod>-<volume>`).
fn pod_claims(pod: &Pod) -> (&str, Vec<String>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let claims = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|volume| {
            if let Some(pvc) = &volume.persistent_volume_claim {
                Some(pvc.claim_name.clone())
            } else {
                volume
                    .ephemeral
                    .is_some()
                    .then(|| format!("{pod_name}-{}", volume.name))
            }
        })
        .collect();
    (namespace, claims)
}

/// Whether a write's answer of version `new` may replace the index's version `old`: when
/// the index has none, or both are numbers (etcd's) and `new` is the larger.
fn newer(old: Option<&rows::Rv>, new: Option<&str>) -> bool {
    match (old, new) {
        (None, _) => true,
        (Some(rows::Rv::Num(old)), Some(new)) => {
            matches!(rows::Rv::new(new), rows::Rv::Num(new) if new > *old)
        }
        _ => false,
    }
}

/// What a re-list changed: the rows of `new` that are new or of another version than in
/// `old`, then the rows of `old` that `new` lacks.
fn relisted<'a, K: Eq + std::hash::Hash, R>(
    old: &'a Rows<K, R>,
    new: &'a Rows<K, R>,
    rv: impl Fn(&R) -> &rows::Rv + Copy + 'a,
) -> impl Iterator<Item = (&'a K, &'a R)> + 'a {
    let changed = new
        .iter()
        .filter(move |(k, row)| old.get(*k).is_none_or(|o| rv(o) != rv(row)));
    let gone = old.iter().filter(move |(k, _)| !new.contains_key(*k));
    changed.chain(gone)
}

/// `status` without the spare capacity decoding left in its pool list (room for four
/// pools where one or two are reported: 2 MiB over 5,000 nodes).
fn compact_status(mut status: Option<StorageNodeStatus>) -> Option<StorageNodeStatus> {
    if let Some(status) = &mut status {
        status.pools.shrink_to_fit();
    }
    status
}

/// A table of rows: the rows packed in one vector (a removal moves the last row into the
/// gap), a hash index of their positions beside it. At 50,000 rows it holds 50,000 rows,
/// where a hash map holds 65,536 row-sized slots (its capacity is a power of two, at most
/// 7/8 full): 4.8 MiB less for the three tables of a 50,000-volume cluster.
type Rows<K, V> = indexmap::IndexMap<K, V>;

/// The agent's last report; `None` when there is none or it is not RFC 3339.
/// Whether `new` differs from `old` in nothing the ledger reads but the heartbeat time.
fn only_heartbeat_differs(
    old: Option<&StorageNodeStatus>,
    new: Option<&StorageNodeStatus>,
) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => {
            a.pools == b.pools
                && StorageNodeStatus {
                    heartbeat_time: None,
                    ..a.clone()
                } == StorageNodeStatus {
                    heartbeat_time: None,
                    ..b.clone()
                }
        }
        (None, None) => true,
        _ => false,
    }
}

fn heartbeat(status: Option<&StorageNodeStatus>) -> Option<Timestamp> {
    status?.heartbeat_time.as_deref()?.parse().ok()
}

/// Time since `heartbeat`. A heartbeat from the future (clock skew) counts as just now.
fn age(heartbeat: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let at = heartbeat?;
    Some(Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO))
}
