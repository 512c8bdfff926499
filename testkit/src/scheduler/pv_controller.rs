//! The PV-controller emulation (kube-controller-manager's `persistentvolume` controller, the parts
//! stowage depends on): provisioner annotations, claim ↔ volume binding, Released and Lost.
//!
//! It runs as its own task beside the scheduler, as the real one is a separate controller:
//! every change of a claim, volume or class (from the shared stores) starts a pass over the
//! claims and volumes at once. Writes are conditional on the cached resourceVersion; an
//! object it wrote is skipped until the store shows a newer version of it, so a pass never
//! repeats a write the watch has not delivered yet. A failed write is retried by the next
//! pass, at the latest after [`RETRY`]. A claim or volume missing from the cache is checked
//! with the API server before a volume is called Released or a claim Lost, as the real
//! controller does.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeStatus,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;

use super::{
    Snapshot,
    cache::Cache,
    volumes::{
        BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, STORAGE_PROVISIONER,
        dynamic_provisioner, is_wait_for_first_consumer, pv_bindable_to, pv_claims, selected_node,
        volume_name,
    },
};

/// The longest wait before a failed write is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// Claims (and volumes) worked on at the same time within a pass. A pass ends when its
/// slowest write does, and a change waits for it: with 16, a 200-claim burst's PVs waited
/// up to 200 ms to be bound, with 64 about 100 ms.
const CONCURRENCY: usize = 64;

fn set_annotation(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
    v: &str,
) {
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(k.to_string(), v.to_string());
}

/// Objects (by uid) written over a resourceVersion the store still shows.
#[derive(Default)]
struct Written(Mutex<HashMap<String, String>>);

impl Written {
    fn key(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Option<(String, String)> {
        Some((meta.uid.clone()?, meta.resource_version.clone()?))
    }

    /// Whether this version of the object was already written over.
    fn pending(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let Some((uid, rv)) = Self::key(meta) else {
            return false;
        };
        let written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        written.get(&uid) == Some(&rv)
    }

    fn mark(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        if let Some((uid, rv)) = Self::key(meta) {
            let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
            written.insert(uid, rv);
        }
    }

    /// Forgets objects whose store version moved on (or that are gone).
    fn prune(&self, snap: &Snapshot) {
        let mut current: HashMap<&str, &str> = HashMap::new();
        for meta in snap
            .claims
            .values()
            .map(|c| &c.metadata)
            .chain(snap.pvs.values().map(|v| &v.metadata))
        {
            if let (Some(uid), Some(rv)) = (meta.uid.as_deref(), meta.resource_version.as_deref()) {
                current.insert(uid, rv);
            }
        }
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|uid, rv| current.get(uid.as_str()) == Some(&rv.as_str()));
    }
}

/// When the emulation first acts on a claim (see [`super::SchedulerConfig`]).
pub(super) struct Reach {
    /// [`super::SchedulerConfig::pv_controller_lag`].
    pub(super) lag: Duration,
    /// [`super::SchedulerConfig::pv_controller_after_pre_bound_pv`].
    pub(super) after_pre_bound_pv: bool,
}

/// Runs passes on every change until `stopped`. A claim takes part only once `reach` allows:
/// `lag` after it was first seen and, with `after_pre_bound_pv`, after a pass that judged a
/// volume pre-bound to it without it.
pub(super) async fn run(
    client: Client,
    cache: Arc<Cache>,
    reach: Reach,
    mut stopped: watch::Receiver<bool>,
) {
    tokio::select! {
        ready = cache.ready() => if !ready { return },
        _ = stopped.wait_for(|s| *s) => return,
    }
    let Reach {
        lag,
        after_pre_bound_pv,
    } = reach;
    let mut changed = cache.subscribe();
    let written = Written::default();
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    // Claims (by uid) a pass judged a pre-bound volume of while it left them out.
    let mut pv_judged: HashSet<String> = HashSet::new();
    loop {
        changed.borrow_and_update();
        let mut snap = Snapshot::of(&cache);
        written.prune(&snap);
        let now = Instant::now();
        let mut next_known: Option<Instant> = None;
        // Claims (by uid) left out of this pass that a volume in it is pre-bound to.
        let mut pre_bound_left_out = Vec::new();
        if !lag.is_zero() || after_pre_bound_pv {
            let uids: HashSet<String> = snap
                .claims
                .values()
                .filter_map(|c| c.metadata.uid.clone())
                .collect();
            first_seen.retain(|uid, _| uids.contains(uid));
            pv_judged.retain(|uid| uids.contains(uid));
            snap.claims.retain(|_, c| {
                let uid = c.metadata.uid.clone().unwrap_or_default();
                let known = *first_seen.entry(uid.clone()).or_insert(now) + lag;
                if known > now {
                    next_known = Some(next_known.map_or(known, |n| n.min(known)));
                }
                let reached = known <= now && (!after_pre_bound_pv || pv_judged.contains(&uid));
                if !reached
                    && snap
                        .pvs
                        .values()
                        .any(|pv| !written.pending(&pv.metadata) && pv_claims(pv, c))
                {
                    pre_bound_left_out.push(uid);
                }
                reached
            });
        }
        let failed = sync(&client, &snap, &written).await;
        // A pass without failures judged every volume it did not skip: the claims whose
        // pre-bound volume it judged without them are reached by the next pass.
        let mut judged = false;
        if after_pre_bound_pv && !failed {
            for uid in pre_bound_left_out {
                judged |= pv_judged.insert(uid);
            }
        }
        let wake = next_known.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = changed.changed() => {}
            () = std::future::ready(()), if judged => {}
            () = tokio::time::sleep(RETRY), if failed => {}
            () = sleep_until(wake), if wake.is_some() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// One pass over the snapshot; `true` if a step failed (and needs another pass).
async fn sync(client: &Client, snap: &Snapshot, written: &Written) -> bool {
    let claims: Vec<&PersistentVolumeClaim> = snap
        .claims
        .values()
        .map(Arc::as_ref)
        .filter(|c| c.metadata.deletion_timestamp.is_none() && !written.pending(&c.metadata))
        .collect();
    // The futures are made before the stream, so no closure is held across an await.
    let steps: Vec<_> = claims
        .into_iter()
        .map(|claim| claim_step(client, snap, written, claim))
        .collect();
    let claims_failed = futures::stream::iter(steps)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<bool>>()
        .await;
    let volumes: Vec<&PersistentVolume> = snap
        .pvs
        .values()
        .map(Arc::as_ref)
        .filter(|v| !written.pending(&v.metadata))
        .collect();
    let steps: Vec<_> = volumes
        .into_iter()
        .map(|pv| volume_step(client, snap, written, pv))
        .collect();
    let volumes_failed = futures::stream::iter(steps)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<bool>>()
        .await;
    claims_failed.contains(&true) || volumes_failed.contains(&true)
}

/// [`sync_claim`], logged; `true` if it failed.
async fn claim_step(
    client: &Client,
    snap: &Snapshot,
    written: &Written,
    claim: &PersistentVolumeClaim,
) -> bool {
    let result = sync_claim(client, snap, written, claim).await;
    if let Err(e) = &result {
        tracing::debug!(error = %e, claim = ?claim.metadata.name, "pv controller: claim step failed");
    }
    result.is_err()
}

/// [`sync_volume`], logged; `true` if it failed.
async fn volume_step(
    client: &Client,
    snap: &Snapshot,
    written: &Written,
    pv: &PersistentVolume,
) -> bool {
    let result = sync_volume(client, snap, written, pv).await;
    if let Err(e) = &result {
        tracing::debug!(error = %e, pv = ?pv.metadata.name, "pv controller: volume step failed");
    }
    result.is_err()
}

async fn sync_claim(
    client: &Client,
    snap: &Snapshot,
    written: &Written,
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
                // Not in the cache: ask the API server before calling the claim Lost.
                if Api::<PersistentVolume>::all(client.clone())
                    .get_opt(volume)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
                let mut lost = claim.clone();
                lost.status.get_or_insert_with(Default::default).phase = Some("Lost".to_string());
                claims.replace_status(name, &pp, &lost).await?;
                written.mark(&claim.metadata);
            }
            Some(pv) if phase != Some("Bound") && phase != Some("Lost") => {
                let original = claim;
                let mut claim = claim.clone();
                if claim
                    .metadata
                    .annotations
                    .as_ref()
                    .is_none_or(|a| !a.contains_key(BIND_COMPLETED))
                {
                    set_annotation(&mut claim.metadata, BIND_COMPLETED, "yes");
                    claim = claims.replace(name, &pp, &claim).await?;
                    written.mark(&original.metadata);
                }
                set_claim_bound(&claims, claim, pv).await?;
                written.mark(&original.metadata);
            }
            _ => {}
        }
        return Ok(());
    }

    // Unbound: bind to a volume pre-bound to it (the provisioner's, or one the scheduler
    // pre-bound), as `findBestMatchForClaim` finds it first; else announce the provisioner
    // when it is this class's turn.
    let original = claim;
    let mut claim = claim.clone();
    let Some(pv) = snap
        .pvs
        .values()
        .find(|pv| pv.metadata.deletion_timestamp.is_none() && pv_bindable_to(pv, &claim))
    else {
        let class = snap.class_of(&claim);
        let provisioner = class.and_then(dynamic_provisioner);
        let due = !is_wait_for_first_consumer(class) || selected_node(&claim).is_some();
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
                claims.replace(name, &pp, &claim).await?;
                written.mark(&original.metadata);
            }
        }
        return Ok(());
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let original_pv = pv;
    let mut pv = PersistentVolume::clone(pv);
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
        written.mark(&original_pv.metadata);
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        pv.status = Some(PersistentVolumeStatus {
            phase: Some("Bound".to_string()),
            ..PersistentVolumeStatus::default()
        });
        pv = pvs.replace_status(&pv_name, &pp, &pv).await?;
        written.mark(&original_pv.metadata);
    }
    if let Some(spec) = claim.spec.as_mut() {
        spec.volume_name = Some(pv_name);
    }
    set_annotation(&mut claim.metadata, BIND_COMPLETED, "yes");
    set_annotation(&mut claim.metadata, BOUND_BY_CONTROLLER, "yes");
    let claim = claims.replace(name, &pp, &claim).await?;
    written.mark(&original.metadata);
    set_claim_bound(&claims, claim, &pv).await
}

fn bound_by_controller(pv: &PersistentVolume) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(BOUND_BY_CONTROLLER))
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

/// New volumes become Available (pre-bound ones too, until bound); a volume bound to a
/// claim that is gone becomes Released: a Bound one, and also one pre-bound to a claim's uid
/// (a provisioner's volume for a claim deleted while it was being provisioned), as the real
/// controller's `syncVolume` does. "Gone" is judged as there: from the controller's own
/// store of claims, checked with the API server only for a volume that carries
/// `pv.kubernetes.io/bound-by-controller`.
async fn sync_volume(
    client: &Client,
    snap: &Snapshot,
    written: &Written,
    pv: &PersistentVolume,
) -> Result<(), kube::Error> {
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Released" | "Failed")) {
        return Ok(());
    }
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let uid = claim_ref
        .and_then(|r| r.uid.as_deref())
        .filter(|u| !u.is_empty());
    let wanted = match claim_ref {
        Some(r) if phase == Some("Bound") || uid.is_some() => {
            let key = (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            );
            let gone = |c: Option<&PersistentVolumeClaim>| {
                c.is_none_or(|c| uid.is_some_and(|u| Some(u) != c.metadata.uid.as_deref()))
            };
            let cached = snap.claims.get(&key).map(Arc::as_ref);
            if !gone(cached) {
                if phase.is_some_and(|p| p != "Pending") {
                    return Ok(());
                }
                "Available"
            } else if cached.is_none() && bound_by_controller(pv) {
                // Not in its store: the real controller asks the API server before
                // releasing, but only for a volume bound by a controller (kube-scheduler,
                // itself, or a provisioner saying so), as `syncVolume` in 1.19 does.
                let live = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &key.0)
                    .get_opt(&key.1)
                    .await?;
                if !gone(live.as_ref()) {
                    return Ok(());
                }
                "Released"
            } else {
                // Another uid in its store, or missing from it with no
                // `bound-by-controller`: released on the spot, as the real one does.
                "Released"
            }
        }
        _ if matches!(phase, None | Some("Pending")) => "Available",
        _ => return Ok(()),
    };
    let original = pv;
    let mut pv = pv.clone();
    pv.status.get_or_insert_with(Default::default).phase = Some(wanted.to_string());
    let name = pv.metadata.name.clone().unwrap_or_default();
    Api::<PersistentVolume>::all(client.clone())
        .replace_status(&name, &PostParams::default(), &pv)
        .await?;
    written.mark(&original.metadata);
    Ok(())
}
