//! Deletes, and the cascades a real control plane runs asynchronously (finalizers,
//! namespace and CRD cleanup, owner-reference garbage collection), run here synchronously.

use serde_json::{Value, json};

use super::{
    CRD_FINALIZER, DeleteOptions, PV_PROTECTION, PVC_PROTECTION, PodTermination, State, Written,
    crds, finalizers, meta_str, namespaces, ok, pods, pvcs, pvs, to_served,
};
use crate::apiserver::{
    kinds::{Endpoint, GroupResource},
    selectors::Selectors,
    status::{self, ApiError, ApiResult},
    store::{Key, key_of},
    util::{now_rfc3339, rfc3339_in},
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
        let Some((obj, removed)) = self.begin_delete_graceful(&ep.storage, &key, opts.grace_period)
        else {
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
            if let Some((obj, _)) = self.begin_delete_graceful(&ep.storage, &key, opts.grace_period)
            {
                items.push(to_served(ep, &obj));
            }
        }
        Ok(ok(
            200,
            json!({"kind": ep.list_kind, "apiVersion": ep.api_version(), "metadata": {"resourceVersion": self.store.rv().to_string()}, "items": items}),
        ))
    }

    /// The pod registry's graceful deletion (`CheckGracefulDelete`, `BeforeDelete`): a pod
    /// bound to a node and not finished, deleted with a grace period above 0 (the request's,
    /// else `spec.terminationGracePeriodSeconds`), is marked Terminating rather than removed;
    /// a later delete may only shorten the grace period. Returns the marked pod, or `None`
    /// when the delete goes on as an immediate one.
    fn graceful_pod_delete(
        &mut self,
        key: &Key,
        pod: &Value,
        requested: Option<i64>,
    ) -> Option<Value> {
        if self.pod_termination == PodTermination::Immediate {
            return None;
        }
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        let grace = if bound && !finished {
            requested
                .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0)
        } else {
            0
        };
        let meta = &pod["metadata"];
        if meta.get("deletionTimestamp").is_some() {
            let current = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
            if grace >= current {
                // Already Terminating at least as soon: nothing changes.
                return Some(pod.clone());
            }
            if grace == 0 && finalizers(pod).is_empty() {
                let last = self.store.remove(&pods(), key)?;
                self.after_removed(&pods(), &last);
                return Some(last);
            }
        } else if grace == 0 {
            return None;
        }
        let mut marked = pod.clone();
        marked["metadata"]["deletionTimestamp"] = json!(rfc3339_in(grace));
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = self.store.put(&pods(), marked);
        if let PodTermination::Kubelet { delay } = self.pod_termination {
            let after = delay.min(std::time::Duration::from_secs(grace as u64));
            self.kubelet_due.push((
                std::time::Instant::now() + after,
                key.0.clone(),
                key.1.clone(),
                meta_str(&stored, "uid").unwrap_or_default().to_string(),
            ));
        }
        Some(stored)
    }

    /// The kubelet stand-in ([`PodTermination::Kubelet`]): Terminating pods whose time has
    /// come are deleted with a grace period of 0, as the kubelet's status manager does once
    /// their containers stopped (finalizers still hold them, then with a grace period of 0).
    pub(crate) fn confirm_terminated_pods(&mut self, now: std::time::Instant) {
        if self.kubelet_due.iter().all(|(due, ..)| *due > now) {
            return;
        }
        let (ready, waiting) = std::mem::take(&mut self.kubelet_due)
            .into_iter()
            .partition::<Vec<_>, _>(|(due, ..)| *due <= now);
        self.kubelet_due = waiting;
        for (_, ns, name, uid) in ready {
            let key = (ns, name);
            let Some(pod) = self.store.get(&pods(), &key.0, &key.1).cloned() else {
                continue;
            };
            if meta_str(&pod, "uid") != Some(uid.as_str())
                || pod["metadata"].get("deletionTimestamp").is_none()
            {
                continue;
            }
            if finalizers(&pod).is_empty() {
                if let Some(last) = self.store.remove(&pods(), &key) {
                    self.after_removed(&pods(), &last);
                }
            } else if pod["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0) {
                let mut pod = pod;
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.store.put(&pods(), pod);
                // A generic ephemeral volume's claim is no longer in use by a shut-down pod.
                self.release_pod_claims(&key.0, &key.1);
            }
        }
    }

    /// Re-checks the protection of the claims a (shut-down) pod mounts.
    fn release_pod_claims(&mut self, ns: &str, pod: &str) {
        let Some(obj) = self.store.get(&pods(), ns, pod).cloned() else {
            return;
        };
        for (claim, _) in pod_claims(&obj) {
            self.release_protection(&pvcs(), &(ns.to_string(), claim));
        }
    }

    /// Starts deleting an object: marks it if finalizers (or, for namespaces and CRDs, their
    /// controllers) hold it, removes it otherwise. Returns the object's latest state and
    /// whether it is gone.
    pub(super) fn begin_delete(&mut self, gr: &GroupResource, key: &Key) -> Option<(Value, bool)> {
        self.begin_delete_graceful(gr, key, None)
    }

    /// [`State::begin_delete`] with the request's grace period, which matters for pods
    /// (graceful deletion, also when a namespace's deletion or the garbage collector
    /// deletes them, as the real controllers delete them with the default grace period).
    fn begin_delete_graceful(
        &mut self,
        gr: &GroupResource,
        key: &Key,
        grace: Option<i64>,
    ) -> Option<(Value, bool)> {
        let obj = self.store.get(gr, &key.0, &key.1)?.clone();
        if *gr == pods()
            && let Some(pod) = self.graceful_pod_delete(key, &obj, grace)
        {
            let gone = self.store.get(gr, &key.0, &key.1).is_none();
            return Some((pod, gone));
        }
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

    /// Whether a pod of `ns` uses claim `name`, as the pvc-protection controller (1.19 and
    /// later) decides it: only a pod scheduled to a node (kubelet never starts one that
    /// names a deleting claim), whatever its phase (a Succeeded or Failed pod holds its
    /// claims until the pod object is gone), through a `persistentVolumeClaim` volume, or
    /// through a generic ephemeral volume while the pod is not shut down (deleting with a
    /// grace period of 0).
    fn claim_in_use(&self, ns: &str, name: &str) -> bool {
        self.store
            .list(&pods(), Some(ns))
            .into_iter()
            .any(|(_, pod)| {
                pod["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                    && pod_claims(pod).iter().any(|(claim, ephemeral)| {
                        claim == name && (!ephemeral || !pod_is_shut_down(pod))
                    })
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
            for (claim, _) in pod_claims(obj) {
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

/// The claims a pod mounts, each with whether it is a generic ephemeral volume's (whose
/// claim is `<pod>-<volume>`).
fn pod_claims(pod: &Value) -> Vec<(String, bool)> {
    let pod_name = meta_str(pod, "name").unwrap_or_default();
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                Some((claim.to_string(), false))
            } else if v.get("ephemeral").is_some() {
                Some((
                    format!("{pod_name}-{}", v["name"].as_str().unwrap_or_default()),
                    true,
                ))
            } else {
                None
            }
        })
        .collect()
}

/// The pvc-protection controller's `podIsShutDown`: deleting, with a grace period of 0.
fn pod_is_shut_down(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_some()
        && pod["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0)
}
