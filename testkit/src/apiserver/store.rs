//! Object storage with a single, etcd-like resourceVersion counter and a bounded history of
//! changes, from which watches resume and paginated lists read consistent snapshots.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{kinds::GroupResource, util::Rng, validate::Lookup};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Ordered like etcd
/// keys, so lists come back sorted by namespace, then name.
pub(crate) type Key = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed write.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub storage: GroupResource,
    pub kind: ChangeType,
    pub key: Key,
    /// The object after the write; for a delete, its last state with the deletion's RV.
    pub object: Value,
    /// The object before the write (`None` for a create).
    pub prev: Option<Value>,
    /// `object` as served, encoded once per API version and representation and shared by
    /// every watcher that sends it (see [`Change::served`]).
    pub served: std::sync::Mutex<Vec<(String, super::watch::Repr, axum::body::Bytes)>>,
}

impl Change {
    /// `object` encoded as `encode` makes it for `api_version` and `repr`: made by the first
    /// watcher that needs it, then shared, as the real server's watch cache shares one
    /// serialization among its watchers.
    pub(crate) fn served(
        &self,
        api_version: &str,
        repr: super::watch::Repr,
        encode: impl FnOnce(&Value) -> Vec<u8>,
    ) -> axum::body::Bytes {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, bytes)) = served
            .iter()
            .find(|(v, r, _)| v == api_version && *r == repr)
        {
            return bytes.clone();
        }
        let bytes = axum::body::Bytes::from(encode(&self.object));
        served.push((api_version.to_string(), repr, bytes.clone()));
        bytes
    }
}

/// All objects of all kinds.
pub(crate) struct Store {
    rv: u64,
    objects: HashMap<GroupResource, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Every change with an RV above this is still in `history`.
    floor: u64,
    tx: broadcast::Sender<Arc<Change>>,
    /// uid → where the object is stored.
    uids: HashMap<String, (GroupResource, Key)>,
    /// owner uid → objects whose `ownerReferences` name it.
    dependents: HashMap<String, BTreeSet<(GroupResource, Key)>>,
    pub rng: Rng,
}

fn uid_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["uid"].as_str()
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        // The channel holds a little more than the history, so a watcher that is as far
        // behind as the history is long gets `Lagged` (and is closed) rather than silently
        // missing events.
        let (tx, _) = broadcast::channel(history_limit.max(16) + 16);
        Self {
            rv: 0,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 0,
            tx,
            uids: HashMap::new(),
            dependents: HashMap::new(),
            rng: Rng::from_time(),
        }
    }

    /// The latest resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can still start from.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(gr)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// All objects of a resource, optionally restricted to one namespace, in key order.
    pub(crate) fn list(&self, gr: &GroupResource, ns: Option<&str>) -> Vec<(&Key, &Value)> {
        self.objects
            .get(gr)
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Objects of every resource in one namespace (for namespace deletion).
    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<(GroupResource, Key)> {
        let mut out: Vec<(GroupResource, Key)> = self
            .objects
            .iter()
            .flat_map(|(gr, m)| {
                m.keys()
                    .filter(|(n, _)| n == ns)
                    .map(move |k| (gr.clone(), k.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether an object with this uid exists.
    pub(crate) fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// The objects whose `ownerReferences` name `uid`.
    pub(crate) fn dependents_of(&self, uid: &str) -> Vec<(GroupResource, Key)> {
        self.dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn unindex(&mut self, gr: &GroupResource, key: &Key, obj: &Value) {
        if let Some(uid) = uid_of(obj) {
            self.uids.remove(uid);
        }
        for owner in owner_uids(obj) {
            if let Some(d) = self.dependents.get_mut(owner) {
                d.remove(&(gr.clone(), key.clone()));
                if d.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    fn index(&mut self, gr: &GroupResource, key: &Key, obj: &Value) {
        if let Some(uid) = uid_of(obj) {
            self.uids.insert(uid.to_string(), (gr.clone(), key.clone()));
        }
        for owner in owner_uids(obj) {
            self.dependents
                .entry(owner.to_string())
                .or_default()
                .insert((gr.clone(), key.clone()));
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change.clone());
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }

    /// Stores an object (create or replace), stamping a new resourceVersion. Returns the
    /// stored object.
    pub(crate) fn put(&mut self, gr: &GroupResource, mut obj: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let prev = self
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key.clone(), obj.clone());
        if let Some(p) = &prev {
            self.unindex(gr, &key, p);
        }
        self.index(gr, &key, &obj);
        let kind = if prev.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        self.record(Change {
            rv,
            storage: gr.clone(),
            kind,
            key,
            object: obj.clone(),
            prev,
            served: Default::default(),
        });
        obj
    }

    /// Removes an object, recording a DELETED change whose object carries the deletion's
    /// resourceVersion. Returns that object.
    pub(crate) fn remove(&mut self, gr: &GroupResource, key: &Key) -> Option<Value> {
        let prev = self.objects.get_mut(gr)?.remove(key)?;
        self.unindex(gr, key, &prev);
        self.rv += 1;
        let rv = self.rv;
        let mut last = prev.clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(Change {
            rv,
            storage: gr.clone(),
            kind: ChangeType::Deleted,
            key: key.clone(),
            object: last.clone(),
            prev: Some(prev),
            served: Default::default(),
        });
        Some(last)
    }

    /// Changes after `rv`, or `None` if some have already been dropped from the history.
    pub(crate) fn changes_since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.floor {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// The objects of one resource as they were at `rv` (MVCC read), rebuilt by undoing the
    /// newer changes; `None` if the history no longer reaches back that far.
    pub(crate) fn snapshot_at(
        &self,
        gr: &GroupResource,
        rv: u64,
    ) -> Option<Cow<'_, BTreeMap<Key, Value>>> {
        if rv < self.floor {
            return None;
        }
        let unchanged = self
            .history
            .iter()
            .rev()
            .take_while(|c| c.rv > rv)
            .all(|c| c.storage != *gr);
        if unchanged {
            return Some(match self.objects.get(gr) {
                Some(m) => Cow::Borrowed(m),
                None => Cow::Owned(BTreeMap::new()),
            });
        }
        let mut snap = self.objects.get(gr).cloned().unwrap_or_default();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.storage != *gr {
                continue;
            }
            match &change.prev {
                Some(prev) => {
                    snap.insert(change.key.clone(), prev.clone());
                }
                None => {
                    snap.remove(&change.key);
                }
            }
        }
        Some(Cow::Owned(snap))
    }

    /// Drops the whole history, as an etcd compaction would: every older resourceVersion
    /// becomes "too old".
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }
}

impl Lookup for Store {
    fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Value> {
        Store::get(self, gr, ns, name)
    }

    fn all(&self, gr: &GroupResource) -> Vec<&Value> {
        self.list(gr, None).into_iter().map(|(_, v)| v).collect()
    }
}

/// `(namespace, name)` of a stored object.
pub(crate) fn key_of(obj: &Value) -> Key {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "v": v})
    }

    #[test]
    fn snapshots_undo_newer_changes() {
        let gr = GroupResource::new("", "things");
        let mut s = Store::new(100);
        s.put(&gr, obj("a", 1));
        s.put(&gr, obj("b", 1));
        let at = s.rv();
        s.put(&gr, obj("a", 2));
        s.remove(&gr, &("ns".into(), "b".into()));
        s.put(&gr, obj("c", 1));
        let snap = s.snapshot_at(&gr, at).unwrap();
        let names: Vec<&str> = snap.keys().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(snap[&("ns".to_string(), "a".to_string())]["v"], 1);
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let gr = GroupResource::new("", "things");
        let mut s = Store::new(3);
        for i in 0..5 {
            s.put(&gr, obj("a", i));
        }
        assert!(s.changes_since(1).is_none());
        assert_eq!(s.changes_since(2).map(|c| c.len()), Some(3));
        s.compact();
        assert!(s.changes_since(4).is_none());
        assert_eq!(s.changes_since(5).map(|c| c.len()), Some(0));
    }
}
