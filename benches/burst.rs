//! A burst of claims through the whole system, timed: the e2e harness (tests/support/stack.rs:
//! three real `stowage agent` processes, `stowage controller`, testkit's in-memory API server
//! with its kube-scheduler + PV-controller stand-in), pods of 1–3 claims created all at once,
//! and for every claim the time from its create call returning to a watch seeing it `Bound`.
//!
//! ```sh
//! cargo bench --bench burst                          # release; 200 claims, 3 runs
//! cargo bench --bench burst -- --claims 200 --runs 5 --workers 16   # controller --workers
//! cargo bench --bench burst -- --fill 95           # nodes sized so the claims fill 95 %
//! cargo bench --bench burst -- --no-extender       # kube-scheduler without the extender
//! cargo bench --bench burst -- --capacity          # controller --publish-capacity, CSIDriver
//! cargo bench --bench burst -- --single            # the same claims, one per pod
//! cargo bench --bench burst -- --keep-best 1       # controller --extender-keep-best 1
//! ```
//!
//! `--capacity` (with `STOWAGE_E2E=real`: the testkit stand-in does not read the objects)
//! starts the control plane with the `CSIStorageCapacity` feature gate and
//! `storage.k8s.io/v1alpha1`, creates `variants/capacity`'s CSIDriver and runs the controller
//! with `--publish-capacity --capacity-interval=1`, so kube-scheduler's VolumeBinding plugin
//! reads the capacity objects. Every run prints the controller's reschedules by reason.
//!
//! With `--fill`, not every pod may fit (the nodes' space comes in three pieces); the run
//! ends once nothing has moved for a while, and each pod is counted as placed whole, not
//! placed at all, or split: some of its claims have volumes and the others none, or its
//! volumes are on different nodes (a pod that can never start). Split pods must be zero.
//!
//! `STOWAGE_BENCH_BINARY=PATH` runs another build of `stowage` (an earlier commit's, say)
//! in the same harness. `STOWAGE_E2E=real` runs it on a real control plane (TESTING.md): the real
//! kube-scheduler calling the extender and kube-controller-manager binding.
//! `STOWAGE_BENCH_REQUESTS=1` prints the in-memory API server's request counts of each run;
//! `STOWAGE_BENCH_LOGS=DIR` keeps the controller's and agents' logs of each run in DIR.
//!
//! Besides the end-to-end figures it prints where the time goes, per claim, from watches on
//! claims, LocalVolumes and PVs (all timed in this process):
//!
//! ```text
//!   created ─▶ selected-node ─▶ LocalVolume ─▶ LocalVolume Ready ─▶ PV ─▶ Bound
//!   (scheduler stand-in)  (controller)   (agent)          (controller)  (PV-controller stand-in)
//! ```
//!
//! and where the machine's CPU went while that happened: each process's user and system
//! time (`/proc/PID/stat`), sampled every 50 ms, from the first create to the last
//! `selected-node` (the phase in which the scheduler is still placing the burst) and to the
//! last PV, as shares of all cores: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler on the real lane, the stowage controller, the agents, and the bench itself.

// The harness panics on failure like the tests it serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use stowage::api::local_volume::{LocalVolume, LocalVolumePhase};
use stowage::api::names;
use stowage_testkit::fixtures::{pod, pvc};
use support::stack::{Env, GI, MI, NS, Options, mix_claims};

/// The instants one claim passed each stage at.
#[derive(Clone, Debug, Default)]
struct Stages {
    created: Option<Instant>,
    selected: Option<Instant>,
    lv_created: Option<Instant>,
    lv_ready: Option<Instant>,
    pv_created: Option<Instant>,
    bound: Option<Instant>,
}

/// Claim name → stages, and claim uid → claim name (LocalVolumes and PVs are `pvc-<uid>`).
#[derive(Default)]
struct Timeline {
    claims: HashMap<String, Stages>,
    by_volume: HashMap<String, String>,
    /// Stages of volumes seen before their claim's uid was known.
    early: HashMap<String, Stages>,
}

impl Timeline {
    fn volume(&mut self, volume: &str) -> &mut Stages {
        match self.by_volume.get(volume) {
            Some(claim) => self.claims.entry(claim.clone()).or_default(),
            None => self.early.entry(volume.to_string()).or_default(),
        }
    }

    fn learn_uid(&mut self, claim: &str, uid: &str) {
        let volume = format!("pvc-{uid}");
        if self.by_volume.contains_key(&volume) {
            return;
        }
        self.by_volume.insert(volume.clone(), claim.to_string());
        if let Some(early) = self.early.remove(&volume) {
            let s = self.claims.entry(claim.to_string()).or_default();
            s.lv_created = s.lv_created.or(early.lv_created);
            s.lv_ready = s.lv_ready.or(early.lv_ready);
            s.pv_created = s.pv_created.or(early.pv_created);
        }
    }
}

type Shared = Arc<Mutex<Timeline>>;

fn first(slot: &mut Option<Instant>, now: Instant) {
    slot.get_or_insert(now);
}

/// A task watching `api` that hands every object it sees, with the time it was seen, to
/// `note` under the timeline's lock; the receiver fires once the watch has listed.
fn record<K>(
    api: Api<K>,
    timeline: Shared,
    note: impl Fn(&mut Timeline, &K, Instant) + Send + 'static,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let object = match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) => v,
                _ => continue,
            };
            note(&mut timeline.lock(), &object, now);
        }
    });
    (task, rx)
}

/// Watches claims, LocalVolumes and PVs into `timeline`; returns once every watch has listed.
async fn watch(env: &Env, timeline: Shared) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    let mut spawn = |task: (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<()>,
    )| {
        tasks.push(task.0);
        ready.push(task.1);
    };
    spawn(record(
        env.claims(),
        timeline.clone(),
        |t, claim: &PersistentVolumeClaim, now| {
            let name = claim.name_any();
            if let Some(uid) = claim.uid() {
                t.learn_uid(&name, &uid);
            }
            let s = t.claims.entry(name).or_default();
            if claim
                .annotations()
                .contains_key(names::ANNOTATION_SELECTED_NODE)
            {
                first(&mut s.selected, now);
            }
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                first(&mut s.bound, now);
            }
        },
    ));
    spawn(record(
        env.lvs(),
        timeline.clone(),
        |t, lv: &LocalVolume, now| {
            let s = t.volume(&lv.name_any());
            first(&mut s.lv_created, now);
            if lv.status.as_ref().map(|s| s.phase) == Some(LocalVolumePhase::Ready) {
                first(&mut s.lv_ready, now);
            }
        },
    ));
    spawn(record(
        env.pvs(),
        timeline.clone(),
        |t, pv: &PersistentVolume, now| {
            first(&mut t.volume(&pv.name_any()).pv_created, now);
        },
    ));

    for rx in ready {
        rx.await.unwrap();
    }
    tasks
}

/// The `p`-th percentile (nearest rank) of sorted `samples`.
fn pct(samples: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The processes whose CPU time a run reports, by group: the real control plane's (their
/// pids from the control plane's directory), stowage's, and this bench (its watches and
/// creates; on the in-memory lane also the API server and the stand-ins).
fn processes(env: &Env) -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    if let Some(plane) = env.cluster.plane() {
        for (group, file) in [
            ("etcd", "etcd"),
            ("kube-apiserver", "apiserver"),
            ("kube-controller-manager", "controller-manager"),
            ("kube-scheduler", "scheduler"),
        ] {
            let pid = std::fs::read_to_string(plane.dir().join(format!("{file}.pid")));
            if let Some(pid) = pid.ok().and_then(|p| p.trim().parse().ok()) {
                out.push((group, pid));
            }
        }
    }
    out.extend(env.controller.pid().map(|pid| ("stowage controller", pid)));
    for agent in &env.agents {
        out.extend(agent.process.pid().map(|pid| ("stowage agents", pid)));
    }
    out.push(("bench", std::process::id()));
    out
}

/// The CPU seconds (user and system) process `pid` has used, from `/proc/PID/stat`, whose
/// fields 14 and 15 count clock ticks of `USER_HZ`, 100 a second on Linux.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Every process's CPU seconds, sampled every 50 ms from the burst's start.
type CpuSamples = Arc<Mutex<Vec<(Instant, Vec<f64>)>>>;

fn sample_cpu(pids: Vec<u32>, samples: CpuSamples) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let used = pids
                .iter()
                .map(|&p| cpu_seconds(p).unwrap_or(0.0))
                .collect();
            samples.lock().push((now, used));
        }
    })
}

/// Each group's share of the machine's CPU between the first sample and the first taken at
/// or after `end`, as "group NN %", busiest first, with the idle rest.
fn cpu_shares(groups: &[&'static str], samples: &[(Instant, Vec<f64>)], end: Instant) -> String {
    let (Some(first), Some(last)) = (
        samples.first(),
        samples.iter().find(|(at, _)| *at >= end).or(samples.last()),
    ) else {
        return "no samples".into();
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let capacity = last.0.duration_since(first.0).as_secs_f64() * cores;
    let mut by_group: Vec<(&str, f64)> = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let used = last.1[i] - first.1[i];
        match by_group.iter_mut().find(|(g, _)| g == group) {
            Some((_, total)) => *total += used,
            None => by_group.push((group, used)),
        }
    }
    by_group.sort_by(|a, b| b.1.total_cmp(&a.1));
    let busy: f64 = by_group.iter().map(|(_, used)| used).sum();
    let mut parts: Vec<String> = by_group
        .iter()
        .map(|(group, used)| format!("{group} {:.0} %", 100.0 * used / capacity.max(1e-9)))
        .collect();
    parts.push(format!(
        "idle or other {:.0} %",
        100.0 * (1.0 - busy / capacity.max(1e-9))
    ));
    format!(
        "{:.0} ms x {cores} cores: {}",
        1000.0 * capacity / cores,
        parts.join(", ")
    )
}

/// One burst on a fresh system; returns (claims/s, every claim's created → Bound, stages).
async fn run(
    claims: usize,
    seed: u64,
    controller_args: &[String],
    fill: usize,
    extender: bool,
    capacity: bool,
    single: bool,
) -> (f64, Vec<Duration>, Vec<Stages>, f64, Outcome) {
    let mut plan = mix_claims(claims, seed);
    if single {
        // The same claims, one per pod.
        plan = plan.into_iter().flatten().map(|size| vec![size]).collect();
    }
    // The nodes: 2:3:4, either fixed and roomy or sized so that the claims fill `fill` %.
    let sizes = if fill == 0 {
        [16 * GI, 24 * GI, 32 * GI]
    } else {
        let demand: u64 = plan.iter().flatten().sum::<u64>() * MI;
        let total = demand * 100 / fill as u64;
        [2, 3, 4].map(|part| (total * part / 9).div_ceil(MI) * MI)
    };
    let env = Env::start(
        &[("n1", sizes[0]), ("n2", sizes[1]), ("n3", sizes[2])],
        Options {
            controller_args: controller_args
                .iter()
                .cloned()
                .chain(
                    capacity
                        .then(|| ["--publish-capacity", "--capacity-interval=0"].map(String::from))
                        .into_iter()
                        .flatten(),
                )
                .collect(),
            without_extender: !extender,
            up: if capacity {
                stowage_testkit::real::UpOptions {
                    feature_gates: Some("CSIStorageCapacity=true".into()),
                    runtime_config: Some("storage.k8s.io/v1alpha1=true".into()),
                }
            } else {
                Default::default()
            },
            csi_driver: capacity,
            ..Options::default()
        },
    )
    .await;
    let timeline: Shared = Arc::default();
    let watches = watch(&env, timeline.clone()).await;

    let cpu: Vec<(&'static str, u32)> = processes(&env);
    let cpu_samples: CpuSamples = Arc::default();
    let sampler = sample_cpu(cpu.iter().map(|p| p.1).collect(), cpu_samples.clone());
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    let creates = plan.iter().enumerate().map(|(i, sizes)| {
        let env = &env;
        let timeline = timeline.clone();
        async move {
            let name = format!("burst{i:03}");
            let mut claim_names = Vec::new();
            for (c, mib) in sizes.iter().enumerate() {
                let claim = format!("{name}-{c}");
                env.claims()
                    .create(
                        &PostParams::default(),
                        &pvc(NS, &claim)
                            .size(&format!("{mib}Mi"))
                            .class("local")
                            .build(),
                    )
                    .await
                    .unwrap();
                let now = Instant::now();
                first(
                    &mut timeline
                        .lock()
                        .claims
                        .entry(claim.clone())
                        .or_default()
                        .created,
                    now,
                );
                claim_names.push(claim);
            }
            env.pods()
                .create(
                    &PostParams::default(),
                    &pod(NS, &name).claims(&claim_names).build(),
                )
                .await
                .unwrap();
        }
    });
    futures::future::join_all(creates).await;

    // kube-controller-manager binds at its default 20 requests/s on the real lane.
    let patience = if env.cluster.is_real() { 600 } else { 120 };
    let deadline = Instant::now() + Duration::from_secs(patience);
    // With --fill some pods may never fit: then the burst is over once nothing moved for
    // this long.
    let quiet = Duration::from_secs(if env.cluster.is_real() { 40 } else { 15 });
    let mut last_move = (0, Instant::now());
    loop {
        let (done, moved) = {
            let t = timeline.lock();
            let done = t
                .claims
                .values()
                .filter(|s| s.created.is_some() && s.bound.is_some())
                .count();
            let moved = t.claims.values().filter(|s| s.lv_created.is_some()).count() + done;
            (done, moved)
        };
        if done == claims {
            break;
        }
        if moved != last_move.0 {
            last_move = (moved, Instant::now());
        } else if fill > 0 && last_move.1.elapsed() > quiet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {claims} claims were Bound after {patience} s; controller log:\n{}",
            env.controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sampler.abort();
    let mut outcome = outcome(&env, &plan).await;
    {
        let t = timeline.lock();
        let samples = cpu_samples.lock();
        let groups: Vec<&'static str> = cpu.iter().map(|p| p.0).collect();
        let last = |at: fn(&Stages) -> Option<Instant>| t.claims.values().filter_map(at).max();
        outcome.cpu = [
            ("to the last selected-node", last(|s| s.selected)),
            ("to the last PV", last(|s| s.pv_created)),
        ]
        .into_iter()
        .filter_map(|(label, end)| Some((label, cpu_shares(&groups, &samples, end?))))
        .collect();
    }
    outcome.reschedules = reschedules(&env).await;
    let calls = stowage_testkit::net::extender_time(env.controller_port).await;
    outcome.extender = (
        calls.iter().map(|(_, n, _)| n).sum(),
        calls.iter().map(|(_, _, secs)| secs).sum(),
    );
    for w in watches {
        w.abort();
    }
    if let Some(server) = env.cluster.server()
        && std::env::var_os("STOWAGE_BENCH_REQUESTS").is_some()
    {
        let counts = server.request_counts();
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let top: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("API requests: {}", top.join(", "));
    }
    if let Some(dir) = std::env::var_os("STOWAGE_BENCH_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("controller-{seed}.log")),
            env.controller.logs(),
        )
        .unwrap();
        for a in &env.agents {
            std::fs::write(
                dir.join(format!("agent-{}-{seed}.log", a.name)),
                a.process.logs(),
            )
            .unwrap();
        }
        // Every claim's stages in ms after the burst began (wall clock in the header).
        let at = |i: Option<Instant>| {
            i.map_or(String::new(), |i| {
                format!("{:.0}", ms(i.duration_since(start)))
            })
        };
        let since_epoch = start_wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let mut csv = format!(
            "# burst began at unix {since_epoch:.3}\nclaim,created,selected,lv_created,lv_ready,pv_created,bound\n"
        );
        let t = timeline.lock();
        let mut names: Vec<&String> = t.claims.keys().collect();
        names.sort();
        for name in names {
            let s = &t.claims[name];
            csv.push_str(&format!(
                "{name},{},{},{},{},{},{}\n",
                at(s.created),
                at(s.selected),
                at(s.lv_created),
                at(s.lv_ready),
                at(s.pv_created),
                at(s.bound)
            ));
        }
        std::fs::write(dir.join(format!("stages-{seed}.csv")), csv).unwrap();
    }
    let stages: Vec<Stages> = timeline
        .lock()
        .claims
        .values()
        .filter(|s| s.bound.is_some())
        .cloned()
        .collect();
    let last = stages.iter().filter_map(|s| s.bound).max().unwrap();
    let rate = stages.len() as f64 / last.duration_since(start).as_secs_f64();
    let mut latencies: Vec<Duration> = stages
        .iter()
        .map(|s| s.bound.unwrap().duration_since(s.created.unwrap()))
        .collect();
    latencies.sort();
    // How evenly the nodes filled: the coefficient of variation of their utilization.
    let allocated = env.allocated().await;
    let used: Vec<f64> = env
        .agents
        .iter()
        .map(|a| allocated.get(&a.name).copied().unwrap_or(0) as f64 / a.capacity as f64)
        .collect();
    let mean = used.iter().sum::<f64>() / used.len() as f64;
    let var = used.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / used.len() as f64;
    (rate, latencies, stages, var.sqrt() / mean, outcome)
}

/// How the pods of a burst ended.
#[derive(Debug, Default)]
struct Outcome {
    /// Every claim has a volume, all on one node.
    whole: usize,
    /// No claim has a volume.
    unplaced: usize,
    /// Some claims have volumes and others none, or the volumes are on different nodes:
    /// the pod can never start.
    split: Vec<String>,
    /// The controller's `stowage_reschedules_total`, by reason, where not 0.
    reschedules: Vec<(String, u64)>,
    /// The extender's calls and its own seconds handling them, from the controller's
    /// `stowage_extender_request_duration_seconds`.
    extender: (u64, f64),
    /// Each process group's share of the CPU from the burst's start to the last
    /// `selected-node` and to the last PV.
    cpu: Vec<(&'static str, String)>,
}

/// The controller's reschedules so far, by reason (those above 0).
async fn reschedules(env: &Env) -> Vec<(String, u64)> {
    let Some((_, body)) = stowage_testkit::net::get(env.controller_port, "/metrics").await else {
        return Vec::new();
    };
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("stowage_reschedules_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            let n = value.trim().parse::<f64>().ok()? as u64;
            (n > 0).then(|| (reason.to_string(), n))
        })
        .collect()
}

/// Counts each pod of `plan` (`burst<i>` with claims `burst<i>-<c>`) by where its claims'
/// LocalVolumes are.
async fn outcome(env: &Env, plan: &[Vec<u64>]) -> Outcome {
    let lvs: HashMap<String, String> = env
        .lvs()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|lv| (lv.spec.claim.name.clone(), lv.spec.node_name.clone()))
        .collect();
    let mut out = Outcome::default();
    for (i, sizes) in plan.iter().enumerate() {
        let nodes: Vec<Option<&String>> = (0..sizes.len())
            .map(|c| lvs.get(&format!("burst{i:03}-{c}")))
            .collect();
        let mut placed: Vec<&String> = nodes.iter().flatten().copied().collect();
        placed.dedup();
        match (placed.len(), nodes.iter().all(Option::is_some)) {
            (0, _) => out.unplaced += 1,
            (1, true) => out.whole += 1,
            _ => out.split.push(format!("burst{i:03}: {nodes:?}")),
        }
    }
    out
}

fn arg(args: &[String], flag: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} wants a number, got {v:?}"))
        })
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; only our flags are read.
    let args: Vec<String> = std::env::args().collect();
    let claims = arg(&args, "--claims", 200);
    let runs = arg(&args, "--runs", 3);
    // The controller's --workers (reconciles in parallel); its own default when not given.
    let workers = args
        .iter()
        .any(|a| a == "--workers")
        .then(|| arg(&args, "--workers", 8));
    // The controller's --extender-keep-best; its own default when not given.
    let keep_best = args
        .iter()
        .any(|a| a == "--keep-best")
        .then(|| arg(&args, "--keep-best", 0));
    let controller_args: Vec<String> = workers
        .map(|w| format!("--workers={w}"))
        .into_iter()
        .chain(keep_best.map(|k| format!("--extender-keep-best={k}")))
        .collect();
    // Size the nodes so that the claims fill this many percent (0: roomy fixed nodes).
    let fill = arg(&args, "--fill", 0);
    assert!(fill <= 100, "--fill is a percentage");
    let extender = !args.iter().any(|a| a == "--no-extender");
    let capacity = args.iter().any(|a| a == "--capacity");
    let single = args.iter().any(|a| a == "--single");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let lane = if stowage_testkit::real::lane_is_real() {
        "real kube-scheduler and kube-controller-manager 1.19"
    } else {
        "in-memory API server and stand-ins"
    };
    let fill_text = if fill == 0 {
        "roomy nodes".to_string()
    } else {
        format!("nodes sized for {fill} % fill")
    };
    let scheduler = match (extender, capacity) {
        (true, false) => "with the extender",
        (false, false) => "WITHOUT the extender",
        (true, true) => "with the extender and capacity objects",
        (false, true) => "WITHOUT the extender, with capacity objects",
    };
    let pods = if single { "1" } else { "1-3" };
    let keep = keep_best.map_or(String::new(), |k| format!(", --extender-keep-best={k}"));
    println!(
        "burst: {claims} claims in pods of {pods}, 3 nodes ({fill_text}), {runs} runs, kube-scheduler {scheduler}{keep}, {profile} build, {lane}"
    );
    let mut split_pods = 0;
    let mut all = Vec::new();
    let mut all_stages = Vec::new();
    for r in 0..runs {
        let (rate, latencies, stages, cov, outcome) = runtime.block_on(run(
            claims,
            7 + r as u64,
            &controller_args,
            fill,
            extender,
            capacity,
            single,
        ));
        println!(
            "run {}: {} claims Bound, {rate:.0} claims/s; created -> Bound p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; utilization CoV {cov:.3}; pods whole {}, unplaced {}, split {}",
            r + 1,
            latencies.len(),
            ms(pct(&latencies, 50.0)),
            ms(pct(&latencies, 99.0)),
            ms(*latencies.last().unwrap()),
            outcome.whole,
            outcome.unplaced,
            outcome.split.len(),
        );
        println!("  reschedules by the controller: {:?}", outcome.reschedules);
        // kube-scheduler's cycles are serial, so the extender's handling adds to the wall
        // time of placing the burst: first create to the last `selected-node`.
        let span = stages
            .iter()
            .filter_map(|s| s.selected)
            .max()
            .zip(stages.iter().filter_map(|s| s.created).min())
            .map(|(last, first)| last.saturating_duration_since(first))
            .unwrap_or_default();
        if outcome.extender.0 > 0 {
            println!(
                "  extender: {} calls, {:.0} ms of its own handling = {:.1} % of the burst's scheduling ({:.0} ms, first create to last selected-node)",
                outcome.extender.0,
                outcome.extender.1 * 1000.0,
                100.0 * outcome.extender.1 / span.as_secs_f64().max(1e-9),
                ms(span),
            );
        }
        for (window, shares) in &outcome.cpu {
            println!("  CPU from the first create {window}, {shares}");
        }
        for pod in &outcome.split {
            println!("  split: {pod}");
        }
        split_pods += outcome.split.len();
        all.extend(latencies);
        all_stages.extend(stages);
    }
    all.sort();
    println!(
        "all runs ({} claims): created -> Bound p50 {:.0} ms, p99 {:.0} ms",
        all.len(),
        ms(pct(&all, 50.0)),
        ms(pct(&all, 99.0)),
    );
    // Where the time goes: each stage's share, per claim.
    type Span = fn(&Stages) -> Option<(Instant, Instant)>;
    let spans: [(&str, &str, Span); 6] = [
        ("created -> selected-node", "kube-scheduler", |s| {
            Some((s.created?, s.selected?))
        }),
        ("selected-node -> LocalVolume", "stowage controller", |s| {
            Some((s.selected?, s.lv_created?))
        }),
        ("selected-node -> PV", "stowage controller+agent", |s| {
            Some((s.selected?, s.pv_created?))
        }),
        ("LocalVolume -> Ready", "stowage agent", |s| {
            Some((s.lv_created?, s.lv_ready?))
        }),
        ("Ready -> PV", "stowage controller", |s| {
            Some((s.lv_ready?, s.pv_created?))
        }),
        ("PV -> Bound", "PV controller", |s| {
            Some((s.pv_created?, s.bound?))
        }),
    ];
    for (label, who, span) in spans {
        let mut d: Vec<Duration> = all_stages
            .iter()
            .filter_map(span)
            .map(|(a, b)| b.saturating_duration_since(a))
            .collect();
        if d.is_empty() {
            continue;
        }
        d.sort();
        println!(
            "  {label:<30} ({who:<24}) p50 {:>6.0} ms  p99 {:>6.0} ms  (n={})",
            ms(pct(&d, 50.0)),
            ms(pct(&d, 99.0)),
            d.len()
        );
    }
    println!("split pods over all runs: {split_pods}");
    assert_eq!(
        split_pods, 0,
        "a pod's claims must be placed whole or not at all"
    );
}
