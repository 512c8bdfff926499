//! The HTTP side of the stand-in: calls an extender's filter and prioritize verbs exactly as
//! kube-scheduler's `HTTPExtender` does (POST `urlPrefix/verb`, PascalCase JSON, `NodeNames`
//! or full `Nodes` depending on `nodeCacheCapable`, 200 required, one timeout for the whole
//! exchange).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Serialize, de::DeserializeOwned};
use stowage_extender::{ExtenderArgs, ExtenderFilterResult, HostPriorityList, NodeList};

use super::ExtenderConfig;

/// What the extender's filter said.
#[derive(Debug, Default)]
pub(super) struct Filtered {
    /// The nodes that passed.
    pub passed: Vec<String>,
    /// Rejected nodes and their reasons (`FailedAndUnresolvableNodes` wins over `FailedNodes`).
    pub failed: BTreeMap<String, String>,
}

/// One extender, as configured.
pub(super) struct HttpExtender {
    config: ExtenderConfig,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpExtender {
    pub(super) fn new(config: ExtenderConfig) -> Self {
        // Go's net/http (kube-scheduler's client) sets TCP_NODELAY on every connection.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { config, client }
    }

    pub(super) fn config(&self) -> &ExtenderConfig {
        &self.config
    }

    fn url(&self, verb: &str) -> String {
        format!("{}/{verb}", self.config.url_prefix.trim_end_matches('/'))
    }

    fn args(&self, pod: &Pod, nodes: &[&Node]) -> ExtenderArgs {
        let names = nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap_or_default())
            .collect();
        if self.config.node_cache_capable {
            ExtenderArgs {
                pod: pod.clone(),
                nodes: None,
                node_names: Some(names),
            }
        } else {
            ExtenderArgs {
                pod: pod.clone(),
                nodes: Some(NodeList {
                    items: nodes.iter().map(|n| (*n).clone()).collect(),
                    ..NodeList::default()
                }),
                node_names: None,
            }
        }
    }

    /// Calls the filter verb; `None` when no filter verb is configured (every node passes).
    pub(super) async fn filter(
        &self,
        pod: &Pod,
        nodes: &[&Node],
    ) -> anyhow::Result<Option<Filtered>> {
        let Some(verb) = self.config.filter_verb.as_deref().filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let result: ExtenderFilterResult = self.post(verb, &self.args(pod, nodes)).await?;
        if !result.error.is_empty() {
            bail!("{}", result.error);
        }
        let input: Vec<String> = nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap_or_default())
            .collect();
        let passed = if self.config.node_cache_capable
            && let Some(names) = result.node_names
        {
            for name in &names {
                if !input.contains(name) {
                    bail!(
                        "extender {} claims a filtered node {name} which is not found in the input node list",
                        self.url(verb)
                    );
                }
            }
            names
        } else if let Some(list) = result.nodes {
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .filter(|n| input.contains(n))
                .collect()
        } else {
            Vec::new()
        };
        // Reasons come from `FailedNodes` only, as kube-scheduler 1.19 and 1.20 read them
        // (they know no `FailedAndUnresolvableNodes`): an extender that names a node only
        // in the newer map leaves the pod's failure without its reason there.
        Ok(Some(Filtered {
            passed,
            failed: result.failed_nodes,
        }))
    }

    /// Calls the prioritize verb: node → raw extender score. Empty when no verb is configured.
    pub(super) async fn prioritize(
        &self,
        pod: &Pod,
        nodes: &[&Node],
    ) -> anyhow::Result<BTreeMap<String, i64>> {
        let Some(verb) = self
            .config
            .prioritize_verb
            .as_deref()
            .filter(|v| !v.is_empty())
        else {
            return Ok(BTreeMap::new());
        };
        let list: HostPriorityList = self.post(verb, &self.args(pod, nodes)).await?;
        Ok(list.into_iter().map(|h| (h.host, h.score)).collect())
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        verb: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        let url = self.url(verb);
        let exchange = async {
            let body = serde_json::to_vec(body).context("encoding the extender request")?;
            let request = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .context("building the extender request")?;
            let failed = || format!("failed {verb} with extender at URL {url}");
            let response = self.client.request(request).await.with_context(failed)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .with_context(failed)?
                .to_bytes();
            if status.as_u16() != 200 {
                bail!(
                    "failed {verb} with extender at URL {url}, code {}",
                    status.as_u16()
                );
            }
            serde_json::from_slice::<R>(&bytes)
                .with_context(|| format!("decoding the {verb} response of extender at URL {url}"))
        };
        match tokio::time::timeout(self.config.http_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => bail!(
                "failed {verb} with extender at URL {url}: timeout after {:?}",
                self.config.http_timeout
            ),
        }
    }
}
