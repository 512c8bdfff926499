//! How long the agent takes from "LocalVolume created" to "status Ready": the real
//! `stowage agent` process against testkit's in-memory API server, 100 volumes created one
//! after another, each timed from the create call returning to the Ready status seen by a
//! watch. Prints the median and p90 per driver.
//!
//! ```sh
//! cargo bench --bench agent_ready                            # hostpath in a temp dir
//! STOWAGE_TEST_BTRFS=/mnt/btrfs cargo bench --bench agent_ready  # also btrfs there
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use stowage::api::crds;
use stowage::api::local_volume::{
    ClaimRef, LocalVolume, LocalVolumePhase, LocalVolumeSpec, OnDelete,
};
use stowage::api::names::{FINALIZER_AGENT_CLEANUP, LABEL_NODE};
use stowage_testkit::e2e::{Cluster, random_uuid};
use stowage_testkit::wait_for;

const VOLUMES: usize = 100;
const NODE: &str = "bench-node";

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let scratch = tempfile::tempdir()?;
        let hostpath = scratch.path().join("hostpath");
        std::fs::create_dir(&hostpath)?;
        run("hostpath", &hostpath).await?;
        match std::env::var_os("STOWAGE_TEST_BTRFS") {
            Some(mount) => {
                let pool = Path::new(&mount).join(format!("stowage-bench-{}", random_uuid()));
                std::fs::create_dir(&pool)?;
                let result = run("btrfs", &pool).await;
                let _ = std::fs::remove_dir_all(&pool);
                result?;
            }
            None => {
                println!("btrfs: skipped (set STOWAGE_TEST_BTRFS to a btrfs mount to measure it)")
            }
        }
        Ok(())
    })
}

async fn run(driver: &str, pool: &Path) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.install_crds(crds()).await?;
    let config = cluster.dir().join("pools.yaml");
    std::fs::write(
        &config,
        format!(
            "pools:\n  - name: bench\n    path: {}\n    driver: {driver}\n",
            pool.display()
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let agent = cluster
        .role(env!("CARGO_BIN_EXE_stowage"), "agent")
        .arg("agent")
        .arg("--pools")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .env("NODE_NAME", NODE)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let sn: Api<stowage::api::storage_node::StorageNode> = Api::all(cluster.client());
    wait_for(
        Duration::from_secs(30),
        "the agent reports its node",
        || async {
            sn.get_opt(NODE)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| n.status.is_some())
        },
    )
    .await?;

    let api: Api<LocalVolume> = Api::all(cluster.client());
    // One watch sees every status change; creation times are compared with Ready times.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_api = api.clone();
    let watch = tokio::spawn(async move {
        let stream = watcher(watch_api, watcher::Config::default()).applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(lv)) = stream.next().await {
            if lv.status.as_ref().map(|s| s.phase) == Some(LocalVolumePhase::Ready) {
                let name = lv.metadata.name.clone().unwrap_or_default();
                if ready_tx.send((name, Instant::now())).is_err() {
                    break;
                }
            }
        }
    });

    let mut samples = Vec::with_capacity(VOLUMES);
    for _ in 0..VOLUMES {
        let name = format!("pvc-{}", random_uuid());
        let mut lv = LocalVolume::new(
            &name,
            LocalVolumeSpec {
                node_name: NODE.into(),
                pool: "bench".into(),
                size_bytes: 1 << 30,
                claim: ClaimRef::default(),
                on_delete: OnDelete::Delete,
            },
        );
        lv.metadata.labels = Some([(LABEL_NODE.to_string(), NODE.to_string())].into());
        lv.metadata.finalizers = Some(vec![FINALIZER_AGENT_CLEANUP.into()]);
        let start = Instant::now();
        api.create(&PostParams::default(), &lv).await?;
        let ready_at = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some((ready, at)) = ready_rx.recv().await {
                if ready == name {
                    return Some(at);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow::anyhow!("{name} did not become Ready; agent log:\n{}", agent.logs())
        })?;
        samples.push(ready_at.duration_since(start));
    }
    watch.abort();
    drop(agent);
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "{driver}: LocalVolume created -> Ready, {VOLUMES} volumes one at a time: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(pct(50)),
        ms(pct(90)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
