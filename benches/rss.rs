//! Memory of the real `stowage controller` and `stowage agent` processes at scale: 5,000
//! StorageNodes (and Nodes) and 50,000 LocalVolumes with their claims and PersistentVolumes
//! in testkit's in-memory API server. Prints VmRSS and VmHWM from `/proc/<pid>/status`.
//!
//! ```sh
//! cargo bench --bench rss                                   # 5,000 nodes, 50,000 volumes
//! cargo bench --bench rss -- --nodes 500 --volumes 5000 --settle 10
//! ```
//!
//! Targets: controller under 64 MiB, agent under 16 MiB.
//!
//! The objects are written in process ([`ApiServer::call`], no HTTP) with server-side apply,
//! each by the field manager that writes it on a real cluster, so they carry the
//! `managedFields` a real API server would send (claims: kube-controller-manager for the
//! StatefulSet's claim and its binding, kube-scheduler's `selected-node`; LocalVolumes and
//! PVs: stowage's controller, LocalVolume status: stowage's agent). Claim, LocalVolume and
//! PV are the ones the controller itself builds (`controller::volume`), so every volume is
//! already provisioned and bound: the measurement is the steady state of a full cluster,
//! after the controller's start-up pass over every object.
//!
//! Node `node-00000` holds `--heavy` volumes (default 1,000); the rest are spread evenly
//! over the other nodes (about 10 each). The agent is measured on `node-00001` (a
//! realistic share) and on `node-00000`; both have their volumes' directories in a
//! hostpath pool under a temporary directory, as after a restart of the agent.
//!
//! `STOWAGE_E2E=real` fills a real control plane of its own instead (TESTING.md), over HTTP,
//! 32 volumes at a time, while its kube-controller-manager syncs them.
//!
//! `STOWAGE_BIN=<path>` runs another build of `stowage` (e.g. a copy of an earlier one, to
//! compare before and after a change) instead of the bench's own.
//!
//! Each process is started, `/readyz` awaited, then sampled every second for `--settle`
//! seconds (default 30): the figures are the last VmRSS and the VmHWM (peak) at the end.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};
use stowage::api::crds;
use stowage::api::local_volume::{LocalVolume, LocalVolumePhase, LocalVolumeStatus};
use stowage::api::names;
use stowage::api::storage_node::{StorageNode, StorageNodeSpec};
use stowage::cache::ClassParams;
use stowage::controller::volume;
use stowage_testkit::ApiServer;
use stowage_testkit::e2e::{Cluster, Role};
use stowage_testkit::fixtures::{node, pvc, storage_class};
use stowage_testkit::net::{free_port, http_get};

const NAMESPACES: usize = 100;

struct Options {
    nodes: usize,
    volumes: usize,
    heavy: usize,
    settle: u64,
    roles: Vec<String>,
}

fn options() -> Options {
    let mut opts = Options {
        nodes: 5_000,
        volumes: 50_000,
        heavy: 1_000,
        settle: 30,
        roles: vec!["controller".into(), "agent".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--nodes" => opts.nodes = value("--nodes").parse().expect("--nodes N"),
            "--volumes" => opts.volumes = value("--volumes").parse().expect("--volumes N"),
            "--heavy" => opts.heavy = value("--heavy").parse().expect("--heavy N"),
            "--settle" => opts.settle = value("--settle").parse().expect("--settle SECONDS"),
            "--roles" => opts.roles = value("--roles").split(',').map(str::to_string).collect(),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    assert!(opts.nodes >= 2, "--nodes must be at least 2");
    assert!(
        opts.heavy <= opts.volumes,
        "--heavy must not exceed --volumes"
    );
    opts
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// The node of volume `i`: the first `heavy` on node 0, the rest round-robin over 1..nodes.
fn node_of(i: usize, opts: &Options) -> usize {
    if i < opts.heavy {
        0
    } else {
        1 + (i - opts.heavy) % (opts.nodes - 1)
    }
}

/// Where the objects are written: the in-memory server in process, or a real API server.
enum Target<'a> {
    Memory(&'a ApiServer),
    Real(kube::Client),
}

/// One request that must succeed: in process (no HTTP) or to the real API server.
async fn call(server: &Target<'_>, method: &str, uri: &str, ct: &str, body: &Value) -> Value {
    match server {
        Target::Memory(server) => {
            let (status, answer) = server
                .call(method, uri, ct, serde_json::to_vec(body).unwrap())
                .await
                .unwrap();
            assert!(
                (200..300).contains(&status),
                "{method} {uri}: {status} {answer}"
            );
            answer
        }
        Target::Real(client) => {
            let request = http::Request::builder()
                .method(method)
                .uri(uri)
                .header("Content-Type", ct)
                .body(serde_json::to_vec(body).unwrap())
                .unwrap();
            client
                .request::<Value>(request)
                .await
                .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
        }
    }
}

/// Server-side apply of `object` (with `apiVersion` and `kind`) as `manager`.
async fn apply(server: &Target<'_>, path: &str, manager: &str, object: &Value) -> Value {
    let uri = format!("{path}?fieldManager={manager}&force=true");
    call(
        server,
        "PATCH",
        &uri,
        "application/apply-patch+yaml",
        object,
    )
    .await
}

fn typed<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    value
}

/// The directory of a measured agent's pool, per node index.
fn pool_dir(scratch: &Path, node: usize) -> PathBuf {
    scratch.join(node_name(node))
}

async fn populate(server: &Target<'_>, opts: &Options, scratch: &Path) -> StorageClass {
    let started = Instant::now();
    let class = storage_class("local")
        .provisioner(names::PROVISIONER_LOCAL)
        .wait_for_first_consumer()
        .reclaim("Delete")
        .build();
    let class_json = call(
        server,
        "POST",
        "/apis/storage.k8s.io/v1/storageclasses",
        "application/json",
        &serde_json::to_value(&class).unwrap(),
    )
    .await;
    let class: StorageClass = serde_json::from_value(class_json).unwrap();
    let params = ClassParams::from_class(&class).unwrap();
    for n in 0..NAMESPACES {
        call(
            server,
            "POST",
            "/api/v1/namespaces",
            "application/json",
            &json!({"metadata": {"name": format!("app-{n:03}")}}),
        )
        .await;
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for i in 0..opts.nodes {
        let name = node_name(i);
        let object = node(&name)
            .label("topology.kubernetes.io/zone", "zone-a")
            .build();
        apply(
            server,
            &format!("/api/v1/nodes/{name}"),
            "kubelet",
            &typed(&object, "v1", "Node"),
        )
        .await;
        let mut sn = StorageNode::new(&name, StorageNodeSpec {});
        let status = support::half_full_node_status(&now);
        let path = format!("/apis/{}/storagenodes/{name}", names::API_VERSION);
        apply(
            server,
            &path,
            names::FIELD_MANAGER_AGENT,
            &typed(&sn, names::API_VERSION, "StorageNode"),
        )
        .await;
        sn.status = Some(status);
        apply(
            server,
            &format!("{path}/status"),
            names::FIELD_MANAGER_AGENT,
            &typed(&sn, names::API_VERSION, "StorageNode"),
        )
        .await;
    }
    println!(
        "populate: {} Nodes and StorageNodes in {:.1} s",
        opts.nodes,
        started.elapsed().as_secs_f64()
    );
    // Many at a time: a real API server takes each request over HTTP.
    let done = std::sync::atomic::AtomicUsize::new(0);
    let class = &class;
    let params = &params;
    let done = &done;
    futures::stream::iter(0..opts.volumes)
        .for_each_concurrent(32, |i| async move {
            let node_index = node_of(i, opts);
            let node = node_name(node_index);
            let measured = node_index <= 1;
            let ns = format!("app-{:03}", i % NAMESPACES);
            let claim_name = format!("data-db-{i}");
            // Volumes of the measured agents' nodes are small, so that their hostpath pool
            // (a temporary directory) is not over-committed; the rest 1-100 GiB.
            let size = if measured {
                "64Mi".to_string()
            } else {
                format!("{}Gi", 1 + (i * 37) % 100)
            };
            // The StatefulSet controller creates the claim; the scheduler selects the node.
            let claim: PersistentVolumeClaim = pvc(&ns, &claim_name)
                .size(&size)
                .class("local")
                .label("app.kubernetes.io/name", "db")
                .label("app.kubernetes.io/instance", &format!("db-{}", i % 1000))
                .build();
            let claims_path =
                format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}");
            let created = apply(
                server,
                &claims_path,
                "kube-controller-manager",
                &typed(&claim, "v1", "PersistentVolumeClaim"),
            )
            .await;
            let mut claim: PersistentVolumeClaim = serde_json::from_value(created).unwrap();
            let annotations = claim
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(names::ANNOTATION_SELECTED_NODE.into(), node.clone());
            annotations.insert(
                names::ANNOTATION_STORAGE_PROVISIONER.into(),
                names::PROVISIONER_LOCAL.into(),
            );
            annotations.insert(
                names::ANNOTATION_BETA_STORAGE_PROVISIONER.into(),
                names::PROVISIONER_LOCAL.into(),
            );
            let uid = claim.metadata.uid.clone().unwrap();
            let pv_name = volume::volume_name(&uid);
            let bytes = volume::requested_size(&claim).unwrap();

            // The controller's LocalVolume, made Ready by the agent.
            let mut lv: LocalVolume = volume::local_volume(&claim, &node, params, bytes);
            let lv_path = format!("/apis/{}/localvolumes/{pv_name}", names::API_VERSION);
            apply(
                server,
                &lv_path,
                names::FIELD_MANAGER_CONTROLLER,
                &typed(&lv, names::API_VERSION, "LocalVolume"),
            )
            .await;
            let dir = if measured {
                let dir = pool_dir(scratch, node_index).join(&pv_name);
                std::fs::create_dir_all(&dir).unwrap();
                dir.display().to_string()
            } else {
                format!("/var/lib/stowage/default/{pv_name}")
            };
            lv.status = Some(LocalVolumeStatus {
                phase: LocalVolumePhase::Ready,
                path: Some(dir.clone()),
                size_bytes: Some(bytes.0),
                size: Some(bytes.to_string()),
                message: None,
                observed_generation: Some(1),
            });
            let lv_status = json!({
                "apiVersion": names::API_VERSION, "kind": "LocalVolume",
                "metadata": {"name": pv_name},
                "status": lv.status,
            });
            apply(
                server,
                &format!("{lv_path}/status"),
                names::FIELD_MANAGER_AGENT,
                &lv_status,
            )
            .await;

            // The controller's PV, bound by the PV controller.
            let pv = volume::persistent_volume(
                &claim,
                class,
                &lv,
                &dir,
                &node,
                names::PROVISIONER_LOCAL,
            );
            let pv_path = format!("/api/v1/persistentvolumes/{pv_name}");
            apply(
                server,
                &pv_path,
                names::FIELD_MANAGER_CONTROLLER,
                &typed(&pv, "v1", "PersistentVolume"),
            )
            .await;
            apply(
                server,
                &format!("{pv_path}/status"),
                "kube-controller-manager",
                &json!({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv_name}, "status": {"phase": "Bound"}}),
            )
            .await;

            // The scheduler's selected-node, then the PV controller's binding.
            apply(
                server,
                &claims_path,
                "kube-scheduler",
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "namespace": ns, "annotations": {
                        names::ANNOTATION_SELECTED_NODE: node}}}),
            )
            .await;
            apply(
                server,
                &claims_path,
                "kube-controller-manager",
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "namespace": ns, "annotations": {
                        names::ANNOTATION_STORAGE_PROVISIONER: names::PROVISIONER_LOCAL,
                        names::ANNOTATION_BETA_STORAGE_PROVISIONER: names::PROVISIONER_LOCAL,
                        "pv.kubernetes.io/bind-completed": "yes",
                        "pv.kubernetes.io/bound-by-controller": "yes"},
                        "labels": claim.metadata.labels},
                    "spec": {"volumeName": pv_name, "accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": size}},
                             "storageClassName": "local", "volumeMode": "Filesystem"}}),
            )
            .await;
            apply(
                server,
                &format!("{claims_path}/status"),
                "kube-controller-manager",
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "namespace": ns},
                    "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                               "capacity": {"storage": volume::quantity(bytes)}}}),
            )
            .await;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_multiple_of(10_000) {
                println!(
                    "populate: {n} volumes in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await;
    println!("populate: done in {:.1} s", started.elapsed().as_secs_f64(),);
    class.clone()
}

/// The `names` fields of `/proc/<pid>/status`, in KiB.
fn status_kib<const N: usize>(pid: u32, names: [&str; N]) -> Option<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let mut out = [0; N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = field(name)?;
    }
    Some(out)
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let [rss, hwm] = status_kib(pid, ["VmRSS:", "VmHWM:"])?;
    Some((rss, hwm))
}

/// `(RssAnon, RssFile)` of `pid` in KiB: the heap and stacks, and the mapped files (the
/// binary's code and read-only data that were touched).
fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let [anon, file] = status_kib(pid, ["RssAnon:", "RssFile:"])?;
    Some((anon, file))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Waits for `/readyz`, then samples the process for `settle` seconds; prints and returns
/// the last VmRSS and the VmHWM.
async fn measure(label: &str, role: &Role, port: u16, settle: u64) -> (u64, u64) {
    let pid = role.pid().expect("the process runs");
    let started = Instant::now();
    loop {
        let probe = tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
            .await
            .unwrap();
        if probe.is_some_and(|(status, _)| status == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{label} not ready after 600 s; log:\n{}",
            role.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = started.elapsed();
    let mut last = rss(pid).unwrap();
    println!(
        "{label}: ready after {:.1} s, VmRSS {}, VmHWM {}",
        ready.as_secs_f64(),
        mib(last.0),
        mib(last.1)
    );
    for second in 1..=settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = rss(pid).unwrap_or_else(|| panic!("{label} exited; log:\n{}", role.logs()));
        if second % 10 == 0 {
            println!(
                "{label}: +{second} s VmRSS {}, VmHWM {}",
                mib(last.0),
                mib(last.1)
            );
        }
    }
    println!(
        "RESULT {label}: VmRSS {} VmHWM {} ({} s after ready)",
        mib(last.0),
        mib(last.1),
        settle
    );
    if let Some((anon, file)) = rss_split(pid) {
        println!(
            "  {label}: anonymous (heap, stacks) {}, file-backed (code, read-only data) {}",
            mib(anon),
            mib(file)
        );
    }
    last
}

/// The `stowage` binary to measure.
fn binary() -> PathBuf {
    std::env::var_os("STOWAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage")))
}

/// Requests the in-memory server has served (`None` on a real one).
fn requests(cluster: &Cluster) -> Option<u64> {
    cluster
        .server()
        .map(|server| server.request_counts().values().sum())
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.install_crds(crds()).await?;
    let target = match cluster.server() {
        Some(server) => Target::Memory(server),
        None => Target::Real(cluster.client()),
    };
    println!(
        "binary: {}; API server: {}",
        binary().display(),
        if cluster.is_real() {
            "real (STOWAGE_E2E=real), kube-controller-manager running"
        } else {
            "in memory"
        }
    );
    let scratch = cluster.dir().join("pools");
    populate(&target, &opts, &scratch).await;
    let per_node = (opts.volumes - opts.heavy) / (opts.nodes - 1);
    println!(
        "cluster: {} StorageNodes and Nodes, {} LocalVolumes, claims and PVs; node-00000 holds {}, the others about {per_node} each",
        opts.nodes, opts.volumes, opts.heavy
    );

    if opts.roles.iter().any(|r| r == "controller") {
        let port = free_port();
        let before = requests(&cluster);
        let controller = cluster
            .role(binary(), "controller")
            .arg("controller")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .env("RUST_LOG", "warn")
            .spawn()?;
        measure("controller", &controller, port, opts.settle).await;
        if let (Some(before), Some(after)) = (before, requests(&cluster)) {
            println!("controller: {} API requests during the run", after - before);
        }
        drop(controller);
    }
    if opts.roles.iter().any(|r| r == "agent") {
        for (node_index, what) in [(1, "a typical node"), (0, "the heavy node")] {
            let pool = pool_dir(&scratch, node_index);
            std::fs::create_dir_all(&pool)?;
            let config = cluster.dir().join(format!("pools-{node_index}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "pools:\n  - name: default\n    path: {}\n    driver: hostpath\n",
                    pool.display()
                ),
            )?;
            let port = free_port();
            let agent = cluster
                .role(binary(), &format!("agent-{node_index}"))
                .arg("agent")
                .arg("--pools")
                .arg(&config)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig())
                .env("NODE_NAME", node_name(node_index))
                .env("RUST_LOG", "warn")
                .spawn()?;
            let volumes = (0..opts.volumes)
                .filter(|&i| node_of(i, &opts) == node_index)
                .count();
            println!(
                "agent on {what} ({}, {volumes} volumes):",
                node_name(node_index)
            );
            measure(
                &format!("agent {volumes} volumes"),
                &agent,
                port,
                opts.settle,
            )
            .await;
            drop(agent);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}
