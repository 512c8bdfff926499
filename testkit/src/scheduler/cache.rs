//! The stand-in's informers: one watch per kind feeding a reflector store, as kube-scheduler
//! and kube-controller-manager share informers. A change of a node, volume, claim or class
//! bumps [`Cache::changed`]; a pod change names the pod to the scheduling queue.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::PodKey;

/// Reflector stores of the five kinds the stand-in reads.
pub(super) struct Cache {
    pub(super) nodes: Store<Node>,
    pub(super) pods: Store<Pod>,
    pub(super) pvs: Store<PersistentVolume>,
    pub(super) claims: Store<PersistentVolumeClaim>,
    pub(super) classes: Store<StorageClass>,
    /// Bumped after every change of a node, volume, claim or class has reached its store
    /// (what the PV controller and the binding cycles wait for). Pod changes go to the
    /// scheduling queue instead.
    changed: watch::Sender<u64>,
    /// How many of the five stores have listed their kind once.
    listed: watch::Sender<usize>,
}

/// The number of kinds watched.
const KINDS: usize = 5;

impl Cache {
    /// Starts the five watches on `tasks`; pod changes (and every pod after a relist) are
    /// sent to `pod_changes`. The watches end when `stopped` turns true.
    pub(super) fn start(
        client: &Client,
        tasks: &mut JoinSet<()>,
        stopped: &watch::Receiver<bool>,
        pod_changes: mpsc::UnboundedSender<PodKey>,
    ) -> Arc<Cache> {
        let changed = watch::Sender::new(0);
        let listed = watch::Sender::new(0);
        let (nodes, nodes_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let (pvs, pvs_w) = reflector::store();
        let (claims, claims_w) = reflector::store();
        let (classes, classes_w) = reflector::store();
        let pod_store = pods.clone();
        let on_pod = move |change: Change<'_, Pod>| match change {
            Change::Object(pod) => {
                let _ = pod_changes.send(pod_key(pod));
            }
            Change::Relisted => {
                for pod in pod_store.state() {
                    let _ = pod_changes.send(pod_key(&pod));
                }
            }
        };
        tasks.spawn(drive(
            Api::<Node>::all(client.clone()),
            nodes_w,
            (changed.clone(), listed.clone()),
            stopped.clone(),
            ignore::<Node>,
        ));
        tasks.spawn(drive(
            Api::<Pod>::all(client.clone()),
            pods_w,
            (watch::Sender::new(0), listed.clone()),
            stopped.clone(),
            on_pod,
        ));
        tasks.spawn(drive(
            Api::<PersistentVolume>::all(client.clone()),
            pvs_w,
            (changed.clone(), listed.clone()),
            stopped.clone(),
            ignore::<PersistentVolume>,
        ));
        tasks.spawn(drive(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            claims_w,
            (changed.clone(), listed.clone()),
            stopped.clone(),
            ignore::<PersistentVolumeClaim>,
        ));
        tasks.spawn(drive(
            Api::<StorageClass>::all(client.clone()),
            classes_w,
            (changed.clone(), listed.clone()),
            stopped.clone(),
            ignore::<StorageClass>,
        ));
        Arc::new(Cache {
            nodes,
            pods,
            pvs,
            claims,
            classes,
            changed,
            listed,
        })
    }

    /// Resolves once every store has listed its kind once (`false`: the watches ended).
    /// (`Store::wait_until_ready` wakes only one of several waiting tasks.)
    pub(super) async fn ready(&self) -> bool {
        self.listed
            .subscribe()
            .wait_for(|n| *n >= KINDS)
            .await
            .is_ok()
    }

    /// A receiver that sees every later change of a node, volume, claim or class.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) fn pod(&self, (ns, name): &PodKey) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    pub(super) fn claim(&self, ns: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(ns))
    }

    pub(super) fn pv(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.pvs.get(&ObjectRef::new(name))
    }

    pub(super) fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    /// Every claim, keyed by namespace and name.
    pub(super) fn claims_by_key(&self) -> BTreeMap<(String, String), Arc<PersistentVolumeClaim>> {
        self.claims
            .state()
            .into_iter()
            .map(|c| {
                let key = (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                );
                (key, c)
            })
            .collect()
    }

    /// Every volume, keyed by name.
    pub(super) fn pvs_by_name(&self) -> BTreeMap<String, Arc<PersistentVolume>> {
        self.pvs
            .state()
            .into_iter()
            .map(|v| (v.metadata.name.clone().unwrap_or_default(), v))
            .collect()
    }
}

pub(super) fn pod_key(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// For the kinds whose changes only matter through [`Cache::changed`].
fn ignore<K>(_: Change<'_, K>) {}

/// What a watch saw, once its store holds it.
enum Change<'a, K> {
    /// This object was added, changed or deleted.
    Object(&'a K),
    /// The store was replaced by a fresh list (start, or a watch that had to relist).
    Relisted,
}

/// Runs one watch into its store until `stopped`, reporting every change.
async fn drive<K>(
    api: Api<K>,
    writer: Writer<K>,
    (changed, listed): (watch::Sender<u64>, watch::Sender<usize>),
    mut stopped: watch::Receiver<bool>,
    on_change: impl Fn(Change<'_, K>) + Send + 'static,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let mut events = std::pin::pin!(events);
    let mut first_list = true;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match event {
            // The reflector has applied the event to the store before yielding it.
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o))) => {
                on_change(Change::Object(&o));
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if std::mem::take(&mut first_list) {
                    listed.send_modify(|n| *n += 1);
                }
                on_change(Change::Relisted);
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "scheduler stand-in: watch failed"),
            None => return,
        }
    }
}
