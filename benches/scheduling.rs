//! What stowage's extender costs kube-scheduler: placement decisions per second of a real
//! kube-scheduler 1.19 with the shipped configuration (calling the controller's extender)
//! and without the extender, for a batch of pods with WaitForFirstConsumer claims at
//! thousands of nodes.
//!
//! ```sh
//! STOWAGE_E2E=real cargo bench --bench scheduling                        # 5,000 nodes, 500 pods
//! STOWAGE_E2E=real cargo bench --bench scheduling -- --nodes 1000 --pods 200 --runs 2
//! STOWAGE_E2E=real cargo bench --bench scheduling -- --keep-best 1   # controller --extender-keep-best
//! ```
//!
//! Each run and mode gets a control plane of its own (TESTING.md) holding `--nodes` Nodes
//! (Ready, untainted, as a kubelet registers them) with a StorageNode each (pool `default`,
//! 2 TiB, half allocated, the heartbeat written once: the controller runs with
//! `--stale-after 3600`), a WaitForFirstConsumer class of stowage's, and `--pods` pods of
//! one 10 GiB claim each, all created before kube-scheduler starts. The controller runs in
//! both modes, so the API server carries the same provisioning load; no agent runs, so no
//! volume gets Ready and every pod stays in kube-scheduler's binding cycle after its
//! decision. A decision is a scheduling cycle that chose a node: kube-scheduler's
//! `scheduler_scheduling_algorithm_duration_seconds_count` (1.19 counts
//! `scheduler_schedule_attempts_total{result="scheduled"}` only once a pod is bound, which
//! these pods never are), sampled every 50 ms. The rate
//! is the decisions between the first and the last one over the time between them, so
//! kube-scheduler's start-up (its informers listing every Node) is not counted.
//!
//! With the extender it also prints the extender's own time per verb (its
//! `stowage_extender_request_duration_seconds`), as a share of the decisions' wall time.
//!
//! Target: with the extender, at least 0.95 of the decisions per second without it.
//! Modes alternate between runs (with, without, without, with, ...), so a machine that
//! slows down over the runs does not favour one.
//!
//! `STOWAGE_BENCH_BINARY=PATH` runs another build of `stowage` as the controller.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use stowage::api::crds;
use stowage::api::names;
use stowage::api::storage_node::{StorageNode, StorageNodeSpec};
use stowage_testkit::e2e::Cluster;
use stowage_testkit::fixtures::{namespace, node, pod, pvc, storage_class};
use stowage_testkit::net::{extender_time, free_port, get};

const NS: &str = "bench";
/// kube-scheduler's count of scheduling cycles whose algorithm found a node.
const DECISIONS: &str = "scheduler_scheduling_algorithm_duration_seconds_count";
/// Requests in flight while the cluster is filled.
const CONCURRENCY: usize = 32;

struct Options {
    nodes: usize,
    pods: usize,
    runs: usize,
    /// The controller's `--extender-keep-best`; its own default when not given.
    keep_best: Option<usize>,
}

fn options() -> Options {
    let mut opts = Options {
        nodes: 5_000,
        pods: 500,
        runs: 1,
        keep_best: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{arg} needs a value"))
                .parse::<usize>()
                .unwrap_or_else(|e| panic!("{arg}: {e}"))
        };
        match arg.as_str() {
            "--nodes" => opts.nodes = value(),
            "--pods" => opts.pods = value(),
            "--runs" => opts.runs = value(),
            "--keep-best" => opts.keep_best = Some(value()),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    opts
}

fn binary() -> PathBuf {
    std::env::var_os("STOWAGE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage")))
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Nodes and StorageNodes, the class and the claims: everything but the pods.
async fn populate(cluster: &Cluster, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = cluster.client();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let storage_nodes: Api<StorageNode> = Api::all(client.clone());
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..opts.nodes)
        .map(|i| {
            let (storage_nodes, now) = (storage_nodes.clone(), now.clone());
            async move {
                let name = node_name(i);
                cluster.add_node(&node(&name).build()).await?;
                storage_nodes
                    .create(
                        &PostParams::default(),
                        &StorageNode::new(&name, StorageNodeSpec {}),
                    )
                    .await?;
                let status = support::half_full_node_status(&now);
                storage_nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": status })),
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let classes: Api<StorageClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &storage_class("local")
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .build(),
        )
        .await?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace(NS).build())
        .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let results: Vec<kube::Result<PersistentVolumeClaim>> = futures::stream::iter(0..opts.pods)
        .map(|i| {
            let claims = claims.clone();
            async move {
                let claim = pvc(NS, &format!("data-{i}")).size("10Gi").class("local");
                claims.create(&PostParams::default(), &claim.build()).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<kube::Result<Vec<_>>>()?;
    println!(
        "  populated {} Nodes and StorageNodes, {} claims in {:.1} s",
        opts.nodes,
        opts.pods,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn create_pods(cluster: &Cluster, opts: &Options) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NS);
    let results: Vec<kube::Result<Pod>> = futures::stream::iter(0..opts.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let object = pod(NS, &format!("db-{i}"))
                    .claims([format!("data-{i}")])
                    .build();
                pods.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<kube::Result<Vec<_>>>()?;
    Ok(())
}

/// What one run of one mode measured.
struct Measured {
    decisions: u64,
    seconds: f64,
    unschedulable: u64,
    errors: u64,
    /// The extender's own time per verb (`filter`, `prioritize`): requests and seconds,
    /// from its `stowage_extender_request_duration_seconds`.
    extender: Vec<(String, u64, f64)>,
}

async fn run_mode(opts: &Options, with_extender: bool) -> anyhow::Result<Measured> {
    let cluster = Cluster::start().await?;
    anyhow::ensure!(
        cluster.is_real(),
        "this bench needs a real kube-scheduler: run it with STOWAGE_E2E=real (TESTING.md)"
    );
    cluster.install_crds(crds()).await?;
    let port = free_port();
    let _controller = cluster
        .role(binary(), "controller")
        .arg("controller")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .arg("--stale-after")
        .arg("3600")
        .args(opts.keep_best.map(|k| format!("--extender-keep-best={k}")))
        .env("RUST_LOG", "warn")
        .spawn()?;
    populate(&cluster, opts).await?;
    // The extender answers only once the controller's caches hold every StorageNode.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(get(port, "/readyz").await, Some((200, _))) {
        anyhow::ensure!(Instant::now() < deadline, "the controller never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_pods(&cluster, opts).await?;
    let extender = if with_extender {
        format!("http://127.0.0.1:{port}")
    } else {
        "none".to_string()
    };
    cluster.start_scheduler(&extender).await?;
    let plane = cluster.plane().expect("a real lane has a control plane");
    let target = opts.pods as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (Instant::now(), 0);
    loop {
        let scheduled = plane.scheduler_metric(DECISIONS, None).await.unwrap_or(0);
        let at = Instant::now();
        if scheduled > 0 && first.is_none() {
            first = Some((at, scheduled));
        }
        if scheduled > last.1 {
            last = (at, scheduled);
        }
        if scheduled >= target {
            break;
        }
        anyhow::ensure!(
            at < deadline,
            "only {scheduled} of {target} pods scheduled in 300 s:\n{}",
            plane.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t0, n0) = first.expect("the loop ends only after a decision");
    Ok(Measured {
        decisions: last.1 - n0,
        seconds: last.0.duration_since(t0).as_secs_f64(),
        unschedulable: plane.schedule_attempts("unschedulable").await.unwrap_or(0),
        errors: plane.schedule_attempts("error").await.unwrap_or(0),
        extender: extender_time(port).await,
    })
}

async fn run(opts: Options) -> anyhow::Result<()> {
    println!(
        "kube-scheduler placement rate, {} nodes, {} pods of one WaitForFirstConsumer claim; controller: {}{}",
        opts.nodes,
        opts.pods,
        binary().display(),
        opts.keep_best
            .map_or(String::new(), |k| format!(" --extender-keep-best={k}"))
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    for run in 0..opts.runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_extender in order {
            let label = if with_extender {
                "with the extender"
            } else {
                "without"
            };
            println!("run {} {label}:", run + 1);
            let m = run_mode(&opts, with_extender).await?;
            let rate = m.decisions as f64 / m.seconds;
            println!(
                "  {} decisions in {:.2} s = {rate:.1}/s (unschedulable attempts {}, errors {})",
                m.decisions, m.seconds, m.unschedulable, m.errors
            );
            for (verb, count, seconds) in m.extender.iter().filter(|(_, count, _)| *count > 0) {
                println!(
                    "  extender {verb}: {count} requests, {:.3} ms each, {:.1} % of the decisions' time",
                    seconds * 1e3 / (*count).max(1) as f64,
                    seconds / m.seconds * 100.0
                );
            }
            rates[usize::from(with_extender)].push(rate);
        }
    }
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (with, without) = (mean(&rates[1]), mean(&rates[0]));
    println!(
        "decisions/s: with the extender {with:.1}, without {without:.1}: ratio {:.2} (target >= 0.95)",
        with / without
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}
