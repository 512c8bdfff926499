//! The fault soak: claims in pods of 1–3, created in bursts against the real agents and
//! controller while the in-memory API server fails 5 % of writes (in turn: 500 before the
//! write, 429, and 500 after the write took effect, with kube-client's own retry turned off
//! in stowage's processes by `STOWAGE_TEST_NO_CLIENT_RETRY`), ends every watch every few
//! seconds, compacts its history every 2 s (so resumed watches get 410 and stowage must
//! list again) and delays responses; the controller is SIGKILLed and
//! restarted three times and one agent twice. Then a third of the pods and their claims are
//! deleted across classes that delete, archive and retain.
//!
//! Afterwards (still under faults) every invariant must hold: every claim Bound exactly once
//! (one PV whose claimRef uid is the claim's), as many PVs as claims (every PV stowage's and
//! a live claim's), no pool over allocatable, no LocalVolume or directory without a claim,
//! every deleted claim's data deleted, archived or kept per its class (archived exactly once
//! if an inotify watch on the pools saw its directory made, never otherwise). The counts of
//! each are printed.
//!
//! And stowage must have seen the faults itself, by its own metrics (each process scraped
//! just before it is killed, the survivors at the end, summed): the controller and the
//! agents each counted failed writes (`stowage_api_write_errors_total`, 500 or 429), 500s
//! and 429s were both counted, never more of either than were injected; the last
//! controller and every agent met 410s and listed again (`stowage_watch_errors_total`,
//! `stowage_watch_lists_total`).
//!
//! `STOWAGE_SOAK_CLAIMS` sets the number of claims (default 120, so `cargo test` stays
//! quick; `STOWAGE_SOAK_CLAIMS=500` is the full run); `STOWAGE_SOAK_SEED` (default 9) the
//! seed of the pod mix and of the fault injection's generator. A seed does not replay a run
//! request for request: stowage's processes share that one generator in whatever order
//! their requests arrive, and uids come from the clock. It gives the same pods and the same
//! fault rates, so a failure found with it is worth re-running a few times.

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use stowage::api::local_volume::OnDelete;
use stowage_testkit::WriteFailure;
use stowage_testkit::fixtures::{pod, pvc};
use stowage_testkit::wait_until;
use support::invariants::{self, Deleted, PathWatch};
use support::stack::{Env, GI, NS, Options};

/// Claims of the default run.
const DEFAULT_CLAIMS: usize = 120;
/// Bursts the pods are created in.
const BURSTS: usize = 5;
/// The agent that is killed twice.
const VICTIM: &str = "n2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_converge_under_write_failures_closed_watches_and_killed_processes() {
    let target: usize = std::env::var("STOWAGE_SOAK_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CLAIMS);
    let started = Instant::now();
    let mut env = Env::start(
        &[
            ("n1", 3 * GI),
            ("n2", 3 * GI),
            ("n3", 4 * GI),
            ("n4", 4 * GI),
        ],
        Options {
            // A killed controller's Lease is waited out by its successor: keep it short,
            // but with a renew deadline that rides out a few failed renewals (a leader that
            // cannot renew exits, and here no Deployment would restart it).
            controller_args: [
                "--leader-elect-lease-duration=8",
                "--leader-elect-renew-deadline=6",
                "--leader-elect-retry-period=1",
            ]
            .map(String::from)
            .to_vec(),
            // kube-client's own retry of 429s off: every injected fault reaches stowage.
            role_env: vec![(stowage::serve::NO_CLIENT_RETRY_ENV, "1")],
            ..Options::default()
        },
    )
    .await;
    let watch = PathWatch::start(&env);
    let seed: u64 = std::env::var("STOWAGE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let plan = pods_for(target, seed ^ 0x50a4);
    let claims: usize = plan.iter().map(|p| p.sizes.len()).sum();
    eprintln!(
        "soak: {} pods, {claims} claims, {BURSTS} bursts",
        plan.len()
    );

    let faults = env.cluster.server().unwrap().faults();
    faults.seed(seed);
    faults.close_watches_every(Some(Duration::from_secs(3)));
    // The watches opened before that (every process's first, so all of an agent that is
    // never killed) would keep no deadline and never meet a 410: end them, so that their
    // successors have one.
    faults.close_watches_now();
    let compacting = env
        .cluster
        .server()
        .unwrap()
        .compact_every(Duration::from_secs(2));
    faults.delay_responses(Duration::ZERO, Duration::from_millis(20));
    fail_writes(&env, 0);

    // What stowage's processes counted (`Seen`): each is scraped just before it is
    // killed, since its counters die with it; the survivors are added at the end.
    let mut controller_seen = Seen::default();
    let mut agents_seen: BTreeMap<String, Seen> = BTreeMap::new();

    // Bursts, with a process killed right after each while its work is in flight.
    let per_burst = plan.len().div_ceil(BURSTS);
    let mut deleted = Vec::new();
    for (b, burst) in plan.chunks(per_burst).enumerate() {
        fail_writes(&env, b);
        futures::future::join_all(burst.iter().map(|p| create_pod(&env, p))).await;
        // Some pods of each burst are deleted with their claims at once, while their
        // volumes are being provisioned: whatever was made must go again.
        for p in burst.iter().filter(|p| in_flight(p)) {
            for claim in p.claim_names() {
                let uid = env.claims().get(&claim).await.unwrap().uid().unwrap();
                deleted.push(Deleted {
                    claim,
                    volume: format!("pvc-{uid}"),
                    node: None,
                    on_delete: p.on_delete,
                });
            }
            delete_pod(&env, p).await;
        }
        match b {
            0 | 2 => {
                controller_seen.add(Seen::scrape(env.controller_port).await);
                env.controller.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                env.restart_controller().await;
            }
            1 | 3 => {
                let port = env.agent(VICTIM).port;
                agents_seen
                    .entry(VICTIM.to_string())
                    .or_default()
                    .add(Seen::scrape(port).await);
                env.agents
                    .iter_mut()
                    .find(|a| a.name == VICTIM)
                    .unwrap()
                    .process
                    .kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                env.restart_agent(VICTIM).await;
            }
            _ => {}
        }
    }
    let created_at = started.elapsed();
    let bound = settle(
        &env,
        &watch,
        &deleted,
        claims - deleted.len(),
        "every claim is Bound",
    )
    .await;
    let bound_at = started.elapsed();
    let early = deleted.len();
    eprintln!(
        "soak: {} claims bound after {bound_at:?}, {early} deleted in flight ({bound})",
        claims - early
    );

    // Delete a third of the pods (every class), with the third controller kill amid it.
    let doomed: Vec<&PodPlan> = plan
        .iter()
        .filter(|p| p.index % 3 == 0 && !in_flight(p))
        .collect();
    for (i, p) in doomed.iter().enumerate() {
        let claim_names = p.claim_names();
        let mut victims = Vec::new();
        for c in &claim_names {
            let claim = env.claims().get(c).await.unwrap();
            let volume = format!("pvc-{}", claim.uid().unwrap());
            let pv = env.pvs().get(&volume).await.unwrap();
            let node = Env::pv_node_and_path(&pv).0;
            victims.push(Deleted {
                claim: c.clone(),
                volume,
                node: Some(node),
                on_delete: p.on_delete,
            });
        }
        delete_pod(&env, p).await;
        deleted.extend(victims);
        fail_writes(&env, i);
        if i == doomed.len() / 2 {
            controller_seen.add(Seen::scrape(env.controller_port).await);
            env.controller.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            env.restart_controller().await;
        }
    }
    let remaining = claims - deleted.len();
    let counts = settle(
        &env,
        &watch,
        &deleted,
        remaining,
        "the deletions are carried out",
    )
    .await;
    // What stowage itself saw of the compactions: 410s, each followed by a re-list, by the
    // last controller (its own counters) and by every agent (all its processes summed). The
    // last controller may have started only seconds before the deletions were done, so
    // they get a while longer, with the compactions and closed watches still going, to meet
    // one (a process that never re-lists never passes).
    let agent_starts = |env: &Env, name: &str| starts(&env.agent(name).process.logs()) as f64;
    let relisted = |seen: &Seen, starts: f64| seen.gone > 0.0 && seen.lists > starts;
    let survivors = || async {
        let last = Seen::scrape(env.controller_port).await;
        let mut agents = agents_seen.clone();
        for a in &env.agents {
            agents
                .entry(a.name.clone())
                .or_default()
                .add(Seen::scrape(a.port).await);
        }
        (last, agents)
    };
    let _ = wait_until(
        Duration::from_secs(30),
        "the last controller and every agent re-list after a 410",
        || async {
            let (last, agents) = survivors().await;
            // The last controller lists each of its 8 kinds once at start; an agent its
            // LocalVolumes once per start.
            (relisted(&last, 8.0)
                && agents
                    .iter()
                    .all(|(name, seen)| relisted(seen, agent_starts(&env, name))))
            .then_some(())
        },
    )
    .await;
    let (last_controller, agents_seen) = survivors().await;
    controller_seen.add(last_controller);
    let agents_total = agents_seen.values().fold(Seen::default(), |mut sum, seen| {
        sum.add(*seen);
        sum
    });
    compacting.abort();
    let server = env.cluster.server().unwrap();
    let faults = server.faults();
    let fault_counts = faults.counts();
    faults.reset();
    // What stowage did about the compactions: list again.
    let process_starts = starts(&env.controller.logs())
        + env
            .agents
            .iter()
            .map(|a| starts(&a.process.logs()))
            .sum::<usize>();
    let claim_lists = server.request_count("list", "persistentvolumeclaims");
    let volume_lists = server.request_count("list", "localvolumes");
    let total = started.elapsed();

    let by_mode = |m: OnDelete| deleted.iter().filter(|d| d.on_delete == m).count();
    eprintln!(
        "soak: {claims} claims in {} pods; created in {created_at:?}, all bound after {bound_at:?}, converged after {total:?}",
        plan.len()
    );
    eprintln!(
        "soak: deleted {} claims, {early} of them in flight (delete {}, archive {}, retain {})",
        deleted.len(),
        by_mode(OnDelete::Delete),
        by_mode(OnDelete::Archive),
        by_mode(OnDelete::Retain)
    );
    eprintln!("soak: invariants checked at the end: {counts}");
    eprintln!(
        "soak: claims were listed {claim_lists} times (stand-ins included), LocalVolumes {volume_lists} times by stowage's {process_starts} process starts"
    );
    eprintln!(
        "soak: stowage counted: the last controller {last_controller}; all controllers {controller_seen}"
    );
    for (name, seen) in &agents_seen {
        eprintln!("soak: stowage counted: agent {name} {seen}");
    }
    eprintln!(
        "soak: faults: {} × 500 ({} after the write took effect), {} × 429, {} compactions, {} watches closed, {} responses delayed; controller started {} times, agent {VICTIM} {} times",
        fault_counts.internal_errors,
        fault_counts.committed_then_failed,
        fault_counts.too_many_requests,
        fault_counts.compactions,
        fault_counts.closed_watches,
        fault_counts.delayed_requests,
        starts(&env.controller.logs()),
        starts(&env.agent(VICTIM).process.logs()),
    );

    assert_eq!(counts.bound_once, remaining);
    assert_eq!(counts.pvs, remaining);
    assert_eq!(counts.deleted_dealt, deleted.len());
    assert_eq!(counts.pools_within, env.agents.len());
    assert!(counts.volumes_owned == remaining && counts.dirs_owned >= remaining);
    for mode in [OnDelete::Delete, OnDelete::Archive, OnDelete::Retain] {
        assert!(
            by_mode(mode) > 0,
            "some deleted claim was of onDelete {mode:?}"
        );
    }
    // The faults really happened, and so did the kills.
    assert!(fault_counts.internal_errors > 0 && fault_counts.too_many_requests > 0);
    assert!(fault_counts.committed_then_failed > 0 && fault_counts.compactions > 0);
    // Stowage saw the compactions as 410s and listed again: its last controller lists each
    // of its 8 kinds once at start, an agent its LocalVolumes once per start, and more than
    // that only by re-listing.
    assert!(
        relisted(&last_controller, 8.0),
        "the last controller re-lists after 410s: it counted {last_controller}"
    );
    for (name, seen) in &agents_seen {
        let started = agent_starts(&env, name);
        assert!(
            relisted(seen, started),
            "agent {name} re-lists after 410s: over its {started} starts it counted {seen}"
        );
    }
    // Stowage saw the injected write failures as its own failed writes: the controller and
    // the agents each some, 500s and 429s both, and never more than were injected (the
    // test's client and the scheduler's stand-ins take the rest).
    for (who, seen) in [
        ("the controller", controller_seen),
        ("the agents", agents_total),
    ] {
        assert!(
            seen.writes_500 + seen.writes_429 > 0.0,
            "{who} counted no failed write (stowage_api_write_errors_total, 500 or 429) of the {} injected: {seen}",
            fault_counts.failed_writes()
        );
    }
    let (counted_500, counted_429) = (
        controller_seen.writes_500 + agents_total.writes_500,
        controller_seen.writes_429 + agents_total.writes_429,
    );
    assert!(
        counted_500 > 0.0 && counted_500 <= fault_counts.internal_errors as f64,
        "stowage counted {counted_500} writes failed with 500, of {} injected",
        fault_counts.internal_errors
    );
    assert!(
        counted_429 > 0.0 && counted_429 <= fault_counts.too_many_requests as f64,
        "stowage counted {counted_429} writes refused with 429, of {} injected",
        fault_counts.too_many_requests
    );
    assert!(fault_counts.closed_watches > 0 && fault_counts.delayed_requests > 0);
    assert_eq!(
        starts(&env.controller.logs()),
        4,
        "the controller was killed 3 times"
    );
    assert_eq!(
        starts(&env.agent(VICTIM).process.logs()),
        3,
        "agent {VICTIM} was killed twice"
    );
}

// === helpers ===

/// Fails 5 % of writes: 500 before the write, 429, and 500 after it took effect, in turn
/// by `step`, so every kind hits every component.
fn fail_writes(env: &Env, step: usize) {
    let kind = [
        WriteFailure::InternalError,
        WriteFailure::TooManyRequests,
        WriteFailure::InternalErrorAfterCommit,
    ][step % 3];
    env.cluster
        .server()
        .unwrap()
        .faults()
        .fail_writes(0.05, kind);
}

/// One pod of the soak: its claims' sizes (MiB) and class.
struct PodPlan {
    index: usize,
    name: String,
    sizes: Vec<u64>,
    class: &'static str,
    on_delete: OnDelete,
}

impl PodPlan {
    fn claim_names(&self) -> Vec<String> {
        (0..self.sizes.len())
            .map(|c| format!("{}-{c}", self.name))
            .collect()
    }
}

/// Pods of 1–3 claims of 4, 8 or 16 MiB until `claims` claims, classes in turn: delete
/// (spread), archive, retain, delete (binpack). Deterministic for a seed.
fn pods_for(claims: usize, seed: u64) -> Vec<PodPlan> {
    // A 64-bit LCG (Knuth's MMIX constants), as in stack::mix.
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let classes = [
        ("local", OnDelete::Delete),
        ("local-archive", OnDelete::Archive),
        ("local-keep", OnDelete::Retain),
        ("local-binpack", OnDelete::Delete),
    ];
    let mut pods = Vec::new();
    let mut left = claims;
    while left > 0 {
        let count = (1 + next(3) as usize).min(left);
        left -= count;
        let index = pods.len();
        let (class, on_delete) = classes[index % classes.len()];
        pods.push(PodPlan {
            index,
            name: format!("soak{index:03}"),
            sizes: (0..count).map(|_| [4, 8, 16][next(3) as usize]).collect(),
            class,
            on_delete,
        });
    }
    pods
}

/// Whether the pod is deleted right after its burst, while being provisioned: one in
/// twenty, of the classes that delete (so any directory made must be gone afterwards) or
/// archive (so it must be archived exactly once if its directory was made at all, and not
/// at all otherwise).
fn in_flight(p: &PodPlan) -> bool {
    p.index % 20 == 1 || p.index % 20 == 4
}

/// Deletes the pod, then its claims, retrying injected failures.
async fn delete_pod(env: &Env, p: &PodPlan) {
    retry(&format!("delete pod {}", p.name), || async {
        ok_if_gone(env.pods().delete(&p.name, &DeleteParams::default()).await)
    })
    .await;
    for c in &p.claim_names() {
        retry(&format!("delete claim {c}"), || async {
            ok_if_gone(env.claims().delete(c, &DeleteParams::default()).await)
        })
        .await;
    }
}

/// Creates the pod's claims and then the pod, retrying injected failures.
async fn create_pod(env: &Env, p: &PodPlan) {
    for (name, mib) in p.claim_names().iter().zip(&p.sizes) {
        let claim = pvc(NS, name)
            .size(&format!("{mib}Mi"))
            .class(p.class)
            .build();
        retry(&format!("create claim {name}"), || async {
            ok_if_exists(env.claims().create(&PostParams::default(), &claim).await)
        })
        .await;
    }
    let pod = pod(NS, &p.name).claims(p.claim_names()).build();
    retry(&format!("create pod {}", p.name), || async {
        ok_if_exists(env.pods().create(&PostParams::default(), &pod).await)
    })
    .await;
}

fn ok_if_exists<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn ok_if_gone<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Retries an API write that the fault injection may fail (500, 429), for up to a minute.
async fn retry<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("soak: {what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Waits until every invariant holds with exactly `claims` claims left.
async fn settle(
    env: &Env,
    watch: &PathWatch,
    deleted: &[Deleted],
    claims: usize,
    what: &str,
) -> invariants::Counts {
    let deadline = Duration::from_secs(60 + 2 * claims as u64);
    let last = parking_lot::Mutex::new(String::new());
    let result = wait_until(deadline, what, || async {
        let count = env
            .claims()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        if count != claims {
            *last.lock() = format!("{count} claims, want {claims}");
            return None;
        }
        match invariants::check(env, watch, deleted).await {
            Ok(c) => Some(c),
            Err(why) => {
                *last.lock() = why;
                None
            }
        }
    })
    .await;
    result.unwrap_or_else(|e| panic!("{e:#}; last: {}", last.lock()))
}

/// What one or more of stowage's processes counted, from their /metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// Writes answered 500 (`stowage_api_write_errors_total{code="500"}`).
    writes_500: f64,
    /// Writes answered 429.
    writes_429: f64,
    /// Watch errors with code 410 (`stowage_watch_errors_total{code="410"}`).
    gone: f64,
    /// Lists completed by the watches (`stowage_watch_lists_total`).
    lists: f64,
}

impl Seen {
    /// What the process serving /metrics on `port` counted (nothing if it does not answer).
    async fn scrape(port: u16) -> Seen {
        let body = stowage_testkit::net::get(port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        Seen {
            writes_500: sample_sum(&body, "stowage_api_write_errors_total", "code=\"500\""),
            writes_429: sample_sum(&body, "stowage_api_write_errors_total", "code=\"429\""),
            gone: sample_sum(&body, "stowage_watch_errors_total", "code=\"410\""),
            lists: sample_sum(&body, "stowage_watch_lists_total", ""),
        }
    }

    fn add(&mut self, other: Seen) {
        self.writes_500 += other.writes_500;
        self.writes_429 += other.writes_429;
        self.gone += other.gone;
        self.lists += other.lists;
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes failed with 500, {} with 429; {} watch 410s, {} lists",
            self.writes_500, self.writes_429, self.gone, self.lists
        )
    }
}

/// The sum of the samples of `metric` whose labels contain `label` in a /metrics body.
fn sample_sum(body: &str, metric: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.starts_with(metric) && l[metric.len()..].starts_with('{') && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// How many times a role was started, from the harness's markers in its log.
fn starts(log: &str) -> usize {
    log.matches("=== start ").count()
}
