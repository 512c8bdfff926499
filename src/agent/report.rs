//! The StorageNode reporter: the agent owns the StorageNode named after its node and keeps
//! its status current, on every change and as a heartbeat.
//!
//! ```text
//!   every --heartbeat, or woken after a reconcile:
//!     reload the pool config if the file changed
//!     probe the pools, scan them for volumes     (blocking, off the async threads)
//!     status = pool_statuses(reports, this node's LocalVolumes, volumes on disk and what
//!                            they hold)
//!     write it when it changed, or always on a heartbeat; set the gauges
//! ```
//!
//! Volumes on disk without a LocalVolume are counted as orphans and logged once; they are
//! never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};

use super::driver::Scan;
use super::metrics::Metrics;
use super::path::VolumeName;
use super::pool::{PoolConfig, PoolReport};
use super::pool_set::PoolSet;
use crate::api::local_volume::LocalVolume;
use crate::api::names::FIELD_MANAGER_AGENT;
use crate::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};
use crate::ledger::{Bytes, Driver};

/// What the scan found on each pool's disk (by pool name): the volume names and, for
/// btrfs, what they and the pool's other subvolumes hold. A pool that could not be read
/// has no entry.
pub type OnDisk = BTreeMap<String, Scan>;

/// The pools' status lines from their probes, this node's LocalVolumes and the volumes on
/// disk. Pure.
///
/// `allocated` and `volumes` count every LocalVolume of the pool, also those not made yet
/// or being deleted: their space is promised. A volume on disk is an orphan when no
/// LocalVolume of this node has its name, whichever pool that LocalVolume names.
/// `allocatable` is the capacity less the reserve, and for a btrfs pool also no more than
/// [`btrfs_allocatable`] allows.
pub fn pool_statuses<'a>(
    reports: &[PoolReport],
    volumes: impl IntoIterator<Item = &'a LocalVolume>,
    node: &str,
    on_disk: &OnDisk,
) -> Vec<PoolStatus> {
    let mut allocated: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    // Each LocalVolume of this node: its pool and size.
    let mut known: BTreeMap<String, (&str, u64)> = BTreeMap::new();
    for lv in volumes {
        if lv.spec.node_name != node {
            continue;
        }
        known.insert(lv.name_any(), (lv.spec.pool.as_str(), lv.spec.size_bytes));
        let entry = allocated.entry(lv.spec.pool.as_str()).or_default();
        entry.0 = entry.0.saturating_add(lv.spec.size_bytes);
        entry.1 = entry.1.saturating_add(1);
    }
    reports
        .iter()
        .map(|r| {
            let (bytes, count) = allocated.get(r.name.as_str()).copied().unwrap_or_default();
            let disk = on_disk.get(r.name.as_str());
            let orphans = disk.map_or(0, |scan| {
                scan.names
                    .iter()
                    .filter(|n| !known.contains_key(n.as_str()))
                    .count()
            });
            let mut allocatable = r.capacity.saturating_sub(r.reserve);
            if let (Driver::Btrfs, Some(available)) = (r.driver, r.available) {
                let (live, kept) = disk.map_or((Bytes::ZERO, Bytes::ZERO), |scan| {
                    held_by_live_volumes(scan, r.name.as_str(), &known)
                });
                allocatable = btrfs_allocatable(r.capacity, r.reserve, available, live, kept);
            }
            PoolStatus {
                name: r.name.to_string(),
                driver: r.driver.to_string(),
                path: r.path.display().to_string(),
                capacity_bytes: r.capacity.0,
                allocatable_bytes: allocatable.0,
                allocated_bytes: bytes,
                available_bytes: r.available.map_or(0, |b| b.0),
                volumes: count,
                orphans: u64::try_from(orphans).unwrap_or(u64::MAX),
                ready: r.ready,
                message: r.reason.clone(),
            }
        })
        .collect()
}

/// What a btrfs pool can promise to volumes, in all (`allocatable`; a new claim may take
/// it less what the pool's LocalVolumes are promised already):
///
/// ```text
///   allocatable = min(capacity − kept, available + live) − reserve
/// ```
///
/// - `available` is the filesystem's free space (statvfs `f_bavail`), `live` what the
///   pool's live volumes (on disk, with a LocalVolume of this pool) hold, each counted up
///   to its size. Their data is inside their own allocation, so `available + live` is the
///   room there is for the volumes' sizes: what a new claim may take is then at most the
///   free space less what the live volumes may still write, so nothing is promised twice,
///   and data outside the pool's live volumes on the same filesystem counts as used.
/// - `kept` is what the pool holds outside its live volumes: archives (`.archive/`),
///   volumes retained or orphaned (on disk without a LocalVolume), staging leftovers,
///   other subvolumes, and what a live volume holds beyond its size. It counts against a
///   configured `capacity` below the filesystem's size too (without one, `available`
///   already leaves it out).
///
/// Only a cap: it never raises the capacity less the reserve.
pub fn btrfs_allocatable(
    capacity: Bytes,
    reserve: Bytes,
    available: Bytes,
    live: Bytes,
    kept: Bytes,
) -> Bytes {
    capacity
        .saturating_sub(kept)
        .min(available.saturating_add(live))
        .saturating_sub(reserve)
}

/// What the volumes in `scan` (a pool named `pool`) that are live (`known` names them,
/// with this pool) hold up to their sizes, and what everything else in the pool holds:
/// `(live, kept)` for [`btrfs_allocatable`].
fn held_by_live_volumes(
    scan: &Scan,
    pool: &str,
    known: &BTreeMap<String, (&str, u64)>,
) -> (Bytes, Bytes) {
    let mut live = Bytes::ZERO;
    let mut kept = scan.other;
    for (name, held) in &scan.held {
        match known.get(name.as_str()) {
            Some(&(lv_pool, size)) if lv_pool == pool => {
                let inside = (*held).min(Bytes(size));
                live = live.saturating_add(inside);
                kept = kept.saturating_add(held.saturating_sub(inside));
            }
            _ => kept = kept.saturating_add(*held),
        }
    }
    (live, kept)
}

/// The reporter's wiring.
pub struct Reporter {
    /// The API client.
    pub client: Client,
    /// This node.
    pub node: String,
    /// The pools, shared with the reconciler.
    pub pools: Arc<Mutex<PoolSet>>,
    /// Where the pool config lives, re-read on every heartbeat.
    pub config_path: PathBuf,
    /// The config text the pools were built from.
    pub config_text: String,
    /// `--pool-root`: where `create: true` pools may be made.
    pub pool_root: PathBuf,
    /// The reconciler's LocalVolume cache (this node's volumes).
    pub store: Store<LocalVolume>,
    /// Metrics to set.
    pub metrics: Metrics,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Notified after every reconcile.
    pub changed: Arc<Notify>,
    /// Asks the reconciler to look at every volume again (a pool became ready, the config
    /// changed).
    pub reconcile_all: mpsc::Sender<()>,
    /// Set once the first status is written.
    pub written: watch::Sender<bool>,
}

/// What the reporter remembers between rounds.
#[derive(Default)]
struct Memory {
    last: Option<StorageNodeStatus>,
    orphans_logged: BTreeSet<(String, VolumeName)>,
    bad_config: Option<String>,
    /// Whether the StorageNode's owner (the Node) was set, or cannot be.
    owner_done: bool,
}

impl Reporter {
    /// Runs until `shutdown` turns true, then writes the status once more if it changed
    /// (the agent sets `shutdown` after its last volume operations finished, so the final
    /// status counts them) and returns. Waits for the first LocalVolume list before the
    /// first write, so the first status already counts the allocated space and orphans.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Polled rather than awaited: `Store::wait_until_ready` wakes only the task that
        // polled it last, and the controller waits on the same store.
        loop {
            if self.store.wait_until_ready().now_or_never().is_some() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tracing::debug!(node = %self.node, "LocalVolumes listed; reporting");
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let heartbeat = tokio::select! {
                _ = tick.tick() => Some(true),
                () = self.changed.notified() => Some(false),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(heartbeat) = heartbeat else {
                self.report(&mut memory, false).await;
                tracing::debug!(node = %self.node, "final status reported");
                return;
            };
            if heartbeat {
                self.reload_config(&mut memory);
            }
            self.report(&mut memory, heartbeat).await;
        }
    }

    /// Re-reads the pool config; a changed, valid file replaces the pools. An invalid one is
    /// logged once and the previous pools keep working.
    fn reload_config(&mut self, memory: &mut Memory) {
        let text = match std::fs::read_to_string(&self.config_path) {
            Ok(text) => text,
            Err(error) => {
                let note = error.to_string();
                if memory.bad_config.as_deref() != Some(note.as_str()) {
                    tracing::warn!(path = %self.config_path.display(), error = %note, "cannot re-read the pool config; keeping the current pools");
                    memory.bad_config = Some(note);
                }
                return;
            }
        };
        if text == self.config_text {
            return;
        }
        match PoolConfig::parse(&text, &self.pool_root) {
            Ok(specs) => {
                let mut pools = self.pools.lock();
                if pools.specs() != specs {
                    tracing::info!(path = %self.config_path.display(), pools = specs.len(), "pool config changed; reloading the pools");
                    *pools = PoolSet::new(specs);
                    drop(pools);
                    let _ = self.reconcile_all.try_send(());
                }
                self.config_text = text;
                memory.bad_config = None;
            }
            Err(error) => {
                let note = error.to_string();
                if memory.bad_config.as_deref() != Some(note.as_str()) {
                    tracing::error!(path = %self.config_path.display(), error = %note, "the changed pool config is not valid; keeping the previous pools until it is fixed");
                    memory.bad_config = Some(note);
                }
            }
        }
    }

    async fn report(&self, memory: &mut Memory, heartbeat: bool) {
        let pools = self.pools.clone();
        let probed = tokio::task::spawn_blocking(move || {
            let (became_ready, pools) = {
                let mut set = pools.lock();
                let became_ready = set.refresh();
                let pools: Vec<_> = set
                    .pools()
                    .iter()
                    .map(|p| (p.report.clone(), p.driver().cloned()))
                    .collect();
                (became_ready, pools)
            };
            // Scan without holding the lock: the reconciler needs it for every volume.
            let mut on_disk = OnDisk::new();
            let mut reports = Vec::new();
            for (mut report, driver) in pools {
                if let Some(driver) = driver {
                    match driver.scan() {
                        Ok(scan) => {
                            on_disk.insert(report.name.to_string(), scan);
                        }
                        Err(error) => {
                            report.ready = false;
                            report.reason =
                                Some(format!("cannot list the pool's volumes: {error}"));
                        }
                    }
                }
                reports.push(report);
            }
            (reports, on_disk, became_ready)
        })
        .await;
        let (reports, on_disk, became_ready) = match probed {
            Ok(probed) => probed,
            Err(error) => {
                tracing::warn!(error = %error, "probing the pools failed");
                return;
            }
        };
        if !became_ready.is_empty() {
            tracing::info!(pools = ?became_ready, "pools became ready");
            let _ = self.reconcile_all.try_send(());
        }
        tracing::debug!(heartbeat, pools = reports.len(), "pools probed");
        let volumes = self.store.state();
        let pools = pool_statuses(&reports, volumes.iter().map(|v| &**v), &self.node, &on_disk);
        self.log_orphans(memory, &volumes, &on_disk);

        let mut status = StorageNodeStatus {
            pools,
            heartbeat_time: None,
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            ..StorageNodeStatus::default()
        };
        status.refresh_totals();
        if !heartbeat && memory.last.as_ref() == Some(&status) {
            return;
        }
        let now = SystemTime::now();
        let mut written = status.clone();
        written.heartbeat_time = Some(Timestamp::now().to_string());
        match self.write(&written).await {
            Ok(()) => {
                self.metrics.set_pools(&self.node, &status.pools);
                let secs = now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.metrics.heartbeat(&self.node, secs);
                memory.last = Some(status);
                self.written.send_replace(true);
                if !memory.owner_done {
                    memory.owner_done = match self.own().await {
                        Ok(done) => done,
                        Err(error) => {
                            tracing::warn!(node = %self.node, error = %format!("{error:#}"), "cannot make the Node the owner of its StorageNode; it will not be deleted with the Node (the agent needs get on nodes)");
                            true
                        }
                    };
                }
            }
            Err(error) => {
                tracing::warn!(node = %self.node, error = %format!("{error:#}"), "cannot write the StorageNode status; retrying on the next heartbeat");
                memory.last = None;
            }
        }
    }

    fn log_orphans(&self, memory: &mut Memory, volumes: &[Arc<LocalVolume>], on_disk: &OnDisk) {
        let known: BTreeSet<String> = volumes.iter().map(|v| v.name_any()).collect();
        let mut seen = BTreeSet::new();
        for (pool, scan) in on_disk {
            for name in scan.names.iter().filter(|n| !known.contains(n.as_str())) {
                let key = (pool.clone(), name.clone());
                if !memory.orphans_logged.contains(&key) {
                    tracing::warn!(node = %self.node, pool = %pool, volume = %name, "orphaned volume: on disk with no LocalVolume; left in place, remove it by hand if it is not needed");
                }
                seen.insert(key);
            }
        }
        memory.orphans_logged = seen;
    }

    /// Makes this node's Node object the owner of its StorageNode, so that the garbage
    /// collector deletes the StorageNode when the Node is deleted (a node removed from the
    /// cluster leaves no capacity row behind; a node that registers again gets a new one at
    /// its agent's next heartbeat). `Ok(false)` while there is no Node of that name.
    /// Idempotent: the merge patch sets the one owner whatever was there.
    async fn own(&self) -> anyhow::Result<bool> {
        let Some(owner) = self.owner().await? else {
            return Ok(false);
        };
        let api: Api<StorageNode> = Api::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER_AGENT.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "metadata": { "ownerReferences": [owner] } }));
        api.patch(&self.node, &params, &patch)
            .await
            .with_context(|| format!("setting the owner of StorageNode {}", self.node))?;
        tracing::debug!(node = %self.node, "StorageNode owned by its Node");
        Ok(true)
    }

    /// The owner reference to this node's Node object; `None` while there is none.
    async fn owner(&self) -> anyhow::Result<Option<OwnerReference>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get_metadata_opt(&self.node)
            .await
            .with_context(|| format!("reading Node {}", self.node))?;
        Ok(node.and_then(|n| n.metadata.uid).map(|uid| OwnerReference {
            api_version: "v1".to_string(),
            kind: "Node".to_string(),
            name: self.node.clone(),
            uid,
            ..OwnerReference::default()
        }))
    }

    /// Creates the StorageNode if it is missing, then merge-patches its status. Only this
    /// agent writes the status, so a merge patch cannot clobber anyone.
    async fn write(&self, status: &StorageNodeStatus) -> anyhow::Result<()> {
        let api: Api<StorageNode> = Api::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER_AGENT.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "status": status }));
        match api.patch_status(&self.node, &params, &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("patching the status of StorageNode {}", self.node)));
            }
        }
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER_AGENT.to_string()),
            ..PostParams::default()
        };
        // Made owned by the Node (when it can be read), also when the Node registered
        // again after its old StorageNode went with the old Node.
        let mut sn = StorageNode::new(&self.node, StorageNodeSpec {});
        match self.owner().await {
            Ok(owner) => sn.metadata.owner_references = owner.map(|o| vec![o]),
            Err(error) => {
                tracing::debug!(node = %self.node, error = %format!("{error:#}"), "StorageNode made without an owner")
            }
        }
        match api.create(&post, &sn).await {
            Ok(_) => tracing::info!(node = %self.node, "created the StorageNode"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("creating StorageNode {}", self.node))
                );
            }
        }
        api.patch_status(&self.node, &params, &patch)
            .await
            .map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("patching the status of StorageNode {}", self.node))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::local_volume::{ClaimRef, LocalVolumeSpec, OnDelete};
    use crate::ledger::PoolName;

    const A: &str = "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b";
    const B: &str = "pvc-11111111-2222-4333-8444-555555555555";
    const C: &str = "pvc-22222222-2222-4333-8444-555555555555";
    const D: &str = "pvc-33333333-2222-4333-8444-555555555555";

    fn report(name: &str, ready: bool) -> PoolReport {
        PoolReport {
            name: PoolName::from(name),
            driver: Driver::Hostpath,
            path: format!("/pools/{name}").into(),
            ready,
            reason: (!ready).then(|| "/pools/x does not exist".to_string()),
            capacity: if ready { Bytes(1000) } else { Bytes::ZERO },
            available: ready.then_some(Bytes(700)),
            reserve: if ready { Bytes(100) } else { Bytes::ZERO },
        }
    }

    fn lv(name: &str, node: &str, pool: &str, size: u64) -> LocalVolume {
        LocalVolume::new(
            name,
            LocalVolumeSpec {
                node_name: node.into(),
                pool: pool.into(),
                size_bytes: size,
                claim: ClaimRef::default(),
                on_delete: OnDelete::Delete,
            },
        )
    }

    #[test]
    fn pools_report_capacity_allocation_and_orphans() {
        let volumes = [
            lv(A, "n1", "fast", 300),
            lv(B, "n1", "fast", 50),
            lv(C, "n2", "fast", 999),
        ];
        let mut on_disk = OnDisk::new();
        on_disk.insert(
            "fast".into(),
            vec![VolumeName::parse(A).unwrap(), VolumeName::parse(C).unwrap()].into(),
        );
        let got = pool_statuses(
            &[report("fast", true), report("slow", false)],
            volumes.iter(),
            "n1",
            &on_disk,
        );
        assert_eq!(got.len(), 2);
        let fast = &got[0];
        assert_eq!(fast.name, "fast");
        assert_eq!(fast.driver, "hostpath");
        assert_eq!(fast.path, "/pools/fast");
        assert_eq!(fast.capacity_bytes, 1000);
        assert_eq!(fast.allocatable_bytes, 900);
        assert_eq!(fast.allocated_bytes, 350, "only this node's volumes count");
        assert_eq!(fast.available_bytes, 700);
        assert_eq!(fast.volumes, 2);
        assert_eq!(
            fast.orphans, 1,
            "C belongs to another node, so here it is an orphan"
        );
        assert!(fast.ready);
        assert_eq!(fast.message, None);
        let slow = &got[1];
        assert!(!slow.ready);
        assert_eq!(slow.message.as_deref(), Some("/pools/x does not exist"));
        assert_eq!((slow.capacity_bytes, slow.volumes, slow.orphans), (0, 0, 0));
    }

    #[test]
    fn a_btrfs_pool_promises_no_more_than_free_space_plus_what_its_live_volumes_hold() {
        let mib = |n: u64| n << 20;
        let btrfs = |capacity, available| PoolReport {
            name: PoolName::from("fast"),
            driver: Driver::Btrfs,
            path: "/pools/fast".into(),
            ready: true,
            reason: None,
            capacity: Bytes(capacity),
            available: Some(Bytes(available)),
            reserve: Bytes(mib(10)),
        };
        // A holds 30 of its 100; B holds 150 of its 100 (its limit was lowered); C is on
        // disk without a LocalVolume (retained or orphaned); D names another pool.
        let volumes = [
            lv(A, "n1", "fast", mib(100)),
            lv(B, "n1", "fast", mib(100)),
            lv(D, "n1", "slow", mib(100)),
        ];
        let mut scan = Scan::from([A, B, C, D].map(|n| VolumeName::parse(n).unwrap()).to_vec());
        for (n, held) in [(A, 30), (B, 150), (C, 40), (D, 5)] {
            scan.held
                .insert(VolumeName::parse(n).unwrap(), Bytes(mib(held)));
        }
        // Archives and staging leftovers.
        scan.other = Bytes(mib(60));
        let mut on_disk = OnDisk::new();
        on_disk.insert("fast".into(), scan);
        let live = mib(30 + 100);
        let kept = mib(60 + 40 + 5 + 50);

        // The filesystem's free space binds: 500 free + 130 held by live volumes.
        let got = pool_statuses(
            &[btrfs(mib(4096), mib(500))],
            volumes.iter(),
            "n1",
            &on_disk,
        );
        assert_eq!(got[0].allocatable_bytes, mib(500) + live - mib(10));
        let free = got[0].to_pool_state().free();
        assert_eq!(
            free,
            Bytes(mib(500) - mib(70) - mib(10)),
            "free space less what A may still write (B may write nothing) less the reserve"
        );
        // A capacity below the filesystem's binds: kept data counts against it.
        let got = pool_statuses(
            &[btrfs(mib(1000), mib(900))],
            volumes.iter(),
            "n1",
            &on_disk,
        );
        assert_eq!(got[0].allocatable_bytes, mib(1000) - kept - mib(10));
        // Never more than the capacity less the reserve.
        let empty = OnDisk::new();
        let got = pool_statuses(&[btrfs(mib(1000), mib(1000))], [], "n1", &empty);
        assert_eq!(got[0].allocatable_bytes, mib(990));
        // Hostpath is left as it was: the ledger caps it by the free space itself.
        let mut hostpath = btrfs(mib(1000), mib(100));
        hostpath.driver = Driver::Hostpath;
        let got = pool_statuses(&[hostpath], volumes.iter(), "n1", &on_disk);
        assert_eq!(got[0].allocatable_bytes, mib(990));
    }

    #[test]
    fn a_volume_is_not_an_orphan_whichever_pool_its_object_names() {
        let volumes = [lv(A, "n1", "slow", 1)];
        let mut on_disk = OnDisk::new();
        on_disk.insert("fast".into(), vec![VolumeName::parse(A).unwrap()].into());
        let got = pool_statuses(&[report("fast", true)], volumes.iter(), "n1", &on_disk);
        assert_eq!(got[0].orphans, 0);
        assert_eq!(got[0].volumes, 0);
    }
}
