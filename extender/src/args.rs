//! The router's view of `ExtenderArgs`: the same keys as [`crate::ExtenderArgs`], but only
//! what a [`Policy`](crate::Policy) is given is decoded, and node names and Node objects are
//! borrowed from the body.
//!
//! * The pod: `metadata.name`, `namespace` and `uid`, and the `spec.volumes` that name a
//!   claim (`persistentVolumeClaim.claimName`, or an `ephemeral` volume's name). Every other
//!   field (managedFields, annotations, containers, status) is skipped unread, without
//!   recursion and without an allocation; the policy gets a `Pod` holding just these fields
//!   ([`SlimPod::into_pod`]).
//! * Node objects are kept as raw JSON and only their `metadata.name` is read, so a large
//!   NodeList costs one scan, and the nodes that pass go back to the scheduler byte for byte
//!   (k8s-openapi would drop fields newer than the API version it was built for).
//!
//! Counts are bounded while decoding, so no body under the size limit makes the router hold
//! more than [`MAX_CANDIDATES`] names or [`MAX_CLAIM_VOLUMES`] volumes: a `Volume` of
//! k8s-openapi takes 3 KiB, against 17 bytes for `{"ephemeral":{}},` on the wire.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::{
    EphemeralVolumeSource, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::body::{ApiError, JsonBody};

mod quick;

/// The most candidate nodes one request may name (`NodeNames`, or `Nodes.items`).
///
/// kube-scheduler sends the nodes that passed its own filters, and stops looking once it has
/// `percentageOfNodesToScore` of the cluster: by default 50 % less one point per 125 nodes,
/// at least 5 % and 100 nodes (500 at 5,000 nodes, 750 at 15,000). Only at 100 % does it
/// send every node; Kubernetes supports 5,000. This is twice that. A request naming more is
/// refused with 400: each candidate costs the router and the policy some hundred bytes (its
/// name, its verdict and reason, its line in the answer), so the count, not the body size,
/// bounds that memory.
pub const MAX_CANDIDATES: usize = 10_000;

/// The most `persistentVolumeClaim` and `ephemeral` volumes one pod may have.
///
/// Kubernetes sets no number; real pods mount a handful of claims. A pod with more is
/// refused with 400, since each volume handed to the policy is a 3 KiB k8s-openapi `Volume`.
pub const MAX_CLAIM_VOLUMES: usize = 1_024;

#[derive(Deserialize)]
pub(crate) struct Args<'a> {
    #[serde(rename = "Pod", alias = "pod")]
    pod: ObjectOnly<SlimPod>,
    #[serde(rename = "Nodes", alias = "nodes", default, borrow)]
    nodes: Option<ObjectOnly<RawNodeList<'a>>>,
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default,
        borrow
    )]
    node_names: Option<Capped<Name<'a>, NodeNamesCap>>,
}

#[derive(Deserialize)]
struct RawNodeList<'a> {
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow)]
    items: Option<Capped<&'a RawValue, NodeItemsCap>>,
}

/// The fields of a Pod a policy reads. Keys and JSON types as k8s-openapi's `Pod` reads them
/// (a `null` is the same as a missing key); unknown keys are skipped.
#[derive(Deserialize)]
pub(crate) struct SlimPod {
    #[serde(default)]
    metadata: Option<ObjectOnly<SlimMeta>>,
    #[serde(default)]
    spec: Option<ObjectOnly<SlimSpec>>,
}

#[derive(Deserialize)]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize)]
struct SlimSpec {
    #[serde(default)]
    volumes: Option<ClaimVolumes>,
}

/// The volumes of `spec.volumes` that name a claim, in order; the others are dropped as
/// they are read.
struct ClaimVolumes(Vec<SlimVolume>);

#[derive(Deserialize)]
struct SlimVolume {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "persistentVolumeClaim", default)]
    persistent_volume_claim: Option<ObjectOnly<SlimClaimSource>>,
    /// Only whether it is there: the claim's name is `<pod>-<volume>`.
    #[serde(default)]
    ephemeral: Option<ObjectOnly<IgnoredObject>>,
}

#[derive(Deserialize)]
struct SlimClaimSource {
    #[serde(rename = "claimName", default)]
    claim_name: Option<String>,
}

/// Any JSON object, its contents skipped.
#[derive(Deserialize)]
struct IgnoredObject {}

/// A JSON array of at most `C::MAX` elements: one more is an error naming the bound, raised
/// while decoding, before the rest of the array is read.
struct Capped<T, C>(Vec<T>, PhantomData<C>);

/// The bound of a [`Capped`] array and how to explain it.
trait Cap {
    const MAX: usize;
    const WHAT: &'static str;
}

struct NodeNamesCap;
struct NodeItemsCap;

/// A string that borrows from the body unless it contains escapes.
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct NodeHead<'a> {
    #[serde(default, borrow)]
    metadata: Option<ObjectOnly<MetaHead<'a>>>,
}

#[derive(Deserialize)]
struct MetaHead<'a> {
    #[serde(default, borrow)]
    name: Option<Name<'a>>,
}

/// `T` read from a JSON object only.
///
/// serde's derived struct impls also accept an array of the fields in order (`[{}, {}]` would
/// be a pod and a node list), which Go's `encoding/json`, and so the scheduler, never sends:
/// such a body is malformed and gets a 400, not an answer.
pub(crate) struct ObjectOnly<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

/// The candidate nodes, in request order, in the mode the scheduler asked in.
pub(crate) enum Candidates<'a> {
    /// `nodeCacheCapable: true`: names only; answer with `NodeNames`.
    Names(Vec<Cow<'a, str>>),
    /// `nodeCacheCapable: false`: full objects; answer with `Nodes`, a subset of `items`.
    Nodes {
        metadata: Option<&'a RawValue>,
        names: Vec<Cow<'a, str>>,
        items: Vec<&'a RawValue>,
    },
}

/// Displays a pod as `namespace/name`, for spans and logs.
pub(crate) struct PodKey<'a>(pub(crate) &'a Pod);

// === impl Args ===

impl<'a> Args<'a> {
    /// Decodes `body` as `ExtenderArgs`. The body a cache-capable scheduler sends is read by
    /// [`quick`], which splits its names by hand; any other body, and any body that path
    /// declines, is decoded by serde, which also explains what is wrong with it.
    pub(crate) fn decode(body: &'a JsonBody) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(&body.0).ok();
        if let Some(args) = text.and_then(quick::args) {
            return Ok(args);
        }
        let ObjectOnly(args) = body.decode_text(text, "ExtenderArgs")?;
        Ok(args)
    }

    /// Splits off the candidates. `NodeNames` wins when both are set, as the scheduler itself
    /// prefers it for a cache-capable extender; it never sends both.
    pub(crate) fn into_parts(self) -> Result<(Pod, Candidates<'a>), ApiError> {
        let candidates = match (self.node_names, self.nodes) {
            (Some(names), _) => Candidates::Names(names.0.into_iter().map(|n| n.0).collect()),
            (None, Some(ObjectOnly(list))) => {
                let items = list.items.map(|c| c.0).unwrap_or_default();
                let names = items
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| node_name(i, raw))
                    .collect::<Result<_, _>>()?;
                Candidates::Nodes {
                    metadata: list.metadata,
                    names,
                    items,
                }
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "invalid ExtenderArgs: both NodeNames and Nodes are null or missing; \
                     one of them must list the candidate nodes",
                ));
            }
        };
        Ok((self.pod.0.into_pod(), candidates))
    }
}

// === impl SlimPod ===

impl SlimPod {
    /// The `Pod` a policy is given: name, namespace, uid and the claim volumes, nothing else.
    pub(crate) fn into_pod(self) -> Pod {
        let meta = self.metadata.map(|m| m.0);
        let volumes = self
            .spec
            .and_then(|s| s.0.volumes)
            .map(|v| v.0)
            .unwrap_or_default();
        let volumes = volumes
            .into_iter()
            .map(|v| Volume {
                name: v.name.unwrap_or_default(),
                persistent_volume_claim: v.persistent_volume_claim.map(|c| {
                    PersistentVolumeClaimVolumeSource {
                        claim_name: c.0.claim_name.unwrap_or_default(),
                        read_only: None,
                    }
                }),
                ephemeral: v.ephemeral.map(|_| EphemeralVolumeSource::default()),
                ..Volume::default()
            })
            .collect::<Vec<_>>();
        let (name, namespace, uid) = meta
            .map(|m| (m.name, m.namespace, m.uid))
            .unwrap_or_default();
        Pod {
            metadata: ObjectMeta {
                name,
                namespace,
                uid,
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: (!volumes.is_empty()).then_some(volumes),
                ..PodSpec::default()
            }),
            status: None,
        }
    }
}

impl<'de> Deserialize<'de> for ClaimVolumes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VolumesVisitor;
        impl<'de> Visitor<'de> for VolumesVisitor {
            type Value = ClaimVolumes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of volumes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClaimVolumes, A::Error> {
                let mut kept = Vec::new();
                while let Some(ObjectOnly(volume)) = seq.next_element::<ObjectOnly<SlimVolume>>()? {
                    if volume.persistent_volume_claim.is_none() && volume.ephemeral.is_none() {
                        continue;
                    }
                    if kept.len() == MAX_CLAIM_VOLUMES {
                        return Err(serde::de::Error::custom(format_args!(
                            "more than {MAX_CLAIM_VOLUMES} persistentVolumeClaim and ephemeral \
                             volumes; the extender reads at most {MAX_CLAIM_VOLUMES} a pod"
                        )));
                    }
                    kept.push(volume);
                }
                Ok(ClaimVolumes(kept))
            }
        }
        deserializer.deserialize_seq(VolumesVisitor)
    }
}

// === impl Capped ===

impl Cap for NodeNamesCap {
    const MAX: usize = MAX_CANDIDATES;
    const WHAT: &'static str = "node names";
}

impl Cap for NodeItemsCap {
    const MAX: usize = MAX_CANDIDATES;
    const WHAT: &'static str = "Node objects";
}

impl<'de, T: Deserialize<'de>, C: Cap> Deserialize<'de> for Capped<T, C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T, C>(PhantomData<(T, C)>);
        impl<'de, T: Deserialize<'de>, C: Cap> Visitor<'de> for CappedVisitor<T, C> {
            type Value = Capped<T, C>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {} {}", C::MAX, C::WHAT)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == C::MAX {
                        return Err(serde::de::Error::custom(format_args!(
                            "more than {} {}; kube-scheduler sends one per node of the \
                             cluster, and the extender takes at most {}",
                            C::MAX,
                            C::WHAT,
                            C::MAX
                        )));
                    }
                    items.push(item);
                }
                Ok(Capped(items, PhantomData))
            }
        }
        deserializer.deserialize_seq(CappedVisitor(PhantomData))
    }
}

fn node_name<'a>(index: usize, raw: &'a RawValue) -> Result<Cow<'a, str>, ApiError> {
    let head: NodeHead<'a> = serde_json::from_str(raw.get()).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid ExtenderArgs: at Nodes.items[{index}]: {e}"
        ))
    })?;
    match head.metadata.and_then(|m| m.0.name) {
        Some(Name(name)) if !name.is_empty() => Ok(name),
        _ => Err(ApiError::bad_request(format!(
            "invalid ExtenderArgs: Nodes.items[{index}] has no metadata.name"
        ))),
    }
}

// === impl Candidates ===

impl<'a> Candidates<'a> {
    pub(crate) fn names(&self) -> Vec<&str> {
        let names = match self {
            Candidates::Names(names) | Candidates::Nodes { names, .. } => names,
        };
        names.iter().map(|n| n.as_ref()).collect()
    }
}

// === impl PodKey ===

impl fmt::Display for PodKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = &self.0.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        write!(f, "{namespace}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(json: &str) -> Result<(Pod, Candidates<'_>), ApiError> {
        serde_json::from_str::<ObjectOnly<Args<'_>>>(json)
            .unwrap()
            .0
            .into_parts()
    }

    #[test]
    fn the_policy_gets_name_namespace_uid_and_claim_volumes_only() {
        let json = r#"{"Pod":{"metadata":{"name":"p","namespace":"ns","uid":"u",
            "labels":{"a":"b"},"managedFields":[{"fieldsV1":{"f:x":{}}}]},
            "spec":{"containers":[{"name":"c","image":"i"}],"volumes":[
              {"name":"cfg","configMap":{"name":"x"}},
              {"name":"data","persistentVolumeClaim":{"claimName":"data-p","readOnly":true}},
              {"name":"tmp","emptyDir":{}},
              {"name":"scratch","ephemeral":{"volumeClaimTemplate":{"spec":{}}}}]},
            "status":{"phase":"Pending"}},"NodeNames":[]}"#;
        let (pod, _) = parts(json).unwrap();
        let want = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: Some(vec![
                    Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "data-p".into(),
                            read_only: None,
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "scratch".into(),
                        ephemeral: Some(EphemeralVolumeSource::default()),
                        ..Volume::default()
                    },
                ]),
                ..PodSpec::default()
            }),
            status: None,
        };
        assert_eq!(pod, want);
    }

    #[test]
    fn more_candidates_than_the_cap_are_refused_while_decoding() {
        let names = vec!["n"; MAX_CANDIDATES];
        let json = serde_json::json!({"Pod": {}, "NodeNames": names}).to_string();
        assert_eq!(parts(&json).unwrap().1.names().len(), MAX_CANDIDATES);
        let names = vec!["n"; MAX_CANDIDATES + 1];
        let json = serde_json::json!({"Pod": {}, "NodeNames": names}).to_string();
        let err = serde_json::from_str::<ObjectOnly<Args<'_>>>(&json)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("more than 10000 node names"),
            "{err}"
        );
        let items = vec![serde_json::json!({"metadata": {"name": "n"}}); MAX_CANDIDATES + 1];
        let json = serde_json::json!({"Pod": {}, "Nodes": {"items": items}}).to_string();
        let err = serde_json::from_str::<ObjectOnly<Args<'_>>>(&json)
            .err()
            .unwrap();
        assert!(err.to_string().contains("Node objects"), "{err}");
    }

    #[test]
    fn more_claim_volumes_than_the_cap_are_refused_other_volumes_are_dropped() {
        let volumes = |n: usize, v: serde_json::Value| vec![v; n];
        let json = |volumes: Vec<serde_json::Value>| {
            serde_json::json!({"Pod": {"spec": {"volumes": volumes}}, "NodeNames": []}).to_string()
        };
        let empty_dirs = json(volumes(
            MAX_CLAIM_VOLUMES * 4,
            serde_json::json!({"name": "t", "emptyDir": {}}),
        ));
        let (pod, _) = parts(&empty_dirs).unwrap();
        assert_eq!(pod.spec.unwrap().volumes, None);
        let ephemeral = serde_json::json!({"name": "e", "ephemeral": {}});
        let (pod, _) = parts(&json(volumes(MAX_CLAIM_VOLUMES, ephemeral.clone()))).unwrap();
        assert_eq!(pod.spec.unwrap().volumes.unwrap().len(), MAX_CLAIM_VOLUMES);
        let over = json(volumes(MAX_CLAIM_VOLUMES + 1, ephemeral));
        let err = serde_json::from_str::<ObjectOnly<Args<'_>>>(&over)
            .err()
            .unwrap();
        assert!(err.to_string().contains("more than 1024"), "{err}");
    }

    #[test]
    fn node_names_borrow_from_the_body() {
        let (_, c) = parts(r#"{"Pod":{},"NodeNames":["a","b"]}"#).unwrap();
        let Candidates::Names(names) = &c else {
            panic!("expected names")
        };
        assert!(names.iter().all(|n| matches!(n, Cow::Borrowed(_))));
        assert_eq!(c.names(), ["a", "b"]);
    }

    #[test]
    fn escaped_node_names_are_unescaped() {
        let (_, c) = parts(r#"{"Pod":{},"NodeNames":["n\u002d1"]}"#).unwrap();
        assert_eq!(c.names(), ["n-1"]);
    }

    #[test]
    fn node_objects_are_kept_verbatim_and_named_from_metadata() {
        let json = r#"{"Pod":{},"Nodes":{"metadata":{},"items":[
            {"metadata":{"name":"a","labels":{"x":"y"}},"status":{"futureField":[1,2]}}]}}"#;
        let (_, c) = parts(json).unwrap();
        let Candidates::Nodes { items, names, .. } = &c else {
            panic!("expected nodes")
        };
        assert_eq!(names.len(), 1);
        assert_eq!(
            items[0].get(),
            r#"{"metadata":{"name":"a","labels":{"x":"y"}},"status":{"futureField":[1,2]}}"#
        );
        assert_eq!(c.names(), ["a"]);
    }

    #[test]
    fn null_items_is_an_empty_candidate_list() {
        let (_, c) = parts(r#"{"Pod":{},"Nodes":{"metadata":{},"items":null}}"#).unwrap();
        assert!(c.names().is_empty());
    }

    #[test]
    fn node_without_a_name_is_refused_with_its_index() {
        for item in [r#"{}"#, r#"{"metadata":{}}"#, r#"{"metadata":{"name":""}}"#] {
            let json = format!(
                r#"{{"Pod":{{}},"Nodes":{{"items":[{{"metadata":{{"name":"a"}}}},{item}]}}}}"#
            );
            let err = parts(&json).err().unwrap();
            assert!(
                err.message().contains("Nodes.items[1]"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn node_names_win_when_both_are_sent() {
        let json = r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"x"}}]},"NodeNames":["a"]}"#;
        let (_, c) = parts(json).unwrap();
        assert!(matches!(c, Candidates::Names(_)));
    }

    #[test]
    fn neither_names_nor_nodes_is_refused() {
        for json in [
            r#"{"Pod":{}}"#,
            r#"{"Pod":{},"Nodes":null,"NodeNames":null}"#,
        ] {
            let err = parts(json).err().unwrap();
            assert!(
                err.message().contains("NodeNames and Nodes"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn arrays_in_place_of_objects_are_refused() {
        for json in [
            r#"[{}, {"items": []}]"#,
            r#"{"Pod":{},"Nodes":[null, [{"metadata":{"name":"a"}}]]}"#,
        ] {
            assert!(
                serde_json::from_str::<ObjectOnly<Args<'_>>>(json).is_err(),
                "{json}"
            );
        }
        let json = r#"{"Pod":{},"Nodes":{"items":[{"metadata":["a"]}]}}"#;
        let err = parts(json).err().unwrap();
        assert!(
            err.message().contains("Nodes.items[0]"),
            "{}",
            err.message()
        );
    }
}
