//! core/v1 Events, written the way client-go's recorder writes them, so `kubectl describe`
//! shows stowage's Events next to the PV controller's and the scheduler's. The controller
//! and the agents both record through [`Recorder`].
//!
//! core/v1, not `events.k8s.io/v1`: Kubernetes 1.19 and 1.20 accept a new-style Event about
//! a cluster-scoped object (a LocalVolume, a PV) only in `kube-system`, where neither the
//! people who look at the object nor a least-privilege role would find or write it; an
//! old-style one goes to `default`, as client-go puts it, on every version.
//!
//! ```text
//!  reconcile ── record() ──try_send──▶ bounded queue (QUEUE_CAPACITY) ──▶ writer task
//!                 │ full: dropped,                                          │ one at a time,
//!                 │ warn + stowage_events_dropped_total                     │ in order
//!                 ▼                                                         ▼
//!              returns at once                        create, or fold a repeat into count
//!  drain ── flush(timeout) ── waits until everything queued so far has been written
//! ```
//!
//! Recording never waits for the API server and never fails a reconcile: as client-go's
//! broadcaster does, the reconcile hands the Event to a bounded queue and a background task
//! writes it. A full queue (the API server far behind) drops the Event with a warning and a
//! count, rather than slowing provisioning down. The timestamps are taken when the Event is
//! recorded, not when it is written.
//!
//! A repeat of the same (object, type, reason, message) within [`AGGREGATE_WINDOW`] bumps
//! `count` and `lastTimestamp` of the existing Event instead of creating another, as
//! client-go's correlator does; a controller retrying every few seconds therefore leaves
//! one Event with a count, not hundreds. A failed write is logged and dropped.
//!
//! Shutdown: [`Recorder::flush`] waits (bounded) for the queue to empty; the controller's
//! drain calls it after the reconcilers stopped and before the Lease is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use prometheus::{IntCounter, Registry};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::api::names;

/// How long a repeated Event is folded into the previous one.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

/// Longest message kept; the rest is cut (the API limits notes to 1 KiB).
pub const MAX_MESSAGE: usize = 1024;

/// Events waiting to be written at most; beyond that [`Recorder::record`] drops them.
/// A 200-claim burst records about 500.
pub const QUEUE_CAPACITY: usize = 4096;

/// The shortest time between two warnings about dropped Events.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Progress worth telling.
    Normal,
    /// Something a person may need to act on.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Writes core/v1 Events as one reporting component and instance, in the background.
/// Clones share the queue and the writer.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    /// The queue; created, with its writer task, on the first [`Recorder::record`] (so a
    /// recorder can be built outside a Tokio runtime).
    queue: OnceLock<mpsc::Sender<Pending>>,
    shared: Arc<Shared>,
    /// Events dropped so far because the queue was full.
    dropped: AtomicU64,
    /// `stowage_events_dropped_total`, once registered.
    dropped_metric: OnceLock<IntCounter>,
    /// When the last warning about dropped Events was logged.
    last_drop_warning: Mutex<Option<Instant>>,
}

/// What the writer task needs; it does not hold the queue's sender, so it ends when the
/// last clone of the recorder is dropped.
struct Shared {
    client: Client,
    /// `source.component` and `reportingComponent`: the provisioner name.
    component: String,
    /// `source.host` and `reportingInstance`: this replica.
    instance: String,
    /// Events accepted into the queue so far.
    queued: AtomicU64,
    /// Events the writer has finished with (written, folded, or failed) so far.
    done: watch::Sender<u64>,
}

/// One recorded Event waiting for the writer.
struct Pending {
    object: ObjectReference,
    type_: EventType,
    reason: &'static str,
    message: String,
    at: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    type_: EventType,
    reason: &'static str,
    message: String,
}

#[derive(Clone, Debug)]
struct Recent {
    namespace: String,
    name: String,
    count: i32,
    at: Instant,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("component", &self.inner.shared.component)
            .field("instance", &self.inner.shared.instance)
            .finish_non_exhaustive()
    }
}

// === impl Recorder ===

impl Recorder {
    /// A recorder reporting as `component` (the provisioner name) from `instance`.
    pub fn new(client: Client, component: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: OnceLock::new(),
                shared: Arc::new(Shared {
                    client,
                    component: component.into(),
                    instance: instance.into(),
                    queued: AtomicU64::new(0),
                    done: watch::Sender::new(0),
                }),
                dropped: AtomicU64::new(0),
                dropped_metric: OnceLock::new(),
                last_drop_warning: Mutex::new(None),
            }),
        }
    }

    /// Registers `stowage_events_dropped_total` (Events dropped because the queue was
    /// full) in `registry`. Once per recorder; a second call is an `AlreadyReg` error.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        let counter = IntCounter::new(
            "stowage_events_dropped_total",
            "Events not written because the queue to the API server was full",
        )?;
        if self.inner.dropped_metric.set(counter.clone()).is_err() {
            return Err(prometheus::Error::AlreadyReg);
        }
        counter.inc_by(self.dropped());
        registry.register(Box::new(counter))
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    /// Records an Event about `object`: queues it for the background writer and returns at
    /// once, without waiting for the API server. Never fails; a full queue drops the Event
    /// (warning logged, `stowage_events_dropped_total` raised), a failed write is logged.
    pub async fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &'static str,
        message: &str,
    ) {
        let pending = Pending {
            object: object.clone(),
            type_,
            reason,
            message: truncate(message),
            at: Time(Timestamp::now()),
        };
        let queue = self.inner.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(write_queued(rx, self.inner.shared.clone()));
            tx
        });
        match queue.try_send(pending) {
            Ok(()) => {
                self.inner.shared.queued.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                let pending = match error {
                    mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
                };
                self.inner.dropped.fetch_add(1, Ordering::SeqCst);
                if let Some(metric) = self.inner.dropped_metric.get() {
                    metric.inc();
                }
                self.warn_dropped(&pending);
            }
        }
    }

    /// Waits until every Event recorded before this call has been written (or has failed
    /// to be), at most `timeout`. Returns whether the queue was flushed in time. The
    /// drain calls it before the Lease is released, so the Events of the last reconciles
    /// are not lost with the process.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.inner.shared.queued.load(Ordering::SeqCst);
        let mut done = self.inner.shared.done.subscribe();
        matches!(
            tokio::time::timeout(timeout, done.wait_for(|n| *n >= target)).await,
            Ok(Ok(_))
        )
    }

    fn warn_dropped(&self, pending: &Pending) {
        let mut last = self.inner.last_drop_warning.lock();
        if last.is_some_and(|at| at.elapsed() < DROP_WARNING_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            object = pending.object.name.as_deref().unwrap_or_default(),
            reason = pending.reason,
            dropped_total = self.dropped(),
            capacity = QUEUE_CAPACITY,
            "event queue full: dropping events (the API server is not keeping up)"
        );
    }
}

/// The writer task: one Event at a time, in the order recorded, so that a repeat is
/// folded into the Event its first occurrence created.
async fn write_queued(mut queue: mpsc::Receiver<Pending>, shared: Arc<Shared>) {
    let mut recent: HashMap<Key, Recent> = HashMap::new();
    while let Some(pending) = queue.recv().await {
        shared.write(&mut recent, pending).await;
        shared.done.send_modify(|n| *n += 1);
    }
}

// === impl Shared ===

impl Shared {
    /// Creates the Event, or folds it into a recent identical one.
    async fn write(&self, recent: &mut HashMap<Key, Recent>, pending: Pending) {
        let Pending {
            object,
            type_,
            reason,
            message,
            at: now,
        } = pending;
        let key = Key {
            uid: object.uid.clone().unwrap_or_default(),
            kind: object.kind.clone().unwrap_or_default(),
            type_,
            reason,
            message: message.clone(),
        };
        // Old-style Events live in the object's namespace, or `default` for cluster-scoped
        // objects (PersistentVolumes), as the API server's validation demands.
        let namespace = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        if let Some(prev) = bump(recent, &key) {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &prev.namespace);
            let patch = json!({"count": prev.count, "lastTimestamp": now});
            match api
                .patch(&prev.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // Expired or deleted meanwhile: fall through and create a fresh one.
                Err(error) => {
                    tracing::debug!(error = %error, event = %prev.name, "cannot update event")
                }
            }
        }
        let object_name = object.name.clone().unwrap_or_default();
        let nanos = now.0.as_nanosecond();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{object_name}.{nanos:x}")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(type_.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: Some(self.instance.clone()),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PostParams {
            field_manager: Some(names::FIELD_MANAGER_CONTROLLER.to_string()),
            ..PostParams::default()
        };
        match api.create(&pp, &event).await {
            Ok(created) => remember(
                recent,
                key,
                namespace,
                created.metadata.name.unwrap_or_default(),
            ),
            Err(error) => tracing::warn!(
                error = %error,
                object = %object_name,
                reason,
                "cannot record event"
            ),
        }
    }
}

/// The previous Event to fold this one into, with its count already raised.
fn bump(recent: &mut HashMap<Key, Recent>, key: &Key) -> Option<Recent> {
    let entry = recent.get_mut(key)?;
    if entry.at.elapsed() > AGGREGATE_WINDOW {
        recent.remove(key);
        return None;
    }
    entry.count = entry.count.saturating_add(1);
    entry.at = Instant::now();
    Some(entry.clone())
}

fn remember(recent: &mut HashMap<Key, Recent>, key: Key, namespace: String, name: String) {
    if recent.len() >= 4096 {
        recent.retain(|_, r| r.at.elapsed() <= AGGREGATE_WINDOW);
    }
    recent.insert(
        key,
        Recent {
            namespace,
            name,
            count: 1,
            at: Instant::now(),
        },
    );
}

/// `message` cut to [`MAX_MESSAGE`] bytes on a character boundary.
fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ListParams;
    use stowage_testkit::ApiServer;

    fn claim_ref(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("PersistentVolumeClaim".to_string()),
            namespace: Some("default".to_string()),
            name: Some(name.to_string()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    async fn events(client: &Client) -> Vec<Event> {
        Api::<Event>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    #[tokio::test]
    async fn record_returns_before_the_api_server_answers_and_flush_waits_for_the_write() {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        server
            .faults()
            .delay_writes_to("events", Duration::from_millis(500));
        let recorder = Recorder::new(client.clone(), "local.stowage.io", "controller-0");

        let started = Instant::now();
        recorder
            .record(&claim_ref("a"), EventType::Normal, "Provisioning", "first")
            .await;
        recorder
            .record(
                &claim_ref("b"),
                EventType::Warning,
                "ProvisioningFailed",
                "second",
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "record waited for the API server: {:?}",
            started.elapsed()
        );
        assert!(
            !recorder.flush(Duration::from_millis(50)).await,
            "two writes held 500 ms each cannot be done in 50 ms"
        );
        assert!(recorder.flush(Duration::from_secs(10)).await);
        let mut written: Vec<_> = events(&client)
            .await
            .into_iter()
            .map(|e| {
                (
                    e.involved_object.name.unwrap(),
                    e.reason.unwrap(),
                    e.type_.unwrap(),
                )
            })
            .collect();
        written.sort();
        assert_eq!(
            written,
            [
                (
                    "a".to_string(),
                    "Provisioning".to_string(),
                    "Normal".to_string()
                ),
                (
                    "b".to_string(),
                    "ProvisioningFailed".to_string(),
                    "Warning".to_string()
                ),
            ]
        );
        assert_eq!(recorder.dropped(), 0);
    }

    #[tokio::test]
    async fn a_repeat_is_folded_into_the_first_event_with_a_count() {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        let recorder = Recorder::new(client.clone(), "local.stowage.io", "controller-0");
        for _ in 0..3 {
            recorder
                .record(
                    &claim_ref("a"),
                    EventType::Warning,
                    "ProvisioningFailed",
                    "full",
                )
                .await;
        }
        recorder
            .record(
                &claim_ref("a"),
                EventType::Warning,
                "ProvisioningFailed",
                "gone",
            )
            .await;
        assert!(recorder.flush(Duration::from_secs(10)).await);
        let mut seen: Vec<_> = events(&client)
            .await
            .into_iter()
            .map(|e| (e.message.unwrap(), e.count))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [("full".to_string(), Some(3)), ("gone".to_string(), Some(1))]
        );
        let source = events(&client).await[0].source.clone().unwrap();
        assert_eq!(source.component.as_deref(), Some("local.stowage.io"));
        assert_eq!(source.host.as_deref(), Some("controller-0"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let server = ApiServer::start().await.unwrap();
        let client = server.client();
        // The writer is stuck on its first write for the whole test.
        server
            .faults()
            .delay_writes_to("events", Duration::from_secs(30));
        let recorder = Recorder::new(client.clone(), "local.stowage.io", "controller-0");
        let registry = Registry::new();
        recorder.register(&registry).unwrap();
        let extra = 10;
        let started = Instant::now();
        for i in 0..QUEUE_CAPACITY + 1 + extra {
            recorder
                .record(
                    &claim_ref("a"),
                    EventType::Normal,
                    "Provisioning",
                    &format!("{i}"),
                )
                .await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "recording blocked on a full queue: {:?}",
            started.elapsed()
        );
        // The queue holds QUEUE_CAPACITY; the writer holds at most one more.
        let dropped = recorder.dropped();
        assert!(
            (extra as u64..=extra as u64 + 1).contains(&dropped),
            "dropped {dropped}"
        );
        let metric = registry
            .gather()
            .into_iter()
            .find(|m| m.name() == "stowage_events_dropped_total")
            .unwrap();
        assert_eq!(
            metric.get_metric()[0].get_counter().get_value() as u64,
            dropped
        );
        assert!(!recorder.flush(Duration::from_millis(100)).await);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(long.starts_with(&cut));
        assert_eq!(truncate("short"), "short");
    }
}
