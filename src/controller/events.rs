//! core/v1 Events, written the way client-go's recorder writes them, so `kubectl describe`
//! shows stowage's Events next to the PV controller's and the scheduler's.
//!
//! A repeat of the same (object, type, reason, message) within [`AGGREGATE_WINDOW`] bumps
//! `count` and `lastTimestamp` of the existing Event instead of creating another, as
//! client-go's correlator does; a controller retrying every few seconds therefore leaves
//! one Event with a count, not hundreds. Recording never fails a reconcile: a failed write
//! is logged and dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::names;

/// How long a repeated Event is folded into the previous one.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

/// Longest message kept; the rest is cut (the API limits notes to 1 KiB).
pub const MAX_MESSAGE: usize = 1024;

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

/// Writes core/v1 Events as one reporting component and instance.
pub struct Recorder {
    client: Client,
    /// `source.component` and `reportingComponent`: the provisioner name.
    component: String,
    /// `source.host` and `reportingInstance`: this replica.
    instance: String,
    recent: Mutex<HashMap<Key, Recent>>,
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
            .field("component", &self.component)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder reporting as `component` (the provisioner name) from `instance`.
    pub fn new(client: Client, component: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            component: component.into(),
            instance: instance.into(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Records an Event about `object`. Never fails; problems are logged.
    pub async fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &'static str,
        message: &str,
    ) {
        let message = truncate(message);
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
        let now = Time(Timestamp::now());
        if let Some(prev) = self.bump(&key) {
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
            involved_object: object.clone(),
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
            Ok(created) => self.remember(key, namespace, created.metadata.name.unwrap_or_default()),
            Err(error) => tracing::warn!(
                error = %error,
                object = %object_name,
                reason,
                "cannot record event"
            ),
        }
    }

    /// The previous Event to fold this one into, with its count already raised.
    fn bump(&self, key: &Key) -> Option<Recent> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let entry = recent.get_mut(key)?;
        if entry.at.elapsed() > AGGREGATE_WINDOW {
            recent.remove(key);
            return None;
        }
        entry.count = entry.count.saturating_add(1);
        entry.at = Instant::now();
        Some(entry.clone())
    }

    fn remember(&self, key: Key, namespace: String, name: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(long.starts_with(&cut));
        assert_eq!(truncate("short"), "short");
    }
}
