//! The claim reconciler: provisioning (DESIGN.md steps 3–6) and, for bound claims, growth
//! ([`super::expand`]).
//!
//! ```text
//!   PV pvc-<uid> exists ─────────────────────────────▶ wait for the PV controller to bind
//!   LocalVolume pvc-<uid>: Ready ────────────────────▶ create the PV
//!                          Failed ───────────────────▶ Warning Event, the agent retries
//!                          Pending / being deleted ──▶ wait (its watch wakes us)
//!   nothing yet: unsupported request ────────────────▶ ProvisioningFailed, no hot retry
//!                Node gone / does not fit ───────────▶ remove selected-node + Event
//!                fits (re-checked under the node's lock) ─▶ create the LocalVolume
//! ```

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use parking_lot::RwLock;

use super::backend::Backend;
use super::error::{Error, Result, is_status};
use super::events::EventType;
use super::metrics::Outcome;
use super::steps::{
    claim_key, claim_ref, provisioner_annotation, record_pv_created, record_pv_failed,
};
use super::volume::{self, Unsupported};
use super::{Context, Next, RESYNC, USER_ERROR_RETRY};
use crate::api::local_volume::{LocalVolume, LocalVolumePhase};
use crate::api::{names, reasons};
use crate::cache::{ClassParams, ClusterIndex, Reservation};
use crate::crash;
use crate::ledger::{
    Bytes, ClaimKey, Demand, FitOptions, NodeState, PoolName, Shortfall, Unfit, check,
};

/// What to do about an unbound claim of ours with a selected node.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The PV exists; the PV controller binds it.
    WaitForBinding,
    /// The request cannot be served by a node-local volume, or the class is invalid.
    Refuse(String),
    /// Nothing exists yet: check the node and create the LocalVolume.
    Place {
        /// The selected node.
        node: String,
        /// The LocalVolume to create.
        volume: Box<LocalVolume>,
    },
    /// The LocalVolume is Ready: create the PV.
    CreatePv {
        /// The Ready LocalVolume.
        volume: Box<LocalVolume>,
        /// Its path on the node.
        path: String,
    },
    /// The agent has not made the volume yet.
    WaitForVolume,
    /// The agent reported the volume at a path its pool does not give: no PV, and tell.
    BadPath {
        /// Why, for the Event.
        message: String,
    },
    /// The agent failed to make the volume (it retries); tell the user.
    VolumeFailed {
        /// The agent's message.
        message: String,
    },
    /// A LocalVolume of this name is being deleted; wait until it is gone.
    WaitForVolumeDeletion,
    /// An object of our name (a `kind`) belongs to someone else.
    Conflict(&'static str),
}

/// What [`plan`] reads.
#[derive(Debug)]
pub struct View<'a> {
    /// The claim.
    pub claim: &'a PersistentVolumeClaim,
    /// Its class's parameters.
    pub params: std::result::Result<ClassParams, String>,
    /// The selected node.
    pub node: &'a str,
    /// The LocalVolume `pvc-<uid>`, if any.
    pub volume: Option<LocalVolume>,
    /// The PersistentVolume `pvc-<uid>`, if any.
    pub pv: Option<PersistentVolume>,
    /// The path of the LocalVolume's pool on its node, as that node's StorageNode reports
    /// it; a Ready LocalVolume's path must be this joined with its name.
    pub pool_path: Option<String>,
}

/// PURE: the next provisioning step for an unbound claim of ours with a selected node.
pub fn plan(view: View<'_>) -> Plan {
    let uid = view.claim.metadata.uid.clone().unwrap_or_default();
    if let Some(pv) = &view.pv {
        let bound_uid = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref());
        return if bound_uid == Some(uid.as_str()) {
            Plan::WaitForBinding
        } else {
            Plan::Conflict("PersistentVolume")
        };
    }
    if let Some(lv) = view.volume {
        if lv.spec.claim.uid != uid {
            return Plan::Conflict("LocalVolume");
        }
        if lv.metadata.deletion_timestamp.is_some() {
            return Plan::WaitForVolumeDeletion;
        }
        let status = lv.status.clone().unwrap_or_default();
        return match (status.phase, status.path) {
            (LocalVolumePhase::Ready, Some(path)) if !path.is_empty() => {
                match volume::check_path(&path, view.pool_path.as_deref(), &lv.name_any()) {
                    Ok(()) => Plan::CreatePv {
                        volume: Box::new(lv),
                        path,
                    },
                    Err(message) => Plan::BadPath { message },
                }
            }
            (LocalVolumePhase::Failed, _) => Plan::VolumeFailed {
                message: status
                    .message
                    .unwrap_or_else(|| "the agent gave no reason".to_string()),
            },
            _ => Plan::WaitForVolume,
        };
    }
    let request = match volume::request(view.claim) {
        Ok(r) => r,
        Err(Unsupported(message)) => return Plan::Refuse(message),
    };
    let params = match view.params {
        Ok(p) => p,
        Err(message) => return Plan::Refuse(message),
    };
    Plan::Place {
        node: view.node.to_string(),
        volume: Box::new(volume::local_volume(
            view.claim,
            view.node,
            &params,
            request.size,
        )),
    }
}

/// The claim being placed, for [`fits`].
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// Its uid.
    pub uid: &'a str,
    /// Its namespace and name.
    pub key: ClaimKey,
    /// Its creation time.
    pub created: Option<Timestamp>,
}

/// PURE: whether a volume of `size` in `pool` fits `node` for `me`.
///
/// The ledger counts every claim with a selected node and no LocalVolume as reserved. Taken
/// literally, two claims raced onto a node that can hold only one would each see the
/// other's reservation and both be sent away. Instead, claims are served oldest first
/// (creation time, then namespace/name): only reservations of claims before `me` count
/// against it, and its own is not counted twice. The oldest claim therefore always gets
/// through if it fits on its own, and whoever comes later sees its LocalVolume as
/// allocated. No overcommit is possible either way: allocations only ever grow through this
/// check, under the node's lock.
pub fn fits(
    node: Option<NodeState>,
    reservations: &[Reservation],
    me: &Candidate<'_>,
    pool: &PoolName,
    size: Bytes,
    opts: &FitOptions,
) -> std::result::Result<(), Unfit> {
    fits_all(
        node,
        reservations,
        std::slice::from_ref(me),
        &[(pool.clone(), size)],
        opts,
    )
}

/// PURE: whether the volumes `wanted` (pool, size) fit `node` together, for the claims
/// `members` (a pod's claims provisioned as one): [`fits`] for a set. The set takes the
/// place of its oldest member in the oldest-first order, and none of the members'
/// reservations is counted against it, since they are what is being placed.
pub fn fits_all(
    node: Option<NodeState>,
    reservations: &[Reservation],
    members: &[Candidate<'_>],
    wanted: &[(PoolName, Bytes)],
    opts: &FitOptions,
) -> std::result::Result<(), Unfit> {
    let Some(mut node) = node else {
        return Err(Unfit::NoReport);
    };
    let Some(first) = members.iter().map(|m| (m.created, &m.key)).min() else {
        return Ok(());
    };
    for r in reservations {
        let member = members.iter().any(|m| m.uid == r.uid);
        let before = (r.created, &r.claim) < first && !member;
        if !before && let Some(p) = node.pool_mut(r.pool.as_str()) {
            p.reserved = p.reserved.saturating_sub(r.bytes);
        }
    }
    let demand = Demand::from_claims(wanted.iter().cloned()).map_err(|_| {
        Unfit::Pools(
            wanted
                .iter()
                .map(|(pool, needed)| Shortfall::Insufficient {
                    pool: pool.clone(),
                    needed: *needed,
                    free: Bytes::ZERO,
                })
                .collect(),
        )
    })?;
    check(&node, &demand, opts)
}

/// A sentence for the claim's Event on why `node` cannot hold it.
pub fn unfit_message(node: &str, unfit: &Unfit) -> String {
    format!(
        "node {node} cannot hold the volume: {}; removed the selected node so that the \
         scheduler picks another",
        unfit_reason(unfit, "the claim requests")
    )
}

/// Why a node cannot hold a claim's (or a pod's claims') volumes, for an Event; `asking`
/// names who asks for the bytes ("the claim requests").
fn unfit_reason(unfit: &Unfit, asking: &str) -> String {
    match unfit {
        Unfit::Pools(shortfalls) => shortfalls
            .iter()
            .map(|s| match s {
                Shortfall::Insufficient { pool, needed, free } => {
                    format!("storage pool \"{pool}\" has {free} free, {asking} {needed}")
                }
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Whether the controller may start on this claim of one of its classes: the provisioner
/// annotation names it (the GA key if present, else the beta one), or there is none yet and
/// the scheduler has selected a node.
///
/// Starting before kube-controller-manager writes the annotation (at its pace: 20
/// requests/s by default, seconds into a burst) is safe: with WaitForFirstConsumer,
/// kube-scheduler sets `selected-node` only once it has decided that the claim is to be
/// provisioned dynamically, and the class names this provisioner. A claim whose annotation
/// names another provisioner is left alone. The PV made early carries
/// `pv.kubernetes.io/bound-by-controller`, as kube-controller-manager's own provisioned PVs
/// do: without it, its PV controller calls a PV `Released` when the claim it is pre-bound
/// to is not in its own store yet (filled only as its throttled worker reaches each claim;
/// seen on a real 1.19 cluster), and with it, it asks the API server first. On finding the
/// PV pre-bound to an unbound claim, it queues the claim and binds it, so the claim skips
/// the annotation write altogether.
pub fn may_provision(claim: &PersistentVolumeClaim, provisioner: &str) -> bool {
    match provisioner_annotation(claim) {
        Some(p) => p == provisioner,
        None => selected_node(claim).is_some(),
    }
}

/// The claim's `selected-node`, if set and non-empty.
pub fn selected_node(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .metadata
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_SELECTED_NODE)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

/// Reconciles one claim.
pub async fn reconcile(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Next> {
    let Some((class, backend)) = class_and_backend(&claim, &ctx) else {
        return Ok(Next::await_change());
    };
    match backend {
        Backend::Nfs(nfs) => super::nfs_volumes::reconcile_claim(&claim, &class, &ctx, &nfs).await,
        Backend::Local => reconcile_local(claim, class, ctx).await,
    }
}

/// The claim's class from the index and the backend its provisioner names, if this
/// controller runs it.
fn class_and_backend(
    claim: &PersistentVolumeClaim,
    ctx: &Context,
) -> Option<(StorageClass, Backend)> {
    let class_name = claim.spec.as_ref()?.storage_class_name.as_deref()?;
    let class = ctx.index.read().storage_class(class_name)?.clone();
    let backend = Backend::of(&class.provisioner, ctx)?;
    Some((class, backend))
}

/// [`reconcile`] for a claim of a node-local class.
async fn reconcile_local(
    claim: Arc<PersistentVolumeClaim>,
    class: StorageClass,
    ctx: Arc<Context>,
) -> Result<Next> {
    let missing = ctx.ready.missing();
    if !missing.is_empty() && claim.metadata.deletion_timestamp.is_none() {
        return local_crds_missing(&claim, &missing, &ctx).await;
    }
    let spec = claim.spec.as_ref();
    if spec
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
    {
        return super::expand::reconcile(&claim, &class, &ctx).await;
    }
    if claim.metadata.deletion_timestamp.is_some()
        || !may_provision(&claim, &ctx.config.provisioner)
    {
        return Ok(Next::await_change());
    }
    let Some(node) = selected_node(&claim) else {
        return Ok(Next::await_change());
    };
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    ctx.seen_with_node(&uid);
    let name = volume::volume_name(&uid);
    // From the index: a PV or LocalVolume created a moment ago and not seen yet makes the
    // create below find it (409) and adopt it, so a stale view costs a request, not a
    // duplicate.
    let (pv, lv, pool_path) = {
        let index = ctx.index.read();
        let pv = index.persistent_volume(&name);
        let lv = if pv.is_some() {
            None
        } else {
            index.local_volume(&name)
        };
        let pool_path = lv
            .as_ref()
            .and_then(|lv| index.pool_path(&lv.spec.node_name, &lv.spec.pool));
        (pv, lv, pool_path)
    };
    let params = ClassParams::from_class(&class).map_err(|e| e.to_string());
    let plan = plan(View {
        claim: &claim,
        params,
        node,
        volume: lv,
        pv,
        pool_path,
    });
    tracing::debug!(claim = %claim_key(&claim), ?plan, "provisioning plan");
    execute(plan, &claim, &class, &ctx).await
}

/// How soon a claim of a node-local class looks again while stowage's CRDs are missing
/// (the watches start within `cache::watch::LOCAL_CRDS_RECHECK` of their install).
pub const LOCAL_CRDS_RETRY: Duration = Duration::from_secs(60);

/// A claim of a node-local class while the CRDs `missing` are not installed (an NFS-only
/// install): nothing can be provisioned, which a Warning Event on the claim says, with the
/// fix, rather than leaving it Pending in silence.
async fn local_crds_missing(
    claim: &PersistentVolumeClaim,
    missing: &[String],
    ctx: &Context,
) -> Result<Next> {
    let message = format!(
        "node-local volumes are off: the CRD{} {} {} not installed in this cluster. Install \
         them (`stowage crds | kubectl apply -f -`) and the stowage agent DaemonSet, as \
         `kubectl apply -k deploy/` does, or use a StorageClass of {}",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(" and "),
        if missing.len() == 1 { "is" } else { "are" },
        names::PROVISIONER_NFS,
    );
    tracing::debug!(claim = %claim_key(claim), %message, "claim waits for the stowage CRDs");
    ctx.recorder
        .record(
            &claim_ref(claim),
            EventType::Warning,
            reasons::PROVISIONING_FAILED,
            &message,
        )
        .await;
    Ok(Next::requeue(LOCAL_CRDS_RETRY))
}

/// The claim's class when it is ours (provisioner = our name).
/// The claim's class from the index when its provisioner is `provisioner`.
fn class_of(
    index: &ClusterIndex,
    claim: &PersistentVolumeClaim,
    provisioner: &str,
) -> Option<StorageClass> {
    let class_name = claim.spec.as_ref()?.storage_class_name.as_deref()?;
    let class = index.storage_class(class_name)?;
    (class.provisioner == provisioner).then(|| class.clone())
}

async fn execute(
    plan: Plan,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: &Context,
) -> Result<Next> {
    let object = claim_ref(claim);
    match plan {
        Plan::WaitForBinding | Plan::WaitForVolume | Plan::WaitForVolumeDeletion => {
            Ok(Next::requeue(RESYNC))
        }
        Plan::Conflict(kind) => {
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let error = Error::NotOurs {
                kind,
                name: volume::volume_name(&uid),
                uid,
            };
            ctx.recorder
                .record(
                    &object,
                    EventType::Warning,
                    reasons::PROVISIONING_FAILED,
                    &error.to_string(),
                )
                .await;
            Err(error)
        }
        // A person has to act: counted as failed, told on the claim, looked at again slowly.
        Plan::Refuse(message) | Plan::BadPath { message } => {
            ctx.metrics.provision(Outcome::Failed);
            tracing::warn!(claim = %claim_key(claim), %message, "claim refused");
            ctx.recorder
                .record(
                    &object,
                    EventType::Warning,
                    reasons::PROVISIONING_FAILED,
                    &message,
                )
                .await;
            Ok(Next::requeue(USER_ERROR_RETRY))
        }
        Plan::VolumeFailed { message } => {
            ctx.metrics.provision(Outcome::Failed);
            let text = format!(
                "the stowage agent could not make volume {}: {message}; it keeps retrying",
                volume::volume_name(claim.metadata.uid.as_deref().unwrap_or_default())
            );
            ctx.recorder
                .record(
                    &object,
                    EventType::Warning,
                    reasons::PROVISIONING_FAILED,
                    &text,
                )
                .await;
            Ok(Next::requeue(RESYNC))
        }
        Plan::Place { node, volume } => place(claim, &node, *volume, ctx).await,
        Plan::CreatePv { volume, path } => create_pv(claim, class, &volume, &path, ctx).await,
    }
}

/// How long a claim waits for its pod to be seen at all, or for a sibling claim that is
/// not in stowage's view yet or that names another node, before it is provisioned without
/// them. A sibling with no `selected-node` yet is not waited for: kube-scheduler writes the
/// annotation to a pod's claims one after another in its binding cycle (over a second apart
/// in a burst, its API client being throttled), always the same node, so the sibling's
/// volume is made with the first claim's.
pub const SIBLING_WAIT: Duration = Duration::from_secs(5);
/// How soon a claim waiting for its siblings' `selected-node` looks again.
const SIBLING_RETRY: Duration = Duration::from_millis(200);
/// How soon a claim held on its node (see [`GroupStep::Stay`]) looks again.
const STAY_RETRY: Duration = Duration::from_secs(30);

/// Where the other claims of a claim's pod stand, as [`group_step`] reads it. Only claims
/// of this provisioner count; "pod" means every unbound pod known to use the claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Siblings {
    /// The pod(s), `namespace/name`, for messages.
    pub pods: Vec<String>,
    /// Claims provisioned together with this one: the same selected node, nothing made yet.
    pub members: Vec<String>,
    /// Claims whose volume is made, or being made, on the selected node.
    pub here: Vec<String>,
    /// Claims whose volume is on another node: (claim, node).
    pub elsewhere: Vec<(String, String)>,
    /// Claims the scheduler has not (yet) sent to this node.
    pub unselected: Vec<String>,
    /// Those of [`Self::unselected`] that cannot be made now: not in stowage's view yet,
    /// or with another node selected (a binding cycle being written over an older one).
    /// They are waited for, up to [`SIBLING_WAIT`]; the rest are made with the claim.
    pub unsettled: Vec<String>,
}

/// What to do with a claim and its [`Siblings::members`] on the selected node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupStep {
    /// Make the LocalVolumes of the claim, of every member and of every sibling without a
    /// `selected-node` yet, all of them now.
    Create,
    /// The pod, or some of its claims, are not settled yet ([`Siblings::unsettled`]): look
    /// again shortly.
    AwaitSiblings,
    /// They do not fit, but a sibling's volume is on this node already, so the pod can run
    /// nowhere else: the claims stay, and the user is told what is missing and where.
    Stay {
        /// The Event's message.
        message: String,
    },
    /// They do not fit: every member goes back to the scheduler, so the pod is placed
    /// again as a whole.
    Reschedule {
        /// The reschedule metric's reason.
        reason: &'static str,
        /// The Event's message.
        message: String,
    },
    /// A sibling's volume is on another node: the pod can only run there, so this claim
    /// goes back to the scheduler.
    Elsewhere {
        /// The Event's message.
        message: String,
    },
}

/// PURE: the provisioning step for `claim` (and its members) on `node`, given its
/// siblings, whether they all fit together, and how long the claim has had its node.
///
/// A pod's claims are one unit: they are checked with one fit check of their sum and made
/// all or none, so no pod ends up with claims split across nodes, or pinned by one claim's
/// volume to a node where its others cannot fit.
pub fn group_step(
    node: &str,
    claim: &str,
    siblings: &Siblings,
    verdict: std::result::Result<(), Unfit>,
    waited: Duration,
) -> GroupStep {
    let pod = match siblings.pods.as_slice() {
        [] => format!("the pod of claim {claim}"),
        [one] => format!("pod {one}"),
        many => format!("pods {}", many.join(", ")),
    };
    if let Some((other, there)) = siblings.elsewhere.first() {
        return GroupStep::Elsewhere {
            message: format!(
                "claim {other} of {pod} has its volume on node {there}, so the pod can only \
                 run there; removed the selected node {node} of claim {claim} so that the \
                 scheduler places the pod again"
            ),
        };
    }
    // No pod known to use the claim: the pod watch is behind the claim's (the scheduler
    // sets `selected-node` only for a pod it is placing, and a pod stays unbound until its
    // claims are). Its siblings are unknown, so wait for it as for an unsettled sibling.
    let pod_unknown = siblings.pods.is_empty();
    if (pod_unknown || !siblings.unsettled.is_empty()) && waited < SIBLING_WAIT {
        return GroupStep::AwaitSiblings;
    }
    let Err(unfit) = verdict else {
        return GroupStep::Create;
    };
    let mut claims = vec![claim.to_string()];
    claims.extend(siblings.members.iter().cloned());
    let claims = claims.join(", ");
    let why = if siblings.members.is_empty() && siblings.unselected.is_empty() {
        unfit_reason(&unfit, "the claim requests")
    } else {
        unfit_reason(&unfit, "together they request")
    };
    if let Some(anchor) = siblings.here.first() {
        return GroupStep::Stay {
            message: format!(
                "node {node} cannot hold the volumes of claims {claims} yet: {why}. They stay \
                 on {node}: claim {anchor} of {pod} has its volume there already, so the pod \
                 can run nowhere else. Free space in the pool on {node}, or delete the pod and \
                 its claims to start again on another node"
            ),
        };
    }
    let message = if siblings.members.is_empty() && siblings.unselected.is_empty() {
        unfit_message(node, &unfit)
    } else if siblings.members.is_empty() {
        format!(
            "node {node} cannot hold the volumes of all of {pod}'s claims ({claim} and {}): \
             {why}; removed the selected node so that the scheduler places the pod on another \
             node",
            siblings.unselected.join(", ")
        )
    } else {
        format!(
            "node {node} cannot hold the volumes of {pod}'s claims {claims} together: {why}; \
             removed the selected node from all of them so that the scheduler places the pod \
             on another node"
        )
    };
    GroupStep::Reschedule {
        reason: unfit.kind(),
        message,
    }
}

/// A claim and its StorageClass.
type ClaimOfClass = (PersistentVolumeClaim, StorageClass);

/// The other claims of a claim's pod, as [`siblings`] sorts them for [`place`].
struct Group {
    /// Where they stand, for [`group_step`].
    siblings: Siblings,
    /// Made with the claim: those the scheduler sent to the node, and those it has not
    /// sent anywhere yet (it sends a pod's claims to one node, one after another).
    made_now: Vec<ClaimOfClass>,
    /// Counted in the fit check only: the unsettled ones that stowage can see.
    counted: Vec<ClaimOfClass>,
}

/// Reads where the other claims of `claim`'s pod stand for provisioning on `node`: those to
/// be made with it now, and those with no volume yet that the scheduler has sent elsewhere
/// (which must end up on `node` too, since a pod's local volumes are on one node).
fn siblings(
    index: &ClusterIndex,
    claim: &PersistentVolumeClaim,
    node: &str,
    provisioner: &str,
) -> Group {
    let namespace = claim.namespace().unwrap_or_default();
    let mut out = Siblings {
        pods: index
            .pods_using(&namespace, &claim.name_any())
            .into_iter()
            .map(|p| format!("{namespace}/{p}"))
            .collect(),
        ..Siblings::default()
    };
    let mut made_now = Vec::new();
    let mut counted = Vec::new();
    for name in index.sibling_claims(&namespace, &claim.name_any()) {
        let key = format!("{namespace}/{name}");
        // Not seen yet: the watch is behind the pod's.
        let Some(sibling) = index.claim(&namespace, &name) else {
            out.unselected.push(key.clone());
            out.unsettled.push(key);
            continue;
        };
        let Some(class) = class_of(index, &sibling, provisioner) else {
            continue;
        };
        if sibling.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let volume = volume::volume_name(sibling.metadata.uid.as_deref().unwrap_or_default());
        let bound = sibling
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| !v.is_empty());
        let made_on = index
            .persistent_volume(bound.as_deref().unwrap_or(&volume))
            .and_then(|pv| volume::pv_node(&pv).map(str::to_string))
            .or_else(|| index.local_volume(&volume).map(|lv| lv.spec.node_name))
            .or_else(|| index.assumed_node(&volume));
        match made_on {
            Some(n) if n == node => out.here.push(key),
            Some(n) => out.elsewhere.push((key, n)),
            // Bound to a PV that is not ours, or not in the index: nothing to place.
            None if bound.is_some() => {}
            None if selected_node(&sibling) == Some(node)
                && may_provision(&sibling, provisioner) =>
            {
                out.members.push(key);
                made_now.push((sibling, class));
            }
            // Its `selected-node` is on its way; the provisioner annotation, if any, must
            // still name this provisioner (the PV waits for the annotation of its own).
            None if selected_node(&sibling).is_none()
                && provisioner_annotation(&sibling).is_none_or(|p| p == provisioner) =>
            {
                out.unselected.push(key);
                made_now.push((sibling, class));
            }
            None => {
                out.unselected.push(key.clone());
                out.unsettled.push(key);
                counted.push((sibling, class));
            }
        }
    }
    Group {
        siblings: out,
        made_now,
        counted,
    }
}

/// The claim as the oldest-first order of [`fits`] sees it.
fn candidate(claim: &PersistentVolumeClaim) -> Candidate<'_> {
    Candidate {
        uid: claim.metadata.uid.as_deref().unwrap_or_default(),
        key: ClaimKey::new(claim.namespace().unwrap_or_default(), claim.name_any()),
        created: claim.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// Re-checks the node under its lock with the claim's pod's other claims (see
/// [`group_step`]), then creates the LocalVolumes of all of them, holds them on the node,
/// or sends them back to the scheduler.
async fn place(
    claim: &PersistentVolumeClaim,
    node: &str,
    volume: LocalVolume,
    ctx: &Context,
) -> Result<Next> {
    if ctx.node_hostname(node).is_none() {
        let message = format!(
            "node {node} no longer exists; removed the selected node so that the scheduler \
             picks another"
        );
        return reschedule(claim, node, "node_gone", &message, ctx).await;
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let waited = ctx.waiting_for(&uid);
    let lock = ctx.node_lock(node);
    let guard = lock.lock().await;
    let (step, group) = {
        let index = ctx.index.read();
        let name = volume.name_any();
        if index.is_assumed(&name) || index.local_volume(&name).is_some() {
            // A sibling's reconcile made (or is making) this claim's volume with its own.
            // The LocalVolume's watch brings this claim back; if that create fails, the
            // sibling's retry does not come back here (its own volume exists), so look
            // again soon.
            return Ok(Next::requeue(SIBLING_RETRY));
        }
        let Group {
            siblings,
            made_now,
            counted,
        } = siblings(&index, claim, node, &ctx.config.provisioner);
        let volumes_on_node = |claims: Vec<ClaimOfClass>| {
            claims.into_iter().filter_map(|(sibling, class)| {
                let params = ClassParams::from_class(&class).ok()?;
                // A sibling that cannot be served is refused by its own reconcile.
                let request = volume::request(&sibling).ok()?;
                let lv = volume::local_volume(&sibling, node, &params, request.size);
                Some((sibling, lv))
            })
        };
        // The siblings with no `selected-node` yet are made now too: kube-scheduler writes
        // the same node to each of the pod's claims, one request after another, so waiting
        // for them would add its throttled writes to this claim's provisioning. Their PVs
        // wait for their own `selected-node` (`reconcile_local` starts only then).
        let mut group = vec![(claim.clone(), volume)];
        group.extend(volumes_on_node(made_now));
        // The unsettled ones count in the fit check too (they are not made now): the pod's
        // volumes must all fit on one node, so a claim is not made alone where its pod's
        // other claims cannot follow it.
        let to_come: Vec<_> = volumes_on_node(counted).collect();
        let candidates: Vec<Candidate<'_>> = group
            .iter()
            .chain(&to_come)
            .map(|(c, _)| candidate(c))
            .collect();
        let wanted: Vec<(PoolName, Bytes)> = group
            .iter()
            .chain(&to_come)
            .map(|(_, lv)| (lv.spec.pool_name(), lv.spec.size()))
            .collect();
        let verdict = fits_all(
            index.node_state(node, Timestamp::now()),
            &index.reservations_on(node),
            &candidates,
            &wanted,
            &ctx.config.fit,
        );
        let step = group_step(node, &claim_key(claim), &siblings, verdict, waited);
        (step, group)
    };
    match step {
        GroupStep::AwaitSiblings => {
            drop(guard);
            tracing::debug!(claim = %claim_key(claim), node, "waiting for the pod's other claims to be sent to the node");
            Ok(Next::requeue(SIBLING_RETRY))
        }
        GroupStep::Elsewhere { message } => {
            drop(guard);
            reschedule(claim, node, "sibling_elsewhere", &message, ctx).await
        }
        GroupStep::Stay { message } => {
            drop(guard);
            tracing::warn!(claim = %claim_key(claim), node, %message, "claim held on its node");
            for (member, _) in &group {
                ctx.recorder
                    .record(
                        &claim_ref(member),
                        EventType::Warning,
                        reasons::PROVISIONING_WAITING,
                        &message,
                    )
                    .await;
            }
            Ok(Next::requeue(STAY_RETRY))
        }
        GroupStep::Reschedule { reason, message } => {
            drop(guard);
            // The siblings first, this claim last, and this one only once all of them went:
            // while it keeps its node, a failure is retried for the whole group; were it
            // sent back first, a sibling left on the node could later go on alone.
            for (member, _) in group.iter().skip(1) {
                // Only those that have it: a sibling made with the claim may have none yet.
                if selected_node(member) == Some(node) {
                    reschedule(member, node, reason, &message, ctx).await?;
                }
            }
            reschedule(claim, node, reason, &message, ctx).await
        }
        GroupStep::Create => {
            // Counted as allocated from here on, so the node's next claim may be decided
            // while these creates are on their way: holding the lock across the API round
            // trips would serialise a burst per node.
            let assumed: Vec<Assumed> = group.iter().map(|(_, lv)| Assumed::new(ctx, lv)).collect();
            drop(guard);
            // At once: one round trip for the pod rather than one per claim. A sibling whose
            // create failed is placed by its own reconcile (at its `selected-node`), which
            // the volumes made here anchor to this node.
            let creates =
                group
                    .into_iter()
                    .zip(assumed)
                    .map(|((member, lv), assumed)| async move {
                        create_assumed(&member, node, lv, assumed, ctx).await
                    });
            futures::future::join_all(creates)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()?;
            Ok(Next::requeue(RESYNC))
        }
    }
}

/// Creates the LocalVolume `volume` of `claim` on `node`, which `assumed` counts as
/// allocated until the index holds it.
async fn create_assumed(
    claim: &PersistentVolumeClaim,
    node: &str,
    volume: LocalVolume,
    assumed: Assumed,
    ctx: &Context,
) -> Result<()> {
    let name = volume.name_any();
    let created = create_local_volume(&volume, ctx).await;
    {
        let mut index = ctx.index.write();
        assumed.forget(&mut index);
        // In the same write as the forgetting: the bytes are counted throughout.
        match created {
            Ok(created) => index.note_local_volume(created),
            Err(e) => return Err(e),
        }
    }
    crash::hit(crash::CONTROLLER_PROVISION_VOLUME_CREATED);
    tracing::info!(claim = %claim_key(claim), volume = %name, node, size = volume.spec.size_bytes, "local volume created");
    ctx.recorder
        .record(
            &claim_ref(claim),
            EventType::Normal,
            reasons::PROVISIONING,
            &format!(
                "External provisioner is provisioning volume for claim \"{}\": {} in pool \"{}\" on node {node}",
                claim_key(claim),
                volume.spec.size(),
                volume.spec.pool
            ),
        )
        .await;
    Ok(())
}

/// A LocalVolume counted as allocated in the index until it is created or its create has
/// failed ([`ClusterIndex::assume_local_volume`]); also forgotten if the reconcile is
/// dropped half-way, so no phantom allocation outlives it.
///
/// [`ClusterIndex::assume_local_volume`]: crate::cache::ClusterIndex::assume_local_volume
struct Assumed {
    index: Arc<RwLock<ClusterIndex>>,
    name: Option<String>,
}

impl Assumed {
    fn new(ctx: &Context, volume: &LocalVolume) -> Assumed {
        ctx.index.write().assume_local_volume(volume);
        Assumed {
            index: ctx.index.clone(),
            name: Some(volume.name_any()),
        }
    }

    /// Ends the assumption under a write lock the caller already holds.
    fn forget(mut self, index: &mut ClusterIndex) {
        if let Some(name) = self.name.take() {
            index.forget_assumed(&name);
        }
    }
}

impl Drop for Assumed {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.index.write().forget_assumed(&name);
        }
    }
}

/// Creates `volume`, adopting an existing one made for the same claim uid.
async fn create_local_volume(volume: &LocalVolume, ctx: &Context) -> Result<LocalVolume> {
    let api: Api<LocalVolume> = Api::all(ctx.client.clone());
    let name = volume.name_any();
    let pp = PostParams {
        field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
        ..PostParams::default()
    };
    match api.create(&pp, volume).await {
        Ok(created) => Ok(created),
        Err(e) if is_status(&e, 409) => {
            let existing = api
                .get(&name)
                .await
                .map_err(Error::api("get", "LocalVolume", &name))?;
            if existing.spec.claim.uid == volume.spec.claim.uid {
                Ok(existing)
            } else {
                Err(Error::NotOurs {
                    kind: "LocalVolume",
                    name,
                    uid: volume.spec.claim.uid.clone(),
                })
            }
        }
        Err(e) => Err(Error::api("create", "LocalVolume", name)(e)),
    }
}

/// Removes `selected-node` (only if it still names `node`) and tells the user why.
async fn reschedule(
    claim: &PersistentVolumeClaim,
    node: &str,
    reason: &'static str,
    message: &str,
    ctx: &Context,
) -> Result<Next> {
    let key = claim_key(claim);
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    // A JSON patch whose `test` makes it conditional: if the scheduler has meanwhile picked
    // another node, that choice is not undone.
    let patch = crate::api::remove_if(
        &["metadata", "annotations", names::ANNOTATION_SELECTED_NODE],
        node,
    );
    match api
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {}
        // 422: the test failed (selected-node changed or is gone); 404: the claim is gone.
        Err(e) if is_status(&e, 422) || is_status(&e, 404) => {
            tracing::debug!(claim = %key, "selected node already changed");
            return Ok(Next::requeue(super::FIRST_RETRY));
        }
        Err(e) => return Err(Error::api("patch", "PersistentVolumeClaim", key)(e)),
    }
    crash::hit(crash::CONTROLLER_RESCHEDULE_NODE_REMOVED);
    ctx.metrics.reschedules.with_label_values(&[reason]).inc();
    tracing::info!(claim = %key, node, reason, "claim rescheduled");
    ctx.recorder
        .record(
            &claim_ref(claim),
            EventType::Warning,
            reasons::PROVISIONING_FAILED,
            message,
        )
        .await;
    Ok(Next::await_change())
}

/// Creates the PV for a Ready LocalVolume (adopting one made for the same claim uid).
async fn create_pv(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    lv: &LocalVolume,
    path: &str,
    ctx: &Context,
) -> Result<Next> {
    let node = lv.spec.node_name.as_str();
    let hostname = match ctx.node_hostname(node).flatten() {
        Some(h) => h,
        None => {
            tracing::warn!(
                node,
                label = names::LABEL_HOSTNAME,
                "node has no hostname label (or no Node object); the PV's node affinity uses the node name"
            );
            node.to_string()
        }
    };
    let pv = volume::persistent_volume(claim, class, lv, path, &hostname, &ctx.config.provisioner);
    let name = lv.name_any();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pp = PostParams {
        field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
        ..PostParams::default()
    };
    match api.create(&pp, &pv).await {
        Ok(_) => crash::hit(crash::CONTROLLER_PROVISION_PV_CREATED),
        Err(e) if is_status(&e, 409) => {
            let existing =
                api.get(&name)
                    .await
                    .map_err(Error::api("get", "PersistentVolume", &name))?;
            let uid = existing
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.clone());
            if uid != claim.metadata.uid {
                return Err(Error::NotOurs {
                    kind: "PersistentVolume",
                    name,
                    uid: claim.metadata.uid.clone().unwrap_or_default(),
                });
            }
            return Ok(Next::requeue(RESYNC));
        }
        Err(e) => {
            let error = Error::api("create", "PersistentVolume", &name)(e);
            record_pv_failed(ctx, &ctx.recorder, claim, &error).await;
            return Err(error);
        }
    }
    let placed = format!(
        "on node {node} ({} in pool \"{}\")",
        lv.spec.size(),
        lv.spec.pool
    );
    record_pv_created(ctx, &ctx.recorder, claim, &name, &placed).await;
    Ok(Next::requeue(RESYNC))
}

#[cfg(test)]
mod tests;
