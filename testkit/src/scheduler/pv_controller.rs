//! The PV-controller emulation (kube-controller-manager's `persistentvolume` controller, the parts
//! stowage depends on): provisioner annotations, claim ↔ volume binding, Released and Lost.
//!
//! Each pass works on one consistent snapshot and makes every write conditional on the
//! snapshot's resourceVersion; a conflict just means the next pass tries again.

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeStatus,
};
use kube::{Api, Client, api::PostParams};

use super::{
    Snapshot,
    volumes::{
        BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, STORAGE_PROVISIONER,
        claim_class, dynamic_provisioner, is_wait_for_first_consumer, pv_bindable_to,
        selected_node, volume_name,
    },
};

fn set_annotation(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
    v: &str,
) {
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(k.to_string(), v.to_string());
}

/// One pass over the snapshot.
pub(super) async fn sync(client: &Client, snap: &Snapshot) {
    for claim in snap.claims.values() {
        if claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = sync_claim(client, snap, claim).await {
            tracing::debug!(error = %e, claim = ?claim.metadata.name, "pv controller: claim step failed");
        }
    }
    for pv in snap.pvs.values() {
        if let Err(e) = sync_volume(client, snap, pv).await {
            tracing::debug!(error = %e, pv = ?pv.metadata.name, "pv controller: volume step failed");
        }
    }
}

async fn sync_claim(
    client: &Client,
    snap: &Snapshot,
    claim: &PersistentVolumeClaim,
) -> Result<(), kube::Error> {
    let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    if let Some(volume) = volume_name(claim) {
        // Bound (or being bound): finish the claim's side, or notice the volume is gone.
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        match snap.pvs.get(volume) {
            None if phase == Some("Bound") => {
                let mut lost = claim.clone();
                lost.status.get_or_insert_with(Default::default).phase = Some("Lost".to_string());
                claims.replace_status(name, &pp, &lost).await?;
            }
            Some(pv) if phase != Some("Bound") && phase != Some("Lost") => {
                let mut claim = claim.clone();
                if claim
                    .metadata
                    .annotations
                    .as_ref()
                    .is_none_or(|a| !a.contains_key(BIND_COMPLETED))
                {
                    set_annotation(&mut claim.metadata, BIND_COMPLETED, "yes");
                    claim = claims.replace(name, &pp, &claim).await?;
                }
                set_claim_bound(&claims, claim, pv).await?;
            }
            _ => {}
        }
        return Ok(());
    }

    // Unbound: announce the provisioner when it is this class's turn.
    let class = claim_class(claim).and_then(|c| snap.classes.get(c));
    let provisioner = class.and_then(dynamic_provisioner);
    let due = !is_wait_for_first_consumer(class) || selected_node(claim).is_some();
    let mut claim = claim.clone();
    if let Some(provisioner) = provisioner
        && due
    {
        let annotations = claim.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(STORAGE_PROVISIONER).map(String::as_str) != Some(provisioner)
            || annotations
                .get(BETA_STORAGE_PROVISIONER)
                .map(String::as_str)
                != Some(provisioner)
        {
            set_annotation(&mut claim.metadata, STORAGE_PROVISIONER, provisioner);
            set_annotation(&mut claim.metadata, BETA_STORAGE_PROVISIONER, provisioner);
            claim = claims.replace(name, &pp, &claim).await?;
        }
    }

    // Bind to a volume pre-bound to it (the provisioner's, or one the scheduler pre-bound).
    let Some(pv) = snap
        .pvs
        .values()
        .find(|pv| pv.metadata.deletion_timestamp.is_none() && pv_bindable_to(pv, &claim))
    else {
        return Ok(());
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let mut pv = pv.clone();
    if let Some(r) = pv.spec.as_mut().and_then(|s| s.claim_ref.as_mut())
        && r.uid.as_deref().is_none_or(str::is_empty)
    {
        r.uid = claim.metadata.uid.clone();
        r.api_version.get_or_insert_with(|| "v1".to_string());
        r.kind
            .get_or_insert_with(|| "PersistentVolumeClaim".to_string());
        r.resource_version = claim.metadata.resource_version.clone();
        set_annotation(&mut pv.metadata, BOUND_BY_CONTROLLER, "yes");
        pv = pvs.replace(&pv_name, &pp, &pv).await?;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        pv.status = Some(PersistentVolumeStatus {
            phase: Some("Bound".to_string()),
            ..PersistentVolumeStatus::default()
        });
        pv = pvs.replace_status(&pv_name, &pp, &pv).await?;
    }
    if let Some(spec) = claim.spec.as_mut() {
        spec.volume_name = Some(pv_name);
    }
    set_annotation(&mut claim.metadata, BIND_COMPLETED, "yes");
    set_annotation(&mut claim.metadata, BOUND_BY_CONTROLLER, "yes");
    let claim = claims.replace(name, &pp, &claim).await?;
    set_claim_bound(&claims, claim, &pv).await
}

async fn set_claim_bound(
    claims: &Api<PersistentVolumeClaim>,
    mut claim: PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), kube::Error> {
    let spec = pv.spec.clone().unwrap_or_default();
    claim.status = Some(PersistentVolumeClaimStatus {
        phase: Some("Bound".to_string()),
        capacity: spec.capacity,
        access_modes: spec.access_modes,
        ..claim.status.unwrap_or_default()
    });
    let name = claim.metadata.name.clone().unwrap_or_default();
    claims
        .replace_status(&name, &PostParams::default(), &claim)
        .await?;
    Ok(())
}

/// New volumes become Available (pre-bound ones too, until bound); a bound volume whose
/// claim is gone becomes Released.
async fn sync_volume(
    client: &Client,
    snap: &Snapshot,
    pv: &PersistentVolume,
) -> Result<(), kube::Error> {
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let wanted = match (phase, claim_ref) {
        (None | Some("Pending"), _) => "Available",
        (Some("Bound"), Some(r)) => {
            let key = (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            );
            let claim_gone = snap.claims.get(&key).is_none_or(|c| {
                r.uid
                    .as_deref()
                    .is_some_and(|u| !u.is_empty() && Some(u) != c.metadata.uid.as_deref())
            });
            if !claim_gone {
                return Ok(());
            }
            "Released"
        }
        _ => return Ok(()),
    };
    let mut pv = pv.clone();
    pv.status.get_or_insert_with(Default::default).phase = Some(wanted.to_string());
    let name = pv.metadata.name.clone().unwrap_or_default();
    Api::<PersistentVolume>::all(client.clone())
        .replace_status(&name, &PostParams::default(), &pv)
        .await?;
    Ok(())
}
