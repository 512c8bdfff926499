//! NFS cluster mode inside `stowage controller`: claims of `nfs.stowage.io` classes get a
//! directory on one of the configured NFS servers (see [`crate::nfs`]) and a PV with an
//! `nfs` source; released PVs have their directory deleted, archived or kept.
//!
//! ```text
//!   claim of an NFS class, provisioner annotation names us (Immediate or WFFC alike)
//!     PV pvc-<uid> exists ──────────────▶ wait for the PV controller to bind
//!     unsupported request / bad class ──▶ ProvisioningFailed, no hot retry
//!     otherwise ────────────────────────▶ NfsCluster::provision (blocking, serialised)
//!                                         ─▶ PV pvc-<uid> (nfs, pre-bound, finalizer)
//!   flat and nested classes side by side ▶ ProvisioningFailed, unless
//!                                         --nfs-allow-mixed-layouts
//!   directory of another claim/namespace ▶ ProvisioningFailed naming it (owner marker)
//!   claim's namespace not in the index ─▶ wait for the Namespace watch (up to 5 s), then
//!                                         provision without checking its uid
//!   directory of a deleted namespace of ▶ ProvisioningFailed naming both uids, unless the
//!   the same name (marker's uid)          class has adoptFromRecreatedNamespace: "true"
//!   PV of ours, Delete, Released ───────▶ another PV at, inside or above its directory:
//!                                         keep it; a directory not its claim's: keep it,
//!                                         Warning; otherwise NfsCluster::delete per
//!                                         stowage.io/nfs-on-delete
//!                                         ─▶ delete the PV, remove our finalizer
//!   PV of ours, Retain ─────────────────▶ drop our finalizer; the directory stays
//!   every 30 s and after a provision ───▶ tally PVs, statvfs each mount (timeout),
//!                                         refresh the ring, update stowage_nfs_* gauges
//! ```
//!
//! The selected node of a WaitForFirstConsumer claim is ignored for placement: an NFS
//! export is reachable from every node. Placements are serialised, and each is counted at
//! once ([`NfsCluster::note_provisioned`]), so a burst of claims is spread by bounded loads
//! rather than all sent to the server that looked emptiest at the last refresh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use parking_lot::RwLock;
use prometheus::Registry;
use tokio::sync::Notify;

use super::error::{Error, Result, is_status};
use super::events::{EventType, Recorder};
use super::metrics::Outcome;
use super::nfs_metrics::NfsMetrics;
use super::steps::{
    claim_key, claim_ref, names_provisioner, record_delete_failed, record_pv_created,
    record_pv_failed, remove_finalizer, set_resizing,
};
use super::volume::{
    self, Unsupported, pre_bound_to, pv_annotations, pv_capacity, pv_claim_key, pv_finalizers,
    quantity, reclaim_policy,
};
use super::{Context, Next, RESYNC, USER_ERROR_RETRY, error_chain};
use crate::api::local_volume::OnDelete;
use crate::api::{names, reasons};
use crate::cache::{ClusterIndex, watch::Readiness};
use crate::crash;
use crate::ledger::Bytes;
use crate::nfs::{
    Allocation, ClaimName, ClaimUid, Layout, NamespaceUid, NfsClassParams, NfsCluster, NfsConfig,
    NfsError, NfsServerState, Overlap, ServerDir, UsedDir, capacity, overlap,
};

/// How often server capacity is measured and the ring rebuilt.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How long one server's statvfs may take before it counts as unreachable (a hung NFS
/// mount blocks in the kernel; the blocking thread is left behind, the loop goes on).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a claim waits for its namespace to be in the index (the Namespace watch may be
/// behind the claim's) before it is provisioned without its namespace's uid: markers then
/// neither check nor record it, as before the uid was recorded.
pub const NAMESPACE_WAIT: Duration = Duration::from_secs(5);
/// How soon a claim waiting for its namespace looks again.
const NAMESPACE_RETRY: Duration = Duration::from_millis(200);

/// Access modes an NFS volume supports: every one, since every node can mount it.
pub const NFS_ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// The NFS side of the controller: the servers, the ring, and its metrics.
pub struct Nfs {
    cluster: RwLock<Arc<NfsCluster>>,
    metrics: NfsMetrics,
    recorder: Recorder,
    /// Serialises placements, so each sees the previous one's allocation.
    placing: tokio::sync::Mutex<()>,
    refresh_now: Notify,
}

impl std::fmt::Debug for Nfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nfs")
            .field("provisioner", &self.provisioner())
            .finish_non_exhaustive()
    }
}

impl Nfs {
    /// The NFS side over `config` (already checked, mounts included), with its metrics on
    /// `registry` (exported while `leader` is true, as the ledger's) and Events reported as
    /// the NFS provisioner name from `instance`.
    pub fn new(
        config: NfsConfig,
        client: kube::Client,
        instance: impl Into<String>,
        registry: &Registry,
        leader: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let recorder = Recorder::new(client, config.provisioner_name.clone(), instance);
        let cluster = NfsCluster::new(config)?;
        let metrics = NfsMetrics::register_leader_only(registry, leader)?;
        metrics.update(cluster.states());
        Ok(Self {
            cluster: RwLock::new(Arc::new(cluster)),
            metrics,
            recorder,
            placing: tokio::sync::Mutex::new(()),
            refresh_now: Notify::new(),
        })
    }

    /// The recorder of NFS mode's Events (they name the NFS provisioner).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The provisioner name of NFS classes.
    pub fn provisioner(&self) -> String {
        self.snapshot().config().provisioner_name.clone()
    }

    /// The current cluster (servers, states, ring).
    pub fn snapshot(&self) -> Arc<NfsCluster> {
        self.cluster.read().clone()
    }

    fn update(&self, f: impl FnOnce(&mut NfsCluster) -> std::result::Result<(), NfsError>) {
        let mut guard = self.cluster.write();
        let cluster = Arc::make_mut(&mut guard);
        if let Err(error) = f(cluster) {
            tracing::error!(error = %error_chain(&error), "cannot rebuild the NFS ring; keeping the previous one");
        }
        self.metrics.update(cluster.states());
    }

    /// Measures every server now (statvfs of each mount with [`PROBE_TIMEOUT`], then PV
    /// sums from the index) and rebuilds the ring if the weights changed.
    ///
    /// The PVs are read from the index (which the watch keeps, and every placement's
    /// created PV is written into at once) and the allocations replaced under the placement
    /// lock, and a placement holds that lock until its PV is in the index, so a refresh
    /// never forgets a volume just placed (which would let the next placements overfill its
    /// server). No list of every PV in the cluster, at any size.
    pub async fn refresh(&self, index: &RwLock<ClusterIndex>) -> Result<()> {
        let cluster = self.snapshot();
        let servers = &cluster.config().servers;
        let mut states: Vec<NfsServerState> = Vec::with_capacity(servers.len());
        for spec in servers {
            let none = Allocation::default();
            let probe = {
                let spec = spec.clone();
                tokio::task::spawn_blocking(move || capacity::probe(&spec, none))
            };
            let state = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(state)) => state,
                Ok(Err(join)) => NfsServerState::unreachable(
                    spec,
                    none,
                    format!("statvfs of the mount failed: {join}"),
                ),
                Err(_) => NfsServerState::unreachable(
                    spec,
                    none,
                    format!(
                        "statvfs of the mount {} did not answer within {}s; is the server up?",
                        spec.mount.display(),
                        PROBE_TIMEOUT.as_secs()
                    ),
                ),
            };
            states.push(state);
        }

        let _placing = self.placing.lock().await;
        let provisioner = cluster.config().provisioner_name.as_str();
        let ours = index.read().persistent_volumes_of(provisioner);
        let ours: Vec<(String, String, Bytes)> = ours
            .iter()
            .filter_map(|pv| {
                let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
                Some((
                    nfs.server.clone(),
                    nfs.path.clone(),
                    pv_capacity(pv).unwrap_or(Bytes::ZERO),
                ))
            })
            .collect();
        let (allocations, strays) = capacity::tally(
            servers,
            ours.iter().map(|(a, p, s)| (a.as_str(), p.as_str(), *s)),
        );
        for stray in &strays {
            tracing::warn!(error = %stray, "NFS PersistentVolume of no configured server");
        }
        for (state, allocation) in states.iter_mut().zip(allocations) {
            state.allocated = allocation.bytes;
            state.volumes = allocation.volumes;
        }
        self.update(move |c| c.refresh(states).map(|_| ()));
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] and whenever a provision asks for it, forever,
    /// from the first time every kind of the index has been listed (`ready`): before that
    /// the index would count no volumes at all.
    pub async fn refresh_loop(self: Arc<Self>, index: Arc<RwLock<ClusterIndex>>, ready: Readiness) {
        ready.wait().await;
        loop {
            if let Err(error) = self.refresh(&index).await {
                tracing::warn!(error = %error_chain(&error), "cannot refresh NFS server capacity");
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = self.refresh_now.notified() => {}
            }
        }
    }
}

fn provisioned_by(pv: &PersistentVolume) -> Option<&str> {
    pv.metadata
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_PROVISIONED_BY)
        .map(String::as_str)
}

/// Validates what `claim` asks of an NFS volume: a filesystem of some size, no data
/// source, no selector, at least one access mode (all four are supported).
pub fn request(claim: &PersistentVolumeClaim) -> std::result::Result<Bytes, Unsupported> {
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(Unsupported(
            "volumeMode Block is not supported: an NFS volume is a directory; use volumeMode \
             Filesystem"
                .to_string(),
        ));
    }
    if let Some((kind, name)) = spec
        .data_source_ref
        .as_ref()
        .map(|r| (&r.kind, &r.name))
        .or(spec.data_source.as_ref().map(|r| (&r.kind, &r.name)))
    {
        return Err(Unsupported(format!(
            "a data source ({kind} {name}) is not supported: stowage cannot clone or restore \
             into an NFS volume; remove dataSource/dataSourceRef"
        )));
    }
    if spec.selector.is_some() {
        return Err(Unsupported(
            "a claim selector is not supported for dynamically provisioned volumes; remove \
             spec.selector"
                .to_string(),
        ));
    }
    let modes = spec.access_modes.unwrap_or_default();
    if modes.is_empty() {
        return Err(Unsupported(
            "the claim has no access mode; use ReadWriteMany, ReadWriteOnce, ReadOnlyMany or \
             ReadWriteOncePod"
                .to_string(),
        ));
    }
    if let Some(mode) = modes
        .iter()
        .find(|m| !NFS_ACCESS_MODES.contains(&m.as_str()))
    {
        return Err(Unsupported(format!(
            "access mode {mode} is unknown; use ReadWriteMany, ReadWriteOnce, ReadOnlyMany or \
             ReadWriteOncePod"
        )));
    }
    volume::requested_size(claim)
}

/// The annotation value recording `on_delete`.
pub fn on_delete_value(on_delete: OnDelete) -> &'static str {
    match on_delete {
        OnDelete::Delete => "delete",
        OnDelete::Archive => "archive",
        OnDelete::Retain => "retain",
    }
}

/// The delete mode recorded on a PV; `None` if missing or unreadable.
pub fn recorded_on_delete(pv: &PersistentVolume) -> Option<OnDelete> {
    match pv
        .metadata
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_NFS_ON_DELETE)?
        .as_str()
    {
        "delete" => Some(OnDelete::Delete),
        "archive" => Some(OnDelete::Archive),
        "retain" => Some(OnDelete::Retain),
        _ => None,
    }
}

/// PURE: the PersistentVolume `pvc-<uid>` for `claim`, whose directory is `placement`.
///
/// Pre-bound to the claim (`claimRef` with uid); `provisioned-by` names `provisioner`; the
/// delete mode and the server are recorded as annotations; with reclaim policy Delete it
/// carries our finalizer so the PV object outlives the cleanup of its directory. No node
/// affinity: every node can mount an NFS export.
pub fn persistent_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    placement: &ServerDir,
    size: Bytes,
    on_delete: OnDelete,
    provisioner: &str,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let policy = reclaim_policy(class).to_string();
    let finalizers = pv_finalizers(&policy);
    let mut annotations = pv_annotations(provisioner);
    annotations.extend([
        (
            names::ANNOTATION_NFS_ON_DELETE.to_string(),
            on_delete_value(on_delete).to_string(),
        ),
        (
            names::ANNOTATION_NFS_SERVER.to_string(),
            placement.server_name.to_string(),
        ),
    ]);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume::volume_name(&uid)),
            annotations: Some(annotations),
            finalizers,
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), quantity(size))])),
            access_modes: spec.access_modes,
            volume_mode: Some("Filesystem".to_string()),
            persistent_volume_reclaim_policy: Some(policy),
            mount_options: class.mount_options.clone(),
            storage_class_name: spec.storage_class_name,
            nfs: Some(NFSVolumeSource {
                server: placement.address.clone(),
                path: placement.export_path.clone(),
                read_only: None,
            }),
            claim_ref: Some(pre_bound_to(claim)),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// PURE: why a claim of class `class` (of `layout`) may not be provisioned while another
/// class of the NFS provisioner `provisioner` among `classes` uses the other layout, naming
/// the first such class (by name) and the fix; `None` if every NFS class uses `layout`.
///
/// Every NFS class places onto the same servers, where a flat `<namespace>-<claim>` can be
/// a nested namespace's directory (claim `db` of namespace `team`, namespace `team-db`).
/// Classes whose parameters do not parse are passed over: they provision nothing.
pub fn mixed_layouts<'a>(
    class: &str,
    layout: Layout,
    provisioner: &str,
    classes: impl IntoIterator<Item = &'a StorageClass>,
) -> Option<String> {
    let (other, other_layout) = classes
        .into_iter()
        .filter(|c| c.provisioner == provisioner)
        .filter_map(|c| {
            let name = c.name_any();
            let params = NfsClassParams::parse(&name, c.parameters.as_ref()).ok()?;
            (params.layout != layout).then_some((name, params.layout))
        })
        .min_by(|a, b| a.0.cmp(&b.0))?;
    Some(format!(
        "StorageClass {class} uses the {layout} NFS layout but StorageClass {other} uses the \
         {other_layout} layout on the same NFS servers: a flat directory <namespace>-<claim> \
         can be the directory of a nested namespace (claim db of namespace team and namespace \
         team-db both use team-db), so the two layouts could take or delete each other's data; \
         use one layout for every {provisioner} class, or, if no namespace name can collide \
         that way, start the controller with --nfs-allow-mixed-layouts (directories whose \
         ownership marker names another claim or a namespace are refused either way); nothing \
         was provisioned"
    ))
}

fn pv_claim_uid(pv: &PersistentVolume) -> Option<&str> {
    pv.spec.as_ref()?.claim_ref.as_ref()?.uid.as_deref()
}

/// Reconciles one claim of an NFS class.
pub async fn reconcile_claim(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: &Context,
    nfs: &Nfs,
) -> Result<Next> {
    let provisioner = nfs.provisioner();
    let bound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    if bound {
        return expand_claim(claim, class, ctx, nfs).await;
    }
    if claim.metadata.deletion_timestamp.is_some() || !names_provisioner(claim, &provisioner) {
        return Ok(Next::await_change());
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let name = volume::volume_name(&uid);
    let key = claim_key(claim);
    let object = claim_ref(claim);
    ctx.seen_with_node(&uid);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if let Some(pv) =
        pvs.get_opt(&name)
            .await
            .map_err(Error::api("get", "PersistentVolume", &name))?
    {
        return adopt(&pv, claim, &name, nfs).await;
    }
    let refuse = |message: String| async move {
        ctx.metrics.provision(Outcome::Failed);
        tracing::info!(claim = %key, %message, "NFS claim refused");
        nfs.recorder
            .record(
                &object,
                EventType::Warning,
                reasons::PROVISIONING_FAILED,
                &message,
            )
            .await;
        Ok(Next::requeue(USER_ERROR_RETRY))
    };
    let size = match request(claim) {
        Ok(size) => size,
        Err(Unsupported(message)) => return refuse(message).await,
    };
    let class_name = class.name_any();
    let params = match NfsClassParams::parse(&class_name, class.parameters.as_ref()) {
        Ok(p) => p,
        Err(e) => return refuse(e.to_string()).await,
    };
    let claim_name = match ClaimName::new(&claim.namespace().unwrap_or_default(), &claim.name_any())
    {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()).await,
    };
    let claim_uid = match ClaimUid::parse(&uid) {
        Ok(u) => u,
        Err(e) => return refuse(e.to_string()).await,
    };
    // The namespace's uid, so that a directory of a deleted namespace of the same name is
    // not handed to this claim (`crate::nfs::owner`). A claim's namespace exists, so one
    // missing from the index (or still shown as being deleted) means the watch is behind:
    // wait a little for it, and then go on without the check rather than block the claim.
    let namespace_uid = {
        let index = ctx.index.read();
        index.namespace_uid(claim_name.namespace())
    };
    let namespace_uid = match namespace_uid {
        Some(ns_uid) => match NamespaceUid::parse(&ns_uid) {
            Ok(u) => Some(u),
            Err(e) => return refuse(e.to_string()).await,
        },
        None if ctx.waiting_for(&uid) < NAMESPACE_WAIT => {
            tracing::debug!(claim = %claim_name, "namespace not in the index yet; waiting for it");
            return Ok(Next::requeue(NAMESPACE_RETRY));
        }
        None => {
            tracing::info!(
                claim = %claim_name,
                waited_s = NAMESPACE_WAIT.as_secs(),
                "namespace uid not known; provisioning without checking the NFS directory's namespace uid"
            );
            None
        }
    };
    if !nfs.snapshot().config().allow_mixed_layouts {
        let conflict = {
            let index = ctx.index.read();
            mixed_layouts(
                &class_name,
                params.layout,
                &provisioner,
                index.storage_classes(),
            )
        };
        if let Some(message) = conflict {
            return refuse(message).await;
        }
    }

    let placing = nfs.placing.lock().await;
    let cluster = nfs.snapshot();
    let used = {
        let index = ctx.index.read();
        used_dirs(&index.persistent_volumes_of(&provisioner))
    };
    let placed = {
        let claim_name = claim_name.clone();
        tokio::task::spawn_blocking(move || {
            cluster.provision(
                &claim_name,
                &claim_uid,
                namespace_uid.as_ref(),
                size,
                &params,
                &used,
            )
        })
        .await
    };
    let placement = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(source)) => {
            drop(placing);
            let error = Error::Nfs {
                object: claim_key(claim),
                source: Box::new(source),
            };
            record_pv_failed(ctx, &nfs.recorder, claim, &error).await;
            return Err(error);
        }
        Err(join) => {
            drop(placing);
            tracing::error!(claim = %claim_key(claim), error = %join, "NFS placement task failed");
            return Ok(Next::requeue(super::FIRST_RETRY));
        }
    };
    nfs.update(|c| {
        c.note_provisioned(placement.server, size);
        Ok(())
    });
    tracing::info!(
        claim = %claim_key(claim),
        server = %placement.server_name,
        dir = %placement.dir.display(),
        reused = placement.reused,
        skipped = ?placement.skipped,
        "NFS directory ready"
    );
    nfs.recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::PROVISIONING,
            &format!(
                "External provisioner is provisioning volume for claim \"{}\": {size} on NFS server {} ({}:{}){}",
                claim_key(claim),
                placement.server_name,
                placement.address,
                placement.export_path,
                if placement.reused {
                    ", reusing the directory already there"
                } else {
                    ""
                }
            ),
        )
        .await;

    crash::hit(crash::CONTROLLER_NFS_DIR_MADE);
    let pv = persistent_volume(
        claim,
        class,
        &placement,
        size,
        params.on_delete,
        &provisioner,
    );
    let pp = PostParams {
        field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
        ..PostParams::default()
    };
    // The PV is in the index before the lock goes, so the next placement, a refresh and a
    // release's in-use check all count it without waiting for the watch. `true`: made now;
    // `false`: it was there already (an earlier attempt's), to adopt.
    let outcome = match pvs.create(&pp, &pv).await {
        Ok(created) => Ok((created, true)),
        Err(e) if is_status(&e, 409) => pvs
            .get(&name)
            .await
            .map(|existing| (existing, false))
            .map_err(|e| (Error::api("get", "PersistentVolume", &name)(e), false)),
        Err(e) => Err((Error::api("create", "PersistentVolume", &name)(e), true)),
    };
    if let Ok((pv, _)) = &outcome {
        ctx.index.write().note_persistent_volume(pv.clone());
    }
    drop(placing);
    nfs.refresh_now.notify_one();
    match outcome {
        Ok((_, true)) => {}
        Ok((existing, false)) => return adopt(&existing, claim, &name, nfs).await,
        Err((error, record)) => {
            if record {
                record_pv_failed(ctx, &nfs.recorder, claim, &error).await;
            }
            return Err(error);
        }
    }
    let placed = format!(
        "on NFS server {} ({}:{})",
        placement.server_name, placement.address, placement.export_path
    );
    record_pv_created(ctx, &nfs.recorder, claim, &name, &placed).await;
    Ok(Next::requeue(RESYNC))
}

/// What to do about the size of a bound NFS claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrowPlan {
    /// Nothing asked.
    Nothing,
    /// Raise the PV's capacity to `to` (`extra` more), then the claim's.
    Grow {
        /// The new size.
        to: Bytes,
        /// Bytes added.
        extra: Bytes,
    },
    /// The PV was raised; the claim's status still shows less.
    Finish {
        /// The PV's capacity.
        size: Bytes,
    },
    /// The server's export has less free space than the growth adds.
    NoRoom {
        /// Bytes the growth adds.
        extra: Bytes,
        /// Free space on the export.
        available: Bytes,
    },
    /// The server's free space is not known (unreachable, or not measured yet).
    Unmeasured,
}

/// PURE: the next growth step of a bound NFS claim. An NFS subdirectory has no quota, so
/// growing only raises the size on record (PV capacity, claim status capacity and the
/// server's allocation); it is refused only when the export's real free space
/// (`available`, `None` when unknown) cannot hold the extra bytes, as a placement would be.
pub fn grow_plan(
    requested: Bytes,
    pv_capacity: Bytes,
    claim_capacity: Option<Bytes>,
    available: Option<Bytes>,
) -> GrowPlan {
    if requested <= pv_capacity {
        return match claim_capacity {
            Some(c) if c < pv_capacity => GrowPlan::Finish { size: pv_capacity },
            _ => GrowPlan::Nothing,
        };
    }
    let extra = requested.saturating_sub(pv_capacity);
    match available {
        None => GrowPlan::Unmeasured,
        Some(available) if available < extra => GrowPlan::NoRoom { extra, available },
        Some(_) => GrowPlan::Grow {
            to: requested,
            extra,
        },
    }
}

/// Growth of a bound claim of an NFS class whose class allows expansion: the PV's capacity
/// and then the claim's `status.capacity` are raised (no quota to change on the server),
/// and the server's allocation counts the extra bytes.
async fn expand_claim(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: &Context,
    nfs: &Nfs,
) -> Result<Next> {
    if class.allow_volume_expansion != Some(true) || claim.metadata.deletion_timestamp.is_some() {
        return Ok(Next::requeue(RESYNC));
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let name = volume::volume_name(&uid);
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound_to != Some(name.as_str()) || !bound {
        return Ok(Next::requeue(RESYNC));
    }
    let Ok(requested) = volume::requested_size(claim) else {
        return Ok(Next::requeue(RESYNC));
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) =
        pvs.get_opt(&name)
            .await
            .map_err(Error::api("get", "PersistentVolume", &name))?
    else {
        return Ok(Next::requeue(RESYNC));
    };
    if provisioned_by(&pv) != Some(nfs.provisioner().as_str()) {
        return Ok(Next::requeue(RESYNC));
    }
    let Some(source) = pv.spec.as_ref().and_then(|s| s.nfs.clone()) else {
        return Ok(Next::requeue(RESYNC));
    };
    let claim_capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| q.0.parse().ok());
    // Under the placement lock: a refresh cannot recount the PVs between our PV write and
    // our note of the extra bytes, and a placement sees them.
    let placing = nfs.placing.lock().await;
    let cluster = nfs.snapshot();
    let server = crate::nfs::place::locate(&cluster.config().servers, &source.server, &source.path)
        .ok()
        .map(|l| l.server);
    let state = server.and_then(|i| cluster.states().get(i));
    let plan = grow_plan(
        requested,
        pv_capacity(&pv).unwrap_or_default(),
        claim_capacity,
        state.and_then(|s| s.available),
    );
    tracing::debug!(volume = %name, ?plan, "NFS expansion plan");
    let server_name = state.map_or_else(|| source.server.clone(), |s| s.server.to_string());
    match plan {
        GrowPlan::Nothing => Ok(Next::requeue(RESYNC)),
        GrowPlan::Unmeasured => {
            tracing::info!(volume = %name, server = %server_name, "free space of the NFS server unknown; growth waits for the next capacity refresh");
            nfs.refresh_now.notify_one();
            Ok(Next::requeue(REFRESH_EVERY))
        }
        GrowPlan::NoRoom { extra, available } => {
            drop(placing);
            ctx.metrics.expansion(Outcome::Infeasible);
            let text = format!(
                "cannot grow volume {name} to {requested}: NFS server {server_name} has {available} \
                 free on its export and the growth adds {extra}; free space on the export, or \
                 ask for less; nothing was changed"
            );
            tracing::info!(volume = %name, server = %server_name, requested = requested.0, "NFS expansion does not fit");
            nfs.recorder
                .record(
                    &claim_ref(claim),
                    EventType::Warning,
                    reasons::VOLUME_RESIZE_FAILED,
                    &text,
                )
                .await;
            Ok(Next::requeue(USER_ERROR_RETRY))
        }
        GrowPlan::Grow { to, extra } => {
            // Conditional on the version read: a concurrent change is a 409 and a retry.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": pv.resource_version()},
                "spec": {"capacity": {"storage": quantity(to)}},
            });
            let pp = kube::api::PatchParams {
                field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
                ..kube::api::PatchParams::default()
            };
            let grown = pvs
                .patch(&name, &pp, &kube::api::Patch::Merge(&patch))
                .await
                .map_err(Error::api("patch", "PersistentVolume", &name))?;
            ctx.index.write().note_persistent_volume(grown);
            if let Some(server) = server {
                nfs.update(|c| {
                    c.note_grown(server, extra);
                    Ok(())
                });
            }
            drop(placing);
            nfs.refresh_now.notify_one();
            tracing::info!(volume = %name, server = %server_name, from = pv_capacity(&pv).unwrap_or_default().0, to = to.0, "NFS persistent volume grown");
            finish_growth(claim, &name, to, ctx, nfs).await
        }
        GrowPlan::Finish { size } => {
            drop(placing);
            finish_growth(claim, &name, size, ctx, nfs).await
        }
    }
}

/// Records the new size in the claim's status and reports the growth done.
async fn finish_growth(
    claim: &PersistentVolumeClaim,
    name: &str,
    size: Bytes,
    ctx: &Context,
    nfs: &Nfs,
) -> Result<Next> {
    set_resizing(claim, false, Some(size), ctx).await?;
    ctx.metrics.expansion(Outcome::Succeeded);
    nfs.recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::VOLUME_RESIZE_SUCCESSFUL,
            &format!(
                "resize volume {name} to {size} succeeded (an NFS directory has no quota: the \
                 size is the one on record, the export's free space is shared)"
            ),
        )
        .await;
    Ok(Next::requeue(RESYNC))
}

/// A PV named after the claim exists: ours to wait for if it names the claim's uid.
async fn adopt(
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    name: &str,
    nfs: &Nfs,
) -> Result<Next> {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    if pv_claim_uid(pv) == Some(uid.as_str()) {
        return Ok(Next::requeue(RESYNC));
    }
    let error = Error::NotOurs {
        kind: "PersistentVolume",
        name: name.to_string(),
        uid,
    };
    nfs.recorder
        .record(
            &claim_ref(claim),
            EventType::Warning,
            reasons::PROVISIONING_FAILED,
            &error.to_string(),
        )
        .await;
    Err(error)
}

/// Reconciles one PersistentVolume of the NFS provisioner.
pub async fn reconcile_volume(pv: &PersistentVolume, ctx: &Context, nfs: &Nfs) -> Result<Next> {
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let policy = spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Retain");
    let finalizer = pv
        .finalizers()
        .iter()
        .any(|f| f == names::FINALIZER_PV_CLEANUP);
    let deleting = pv.metadata.deletion_timestamp.is_some();
    if policy != "Delete" {
        if finalizer {
            remove_finalizer(pv, ctx).await?;
        }
        return Ok(Next::requeue(RESYNC));
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let due = phase == Some("Released") || (deleting && phase != Some("Bound"));
    if !due || (deleting && !finalizer) {
        return Ok(Next::requeue(RESYNC));
    }
    let result = release(pv, ctx, nfs).await;
    if let Err(error) = &result {
        record_delete_failed(ctx, &nfs.recorder, pv, error).await;
    }
    result?;
    ctx.metrics.deletion(Outcome::Succeeded);
    tracing::info!(volume = %name, "NFS persistent volume deleted");
    Ok(Next::await_change())
}

/// Deals with the directory of a released PV, then deletes the PV and drops our finalizer.
async fn release(pv: &PersistentVolume, ctx: &Context, nfs: &Nfs) -> Result<()> {
    let name = pv.name_any();
    let provisioner = nfs.provisioner();
    let Some(source) = pv.spec.as_ref().and_then(|s| s.nfs.clone()) else {
        // Not an NFS volume after all (edited by hand?): nothing of ours to clean up.
        tracing::warn!(volume = %name, "PV provisioned by the NFS provisioner has no nfs source; deleting it without touching any directory");
        return delete_pv(pv, ctx).await;
    };
    let on_delete = recorded_on_delete(pv).unwrap_or_else(|| {
        tracing::warn!(
            volume = %name,
            annotation = names::ANNOTATION_NFS_ON_DELETE,
            "PV records no valid delete mode; keeping its directory"
        );
        OnDelete::Retain
    });
    // A claim re-created under the same name gets its old directory back; never remove a
    // directory another PV of ours still points at, or one that holds or lies inside
    // another PV's directory (`in_use_by`). The placement lock makes the check and the
    // removal atomic with respect to a placement (which holds it from the directory lookup
    // until its PV is in the index).
    let placing = nfs.placing.lock().await;
    let ours = ctx.index.read().persistent_volumes_of(&provisioner);
    let shared = in_use_by(pv, &ours, &provisioner);
    if let Some(other) = shared {
        let theirs = other
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .map(|n| n.path.clone())
            .unwrap_or_default();
        tracing::info!(
            volume = %name,
            other = %other.name_any(),
            path = %source.path,
            "directory is in use by another PV; keeping it"
        );
        // The same directory is a re-created claim's, as designed; one directory inside
        // the other is a collision (an older version's flat volume that is a nested
        // namespace's directory), which a person should look at.
        if overlap(&source.path, &theirs) != Overlap::Same {
            let text = format!(
                "PersistentVolume {name}: its directory {}:{} and the directory {theirs} of PersistentVolume {} (claim {}) lie one inside the other, so it was neither deleted nor archived; the PV is deleted and the directory left as it is; remove what is not the other volume's by hand once you have checked it",
                source.server,
                source.path,
                other.name_any(),
                pv_claim_key(other),
            );
            tracing::warn!(volume = %name, error = %text, "NFS directory overlaps another PV's; keeping it");
            nfs.recorder
                .record(
                    &pv.object_ref(&()),
                    EventType::Warning,
                    reasons::VOLUME_FAILED_DELETE,
                    &text,
                )
                .await;
        }
    } else if on_delete != OnDelete::Retain {
        let cluster = nfs.snapshot();
        let (server, path) = (source.server.clone(), source.path.clone());
        let claim = pv_claim(pv);
        let removed = tokio::task::spawn_blocking(move || {
            cluster.delete(&server, &path, claim.as_ref(), on_delete, SystemTime::now())
        })
        .await;
        match removed {
            Ok(Ok(done)) => tracing::info!(volume = %name, ?done, "NFS directory dealt with"),
            // Not this PV's claim's directory (an older version provisioned it across the
            // flat/nested collision): kept, like a directory another PV uses, and said so.
            Ok(Err(source)) if source.not_ours().is_some() => {
                let text = format!("PersistentVolume {name}: {}", error_chain(&source));
                tracing::warn!(volume = %name, reason = source.reason(), error = %text, "NFS directory is not the claim's; keeping it");
                nfs.recorder
                    .record(
                        &pv.object_ref(&()),
                        EventType::Warning,
                        reasons::VOLUME_FAILED_DELETE,
                        &text,
                    )
                    .await;
            }
            Ok(Err(source)) => {
                return Err(Error::Nfs {
                    object: format!("PersistentVolume {name}"),
                    source: Box::new(source),
                });
            }
            Err(join) => {
                tracing::error!(volume = %name, error = %join, "NFS delete task failed");
                return Err(Error::NotSynced(format!(
                    "the NFS delete of {name} did not finish"
                )));
            }
        }
    }
    crash::hit(crash::CONTROLLER_NFS_DIR_RELEASED);
    drop(placing);
    delete_pv(pv, ctx).await?;
    nfs.refresh_now.notify_one();
    Ok(())
}

/// PURE: another PV of `provisioner` among `pvs` that uses the directory of `pv` (same
/// `nfs.server`), so releasing `pv` must leave the directory alone:
///
/// - one at the same path that is live (not being deleted, not Released): a claim re-created
///   under the same name took the directory back. A Released one at the same path does not
///   count (it is the old claim's, and a Retain PV would otherwise keep it forever).
/// - one whose directory lies inside `pv`'s, or holds it, in any phase: another claim's data
///   is in there (a flat `<namespace>-<claim>` that is a nested namespace's directory, or
///   exports of one server that nest), and it is kept even when that PV is Released,
///   since a Retain PV's data is meant to stay.
pub fn in_use_by<'a>(
    pv: &PersistentVolume,
    pvs: &'a [PersistentVolume],
    provisioner: &str,
) -> Option<&'a PersistentVolume> {
    let source = pv.spec.as_ref()?.nfs.as_ref()?;
    pvs.iter().find(|other| {
        let Some(theirs) = other.spec.as_ref().and_then(|s| s.nfs.as_ref()) else {
            return false;
        };
        if other.metadata.uid == pv.metadata.uid
            || provisioned_by(other) != Some(provisioner)
            || theirs.server != source.server
        {
            return false;
        }
        match overlap(&source.path, &theirs.path) {
            Overlap::Same => {
                other.metadata.deletion_timestamp.is_none()
                    && other.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released")
            }
            Overlap::Inside | Overlap::Holds => true,
            Overlap::Apart => false,
        }
    })
}

/// The directories `pvs` use, for [`NfsCluster::provision`]'s overlap check. From the
/// index: a PV made a moment ago may not be there yet, which is why placements also check
/// ownership markers on disk.
fn used_dirs(pvs: &[PersistentVolume]) -> Vec<UsedDir> {
    pvs.iter()
        .filter_map(|pv| {
            let spec = pv.spec.as_ref()?;
            let nfs = spec.nfs.as_ref()?;
            let claim = spec.claim_ref.as_ref().and_then(|r| {
                Some(format!(
                    "{}/{}",
                    r.namespace.as_deref()?,
                    r.name.as_deref()?
                ))
            });
            Some(UsedDir {
                pv: pv.name_any(),
                claim,
                address: nfs.server.clone(),
                path: nfs.path.clone(),
            })
        })
        .collect()
}

/// The claim a PV was made for, from its `claimRef`; `None` if it names none that is valid.
fn pv_claim(pv: &PersistentVolume) -> Option<ClaimName> {
    let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
    ClaimName::new(r.namespace.as_deref()?, r.name.as_deref()?).ok()
}

async fn delete_pv(pv: &PersistentVolume, ctx: &Context) -> Result<()> {
    let name = pv.name_any();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if pv.metadata.deletion_timestamp.is_none() {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(Error::api("delete", "PersistentVolume", name)(e)),
        }
    }
    match api.get_opt(&name).await {
        Ok(Some(fresh)) if fresh.metadata.uid == pv.metadata.uid => {
            remove_finalizer(&fresh, ctx).await.map(|_| ())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Error::api("get", "PersistentVolume", name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use k8s_openapi::api::core::v1::VolumeResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::nfs::RelDir;

    fn claim(modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1G".into()))])),
                    ..Default::default()
                }),
                storage_class_name: Some("nfs".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn growth_raises_the_size_on_record_unless_the_export_lacks_the_room() {
        let g = Bytes::gib;
        let cases = [
            // requested, pv, claim status, export free → plan
            ((g(1), g(1), Some(g(1)), Some(g(9))), GrowPlan::Nothing),
            ((g(1), g(2), Some(g(2)), Some(g(9))), GrowPlan::Nothing),
            (
                (g(3), g(1), Some(g(1)), Some(g(9))),
                GrowPlan::Grow {
                    to: g(3),
                    extra: g(2),
                },
            ),
            (
                (g(3), g(1), Some(g(1)), Some(g(2))),
                GrowPlan::Grow {
                    to: g(3),
                    extra: g(2),
                },
            ),
            (
                (g(3), g(1), Some(g(1)), Some(g(1))),
                GrowPlan::NoRoom {
                    extra: g(2),
                    available: g(1),
                },
            ),
            ((g(3), g(1), Some(g(1)), None), GrowPlan::Unmeasured),
            // The PV was raised but the claim's status was not yet written.
            (
                (g(3), g(3), Some(g(1)), Some(g(0))),
                GrowPlan::Finish { size: g(3) },
            ),
            ((g(3), g(3), None, Some(g(0))), GrowPlan::Nothing),
        ];
        for ((requested, pv, claim, free), want) in cases {
            assert_eq!(
                grow_plan(requested, pv, claim, free),
                want,
                "requested {requested} pv {pv} claim {claim:?} free {free:?}"
            );
        }
    }

    /// A PV of the NFS provisioner at `address:path`, in `phase`.
    fn nfs_pv(uid: &str, address: &str, path: &str, phase: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(format!("pvc-{uid}")),
                uid: Some(uid.into()),
                annotations: Some(BTreeMap::from([(
                    names::ANNOTATION_PROVISIONED_BY.to_string(),
                    names::PROVISIONER_NFS.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: address.into(),
                    path: path.into(),
                    read_only: None,
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_directory_is_in_use_while_a_pv_is_at_inside_or_above_it_by_path_components() {
        let flat = nfs_pv("flat", "10.0.0.1", "/exports/a/team-db", "Released");
        let in_use =
            |other: PersistentVolume| in_use_by(&flat, &[other], names::PROVISIONER_NFS).is_some();
        // Inside: namespace team-db's claim x under the flat claim team/db's directory.
        assert!(in_use(nfs_pv(
            "x",
            "10.0.0.1",
            "/exports/a/team-db/x",
            "Bound"
        )));
        // Inside and Released (kept by Retain, or not yet cleaned up): still data inside.
        assert!(in_use(nfs_pv(
            "x",
            "10.0.0.1",
            "/exports/a/team-db/x",
            "Released"
        )));
        // Above: a volume whose directory holds this one.
        assert!(in_use(nfs_pv("up", "10.0.0.1", "/exports/a", "Bound")));
        // The same directory: a re-created claim's live PV, not a Released one.
        assert!(in_use(nfs_pv(
            "again",
            "10.0.0.1",
            "/exports/a/team-db",
            "Bound"
        )));
        assert!(!in_use(nfs_pv(
            "old",
            "10.0.0.1",
            "/exports/a/team-db",
            "Released"
        )));
        // Component-wise, not string prefixes; another server; the PV itself.
        assert!(!in_use(nfs_pv("t", "10.0.0.1", "/exports/a/team", "Bound")));
        assert!(!in_use(nfs_pv(
            "t",
            "10.0.0.1",
            "/exports/a/team-db-x",
            "Bound"
        )));
        assert!(!in_use(nfs_pv(
            "t",
            "10.0.0.1",
            "/exports/a/team-dbx/y",
            "Bound"
        )));
        assert!(!in_use(nfs_pv(
            "x",
            "10.0.0.2",
            "/exports/a/team-db/x",
            "Bound"
        )));
        assert!(!in_use(nfs_pv(
            "flat",
            "10.0.0.1",
            "/exports/a/team-db/x",
            "Bound"
        )));
    }

    fn nfs_class(name: &str, provisioner: &str, params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            provisioner: provisioner.into(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn flat_and_nested_classes_of_one_provisioner_conflict_naming_the_other_class() {
        let nfs = names::PROVISIONER_NFS;
        let classes = [
            nfs_class("nfs", nfs, &[]),
            nfs_class("nfs-archive", nfs, &[("archiveOnDelete", "true")]),
            nfs_class("zz-flat", nfs, &[("layout", "flat")]),
            nfs_class("b-flat", nfs, &[("layout", "flat")]),
            // Not ours, or not usable: no conflict from them.
            nfs_class("local", names::PROVISIONER_LOCAL, &[("layout", "flat")]),
            nfs_class("broken", nfs, &[("layout", "spiral")]),
        ];
        let message = mixed_layouts("nfs", Layout::Nested, nfs, &classes).unwrap();
        for part in [
            "StorageClass nfs uses the nested NFS layout but StorageClass b-flat uses the flat layout",
            "--nfs-allow-mixed-layouts",
            "team-db",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let message = mixed_layouts("b-flat", Layout::Flat, nfs, &classes).unwrap();
        assert!(
            message.contains("StorageClass nfs uses the nested"),
            "{message}"
        );
        // One layout everywhere: nothing to say.
        assert_eq!(
            mixed_layouts("nfs", Layout::Nested, nfs, &classes[..2]),
            None
        );
        assert_eq!(
            mixed_layouts("b-flat", Layout::Flat, nfs, &classes[2..]),
            None
        );
    }

    #[test]
    fn rwx_is_served_and_block_is_refused() {
        assert_eq!(
            request(&claim(&["ReadWriteMany"])).unwrap(),
            Bytes::mib(954)
        );
        assert!(request(&claim(&["Bogus"])).is_err());
        assert!(request(&claim(&[])).is_err());
        let mut block = claim(&["ReadWriteMany"]);
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(request(&block).unwrap_err().0.contains("Block"));
    }

    #[test]
    fn the_pv_records_server_mode_and_claim() {
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: names::PROVISIONER_NFS.into(),
            reclaim_policy: Some("Delete".into()),
            mount_options: Some(vec!["nfsvers=4.1".into()]),
            ..Default::default()
        };
        let placement = ServerDir {
            server: 1,
            server_name: crate::nfs::ServerName::parse("nfs-b").unwrap(),
            address: "10.0.0.12".into(),
            rel: RelDir::parse("shop/data").unwrap(),
            dir: "/mnt/b/shop/data".into(),
            export_path: "/exports/b/shop/data".into(),
            reused: false,
            skipped: vec![],
            unchecked: vec![],
        };
        let c = claim(&["ReadWriteMany"]);
        let pv = persistent_volume(
            &c,
            &class,
            &placement,
            Bytes::gib(1),
            OnDelete::Archive,
            names::PROVISIONER_NFS,
        );
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-1"));
        assert_eq!(recorded_on_delete(&pv), Some(OnDelete::Archive));
        let a = pv.metadata.annotations.clone().unwrap();
        assert_eq!(a[names::ANNOTATION_NFS_SERVER], "nfs-b");
        assert_eq!(a[names::ANNOTATION_PROVISIONED_BY], names::PROVISIONER_NFS);
        assert_eq!(
            pv.metadata.finalizers,
            Some(vec![names::FINALIZER_PV_CLEANUP.to_string()])
        );
        let spec = pv.spec.unwrap();
        let nfs = spec.nfs.unwrap();
        assert_eq!(
            (nfs.server.as_str(), nfs.path.as_str()),
            ("10.0.0.12", "/exports/b/shop/data")
        );
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteMany"]);
        assert_eq!(spec.mount_options.unwrap(), vec!["nfsvers=4.1"]);
        assert!(spec.node_affinity.is_none());
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("u-1"));
    }
}
