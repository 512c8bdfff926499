//! The LocalVolume reconciler: makes, grows, deletes, archives or retains the volumes of this
//! node's LocalVolumes and reports through their status subresource.
//!
//! ```text
//!   LocalVolume (label stowage.io/node=<node>) ──plan()──▶ Plan ──execute()──▶ driver + status
//!                                                                   └─ on error: status Failed
//!                                                                      (Deleting), Warning Event,
//!                                                                      requeue with backoff
//! ```
//!
//! Every step is idempotent, so an agent killed anywhere converges when it restarts: a
//! volume made before the crash but not yet reported is "made" again (a no-op) and then
//! reported; a finalizer is removed only after the data was dealt with. A volume once reported
//! made is never made again: if its directory vanished, the status says so instead of
//! offering pods an empty directory in place of their data.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::events::{EventType, Recorder};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use super::driver::{PoolDriver, VolumeError};
use super::metrics::{Metrics, OpResult, Operation};
use super::path::{NameError, VolumeName};
use super::pool::VolumeMode;
use super::pool_set::{PoolSet, Unavailable};
use crate::api::local_volume::{LocalVolume, LocalVolumePhase, LocalVolumeStatus, OnDelete};
use crate::api::names::{FIELD_MANAGER_AGENT, FINALIZER_AGENT_CLEANUP};
use crate::crash;
use crate::ledger::Bytes;
use crate::runtime::{Backoff, Failures, error_chain};

/// How often a settled volume is looked at again without any change (a safety net that
/// also notices a volume directory that vanished).
pub const RESYNC: Duration = Duration::from_secs(300);

/// First retry delay after a failure; doubles with each further failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Longest retry delay after transient failures (API errors).
pub const BACKOFF_CAP_TRANSIENT: Duration = Duration::from_secs(10);

/// Longest retry delay after failures a person has to fix (unknown pool, hostile paths).
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What the reconciler shares between reconciles.
pub struct Context {
    client: Client,
    node: String,
    pools: Arc<Mutex<PoolSet>>,
    metrics: Metrics,
    recorder: Recorder,
    changed: Arc<Notify>,
    failures: Failures,
}

impl Context {
    /// A context for the agent of `node`. `changed` is notified after every reconcile so
    /// that the reporter recomputes the StorageNode status.
    pub fn new(
        client: Client,
        node: String,
        pools: Arc<Mutex<PoolSet>>,
        metrics: Metrics,
        changed: Arc<Notify>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), FIELD_MANAGER_AGENT, node.clone());
        Context {
            client,
            node,
            pools,
            metrics,
            recorder,
            changed,
            failures: Failures::default(),
        }
    }

    fn api(&self) -> Api<LocalVolume> {
        Api::all(self.client.clone())
    }

    fn driver(&self, volume: &str, pool: &str) -> Result<(PoolDriver, VolumeMode), Error> {
        let mut pools = self.pools.lock();
        pools.driver(pool).map_err(|why| match why {
            Unavailable::Unknown { configured } => Error::UnknownPool {
                volume: volume.to_string(),
                pool: pool.to_string(),
                node: self.node.clone(),
                configured: configured.join(", "),
            },
            Unavailable::NotReady { reason } => Error::PoolNotReady {
                volume: volume.to_string(),
                pool: pool.to_string(),
                node: self.node.clone(),
                reason,
            },
        })
    }

    fn is_known_pool(&self, pool: &str) -> bool {
        let pools = self.pools.lock();
        pools.pools().iter().any(|p| p.spec.name.as_str() == pool)
    }

    /// Runs a filesystem operation off the async threads, timed and counted as `op`.
    async fn run<T, F>(&self, op: Operation, volume: &str, pool: &str, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, VolumeError> + Send + 'static,
    {
        let timer = self.metrics.time(op);
        let outcome = tokio::task::spawn_blocking(f).await;
        timer.observe_duration();
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Volume {
                volume: volume.to_string(),
                pool: pool.to_string(),
                op: op.as_str(),
                source: Box::new(source),
            }),
            Err(source) => Err(Error::Join {
                volume: volume.to_string(),
                op: op.as_str(),
                source,
            }),
        };
        let label = if result.is_ok() {
            OpResult::Success
        } else {
            OpResult::Error
        };
        self.metrics.count(op, label);
        result
    }

    /// Writes `status` unless the object already has it; true when written.
    async fn write_status(
        &self,
        lv: &LocalVolume,
        status: LocalVolumeStatus,
    ) -> Result<bool, Error> {
        if lv.status.as_ref() == Some(&status) {
            return Ok(false);
        }
        let name = lv.name_any();
        // Explicit nulls: a merge patch leaves out fields it does not mention, and a stale
        // `message` must go once the volume is fine.
        let patch = json!({ "status": {
            "phase": status.phase,
            "path": status.path,
            "sizeBytes": status.size_bytes,
            "size": status.size,
            "message": status.message,
            "observedGeneration": status.observed_generation,
        }});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER_AGENT.to_string()),
            ..PatchParams::default()
        };
        match self
            .api()
            .patch_status(&name, &params, &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(source) => Err(Error::Kube {
                volume: name,
                what: "write its status",
                source,
            }),
        }
    }

    /// Removes this agent's finalizer, and only it: a JSON patch that tests the entry at its
    /// index before removing it, so a concurrent change to the list fails the patch (422)
    /// instead of dropping someone else's finalizer; the retry sees the new list.
    async fn release(&self, lv: &LocalVolume) -> Result<(), Error> {
        let name = lv.name_any();
        let Some(patch) = crate::api::remove_finalizer(lv.finalizers(), FINALIZER_AGENT_CLEANUP)
        else {
            return Ok(());
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER_AGENT.to_string()),
            ..PatchParams::default()
        };
        match self
            .api()
            .patch(&name, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Kube {
                volume: name,
                what: "remove its finalizer",
                source,
            }),
        }
    }

    async fn warn(&self, lv: &LocalVolume, reason: &'static str, note: String) {
        // The recorder writes in the background and cuts the note to the API's limit.
        self.recorder
            .record(&lv.object_ref(&()), EventType::Warning, reason, &note)
            .await;
    }

    /// Reports a failed reconcile: status Failed (Deleting while being deleted) with the
    /// error chain as message, and a Warning Event when the status changed.
    async fn report_failure(&self, lv: &LocalVolume, error: &Error) {
        let message = error_chain(error);
        let old = lv.status.clone().unwrap_or_default();
        let phase = if lv.metadata.deletion_timestamp.is_some() {
            LocalVolumePhase::Deleting
        } else {
            LocalVolumePhase::Failed
        };
        let status = LocalVolumeStatus {
            phase,
            message: Some(message.clone()),
            observed_generation: lv.metadata.generation,
            ..old
        };
        match self.write_status(lv, status).await {
            Ok(true) => self.warn(lv, error.reason(), message).await,
            Ok(false) => {}
            Err(write) => {
                tracing::warn!(volume = %lv.name_any(), error = %error_chain(&write), "cannot report the failure");
            }
        }
    }
}

/// What to do about one LocalVolume; its `Debug` form is what the debug log records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not this node's volume, or being deleted without this agent's finalizer.
    Nothing,
    /// The name is not one the controller makes: refuse to touch the filesystem.
    RefuseName(NameError),
    /// Make the volume (idempotent), then report it Ready.
    Create {
        /// The volume.
        name: VolumeName,
        /// Its pool.
        pool: String,
        /// The requested size.
        size: Bytes,
    },
    /// The status says the volume was made: check that it is still there.
    Verify {
        /// The volume.
        name: VolumeName,
        /// Its pool.
        pool: String,
        /// The size made.
        size: Bytes,
    },
    /// Raise the volume's size.
    Grow {
        /// The volume.
        name: VolumeName,
        /// Its pool.
        pool: String,
        /// The size made so far.
        from: Bytes,
        /// The size asked for.
        to: Bytes,
    },
    /// A smaller size was asked for: refuse, keep the data.
    RefuseShrink {
        /// The size made.
        from: Bytes,
        /// The smaller size asked for.
        to: Bytes,
    },
    /// Deal with the data as `onDelete` says, then remove the finalizer.
    Cleanup {
        /// The volume; `None` when the name was never valid, so nothing was ever made.
        name: Option<VolumeName>,
        /// Its pool.
        pool: String,
        /// What to do with the data.
        on_delete: OnDelete,
        /// Whether the status ever reported the volume made.
        made: bool,
    },
}

/// Decides what to do about `lv` on `node`. Pure.
pub fn plan(lv: &LocalVolume, node: &str) -> Plan {
    if lv.spec.node_name != node {
        return Plan::Nothing;
    }
    let status = lv.status.clone().unwrap_or_default();
    let pool = lv.spec.pool.clone();
    let parsed = VolumeName::parse(&lv.name_any());
    if lv.metadata.deletion_timestamp.is_some() {
        if !lv.finalizers().iter().any(|f| f == FINALIZER_AGENT_CLEANUP) {
            return Plan::Nothing;
        }
        return Plan::Cleanup {
            name: parsed.ok(),
            pool,
            on_delete: lv.spec.on_delete,
            made: status.path.is_some(),
        };
    }
    let name = match parsed {
        Ok(name) => name,
        Err(e) => return Plan::RefuseName(e),
    };
    let want = lv.spec.size();
    if status.path.is_none() {
        return Plan::Create {
            name,
            pool,
            size: want,
        };
    }
    let made = Bytes(status.size_bytes.unwrap_or(0));
    if want > made {
        Plan::Grow {
            name,
            pool,
            from: made,
            to: want,
        }
    } else if want < made {
        Plan::RefuseShrink {
            from: made,
            to: want,
        }
    } else {
        Plan::Verify {
            name,
            pool,
            size: made,
        }
    }
}

/// Reconciles one LocalVolume: plan, execute, report. Handed to kube-runtime's `Controller`.
pub async fn reconcile(lv: Arc<LocalVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = lv.name_any();
    let plan = plan(&lv, &ctx.node);
    tracing::debug!(volume = %name, ?plan, "plan");
    let result = execute(&lv, plan, &ctx).await;
    ctx.changed.notify_one();
    match result {
        Ok(action) => {
            ctx.failures.succeeded(&name);
            Ok(action)
        }
        Err(error) => {
            ctx.report_failure(&lv, &error).await;
            Err(error)
        }
    }
}

/// Requeues a failed LocalVolume after an exponential backoff that starts at
/// [`BACKOFF_BASE`] and is capped by the kind of error. Handed to kube-runtime's `Controller`.
pub fn error_policy(lv: Arc<LocalVolume>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.failures.failed(&lv.name_any());
    let cap = if error.is_transient() {
        BACKOFF_CAP_TRANSIENT
    } else {
        BACKOFF_CAP
    };
    let delay = backoff(attempt, cap);
    tracing::warn!(
        volume = %lv.name_any(),
        reason = error.reason(),
        attempt,
        retry_in = ?delay,
        error = %error_chain(error),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `BACKOFF_BASE × 2^(attempt−1)`, at most `cap` ([`Backoff`], shared with the controller).
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    Backoff::new(BACKOFF_BASE, cap).delay(attempt)
}

fn ready(
    lv: &LocalVolume,
    path: String,
    size: Bytes,
    message: Option<String>,
) -> LocalVolumeStatus {
    LocalVolumeStatus {
        phase: LocalVolumePhase::Ready,
        path: Some(path),
        size_bytes: Some(size.0),
        size: Some(size.to_string()),
        message,
        observed_generation: lv.metadata.generation,
    }
}

async fn execute(lv: &LocalVolume, plan: Plan, ctx: &Context) -> Result<Action, Error> {
    let volume = lv.name_any();
    match plan {
        Plan::Nothing => Ok(Action::await_change()),
        Plan::RefuseName(source) => Err(Error::InvalidName { volume, source }),
        Plan::Create { name, pool, size } => {
            let (driver, mode) = ctx.driver(&volume, &pool)?;
            let path = ctx
                .run(Operation::Create, &volume, &pool, move || {
                    driver.create(&name, size, mode)
                })
                .await?;
            crash::hit(crash::AGENT_CREATE_MADE);
            let path = path.display().to_string();
            ctx.write_status(lv, ready(lv, path.clone(), size, None))
                .await?;
            tracing::info!(volume = %volume, pool = %pool, path = %path, size = size.0, "volume ready");
            Ok(Action::requeue(RESYNC))
        }
        Plan::Grow {
            name,
            pool,
            from,
            to,
        } => {
            let (driver, _) = ctx.driver(&volume, &pool)?;
            let path = driver.root().volume_path(&name).display().to_string();
            ctx.run(Operation::Grow, &volume, &pool, move || {
                driver.grow(&name, to)
            })
            .await?;
            crash::hit(crash::AGENT_GROW_RAISED);
            ctx.write_status(lv, ready(lv, path, to, None)).await?;
            tracing::info!(volume = %volume, pool = %pool, from = from.0, to = to.0, "volume grown");
            Ok(Action::requeue(RESYNC))
        }
        Plan::RefuseShrink { from, to } => {
            let message = format!(
                "LocalVolume {volume}: spec.sizeBytes {} is smaller than the volume's {} bytes; volumes cannot shrink, the data is untouched and the volume keeps its size. Set spec.sizeBytes back to at least {}",
                to.0, from.0, from.0
            );
            let old = lv.status.clone().unwrap_or_default();
            let status = LocalVolumeStatus {
                message: Some(message.clone()),
                observed_generation: lv.metadata.generation,
                ..old
            };
            if ctx.write_status(lv, status).await? {
                ctx.warn(lv, "ShrinkRefused", message).await;
            }
            Ok(Action::requeue(RESYNC))
        }
        Plan::Verify { name, pool, size } => {
            let (driver, _) = ctx.driver(&volume, &pool)?;
            let path = driver.root().volume_path(&name);
            let check = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || driver.root().check_inside(&path)).await
            };
            let entry = match check {
                Ok(Ok(entry)) => entry,
                Ok(Err(source)) => {
                    return Err(Error::Volume {
                        volume,
                        pool,
                        op: "check",
                        source: Box::new(source.into()),
                    });
                }
                Err(source) => {
                    return Err(Error::Join {
                        volume,
                        op: "check",
                        source,
                    });
                }
            };
            match entry {
                Some(meta) if meta.is_dir() => {
                    ctx.write_status(lv, ready(lv, path.display().to_string(), size, None))
                        .await?;
                    Ok(Action::requeue(RESYNC))
                }
                Some(_) => Err(Error::Volume {
                    volume,
                    pool,
                    op: "check",
                    source: Box::new(VolumeError::NotADirectory { path }),
                }),
                None => Err(Error::DataMissing {
                    volume,
                    pool,
                    path: path.display().to_string(),
                }),
            }
        }
        Plan::Cleanup {
            name,
            pool,
            on_delete,
            made,
        } => {
            cleanup(lv, ctx, name, &pool, on_delete, made).await?;
            ctx.release(lv).await?;
            Ok(Action::await_change())
        }
    }
}

async fn cleanup(
    lv: &LocalVolume,
    ctx: &Context,
    name: Option<VolumeName>,
    pool: &str,
    on_delete: OnDelete,
    made: bool,
) -> Result<(), Error> {
    let volume = lv.name_any();
    let Some(name) = name else {
        tracing::info!(volume = %volume, "releasing a LocalVolume whose name was never valid; nothing was made");
        return Ok(());
    };
    if on_delete == OnDelete::Retain {
        // The data stays. A staging leftover of a create killed before its rename never
        // held the claim's data and has no owner once this LocalVolume is gone: remove it.
        // A pool that cannot be used now does not hold the release hostage (the leftover,
        // if any, then stays; it is not a volume to the agent's scan).
        if let Ok((driver, _)) = ctx.driver(&volume, pool) {
            let name = name.clone();
            ctx.run(Operation::Retain, &volume, pool, move || {
                driver.discard_staging(&name)
            })
            .await?;
        } else {
            ctx.metrics.count(Operation::Retain, OpResult::Success);
        }
        tracing::info!(volume = %volume, pool = %pool, "volume retained; its data stays on the node");
        return Ok(());
    }
    // A volume never reported made in a pool this node does not have cannot hold data: the
    // create would have failed. Do not hold its deletion hostage to a pool that never was.
    if !made && !ctx.is_known_pool(pool) {
        tracing::info!(volume = %volume, pool = %pool, "releasing a LocalVolume of an unknown pool; nothing was made");
        return Ok(());
    }
    let (driver, _) = ctx.driver(&volume, pool)?;
    match on_delete {
        OnDelete::Delete => {
            ctx.run(Operation::Delete, &volume, pool, move || {
                driver.delete(&name)
            })
            .await?;
            crash::hit(crash::AGENT_DELETE_DELETED);
            tracing::info!(volume = %volume, pool = %pool, "volume deleted");
        }
        OnDelete::Archive => {
            let now = SystemTime::now();
            let moved = ctx
                .run(Operation::Archive, &volume, pool, move || {
                    // As for retain: a staging leftover holds no data to archive.
                    driver.discard_staging(&name)?;
                    driver.archive(&name, now)
                })
                .await?;
            crash::hit(crash::AGENT_DELETE_ARCHIVED);
            match moved {
                Some(to) => {
                    tracing::info!(volume = %volume, pool = %pool, to = %to.display(), "volume archived")
                }
                None => tracing::info!(volume = %volume, pool = %pool, "volume already archived"),
            }
        }
        OnDelete::Retain => {}
    }
    Ok(())
}

/// Why reconciling a LocalVolume failed. The message names the LocalVolume and says what
/// fixes it; [`Error::reason`] is the Event reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's name is not `pvc-<uuid>`.
    #[error(
        "LocalVolume {volume} was not made by the stowage controller (which names volumes pvc-<claim uid>); the agent will not touch the filesystem for it: delete the object"
    )]
    InvalidName {
        /// The LocalVolume.
        volume: String,
        /// What is wrong with the name.
        #[source]
        source: NameError,
    },
    /// `spec.pool` is not configured on this node.
    #[error(
        "LocalVolume {volume} asks for pool {pool:?}, which is not configured on node {node} (configured: {configured}); add the pool to the agent's pool config on that node, or recreate the claim with a StorageClass whose `pool` parameter names a configured pool"
    )]
    UnknownPool {
        /// The LocalVolume.
        volume: String,
        /// The pool asked for.
        pool: String,
        /// This node.
        node: String,
        /// The pools that are configured, comma-separated.
        configured: String,
    },
    /// The pool exists in the config but cannot be used.
    #[error(
        "LocalVolume {volume}: pool {pool:?} on node {node} is not ready: {reason}; fix the pool on the node and the agent retries by itself"
    )]
    PoolNotReady {
        /// The LocalVolume.
        volume: String,
        /// The pool.
        pool: String,
        /// This node.
        node: String,
        /// Why the pool is not ready.
        reason: String,
    },
    /// The driver refused or failed (an unsafe path, a file in the way, an I/O error).
    #[error("LocalVolume {volume}: cannot {op} the volume in pool {pool:?}")]
    Volume {
        /// The LocalVolume.
        volume: String,
        /// The pool.
        pool: String,
        /// The operation.
        op: &'static str,
        /// What the driver said (it says what to do); boxed to keep `Error` small.
        #[source]
        source: Box<VolumeError>,
    },
    /// A volume reported made is no longer on disk.
    #[error(
        "LocalVolume {volume}: its directory {path} in pool {pool:?} is gone, so the data is lost or the pool's disk is not mounted; the agent does not recreate it empty: mount the disk again, or delete the claim"
    )]
    DataMissing {
        /// The LocalVolume.
        volume: String,
        /// The pool.
        pool: String,
        /// Where the volume was.
        path: String,
    },
    /// A write to the API server failed.
    #[error("LocalVolume {volume}: cannot {what}")]
    Kube {
        /// The LocalVolume.
        volume: String,
        /// What was being written.
        what: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The filesystem task died.
    #[error("LocalVolume {volume}: the {op} task did not finish")]
    Join {
        /// The LocalVolume.
        volume: String,
        /// The operation.
        op: &'static str,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// The Event reason (PascalCase, a closed set).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "InvalidVolumeName",
            Error::UnknownPool { .. } => "UnknownPool",
            Error::PoolNotReady { .. } => "PoolNotReady",
            Error::Volume { op, .. } => match *op {
                "create" => "CreateFailed",
                "delete" => "DeleteFailed",
                "archive" => "ArchiveFailed",
                "grow" => "GrowFailed",
                _ => "VolumeCheckFailed",
            },
            Error::DataMissing { .. } => "VolumeMissing",
            Error::Kube { .. } => "ApiWriteFailed",
            Error::Join { .. } => "TaskFailed",
        }
    }

    /// True for failures that go away by themselves (API errors); false for those a person
    /// has to fix, which are retried more slowly.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kube { .. } | Error::Join { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::local_volume::{ClaimRef, LocalVolumeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const NAME: &str = "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn lv(name: &str, size: u64) -> LocalVolume {
        let mut lv = LocalVolume::new(
            name,
            LocalVolumeSpec {
                node_name: "n1".into(),
                pool: "fast".into(),
                size_bytes: size,
                claim: ClaimRef::default(),
                on_delete: OnDelete::Archive,
            },
        );
        lv.metadata.generation = Some(1);
        lv.metadata.finalizers = Some(vec![FINALIZER_AGENT_CLEANUP.into()]);
        lv
    }

    fn made(mut lv: LocalVolume, size: u64) -> LocalVolume {
        lv.status = Some(LocalVolumeStatus {
            phase: LocalVolumePhase::Ready,
            path: Some(format!("/p/{}", lv.name_any())),
            size_bytes: Some(size),
            size: None,
            message: None,
            observed_generation: Some(1),
        });
        lv
    }

    fn deleting(mut lv: LocalVolume) -> LocalVolume {
        lv.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        lv
    }

    fn name() -> VolumeName {
        VolumeName::parse(NAME).unwrap()
    }

    #[test]
    fn plans_follow_the_volume_through_its_life() {
        let pool = || "fast".to_string();
        let cases: Vec<(&str, LocalVolume, Plan)> = vec![
            (
                "new volume is created",
                lv(NAME, 10),
                Plan::Create {
                    name: name(),
                    pool: pool(),
                    size: Bytes(10),
                },
            ),
            (
                "failed before it was made: created again",
                {
                    let mut v = lv(NAME, 10);
                    v.status = Some(LocalVolumeStatus {
                        phase: LocalVolumePhase::Failed,
                        message: Some("pool not ready".into()),
                        ..Default::default()
                    });
                    v
                },
                Plan::Create {
                    name: name(),
                    pool: pool(),
                    size: Bytes(10),
                },
            ),
            (
                "made at its size: verified",
                made(lv(NAME, 10), 10),
                Plan::Verify {
                    name: name(),
                    pool: pool(),
                    size: Bytes(10),
                },
            ),
            (
                "asked for more: grown",
                made(lv(NAME, 20), 10),
                Plan::Grow {
                    name: name(),
                    pool: pool(),
                    from: Bytes(10),
                    to: Bytes(20),
                },
            ),
            (
                "asked for less: refused",
                made(lv(NAME, 5), 10),
                Plan::RefuseShrink {
                    from: Bytes(10),
                    to: Bytes(5),
                },
            ),
            (
                "deleted with our finalizer: cleaned up",
                deleting(made(lv(NAME, 10), 10)),
                Plan::Cleanup {
                    name: Some(name()),
                    pool: pool(),
                    on_delete: OnDelete::Archive,
                    made: true,
                },
            ),
            (
                "deleted before it was made",
                deleting(lv(NAME, 10)),
                Plan::Cleanup {
                    name: Some(name()),
                    pool: pool(),
                    on_delete: OnDelete::Archive,
                    made: false,
                },
            ),
            (
                "deleted without our finalizer: nothing",
                {
                    let mut v = deleting(lv(NAME, 10));
                    v.metadata.finalizers = Some(vec!["example.com/other".into()]);
                    v
                },
                Plan::Nothing,
            ),
            (
                "another node's volume: nothing",
                {
                    let mut v = lv(NAME, 10);
                    v.spec.node_name = "n2".into();
                    v
                },
                Plan::Nothing,
            ),
            (
                "a name with .. is refused",
                lv("pvc-..", 10),
                Plan::RefuseName(VolumeName::parse("pvc-..").unwrap_err()),
            ),
            (
                "a deleted invalid name is released without a path",
                deleting(lv("data", 10)),
                Plan::Cleanup {
                    name: None,
                    pool: pool(),
                    on_delete: OnDelete::Archive,
                    made: false,
                },
            ),
        ];
        for (what, volume, want) in cases {
            assert_eq!(plan(&volume, "n1"), want, "{what}");
        }
    }

    #[test]
    fn backoff_starts_well_under_a_second_doubles_and_is_capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, cap), Duration::from_millis(100));
        assert_eq!(backoff(2, cap), Duration::from_millis(200));
        assert_eq!(backoff(5, cap), Duration::from_millis(1600));
        assert_eq!(backoff(30, cap), cap);
        assert_eq!(backoff(u32::MAX, cap), cap);
        assert_eq!(backoff(0, cap), Duration::from_millis(100));
    }

    #[test]
    fn error_messages_name_the_volume_the_pool_and_the_fix() {
        let e = Error::UnknownPool {
            volume: NAME.into(),
            pool: "slow".into(),
            node: "n1".into(),
            configured: "fast, bulk".into(),
        };
        let text = error_chain(&e);
        for part in [NAME, "\"slow\"", "n1", "fast, bulk", "add the pool"] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        assert_eq!(e.reason(), "UnknownPool");
        assert!(!e.is_transient());
        let e = Error::Volume {
            volume: NAME.into(),
            pool: "fast".into(),
            op: "create",
            source: Box::new(VolumeError::NotADirectory {
                path: "/p/x".into(),
            }),
        };
        let text = error_chain(&e);
        assert!(text.contains("cannot create"), "{text}");
        assert!(
            text.contains("/p/x exists but is not a directory"),
            "{text}"
        );
        assert_eq!(e.reason(), "CreateFailed");
    }
}
