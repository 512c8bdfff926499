//! Steps the local and the NFS flows share, so that neither imports the other: which
//! provisioner a claim names, references and keys for Events and logs, the records of a PV
//! made or not, the claim's resize status, and the PV finalizer's removal.
//!
//! ```text
//!   claim ──▶ expand, nfs_volumes        (dispatch by class)
//!   release ──▶ nfs_volumes              (dispatch by PV source)
//!   claim, expand, release, nfs_volumes ──▶ steps, volume, error, events, metrics
//! ```

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use super::error::{Error, Result, is_status};
use super::events::{EventType, Recorder};
use super::metrics::Outcome;
use super::volume::quantity;
use super::{Context, error_chain};
use crate::api::{names, reasons};

use crate::ledger::Bytes;

/// Whether this claim names `provisioner`: the GA annotation if present, else the beta
/// one (as sig-storage-lib-external-provisioner reads them).
pub fn names_provisioner(claim: &PersistentVolumeClaim, provisioner: &str) -> bool {
    provisioner_annotation(claim) == Some(provisioner)
}

/// The provisioner the claim's annotation names: the GA key if present, else the beta one
/// (as sig-storage-lib-external-provisioner reads them).
pub(crate) fn provisioner_annotation(claim: &PersistentVolumeClaim) -> Option<&str> {
    let a = claim.metadata.annotations.as_ref()?;
    a.get(names::ANNOTATION_STORAGE_PROVISIONER)
        .or_else(|| a.get(names::ANNOTATION_BETA_STORAGE_PROVISIONER))
        .map(String::as_str)
}

/// A reference to `claim` for Events.
pub fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    let mut r = claim.object_ref(&());
    r.resource_version = None;
    r
}

pub(crate) fn claim_key(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

/// The outcome of a PV create that succeeded, for local and NFS volumes alike:
/// `stowage_provisions_total{result="succeeded"}`, the provisioning latency, an info log and
/// a `ProvisioningSucceeded` Event on the claim from `recorder` (each provisioner reports
/// as its own name). `placed` says where, e.g. `on node n1 (2Gi in pool "default")`.
pub(crate) async fn record_pv_created(
    ctx: &Context,
    recorder: &Recorder,
    claim: &PersistentVolumeClaim,
    volume: &str,
    placed: &str,
) {
    ctx.metrics.provision(Outcome::Succeeded);
    if let Some(elapsed) = ctx.provisioned(claim.metadata.uid.as_deref().unwrap_or_default()) {
        ctx.metrics
            .provision_duration
            .observe(elapsed.as_secs_f64());
    }
    tracing::info!(claim = %claim_key(claim), volume, placed, "persistent volume created");
    recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::PROVISIONING_SUCCEEDED,
            &format!("Successfully provisioned volume {volume} {placed}"),
        )
        .await;
}

/// The outcome of a provisioning step that failed, for local and NFS volumes alike:
/// `stowage_provisions_total{result="failed"}`, a warning log and a `ProvisioningFailed`
/// Event on the claim from `recorder` carrying the error chain.
pub(crate) async fn record_pv_failed(
    ctx: &Context,
    recorder: &Recorder,
    claim: &PersistentVolumeClaim,
    error: &Error,
) {
    ctx.metrics.provision(Outcome::Failed);
    let message = error_chain(error);
    tracing::warn!(claim = %claim_key(claim), reason = error.reason(), error = %message, "provisioning failed");
    recorder
        .record(
            &claim_ref(claim),
            EventType::Warning,
            reasons::PROVISIONING_FAILED,
            &message,
        )
        .await;
}

/// The outcome of a release step that failed, for local and NFS volumes alike:
/// `stowage_deletions_total{result="failed"}` and a `VolumeFailedDelete` Event on the PV
/// from `recorder` carrying the error chain.
pub(crate) async fn record_delete_failed(
    ctx: &Context,
    recorder: &Recorder,
    pv: &PersistentVolume,
    error: &Error,
) {
    ctx.metrics.deletion(Outcome::Failed);
    recorder
        .record(
            &pv.object_ref(&()),
            EventType::Warning,
            reasons::VOLUME_FAILED_DELETE,
            &error_chain(error),
        )
        .await;
}

/// Sets (`resizing`) or clears the claim's `Resizing` condition, clears
/// `FileSystemResizePending`, and with `capacity` records the new size in
/// `status.capacity` (and `status.allocatedResources` where the cluster keeps it). A
/// read-modify-write with the claim's resourceVersion, so no one else's status is lost.
pub(crate) async fn set_resizing(
    claim: &PersistentVolumeClaim,
    resizing: bool,
    capacity: Option<Bytes>,
    ctx: &Context,
) -> Result<()> {
    let ns = claim.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", claim.name_any());
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut fresh = api.get(&claim.name_any()).await.map_err(Error::api(
        "get",
        "PersistentVolumeClaim",
        &key,
    ))?;
    let status = fresh.status.get_or_insert_with(Default::default);
    let mut conditions: Vec<PersistentVolumeClaimCondition> = status
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c.type_ != reasons::CONDITION_RESIZING
                && c.type_ != reasons::CONDITION_FS_RESIZE_PENDING
        })
        .collect();
    if resizing {
        conditions.push(PersistentVolumeClaimCondition {
            type_: reasons::CONDITION_RESIZING.to_string(),
            status: "True".to_string(),
            last_transition_time: Some(Time(Timestamp::now())),
            ..PersistentVolumeClaimCondition::default()
        });
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if let Some(size) = capacity {
        status
            .capacity
            .get_or_insert_with(Default::default)
            .insert("storage".to_string(), quantity(size));
        if let Some(allocated) = status.allocated_resources.as_mut() {
            allocated.insert("storage".to_string(), quantity(size));
        }
    }
    let written = api
        .replace_status(&claim.name_any(), &PostParams::default(), &fresh)
        .await
        .map_err(Error::api(
            "update status of",
            "PersistentVolumeClaim",
            &key,
        ))?;
    // Seen by the claim's next run even before the watch delivers it (see
    // `ClusterIndex::note_claim`).
    ctx.index.write().note_claim(written);
    Ok(())
}

/// Removes our finalizer from `pv`, and only it; `true` if this call removed it, `false` if
/// it was not there or the PV is gone.
///
/// A JSON patch tests the entry at its index before removing it, so it needs no
/// resourceVersion: kube-controller-manager updating the PV's phase meanwhile does not
/// conflict (a version-conditional merge patch did, on most deletions on a real cluster).
/// A finalizer list changed meanwhile fails the `test` (422); the PV is read again and the
/// patch retried with the entry's new index.
pub(crate) async fn remove_finalizer(pv: &PersistentVolume, ctx: &Context) -> Result<bool> {
    let name = pv.name_any();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut finalizers = pv.finalizers().to_vec();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(patch) = crate::api::remove_finalizer(&finalizers, names::FINALIZER_PV_CLEANUP)
        else {
            return Ok(false);
        };
        match api
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) if is_status(&e, 422) && attempt < 4 => {
                tracing::debug!(volume = %name, "finalizer list changed; reading the PV again");
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => finalizers = fresh.finalizers().to_vec(),
                    Ok(None) => return Ok(false),
                    Err(e) => return Err(Error::api("get", "PersistentVolume", &name)(e)),
                }
            }
            Err(e) => {
                return Err(Error::api(
                    "remove the finalizer of",
                    "PersistentVolume",
                    name,
                )(e));
            }
        }
    }
}
