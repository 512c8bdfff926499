//! CSIStorageCapacity publishing (`--publish-capacity`): capacity-aware placement where
//! kube-scheduler cannot be given an extender.
//!
//! kube-scheduler's VolumeBinding plugin checks, for an unbound WaitForFirstConsumer claim
//! whose class's provisioner names a CSIDriver object with `storageCapacity: true`, that some
//! CSIStorageCapacity object of the claim's class whose `nodeTopology` matches the node has a
//! `capacity` (from 1.21: a `maximumVolumeSize`, when set) of at least the claim's request.
//! The volumes need not be CSI volumes. So the leading controller keeps one such object per
//! (node, node-local StorageClass) in its namespace:
//!
//! ```text
//!   nodeTopology       matchLabels kubernetes.io/hostname: <the Node's hostname label value>
//!   storageClassName   the class
//!   capacity           the ledger's free bytes of the class's pool on the node
//!                      (allocatable − allocated − reserved: claims already sent to the node
//!                      and volumes being created count), rounded down to whole MiB (see
//!                      [`whole_mebibytes`]); 0 if the node or pool is not ready or the
//!                      agent's report is stale
//!   maximumVolumeSize  the same: a claim fits exactly when it is at most the pool's free
//!                      bytes (`ledger::check`), so the largest single claim is the free space
//! ```
//!
//! [`SETTLE`] after every change the watchers write into the index, and at least every
//! [`TICK`], the wanted objects are computed from the index (in memory, no API call) and
//! compared with what was last written ([`plan`], pure): an object is created when missing,
//! deleted when its node (Node object or StorageNode) or class is gone, and updated when its
//! value moved by at least `--capacity-min-change` percent of the published value (always
//! when either side is 0); a decrease at once, an increase at most once per
//! `--capacity-interval` per object. Only the
//! Lease holder writes; when it becomes leader it first lists the objects carrying
//! [`MANAGED_BY_LABEL`], so a restart adopts, updates or deletes what an earlier leader wrote.
//!
//! The API version (`storage.k8s.io/v1`, `v1beta1` or `v1alpha1`) is chosen by discovery
//! ([`discover`]); the object's shape is the same in all three, so one [`DynamicObject`] code
//! path serves them. A cluster serving none of them gets one warning and no objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use parking_lot::RwLock;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::names;
use crate::cache::watch::Readiness;
use crate::cache::{ClassParams, ClusterIndex};
use crate::ledger::{Bytes, FitOptions};

use super::Metrics;

/// The longest time between two comparisons of the wanted objects with the published ones
/// when nothing in the index changes (a report goes stale with time alone). Otherwise a
/// comparison follows every change the watchers write, [`SETTLE`] later: in a burst
/// kube-scheduler places claims against the published values until they change, so the
/// time from a claim's `selected-node` to its node's smaller object is what sends claims
/// back. The comparison reads the in-memory index only, without copying it;
/// `--capacity-min-change` and, for increases, `--capacity-interval` limit the writes.
pub const TICK: Duration = Duration::from_secs(1);

/// How long a comparison waits after a change for the ones that come with it (the claims
/// of one pod, a re-list): one pass for a handful of changes, not one each.
pub const SETTLE: Duration = Duration::from_millis(15);

/// The pause after a pass in which the list or a write failed (RBAC, an overloaded API
/// server), instead of [`TICK`]: one warning per try, not four a second.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// The label every object this controller publishes carries; the start-up list selects by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "stowage";
/// `app.kubernetes.io/component` of the published objects.
pub const COMPONENT: &str = "capacity";

/// The API group of CSIStorageCapacity.
pub const GROUP: &str = "storage.k8s.io";
/// The versions that serve CSIStorageCapacity, best first: v1 (1.24+), v1beta1
/// (1.21–1.23, until 1.27), v1alpha1 (1.19–1.20 with the `CSIStorageCapacity` feature gate and
/// `--runtime-config=storage.k8s.io/v1alpha1=true`; until 1.23).
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];
/// The resource's plural.
pub const PLURAL: &str = "csistoragecapacities";

/// Settings of the publisher (the `--publish-capacity` and `--capacity-*` flags).
#[derive(Clone, Debug)]
pub struct CapacityConfig {
    /// The namespace the objects live in (the controller's).
    pub namespace: String,
    /// The node-local provisioner name: its StorageClasses get objects.
    pub provisioner: String,
    /// How old an agent's report may be before its node counts as 0.
    pub fit: FitOptions,
    /// Least time between two updates of one object.
    pub interval: Duration,
    /// Least move, in percent of the published value, that is written.
    pub min_change_percent: u8,
    /// The Deployment (in `namespace`) the objects are owned by, so that deleting stowage
    /// deletes them; `None`: no owner (the namespace's deletion still removes them).
    pub owner: Option<String>,
}

/// One object's identity: `(node name, StorageClass name)`.
pub type Key = (String, String);

/// What one object should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The node's `kubernetes.io/hostname` label value (the object's `nodeTopology`).
    pub hostname: String,
    /// `capacity` and `maximumVolumeSize`.
    pub capacity: Bytes,
}

/// What an existing object says, and when this process last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The object's name.
    pub name: String,
    /// Its `nodeTopology` hostname.
    pub hostname: String,
    /// Its `capacity`.
    pub capacity: Bytes,
    /// When this process last wrote it; `None` for an object found by the start-up list.
    pub written: Option<Instant>,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the object of this key.
    Create(Key),
    /// Write the wanted capacity into the existing object of this key.
    Update(Key),
    /// Delete the object of this key (its node or class is gone, or its hostname changed:
    /// `nodeTopology` is immutable, so the next pass creates it anew).
    Delete(Key),
}

/// The rules [`plan`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Least time between two updates of one object.
    pub interval: Duration,
    /// Least move, in percent of the published value, that is written.
    pub min_change_percent: u8,
}

/// Whether a value moving from `old` to `new` is worth a write: any move to or from 0
/// (a node that fills up or stops being ready must show at once), else a move of at least
/// `percent` % of `old`.
pub fn moved_enough(old: Bytes, new: Bytes, percent: u8) -> bool {
    if old == new {
        return false;
    }
    if old == Bytes::ZERO || new == Bytes::ZERO {
        return true;
    }
    let delta = u128::from(old.0.abs_diff(new.0));
    delta * 100 >= u128::from(old.0) * u128::from(percent)
}

/// The writes that bring `published` to `wanted` at `now` (PURE). Creates and deletes are
/// never held back; an update waits for the value to move enough ([`moved_enough`]) and for
/// `rules.interval` since this process last wrote the object.
pub fn plan(
    wanted: &BTreeMap<Key, Wanted>,
    published: &BTreeMap<Key, Published>,
    now: Instant,
    rules: Rules,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (key, have) in published {
        match wanted.get(key) {
            Some(want) if want.hostname == have.hostname => {
                // Less room is written at once: the scheduler places claims against the
                // published value until it changes. More room may wait for the interval.
                let due = want.capacity < have.capacity
                    || have
                        .written
                        .is_none_or(|at| now.saturating_duration_since(at) >= rules.interval);
                if due && moved_enough(have.capacity, want.capacity, rules.min_change_percent) {
                    steps.push(Step::Update(key.clone()));
                }
            }
            _ => steps.push(Step::Delete(key.clone())),
        }
    }
    for key in wanted.keys() {
        if !published.contains_key(key) {
            steps.push(Step::Create(key.clone()));
        }
    }
    steps
}

/// The objects the ledger asks for now: one per (node with a Node object, a hostname label
/// and a StorageNode; StorageClass of `provisioner` with valid parameters). A class whose
/// parameters are invalid gets none (its claims are refused anyway); a node whose report is
/// stale or not ready, or that lacks the class's pool or has it not ready, gets 0.
pub fn wanted(
    index: &ClusterIndex,
    provisioner: &str,
    fit: &FitOptions,
    now: Timestamp,
) -> BTreeMap<Key, Wanted> {
    let classes: Vec<(String, String)> = index
        .storage_classes()
        .filter(|c| crate::cache::class::is_local(c, provisioner))
        .filter_map(|c| {
            let params = ClassParams::from_class(c).ok()?;
            Some((c.metadata.name.clone()?, params.pool.0))
        })
        .collect();
    let mut out = BTreeMap::new();
    if classes.is_empty() {
        return out;
    }
    for (node, heartbeat_age) in index.node_views(now) {
        let Some(Some(hostname)) = index.node_hostname(node.name.as_str()) else {
            continue;
        };
        let fresh = heartbeat_age.is_some_and(|a| a <= fit.stale_after);
        for (class, pool) in &classes {
            let capacity = match node.pool(pool) {
                Some(p) if fresh && node.ready && p.ready => whole_mebibytes(p.free()),
                _ => Bytes::ZERO,
            };
            out.insert(
                (node.name.as_str().to_string(), class.clone()),
                Wanted {
                    hostname: hostname.clone(),
                    capacity,
                },
            );
        }
    }
    out
}

/// `free` rounded down to whole MiB. Volumes are made in whole MiB (a claim's request rounded
/// up, `controller::volume::round_up`) and the controller checks that size, so a claim
/// kube-scheduler lets through against a published value fits the controller's check too:
/// a request of at most `⌊free⌋` rounds up to at most `⌊free⌋`. Exact free bytes would let
/// through a request within the last MiB that the controller then sends back.
pub fn whole_mebibytes(free: Bytes) -> Bytes {
    Bytes(free.0 - free.0 % Bytes::MI)
}

/// The object name of a key: `stowage-` and a 64-bit FNV-1a hash of node and class in hex.
/// Deterministic, so a create that timed out and is retried finds its object (409) instead
/// of making a second one; node and class names together can be longer than a name may be.
pub fn object_name(key: &Key) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.0.bytes().chain([0]).chain(key.1.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("stowage-{hash:016x}")
}

/// The best served version of CSIStorageCapacity ([`VERSIONS`] order), by API discovery;
/// `None` when no version serves it.
pub async fn discover(client: &Client) -> Result<Option<ApiResource>, kube::Error> {
    for version in VERSIONS {
        let group_version = format!("{GROUP}/{version}");
        match client.list_api_group_resources(&group_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == PLURAL) => {
                return Ok(Some(ApiResource {
                    group: GROUP.to_string(),
                    version: version.to_string(),
                    api_version: group_version,
                    kind: "CSIStorageCapacity".to_string(),
                    plural: PLURAL.to_string(),
                }));
            }
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The publisher: what it last wrote, and how to write.
pub struct Publisher {
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    config: CapacityConfig,
    metrics: Metrics,
    api: Api<DynamicObject>,
    resource: ApiResource,
    owner: Option<OwnerReference>,
    published: BTreeMap<Key, Published>,
    loaded: bool,
    /// Whether the owner Deployment was looked up (once per process: a missing one is
    /// warned about once).
    owner_looked_up: bool,
    /// Writes that failed in the last pass.
    failed: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.config)
            .field("api_version", &self.resource.api_version)
            .field("published", &self.published.len())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher writing `resource` (from [`discover`]) objects in `config.namespace`.
    pub fn new(
        client: Client,
        index: Arc<RwLock<ClusterIndex>>,
        config: CapacityConfig,
        metrics: Metrics,
        resource: ApiResource,
    ) -> Self {
        let api = Api::namespaced_with(client.clone(), &config.namespace, &resource);
        Self {
            client,
            index,
            config,
            metrics,
            api,
            resource,
            owner: None,
            published: BTreeMap::new(),
            loaded: false,
            owner_looked_up: false,
            failed: 0,
        }
    }

    /// The `apiVersion` the objects are written in.
    pub fn api_version(&self) -> &str {
        &self.resource.api_version
    }

    /// What this process believes is published, by key.
    pub fn published(&self) -> &BTreeMap<Key, Published> {
        &self.published
    }

    /// Forgets what was published: the next [`Publisher::sync`] lists the objects again
    /// (after losing and regaining the Lease, another leader may have written them).
    pub fn forget(&mut self) {
        self.published.clear();
        self.loaded = false;
    }

    /// Reads the owner Deployment (once) and lists the existing objects carrying
    /// [`MANAGED_BY_LABEL`]. Of two objects for one key (which only a person makes), the
    /// second is deleted, and so is one whose node this controller does not know (its node
    /// left while no leader ran).
    async fn load(&mut self) -> Result<(), kube::Error> {
        if !self.owner_looked_up
            && let Some(name) = self.config.owner.clone()
        {
            self.owner = self.owner_reference(&name).await;
            self.owner_looked_up = true;
        }
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut published = BTreeMap::new();
        let mut unwanted = Vec::new();
        for object in list.items {
            let name = object.name_any();
            let Some((key, found)) = read_object(&object, &self.index) else {
                tracing::warn!(
                    object = %name,
                    namespace = %self.config.namespace,
                    "a CSIStorageCapacity labelled {selector} names no node this controller knows or has no hostname topology; deleting it"
                );
                unwanted.push(name);
                continue;
            };
            match published.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => unwanted.push(name),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(found);
                }
            }
        }
        for name in unwanted {
            self.delete_named(&name).await?;
        }
        tracing::info!(
            objects = published.len(),
            api_version = %self.resource.api_version,
            namespace = %self.config.namespace,
            "publishing CSIStorageCapacity objects"
        );
        self.published = published;
        self.loaded = true;
        Ok(())
    }

    /// An owner reference to the Deployment `name` in the objects' namespace; `None` (with a
    /// warning) when it cannot be read.
    async fn owner_reference(&self, name: &str) -> Option<OwnerReference> {
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        match deployments.get_opt(name).await {
            Ok(Some(d)) => Some(OwnerReference {
                api_version: "apps/v1".to_string(),
                kind: "Deployment".to_string(),
                name: name.to_string(),
                uid: d.metadata.uid.unwrap_or_default(),
                ..OwnerReference::default()
            }),
            Ok(None) => {
                tracing::warn!(
                    deployment = %name,
                    namespace = %self.config.namespace,
                    "the owner Deployment of the CSIStorageCapacity objects does not exist; they are written without an owner (deleting the namespace still removes them). Set --capacity-owner to the controller's Deployment, or to '' to silence this"
                );
                None
            }
            Err(error) => {
                tracing::warn!(
                    deployment = %name,
                    namespace = %self.config.namespace,
                    error = %error,
                    "cannot read the owner Deployment of the CSIStorageCapacity objects (RBAC: get deployments); they are written without an owner"
                );
                None
            }
        }
    }

    /// One pass: (the first time, list what exists, then) compute the wanted objects from
    /// the index and write the [`plan`]'s steps. Returns how many writes were made. Failed
    /// writes are counted, logged once per pass (the first error and how many), and retried
    /// by a later pass; [`Publisher::failed_last_pass`] says whether any failed.
    pub async fn sync(&mut self) -> Result<usize, kube::Error> {
        self.failed = 0;
        if !self.loaded {
            self.load().await?;
        }
        let wanted = {
            let index = self.index.read();
            wanted(
                &index,
                &self.config.provisioner,
                &self.config.fit,
                Timestamp::now(),
            )
        };
        let rules = Rules {
            interval: self.config.interval,
            min_change_percent: self.config.min_change_percent,
        };
        let steps = plan(&wanted, &self.published, Instant::now(), rules);
        let mut written = 0;
        let mut first_failure = None;
        for step in steps {
            let (op, result) = match &step {
                Step::Create(key) => ("create", self.create(key, &wanted).await),
                Step::Update(key) => ("update", self.update(key, &wanted).await),
                Step::Delete(key) => ("delete", self.delete(key).await),
            };
            match result {
                Ok(()) => {
                    written += 1;
                    self.metrics.capacity_writes.with_label_values(&[op]).inc();
                }
                Err(error) => {
                    self.metrics
                        .capacity_write_errors
                        .with_label_values(&[op])
                        .inc();
                    self.failed += 1;
                    first_failure.get_or_insert((step, error));
                }
            }
        }
        if let Some((step, error)) = first_failure {
            tracing::warn!(
                failed = self.failed,
                first = ?step,
                namespace = %self.config.namespace,
                error = %error,
                "writing CSIStorageCapacity objects failed; retrying in {} s (RBAC: csistoragecapacities in storage.k8s.io, verbs get, list, watch, create, update, patch, delete)",
                RETRY_AFTER_FAILURE.as_secs()
            );
        }
        Ok(written)
    }

    /// Whether a write of the last [`Publisher::sync`] failed.
    pub fn failed_last_pass(&self) -> bool {
        self.failed > 0
    }

    async fn create(
        &mut self,
        key: &Key,
        wanted: &BTreeMap<Key, Wanted>,
    ) -> Result<(), kube::Error> {
        let Some(want) = wanted.get(key) else {
            return Ok(());
        };
        let name = object_name(key);
        let mut object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": {
                "name": name,
                "namespace": self.config.namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, "app.kubernetes.io/component": COMPONENT},
            },
            "nodeTopology": {"matchLabels": {names::LABEL_HOSTNAME: want.hostname}},
            "storageClassName": key.1,
            "capacity": want.capacity.0.to_string(),
            "maximumVolumeSize": want.capacity.0.to_string(),
        }))
        .map_err(kube::Error::SerdeError)?;
        if let Some(owner) = &self.owner {
            object.metadata.owner_references = Some(vec![owner.clone()]);
        }
        match self.api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            // Ours from before (the name is the key's): write the value into it.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                self.patch_capacity(&name, want.capacity).await?;
            }
            Err(e) => return Err(e),
        }
        self.published.insert(
            key.clone(),
            Published {
                name,
                hostname: want.hostname.clone(),
                capacity: want.capacity,
                written: Some(Instant::now()),
            },
        );
        Ok(())
    }

    async fn update(
        &mut self,
        key: &Key,
        wanted: &BTreeMap<Key, Wanted>,
    ) -> Result<(), kube::Error> {
        let (Some(want), Some(have)) = (wanted.get(key), self.published.get(key)) else {
            return Ok(());
        };
        let name = have.name.clone();
        match self.patch_capacity(&name, want.capacity).await {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // Deleted behind our back: the next pass creates it.
                self.published.remove(key);
                return Err(kube::Error::Api(e));
            }
            Err(e) => return Err(e),
        }
        if let Some(have) = self.published.get_mut(key) {
            have.capacity = want.capacity;
            have.written = Some(Instant::now());
        }
        Ok(())
    }

    async fn patch_capacity(&self, name: &str, capacity: Bytes) -> Result<(), kube::Error> {
        let patch = json!({
            "capacity": capacity.0.to_string(),
            "maximumVolumeSize": capacity.0.to_string(),
        });
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    async fn delete(&mut self, key: &Key) -> Result<(), kube::Error> {
        let Some(have) = self.published.get(key) else {
            return Ok(());
        };
        let name = have.name.clone();
        self.delete_named(&name).await?;
        self.published.remove(key);
        Ok(())
    }

    async fn delete_named(&self, name: &str) -> Result<(), kube::Error> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs until `stop` turns true: while `leader` is true, a [`Publisher::sync`] every
    /// [`TICK`]; on losing the Lease it forgets what it published (the next leader lists
    /// the objects again). Waits for the index's first lists before the first pass, so that
    /// no object is deleted for a node or class not listed yet.
    pub async fn run(
        mut self,
        mut leader: watch::Receiver<bool>,
        ready: Readiness,
        stop: watch::Receiver<bool>,
    ) {
        let stopped = super::stopped(stop);
        tokio::pin!(stopped);
        tokio::select! {
            () = ready.wait() => {}
            () = &mut stopped => return,
        }
        loop {
            if !*leader.borrow_and_update() {
                self.forget();
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return },
                    () = &mut stopped => return,
                }
                continue;
            }
            let pause = match self.sync().await {
                Ok(_) if self.failed_last_pass() => RETRY_AFTER_FAILURE,
                Ok(_) => {
                    // The next pass: at the next change (and the few that come with it),
                    // or after TICK in any case.
                    tokio::select! {
                        () = ready.changed() => SETTLE,
                        () = tokio::time::sleep(TICK) => Duration::ZERO,
                        () = &mut stopped => return,
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        namespace = %self.config.namespace,
                        error = %error,
                        "listing the CSIStorageCapacity objects failed; retrying in {} s (RBAC: list csistoragecapacities in storage.k8s.io)",
                        RETRY_AFTER_FAILURE.as_secs()
                    );
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stopped => return,
            }
        }
    }
}

/// The key and state of an object found by the start-up list: its class, and the node whose
/// hostname label its `nodeTopology` names (`None` when no Node the index holds has it).
fn read_object(object: &DynamicObject, index: &RwLock<ClusterIndex>) -> Option<(Key, Published)> {
    let class = object.data.get("storageClassName")?.as_str()?.to_string();
    let hostname = object
        .data
        .get("nodeTopology")?
        .get("matchLabels")?
        .get(names::LABEL_HOSTNAME)?
        .as_str()?
        .to_string();
    let capacity = object
        .data
        .get("capacity")
        .and_then(|c| c.as_str())
        .and_then(|c| c.parse::<Bytes>().ok())
        .unwrap_or(Bytes::ZERO);
    let node = {
        let index = index.read();
        index.node_with_hostname(&hostname)?
    };
    Some((
        (node, class),
        Published {
            name: object.name_any(),
            hostname,
            capacity,
            written: None,
        },
    ))
}

/// Finds the served version of CSIStorageCapacity and runs a [`Publisher`] until `stop`
/// (see [`Publisher::run`]). Without a served version it warns once and does nothing.
pub async fn publish(
    client: Client,
    index: Arc<RwLock<ClusterIndex>>,
    config: CapacityConfig,
    metrics: Metrics,
    leader: watch::Receiver<bool>,
    ready: Readiness,
    stop: watch::Receiver<bool>,
) {
    let resource = loop {
        match discover(&client).await {
            Ok(Some(resource)) => break resource,
            Ok(None) => {
                tracing::warn!(
                    "--publish-capacity: this cluster serves no CSIStorageCapacity (storage.k8s.io v1, v1beta1 or v1alpha1); no capacity objects are published. On 1.19-1.20 turn on the CSIStorageCapacity feature gate and --runtime-config=storage.k8s.io/v1alpha1=true"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error, "discovering CSIStorageCapacity failed; retrying in 10 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    () = super::stopped(stop.clone()) => return,
                }
            }
        }
    };
    tracing::info!(api_version = %resource.api_version, "CSIStorageCapacity served");
    Publisher::new(client, index, config, metrics, resource)
        .run(leader, ready, stop)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: &str, class: &str) -> Key {
        (node.to_string(), class.to_string())
    }

    fn want(capacity: u64) -> Wanted {
        Wanted {
            hostname: "h".into(),
            capacity: Bytes(capacity),
        }
    }

    fn have(capacity: u64, written: Option<Instant>) -> Published {
        Published {
            name: "x".into(),
            hostname: "h".into(),
            capacity: Bytes(capacity),
            written,
        }
    }

    const RULES: Rules = Rules {
        interval: Duration::from_secs(10),
        min_change_percent: 5,
    };

    #[test]
    fn small_moves_are_not_written_and_moves_to_or_from_zero_always_are() {
        assert!(!moved_enough(Bytes(1000), Bytes(1000), 5));
        assert!(!moved_enough(Bytes(1000), Bytes(951), 5));
        assert!(moved_enough(Bytes(1000), Bytes(950), 5));
        assert!(moved_enough(Bytes(1000), Bytes(1050), 5));
        assert!(moved_enough(Bytes(1000), Bytes::ZERO, 50));
        assert!(moved_enough(Bytes::ZERO, Bytes(1), 50));
        // No overflow at the extremes.
        assert!(moved_enough(Bytes(u64::MAX), Bytes(1), 99));
        assert!(!moved_enough(Bytes(u64::MAX), Bytes(1), 100));
        assert!(moved_enough(Bytes(1000), Bytes(999), 0));
    }

    #[tokio::test(start_paused = true)]
    async fn plan_creates_missing_deletes_gone_and_rate_limits_updates() {
        let now = Instant::now();
        let wanted = BTreeMap::from([
            (key("a", "local"), want(200)),
            (key("b", "local"), want(500)),
            (key("c", "local"), want(0)),
            (key("d", "local"), want(100)),
        ]);
        let published = BTreeMap::from([
            // grew 100 %, but written 1 s ago: held back
            (key("a", "local"), have(100, Some(now))),
            // moved 50 %, listed at start: written
            (key("b", "local"), have(1000, None)),
            // shrank 50 %, written 1 s ago: less room is written at once
            (key("d", "local"), have(200, Some(now))),
            // node gone
            (key("z", "local"), have(1000, None)),
        ]);
        let steps = plan(&wanted, &published, now + Duration::from_secs(1), RULES);
        assert_eq!(
            steps,
            vec![
                Step::Update(key("b", "local")),
                Step::Update(key("d", "local")),
                Step::Delete(key("z", "local")),
                Step::Create(key("c", "local")),
            ]
        );
        let later = plan(&wanted, &published, now + Duration::from_secs(10), RULES);
        assert!(
            later.contains(&Step::Update(key("a", "local"))),
            "{later:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_hostname_replaces_the_object() {
        let wanted = BTreeMap::from([(key("a", "local"), want(100))]);
        let mut old = have(100, None);
        old.hostname = "old".into();
        let published = BTreeMap::from([(key("a", "local"), old)]);
        assert_eq!(
            plan(&wanted, &published, Instant::now(), RULES),
            vec![Step::Delete(key("a", "local"))]
        );
    }

    #[test]
    fn published_sizes_are_whole_mebibytes_and_every_claim_they_admit_fits_the_controller() {
        assert_eq!(whole_mebibytes(Bytes(0)), Bytes(0));
        assert_eq!(whole_mebibytes(Bytes(Bytes::MI - 1)), Bytes(0));
        assert_eq!(
            whole_mebibytes(Bytes(5 * Bytes::MI + 7)),
            Bytes(5 * Bytes::MI)
        );
        assert_eq!(whole_mebibytes(Bytes(u64::MAX)).0 % Bytes::MI, 0);
        for free in [Bytes::MI, 3 * Bytes::MI + 1, 10 * Bytes::GI - 1] {
            let published = whole_mebibytes(Bytes(free));
            for request in [published.0, published.0.saturating_sub(1), 1] {
                let made = crate::controller::volume::round_up(Bytes(request)).unwrap();
                assert!(made.0 <= free, "request {request} of free {free}: {made:?}");
            }
        }
    }

    #[test]
    fn object_names_are_stable_valid_and_tell_keys_apart() {
        let a = object_name(&key("a-b", "c"));
        assert_eq!(a, object_name(&key("a-b", "c")));
        assert_ne!(a, object_name(&key("a", "b-c")));
        assert_eq!(a.len(), "stowage-".len() + 16);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
