//! Writes: create, update, patch, server-side apply and pods/binding.

use serde_json::{Value, json};

use super::{
    CRD_FINALIZER, FieldValidation, State, WriteOptions, Written, check_type, crds, finalizers,
    meta_mut, meta_str, namespaces, ok, pvs, to_served, to_stored,
};
use crate::apiserver::{
    events,
    kinds::{Codec, Endpoint, StatusOnCreate},
    patch::{self, Apply, Ownership, Shape},
    schema,
    status::{self, ApiError, ApiResult, Cause},
    store::key_of,
    util::now_rfc3339,
    validate,
};

impl State {
    pub(crate) fn create(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        body: Value,
        opts: &WriteOptions,
        owners: Option<Ownership>,
    ) -> ApiResult<Written> {
        check_type(ep, &body)?;
        let target = ep.target(meta_str(&body, "name").unwrap_or_default());
        if ep.codec == Codec::EventsV1 {
            events::validate_v1(&target, &body)?;
        } else if ep.kind == "Event" {
            events::validate_core(&target, &body)?;
        }
        let mut obj = to_stored(ep, &body);
        let meta = meta_mut(&mut obj)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if ep.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(ns));
                }
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                Some(_) => {}
            }
        } else {
            meta.remove("namespace");
        }
        if ep.namespaced {
            let Some(nsobj) = self.store.get(&namespaces(), "", ns) else {
                let t = status::Target {
                    group: String::new(),
                    resource: "namespaces".into(),
                    kind: "Namespace".into(),
                    name: ns.to_string(),
                };
                return Err(ApiError::not_found(&t));
            };
            if nsobj["metadata"].get("deletionTimestamp").is_some() {
                return Err(ApiError::forbidden(
                    &target,
                    &format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                ));
            }
        }
        if ep.custom
            && let Some(crd) = self
                .store
                .get(&crds(), "", &format!("{}.{}", ep.resource, ep.group))
            && crd["metadata"].get("deletionTimestamp").is_some()
        {
            let mut e = ApiError::method_not_allowed();
            e.message =
                "create not allowed while custom resource definition is terminating".to_string();
            return Err(e);
        }
        // Names: generateName gets a random suffix, retried on collision (RetryGenerateName).
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
            else {
                return Err(ApiError::invalid(
                    &target,
                    vec![Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            };
            let prefix: String = prefix.chars().take(58).collect();
            let mut name = String::new();
            for _ in 0..8 {
                name = format!("{prefix}{}", self.store.rng.name_suffix(5));
                if self
                    .store
                    .get(&ep.storage, if ep.namespaced { ns } else { "" }, &name)
                    .is_none()
                {
                    break;
                }
            }
            meta.insert("name".into(), json!(name));
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let target = ep.target(&name);

        // Status on create, defaults, admission, schema, validation.
        if let Some(map) = obj.as_object_mut() {
            match &ep.status_on_create {
                StatusOnCreate::Keep => {}
                StatusOnCreate::Drop => {
                    map.remove("status");
                }
                StatusOnCreate::Reset(s) => {
                    map.insert("status".into(), s.clone());
                }
            }
        }
        if ep.group.is_empty() && ep.resource == "namespaces" {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        validate::apply_defaults(ep, &mut obj);
        validate::admit_create(ep, &mut obj, &self.store);
        let warnings = self.normalize(ep, &mut obj, opts)?;
        validate::validate_create(ep, &obj)?;
        self.validate_schema(ep, &obj)?;

        let key = key_of(&obj);
        if self.store.get(&ep.storage, &key.0, &key.1).is_some() {
            return Err(ApiError::already_exists(&target));
        }
        let now = now_rfc3339();
        let uid = self.store.rng.uuid();
        let meta = meta_mut(&mut obj)?;
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now));
        if ep.generation {
            meta.insert("generation".into(), json!(1));
        }
        if let Some(o) = owners.filter(|o| !o.is_empty()) {
            meta.insert(
                "managedFields".into(),
                json!(patch::to_managed_fields(&o, &ep.api_version(), &now)),
            );
        }
        if ep.storage == crds() {
            self.prepare_crd(&mut obj, &now);
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(ep.api_version()));
            m.insert("kind".into(), json!(ep.kind));
        }
        if opts.dry_run {
            return Ok(Written {
                code: 201,
                body: to_served(ep, &obj),
                warnings,
            });
        }
        let stored = self.store.put(&ep.storage, obj);
        if ep.storage == crds() {
            self.refresh_endpoints();
        }
        Ok(Written {
            code: 201,
            body: to_served(ep, &stored),
            warnings,
        })
    }

    /// What the CRD controllers do right after a CRD is created: names accepted, established,
    /// the cleanup finalizer in place.
    fn prepare_crd(&self, crd: &mut Value, now: &str) {
        let mut names = crd["spec"]["names"].clone();
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
        crd["spec"]["names"] = names.clone();
        let stored: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .map(|v| v["name"].clone())
            .collect();
        crd["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": stored,
        });
        let mut fins = finalizers(crd);
        if !fins.iter().any(|f| f == CRD_FINALIZER) {
            fins.push(CRD_FINALIZER.to_string());
        }
        crd["metadata"]["finalizers"] = json!(fins);
    }

    /// Prunes and defaults a custom resource from its schema; returns `Warning`s for
    /// `fieldValidation=Warn` (the default), fails for `Strict`.
    fn normalize(
        &self,
        ep: &Endpoint,
        obj: &mut Value,
        opts: &WriteOptions,
    ) -> ApiResult<Vec<String>> {
        let Some(schema) = &ep.schema else {
            return Ok(Vec::new());
        };
        let pruned = schema::normalize(schema, obj);
        if pruned.is_empty() || opts.field_validation == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let msgs: Vec<String> = pruned
            .iter()
            .map(|p| format!("unknown field {p:?}"))
            .collect();
        if opts.field_validation == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                msgs.join(", ")
            )));
        }
        Ok(msgs)
    }

    fn validate_schema(&self, ep: &Endpoint, obj: &Value) -> ApiResult<()> {
        let Some(schema) = &ep.schema else {
            return Ok(());
        };
        let causes = schema::validate(schema, obj);
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                &ep.target(meta_str(obj, "name").unwrap_or_default()),
                causes,
            ))
        }
    }

    // === update / patch / apply ===

    pub(crate) fn update(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        body: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let old = self
            .store
            .get(&ep.storage, ns, name)
            .cloned()
            .ok_or_else(|| self.not_found(ep, name))?;
        // Custom resources do not allow unconditional updates (AllowUnconditionalUpdate is
        // false in their strategy): a PUT must carry the resourceVersion it read.
        if ep.custom && sub != Some("finalize") && meta_str(&body, "resourceVersion").is_none() {
            return Err(ApiError::invalid(
                &ep.target(name),
                vec![Cause::invalid(
                    "metadata.resourceVersion",
                    &json!(0),
                    "must be specified for an update",
                )],
            ));
        }
        self.update_with(ep, ns, name, old, body, sub, opts, None)
    }

    /// Update `old` to the served `body`. `owners` is set by apply (its new field ownership);
    /// other writes pass `None` and appliers lose the fields the write changed.
    #[allow(clippy::too_many_arguments)]
    fn update_with(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        old: Value,
        body: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
        owners: Option<Ownership>,
    ) -> ApiResult<Written> {
        check_type(ep, &body)?;
        let target = ep.target(name);
        match meta_str(&body, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if ep.namespaced
            && let Some(n) = meta_str(&body, "namespace")
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(rv) = meta_str(&body, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_modified(&target));
        }
        if let Some(uid) = meta_str(&body, "uid")
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &target,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if ep.codec == Codec::EventsV1 {
            events::validate_v1(&target, &body)?;
        } else if ep.kind == "Event" {
            events::validate_core(&target, &body)?;
        }
        let mut new = to_stored(ep, &body);
        meta_mut(&mut new)?;

        // Subresource isolation.
        if sub == Some("finalize") {
            let mut n = old.clone();
            n["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
            new = n;
        } else if ep.status_subresource {
            let (from, into) = if sub == Some("status") {
                (&new, old.clone())
            } else {
                (&old, new.clone())
            };
            let status = from.get("status").cloned();
            let mut merged = into;
            if let Some(m) = merged.as_object_mut() {
                match status {
                    Some(s) => {
                        m.insert("status".into(), s);
                    }
                    None => {
                        m.remove("status");
                    }
                }
            }
            new = merged;
        }
        // System metadata is the server's.
        let old_meta = old["metadata"].clone();
        let meta = meta_mut(&mut new)?;
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            match old_meta.get(f) {
                Some(v) => {
                    meta.insert(f.into(), v.clone());
                }
                None => {
                    meta.remove(f);
                }
            }
        }
        if let Some(m) = new.as_object_mut() {
            m.insert("apiVersion".into(), old["apiVersion"].clone());
            m.insert("kind".into(), old["kind"].clone());
        }

        validate::apply_defaults(ep, &mut new);
        let warnings = self.normalize(ep, &mut new, opts)?;
        validate::validate_update(ep, &old, &new, &self.store)?;
        self.validate_schema(ep, &new)?;

        // Field ownership.
        let now = now_rfc3339();
        let owners = match owners {
            Some(o) => Some(o),
            None => {
                let mut o = patch::from_managed_fields(&old);
                (!o.is_empty()).then(|| {
                    patch::release_changed(&mut o, &old, &new);
                    o
                })
            }
        };
        if let Some(o) = owners {
            let meta = meta_mut(&mut new)?;
            if o.is_empty() {
                meta.remove("managedFields");
            } else {
                let mut entries = patch::to_managed_fields(&o, &ep.api_version(), &now);
                // Keep the timestamps of untouched managers, so a no-op stays a no-op.
                for e in &mut entries {
                    if let Some(prev) = old["metadata"]["managedFields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| {
                            p["manager"] == e["manager"]
                                && p["subresource"] == e["subresource"]
                                && p["fieldsV1"] == e["fieldsV1"]
                        })
                    {
                        e["time"] = prev["time"].clone();
                    }
                }
                meta.insert("managedFields".into(), json!(entries));
            }
        }
        if ep.generation {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    if ep.status_subresource {
                        m.remove("status");
                    }
                }
                v
            };
            if strip(&old) != strip(&new) {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                new["metadata"]["generation"] = json!(g);
            }
        }
        if new == old {
            return Ok(Written {
                code: 200,
                body: to_served(ep, &old),
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(Written {
                code: 200,
                body: to_served(ep, &new),
                warnings,
            });
        }
        let stored = self.store.put(&ep.storage, new);
        if ep.storage == crds() {
            self.refresh_endpoints();
        }
        let key = key_of(&stored);
        if ep.storage == pvs() {
            // A deleting PV that stops being Bound loses its protection.
            self.release_protection(&ep.storage, &key);
            if self.store.get(&ep.storage, &key.0, &key.1).is_none() {
                return Ok(Written {
                    code: 200,
                    body: to_served(ep, &stored),
                    warnings,
                });
            }
        }
        if stored["metadata"].get("deletionTimestamp").is_some() && finalizers(&stored).is_empty() {
            if ep.storage == namespaces() {
                self.maybe_finish_namespace(&key.1);
            } else if let Some(last) = self.store.remove(&ep.storage, &key) {
                self.after_removed(&ep.storage, &last);
            }
        } else if ep.storage == namespaces() && sub == Some("finalize") {
            self.maybe_finish_namespace(&key.1);
        }
        Ok(Written {
            code: 200,
            body: to_served(ep, &stored),
            warnings,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media == "application/apply-patch+yaml" {
            return self.apply(ep, ns, name, body, sub, opts);
        }
        let kind = match media {
            "application/merge-patch+json" => 0,
            "application/json-patch+json" => 1,
            "application/strategic-merge-patch+json" if !ep.custom => 2,
            _ => {
                let mut e = ApiError::unsupported_media_type(media);
                e.message = format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                    if ep.custom {
                        ""
                    } else {
                        ", application/strategic-merge-patch+json"
                    }
                );
                return Err(e);
            }
        };
        let patch_value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let old = self
            .store
            .get(&ep.storage, ns, name)
            .cloned()
            .ok_or_else(|| self.not_found(ep, name))?;
        let mut patched = to_served(ep, &old);
        match kind {
            0 => {
                if !patch_value.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut patched, &patch_value);
            }
            1 => patch::json_patch(&mut patched, &patch_value)?,
            _ => patch::strategic_merge(&mut patched, &patch_value, Shape::root(false, None)),
        }
        self.update_with(ep, ns, name, old, patched, sub, opts, None)
    }

    fn apply(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        body: &[u8],
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests",
            ));
        };
        let mut applied: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "error decoding YAML: the applied configuration must be an object",
            ));
        }
        for (field, want) in [("apiVersion", ep.api_version()), ("kind", ep.kind.clone())] {
            match applied[field].as_str() {
                None | Some("") => {
                    return Err(ApiError::bad_request(format!(
                        "error decoding YAML: Object '{}' is missing",
                        if field == "kind" {
                            "Kind"
                        } else {
                            "apiVersion"
                        }
                    )));
                }
                Some(got) if got != want => check_type(ep, &applied)?,
                Some(_) => {}
            }
        }
        if applied["metadata"]
            .get("managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let meta = meta_mut(&mut applied)?;
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), json!(name));
            }
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
        }
        if ep.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(ns));
                }
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                Some(_) => {}
            }
        }
        let old = self.store.get(&ep.storage, ns, name).cloned();
        let shape = Shape::root(ep.custom, ep.schema.as_deref());
        let apply = Apply {
            manager: &manager,
            subresource: if sub == Some("status") { "status" } else { "" },
            force: opts.force,
            split_status: ep.status_subresource,
            shape,
        };
        match old {
            None => {
                if sub.is_some() {
                    return Err(self.not_found(ep, name));
                }
                let mut owners = Ownership::new();
                let mut result = apply.run(None, &applied, &mut owners)?;
                result["apiVersion"] = json!(ep.api_version());
                result["kind"] = json!(ep.kind);
                result["metadata"]["name"] = json!(name);
                if ep.namespaced {
                    result["metadata"]["namespace"] = json!(ns);
                }
                let mut w = self.create(ep, ns, result, opts, Some(owners))?;
                w.code = 201;
                Ok(w)
            }
            Some(old) => {
                if let Some(rv) = meta_str(&applied, "resourceVersion")
                    && Some(rv) != meta_str(&old, "resourceVersion")
                {
                    return Err(ApiError::conflict_modified(&ep.target(name)));
                }
                let served_old = to_served(ep, &old);
                let mut owners = patch::from_managed_fields(&old);
                let result = apply.run(Some(&served_old), &applied, &mut owners)?;
                self.update_with(ep, ns, name, old, result, sub, opts, Some(owners))
            }
        }
    }

    // === binding ===

    pub(crate) fn bind(
        &mut self,
        ep: &Endpoint,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> ApiResult<Written> {
        let target = status::Target {
            group: String::new(),
            resource: "pods/binding".into(),
            kind: "Binding".into(),
            name: name.to_string(),
        };
        if body["kind"].as_str().is_some_and(|k| k != "Binding") {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({}) does not match the expected kind (Binding)",
                body["kind"]
            )));
        }
        let node = body["target"]["name"].as_str().unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::invalid(
                &target,
                vec![Cause::required("target.name", "")],
            ));
        }
        if body["target"]["kind"]
            .as_str()
            .is_some_and(|k| !k.is_empty() && k != "Node")
        {
            return Err(ApiError::invalid(
                &target,
                vec![Cause::not_supported(
                    "target.kind",
                    &body["target"]["kind"],
                    &["Node"],
                )],
            ));
        }
        let old = self
            .store
            .get(&ep.storage, ns, name)
            .cloned()
            .ok_or_else(|| self.not_found(ep, name))?;
        if let Some(uid) = meta_str(body, "uid")
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &target,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if old["metadata"].get("deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                &target,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(current) = old["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                &target,
                &format!("pod {name} is already assigned to node {current:?}"),
            ));
        }
        let mut new = old;
        new["spec"]["nodeName"] = json!(node);
        let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
        let conditions = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(condition);
        new["status"]["conditions"] = json!(conditions);
        self.store.put(&ep.storage, new);
        Ok(ok(
            201,
            status::success(201, json!({"name": name, "kind": "pods"})),
        ))
    }
}
