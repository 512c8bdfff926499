use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;

fn named_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

fn named_node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

fn meta_victims() -> BTreeMap<String, MetaVictims> {
    BTreeMap::from([(
        "foo".to_owned(),
        MetaVictims {
            pods: vec![MetaPod {
                uid: "myuid".to_owned(),
            }],
            num_pdb_violations: 1,
        },
    )])
}

/// Upstream `TestCompatibility`: `obj` encodes to exactly `expect`, and the whole document
/// lowercased decodes back to `obj`.
fn compat<T>(obj: T, expect: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    assert_eq!(serde_json::to_string(&obj).unwrap(), expect);
    let lowered: T = serde_json::from_str(&expect.to_lowercase()).unwrap();
    assert_eq!(lowered, obj);
    let pascal: T = serde_json::from_str(expect).unwrap();
    assert_eq!(pascal, obj);
}

#[test]
fn preemption_result_encodes_uid_and_pdb_acronyms_in_upper_case() {
    compat(
        ExtenderPreemptionResult {
            node_name_to_meta_victims: Some(meta_victims()),
        },
        r#"{"NodeNameToMetaVictims":{"foo":{"Pods":[{"UID":"myuid"}],"NumPDBViolations":1}}}"#,
    );
}

#[test]
fn preemption_args_encode_pascal_case_and_pods_without_type_meta() {
    compat(
        ExtenderPreemptionArgs {
            pod: named_pod("podname"),
            node_name_to_victims: Some(BTreeMap::from([(
                "foo".to_owned(),
                Victims {
                    pods: vec![named_pod("podname")],
                    num_pdb_violations: 1,
                },
            )])),
            node_name_to_meta_victims: Some(meta_victims()),
        },
        concat!(
            r#"{"Pod":{"metadata":{"name":"podname"}},"#,
            r#""NodeNameToVictims":{"foo":{"Pods":[{"metadata":{"name":"podname"}}],"NumPDBViolations":1}},"#,
            r#""NodeNameToMetaVictims":{"foo":{"Pods":[{"UID":"myuid"}],"NumPDBViolations":1}}}"#
        ),
    );
}

#[test]
fn extender_args_encode_pascal_case_and_node_list_without_type_meta() {
    compat(
        ExtenderArgs {
            pod: named_pod("podname"),
            nodes: Some(NodeList {
                metadata: ListMeta::default(),
                items: vec![named_node("nodename")],
            }),
            node_names: Some(vec!["node1".to_owned()]),
        },
        concat!(
            r#"{"Pod":{"metadata":{"name":"podname"}},"#,
            r#""Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename"}}]},"#,
            r#""NodeNames":["node1"]}"#
        ),
    );
}

#[test]
fn filter_result_encodes_pascal_case_and_omits_only_empty_unresolvable_map() {
    compat(
        ExtenderFilterResult {
            nodes: Some(NodeList {
                metadata: ListMeta::default(),
                items: vec![named_node("nodename")],
            }),
            node_names: Some(vec!["node1".to_owned()]),
            failed_nodes: FailedNodesMap::from([("foo".to_owned(), "bar".to_owned())]),
            failed_and_unresolvable_nodes: FailedNodesMap::new(),
            error: "myerror".to_owned(),
        },
        concat!(
            r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename"}}]},"#,
            r#""NodeNames":["node1"],"FailedNodes":{"foo":"bar"},"Error":"myerror"}"#
        ),
    );
    compat(
        ExtenderFilterResult {
            failed_and_unresolvable_nodes: FailedNodesMap::from([(
                "n".to_owned(),
                "why".to_owned(),
            )]),
            ..ExtenderFilterResult::default()
        },
        r#"{"Nodes":null,"NodeNames":null,"FailedNodes":{},"FailedAndUnresolvableNodes":{"n":"why"},"Error":""}"#,
    );
}

#[test]
fn binding_args_encode_pod_uid_in_upper_case() {
    compat(
        ExtenderBindingArgs {
            pod_name: "mypodname".to_owned(),
            pod_namespace: "mypodnamespace".to_owned(),
            pod_uid: "mypoduid".to_owned(),
            node: "mynode".to_owned(),
        },
        r#"{"PodName":"mypodname","PodNamespace":"mypodnamespace","PodUID":"mypoduid","Node":"mynode"}"#,
    );
}

#[test]
fn binding_result_and_host_priority_encode_pascal_case() {
    compat(
        ExtenderBindingResult {
            error: "myerror".to_owned(),
        },
        r#"{"Error":"myerror"}"#,
    );
    compat(
        HostPriority {
            host: "myhost".to_owned(),
            score: 1,
        },
        r#"{"Host":"myhost","Score":1}"#,
    );
}

#[test]
fn host_priority_list_is_a_bare_array() {
    let list: HostPriorityList = vec![
        HostPriority {
            host: "node-a".to_owned(),
            score: 8,
        },
        HostPriority {
            host: "node-b".to_owned(),
            score: 3,
        },
    ];
    let text = r#"[{"Host":"node-a","Score":8},{"Host":"node-b","Score":3}]"#;
    assert_eq!(serde_json::to_string(&list).unwrap(), text);
    assert_eq!(
        serde_json::from_str::<HostPriorityList>(text).unwrap(),
        list
    );
}

/// The exact documents upstream's Go `TestCompatibility` expects `encoding/json` to produce,
/// `creationTimestamp: null`, `containers: null` and the capitalised `Port` included.
#[test]
fn documents_encoded_by_go_decode() {
    let args: ExtenderArgs = serde_json::from_str(concat!(
        r#"{"Pod":{"metadata":{"name":"podname","creationTimestamp":null},"spec":{"containers":null},"status":{}},"#,
        r#""Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename","creationTimestamp":null},"spec":{},"#,
        r#""status":{"daemonEndpoints":{"kubeletEndpoint":{"Port":0}},"nodeInfo":{"machineID":"","systemUUID":"","#,
        r#""bootID":"","kernelVersion":"","osImage":"","containerRuntimeVersion":"","kubeletVersion":"","#,
        r#""kubeProxyVersion":"","operatingSystem":"","architecture":""}}}]},"NodeNames":["node1"]}"#
    ))
    .unwrap();
    assert_eq!(args.pod.metadata.name.as_deref(), Some("podname"));
    let nodes = args.nodes.unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].metadata.name.as_deref(), Some("nodename"));
    assert_eq!(args.node_names, Some(vec!["node1".to_owned()]));

    let preempt: ExtenderPreemptionArgs = serde_json::from_str(concat!(
        r#"{"Pod":{"metadata":{"name":"podname","creationTimestamp":null},"spec":{"containers":null},"status":{}},"#,
        r#""NodeNameToVictims":{"foo":{"Pods":[{"metadata":{"name":"podname","creationTimestamp":null},"#,
        r#""spec":{"containers":null},"status":{}}],"NumPDBViolations":1}},"#,
        r#""NodeNameToMetaVictims":{"foo":{"Pods":[{"UID":"myuid"}],"NumPDBViolations":1}}}"#
    ))
    .unwrap();
    assert_eq!(preempt.node_name_to_meta_victims, Some(meta_victims()));
    let victims = &preempt.node_name_to_victims.unwrap()["foo"];
    assert_eq!(victims.num_pdb_violations, 1);
    assert_eq!(victims.pods[0].metadata.name.as_deref(), Some("podname"));
}

/// The cache-capable request of PROTOCOL.md 1.3: an informer-cache pod without
/// `apiVersion`/`kind`, `"Nodes": null`.
#[test]
fn scheduler_request_with_pod_without_type_meta_decodes() {
    let args: ExtenderArgs = serde_json::from_value(json!({
        "Pod": {
            "metadata": {"name": "db-0", "namespace": "prod", "uid": "6f1c2a9e-0000-4000-8000-000000000001"},
            "spec": {
                "schedulerName": "default-scheduler",
                "containers": [{"name": "db", "image": "postgres:16"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]
            },
            "status": {"phase": "Pending"}
        },
        "Nodes": null,
        "NodeNames": ["node-a", "node-b", "node-c"]
    }))
    .unwrap();
    assert_eq!(args.pod.metadata.namespace.as_deref(), Some("prod"));
    let volumes = args.pod.spec.unwrap().volumes.unwrap();
    let claim = volumes[0].persistent_volume_claim.as_ref().unwrap();
    assert_eq!(claim.claim_name, "data-db-0");
    assert_eq!(args.nodes, None);
    assert_eq!(args.node_names.unwrap(), ["node-a", "node-b", "node-c"]);
}

#[test]
fn pod_with_its_own_type_meta_decodes_and_a_wrong_kind_is_refused() {
    let ok = json!({"Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, "NodeNames": []});
    assert!(serde_json::from_value::<ExtenderArgs>(ok).is_ok());
    let bad = json!({"Pod": {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "p"}}, "NodeNames": []});
    assert!(serde_json::from_value::<ExtenderArgs>(bad).is_err());
}

#[test]
fn missing_pod_is_an_error_but_missing_node_fields_are_null() {
    assert!(serde_json::from_str::<ExtenderArgs>(r#"{"NodeNames":["a"]}"#).is_err());
    assert!(serde_json::from_str::<ExtenderArgs>(r#"{"Pod":null,"NodeNames":["a"]}"#).is_err());
    let args: ExtenderArgs = serde_json::from_str(r#"{"Pod":{}}"#).unwrap();
    assert_eq!((args.nodes, args.node_names), (None, None));
}

#[test]
fn filter_result_from_protocol_reference_decodes() {
    let result: ExtenderFilterResult = serde_json::from_value(json!({
        "NodeNames": ["node-a"],
        "FailedNodes": {"node-b": "local-volume: 12Gi free, 20Gi requested"},
        "FailedAndUnresolvableNodes": {"node-c": "local-volume: node has no storage pool"},
        "Error": ""
    }))
    .unwrap();
    assert_eq!(result.nodes, None);
    assert_eq!(result.node_names.unwrap(), ["node-a"]);
    assert_eq!(
        result.failed_nodes["node-b"],
        "local-volume: 12Gi free, 20Gi requested"
    );
    assert_eq!(
        result.failed_and_unresolvable_nodes["node-c"],
        "local-volume: node has no storage pool"
    );
}

#[test]
fn go_nulls_for_maps_slices_and_strings_decode_as_empty() {
    let result: ExtenderFilterResult = serde_json::from_str(
        r#"{"Nodes":{"metadata":{},"items":null},"NodeNames":null,"FailedNodes":null,"FailedAndUnresolvableNodes":null,"Error":null}"#,
    )
    .unwrap();
    assert_eq!(
        result,
        ExtenderFilterResult {
            nodes: Some(NodeList::default()),
            ..ExtenderFilterResult::default()
        }
    );
    let victims: MetaVictims =
        serde_json::from_str(r#"{"Pods":null,"NumPDBViolations":0}"#).unwrap();
    assert!(victims.pods.is_empty());
}

#[test]
fn camel_case_keys_decode_like_go() {
    let binding: ExtenderBindingArgs =
        serde_json::from_str(r#"{"podName":"p","podNamespace":"ns","podUID":"u","node":"n"}"#)
            .unwrap();
    assert_eq!(binding.pod_uid, "u");
    let result: ExtenderFilterResult = serde_json::from_str(
        r#"{"nodeNames":["a"],"failedNodes":{"b":"x"},"failedAndUnresolvableNodes":{"c":"y"},"error":""}"#,
    )
    .unwrap();
    assert_eq!(result.node_names.unwrap(), ["a"]);
    assert_eq!(result.failed_and_unresolvable_nodes.len(), 1);
    let victims: MetaVictims =
        serde_json::from_str(r#"{"pods":[{"uid":"u"}],"numPDBViolations":2}"#).unwrap();
    assert_eq!(
        (victims.pods[0].uid.as_str(), victims.num_pdb_violations),
        ("u", 2)
    );
}

#[test]
fn serde_default_acronym_spellings_are_not_what_is_written() {
    let text = serde_json::to_string(&ExtenderBindingArgs::default()).unwrap();
    assert!(
        text.contains(r#""PodUID""#) && !text.contains("PodUid"),
        "{text}"
    );
    let text = serde_json::to_string(&MetaVictims {
        pods: vec![MetaPod::default()],
        num_pdb_violations: 0,
    })
    .unwrap();
    assert!(
        text.contains(r#""NumPDBViolations""#) && text.contains(r#""UID""#),
        "{text}"
    );
}
