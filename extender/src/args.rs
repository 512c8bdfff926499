//! The router's view of `ExtenderArgs`: the same keys as [`crate::ExtenderArgs`], but node
//! names and Node objects are borrowed from the body. Node objects are kept as raw JSON and
//! only their `metadata.name` is read, so a large NodeList costs one scan, and the nodes that
//! pass go back to the scheduler byte for byte (k8s-openapi would drop fields newer than the
//! API version it was built for).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::Pod;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::body::ApiError;

#[derive(Deserialize)]
pub(crate) struct Args<'a> {
    #[serde(rename = "Pod", alias = "pod")]
    pub(crate) pod: Pod,
    #[serde(rename = "Nodes", alias = "nodes", default, borrow)]
    nodes: Option<ObjectOnly<RawNodeList<'a>>>,
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default,
        borrow
    )]
    node_names: Option<Vec<Name<'a>>>,
}

#[derive(Deserialize)]
struct RawNodeList<'a> {
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

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
    /// Splits off the candidates. `NodeNames` wins when both are set, as the scheduler itself
    /// prefers it for a cache-capable extender; it never sends both.
    pub(crate) fn into_parts(self) -> Result<(Pod, Candidates<'a>), ApiError> {
        let candidates = match (self.node_names, self.nodes) {
            (Some(names), _) => Candidates::Names(names.into_iter().map(|n| n.0).collect()),
            (None, Some(ObjectOnly(list))) => {
                let items = list.items.unwrap_or_default();
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
        Ok((self.pod, candidates))
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
