//! Deletes, and the cascades a real control plane runs asynchronously (finalizers,
//! namespace and CRD cleanup, owner-reference garbage collection), run here synchronously.

use serde_json::{Value, json};

use super::{
    CRD_FINALIZER, DeleteOptions, PV_PROTECTION, PVC_PROTECTION, State, Written, crds, finalizers,
    meta_str, namespaces, ok, pods, pvcs, pvs, to_served,
};
use crate::apiserver::{
    kinds::{Endpoint, GroupResource},
    selectors::Selectors,
    status::{self, ApiError, ApiResult},
    store::{Key, key_of},
    util::now_rfc3339,
};

impl State {
    pub(crate) fn delete(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Written> {
        let old = self
            .store
            .get(&ep.storage, ns, name)
            .cloned()
            .ok_or_else(|| self.not_found(ep, name))?;
        let target = ep.target(name);
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &target,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &target,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        if opts.dry_run {
            return Ok(ok(200, to_served(ep, &old)));
        }
        if opts.orphan {
            self.orphan_dependents(&old);
        }
        let key = key_of(&old);
        let Some((obj, removed)) = self.begin_delete(&ep.storage, &key) else {
            return Err(self.not_found(ep, name));
        };
        if removed && !ep.return_deleted_object {
            let details = json!({"name": name, "group": ep.group, "kind": ep.resource, "uid": meta_str(&obj, "uid").unwrap_or_default()});
            return Ok(ok(200, status::success(200, details)));
        }
        Ok(ok(200, to_served(ep, &obj)))
    }

    pub(crate) fn delete_collection(
        &mut self,
        ep: &Endpoint,
        ns: Option<&str>,
        selectors: &Selectors,
        opts: &DeleteOptions,
    ) -> ApiResult<Written> {
        let keys: Vec<Key> = self
            .store
            .list(&ep.storage, ns)
            .into_iter()
            .filter(|(_, v)| selectors.matches(v))
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = Vec::new();
        for key in keys {
            if opts.dry_run {
                if let Some(o) = self.store.get(&ep.storage, &key.0, &key.1) {
                    items.push(to_served(ep, o));
                }
                continue;
            }
            if let Some((obj, _)) = self.begin_delete(&ep.storage, &key) {
                items.push(to_served(ep, &obj));
            }
        }
        Ok(ok(
            200,
            json!({"kind": ep.list_kind, "apiVersion": ep.api_version(), "metadata": {"resourceVersion": self.store.rv().to_string()}, "items": items}),
        ))
    }

    /// Starts deleting an object: marks it if finalizers (or, for namespaces and CRDs, their
    /// controllers) hold it, removes it otherwise. Returns the object's latest state and
    /// whether it is gone.
    pub(super) fn begin_delete(&mut self, gr: &GroupResource, key: &Key) -> Option<(Value, bool)> {
        let obj = self.store.get(gr, &key.0, &key.1)?.clone();
        if obj["metadata"].get("deletionTimestamp").is_some() {
            return Some((obj, false));
        }
        let is_ns = *gr == namespaces();
        if finalizers(&obj).is_empty() && !is_ns {
            let last = self.store.remove(gr, key)?;
            self.after_removed(gr, &last);
            return Some((last, true));
        }
        let mut marked = obj;
        marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if let Some(g) = marked["metadata"]["generation"].as_i64() {
            marked["metadata"]["generation"] = json!(g + 1);
        }
        if is_ns {
            marked["status"]["phase"] = json!("Terminating");
        }
        let stored = self.store.put(gr, marked);
        if is_ns {
            for (dgr, dkey) in self.store.in_namespace(&key.1) {
                self.begin_delete(&dgr, &dkey);
            }
            self.maybe_finish_namespace(&key.1);
        } else if *gr == crds() {
            let storage = GroupResource::new(
                stored["spec"]["group"].as_str().unwrap_or_default(),
                stored["spec"]["names"]["plural"]
                    .as_str()
                    .unwrap_or_default(),
            );
            let keys: Vec<Key> = self
                .store
                .list(&storage, None)
                .into_iter()
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.begin_delete(&storage, &k);
            }
            self.maybe_finish_crd(&key.1);
        }
        self.release_protection(gr, key);
        let latest = self.store.get(gr, &key.0, &key.1).cloned();
        Some(match latest {
            Some(o) => (o, false),
            None => (stored, true),
        })
    }

    /// The pvc-protection and pv-protection controllers, run at once: a deleting claim that
    /// no pod uses, or a deleting PV that is not Bound, loses its protection finalizer (set
    /// at admission, [`PVC_PROTECTION`], [`PV_PROTECTION`]), and goes when no other is left.
    pub(super) fn release_protection(&mut self, gr: &GroupResource, key: &Key) {
        let Some(obj) = self.store.get(gr, &key.0, &key.1) else {
            return;
        };
        if obj["metadata"].get("deletionTimestamp").is_none() {
            return;
        }
        let finalizer = if *gr == pvcs() {
            if self.claim_in_use(&key.0, &key.1) {
                return;
            }
            PVC_PROTECTION
        } else if *gr == pvs() {
            if obj["status"]["phase"].as_str() == Some("Bound") {
                return;
            }
            PV_PROTECTION
        } else {
            return;
        };
        let fins = finalizers(obj);
        if !fins.iter().any(|f| f == finalizer) {
            return;
        }
        let left: Vec<String> = fins.into_iter().filter(|f| f != finalizer).collect();
        if left.is_empty() {
            // The update that removes a deleting object's last finalizer deletes it: one
            // DELETED event, as the real server sends.
            if let Some(last) = self.store.remove(gr, key) {
                self.after_removed(gr, &last);
            }
        } else {
            let mut obj = obj.clone();
            obj["metadata"]["finalizers"] = json!(left);
            self.store.put(gr, obj);
        }
    }

    /// Whether a pod of `ns` that has not finished mounts claim `name` (directly or as a
    /// generic ephemeral volume).
    fn claim_in_use(&self, ns: &str, name: &str) -> bool {
        self.store
            .list(&pods(), Some(ns))
            .into_iter()
            .any(|(_, pod)| {
                !matches!(
                    pod["status"]["phase"].as_str(),
                    Some("Succeeded" | "Failed")
                ) && pod_claims(pod).iter().any(|c| c == name)
            })
    }

    /// The namespace controller: once a terminating namespace is empty, its `kubernetes`
    /// finalizer goes, and then the namespace.
    pub(super) fn maybe_finish_namespace(&mut self, ns: &str) {
        let Some(obj) = self.store.get(&namespaces(), "", ns).cloned() else {
            return;
        };
        if obj["metadata"].get("deletionTimestamp").is_none()
            || !self.store.in_namespace(ns).is_empty()
        {
            return;
        }
        let mut obj = obj;
        let spec_fins = obj["spec"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if spec_fins.iter().any(|f| f == "kubernetes") {
            obj["spec"]["finalizers"] = json!(
                spec_fins
                    .into_iter()
                    .filter(|f| f != "kubernetes")
                    .collect::<Vec<_>>()
            );
            obj = self.store.put(&namespaces(), obj);
        }
        let spec_left = obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if finalizers(&obj).is_empty()
            && !spec_left
            && let Some(last) = self
                .store
                .remove(&namespaces(), &(String::new(), ns.to_string()))
        {
            self.after_removed(&namespaces(), &last);
        }
    }

    /// The CRD finalizer controller: once a terminating CRD has no objects left, its cleanup
    /// finalizer goes, and then the CRD.
    pub(super) fn maybe_finish_crd(&mut self, name: &str) {
        let Some(crd) = self.store.get(&crds(), "", name).cloned() else {
            return;
        };
        let storage = GroupResource::new(
            crd["spec"]["group"].as_str().unwrap_or_default(),
            crd["spec"]["names"]["plural"].as_str().unwrap_or_default(),
        );
        if crd["metadata"].get("deletionTimestamp").is_none()
            || !self.store.list(&storage, None).is_empty()
        {
            return;
        }
        let mut crd = crd;
        let fins = finalizers(&crd);
        if fins.iter().any(|f| f == CRD_FINALIZER) {
            crd["metadata"]["finalizers"] = json!(
                fins.into_iter()
                    .filter(|f| f != CRD_FINALIZER)
                    .collect::<Vec<_>>()
            );
            crd = self.store.put(&crds(), crd);
        }
        if finalizers(&crd).is_empty()
            && let Some(last) = self
                .store
                .remove(&crds(), &(String::new(), name.to_string()))
        {
            self.after_removed(&crds(), &last);
        }
    }

    /// Cascades after an object is gone: endpoint table, garbage collection of dependents,
    /// and the containers (namespace, CRD) that may have been waiting for it.
    pub(super) fn after_removed(&mut self, gr: &GroupResource, obj: &Value) {
        if *gr == pods() {
            // The pvc-protection controller: a deleting claim this pod used may now go.
            let ns = meta_str(obj, "namespace").unwrap_or_default().to_string();
            for claim in pod_claims(obj) {
                self.release_protection(&pvcs(), &(ns.clone(), claim));
            }
        }
        if *gr == crds() {
            self.refresh_endpoints();
            let storage = GroupResource::new(
                obj["spec"]["group"].as_str().unwrap_or_default(),
                obj["spec"]["names"]["plural"].as_str().unwrap_or_default(),
            );
            let keys: Vec<Key> = self
                .store
                .list(&storage, None)
                .into_iter()
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.store.remove(&storage, &k);
            }
        }
        if let Some(uid) = meta_str(obj, "uid") {
            self.collect_garbage(uid);
        }
        let key = key_of(obj);
        if !key.0.is_empty() {
            self.maybe_finish_namespace(&key.0);
        }
        if self.storage_endpoint(gr).is_some_and(|e| e.custom) {
            self.maybe_finish_crd(&format!("{}.{}", gr.resource, gr.group));
        }
    }

    /// Background garbage collection of the dependents of a removed owner: a dependent whose
    /// owners are all gone is deleted; one with a surviving owner loses the dangling
    /// references.
    fn collect_garbage(&mut self, owner_uid: &str) {
        for (gr, key) in self.store.dependents_of(owner_uid) {
            let Some(obj) = self.store.get(&gr, &key.0, &key.1).cloned() else {
                continue;
            };
            let refs = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let (alive, dangling): (Vec<Value>, Vec<Value>) = refs
                .into_iter()
                .partition(|r| r["uid"].as_str().is_some_and(|u| self.store.uid_exists(u)));
            if alive.is_empty() {
                self.begin_delete(&gr, &key);
            } else if !dangling.is_empty() {
                let mut obj = obj;
                obj["metadata"]["ownerReferences"] = json!(alive);
                self.store.put(&gr, obj);
            }
        }
    }

    /// `propagationPolicy: Orphan`: dependents lose their reference to the owner.
    fn orphan_dependents(&mut self, owner: &Value) {
        let Some(uid) = meta_str(owner, "uid") else {
            return;
        };
        let mut changed = Vec::new();
        for (gr, key) in self.store.dependents_of(uid) {
            let Some(obj) = self.store.get(&gr, &key.0, &key.1) else {
                continue;
            };
            let refs = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut obj = obj.clone();
            let kept: Vec<Value> = refs.into_iter().filter(|r| r["uid"] != uid).collect();
            if kept.is_empty() {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
            } else {
                obj["metadata"]["ownerReferences"] = json!(kept);
            }
            changed.push((gr, obj));
        }
        for (gr, obj) in changed {
            self.store.put(&gr, obj);
        }
    }
}

/// The claims a pod mounts: `persistentVolumeClaim` volumes, and generic ephemeral volumes
/// (their claim is `<pod>-<volume>`).
fn pod_claims(pod: &Value) -> Vec<String> {
    let pod_name = meta_str(pod, "name").unwrap_or_default();
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                Some(claim.to_string())
            } else if v.get("ephemeral").is_some() {
                Some(format!(
                    "{pod_name}-{}",
                    v["name"].as_str().unwrap_or_default()
                ))
            } else {
                None
            }
        })
        .collect()
}
