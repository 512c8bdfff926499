//! `stowage agent` end to end: the real binary on hostpath pools in temp dirs, against
//! testkit's API server, or a real control plane on the real lane (`STOWAGE_E2E=real`).

// Helpers in a test crate panic on failure like the tests themselves; clippy allows unwrap
// only inside #[test] functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage::api::crds;
use stowage::api::local_volume::{
    ClaimRef, LocalVolume, LocalVolumePhase, LocalVolumeSpec, OnDelete,
};
use stowage::api::names::{FINALIZER_AGENT_CLEANUP, LABEL_NODE, LABEL_POOL};
use stowage::api::storage_node::{PoolStatus, StorageNode};
use stowage_testkit::e2e::{Cluster, Role, random_uuid};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::{wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const GI: u64 = 1 << 30;
const OTHER_FINALIZER: &str = "example.com/keep";

/// One agent on one node, with its pools in the cluster's scratch directory.
struct Agent {
    // Dropped first: the process, so its log can still be printed from the cluster's dir.
    process: Role,
    cluster: Cluster,
    node: String,
    port: u16,
    config: PathBuf,
}

fn pool_yaml(pools: &[(&str, &Path)]) -> String {
    let mut text = String::from("pools:\n");
    for (name, path) in pools {
        text.push_str(&format!(
            "  - name: {name}\n    path: {}\n    reserve: 10%\n",
            path.display()
        ));
    }
    text
}

impl Agent {
    /// Starts a cluster with the CRDs and an agent whose pools are `pools` (name, dir under
    /// the scratch directory; the dirs are created unless listed in `missing`).
    async fn start(pools: &[&str], missing: &[&str]) -> Agent {
        let cluster = Cluster::start().await.unwrap();
        cluster.install_crds(crds()).await.unwrap();
        let node = cluster.unique("node");
        let dirs: Vec<(&str, PathBuf)> = pools
            .iter()
            .map(|p| (*p, cluster.dir().join("pools").join(p)))
            .collect();
        for (name, dir) in &dirs {
            if !missing.contains(name) {
                std::fs::create_dir_all(dir).unwrap();
            }
        }
        let config = cluster.dir().join("pools.yaml");
        let refs: Vec<(&str, &Path)> = dirs.iter().map(|(n, d)| (*n, d.as_path())).collect();
        std::fs::write(&config, pool_yaml(&refs)).unwrap();
        let port = free_port();
        let process = cluster
            .role(env!("CARGO_BIN_EXE_stowage"), "agent")
            .arg("agent")
            .arg("--pools")
            .arg(&config)
            .arg("--heartbeat")
            .arg("1")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .env("NODE_NAME", &node)
            .env("RUST_LOG", "info,stowage=debug")
            .spawn()
            .unwrap();
        let agent = Agent {
            process,
            cluster,
            node,
            port,
            config,
        };
        agent.wait_ready().await;
        agent
    }

    async fn wait_ready(&self) {
        let port = self.port;
        wait_for(WAIT, "the agent's /readyz is 200", || async move {
            matches!(get(port, "/readyz").await, Some((200, _)))
        })
        .await
        .unwrap();
    }

    fn pool_dir(&self, pool: &str) -> PathBuf {
        self.cluster.dir().join("pools").join(pool)
    }

    fn volumes(&self) -> Api<LocalVolume> {
        Api::all(self.cluster.client())
    }

    fn storage_nodes(&self) -> Api<StorageNode> {
        Api::all(self.cluster.client())
    }

    /// Creates a LocalVolume as the controller would (labels, finalizer) and returns its name.
    async fn create(
        &self,
        pool: &str,
        size: u64,
        on_delete: OnDelete,
        extra_finalizer: bool,
    ) -> String {
        let name = format!("pvc-{}", random_uuid());
        let mut lv = LocalVolume::new(
            &name,
            LocalVolumeSpec {
                node_name: self.node.clone(),
                pool: pool.into(),
                size_bytes: size,
                claim: ClaimRef {
                    namespace: "apps".into(),
                    name: "data".into(),
                    uid: random_uuid(),
                },
                on_delete,
            },
        );
        lv.metadata.labels = Some(
            [
                (LABEL_NODE.to_string(), self.node.clone()),
                (LABEL_POOL.to_string(), pool.to_string()),
            ]
            .into(),
        );
        let mut finalizers = vec![FINALIZER_AGENT_CLEANUP.to_string()];
        if extra_finalizer {
            finalizers.insert(0, OTHER_FINALIZER.to_string());
        }
        lv.metadata.finalizers = Some(finalizers);
        self.volumes()
            .create(&PostParams::default(), &lv)
            .await
            .unwrap();
        name
    }

    async fn wait_phase(&self, name: &str, phase: LocalVolumePhase) -> LocalVolume {
        let api = self.volumes();
        wait_until(WAIT, &format!("{name} is {phase:?}"), || async {
            api.get(name)
                .await
                .ok()
                .filter(|lv| lv.status.as_ref().map(|s| s.phase) == Some(phase))
        })
        .await
        .unwrap()
    }

    async fn wait_gone(&self, name: &str) {
        let api = self.volumes();
        wait_for(WAIT, &format!("{name} is gone"), || async {
            matches!(api.get_opt(name).await, Ok(None))
        })
        .await
        .unwrap();
    }

    /// Waits until the StorageNode's pool `pool` satisfies `check`.
    async fn wait_pool(
        &self,
        pool: &str,
        what: &str,
        check: impl Fn(&PoolStatus) -> bool,
    ) -> StorageNode {
        let api = self.storage_nodes();
        wait_until(
            WAIT,
            &format!("StorageNode pool {pool}: {what}"),
            || async {
                let sn = api.get(&self.node).await.ok()?;
                let status = sn.status.as_ref()?;
                status
                    .pools
                    .iter()
                    .find(|p| p.name == pool)
                    .filter(|p| check(p))?;
                Some(sn)
            },
        )
        .await
        .unwrap()
    }

    async fn metrics(&self) -> String {
        get(self.port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

fn finalizers(lv: &LocalVolume) -> Vec<String> {
    lv.metadata.finalizers.clone().unwrap_or_default()
}

#[tokio::test]
async fn volumes_become_ready_and_are_deleted_archived_or_retained_as_asked() {
    let agent = Agent::start(&["fast"], &[]).await;
    let pool = agent.pool_dir("fast");
    let del = agent.create("fast", GI, OnDelete::Delete, false).await;
    let arc = agent.create("fast", GI, OnDelete::Archive, true).await;
    let ret = agent.create("fast", 2 * GI, OnDelete::Retain, false).await;
    for name in [&del, &arc, &ret] {
        let lv = agent.wait_phase(name, LocalVolumePhase::Ready).await;
        let status = lv.status.unwrap();
        let path = PathBuf::from(status.path.unwrap());
        assert_eq!(path, pool.canonicalize().unwrap().join(name));
        assert!(path.is_dir());
        assert_eq!(status.size_bytes, Some(lv.spec.size_bytes));
        // For `kubectl get lv`'s SIZE column.
        let size = if *name == ret { "2Gi" } else { "1Gi" };
        assert_eq!(status.size.as_deref(), Some(size), "{name}");
        assert_eq!(status.observed_generation, lv.metadata.generation);
        assert_eq!(status.message, None);
        std::fs::write(path.join("data"), name.as_bytes()).unwrap();
    }
    agent
        .wait_pool("fast", "three volumes, 4Gi allocated", |p| {
            p.volumes == 3 && p.allocated_bytes == 4 * GI
        })
        .await;
    // One status write per volume: the check that follows its own Ready event finds the
    // status as it would write it.
    if let Some(server) = agent.cluster.server() {
        let writes = server
            .request_counts()
            .get("patch localvolumes/status")
            .copied();
        assert_eq!(writes, Some(3), "status writes for three volumes");
    }

    let dp = DeleteParams::default();
    for name in [&del, &arc, &ret] {
        agent.volumes().delete(name, &dp).await.unwrap();
    }
    agent.wait_gone(&del).await;
    agent.wait_gone(&ret).await;
    assert!(!pool.join(&del).exists(), "delete removes the data");
    assert_eq!(
        std::fs::read(pool.join(&ret).join("data")).unwrap(),
        ret.as_bytes(),
        "retain keeps it"
    );

    // The archived volume keeps the other finalizer: the agent removed only its own.
    let api = agent.volumes();
    let held = wait_until(
        WAIT,
        "the agent's finalizer is removed from the archived volume",
        || async {
            api.get(&arc)
                .await
                .ok()
                .filter(|lv| finalizers(lv) == [OTHER_FINALIZER])
        },
    )
    .await
    .unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(!pool.join(&arc).exists(), "archive moves the data away");
    let archived: Vec<String> = std::fs::read_dir(pool.join(".archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert!(archived[0].starts_with(&format!("{arc}-")), "{archived:?}");
    assert_eq!(
        std::fs::read(pool.join(".archive").join(&archived[0]).join("data")).unwrap(),
        arc.as_bytes()
    );
    api.patch(
        &arc,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    agent.wait_gone(&arc).await;

    // The retained directory has no LocalVolume now: an orphan, counted and left alone.
    agent
        .wait_pool("fast", "the retained volume is an orphan", |p| {
            p.orphans == 1 && p.volumes == 0
        })
        .await;
    assert!(pool.join(&ret).join("data").exists());
    let metrics = agent.metrics().await;
    for line in [
        "stowage_agent_operations_total{operation=\"create\",result=\"success\"} 3",
        "stowage_agent_operations_total{operation=\"delete\",result=\"success\"} 1",
        "stowage_agent_operations_total{operation=\"archive\",result=\"success\"} 1",
        "stowage_agent_operations_total{operation=\"retain\",result=\"success\"} 1",
        "stowage_agent_operation_duration_seconds_count{operation=\"create\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_node_with_two_pools_reports_both_with_a_heartbeat_and_gauges() {
    let agent = Agent::start(&["fast", "bulk"], &[]).await;
    let a = agent.create("fast", GI, OnDelete::Delete, false).await;
    let b = agent.create("bulk", 3 * GI, OnDelete::Delete, false).await;
    let lv_a = agent.wait_phase(&a, LocalVolumePhase::Ready).await;
    let lv_b = agent.wait_phase(&b, LocalVolumePhase::Ready).await;
    assert!(lv_a.status.unwrap().path.unwrap().contains("/fast/"));
    assert!(lv_b.status.unwrap().path.unwrap().contains("/bulk/"));
    agent
        .wait_pool("bulk", "3Gi allocated", |p| {
            p.allocated_bytes == 3 * GI && p.volumes == 1
        })
        .await;
    let sn = agent
        .wait_pool("fast", "1Gi allocated", |p| {
            p.allocated_bytes == GI && p.volumes == 1
        })
        .await;
    let status = sn.status.unwrap();
    assert_eq!(status.pool_count, 2);
    assert_eq!(status.volumes, 2);
    assert_eq!(status.allocated_bytes, 4 * GI);
    assert!(status.ready);
    assert_eq!(
        status.agent_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    for p in &status.pools {
        assert!(p.ready && p.message.is_none(), "{p:?}");
        assert_eq!(p.driver, "hostpath");
        assert!(
            p.capacity_bytes > 0 && p.allocatable_bytes < p.capacity_bytes,
            "10% reserve: {p:?}"
        );
        assert!(p.available_bytes > 0 && p.available_bytes <= p.capacity_bytes);
    }
    assert_eq!(
        status.capacity_bytes,
        status.pools.iter().map(|p| p.capacity_bytes).sum::<u64>()
    );

    // The heartbeat advances with no change at all.
    let first = status.heartbeat_time.clone().unwrap();
    let api = agent.storage_nodes();
    wait_for(WAIT, "the heartbeat advances", || async {
        api.get(&agent.node)
            .await
            .ok()
            .and_then(|s| s.status?.heartbeat_time)
            .is_some_and(|t| t > first)
    })
    .await
    .unwrap();

    let metrics = agent.metrics().await;
    let node = &agent.node;
    for pool in ["fast", "bulk"] {
        for gauge in [
            "stowage_pool_capacity_bytes",
            "stowage_pool_allocatable_bytes",
            "stowage_pool_available_bytes",
            "stowage_pool_orphans",
        ] {
            let prefix = format!("{gauge}{{node=\"{node}\",pool=\"{pool}\"}} ");
            assert!(
                metrics.contains(&prefix),
                "{prefix} missing from\n{metrics}"
            );
        }
        assert!(metrics.contains(&format!(
            "stowage_pool_ready{{node=\"{node}\",pool=\"{pool}\"}} 1"
        )));
        assert!(metrics.contains(&format!(
            "stowage_pool_volumes{{node=\"{node}\",pool=\"{pool}\"}} 1"
        )));
    }
    assert!(metrics.contains(&format!(
        "stowage_pool_allocated_bytes{{node=\"{node}\",pool=\"bulk\"}} {}",
        3 * GI
    )));
    assert!(metrics.contains(&format!(
        "stowage_agent_heartbeat_timestamp_seconds{{node=\"{node}\"}} "
    )));
    assert!(matches!(get(agent.port, "/healthz").await, Some((200, _))));
}

#[tokio::test]
async fn unknown_and_not_ready_pools_fail_with_a_message_until_fixed() {
    let agent = Agent::start(&["fast", "slow"], &["slow"]).await;
    let sn = agent
        .wait_pool("slow", "not ready with the reason", |p| !p.ready)
        .await;
    let status = sn.status.unwrap();
    let slow = status.pools.iter().find(|p| p.name == "slow").unwrap();
    assert!(
        slow.message.as_deref().unwrap().contains("does not exist"),
        "{slow:?}"
    );
    assert!(
        status
            .pools
            .iter()
            .find(|p| p.name == "fast")
            .unwrap()
            .ready,
        "the other pool works"
    );
    assert!(!status.ready);

    let on_slow = agent.create("slow", GI, OnDelete::Delete, false).await;
    let on_bulk = agent.create("bulk", GI, OnDelete::Delete, false).await;
    let on_fast = agent.create("fast", GI, OnDelete::Delete, false).await;
    agent.wait_phase(&on_fast, LocalVolumePhase::Ready).await;

    let failed = agent.wait_phase(&on_slow, LocalVolumePhase::Failed).await;
    let message = failed.status.unwrap().message.unwrap();
    for part in [
        on_slow.as_str(),
        "\"slow\"",
        "not ready",
        "does not exist",
        "fix the pool",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    let failed = agent.wait_phase(&on_bulk, LocalVolumePhase::Failed).await;
    let message = failed.status.unwrap().message.unwrap();
    for part in [
        on_bulk.as_str(),
        "\"bulk\"",
        "not configured",
        "fast, slow",
        "add the pool",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    // A Warning Event tells `kubectl describe` the same.
    let events: Api<Event> = Api::namespaced(agent.cluster.client(), "default");
    wait_for(WAIT, "a PoolNotReady Event about the volume", || async {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("PoolNotReady")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some(on_slow.as_str())
            })
        })
    })
    .await
    .unwrap();

    // Fix the pool by making its directory: the retries pick it up.
    std::fs::create_dir_all(agent.pool_dir("slow")).unwrap();
    let lv = agent.wait_phase(&on_slow, LocalVolumePhase::Ready).await;
    assert_eq!(lv.status.unwrap().message, None);
    assert!(agent.pool_dir("slow").join(&on_slow).is_dir());
    agent
        .wait_pool("slow", "ready again", |p| p.ready && p.message.is_none())
        .await;

    // Fix the unknown pool by adding it to the config: the agent reloads the file.
    std::fs::create_dir_all(agent.pool_dir("bulk")).unwrap();
    let text = pool_yaml(&[
        ("fast", &agent.pool_dir("fast")),
        ("slow", &agent.pool_dir("slow")),
        ("bulk", &agent.pool_dir("bulk")),
    ]);
    std::fs::write(&agent.config, text).unwrap();
    agent.wait_phase(&on_bulk, LocalVolumePhase::Ready).await;
    assert!(agent.pool_dir("bulk").join(&on_bulk).is_dir());
    agent
        .wait_pool("bulk", "reported", |p| p.ready && p.volumes == 1)
        .await;
}

#[tokio::test]
async fn hostile_entries_in_a_pool_fail_the_volume_and_nothing_outside_is_touched() {
    let agent = Agent::start(&["fast"], &[]).await;
    let pool = agent.pool_dir("fast");
    let outside = agent.cluster.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"do not touch").unwrap();

    // Symlinks named like the volumes, pointing out of the pool; a file where a directory goes.
    let linked = format!("pvc-{}", random_uuid());
    let linked_del = format!("pvc-{}", random_uuid());
    let filed = format!("pvc-{}", random_uuid());
    std::os::unix::fs::symlink(&outside, pool.join(&linked)).unwrap();
    std::os::unix::fs::symlink(&outside, pool.join(&linked_del)).unwrap();
    std::fs::write(pool.join(&filed), b"a file").unwrap();

    for (name, on_delete) in [
        (&linked, OnDelete::Delete),
        (&linked_del, OnDelete::Archive),
        (&filed, OnDelete::Delete),
    ] {
        let mut lv = LocalVolume::new(
            name,
            LocalVolumeSpec {
                node_name: agent.node.clone(),
                pool: "fast".into(),
                size_bytes: GI,
                claim: ClaimRef::default(),
                on_delete,
            },
        );
        lv.metadata.labels = Some([(LABEL_NODE.to_string(), agent.node.clone())].into());
        lv.metadata.finalizers = Some(vec![FINALIZER_AGENT_CLEANUP.into()]);
        agent
            .volumes()
            .create(&PostParams::default(), &lv)
            .await
            .unwrap();
    }
    let message = agent
        .wait_phase(&linked, LocalVolumePhase::Failed)
        .await
        .status
        .unwrap()
        .message
        .unwrap();
    assert!(
        message.contains(&linked) && message.contains("symlink"),
        "{message}"
    );
    let message = agent
        .wait_phase(&filed, LocalVolumePhase::Failed)
        .await
        .status
        .unwrap()
        .message
        .unwrap();
    assert!(
        message.contains(&filed) && message.contains("not a directory"),
        "{message}"
    );

    // Deleting a symlinked volume must not follow the link, whether its class deletes or
    // archives: the finalizer stays, the status says why, and the data outside survives
    // (the archive is not made through the link either).
    for name in [&linked, &linked_del] {
        agent
            .volumes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        let lv = agent.wait_phase(name, LocalVolumePhase::Deleting).await;
        assert!(finalizers(&lv).contains(&FINALIZER_AGENT_CLEANUP.to_string()));
        assert!(
            lv.status.unwrap().message.unwrap().contains("symlink"),
            "{name}"
        );
        assert!(
            pool.join(name.as_str()).is_symlink(),
            "the link {name} itself is left for an operator"
        );
    }

    // A volume object whose name is not a volume name is refused.
    let mut bad = LocalVolume::new(
        "data-volume",
        LocalVolumeSpec {
            node_name: agent.node.clone(),
            pool: "fast".into(),
            size_bytes: GI,
            claim: ClaimRef::default(),
            on_delete: OnDelete::Delete,
        },
    );
    bad.metadata.labels = Some([(LABEL_NODE.to_string(), agent.node.clone())].into());
    agent
        .volumes()
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();
    let message = agent
        .wait_phase("data-volume", LocalVolumePhase::Failed)
        .await
        .status
        .unwrap()
        .message
        .unwrap();
    assert!(message.contains("pvc-"), "{message}");

    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"do not touch"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(std::fs::read(pool.join(&filed)).unwrap(), b"a file");
    assert!(
        pool.join(&linked)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!pool.join("data-volume").exists());
    let metrics = agent.metrics().await;
    assert!(
        metrics.contains("stowage_agent_operations_total{operation=\"create\",result=\"error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stowage_agent_operations_total{operation=\"delete\",result=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_killed_agent_converges_after_restart_without_losing_or_duplicating_volumes() {
    let mut agent = Agent::start(&["fast"], &[]).await;
    let pool = agent.pool_dir("fast");
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(agent.create("fast", GI, OnDelete::Delete, false).await);
    }
    for name in &kept {
        agent.wait_phase(name, LocalVolumePhase::Ready).await;
        std::fs::write(pool.join(name).join("data"), name.as_bytes()).unwrap();
    }

    agent.process.kill();
    let doomed = kept.remove(0);
    agent
        .volumes()
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    let mut added = Vec::new();
    for _ in 0..2 {
        added.push(agent.create("fast", 2 * GI, OnDelete::Delete, false).await);
    }
    // Nobody acts while the agent is down: the deleted one waits for its finalizer.
    let held = agent.volumes().get(&doomed).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(pool.join(&doomed).is_dir());

    agent.process.restart().unwrap();
    agent.wait_ready().await;
    agent.wait_gone(&doomed).await;
    assert!(!pool.join(&doomed).exists());
    for name in &added {
        agent.wait_phase(name, LocalVolumePhase::Ready).await;
    }
    for name in &kept {
        let lv = agent.wait_phase(name, LocalVolumePhase::Ready).await;
        assert_eq!(lv.status.unwrap().size_bytes, Some(GI));
        assert_eq!(
            std::fs::read(pool.join(name).join("data")).unwrap(),
            name.as_bytes(),
            "data kept"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = kept.iter().chain(&added).cloned().collect();
    want.sort();
    assert_eq!(on_disk, want, "exactly the live volumes, no duplicates");
    agent
        .wait_pool("fast", "four volumes, no orphans", |p| {
            p.volumes == 4 && p.orphans == 0 && p.allocated_bytes == 6 * GI
        })
        .await;
    assert!(agent.process.logs().contains("=== start 2 of agent"));
}

#[tokio::test]
async fn volumes_on_disk_without_a_local_volume_are_orphans_and_are_never_deleted() {
    // Every report scans the pools, so an orphan appearing after the start is seen too.
    let agent = Agent::start(&["fast"], &[]).await;
    let pool = agent.pool_dir("fast");
    let orphan = format!("pvc-{}", random_uuid());
    std::fs::create_dir(pool.join(&orphan)).unwrap();
    std::fs::write(pool.join(&orphan).join("data"), b"old").unwrap();
    std::fs::create_dir(pool.join("lost+found")).unwrap();
    let live = agent.create("fast", GI, OnDelete::Delete, false).await;
    agent.wait_phase(&live, LocalVolumePhase::Ready).await;

    let sn = agent
        .wait_pool("fast", "one orphan", |p| p.orphans == 1 && p.volumes == 1)
        .await;
    let mut last = sn.status.unwrap().heartbeat_time.unwrap();
    let node = agent.node.clone();
    let api = agent.storage_nodes();
    // Two more heartbeats, each a report (and scan) made after the orphans were there.
    for beat in ["one more heartbeat", "a second one"] {
        let seen = wait_until(WAIT, beat, || async {
            api.get(&node)
                .await
                .ok()
                .and_then(|s| s.status?.heartbeat_time)
                .filter(|t| *t > last)
        })
        .await
        .unwrap();
        last = seen;
    }
    assert_eq!(
        std::fs::read(pool.join(&orphan).join("data")).unwrap(),
        b"old"
    );
    assert!(pool.join("lost+found").is_dir());
    let metrics = agent.metrics().await;
    let line = format!("stowage_pool_orphans{{node=\"{node}\",pool=\"fast\"}} 1");
    assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    let logs = agent.process.logs();
    assert!(
        logs.contains("orphaned volume") && logs.contains(&orphan),
        "{logs}"
    );
    assert_eq!(
        logs.matches("orphaned volume").count(),
        1,
        "logged once, not every heartbeat"
    );
}

#[tokio::test]
async fn a_larger_size_grows_the_volume_and_a_smaller_one_is_refused() {
    let agent = Agent::start(&["fast"], &[]).await;
    let name = agent.create("fast", GI, OnDelete::Delete, false).await;
    let lv = agent.wait_phase(&name, LocalVolumePhase::Ready).await;
    let path = PathBuf::from(lv.status.unwrap().path.unwrap());
    std::fs::write(path.join("data"), b"keep").unwrap();
    let api = agent.volumes();
    let resize = |size: u64| Patch::Merge(json!({"spec": {"sizeBytes": size}}));
    api.patch(&name, &PatchParams::default(), &resize(3 * GI))
        .await
        .unwrap();
    let grown = wait_until(WAIT, "the status reports 3Gi", || async {
        api.get(&name)
            .await
            .ok()
            .filter(|lv| lv.status.as_ref().and_then(|s| s.size_bytes) == Some(3 * GI))
    })
    .await
    .unwrap();
    let status = grown.status.unwrap();
    assert_eq!(status.size.as_deref(), Some("3Gi"));
    assert_eq!(status.phase, LocalVolumePhase::Ready);
    assert_eq!(status.observed_generation, grown.metadata.generation);
    agent
        .wait_pool("fast", "3Gi allocated", |p| p.allocated_bytes == 3 * GI)
        .await;

    api.patch(&name, &PatchParams::default(), &resize(GI))
        .await
        .unwrap();
    let refused = wait_until(WAIT, "the shrink is refused", || async {
        api.get(&name).await.ok().filter(|lv| {
            lv.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some_and(|m| m.contains("cannot shrink"))
        })
    })
    .await
    .unwrap();
    let status = refused.status.unwrap();
    assert_eq!(status.size_bytes, Some(3 * GI), "the volume keeps its size");
    assert_eq!(status.phase, LocalVolumePhase::Ready, "and stays usable");
    assert!(status.message.unwrap().contains(&name));
    assert_eq!(std::fs::read(path.join("data")).unwrap(), b"keep");
    let metrics = agent.metrics().await;
    assert!(
        metrics.contains("stowage_agent_operations_total{operation=\"grow\",result=\"success\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_malformed_pool_file_stops_the_agent_with_the_reason_before_any_api_call() {
    let cluster = Cluster::start().await.unwrap();
    let config = cluster.dir().join("pools.yaml");
    std::fs::write(
        &config,
        "pools:\n  - name: fast\n    path: /srv/fast\n    reserve: lots\n",
    )
    .unwrap();
    let mut agent = cluster
        .role(env!("CARGO_BIN_EXE_stowage"), "agent")
        .args([
            "agent",
            "--node-name",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--pools",
        ])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .spawn()
        .unwrap();
    let status = agent.wait_exit(WAIT).await.unwrap();
    assert_eq!(status.code(), Some(2));
    let logs = agent.logs();
    for part in [
        config.display().to_string().as_str(),
        "\"fast\"",
        "reserve",
        "lots",
    ] {
        assert!(logs.contains(part), "{part:?} missing from {logs}");
    }
    if let Some(server) = cluster.server() {
        let touched: Vec<_> = server
            .request_counts()
            .into_keys()
            .filter(|k| k.contains("storagenodes") || k.contains("localvolumes"))
            .collect();
        assert!(touched.is_empty(), "{touched:?}");
    }
}
