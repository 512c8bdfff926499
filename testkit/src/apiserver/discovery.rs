//! Discovery documents, built from the endpoint table: the legacy per-group documents
//! (`/api`, `/apis`, `/apis/{group}`, `/{prefix}/{version}`) and aggregated discovery v2.

use serde_json::{Value, json};

use super::kinds::{Endpoint, version_priority};

/// Groups in table order, each with its versions in priority order.
fn groups(endpoints: &[Endpoint]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for ep in endpoints {
        match out.iter_mut().find(|(g, _)| *g == ep.group) {
            Some((_, versions)) => {
                if !versions.contains(&ep.version) {
                    versions.push(ep.version.clone());
                }
            }
            None => out.push((ep.group.clone(), vec![ep.version.clone()])),
        }
    }
    for (_, versions) in &mut out {
        versions.sort_by(|a, b| version_priority(a, b));
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv),
    })
}

/// `GET /api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`.
pub(crate) fn group_list(endpoints: &[Endpoint]) -> Value {
    let groups: Vec<Value> = groups(endpoints)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_doc(&g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub(crate) fn group(endpoints: &[Endpoint], group: &str) -> Option<Value> {
    let (g, v) = groups(endpoints)
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())?;
    let mut doc = group_doc(&g, &v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`.
pub(crate) fn resource_list(endpoints: &[Endpoint], group: &str, version: &str) -> Option<Value> {
    let eps: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.group == group && e.version == version)
        .collect();
    if eps.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for ep in eps {
        let mut r = json!({
            "name": ep.resource,
            "singularName": ep.singular,
            "namespaced": ep.namespaced,
            "kind": ep.kind,
            "verbs": ep.verbs,
        });
        if !ep.short_names.is_empty() {
            r["shortNames"] = json!(ep.short_names);
        }
        if !ep.categories.is_empty() {
            r["categories"] = json!(ep.categories);
        }
        resources.push(r);
        if ep.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", ep.resource),
                "singularName": "",
                "namespaced": ep.namespaced,
                "kind": ep.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if ep.binding_subresource {
            resources.push(json!({
                "name": format!("{}/binding", ep.resource),
                "singularName": "",
                "namespaced": ep.namespaced,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Aggregated discovery (`Accept: …;as=APIGroupDiscoveryList`) for the core group
/// (`core == true`, `/api`) or all other groups (`/apis`).
pub(crate) fn aggregated(endpoints: &[Endpoint], core: bool) -> Value {
    let mut items = Vec::new();
    for (group, versions) in groups(endpoints) {
        if group.is_empty() != core {
            continue;
        }
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = endpoints
                    .iter()
                    .filter(|e| e.group == group && e.version == *v)
                    .map(|ep| {
                        let kind = json!({"group": ep.group, "version": ep.version, "kind": ep.kind});
                        let mut subs = Vec::new();
                        if ep.status_subresource {
                            subs.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                        }
                        if ep.binding_subresource {
                            subs.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
                        }
                        json!({
                            "resource": ep.resource,
                            "responseKind": kind,
                            "scope": if ep.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": ep.singular,
                            "verbs": ep.verbs,
                            "shortNames": ep.short_names,
                            "categories": ep.categories,
                            "subresources": subs,
                        })
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": group}, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
