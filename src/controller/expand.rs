//! Growth of a bound claim (DESIGN.md step 8), the way the CSI external-resizer reports it.
//!
//! ```text
//!   request > PV capacity, class allows expansion
//!     LocalVolume smaller ── ledger check of the extra bytes ─┬─ fits: raise spec.sizeBytes,
//!                                                             │        condition Resizing
//!                                                             └─ no:   VolumeResizeFailed,
//!                                                                      nothing changed
//!     agent reports status.sizeBytes ≥ request ──▶ PV capacity, claim status.capacity,
//!                                                  Resizing cleared, VolumeResizeSuccessful
//! ```
//!
//! A directory or subvolume needs no filesystem growth on the node, so the claim is done
//! once the agent has raised the limit: no `FileSystemResizePending` step.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::error::{Error, Result};
use super::events::EventType;
use super::metrics::Outcome;
use super::steps::{claim_ref, set_resizing};
use super::volume::{self, pv_capacity, quantity};
use super::{Context, Next, RESYNC, USER_ERROR_RETRY};
use crate::api::local_volume::{LocalVolume, LocalVolumePhase};
use crate::api::{names, reasons};
use crate::crash;
use crate::ledger::{Bytes, Demand, Unfit, check};

/// What to do about a bound claim's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing asked, or nothing we can do.
    Nothing,
    /// Raise the LocalVolume to `to` (`extra` more bytes than now).
    Grow {
        /// The new size.
        to: Bytes,
        /// Bytes added.
        extra: Bytes,
    },
    /// The LocalVolume was raised; the agent has not confirmed yet.
    WaitForAgent,
    /// The agent failed to grow the volume.
    AgentFailed(String),
    /// The agent confirmed `size`: update the PV and the claim's status.
    Finish {
        /// The size now in place.
        size: Bytes,
    },
}

/// PURE: the next growth step from the claim's request, the PV's capacity, the claim's
/// reported capacity and the LocalVolume.
pub fn plan(
    requested: Bytes,
    pv_capacity: Bytes,
    claim_capacity: Option<Bytes>,
    lv: &LocalVolume,
) -> Plan {
    if requested <= pv_capacity {
        // A growth whose PV is done but whose claim status was not written yet.
        return match claim_capacity {
            Some(c) if c < pv_capacity => Plan::Finish { size: pv_capacity },
            _ => Plan::Nothing,
        };
    }
    let spec = lv.spec.size();
    if spec < requested {
        return Plan::Grow {
            to: requested,
            extra: requested.saturating_sub(spec),
        };
    }
    let status = lv.status.clone().unwrap_or_default();
    let caught_up = match (status.observed_generation, lv.metadata.generation) {
        (Some(seen), Some(generation)) => seen >= generation,
        _ => true,
    };
    match status.size_bytes {
        Some(done) if caught_up && Bytes(done) >= requested => Plan::Finish { size: requested },
        _ if status.phase == LocalVolumePhase::Failed => Plan::AgentFailed(
            status
                .message
                .unwrap_or_else(|| "the agent gave no reason".to_string()),
        ),
        _ => Plan::WaitForAgent,
    }
}

/// Reconciles the size of a bound claim of ours.
pub async fn reconcile(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: &Context,
) -> Result<Next> {
    // Every "nothing to do" below waits for a change: an edit of the claim, and every
    // change of its PV or LocalVolume, queue the claim again.
    if class.allow_volume_expansion != Some(true) {
        return Ok(Next::await_change());
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let name = volume::volume_name(&uid);
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    if bound_to != Some(name.as_str()) {
        return Ok(Next::await_change());
    }
    let Ok(requested) = volume::requested_size(claim) else {
        return Ok(Next::await_change());
    };
    let (pv, lv) = {
        let index = ctx.index.read();
        (index.persistent_volume(&name), index.local_volume(&name))
    };
    let Some(pv) = pv else {
        return Ok(Next::await_change());
    };
    let provisioned_by = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_PROVISIONED_BY));
    if provisioned_by != Some(&ctx.config.provisioner) {
        return Ok(Next::await_change());
    }
    let Some(lv) = lv else {
        return Ok(Next::await_change());
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let claim_capacity = claim
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| q.0.parse().ok())
        .filter(|_| bound);
    let plan = plan(
        requested,
        pv_capacity(&pv).unwrap_or_default(),
        claim_capacity,
        &lv,
    );
    tracing::debug!(volume = %name, ?plan, "expansion plan");
    match plan {
        Plan::Nothing | Plan::WaitForAgent => Ok(Next::await_change()),
        Plan::AgentFailed(message) => {
            ctx.metrics.expansion(Outcome::Failed);
            let text = format!(
                "the stowage agent could not grow volume {name}: {message}; it keeps retrying"
            );
            ctx.recorder
                .record(
                    &claim_ref(claim),
                    EventType::Warning,
                    reasons::VOLUME_RESIZE_FAILED,
                    &text,
                )
                .await;
            Ok(Next::requeue(RESYNC))
        }
        Plan::Grow { to, extra } => grow(claim, &lv, to, extra, ctx).await,
        Plan::Finish { size } => finish(claim, &name, size, ctx).await,
    }
}

async fn grow(
    claim: &PersistentVolumeClaim,
    lv: &LocalVolume,
    to: Bytes,
    extra: Bytes,
    ctx: &Context,
) -> Result<Next> {
    let name = lv.name_any();
    let node = lv.spec.node_name.as_str();
    let lock = ctx.node_lock(node);
    let _guard = lock.lock().await;
    let verdict = {
        let index = ctx.index.read();
        match (
            index.node_state(node, Timestamp::now()),
            Demand::from_claims([(lv.spec.pool_name(), extra)]),
        ) {
            (Some(state), Ok(demand)) => check(&state, &demand, &ctx.config.fit),
            (None, _) => Err(Unfit::NoReport),
            (Some(_), Err(_)) => Err(Unfit::Pools(Vec::new())),
        }
    };
    if let Err(unfit) = verdict {
        ctx.metrics.expansion(Outcome::Infeasible);
        let text = format!(
            "cannot grow volume {name} from {} to {to} on node {node}: {unfit} ({extra} more \
             needed); nothing was changed",
            lv.spec.size()
        );
        tracing::info!(volume = %name, node, requested = to.0, "expansion does not fit");
        ctx.recorder
            .record(
                &claim_ref(claim),
                EventType::Warning,
                reasons::VOLUME_RESIZE_FAILED,
                &text,
            )
            .await;
        return Ok(Next::requeue(USER_ERROR_RETRY));
    }
    let api: Api<LocalVolume> = Api::all(ctx.client.clone());
    // Conditional on the version read: a concurrent change makes this a 409 and a retry.
    let patch = json!({
        "metadata": {"resourceVersion": lv.resource_version()},
        "spec": {"sizeBytes": to.0},
    });
    let pp = PatchParams {
        field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
        ..PatchParams::default()
    };
    let grown = api
        .patch(&name, &pp, &Patch::Merge(&patch))
        .await
        .map_err(Error::api("patch", "LocalVolume", &name))?;
    ctx.index.write().note_local_volume(grown);
    drop(_guard);
    crash::hit(crash::CONTROLLER_EXPAND_VOLUME_GROWN);
    tracing::info!(volume = %name, node, from = lv.spec.size_bytes, to = to.0, "local volume grown");
    set_resizing(claim, true, None, ctx).await?;
    ctx.recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::RESIZING,
            &format!("External resizer is resizing volume {name} to {to}"),
        )
        .await;
    Ok(Next::requeue(RESYNC))
}

async fn finish(
    claim: &PersistentVolumeClaim,
    name: &str,
    size: Bytes,
    ctx: &Context,
) -> Result<Next> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"capacity": {"storage": quantity(size)}}});
    let grown = pvs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::api("patch", "PersistentVolume", name))?;
    // The claim's status update below wakes the claim again; the index must already show
    // the PV's new capacity then, or that run would take the growth for unfinished.
    ctx.index.write().note_persistent_volume(grown);
    crash::hit(crash::CONTROLLER_EXPAND_PV_GROWN);
    set_resizing(claim, false, Some(size), ctx).await?;
    ctx.metrics.expansion(Outcome::Succeeded);
    tracing::info!(volume = %name, size = size.0, "expansion finished");
    ctx.recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::VOLUME_RESIZE_SUCCESSFUL,
            &format!("resize volume {name} to {size} succeeded"),
        )
        .await;
    Ok(Next::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::local_volume::{ClaimRef, LocalVolumeSpec, LocalVolumeStatus, OnDelete};

    fn lv(spec: u64, status: Option<u64>, phase: LocalVolumePhase) -> LocalVolume {
        let mut lv = LocalVolume::new(
            "pvc-1",
            LocalVolumeSpec {
                node_name: "n1".into(),
                pool: "default".into(),
                size_bytes: spec,
                claim: ClaimRef::default(),
                on_delete: OnDelete::Delete,
            },
        );
        lv.status = Some(LocalVolumeStatus {
            phase,
            size_bytes: status,
            message: Some("quota failed".into()),
            ..Default::default()
        });
        lv
    }

    #[test]
    fn growth_steps_follow_request_pv_and_agent() {
        use LocalVolumePhase::{Failed, Ready};
        let g = Bytes::gib;
        let cases = [
            // requested, pv, claim status, lv spec, lv status, phase → plan
            (
                (g(10), g(10), Some(g(10))),
                (10, Some(10), Ready),
                Plan::Nothing,
            ),
            (
                (g(20), g(10), Some(g(10))),
                (10, Some(10), Ready),
                Plan::Grow {
                    to: g(20),
                    extra: g(10),
                },
            ),
            (
                (g(20), g(10), Some(g(10))),
                (20, Some(10), Ready),
                Plan::WaitForAgent,
            ),
            (
                (g(20), g(10), Some(g(10))),
                (20, Some(10), Failed),
                Plan::AgentFailed("quota failed".into()),
            ),
            (
                (g(20), g(10), Some(g(10))),
                (20, Some(20), Ready),
                Plan::Finish { size: g(20) },
            ),
            (
                (g(20), g(20), Some(g(10))),
                (20, Some(20), Ready),
                Plan::Finish { size: g(20) },
            ),
            ((g(20), g(20), None), (20, Some(20), Ready), Plan::Nothing),
        ];
        for ((requested, pv, claim), (spec, status, phase), want) in cases {
            let got = plan(
                requested,
                pv,
                claim,
                &lv(g(spec).0, status.map(|s| g(s).0), phase),
            );
            assert_eq!(
                got, want,
                "requested {requested} pv {pv} lv {spec}/{status:?}"
            );
        }
    }

    #[test]
    fn a_status_for_an_older_generation_does_not_finish_growth() {
        let mut v = lv(
            Bytes::gib(20).0,
            Some(Bytes::gib(20).0),
            LocalVolumePhase::Ready,
        );
        v.metadata.generation = Some(2);
        v.status.as_mut().unwrap().observed_generation = Some(1);
        assert_eq!(
            plan(Bytes::gib(20), Bytes::gib(10), Some(Bytes::gib(10)), &v),
            Plan::WaitForAgent
        );
    }
}
