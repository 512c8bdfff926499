//! The whole system with real processes: `stowage agent` per node on hostpath pools in temp
//! dirs, `stowage controller` (leader election on, the extender served on its --listen),
//! and testkit's kube-scheduler + PV-controller stand-in calling that extender over HTTP.
//! Pods with WaitForFirstConsumer claims go through the real flow: filter/prioritize,
//! selected-node, LocalVolume, directory on the node's pool, PV, bind, pod bound.
//!
//! The last test points Debian's `prometheus` at every process's /metrics and evaluates each
//! expression of dashboards/stowage.json through its HTTP API.
//!
//! These tests need the stand-in scheduler (it plays kube-scheduler against the in-memory API
//! server); with STOWAGE_E2E_KUBECONFIG set they print SKIP: a real cluster has its own.

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use stowage::api::names;
use stowage_testkit::fixtures::{pod, pvc};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::{wait_for, wait_until};
use support::stack::{Env, GI, MI, NS, Options, WAIT, mix};

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_pods_is_placed_spread_within_every_pool_and_gets_its_directories() {
    let Some(env) = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await
    else {
        return;
    };
    let plan = mix(60, 7);
    let total_claims: usize = plan.iter().map(Vec::len).sum();
    let names: Vec<String> = (0..plan.len()).map(|i| format!("burst{i:02}")).collect();
    // One burst: all claims and pods created before anything is scheduled.
    let creates = names
        .iter()
        .zip(&plan)
        .map(|(name, sizes)| env.pod(name, "local", sizes));
    futures::future::join_all(creates).await;

    let bound = env.all_bound("burst", total_claims).await;
    let placed = env.scheduled(&names).await;
    let pvs: HashMap<String, PersistentVolume> = env
        .pvs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|pv| (pv.name_any(), pv))
        .collect();
    for (i, (pod_name, sizes)) in names.iter().zip(&plan).enumerate() {
        let node = &placed[pod_name];
        for c in 0..sizes.len() {
            let claim = format!("{pod_name}-{c}");
            let pv = &pvs[&bound[&claim]];
            let (pv_node, path) = Env::pv_node_and_path(pv);
            assert_eq!(
                &pv_node, node,
                "pod {i}'s claim {claim} is on its pod's node"
            );
            let dir = Path::new(&path);
            assert!(dir.is_dir(), "{claim}: {path} exists on {node}'s pool");
            assert!(
                dir.starts_with(&env.agent(node).pool_dir),
                "{claim}: {path} is inside {node}'s pool dir {}",
                env.agent(node).pool_dir.display()
            );
        }
    }
    let allocated = env.allocated().await;
    let total: u64 = plan.iter().flatten().sum::<u64>() * MI;
    assert_eq!(
        allocated.values().sum::<u64>(),
        total,
        "one LocalVolume per claim"
    );
    let mut utilization = Vec::new();
    for a in &env.agents {
        let used = allocated.get(&a.name).copied().unwrap_or(0);
        assert!(
            used <= a.capacity,
            "{}: allocated {used} above allocatable {}",
            a.name,
            a.capacity
        );
        utilization.push((a.name.clone(), used as f64 / a.capacity as f64));
    }
    let max = utilization.iter().map(|u| u.1).fold(f64::MIN, f64::max);
    let min = utilization.iter().map(|u| u.1).fold(f64::MAX, f64::min);
    assert!(
        max - min < 0.25,
        "spread placement keeps utilization within a band: {utilization:?}"
    );
    assert!(min > 0.0, "every node got volumes: {utilization:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binpack_fills_the_fullest_node_that_fits_first() {
    let Some(env) = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await
    else {
        return;
    };
    // Pre-fill: n2 half full, n1 a quarter (pinned with a node selector).
    for (name, node, mib) in [("fill-n2", "n2", 3072), ("fill-n1", "n1", 1024)] {
        env.claims()
            .create(
                &PostParams::default(),
                &pvc(NS, name)
                    .size(&format!("{mib}Mi"))
                    .class("local")
                    .build(),
            )
            .await
            .unwrap();
        env.pods()
            .create(
                &PostParams::default(),
                &pod(NS, name)
                    .claims([name])
                    .node_selector(names::LABEL_HOSTNAME, node)
                    .build(),
            )
            .await
            .unwrap();
    }
    env.scheduled(&["fill-n2".into(), "fill-n1".into()]).await;

    let names: Vec<String> = (0..8).map(|i| format!("pack{i}")).collect();
    let creates = names
        .iter()
        .map(|name| env.pod(name, "local-binpack", &[100]));
    futures::future::join_all(creates).await;
    let placed = env.scheduled(&names).await;
    for (pod_name, node) in &placed {
        assert_eq!(
            node, "n2",
            "{pod_name}: binpack prefers the fullest node: {placed:?}"
        );
    }
    // n2 has 6Gi - 3Gi - 800Mi = 2272Mi free: a 2500Mi claim goes to the fullest node
    // that still fits, n1 (3Gi free), not the emptiest, n3.
    env.pod("pack-big", "local-binpack", &[2500]).await;
    let placed = env.scheduled(&["pack-big".into()]).await;
    assert_eq!(placed["pack-big"], "n1", "the fullest node that fits");
    let allocated = env.allocated().await;
    for a in &env.agents {
        assert!(allocated.get(&a.name).copied().unwrap_or(0) <= a.capacity);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_bigger_than_any_node_stays_pending_with_the_reason() {
    let Some(env) = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI), ("n3", 8 * GI)],
        Options::default(),
    )
    .await
    else {
        return;
    };
    env.pod("huge", "local", &[9 * 1024]).await;
    // The first attempts may fail for a claim the extender's cache has not seen yet
    // ("persistentvolumeclaim not found"), as with a real kube-scheduler; the retries must
    // settle on the capacity reason.
    let expected = "storage pool \"default\" has 8Gi free, the pod's claims need 9Gi";
    let failure = wait_until(WAIT, "the pod's scheduling fails for capacity", || async {
        env.scheduler
            .last_failure(NS, "huge")
            .filter(|f| f.contains("free, the pod's claims need"))
    })
    .await
    .unwrap();
    assert!(failure.starts_with("0/3 nodes are available"), "{failure}");
    assert!(
        failure.contains(expected),
        "the reason names the largest free space: {failure}"
    );
    // It stays that way: retried, still unscheduled, the claim Pending without a PV.
    let attempts = env.scheduler.attempts(NS, "huge");
    wait_for(WAIT, "the scheduler retried", || async {
        env.scheduler.attempts(NS, "huge") > attempts + 2
    })
    .await
    .unwrap();
    let pod = env.pods().get("huge").await.unwrap();
    assert_eq!(
        pod.spec.unwrap().node_name,
        None,
        "the pod stays unscheduled"
    );
    let claim = env.claims().get("huge-0").await.unwrap();
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    assert!(
        !claim
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(names::ANNOTATION_SELECTED_NODE),
        "no node was selected"
    );
    assert!(
        env.lvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        env.pvs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_pods_and_claims_removes_archives_or_keeps_the_directories() {
    let Some(env) = Env::start(&[("n1", 4 * GI), ("n2", 6 * GI)], Options::default()).await else {
        return;
    };
    let cases = [
        ("del", "local"),
        ("arc", "local-archive"),
        ("keep", "local-keep"),
    ];
    let mut names = Vec::new();
    for (prefix, class) in cases {
        for i in 0..3 {
            let name = format!("{prefix}{i}");
            env.pod(&name, class, &[64, 32]).await;
            names.push(name);
        }
    }
    env.scheduled(&names).await;
    // claim → (PV name, node, path)
    let mut dirs: HashMap<&str, Vec<(String, String, PathBuf)>> = HashMap::new();
    for (prefix, _) in cases {
        let bound = env.all_bound(prefix, 6).await;
        for pv_name in bound.values() {
            let pv = env.pvs().get(pv_name).await.unwrap();
            let (node, path) = Env::pv_node_and_path(&pv);
            assert!(Path::new(&path).is_dir(), "{path} exists");
            dirs.entry(prefix)
                .or_default()
                .push((pv_name.clone(), node, path.into()));
        }
    }
    for (prefix, _) in cases {
        env.delete_all(prefix).await;
    }
    let pvs = env.pvs();
    let lvs = env.lvs();
    wait_for(WAIT, "every PV and LocalVolume is gone", || async {
        pvs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            && lvs
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
    })
    .await
    .unwrap();
    for (pv, _, path) in &dirs["del"] {
        assert!(!path.exists(), "{pv}: {} was deleted", path.display());
    }
    for (pv, node, path) in &dirs["arc"] {
        assert!(!path.exists(), "{pv}: {} was moved away", path.display());
        let archive = env.agent(node).pool_dir.join(".archive");
        let archived: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            archived.iter().any(|a| a.starts_with(&format!("{pv}-"))),
            "{pv} is archived in {}: {archived:?}",
            archive.display()
        );
    }
    for (pv, _, path) in &dirs["keep"] {
        assert!(
            path.is_dir(),
            "{pv}: onDelete retain keeps {}",
            path.display()
        );
    }
}

// === Prometheus ===

/// `prometheus` and `promtool`, or `None` (SKIP) when not installed outside CI.
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("prometheus/promtool are not installed (apt-get install -y prometheus)")
        }
        _ => {
            eprintln!(
                "SKIP: prometheus/promtool are not installed (apt-get install -y prometheus)"
            );
            None
        }
    }
}

/// Every PromQL expression of the dashboard (with `$pool` as `.*`) and the metric of each
/// `label_values(metric, label)` variable query.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/stowage.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(expr.replace("$pool", ".*"));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(out.len() >= 25, "the dashboard's expressions: {out:?}");
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["definition"].as_str()
            && let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
        {
            let metric = inner.split(',').next().unwrap().trim();
            out.push(metric.to_string());
        }
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_expression_returns_series_on_a_real_prometheus() {
    let Some((prometheus, promtool)) = prometheus_tools() else {
        return;
    };
    let Some(env) = Env::start(
        &[("n1", 4 * GI), ("n2", 6 * GI)],
        Options {
            nfs: vec!["10.0.0.11", "10.0.0.12"],
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    // A small run so counters and histograms have samples: local volumes provisioned and
    // deleted, an NFS volume, and a pod nothing fits.
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    for name in &names {
        env.pod(name, "local", &[64]).await;
    }
    env.claims()
        .create(
            &PostParams::default(),
            &pvc(NS, "shared").size("1Gi").class("nfs").build(),
        )
        .await
        .unwrap();
    env.pod("too-big", "local", &[20 * 1024]).await;
    env.scheduled(&names).await;
    env.all_bound("p", 4).await;
    env.all_bound("shared", 1).await;
    env.delete_all("p0").await;

    // Every /metrics body passes promtool's lint.
    let mut targets = vec![format!("127.0.0.1:{}", env.controller_port)];
    targets.extend(env.agents.iter().map(|a| format!("127.0.0.1:{}", a.port)));
    for target in &targets {
        let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
        let (code, body) = get(port, "/metrics").await.unwrap();
        assert_eq!(code, 200, "{target}/metrics");
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {target}/metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = env.cluster.dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: stowage\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = env
        .cluster
        .role(&prometheus, "prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let query = |expr: String| async move {
        get(port, format!("/api/v1/query?query={}", encode(&expr)))
            .await
            .map(|(code, body)| {
                (
                    code,
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
                    body,
                )
            })
    };
    // Samples arrive: every target is up, and rates have at least two scrapes to work with.
    let up_count = targets.len();
    wait_for(
        Duration::from_secs(60),
        "every target is scraped and up",
        || async {
            query("sum(up) and count(up) == count(up == 1)".into())
                .await
                .and_then(|(_, v, _)| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                })
                == Some(up_count as f64)
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    for expr in dashboard_queries() {
        match query(expr.clone()).await {
            Some((200, v, _))
                if v["status"] == "success"
                    && v["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty()) => {}
            Some((_, _, body)) => failures.push(format!("{expr}\n    -> {body}")),
            None => failures.push(format!("{expr}\n    -> no answer")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard expressions without a series or not parsing:\n  {}",
        failures.join("\n  ")
    );
}
