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
//!
//! Layout: this module holds the shared core, the [`ClusterIndex`] struct and its tables,
//! the ledger kept from them (the tally, the derived entries and summaries, their recount
//! and rebuild), the [`Trigger`]s, the readers that span kinds ([`ClusterIndex::pod_demand`],
//! the ledger views, [`FitPlan`]) and the helpers the kinds share. Each kind has one file
//! under [`kinds`] with its `apply_*`, `delete_*`, `reset_*` or `begin_*`/`stage_*`/
//! `commit_*`, its `note_*` and its readers, and implements [`kinds::Indexed`], from which
//! [`watch`] builds its watcher.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;

use crate::api::names;
use crate::api::storage_node::StorageNodeStatus;
// The kinds' own files use these; the tests take them from here (`use super::*`).
#[cfg(test)]
use crate::api::{local_volume::LocalVolume, storage_node::StorageNode};
use crate::ledger::{
    Bytes, ClaimKey, Demand, DemandOverflow, FitOptions, Ledger, NodeName, NodeState, Placement,
    PoolName, QuantityError, Unfit, check_aged, score_share,
};

pub mod class;
pub mod inflight;
pub mod kinds;
pub mod metrics;
mod node_names;
pub mod policy;
pub mod rows;
pub mod slim;
mod tally;
pub mod watch;

#[cfg(test)]
mod tests;

pub use class::{ClassError, ClassParams};
pub use metrics::ExtenderMetrics;
use node_names::NodeNames;
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

/// The derived, time-independent ledger.
#[derive(Debug, Default)]
struct Base {
    /// Node name → position in `nodes` and `summaries`.
    by_name: NodeNames,
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

/// The time and options of one request's fit checks ([`PlannedNode::judge`]), with the
/// oldest heartbeat still fresh worked out once rather than per node.
#[derive(Clone, Copy, Debug)]
pub struct FitClock {
    now: Timestamp,
    opts: FitOptions,
    /// The oldest fresh heartbeat, `now - stale_after`; `None` when that is before any
    /// time there is, so that every heartbeat is fresh.
    fresh_since: Option<Timestamp>,
}

/// How a node fails a [`FitPlan`] ([`PlannedNode::judge`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failing {
    /// Too little free space and nothing else: the node is fresh and ready, every demanded
    /// pool is there and ready, and the plan's pools with these bits set (bit `k` for its
    /// `k`-th) are too full. [`FitPlan::unfit`] makes it the [`Unfit`] the ledger gives.
    /// Most nodes turned down fail this way; deciding it from the summary spares them the
    /// ledger's check and its allocations.
    Short(u64),
    /// Any other way, as the ledger's [`check_aged`] says.
    Unfit(Unfit),
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
        let node = base.nodes.get(base.by_name.get(name)?)?;
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
        let index = self.by_name.get(name);
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
                self.by_name.push(name);
                self.summaries.push(summary);
                self.nodes.push(node);
            }
        }
    }

    /// Removes node `name`'s entry: the last node takes its place (in `by_name` too); its
    /// pools stay in the pool table, counted in `stale_pools`.
    fn remove(&mut self, name: &str) {
        let Some(i) = self.by_name.swap_remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        let gone = self.summaries.swap_remove(i);
        self.stale_pools += gone.pools.len();
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
    #[inline]
    pub fn node(&'a self, name: &str) -> Option<PlannedNode<'a>> {
        let index = self.base.by_name.get(name)?;
        Some(PlannedNode { plan: self, index })
    }

    /// How many pools the demand names: the length of the `free` that [`PlannedNode::judge`]
    /// and [`Self::unfit`] take.
    pub fn pools(&self) -> usize {
        self.wanted.len()
    }

    /// The [`Unfit`] of a node that is [`Failing::Short`] of the pools in `short`, with
    /// `free[k]` as the free space of the plan's `k`-th pool: the ledger's
    /// [`Unfit::Pools`] of [`Shortfall::Insufficient`](crate::ledger::Shortfall), in the
    /// demand's order.
    pub fn unfit(&self, short: u64, free: &[Bytes]) -> Unfit {
        let shortfalls = self
            .wanted
            .iter()
            .enumerate()
            .filter(|&(k, _)| k < 64 && short & (1 << k) != 0)
            .filter_map(|(k, &(id, needed))| {
                Some(crate::ledger::Shortfall::Insufficient {
                    pool: self.base.pool_names.get(id?)?.clone(),
                    needed,
                    free: free.get(k).copied().unwrap_or_default(),
                })
            })
            .collect();
        Unfit::Pools(shortfalls)
    }
}

// === impl FitClock ===

impl FitClock {
    /// Fit checks at `now` with `opts`.
    pub fn new(now: Timestamp, opts: FitOptions) -> Self {
        let fresh_since = k8s_openapi::jiff::SignedDuration::try_from(opts.stale_after)
            .ok()
            .and_then(|limit| now.checked_sub(limit).ok());
        Self {
            now,
            opts,
            fresh_since,
        }
    }

    /// The time the checks are made at.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The options they are made with.
    pub fn opts(&self) -> &FitOptions {
        &self.opts
    }

    /// Whether a node that last reported at `heartbeat` is fresh: its [`age`] is at most
    /// `stale_after`, decided by one comparison (filter asks this of every candidate).
    #[inline]
    fn fresh(&self, heartbeat: Option<Timestamp>) -> bool {
        match (heartbeat, self.fresh_since) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(at), Some(since)) => at >= since,
        }
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

    /// The room the demand leaves on the node ([`Self::room`]) when it fits; otherwise how it
    /// fails, decided from the summary where only free space is short, and by the ledger's
    /// [`check_aged`] on the node's entry where anything else is wrong. One pass over the
    /// demanded pools. A node short of space raises `free[k]` to its free space in the
    /// plan's `k`-th pool where that is short (`free` has [`FitPlan::pools`] entries), so
    /// the caller learns the most free among the nodes turned down.
    #[inline]
    pub fn judge(
        &self,
        clock: &FitClock,
        demand: &Demand,
        free: &mut [Bytes],
    ) -> Result<Option<(u128, u128)>, Failing> {
        let wanted = &self.plan.wanted;
        if wanted.is_empty() {
            return Ok(self.room());
        }
        let Some(summary) = self.summary() else {
            return self.by_ledger(clock, demand);
        };
        if !clock.fresh(summary.heartbeat) || !summary.ready || wanted.len() > 64 {
            return self.by_ledger(clock, demand);
        }
        let pools = self.pools();
        let mut short = 0u64;
        let mut left: u128 = 0;
        let mut whole: u128 = 0;
        for (k, &(id, needed)) in wanted.iter().enumerate() {
            let Some(pool) = id.and_then(|id| pools.iter().find(|p| p.pool == id)) else {
                return self.by_ledger(clock, demand);
            };
            if !pool.ready {
                return self.by_ledger(clock, demand);
            }
            match pool.free.checked_sub(needed) {
                Some(after) => {
                    left += u128::from(after.0);
                    whole += u128::from(pool.allocatable.0);
                }
                None => short |= 1 << k,
            }
        }
        if short == 0 {
            return Ok((whole > 0).then_some((left, whole)));
        }
        for (k, &(id, _)) in wanted.iter().enumerate() {
            if short & (1 << k) != 0
                && let Some(pool) = id.and_then(|id| pools.iter().find(|p| p.pool == id))
                && let Some(most) = free.get_mut(k)
            {
                *most = (*most).max(pool.free);
            }
        }
        Err(Failing::Short(short))
    }

    /// [`Self::judge`] by the ledger's [`check_aged`] on the node's entry.
    #[cold]
    #[inline(never)]
    fn by_ledger(
        &self,
        clock: &FitClock,
        demand: &Demand,
    ) -> Result<Option<(u128, u128)>, Failing> {
        match self.state() {
            Some(state) => check_aged(state, self.heartbeat_age(clock.now), demand, &clock.opts)
                .map(|()| self.room())
                .map_err(Failing::Unfit),
            None => Err(Failing::Unfit(Unfit::NoReport)),
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

/// A table of rows: the rows packed in one vector (a removal moves the last row into the
/// gap), a hash index of their positions beside it. At 50,000 rows it holds 50,000 rows,
/// where a hash map holds 65,536 row-sized slots (its capacity is a power of two, at most
/// 7/8 full): 4.8 MiB less for the three tables of a 50,000-volume cluster.
type Rows<K, V> = indexmap::IndexMap<K, V>;

/// The agent's last report; `None` when there is none or it is not RFC 3339.
fn heartbeat(status: Option<&StorageNodeStatus>) -> Option<Timestamp> {
    status?.heartbeat_time.as_deref()?.parse().ok()
}

/// Time since `heartbeat`. A heartbeat from the future (clock skew) counts as just now.
fn age(heartbeat: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let at = heartbeat?;
    Some(Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO))
}
