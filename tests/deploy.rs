//! The shipped manifests on a real API server: `kubectl apply -k deploy/` is accepted whole,
//! a second apply changes nothing, and a changed CRD applies over the installed one (what
//! an upgrade does); a fresh `kubectl apply -k deploy/` binds a claim with nothing done by
//! hand but the scheduler wiring; the NFS-only install (`variants/nfs-only`) runs a
//! controller that binds NFS claims without stowage's CRDs; the second scheduler runs under
//! its own name and Lease. The in-memory server cannot stand in here: it accepted a CRD and a
//! PodDisruptionBudget version that Kubernetes 1.19 refuses.
//!
//! Real lane only (`STOWAGE_E2E=real`, see TESTING.md): ignored otherwise, so the runner
//! reports it as skipped rather than passing it.

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stowage_testkit::e2e::Cluster;
use stowage_testkit::real;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real control plane of the test's own; these tests mean nothing on the in-memory server.
async fn real_cluster() -> Cluster {
    assert!(
        real::lane_is_real(),
        "this test needs STOWAGE_E2E=real (run it through scripts/test-real)"
    );
    Cluster::start().await.unwrap()
}

/// A kubeconfig of the cluster's admin that acts as the ServiceAccount `stowage-system/<name>`
/// (impersonated: no pod runs here, so no token is mounted), with the groups a
/// ServiceAccount token carries (explicit groups replace the implicit
/// `system:authenticated`, which grants discovery).
fn as_service_account(cluster: &Cluster, name: &str) -> PathBuf {
    let mut config = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    for user in &mut config.auth_infos {
        let auth = user.auth_info.get_or_insert_with(Default::default);
        auth.impersonate = Some(format!("system:serviceaccount:stowage-system:{name}"));
        auth.impersonate_groups = Some(vec![
            "system:authenticated".into(),
            "system:serviceaccounts".into(),
            "system:serviceaccounts:stowage-system".into(),
        ]);
    }
    let path = cluster.dir().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

/// The `stowage` under test; `STOWAGE_BENCH_BINARY` runs another build (an earlier
/// commit's) on the same test.
fn stowage_binary() -> PathBuf {
    std::env::var_os("STOWAGE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_stowage")),
        PathBuf::from,
    )
}

/// What [`apply_whole`] applied: the objects kustomize renders, and how many.
struct Applied {
    rendered: String,
    objects: usize,
}

/// `kubectl apply -k dir` on a cluster that holds none of its objects yet: it succeeds and
/// creates every object kustomize renders.
fn apply_whole(kubeconfig: &Path, dir: &str) -> Applied {
    let applied = kubectl(kubeconfig, &["apply", "-k", dir]);
    let applied_text = text(&applied);
    assert!(
        applied.status.success(),
        "kubectl apply -k {dir}:\n{applied_text}"
    );
    let rendered = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", text(&rendered));
    let rendered = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let objects = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
    let created = applied_text
        .lines()
        .filter(|l| l.ends_with(" created"))
        .count();
    assert_eq!(
        created, objects,
        "{dir}: every object created:\n{applied_text}"
    );
    Applied { rendered, objects }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("kubectl is installed (Debian/Ubuntu: the kubectl package)")
}

/// The value in `column` of the first row of `kubectl get`'s table output.
fn cell(table: &str, column: &str) -> Option<String> {
    let mut lines = table.lines();
    let at = lines.next()?.split_whitespace().position(|h| h == column)?;
    lines.next()?.split_whitespace().nth(at).map(str::to_string)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
#[ignore = "real lane: STOWAGE_E2E=real with a control plane in STOWAGE_K8S_BIN (TESTING.md)"]
async fn deploy_applies_whole_on_a_real_apiserver_and_again_after_a_crd_change() {
    let cluster = real_cluster().await;
    let kubeconfig = cluster.kubeconfig().to_path_buf();

    let objects = apply_whole(&kubeconfig, "deploy/").objects;
    assert!(objects >= 20, "deploy/ renders {objects} objects");
    let listed = kubectl(&kubeconfig, &["get", "-k", "deploy/", "-o", "name"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        objects,
        "the API server holds every object"
    );

    // The variants that build on it apply over it: NFS turned on beside the node-local
    // volumes (configuring the controller only), and btrfs pools.
    for variant in ["variants/nfs", "variants/btrfs"] {
        let over = kubectl(&kubeconfig, &["apply", "-k", variant, "--dry-run=server"]);
        assert!(over.status.success(), "{variant}: {}", text(&over));
    }

    // Applying again changes nothing.
    let again = kubectl(&kubeconfig, &["apply", "-k", "deploy/"]);
    let again_text = text(&again);
    assert!(again.status.success(), "{again_text}");
    assert!(
        again_text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("Warning"))
            .all(|l| l.ends_with(" unchanged")),
        "a second apply is a no-op:\n{again_text}"
    );

    // An upgrade that changes the CRDs applies over them (Kubernetes 1.19 refused this while
    // the schemas had an integral `minimum`).
    let changed = cluster.dir().join("crds-changed.yaml");
    let crds = std::fs::read_to_string(repo().join("deploy/crds.yaml")).unwrap();
    let edited = crds.replace(
        "description: Where the pool lives on the node.",
        "description: Where the pool lives on the node (changed).",
    );
    assert_ne!(edited, crds, "the edit applies to deploy/crds.yaml");
    std::fs::write(&changed, edited).unwrap();
    let upgrade = kubectl(&kubeconfig, &["apply", "-f", changed.to_str().unwrap()]);
    let upgrade_text = text(&upgrade);
    assert!(upgrade.status.success(), "{upgrade_text}");
    assert!(
        upgrade_text.contains("storagenodes.stowage.io configured"),
        "{upgrade_text}"
    );

    // The btrfs variant applies over the base install and changes only the agent's
    // DaemonSet (its capabilities), including the hardening fields (seccompProfile,
    // mountPropagation) the base has since 1.19.
    let btrfs = kubectl(&kubeconfig, &["apply", "-k", "variants/btrfs"]);
    let btrfs_text = text(&btrfs);
    assert!(btrfs.status.success(), "{btrfs_text}");
    // (The StorageNode CRD goes back from the edited one applied above.)
    let configured: Vec<&str> = btrfs_text
        .lines()
        .filter(|l| l.ends_with(" configured") && !l.contains("storagenodes.stowage.io"))
        .collect();
    assert_eq!(
        configured,
        ["daemonset.apps/stowage-agent configured"],
        "{btrfs_text}"
    );
    let ds = kubectl(
        &kubeconfig,
        &[
            "-n",
            "stowage-system",
            "get",
            "daemonset",
            "stowage-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].securityContext.capabilities.add}             {.spec.template.spec.containers[0].securityContext.seccompProfile.type}             {.spec.template.spec.containers[0].volumeMounts[1].mountPropagation}",
        ],
    );
    let fields = text(&ds);
    for want in ["SYS_ADMIN", "RuntimeDefault", "HostToContainer"] {
        assert!(fields.contains(want), "{want} in {fields}");
    }
}

#[tokio::test]
#[ignore = "real lane: STOWAGE_E2E=real with a control plane in STOWAGE_K8S_BIN (TESTING.md)"]
async fn the_optional_pdb_applies_as_its_header_says_for_the_server_version() {
    let cluster = real_cluster().await;
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let ns = kubectl(&kubeconfig, &["apply", "-f", "deploy/namespace.yaml"]);
    assert!(ns.status.success(), "{}", text(&ns));
    let version = kubectl(&kubeconfig, &["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    let minor: u32 = version["serverVersion"]["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap();
    let pdb = std::fs::read_to_string(repo().join("deploy/optional-pdb.yaml")).unwrap();
    let file = cluster.dir().join("pdb.yaml");
    if minor >= 21 {
        std::fs::write(&file, &pdb).unwrap();
    } else {
        // What the file's header tells users of 1.19 and 1.20 to do.
        assert!(pdb.contains("On 1.19 and 1.20, change apiVersion to policy/v1beta1"));
        let plain = kubectl(&kubeconfig, &["apply", "-f", "deploy/optional-pdb.yaml"]);
        assert!(
            !plain.status.success(),
            "policy/v1 is not served before 1.21"
        );
        std::fs::write(
            &file,
            pdb.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n"),
        )
        .unwrap();
    }
    let applied = kubectl(&kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(text(&applied).contains("poddisruptionbudget.policy/stowage-controller created"));
}

/// The NFS-only install (`variants/nfs-only`): applied whole, no stowage CRD or agent, and
/// the controller, run as the ServiceAccount it installs (impersonated: no pod runs here)
/// with the NFS environment it ships, binds a claim of the shipped NFS class and warns once
/// about the missing CRDs.
#[tokio::test]
#[ignore = "real lane: STOWAGE_E2E=real with a control plane in STOWAGE_K8S_BIN (TESTING.md)"]
async fn the_nfs_only_variant_installs_a_controller_that_binds_nfs_claims_without_the_crds() {
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
    use kube::api::PostParams;
    use kube::{Api, ResourceExt};
    use stowage_testkit::fixtures::{namespace, pvc};
    use stowage_testkit::net::{free_port, get};
    use stowage_testkit::{wait_for, wait_until};

    let cluster = real_cluster().await;
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let rendered = apply_whole(&kubeconfig, "variants/nfs-only").rendered;
    for absent in ["kind: CustomResourceDefinition", "kind: DaemonSet"] {
        assert!(!rendered.contains(absent), "{absent} in variants/nfs-only");
    }
    let crds = kubectl(&kubeconfig, &["get", "crd", "-o", "name"]);
    assert!(!text(&crds).contains("stowage.io"), "{}", text(&crds));

    // The controller as its ServiceAccount, with the shipped NFS environment.
    let as_controller = as_service_account(&cluster, "stowage-controller");
    let deployment: serde_json::Value = serde_json::from_slice(
        &kubectl(
            &kubeconfig,
            &[
                "-n",
                "stowage-system",
                "get",
                "deployment",
                "stowage-controller",
                "-o",
                "json",
            ],
        )
        .stdout,
    )
    .unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let value = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap()
            .to_string()
    };
    let (server, export) = (value("NFS_SERVER"), value("NFS_PATH"));
    let base = cluster.dir().join("persistent-volumes");
    std::fs::create_dir_all(base.join(&server)).unwrap();
    let port = free_port();
    let controller = cluster
        .role(stowage_binary(), "controller")
        .arg("controller")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&as_controller)
        .arg("--nfs-mount-base")
        .arg(&base)
        .env("NFS_SERVER", &server)
        .env("NFS_PATH", &export)
        .env("POD_NAMESPACE", "stowage-system")
        .env("POD_NAME", "stowage-controller-0")
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let wait = std::time::Duration::from_secs(180);
    wait_for(wait, "the controller's /readyz is 200", || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await
    .unwrap();

    let client = cluster.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace("apps").build())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    claims
        .create(
            &PostParams::default(),
            &pvc("apps", "shared")
                .size("1Gi")
                .class("stowage-nfs")
                .access_modes(["ReadWriteMany"])
                .build(),
        )
        .await
        .unwrap();
    let bound = wait_until(wait, "claim apps/shared is Bound", || async {
        claims
            .get("shared")
            .await
            .ok()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await
    .unwrap();
    let pv = Api::<PersistentVolume>::all(client)
        .get(&format!("pvc-{}", bound.uid().unwrap()))
        .await
        .unwrap();
    let nfs = pv.spec.unwrap().nfs.unwrap();
    assert_eq!(
        (nfs.server, nfs.path),
        (server, format!("{export}/apps/shared"))
    );
    let logs = controller.logs();
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("stowage CRDs not installed"))
            .count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("watch failed"), "{logs}");
    assert!(!logs.contains("forbidden"), "{logs}");
}

/// The second scheduler (`variants/second-scheduler`), applied after `deploy/`: every object
/// is created, and the real kube-scheduler, run with the variant's configuration (its API
/// version for the server's) as the ServiceAccount the variant installs (impersonated: no
/// pod runs here), takes its own Lease, schedules a pod that names `stowage-scheduler` and
/// is refused nothing by the API server.
#[tokio::test]
#[ignore = "real lane: STOWAGE_E2E=real with a control plane in STOWAGE_K8S_BIN (TESTING.md)"]
async fn the_second_scheduler_variant_runs_kube_scheduler_under_its_own_name_and_lease() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::Api;
    use kube::api::PostParams;
    use stowage_testkit::fixtures::{namespace, node, pod};
    use stowage_testkit::net::free_port;
    use stowage_testkit::{real as lane, wait_until};

    let cluster = real_cluster().await;
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let base = kubectl(&kubeconfig, &["apply", "-k", "deploy/"]);
    assert!(base.status.success(), "{}", text(&base));
    apply_whole(&kubeconfig, "variants/second-scheduler");

    // kube-scheduler as the variant's ServiceAccount.
    let as_scheduler = as_service_account(&cluster, "stowage-scheduler");

    // The variant's configuration, in the API version the server's kube-scheduler reads.
    let version: serde_json::Value =
        serde_json::from_slice(&kubectl(&kubeconfig, &["version", "-o", "json"]).stdout).unwrap();
    let minor: u32 = version["serverVersion"]["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap();
    let api_version = match minor {
        ..=22 => "kubescheduler.config.k8s.io/v1beta1",
        23..=24 => "kubescheduler.config.k8s.io/v1beta3",
        _ => "kubescheduler.config.k8s.io/v1",
    };
    let shipped =
        std::fs::read_to_string(repo().join("variants/second-scheduler/scheduler-config.yaml"))
            .unwrap();
    assert!(shipped.contains("  kubeconfig: \"\"\n"), "{shipped}");
    let mut adapted = shipped
        .replace(
            "apiVersion: kubescheduler.config.k8s.io/v1\n",
            &format!("apiVersion: {api_version}\n"),
        )
        .replace(
            "  kubeconfig: \"\"\n",
            &format!("  kubeconfig: {}\n", as_scheduler.display()),
        );
    if minor <= 22 {
        // The insecure health port is a configuration field up to 1.22; one of its own.
        let port = free_port();
        adapted += &format!(
            "healthzBindAddress: 127.0.0.1:{port}\nmetricsBindAddress: 127.0.0.1:{port}\n"
        );
    }
    let config_file = cluster.dir().join("stowage-scheduler-config.yaml");
    std::fs::write(&config_file, adapted).unwrap();
    let bin = std::env::var_os(lane::BIN_ENV)
        .map_or_else(|| PathBuf::from(lane::DEFAULT_BIN), PathBuf::from);
    let scheduler = cluster
        .role(bin.join("kube-scheduler"), "stowage-scheduler")
        .arg(format!("--config={}", config_file.display()))
        .arg(format!("--secure-port={}", free_port()))
        .arg("--bind-address=127.0.0.1")
        // Delegated authentication and authorization as the ServiceAccount too: they read
        // kube-system/extension-apiserver-authentication.
        .arg(format!("--authentication-kubeconfig={}", as_scheduler.display()))
        .arg(format!("--authorization-kubeconfig={}", as_scheduler.display()))
        .arg("-v=2")
        .spawn()
        .unwrap();

    let wait = std::time::Duration::from_secs(120);
    let holder = wait_until(
        wait,
        "Lease stowage-system/stowage-scheduler held",
        || async {
            let out = kubectl(
                &kubeconfig,
                &[
                    "-n",
                    "stowage-system",
                    "get",
                    "lease",
                    "stowage-scheduler",
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
            );
            let holder = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && !holder.is_empty()).then_some(holder)
        },
    )
    .await
    .unwrap();
    assert!(!holder.is_empty());

    // A pod that names the second scheduler is bound by it (no extender answers here:
    // ignorable, so it schedules capacity-blind).
    cluster.add_node(&node("n1").build()).await.unwrap();
    let client = cluster.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace("apps").build())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "apps");
    pods.create(
        &PostParams::default(),
        &pod("apps", "web").scheduler("stowage-scheduler").build(),
    )
    .await
    .unwrap();
    let node_name = wait_until(wait, "pod apps/web bound by stowage-scheduler", || async {
        pods.get("web")
            .await
            .ok()
            .and_then(|p| p.spec.and_then(|s| s.node_name))
    })
    .await
    .unwrap();
    assert_eq!(node_name, "n1");
    let logs = scheduler.logs();
    assert!(!logs.contains("forbidden"), "{logs}");
}

/// A fresh install as the README gives it: `kubectl apply -k deploy/`, then nothing by hand
/// but the scheduler wiring. Each agent and the controller run as the ServiceAccount the
/// install made (impersonated: no kubelet runs here, so no pod starts), with the shipped
/// arguments and the shipped pool file (its path moved under the test's directory; the
/// DaemonSet mounts that path from the host), and kube-scheduler with the shipped
/// configuration calls the controller's extender. Every agent's StorageNode gets a ready
/// pool, a claim of the shipped `stowage-local` class used by a pod is Bound, and nothing
/// the install's RBAC forbids is attempted.
#[tokio::test]
#[ignore = "real lane: STOWAGE_E2E=real with a control plane in STOWAGE_K8S_BIN (TESTING.md)"]
async fn a_fresh_install_binds_a_claim_with_nothing_done_by_hand_but_the_scheduler_wiring() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod};
    use kube::Api;
    use kube::api::PostParams;
    use stowage::api::storage_node::StorageNode;
    use stowage_testkit::fixtures::{namespace, node, pod, pvc};
    use stowage_testkit::net::{free_port, get};
    use stowage_testkit::{wait_for, wait_until};

    let cluster = real_cluster().await;
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let applied = kubectl(&kubeconfig, &["apply", "-k", "deploy/"]);
    assert!(applied.status.success(), "{}", text(&applied));
    let nodes = ["n1", "n2"];
    for name in nodes {
        cluster.add_node(&node(name).build()).await.unwrap();
    }
    let client = cluster.client();
    let wait = std::time::Duration::from_secs(120);

    // The shipped pool file, from the ConfigMap the install made.
    let pools = Api::<ConfigMap>::namespaced(client.clone(), "stowage-system")
        .get("stowage-pools")
        .await
        .unwrap();
    let shipped = pools.data.unwrap()["pools.yaml"].clone();
    assert!(shipped.contains("/var/lib/stowage/pools/"), "{shipped}");
    let as_agent = as_service_account(&cluster, "stowage-agent");
    let mut agents = Vec::new();
    for name in nodes {
        // What the DaemonSet's hostPath volume (DirectoryOrCreate) makes; the pool's own
        // directory is the agent's to make (`create: true`).
        let root = cluster.dir().join(name).join("pools");
        std::fs::create_dir_all(&root).unwrap();
        let file = cluster.dir().join(format!("pools-{name}.yaml"));
        let moved = shipped.replace("/var/lib/stowage/pools/", &format!("{}/", root.display()));
        std::fs::write(&file, moved).unwrap();
        let port = free_port();
        agents.push((
            cluster
                .role(stowage_binary(), &format!("agent-{name}"))
                .arg("agent")
                .arg(format!("--pools={}", file.display()))
                // Where the DaemonSet mounts its hostPath, moved like the pool paths.
                .arg(format!("--pool-root={}", root.display()))
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg("--kubeconfig")
                .arg(&as_agent)
                .env("NODE_NAME", name)
                .env("RUST_LOG", "info")
                .spawn()
                .unwrap(),
            port,
        ));
    }
    let as_controller = as_service_account(&cluster, "stowage-controller");
    let port = free_port();
    let controller = cluster
        .role(stowage_binary(), "controller")
        .arg("controller")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&as_controller)
        .env("POD_NAMESPACE", "stowage-system")
        .env("POD_NAME", "stowage-controller-0")
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    for (_, agent_port) in &agents {
        wait_for(wait, "an agent's /readyz is 200", || async {
            matches!(get(*agent_port, "/readyz").await, Some((200, _)))
        })
        .await
        .unwrap();
    }
    wait_for(wait, "the controller's /readyz is 200", || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await
    .unwrap();
    cluster
        .start_scheduler(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();

    // Every agent's StorageNode, its shipped pool made and ready.
    let storage_nodes: Api<StorageNode> = Api::all(client.clone());
    for name in nodes {
        wait_for(
            wait,
            &format!("StorageNode {name} has its pool ready"),
            || async {
                storage_nodes
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|sn| sn.status)
                    .is_some_and(|s| s.pools.iter().any(|p| p.name == "default" && p.ready))
            },
        )
        .await
        .unwrap();
    }

    // A claim of the shipped class, used by a pod.
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace("apps").build())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "apps");
    claims
        .create(
            &PostParams::default(),
            &pvc("apps", "data")
                .size("1Gi")
                .class("stowage-local")
                .build(),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), "apps")
        .create(
            &PostParams::default(),
            &pod("apps", "db").claims(["data"]).build(),
        )
        .await
        .unwrap();
    let bound = match wait_until(wait, "claim apps/data is Bound", || async {
        claims
            .get("data")
            .await
            .ok()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await
    {
        Ok(bound) => bound,
        Err(e) => panic!(
            "{e}; the scheduler said: {:?}\nStorageNodes: {:?}\ncontroller:\n{}",
            cluster.scheduling_failure("apps", "db").await,
            storage_nodes.list(&Default::default()).await.map(|l| l
                .items
                .into_iter()
                .map(|sn| sn.status)
                .collect::<Vec<_>>()),
            controller.logs()
        ),
    };
    let volume = bound.spec.unwrap().volume_name.unwrap();
    let node = bound
        .metadata
        .annotations
        .unwrap()
        .get(stowage::api::names::ANNOTATION_SELECTED_NODE)
        .cloned()
        .unwrap();
    assert!(
        cluster
            .dir()
            .join(&node)
            .join("pools/default")
            .join(&volume)
            .is_dir(),
        "the volume's directory is in the shipped pool on {node}"
    );
    // The printer columns people read it by: `kubectl get lv` shows node, pool, phase and
    // the size the agent made it with.
    let table = text(&kubectl(&kubeconfig, &["get", "localvolumes", &volume]));
    for (column, want) in [
        ("NAME", volume.as_str()),
        ("NODE", node.as_str()),
        ("POOL", "default"),
        ("PHASE", "Ready"),
        ("SIZE", "1Gi"),
    ] {
        assert_eq!(
            cell(&table, column).as_deref(),
            Some(want),
            "{column} in {table}"
        );
    }
    // And `kubectl get sn` the node's, with the volume's 1Gi allocated once the agent has
    // reported it.
    let table = wait_until(wait, "kubectl get sn shows 1Gi allocated", || async {
        let table = text(&kubectl(&kubeconfig, &["get", "storagenodes", &node]));
        (cell(&table, "ALLOCATED").as_deref() == Some("1Gi")).then_some(table)
    })
    .await
    .unwrap();
    assert_eq!(cell(&table, "READY").as_deref(), Some("true"), "{table}");
    assert_eq!(cell(&table, "VOLUMES").as_deref(), Some("1"), "{table}");
    for column in ["CAPACITY", "USED%", "FREE"] {
        assert!(cell(&table, column).is_some(), "{column} in {table}");
    }
    let mut logs = controller.logs();
    for (agent, _) in &agents {
        logs.push_str(&agent.logs());
    }
    assert!(!logs.contains("forbidden"), "{logs}");
}
