//! The end of a volume's life (DESIGN.md step 7), and the objects nobody else cleans up.
//!
//! ```text
//!   PV of ours, reclaim Delete, Released (or deleted while unbound)
//!     LocalVolume present ──▶ delete it (the agent deletes/archives/retains per onDelete)
//!     LocalVolume deleting ─▶ wait (its watch wakes us once the agent removed its finalizer)
//!     LocalVolume gone ─────▶ delete the PV, remove our finalizer
//!   PV of ours, reclaim Retain ──▶ LocalVolume onDelete := retain; drop our finalizer;
//!                                   the LocalVolume and data stay
//!   PV whose node has no Node object for longer than the grace ──▶ Warning Event + gauge
//!   LocalVolume without PV whose claim is gone (or re-created) ──▶ delete it,
//!                                   unless its onDelete is retain
//! ```
//!
//! Retain is sticky: a LocalVolume is made with `onDelete: retain` when its class is Retain,
//! and given it when an admin switches its PV to Retain later. Nothing here ever deletes a
//! LocalVolume that says retain, so the usual Retain routine (delete the claim, then the
//! PV) leaves the LocalVolume as the record of the data and of the space it holds. An admin
//! deletes it to forget the data (the agent leaves the directory on the node), or sets its
//! `spec.onDelete` to `delete` first to have the agent remove it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Resource, ResourceExt};

use super::backend::Backend;
use super::error::{Error, Result, is_status};
use super::events::EventType;
use super::metrics::Outcome;
use super::steps::{record_delete_failed, remove_finalizer};
use super::volume::{self, pv_node};
use super::{Context, Next, RESYNC};
use crate::api::local_volume::{ClaimRef, LocalVolume, OnDelete};
use crate::api::{names, reasons};
use crate::crash;

/// What to do with a PV of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing (in use, or Retain without our finalizer).
    Nothing,
    /// Ask the agent to deal with the data: delete the LocalVolume.
    DeleteVolume,
    /// The agent is still dealing with the data.
    WaitForVolume,
    /// The data is dealt with: delete the PV and remove our finalizer.
    DeletePv,
    /// Remove our finalizer only (Retain, or the PV is already being deleted).
    RemoveFinalizer,
    /// Deleted by hand while its claim is still bound to it: keep the data and say so.
    DeferWhileBound,
}

/// What [`plan`] reads about a PV.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// `persistentVolumeReclaimPolicy`.
    pub policy: &'a str,
    /// `status.phase`.
    pub phase: Option<&'a str>,
    /// Whether the PV has a deletion timestamp.
    pub deleting: bool,
    /// Whether the PV carries our finalizer.
    pub finalizer: bool,
    /// The LocalVolume: `None` gone, `Some(true)` being deleted, `Some(false)` present.
    pub volume: Option<bool>,
}

/// PURE: the next step for a PV of ours.
pub fn plan(v: View<'_>) -> Plan {
    if v.policy != "Delete" {
        return if v.finalizer {
            Plan::RemoveFinalizer
        } else {
            Plan::Nothing
        };
    }
    if v.deleting && v.phase == Some("Bound") && v.volume == Some(false) {
        return Plan::DeferWhileBound;
    }
    let due = v.phase == Some("Released") || (v.deleting && v.phase != Some("Bound"));
    if !due {
        return Plan::Nothing;
    }
    match (v.volume, v.deleting) {
        (Some(false), _) => Plan::DeleteVolume,
        (Some(true), _) => Plan::WaitForVolume,
        (None, false) => Plan::DeletePv,
        (None, true) if v.finalizer => Plan::RemoveFinalizer,
        (None, true) => Plan::Nothing,
    }
}

/// Reconciles one PersistentVolume.
pub async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Next> {
    let provisioned_by = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_PROVISIONED_BY));
    match provisioned_by.and_then(|p| Backend::of(p, &ctx)) {
        Some(Backend::Nfs(nfs)) => {
            return super::nfs_volumes::reconcile_volume(&pv, &ctx, &nfs).await;
        }
        Some(Backend::Local) => {}
        None => return Ok(Next::await_change()),
    }
    let name = pv.name_any();
    let lv = ctx.index.read().local_volume(&name);
    let node = pv_node(&pv)
        .map(str::to_string)
        .or_else(|| lv.as_ref().map(|l| l.spec.node_name.clone()));
    // A present node needs no second look: the deletion of a Node queues its PVs.
    let mut requeue = None;
    if let Some(node) = node {
        requeue = check_node(&pv, &node, &ctx).await?;
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let policy = spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Retain");
    if let Some(lv) = &lv
        && policy != "Delete"
        && lv.spec.on_delete != OnDelete::Retain
        && lv.metadata.deletion_timestamp.is_none()
    {
        retain_volume(lv, &ctx).await?;
    }
    let plan = plan(View {
        policy,
        phase: pv.status.as_ref().and_then(|s| s.phase.as_deref()),
        deleting: pv.metadata.deletion_timestamp.is_some(),
        finalizer: pv
            .finalizers()
            .iter()
            .any(|f| f == names::FINALIZER_PV_CLEANUP),
        volume: lv.as_ref().map(|l| l.metadata.deletion_timestamp.is_some()),
    });
    tracing::debug!(volume = %name, ?plan, "release plan");
    let result = execute(plan, &pv, &ctx).await;
    if let Err(error) = &result {
        record_delete_failed(&ctx, &ctx.recorder, &pv, error).await;
    }
    result?;
    if plan == Plan::DeletePv || plan == Plan::RemoveFinalizer {
        ctx.node_present(&name);
    }
    Ok(requeue.map_or_else(Next::await_change, Next::requeue))
}

async fn execute(plan: Plan, pv: &PersistentVolume, ctx: &Context) -> Result<()> {
    let name = pv.name_any();
    match plan {
        Plan::Nothing | Plan::WaitForVolume => Ok(()),
        Plan::DeferWhileBound => {
            // Someone ran `kubectl delete pv` on a volume in use. Nothing is deleted: the
            // pv-protection finalizer holds the PV while it is Bound, and the data goes only
            // once the claim is deleted and the PV Released. Without this Event the PV just
            // sits in Terminating with no word of why.
            let claim = volume::pv_claim_key(pv);
            tracing::info!(volume = %name, %claim, "PV deleted while its claim is bound; its data is kept until the claim is deleted");
            ctx.recorder
                .record(
                    &pv.object_ref(&()),
                    EventType::Normal,
                    reasons::VOLUME_DELETE_DEFERRED,
                    &format!(
                        "PersistentVolume {name} is being deleted while claim {claim} is still \
                         bound to it: it stays (kubernetes.io/pv-protection) and stowage keeps its \
                         data until the claim is deleted; then the data is deleted, as the \
                         reclaim policy Delete says"
                    ),
                )
                .await;
            Ok(())
        }
        Plan::DeleteVolume => {
            // The step that deletes data: the PV controller's `Released` is checked against
            // the claim itself first. It can be wrong: the PV controller calls a PV Released
            // when the claim it is pre-bound to is missing from its own cache, which is filled
            // only as its throttled worker reaches each claim.
            if let Some(claim) = claim_still_wants(pv, ctx).await? {
                tracing::warn!(volume = %name, claim, "PV is Released but its claim still exists and is not bound elsewhere; its data is kept");
                ctx.recorder
                    .record(
                        &pv.object_ref(&()),
                        EventType::Warning,
                        reasons::VOLUME_FAILED_DELETE,
                        &format!(
                            "the PV controller marked volume {name} Released, but its claim {claim} \
                             still exists with the same uid and is bound to no other volume: the data \
                             is kept. Delete the claim to release it, or set the PV's status.phase \
                             back to Available so that the claim binds"
                        ),
                    )
                    .await;
                return Ok(());
            }
            let api: Api<LocalVolume> = Api::all(ctx.client.clone());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    crash::hit(crash::CONTROLLER_RELEASE_VOLUME_DELETED);
                    tracing::info!(volume = %name, "local volume deleted; the agent cleans up its data");
                    Ok(())
                }
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(Error::api("delete", "LocalVolume", name)(e)),
            }
        }
        Plan::DeletePv => {
            // The index says the LocalVolume is gone; the PV is the last record of the
            // data, so ask the API server before deleting it.
            let lvs: Api<LocalVolume> = Api::all(ctx.client.clone());
            if lvs
                .get_opt(&name)
                .await
                .map_err(Error::api("get", "LocalVolume", &name))?
                .is_some()
            {
                return Err(Error::Stale {
                    kind: "LocalVolume",
                    name,
                });
            }
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pv.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => crash::hit(crash::CONTROLLER_RELEASE_PV_DELETED),
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => return Err(Error::api("delete", "PersistentVolume", name)(e)),
            }
            let fresh = match api.get_opt(&name).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    ctx.metrics.deletion(Outcome::Succeeded);
                    return Ok(());
                }
                Err(e) => return Err(Error::api("get", "PersistentVolume", name)(e)),
            };
            remove_finalizer(&fresh, ctx).await?;
            ctx.metrics.deletion(Outcome::Succeeded);
            tracing::info!(volume = %name, "persistent volume deleted");
            Ok(())
        }
        Plan::RemoveFinalizer => {
            // Not counted when another reconcile (or the DeletePv step) already removed it.
            let removed = remove_finalizer(pv, ctx).await?;
            let policy = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
            if removed && policy == Some("Delete") {
                ctx.metrics.deletion(Outcome::Succeeded);
            }
            Ok(())
        }
    }
}

/// Sets the LocalVolume's `onDelete` to retain: its PV is Retain (an admin switched it, or
/// it predates Retain classes getting `onDelete: retain`), so its data must outlive both
/// the PV and the LocalVolume.
async fn retain_volume(lv: &LocalVolume, ctx: &Context) -> Result<()> {
    let name = lv.name_any();
    let api: Api<LocalVolume> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({ "spec": { "onDelete": OnDelete::Retain } });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(volume = %name, was = ?lv.spec.on_delete, "the PV is Retain: its LocalVolume now retains the data when deleted");
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(Error::api("set onDelete: retain on", "LocalVolume", name)(
            e,
        )),
    }
}

/// The claim (`namespace/name`) `pv` was made for, if it still exists on the API server
/// with the uid of the PV's claim reference and is not bound to another volume: then the
/// PV is still that claim's, whatever its phase says.
async fn claim_still_wants(pv: &PersistentVolume, ctx: &Context) -> Result<Option<String>> {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(None);
    };
    let (Some(ns), Some(claim_name), Some(uid)) = (&r.namespace, &r.name, &r.uid) else {
        return Ok(None);
    };
    let key = format!("{ns}/{claim_name}");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let claim =
        api.get_opt(claim_name)
            .await
            .map_err(Error::api("get", "PersistentVolumeClaim", &key))?;
    let Some(claim) = claim else {
        return Ok(None);
    };
    let same = claim.metadata.uid.as_deref() == Some(uid.as_str());
    let bound_to = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let elsewhere = bound_to.is_some_and(|v| v != pv.name_any());
    let deleting = claim.metadata.deletion_timestamp.is_some();
    Ok((same && !elsewhere && !deleting).then_some(key))
}

/// Reports a PV whose node has no Node object for longer than the grace; returns when to
/// look again.
/// Reports `pv` if its node has had no Node object for longer than the grace; the delay
/// until it should be looked at again, `None` when the node is there.
async fn check_node(
    pv: &PersistentVolume,
    node: &str,
    ctx: &Context,
) -> Result<Option<std::time::Duration>> {
    let name = pv.name_any();
    if ctx.node_hostname(node).is_some() {
        ctx.node_present(&name);
        return Ok(None);
    }
    let (missing_for, first_report) = ctx.node_missing(&name, node);
    let grace = ctx.config.node_gone_grace;
    if first_report {
        let message = format!(
            "node {node} holding the data of volume {name} has had no Node object for {}s; \
             the volume cannot be used or cleaned up until the node returns. If it is gone \
             for good, delete the claim and this PV, and remove the LocalVolume {name}'s \
             finalizer {} by hand",
            missing_for.as_secs(),
            names::FINALIZER_AGENT_CLEANUP
        );
        tracing::error!(volume = %name, node, "node of volume is gone");
        ctx.recorder
            .record(
                &pv.object_ref(&()),
                EventType::Warning,
                reasons::NODE_GONE,
                &message,
            )
            .await;
    }
    Ok(Some(
        grace
            .saturating_sub(missing_for)
            .max(super::FIRST_RETRY)
            .min(RESYNC),
    ))
}

/// Reconciles one LocalVolume: deletes it when it has no PV and its claim is gone (or was
/// re-created with another uid, or is bound to another volume). This is the cleanup of a
/// provisioning the claim's deletion interrupted.
pub async fn reconcile_local_volume(lv: Arc<LocalVolume>, ctx: Arc<Context>) -> Result<Next> {
    if lv.metadata.deletion_timestamp.is_some() {
        return Ok(Next::await_change());
    }
    let name = lv.name_any();
    if lv.spec.on_delete == OnDelete::Retain {
        // Its class or its PV said Retain: the LocalVolume is the record of data an admin
        // chose to keep, and of the space it holds. Only an admin deletes it.
        tracing::debug!(volume = %name, "local volume retains its data; never collected");
        return Ok(Next::await_change());
    }
    let claim_ref = &lv.spec.claim;
    // The index answers the common case (the claim is there) without a request.
    let (pv, claim) = {
        let index = ctx.index.read();
        (
            index.persistent_volume(&name).is_some(),
            index.claim(&claim_ref.namespace, &claim_ref.name),
        )
    };
    if pv || wants(claim.as_ref(), claim_ref) {
        return Ok(Next::await_change());
    }
    // Deleting it deletes data: confirm with the API server what the index says.
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if pvs
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "PersistentVolume", &name))?
        .is_some()
    {
        return Ok(Next::await_change());
    }
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim_ref.namespace);
    let claim = claims.get_opt(&claim_ref.name).await.map_err(Error::api(
        "get",
        "PersistentVolumeClaim",
        format!("{}/{}", claim_ref.namespace, claim_ref.name),
    ))?;
    if wants(claim.as_ref(), claim_ref) {
        return Ok(Next::await_change());
    }
    let api: Api<LocalVolume> = Api::all(ctx.client.clone());
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: lv.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            tracing::info!(
                volume = %name,
                claim = %claim_ref.key(),
                "orphaned local volume deleted: its claim is gone and it has no PV"
            );
            Ok(Next::await_change())
        }
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(Next::await_change()),
        Err(e) => Err(Error::api("delete", "LocalVolume", name)(e)),
    }
}

/// Whether `claim` is the one the LocalVolume was made for and still wants it (same uid,
/// not bound to another volume).
fn wants(claim: Option<&PersistentVolumeClaim>, claim_ref: &ClaimRef) -> bool {
    claim.is_some_and(|c| {
        c.metadata.uid.as_deref() == Some(claim_ref.uid.as_str())
            && c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none_or(|v| v.is_empty() || v == volume::volume_name(&claim_ref.uid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        policy: &str,
        phase: Option<&'static str>,
        deleting: bool,
        volume: Option<bool>,
    ) -> View<'static> {
        View {
            policy: if policy == "Delete" {
                "Delete"
            } else {
                "Retain"
            },
            phase,
            deleting,
            finalizer: policy == "Delete",
            volume,
        }
    }

    #[test]
    fn release_steps_follow_policy_phase_and_volume() {
        let cases = [
            (
                view("Delete", Some("Bound"), false, Some(false)),
                Plan::Nothing,
            ),
            (
                view("Delete", Some("Available"), false, Some(false)),
                Plan::Nothing,
            ),
            (
                view("Delete", Some("Released"), false, Some(false)),
                Plan::DeleteVolume,
            ),
            (
                view("Delete", Some("Released"), false, Some(true)),
                Plan::WaitForVolume,
            ),
            (
                view("Delete", Some("Released"), false, None),
                Plan::DeletePv,
            ),
            (
                view("Delete", Some("Released"), true, None),
                Plan::RemoveFinalizer,
            ),
            (
                view("Delete", Some("Available"), true, Some(false)),
                Plan::DeleteVolume,
            ),
            (
                view("Delete", Some("Bound"), true, Some(false)),
                Plan::DeferWhileBound,
            ),
            (view("Delete", Some("Bound"), true, None), Plan::Nothing),
            (
                view("Retain", Some("Released"), false, Some(false)),
                Plan::Nothing,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(plan(v), want, "{v:?}");
        }
        let retain_with_finalizer = View {
            finalizer: true,
            ..view("Retain", Some("Released"), false, Some(false))
        };
        assert_eq!(plan(retain_with_finalizer), Plan::RemoveFinalizer);
    }
}
