//! The simulated cluster: generated from a size distribution, or read from a file in
//! stowage's own cluster format or as `kubectl get storagenodes -o json` prints it.

use std::path::Path;

use serde::Deserialize;

use super::Error;
use super::dist::{Rng, SizeDist};
use crate::api::storage_node::StorageNodeStatus;
use crate::ledger::{Bytes, Driver, Ledger, NodeState, PoolState, Reserve};

/// stowage's own cluster file: a list of node groups.
///
/// ```yaml
/// nodes:
///   - name: big          # with count > 1 the nodes are big-1, big-2, ...
///     count: 4
///     pools:
///       - {name: default, capacity: 4Ti, reserve: 5%}
///   - name: small-1
///     pools:
///       - {name: default, capacity: 500Gi, allocated: 100Gi, driver: hostpath}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    nodes: Vec<NodeGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeGroup {
    name: String,
    #[serde(default = "one")]
    count: u32,
    pools: Vec<PoolSpec>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSpec {
    name: String,
    capacity: String,
    #[serde(default)]
    reserve: Option<String>,
    #[serde(default)]
    allocated: Option<String>,
    #[serde(default)]
    driver: Option<String>,
}

/// `kubectl get storagenodes -o json`: a List whose items are StorageNodes.
#[derive(Debug, Deserialize)]
struct StorageNodeList {
    items: Vec<StorageNodeItem>,
}

#[derive(Debug, Deserialize)]
struct StorageNodeItem {
    metadata: ItemMeta,
    #[serde(default)]
    status: StorageNodeStatus,
}

#[derive(Debug, Deserialize)]
struct ItemMeta {
    name: String,
}

/// A generated cluster of `nodes` nodes, each with one pool named `pool`.
pub fn generate(
    nodes: u32,
    size: &SizeDist,
    reserve: Reserve,
    pool: &str,
    rng: &mut Rng,
) -> Ledger {
    let width = nodes.to_string().len().max(2);
    (1..=nodes)
        .map(|i| {
            let capacity = size.sample(rng);
            let mut p = PoolState::new(pool, Driver::Btrfs, capacity);
            p.reserve = reserve.resolve(capacity);
            NodeState::new(format!("node-{i:0width$}"), vec![p])
        })
        .collect()
}

/// Reads a cluster file (YAML or JSON; YAML is a superset, so one parser serves both).
pub fn load(path: &Path) -> Result<Ledger, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadCluster {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| Error::ClusterFile {
        path: path.display().to_string(),
        message,
    })
}

/// Parses the text of a cluster file; the error says what is wrong, not where the file is.
pub fn parse(text: &str) -> Result<Ledger, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let ledger = if value.get("items").is_some() {
        let list: StorageNodeList =
            serde_yaml::from_value(value).map_err(|e| format!("not a StorageNode list: {e}"))?;
        list.items
            .iter()
            .map(|item| {
                item.status
                    .to_node_state(&item.metadata.name, Some(std::time::Duration::ZERO))
            })
            .collect()
    } else if value.get("nodes").is_some() {
        let file: ClusterFile = serde_yaml::from_value(value)
            .map_err(|e| format!("not a stowage cluster file: {e}"))?;
        from_groups(file)?
    } else {
        return Err(
            "expected a stowage cluster file (a top-level \"nodes\" list) or the output of \
             `kubectl get storagenodes -o json` (a top-level \"items\" list)"
                .to_string(),
        );
    };
    if ledger.is_empty() {
        return Err("the cluster has no nodes".to_string());
    }
    Ok(ledger)
}

fn from_groups(file: ClusterFile) -> Result<Ledger, String> {
    let mut ledger = Ledger::new();
    for group in file.nodes {
        if group.count == 0 || group.count > 100_000 {
            return Err(format!(
                "node group {:?}: count must be between 1 and 100000",
                group.name
            ));
        }
        let mut pools = Vec::with_capacity(group.pools.len());
        for spec in &group.pools {
            pools.push(pool_from_spec(&group.name, spec)?);
        }
        let mut names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "node {:?}: pool {:?} is listed twice",
                group.name, w[0]
            ));
        }
        for i in 1..=group.count {
            let name = if group.count == 1 {
                group.name.clone()
            } else {
                format!("{}-{i}", group.name)
            };
            if ledger.node(&name).is_some() {
                return Err(format!("node {name:?} is listed twice"));
            }
            ledger.upsert(NodeState::new(name, pools.clone()));
        }
    }
    Ok(ledger)
}

fn pool_from_spec(node: &str, spec: &PoolSpec) -> Result<PoolState, String> {
    let ctx = |field: &str, e: &dyn std::fmt::Display| {
        format!("node {node:?} pool {:?} {field}: {e}", spec.name)
    };
    let capacity: Bytes = spec.capacity.parse().map_err(|e| ctx("capacity", &e))?;
    let driver = match &spec.driver {
        Some(d) => d.parse().map_err(|e: String| ctx("driver", &e))?,
        None => Driver::Btrfs,
    };
    let mut p = PoolState::new(spec.name.as_str(), driver, capacity);
    if let Some(r) = &spec.reserve {
        p.reserve = r
            .parse::<Reserve>()
            .map_err(|e| ctx("reserve", &e))?
            .resolve(capacity);
    }
    if let Some(a) = &spec.allocated {
        p.allocated = a.parse().map_err(|e| ctx("allocated", &e))?;
        if p.allocated > p.allocatable() {
            return Err(ctx(
                "allocated",
                &format!(
                    "{} is more than the {} allocatable",
                    p.allocated,
                    p.allocatable()
                ),
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stowage_cluster_files_expand_groups_and_parse_sizes() {
        let ledger = parse(
            "nodes:\n  - name: big\n    count: 3\n    pools: [{name: default, capacity: 4Ti, reserve: 5%}]\n  - name: small\n    pools:\n      - {name: default, capacity: 500Gi, allocated: 100Gi, driver: hostpath}\n      - {name: fast, capacity: 100Gi}\n",
        )
        .unwrap();
        let names: Vec<_> = ledger.nodes().map(|n| n.name.to_string()).collect();
        assert_eq!(names, ["big-1", "big-2", "big-3", "small"]);
        let big = ledger.node("big-2").unwrap().pool("default").unwrap();
        assert_eq!(
            big.allocatable(),
            Bytes(Bytes::tib(4).0 - Bytes::tib(4).0 / 20)
        );
        let small = ledger.node("small").unwrap();
        assert_eq!(small.pool("default").unwrap().allocated, Bytes::gib(100));
        assert_eq!(small.pool("default").unwrap().driver, Driver::Hostpath);
        assert_eq!(small.pool("fast").unwrap().capacity, Bytes::gib(100));
    }

    #[test]
    fn kubectl_storagenode_lists_are_read() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"stowage.io/v1alpha1","kind":"StorageNode","metadata":{"name":"n1"},
           "status":{"pools":[{"name":"default","driver":"btrfs","path":"/data","capacityBytes":1000,
             "allocatableBytes":900,"allocatedBytes":300,"availableBytes":600,"volumes":3,"ready":true}]}}]}"#;
        let ledger = parse(json).unwrap();
        let p = ledger.node("n1").unwrap().pool("default").unwrap();
        assert_eq!(p.free(), Bytes(600));
    }

    #[test]
    fn malformed_cluster_files_name_the_problem() {
        let cases = [
            ("nodes: [", "not YAML or JSON"),
            ("{}", "expected a stowage cluster file"),
            ("nodes: []", "no nodes"),
            (
                "nodes: [{name: a, pools: [{name: p, capacity: -1Gi}]}]",
                "node \"a\" pool \"p\" capacity: quantity \"-1Gi\" is negative",
            ),
            (
                "nodes: [{name: a, pools: [{name: p, capacity: 1Gi, allocated: 2Gi}]}]",
                "more than the 1Gi allocatable",
            ),
            (
                "nodes: [{name: a, pools: [{name: p, capacity: 1Gi}]}, {name: a, pools: []}]",
                "listed twice",
            ),
            (
                "nodes: [{name: a, pools: [{name: p, capacity: 1Gi, size: 3}]}]",
                "unknown field `size`",
            ),
            ("nodes: [{name: a, count: 0, pools: []}]", "count must be"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn generated_clusters_follow_the_seed() {
        let d: SizeDist = "choice:1Ti,2Ti".parse().unwrap();
        let a = generate(10, &d, Reserve::None, "default", &mut Rng::new(5));
        let b = generate(10, &d, Reserve::None, "default", &mut Rng::new(5));
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        assert!(a.node("node-01").is_some() && a.node("node-10").is_some());
    }
}
