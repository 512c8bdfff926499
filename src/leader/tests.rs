//! Component tests against testkit's in-memory API server, with short durations (lease 1 s,
//! renew deadline 600 ms, retry period 100 ms), plus configuration and flag tests.

use std::future::Future;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use prometheus::Registry;
use stowage_testkit::{ApiServer, WriteFailure, wait_for, wait_until};
use tokio::time::Instant;

use super::*;

const NS: &str = "kube-system";
const NAME: &str = "stowage-controller";
const LEASE: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_millis(600);
const RETRY: Duration = Duration::from_millis(100);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: NS.into(),
        name: NAME.into(),
        identity: identity.into(),
        lease_duration: LEASE,
        renew_deadline: RENEW,
        retry_period: RETRY,
    }
}

struct Replica {
    handle: LeaderHandle,
    registry: Registry,
}

impl Replica {
    fn start(server: &ApiServer, identity: &str) -> Self {
        Self::start_with(server, config(identity))
    }

    fn start_with(server: &ApiServer, config: LeaseConfig) -> Self {
        let registry = Registry::new();
        let metrics = LeaderMetrics::register(&registry).unwrap();
        let handle = LeaderElector::new(server.client(), config, metrics)
            .unwrap()
            .start();
        Self { handle, registry }
    }

    fn metric(&self, name: &str) -> f64 {
        let text = crate::serve::render(&self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
            .parse()
            .unwrap()
    }
}

fn leases(server: &ApiServer) -> Api<Lease> {
    Api::namespaced(server.client(), NS)
}

async fn spec(server: &ApiServer) -> LeaseSpec {
    leases(server).get(NAME).await.unwrap().spec.unwrap()
}

/// How long a test waits for something that takes a retry period or a lease duration: a
/// guard against a hang, not a measure of speed (2 busy cores can stall a task for long).
const HANG: Duration = Duration::from_secs(10);

/// Waits for the first of `replicas` to lead and returns its index.
async fn first_leader(replicas: &[&Replica], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = replicas.iter().position(|r| r.handle.is_leader()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What [`sample_never_both`] saw.
struct Samples {
    /// Samples with exactly one leader.
    one: u32,
    /// Samples taken.
    all: u32,
    /// The longest time between two samples.
    longest_gap: Duration,
}

/// Samples both flags every 2 ms, for `period` and at least 100 times; fails the moment both
/// are true.
async fn sample_never_both(a: &LeaderHandle, b: &LeaderHandle, period: Duration) -> Samples {
    let end = Instant::now() + period;
    let mut samples = Samples {
        one: 0,
        all: 0,
        longest_gap: Duration::ZERO,
    };
    let mut last = Instant::now();
    while Instant::now() < end || samples.all < 100 {
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(!(la && lb), "both replicas lead at once");
        samples.one += u32::from(la ^ lb);
        samples.all += 1;
        samples.longest_gap = samples.longest_gap.max(last.elapsed());
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples
}

/// How long this test's runtime (which the electors and the API server share) must have
/// stood still before a healthy leader may have missed its renew deadline: a renewal is
/// about a millisecond of work on a loopback connection, so missing the 600 ms deadline
/// takes one long stall (or a few), which the 2 ms samples show as a gap.
const STALL: Duration = Duration::from_millis(25);

/// A run that cannot tell right from wrong: this test stalled long enough for a correct
/// elector to lose or take the Lease on the clock alone. Says what was seen.
struct Stalled(String);

/// Runs `scenario` until a run is conclusive, at most three times: a stalled run proves
/// nothing either way, three in a row fail.
async fn unless_stalled<F, Fut>(scenario: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Stalled>>,
{
    let mut stalls = Vec::new();
    for _ in 0..3 {
        match scenario().await {
            Ok(()) => return,
            Err(Stalled(why)) => {
                eprintln!("inconclusive run, repeated: {why}");
                stalls.push(why);
            }
        }
    }
    panic!("three runs in a row stalled: {stalls:#?}");
}

/// How long this test's runtime stood still while the test watched: the longest time
/// between two wake-ups of the test's task, which asks to be woken every 2 ms during
/// [`Watch::during`] (and every time between is a gap too).
struct Watch {
    last: Instant,
    longest: Duration,
}

impl Watch {
    /// Starts watching at `from`: the time until the first wake-up counts as one gap.
    fn since(from: Instant) -> Self {
        Self {
            last: from,
            longest: Duration::ZERO,
        }
    }

    fn tick(&mut self) {
        self.longest = self.longest.max(self.last.elapsed());
        self.last = Instant::now();
    }

    /// Runs `work`, waking every 2 ms to take the time.
    async fn during<T>(&mut self, work: impl Future<Output = T>) -> T {
        self.tick();
        let out = {
            let ticks = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    self.tick();
                }
            };
            tokio::select! {
                out = work => out,
                () = ticks => unreachable!(),
            }
        };
        self.tick();
        out
    }

    /// A run that saw `what`, which a correct elector shows only after a stall (a healthy
    /// leader missing its renew deadline, or what follows from that): inconclusive if the
    /// runtime stood still for [`STALL`] or more while watched, else a failure.
    #[track_caller]
    fn stalled(&self, what: &str) -> Stalled {
        let longest = self.longest;
        assert!(
            longest >= STALL,
            "{what}, although nothing stalled for more than {longest:?}"
        );
        Stalled(format!("{what} after a stall of {longest:?}"))
    }
}

/// Lease reads the API server has answered. Only the electors read Leases in these tests
/// (the tests write theirs with create and replace).
fn lease_reads(server: &ApiServer) -> u64 {
    server.request_count("get", "leases")
}

/// Waits until an elector has judged a Lease read that came after the first `reads`
/// ([`lease_reads`]): it has sent yet another read, which an elector does only after acting
/// on the answer to the one before. Returns early if `candidate` leads (after a takeover an
/// elector renews without reading).
async fn judged_read_after(server: &ApiServer, reads: u64, candidate: &Replica) {
    wait_for(HANG, "an elector judged the Lease it read", || async {
        candidate.handle.is_leader() || lease_reads(server) >= reads + 2
    })
    .await
    .unwrap();
}

fn micros(t: &Option<MicroTime>) -> i64 {
    t.as_ref().unwrap().0.as_microsecond()
}

#[tokio::test]
async fn two_electors_never_lead_at_once_and_one_leads_promptly() {
    unless_stalled(two_electors).await;
}

async fn two_electors() -> Result<(), Stalled> {
    let server = ApiServer::start().await.unwrap();
    let a = Replica::start(&server, "a");
    let b = Replica::start(&server, "b");
    let i = first_leader(&[&a, &b], HANG).await;
    let (leader, other) = if i == 0 { (&a, &b) } else { (&b, &a) };

    let first = spec(&server).await;
    assert_eq!(
        first.holder_identity.as_deref(),
        Some(leader.handle.identity())
    );
    assert_eq!(first.lease_duration_seconds, Some(1));
    assert_eq!(first.lease_transitions, Some(0));
    assert!(first.acquire_time.is_some());

    // Over 2.5 s (two and a half lease durations) the leadership never doubles.
    let samples = sample_never_both(&a.handle, &b.handle, Duration::from_millis(2500)).await;

    // The leader renewed: renewTime moved on (however slowly), acquireTime and transitions
    // did not.
    let unsampled = Instant::now();
    let later = wait_until(HANG, "the leader renews the Lease", || async {
        let later = spec(&server).await;
        (micros(&later.renew_time) > micros(&first.renew_time)).then_some(later)
    })
    .await
    .unwrap();
    if !leader.handle.is_leader() {
        // Only a missed renew deadline makes a leader step down here, and only a stall
        // makes a healthy one miss it.
        let longest = samples.longest_gap.max(unsampled.elapsed());
        assert!(
            longest >= STALL,
            "the leader stepped down although nothing stalled for more than {longest:?} ({} of {} samples saw one leader)",
            samples.one,
            samples.all
        );
        return Err(Stalled(format!(
            "the leader stepped down after a stall of {longest:?}"
        )));
    }
    assert!(!other.handle.is_leader());
    assert_eq!(
        samples.one, samples.all,
        "a sample saw no leader although the leader still leads"
    );
    assert_eq!(later.holder_identity, first.holder_identity);
    assert_eq!(later.acquire_time, first.acquire_time);
    assert_eq!(later.lease_transitions, Some(0));

    assert_eq!(leader.metric("stowage_leader"), 1.0);
    assert_eq!(leader.metric("stowage_leader_transitions_total"), 1.0);
    assert_eq!(other.metric("stowage_leader"), 0.0);
    assert_eq!(other.metric("stowage_leader_transitions_total"), 0.0);
    Ok(())
}

/// Waits until a write to the Lease lands while `leader` leads; returns the Lease written
/// and a time before the write landed: when the last read that did not show it was sent.
/// `None` if `leader` stopped leading first.
async fn next_write(server: &ApiServer, leader: &Replica) -> Option<(Instant, Lease)> {
    let api = leases(server);
    let mut sent = Instant::now();
    let first = api.get(NAME).await.unwrap().metadata.resource_version;
    loop {
        if !leader.handle.is_leader() {
            return None;
        }
        assert!(
            sent.elapsed() < HANG,
            "no write to the Lease within {HANG:?}"
        );
        let sending = Instant::now();
        let lease = api.get(NAME).await.unwrap();
        if lease.metadata.resource_version != first {
            return Some((sent, lease));
        }
        sent = sending;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_only_after_the_lease_expires() {
    unless_stalled(crashed_leader).await;
}

async fn crashed_leader() -> Result<(), Stalled> {
    let server = ApiServer::start().await.unwrap();
    let mut watch = Watch::since(Instant::now());
    let a = Replica::start(&server, "a");
    watch.during(a.handle.acquired()).await.unwrap();
    let b = Replica::start(&server, "b");
    // b has seen a renewing for a while: never two leaders, and a leads throughout (only a
    // stall makes a healthy leader miss its renew deadline).
    let samples = watch
        .during(sample_never_both(
            &a.handle,
            &b.handle,
            Duration::from_millis(1500),
        ))
        .await;
    if samples.one != samples.all {
        return Err(watch.stalled(&format!(
            "a stopped leading ({} of {} samples saw one leader)",
            samples.one, samples.all
        )));
    }
    // One more renewal of a lands, after `renewing`.
    let Some((renewing, before)) = watch.during(next_write(&server, &a)).await else {
        return Err(watch.stalled("a stopped leading before its next renewal"));
    };
    let before = before.spec.unwrap();
    assert_eq!(before.holder_identity.as_deref(), Some("a"));

    // Abort a without releasing, as a crash or a partition would.
    drop(a);
    tokio::time::timeout(HANG, b.handle.acquired())
        .await
        .expect("b did not take over")
        .unwrap();
    // a's last renewal landed after `renewing` (it may have renewed once more before the
    // crash, later still), and b waits a whole lease duration after it saw that renewal.
    let took = renewing.elapsed();
    assert!(
        took >= LEASE,
        "b took over {took:?} after a renewal of a landed, before the lease could have expired"
    );

    let after = spec(&server).await;
    assert_eq!(after.holder_identity.as_deref(), Some("b"));
    assert_eq!(
        after.lease_transitions,
        Some(before.lease_transitions.unwrap() + 1)
    );
    assert!(micros(&after.acquire_time) > micros(&before.acquire_time));
    assert_eq!(b.metric("stowage_leader"), 1.0);
    assert_eq!(b.metric("stowage_leader_transitions_total"), 1.0);
    Ok(())
}

#[tokio::test]
async fn a_released_lease_is_taken_over_well_within_the_lease_duration() {
    let server = ApiServer::start().await.unwrap();
    // A lease of 30 s: b leading within the 10 s guard can only be the release's doing, not
    // the lease running out, however slow the machine is. A renew deadline of 20 s: a leads
    // until it releases, however long the machine stalls (short of the 10 s guards).
    let long = |identity| LeaseConfig {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(20),
        ..config(identity)
    };
    let a = Replica::start_with(&server, long("a"));
    a.handle.acquired().await.unwrap();
    let b = Replica::start_with(&server, long("b"));
    let samples = sample_never_both(&a.handle, &b.handle, Duration::from_millis(500)).await;
    assert_eq!(samples.one, samples.all);
    let transitions = spec(&server).await.lease_transitions.unwrap();

    let flag = a.handle.subscribe();
    let lost = a.handle.lost();
    let Replica { handle, registry } = a;
    handle.shutdown().await;
    assert!(!*flag.borrow(), "a still claims to lead after shutdown");
    tokio::time::timeout(HANG, lost)
        .await
        .expect("lost() did not resolve on shutdown");
    let text = crate::serve::render(&registry).unwrap();
    assert!(text.contains("stowage_leader 0"), "{text}");

    // Right after the release the Lease is free (or b already has it).
    let freed = spec(&server).await;
    match freed.holder_identity.as_deref() {
        None | Some("") => assert_eq!(freed.lease_duration_seconds, Some(1)),
        Some(holder) => assert_eq!(holder, "b"),
    }

    tokio::time::timeout(HANG, b.handle.acquired())
        .await
        .expect("b did not take over before the 30 s lease could have run out")
        .unwrap();
    let after = spec(&server).await;
    assert_eq!(after.holder_identity.as_deref(), Some("b"));
    assert_eq!(after.lease_transitions, Some(transitions + 1));
}

async fn leader_that_cannot_renew_steps_down(failure: WriteFailure) {
    unless_stalled(|| cannot_renew(failure)).await;
}

async fn cannot_renew(failure: WriteFailure) -> Result<(), Stalled> {
    let server = ApiServer::start().await.unwrap();
    let mut watch = Watch::since(Instant::now());
    let a = Replica::start(&server, "a");
    watch.during(a.handle.acquired()).await.unwrap();
    let reads = lease_reads(&server);
    let b = Replica::start(&server, "b");
    // b has read a's Lease and judged it (a leader reads none while its renewals land).
    watch.during(judged_read_after(&server, reads, &b)).await;

    server.faults().retry_after(1);
    server.faults().fail_writes_to("leases", 1.0, failure);
    // From here on no write lands. Until now a led and b did not take over: only a stall
    // (a missing its renew deadline, b then judging a Lease unchanged for a lease duration)
    // could have changed that.
    let (a_leads, b_leads) = (a.handle.is_leader(), b.handle.is_leader());
    let holder = spec(&server).await.holder_identity;
    if b_leads || holder.as_deref() != Some("a") {
        return Err(watch.stalled(&format!("b took over a Lease a renews (holder {holder:?})")));
    }
    if !a_leads {
        return Err(watch.stalled("a stopped leading before its writes failed"));
    }
    let lost = a.handle.lost();
    tokio::select! {
        () = lost => {}
        () = async {
            loop {
                assert!(!b.handle.is_leader(), "b leads while the API refuses every write");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } => {}
        () = tokio::time::sleep(HANG) => panic!("a never stepped down"),
    }
    // a stepped down on its own, while every write still failed: nothing but its renew
    // deadline could have told it to. (How soon is not asserted: a busy machine can stall a
    // task; the order against b's takeover below is what keeps one leader.)
    assert!(!a.handle.is_leader());
    assert_eq!(a.metric("stowage_leader"), 0.0);
    // Losing is final: the elector has ended.
    assert_eq!(a.handle.acquired().await, Err(Stopped));
    assert!(server.faults().counts().failed_writes() > 0);

    // The Lease still names a (nobody could write); once writes work again, b takes over
    // after the lease expires on its clock.
    server.faults().stop_failing_writes();
    let acquired = b.handle.acquired();
    tokio::select! {
        taken = acquired => taken.unwrap(),
        () = async {
            loop {
                assert!(!(a.handle.is_leader() && b.handle.is_leader()), "both lead at once");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } => {}
        () = tokio::time::sleep(HANG) => panic!("b did not take over after the faults stopped"),
    }
    let after = spec(&server).await;
    assert_eq!(after.holder_identity.as_deref(), Some("b"));
    assert_eq!(after.lease_transitions, Some(1));
    assert!(!a.handle.is_leader());
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_renewals_fail_with_500_steps_down_while_writes_fail() {
    leader_that_cannot_renew_steps_down(WriteFailure::InternalError).await;
}

#[tokio::test]
async fn a_leader_throttled_with_429_steps_down_while_writes_fail() {
    // kube-rs retries 429s after Retry-After (1 s here), longer than the renew deadline:
    // the attempt's own deadline cuts it short (how soon is not asserted).
    leader_that_cannot_renew_steps_down(WriteFailure::TooManyRequests).await;
}

#[tokio::test]
async fn transient_write_failures_never_make_two_leaders() {
    let server = ApiServer::start().await.unwrap();
    server.faults().seed(7);
    server
        .faults()
        .fail_writes_to("leases", 0.3, WriteFailure::InternalError);
    let a = Replica::start(&server, "a");
    let b = Replica::start(&server, "b");
    first_leader(&[&a, &b], HANG).await;
    sample_never_both(&a.handle, &b.handle, Duration::from_secs(2)).await;
    assert!(server.faults().counts().internal_errors > 0);
    let holder = spec(&server).await.holder_identity.unwrap();
    assert!(holder == "a" || holder == "b", "{holder}");
}

async fn create_foreign_lease(server: &ApiServer, duration: i32, renew: Timestamp) -> Lease {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("someone-else".into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(renew)),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        }),
    };
    leases(server)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fresh_lease_of_an_unknown_holder_is_not_stolen() {
    let server = ApiServer::start().await.unwrap();
    create_foreign_lease(&server, 30, Timestamp::now()).await;
    let a = Replica::start(&server, "a");
    // a has read the Lease and judged it...
    judged_read_after(&server, 0, &a).await;
    assert!(!a.handle.is_leader(), "a took a lease renewed just now");
    // ...and judges it again later than its own lease duration (1 s) after it first saw
    // it: the holder's 30 s are what count. (A lower bound on the time: a slower machine
    // only waits longer.)
    tokio::time::sleep(LEASE + LEASE / 2).await;
    judged_read_after(&server, lease_reads(&server), &a).await;
    assert!(
        !a.handle.is_leader(),
        "a took a 30 s lease once its own lease duration ({LEASE:?}) had passed"
    );
    let s = spec(&server).await;
    assert_eq!(s.holder_identity.as_deref(), Some("someone-else"));
    assert_eq!(s.lease_transitions, Some(4));
}

#[tokio::test]
async fn expiry_is_judged_on_the_candidates_clock_not_by_the_holders_renew_time() {
    unless_stalled(judged_on_the_candidates_clock).await;
}

async fn judged_on_the_candidates_clock() -> Result<(), Stalled> {
    let server = ApiServer::start().await.unwrap();
    // The holder's clock is an hour behind: its renewTime always looks long expired.
    let skew = SignedDuration::from_hours(1);
    let mut sent = Instant::now();
    let mut lease = create_foreign_lease(&server, 1, Timestamp::now() - skew).await;
    let a = Replica::start(&server, "a");
    let api = leases(&server);
    // The holder renews every retry period until a has judged the Lease for a while: a
    // read of it, and a read answered 1.5 lease durations after that one was judged (by
    // then an elector that ignored the renewals would have taken over). A takeover is
    // right only if two renewals landed a lease duration apart or more, which only a stall
    // of this test can cause: `sent` is when the last renewal was sent, `gap` the longest
    // time from sending one to the next one's answer.
    let mut gap = Duration::ZERO;
    let mut judged: Option<Instant> = None;
    let mut later: Option<u64> = None;
    let stopped = loop {
        tokio::time::sleep(RETRY).await;
        let reads = lease_reads(&server);
        let taken = |gap: Duration| {
            let gap = gap.max(sent.elapsed());
            assert!(
                gap >= LEASE,
                "a stole a lease that is being renewed (renewals at most {gap:?} apart)"
            );
            Err(Stalled(format!("a took over after renewals {gap:?} apart")))
        };
        if a.handle.is_leader() {
            return taken(gap);
        }
        let done = match (judged, later) {
            (None, _) => {
                judged = (reads >= 2).then(Instant::now);
                false
            }
            (Some(at), None) => {
                if at.elapsed() >= LEASE + LEASE / 2 {
                    later = Some(reads);
                }
                false
            }
            (Some(_), Some(from)) => reads >= from + 2,
        };
        // Renew; once a has judged enough, stop renewing with a last renewTime from the
        // future (the holder's clock an hour ahead).
        let offset = if done { skew } else { -skew };
        lease.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now() + offset));
        let sending = Instant::now();
        match api.replace(NAME, &PostParams::default(), &lease).await {
            Ok(written) => lease = written,
            // Only a writes besides this test.
            Err(kube::Error::Api(e)) if e.code == 409 => return taken(gap),
            Err(e) => panic!("renewing the foreign lease: {e}"),
        }
        gap = gap.max(sent.elapsed());
        sent = sending;
        if done {
            break sending;
        }
    };

    tokio::time::timeout(HANG, a.handle.acquired())
        .await
        .expect("a never took over the abandoned lease")
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        took >= LEASE,
        "a took over after {took:?}, before a lease duration"
    );
    let s = spec(&server).await;
    assert_eq!(s.holder_identity.as_deref(), Some("a"));
    assert_eq!(s.lease_transitions, Some(5));
    Ok(())
}

#[tokio::test]
async fn the_leader_recreates_a_deleted_lease_and_keeps_leading() {
    unless_stalled(recreates_a_deleted_lease).await;
}

async fn recreates_a_deleted_lease() -> Result<(), Stalled> {
    let server = ApiServer::start().await.unwrap();
    let mut watch = Watch::since(Instant::now());
    let a = Replica::start(&server, "a");
    watch.during(a.handle.acquired()).await.unwrap();
    let lost = a.handle.lost();
    watch
        .during(leases(&server).delete(NAME, &Default::default()))
        .await
        .unwrap();
    let recreated = wait_until(HANG, "a recreates its Lease", || async {
        let lease = leases(&server).get_opt(NAME).await.unwrap()?;
        lease
            .spec
            .filter(|s| s.holder_identity.as_deref() == Some("a"))
    });
    // a leads throughout: only a stall makes a healthy leader miss its renew deadline.
    let recreated = watch
        .during(async {
            tokio::select! {
                () = lost => None,
                s = recreated => Some(s.unwrap()),
            }
        })
        .await;
    let s = match recreated {
        Some(s) if a.handle.is_leader() => s,
        _ => {
            return Err(watch.stalled("a stopped leading after its Lease was deleted"));
        }
    };
    assert_eq!(s.lease_transitions, Some(0));
    Ok(())
}

#[tokio::test]
async fn flags_with_election_off_give_a_handle_that_always_leads() {
    let server = ApiServer::start().await.unwrap();
    let registry = Registry::new();
    let flags = Flags::try_parse_from(["x", "--leader-elect=false"]).unwrap();
    let handle = flags
        .leader
        .start(server.client(), LeaderMetrics::register(&registry).unwrap())
        .unwrap();
    assert!(handle.is_leader());
    let text = crate::serve::render(&registry).unwrap();
    assert!(text.contains("stowage_leader 1"), "{text}");
    assert!(leases(&server).get_opt(NAME).await.unwrap().is_none());
}

#[tokio::test]
async fn without_election_the_handle_always_leads() {
    let handle = LeaderHandle::without_election();
    assert!(handle.is_leader());
    handle.acquired().await.unwrap();
    let lost = tokio::time::timeout(Duration::from_millis(50), handle.lost()).await;
    assert!(lost.is_err(), "lost() resolved without an election");
}

#[test]
fn invalid_durations_are_rejected_with_the_flag_to_change() {
    let base = config("a");
    assert_eq!(base.validate(), Ok(()));
    let cases = [
        (
            LeaseConfig {
                renew_deadline: LEASE,
                ..base.clone()
            },
            "--leader-elect-renew-deadline",
        ),
        (
            LeaseConfig {
                retry_period: RENEW,
                ..base.clone()
            },
            "--leader-elect-retry-period",
        ),
        (
            LeaseConfig {
                retry_period: Duration::ZERO,
                ..base.clone()
            },
            "--leader-elect-retry-period",
        ),
        (
            LeaseConfig {
                lease_duration: Duration::from_millis(900),
                renew_deadline: Duration::from_millis(500),
                ..base.clone()
            },
            "--leader-elect-lease-duration",
        ),
        (
            LeaseConfig {
                namespace: String::new(),
                ..base.clone()
            },
            "--leader-elect-namespace",
        ),
        (
            LeaseConfig {
                name: String::new(),
                ..base.clone()
            },
            "--leader-elect-name",
        ),
    ];
    for (config, flag) in cases {
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains(flag), "{error:?} does not name {flag}");
    }
}

#[test]
fn a_partial_second_rounds_up_in_lease_duration_seconds() {
    let c = LeaseConfig {
        lease_duration: Duration::from_millis(1500),
        ..config("a")
    };
    assert_eq!(c.lease_duration_seconds(), 2);
    assert_eq!(config("a").lease_duration_seconds(), 1);
}

#[tokio::test]
async fn an_invalid_config_starts_no_elector() {
    let server = ApiServer::start().await.unwrap();
    let metrics = LeaderMetrics::register(&Registry::new()).unwrap();
    let bad = LeaseConfig {
        renew_deadline: LEASE,
        ..config("a")
    };
    let error = LeaderElector::new(server.client(), bad, metrics).unwrap_err();
    assert!(matches!(
        error,
        ConfigError::RenewDeadlineNotShorterThanLease { .. }
    ));
}

#[test]
fn identities_are_unique_per_elector() {
    let (x, y) = (default_identity(), default_identity());
    assert_ne!(x, y);
    let (base, suffix) = x.rsplit_once('_').unwrap();
    assert!(!base.is_empty());
    assert_eq!(suffix.len(), 16);
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
}

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    leader: LeaderArgs,
}

#[test]
fn flags_default_to_client_go_durations() {
    let flags = Flags::try_parse_from(["x"]).unwrap();
    let config = flags.leader.config().unwrap().unwrap();
    assert_eq!(config.lease_duration, Duration::from_secs(15));
    assert_eq!(config.renew_deadline, Duration::from_secs(10));
    assert_eq!(config.retry_period, Duration::from_secs(2));
    assert_eq!(config.name, "stowage-controller");
    if std::env::var_os("POD_NAMESPACE").is_none() {
        assert_eq!(config.namespace, "stowage-system");
    }
}

#[test]
fn flags_turn_election_off_and_reject_unsafe_durations() {
    let off = Flags::try_parse_from(["x", "--leader-elect=false"]).unwrap();
    assert_eq!(off.leader.config(), Ok(None));
    let on = Flags::try_parse_from(["x", "--leader-elect"]).unwrap();
    assert!(on.leader.config().unwrap().is_some());
    let custom = Flags::try_parse_from([
        "x",
        "--leader-elect-namespace",
        "ops",
        "--leader-elect-name",
        "stowage",
        "--leader-elect-lease-duration",
        "30",
        "--leader-elect-renew-deadline",
        "20",
        "--leader-elect-retry-period",
        "4",
    ])
    .unwrap();
    let config = custom.leader.config().unwrap().unwrap();
    assert_eq!(
        (config.namespace.as_str(), config.name.as_str()),
        ("ops", "stowage")
    );
    assert_eq!(config.lease_duration, Duration::from_secs(30));

    let bad = Flags::try_parse_from(["x", "--leader-elect-renew-deadline", "15"]).unwrap();
    let error = bad.leader.config().unwrap_err().to_string();
    assert!(error.contains("--leader-elect-renew-deadline"), "{error}");
    let bad = Flags::try_parse_from(["x", "--leader-elect-retry-period", "10"]).unwrap();
    let error = bad.leader.config().unwrap_err().to_string();
    assert!(error.contains("--leader-elect-retry-period"), "{error}");
}

#[test]
fn flag_definitions_are_consistent() {
    use clap::CommandFactory;
    Flags::command().debug_assert();
}
