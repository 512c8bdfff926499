//! The whole system with real processes, for the e2e tests: `stowage agent` per node on a
//! pool in a temp dir (hostpath) or on the scratch btrfs (btrfs), `stowage controller`
//! (leader election on, the extender served on its --listen), and a kube-scheduler calling
//! that extender over HTTP: the real one with the shipped configuration on the real lane
//! (`STOWAGE_E2E=real`, with kube-controller-manager's PV controller binding), testkit's
//! kube-scheduler + PV-controller stand-in against the in-memory API server.
//!
//! ```text
//!   Env::start(&[("n1", 4 * GI), ..], Options { .. })
//!     ├── CRDs, namespaces `apps` + `stowage-system`, Nodes, StorageClasses
//!     │     local · local-binpack · local-archive · local-keep (· nfs · local-btrfs)
//!     ├── agent-<node>   --heartbeat 1, pool `default` (capacity as given)
//!     ├── controller     + Options::controller_args
//!     └── kube-scheduler (real lane) or the stand-in → http://127.0.0.1:<controller port>
//!   env.controller.kill() / env.restart_controller()   crash and recover the controller
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use stowage::api::local_volume::LocalVolume;
use stowage::api::storage_node::StorageNode;
use stowage::api::{crds, names};
use stowage_testkit::e2e::{Cluster, Role};
use stowage_testkit::fixtures::{namespace, node, pod, pvc, storage_class};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::scheduler::{ExtenderConfig, Scheduler, SchedulerConfig};
use stowage_testkit::{wait_for, wait_until};

/// How long any single wait of the harness may take: 30 s against the in-memory server, 180 s
/// on the real lane, where kube-controller-manager's PV controller binds claims at its
/// default 20 requests/s and kube-scheduler polls each binding every second.
pub fn wait() -> Duration {
    if stowage_testkit::real::lane_is_real() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(30)
    }
}
/// One mebibyte.
pub const MI: u64 = 1 << 20;
/// One gibibyte.
pub const GI: u64 = 1 << 30;
/// The namespace of the test's pods and claims.
pub const NS: &str = "apps";

/// One node: its agent process, its pool directory and metrics port.
pub struct NodeAgent {
    /// The node's name.
    pub name: String,
    /// Its pool's directory.
    pub pool_dir: PathBuf,
    /// The agent's --listen port.
    pub port: u16,
    /// The pool's capacity.
    pub capacity: u64,
    /// The agent process.
    pub process: Role,
}

/// Options of [`Env::start`].
#[derive(Default)]
pub struct Options {
    /// NFS servers (addresses) the controller gets through NFS_SERVER/NFS_PATH, with temp
    /// dirs as their mounts.
    pub nfs: Vec<&'static str>,
    /// Nodes whose pool is a btrfs one (driver btrfs) under [`Options::btrfs`].
    pub btrfs_nodes: Vec<&'static str>,
    /// The mounted scratch btrfs (STOWAGE_TEST_BTRFS) the btrfs nodes' pools live in.
    pub btrfs: Option<PathBuf>,
    /// More arguments for `stowage controller`.
    pub controller_args: Vec<String>,
    /// Schedule without the extender (capacity-blind, as where kube-scheduler cannot be
    /// reconfigured): the controller is then the only capacity check.
    pub without_extender: bool,
    /// Environment variables for every stowage process (agents and controller).
    pub role_env: Vec<(&'static str, &'static str)>,
    /// Feature gates and runtime config of a real control plane (ignored in memory).
    pub up: stowage_testkit::real::UpOptions,
    /// Create the CSIDriver of `variants/capacity/csidriver.yaml` (`storageCapacity: true`)
    /// before the scheduler starts.
    pub csi_driver: bool,
}

/// The running system. Field order is drop order: the scheduler and processes stop before
/// the cluster (and its scratch dir with their logs) goes.
pub struct Env {
    /// The kube-scheduler stand-in; `None` on the real lane, where kube-scheduler runs.
    pub scheduler: Option<Scheduler>,
    /// One agent per node.
    pub agents: Vec<NodeAgent>,
    /// The controller process.
    pub controller: Role,
    /// The controller's --listen port (extender, metrics, health).
    pub controller_port: u16,
    /// The API server.
    pub cluster: Cluster,
    /// A client of it.
    pub client: Client,
}

impl Env {
    /// Nodes `(name, pool capacity)`, each with an agent, the storage classes, the
    /// controller and a scheduler.
    pub async fn start(nodes: &[(&str, u64)], options: Options) -> Env {
        let cluster = Cluster::start_with(&options.up).await.unwrap();
        cluster.install_crds(crds()).await.unwrap();
        let client = cluster.client();
        if options.csi_driver {
            create_csi_driver(&client).await;
        }
        for ns in [NS, "stowage-system"] {
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &namespace(ns).build())
                .await
                .unwrap();
        }
        let classes: Api<StorageClass> = Api::all(client.clone());
        for (name, params) in [
            ("local", vec![]),
            ("local-binpack", vec![("placement", "binpack")]),
            ("local-archive", vec![("onDelete", "archive")]),
            ("local-keep", vec![("onDelete", "retain")]),
        ] {
            let mut b = storage_class(name)
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .reclaim("Delete");
            for (k, v) in params {
                b = b.param(k, v);
            }
            classes
                .create(&PostParams::default(), &b.build())
                .await
                .unwrap();
        }
        if !options.nfs.is_empty() {
            classes
                .create(
                    &PostParams::default(),
                    &storage_class("nfs")
                        .provisioner(names::PROVISIONER_NFS)
                        .reclaim("Delete")
                        .build(),
                )
                .await
                .unwrap();
        }

        let mut agents = Vec::new();
        for (name, capacity) in nodes {
            let mut n = node(name).build();
            // A node named by a fully qualified name longer than a label value has its
            // short host name there, as a kubelet registers it.
            let hostname = if name.len() > 63 {
                name.split('.').next().unwrap_or(name)
            } else {
                name
            };
            n.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(names::LABEL_HOSTNAME.into(), hostname.to_string());
            cluster.add_node(&n).await.unwrap();
            let (pool_dir, driver) = if options.btrfs_nodes.contains(name) {
                let root = options
                    .btrfs
                    .as_ref()
                    .expect("Options::btrfs_nodes needs Options::btrfs (STOWAGE_TEST_BTRFS)");
                (root.join(cluster.unique(&format!("e2e-{name}"))), "btrfs")
            } else {
                (
                    cluster.dir().join("nodes").join(name).join("default"),
                    "hostpath",
                )
            };
            std::fs::create_dir_all(&pool_dir).unwrap();
            let config = cluster.dir().join(format!("pools-{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "pools:\n  - name: default\n    driver: {driver}\n    path: {}\n    capacity: {capacity}\n",
                    pool_dir.display()
                ),
            )
            .unwrap();
            let port = free_port();
            let mut process = cluster
                .role(stowage_binary(), &format!("agent-{name}"))
                .arg("agent")
                .arg("--node-name")
                .arg(name)
                .arg("--pools")
                .arg(&config)
                .arg("--heartbeat")
                .arg("1")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig())
                .env("RUST_LOG", "info");
            for (k, v) in &options.role_env {
                process = process.env(k, v);
            }
            let process = process.spawn().unwrap();
            agents.push(NodeAgent {
                name: name.to_string(),
                pool_dir,
                port,
                capacity: *capacity,
                process,
            });
        }

        let controller_port = free_port();
        let mut controller = cluster
            .role(stowage_binary(), "controller")
            .arg("controller")
            .arg("--listen")
            .arg(format!("127.0.0.1:{controller_port}"))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .env("POD_NAMESPACE", "stowage-system")
            .env("POD_NAME", "controller-0")
            .env("RUST_LOG", "info")
            .args(&options.controller_args);
        for (k, v) in &options.role_env {
            controller = controller.env(k, v);
        }
        if !options.nfs.is_empty() {
            let base = cluster.dir().join("nfs");
            let mut exports = Vec::new();
            for address in &options.nfs {
                std::fs::create_dir_all(base.join(address)).unwrap();
                exports.push(format!("/exports/{address}"));
            }
            controller = controller
                .arg("--nfs-mount-base")
                .arg(&base)
                .env("NFS_SERVER", options.nfs.join(":"))
                .env("NFS_PATH", exports.join(":"));
        }
        let controller = controller.spawn().unwrap();

        for a in &agents {
            wait_ready(a.port, &format!("agent {}", a.name)).await;
        }
        wait_ready(controller_port, "the controller").await;
        // Every agent's report is in: the extender knows every node's pool.
        let sns: Api<StorageNode> = Api::all(client.clone());
        wait_for(wait(), "every StorageNode reports a ready pool", || async {
            let Ok(list) = sns.list(&ListParams::default()).await else {
                return false;
            };
            agents.iter().all(|a| {
                list.items.iter().any(|sn| {
                    sn.name_any() == a.name
                        && sn.status.as_ref().is_some_and(|s| {
                            s.pools
                                .iter()
                                .any(|p| p.ready && p.allocatable_bytes == a.capacity)
                        })
                })
            })
        })
        .await
        .unwrap();
        // ... and the controller's index holds those reports: a claim whose selected-node a
        // test writes by hand would otherwise meet "no report" there and be sent back.
        wait_for(wait(), "the controller sees every node's pool", || async {
            let Some((200, text)) = get(controller_port, "/metrics").await else {
                return false;
            };
            agents.iter().all(|a| {
                let series = format!("stowage_node_pool_allocatable_bytes{{node=\"{}\",", a.name);
                text.lines().any(|line| {
                    line.starts_with(&series)
                        && line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
                            == Some(a.capacity as f64)
                })
            })
        })
        .await
        .unwrap();

        let extender = if options.without_extender {
            "none".to_string()
        } else {
            format!("http://127.0.0.1:{controller_port}")
        };
        let scheduler = if cluster.is_real() {
            cluster.start_scheduler(&extender).await.unwrap();
            None
        } else {
            // The PV controller reaches a new claim only after a while, as
            // kube-controller-manager's throttled worker does in a burst: the controller's
            // PVs, made at the scheduler's choice, are then pre-bound to claims it has not
            // seen yet, which must not release them.
            let config = SchedulerConfig {
                pv_controller_lag: Duration::from_millis(500),
                ..SchedulerConfig::default()
            };
            Some(Scheduler::start(
                client.clone(),
                if options.without_extender {
                    config
                } else {
                    SchedulerConfig {
                        extender: Some(ExtenderConfig::new(extender)),
                        ..config
                    }
                },
            ))
        };
        Env {
            scheduler,
            agents,
            controller,
            controller_port,
            cluster,
            client,
        }
    }

    /// Restarts the controller (same arguments) after a [`Role::kill`] and waits until it
    /// is ready again.
    pub async fn restart_controller(&mut self) {
        self.controller.restart().unwrap();
        wait_ready(self.controller_port, "the controller").await;
    }

    /// Restarts the agent of `node` (same arguments; the environment as its [`Role`] now
    /// holds it) and waits until it is ready again.
    pub async fn restart_agent(&mut self, node: &str) {
        let agent = self.agents.iter_mut().find(|a| a.name == node).unwrap();
        agent.process.restart().unwrap();
        wait_ready(agent.port, &format!("agent {node}")).await;
    }

    /// Creates a StorageClass of the local provisioner (WaitForFirstConsumer, reclaim
    /// Delete) with `params`, allowing expansion when `expand`.
    pub async fn local_class(&self, name: &str, params: &[(&str, &str)], expand: bool) {
        self.local_class_reclaim(name, params, "Delete", expand)
            .await;
    }

    /// [`Env::local_class`] with the reclaim policy `reclaim`.
    pub async fn local_class_reclaim(
        &self,
        name: &str,
        params: &[(&str, &str)],
        reclaim: &str,
        expand: bool,
    ) {
        let mut b = storage_class(name)
            .provisioner(names::PROVISIONER_LOCAL)
            .wait_for_first_consumer()
            .reclaim(reclaim)
            .allow_expansion(expand);
        for (k, v) in params {
            b = b.param(k, v);
        }
        Api::<StorageClass>::all(self.client.clone())
            .create(&PostParams::default(), &b.build())
            .await
            .unwrap();
    }

    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    pub fn lvs(&self) -> Api<LocalVolume> {
        Api::all(self.client.clone())
    }

    /// Sets claim `name`'s `selected-node` to `node`, as kube-scheduler's binding cycle does,
    /// for tests that write it by hand to a pod no scheduler places.
    pub async fn select(&self, name: &str, node: &str) {
        self.claims()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"annotations": {names::ANNOTATION_SELECTED_NODE: node}}
                })),
            )
            .await
            .unwrap();
    }

    /// The latest reason pod `ns/name` could not be scheduled: the stand-in's record, or
    /// the real kube-scheduler's `FailedScheduling` Event.
    pub async fn last_failure(&self, ns: &str, name: &str) -> Option<String> {
        match &self.scheduler {
            Some(s) => s.last_failure(ns, name),
            None => self.cluster.scheduling_failure(ns, name).await,
        }
    }

    /// Waits until the scheduler has tried pod `ns/name` again, and failed, at least
    /// `times` more times. kube-scheduler retries an unschedulable pod when something it
    /// watches changes (or after a minute), so on the real lane each retry is prompted by
    /// touching the pod's first claim, as any writer of claims would, and counted by
    /// kube-scheduler's metric (the only unschedulable pod of the test is this one).
    pub async fn retried(&self, ns: &str, name: &str, times: u64) {
        match &self.scheduler {
            Some(s) => {
                let before = s.attempts(ns, name) as u64;
                wait_for(wait(), "the scheduler retried", || async {
                    s.attempts(ns, name) as u64 >= before + times
                })
                .await
                .unwrap();
            }
            None => {
                // kube-scheduler's own count of unschedulable attempts (its Events are
                // aggregated into a series that reaches the API server only every 30 min).
                let plane = self.cluster.plane().unwrap();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
                for i in 0..times {
                    let before = plane.schedule_attempts("unschedulable").await.unwrap();
                    let patch =
                        serde_json::json!({"metadata": {"labels": {"retry": i.to_string()}}});
                    claims
                        .patch(
                            &format!("{name}-0"),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                        .unwrap();
                    wait_for(wait(), "kube-scheduler retried", || async {
                        plane.schedule_attempts("unschedulable").await > Some(before)
                    })
                    .await
                    .unwrap();
                }
            }
        }
    }

    /// Checks what the processes logged to their files: no ANSI colour codes (stderr is a
    /// file, not a terminal), and no optimistic-concurrency conflict reported as a failed
    /// reconcile (a conflict is another writer being first: retried quietly), nor an
    /// object deleted before its queued reconcile reported as a warning.
    pub fn assert_clean_logs(&self) {
        self.assert_no_benign_warnings();
        let mut logs = vec![("controller".to_string(), self.controller.logs())];
        for a in &self.agents {
            logs.push((format!("agent {}", a.name), a.process.logs()));
        }
        for (who, log) in &logs {
            assert!(
                !log.contains('\u{1b}'),
                "{who}'s log has ANSI codes:\n{log}"
            );
            let conflicts: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") && (has_code_409(l) || l.contains("Conflict")))
                .collect();
            assert!(
                conflicts.is_empty(),
                "{who} logged conflicts as failures:\n{}",
                conflicts.join("\n")
            );
        }
    }

    /// Lines logged at WARN for something that is not a failure: a queued object that
    /// was deleted before its reconcile ran.
    pub fn assert_no_benign_warnings(&self) {
        for a in &self.agents {
            let log = a.process.logs();
            let noise: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") && l.contains("not found in local store"))
                .collect();
            assert!(
                noise.is_empty(),
                "agent {} logged a benign race as a warning:\n{}",
                a.name,
                noise.join("\n")
            );
        }
    }

    pub fn agent(&self, node: &str) -> &NodeAgent {
        self.agents.iter().find(|a| a.name == node).unwrap()
    }

    /// Pod `name` with claims `name-0..` of `class` and the given sizes in MiB.
    pub async fn pod(&self, name: &str, class: &str, sizes_mib: &[u64]) {
        let claims: Vec<String> = (0..sizes_mib.len())
            .map(|i| format!("{name}-{i}"))
            .collect();
        for (claim, mib) in claims.iter().zip(sizes_mib) {
            self.claims()
                .create(
                    &PostParams::default(),
                    &pvc(NS, claim)
                        .size(&format!("{mib}Mi"))
                        .class(class)
                        .build(),
                )
                .await
                .unwrap();
        }
        self.pods()
            .create(
                &PostParams::default(),
                &pod(NS, name).claims(&claims).build(),
            )
            .await
            .unwrap();
    }

    /// Waits until every pod in `names` is bound to a node; returns pod → node.
    pub async fn scheduled(&self, names: &[String]) -> HashMap<String, String> {
        let pods = self.pods();
        wait_until(
            wait(),
            &format!("{} pods are bound", names.len()),
            || async {
                let list = pods.list(&ListParams::default()).await.ok()?;
                let bound: HashMap<String, String> = list
                    .items
                    .into_iter()
                    .filter_map(|p| {
                        let node = p.spec.as_ref()?.node_name.clone()?;
                        Some((p.name_any(), node))
                    })
                    .filter(|(n, _)| names.contains(n))
                    .collect();
                (bound.len() == names.len()).then_some(bound)
            },
        )
        .await
        .unwrap()
    }

    /// Claim name → (bound PV name, size) for every claim whose name starts with `prefix`,
    /// once all of them are Bound.
    pub async fn all_bound(&self, prefix: &str, expected: usize) -> HashMap<String, String> {
        let claims = self.claims();
        wait_until(
            wait(),
            &format!("{expected} claims {prefix}* are Bound"),
            || async {
                let list = claims.list(&ListParams::default()).await.ok()?;
                let bound: HashMap<String, String> = list
                    .items
                    .into_iter()
                    .filter(|c| c.name_any().starts_with(prefix))
                    .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                    .filter_map(|c| Some((c.name_any(), c.spec?.volume_name?)))
                    .collect();
                (bound.len() == expected).then_some(bound)
            },
        )
        .await
        .unwrap()
    }

    /// node → sum of the sizes of its LocalVolumes.
    pub async fn allocated(&self) -> HashMap<String, u64> {
        let mut by_node: HashMap<String, u64> = HashMap::new();
        for lv in self.lvs().list(&ListParams::default()).await.unwrap().items {
            *by_node.entry(lv.spec.node_name.clone()).or_default() += lv.spec.size_bytes;
        }
        by_node
    }

    /// The node a PV is pinned to (its local volume's node affinity) and its local path.
    pub fn pv_node_and_path(pv: &PersistentVolume) -> (String, String) {
        let spec = pv.spec.as_ref().unwrap();
        let path = spec.local.as_ref().expect("a local PV").path.clone();
        let terms = &spec
            .node_affinity
            .as_ref()
            .unwrap()
            .required
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let node = terms[0].match_expressions.as_ref().unwrap()[0]
            .values
            .as_ref()
            .unwrap()[0]
            .clone();
        (node, path)
    }

    /// Waits until no PV and no LocalVolume is left.
    pub async fn no_volumes_left(&self) {
        let (pvs, lvs) = (self.pvs(), self.lvs());
        wait_for(wait(), "every PV and LocalVolume is gone", || async {
            let none = ListParams::default();
            pvs.list(&none).await.unwrap().items.is_empty()
                && lvs.list(&none).await.unwrap().items.is_empty()
        })
        .await
        .unwrap();
    }

    /// Deletes the pods then claims named `prefix*`.
    pub async fn delete_all(&self, prefix: &str) {
        for p in self
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            if p.name_any().starts_with(prefix) {
                // No kubelet confirms a graceful deletion on the real lane: delete at once.
                self.pods()
                    .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                    .await
                    .unwrap();
            }
        }
        for c in self
            .claims()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            if c.name_any().starts_with(prefix) {
                self.claims()
                    .delete(&c.name_any(), &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
    }
}

/// Waits until the process listening on `port` (`who`) answers `/readyz` with 200.
async fn wait_ready(port: u16, who: &str) {
    wait_for(wait(), &format!("{who}'s /readyz is 200"), || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await
    .unwrap();
}

/// Creates the CSIDriver object `variants/capacity` ships, read from its manifest.
pub async fn create_csi_driver(client: &Client) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/variants/capacity/csidriver.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let object: kube::api::DynamicObject = serde_yaml::from_str(&text).unwrap();
    let resource = kube::api::ApiResource {
        group: "storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "storage.k8s.io/v1".into(),
        kind: "CSIDriver".into(),
        plural: "csidrivers".into(),
    };
    Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// The `stowage` binary the harness runs: this build's, or the one `STOWAGE_BENCH_BINARY`
/// names (to compare another build, e.g. an earlier commit's, on the same harness).
pub fn stowage_binary() -> PathBuf {
    std::env::var_os("STOWAGE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage")))
}

/// A deterministic mix of 1–3 claims per pod of 32, 64 or 128 MiB.
pub fn mix(pods: usize, seed: u64) -> Vec<Vec<u64>> {
    // A 64-bit LCG (Knuth's MMIX constants); its high bits are plenty for a test mix.
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    (0..pods)
        .map(|_| {
            let count = 1 + next(3);
            (0..count)
                .map(|_| [32, 64, 128][next(3) as usize])
                .collect()
        })
        .collect()
}

/// [`mix`] cut to exactly `claims` claims (the last pod may get fewer).
pub fn mix_claims(claims: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut plan = Vec::new();
    let mut left = claims;
    for mut sizes in mix(claims, seed) {
        if left == 0 {
            break;
        }
        sizes.truncate(left);
        left -= sizes.len();
        plan.push(sizes);
    }
    plan
}

/// Whether a log line carries HTTP status 409 as a number of its own (not inside a
/// timestamp such as `00:09:36.956409Z` or a uid).
fn has_code_409(line: &str) -> bool {
    line.match_indices("409").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + 3..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '.');
        boundary(before) && boundary(after)
    })
}
