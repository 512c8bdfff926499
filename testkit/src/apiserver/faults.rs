//! The fault-injection knob: failed writes, early-closed watches and slow responses, all
//! changeable while the server runs. Faults are drawn from a seeded generator: a seed fixes
//! their rate and sequence, but which request meets which fault depends on the order in
//! which requests arrive, so a seed does not replay a run of several processes.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

use super::util::Rng;

/// The error an injected write failure answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// `500 InternalError`, as when etcd times out.
    InternalError,
    /// `429 TooManyRequests` with a `Retry-After` header, as API priority and fairness
    /// answers. Note that kube-rs clients retry 429s by default, honouring `Retry-After`.
    TooManyRequests,
    /// The write takes effect, then `500 InternalError` is answered: etcd committed it but
    /// the API server's wait for the commit timed out. The client cannot tell this from a
    /// failed write; retrying a create then meets `409 AlreadyExists`.
    InternalErrorAfterCommit,
}

/// How many faults have been injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Writes answered with `500 InternalError` (before or after taking effect).
    pub internal_errors: u64,
    /// Of those, writes that took effect before the `500`.
    pub committed_then_failed: u64,
    /// Writes answered with `429 TooManyRequests`.
    pub too_many_requests: u64,
    /// Watch streams ended early by [`Faults::close_watches_now`] or
    /// [`Faults::close_watches_every`].
    pub closed_watches: u64,
    /// Requests that were delayed.
    pub delayed_requests: u64,
    /// Compactions of the history by [`ApiServer::compact_every`](crate::ApiServer::compact_every).
    pub compactions: u64,
}

impl FaultCounts {
    /// All failed writes, whatever the code.
    pub fn failed_writes(&self) -> u64 {
        self.internal_errors + self.too_many_requests
    }
}

#[derive(Debug)]
struct Config {
    fail_fraction: f64,
    failure: WriteFailure,
    /// Only writes to this resource (`pods`, `localvolumes/status`) fail, if set.
    fail_resource: Option<String>,
    retry_after_seconds: u64,
    close_every: Option<Duration>,
    delay: Option<(Duration, Duration)>,
    /// Writes to this resource (`persistentvolumes`, `localvolumes/status`) are held this
    /// long before they take effect, if set.
    write_delay: Option<(String, Duration)>,
    rng: Rng,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fail_fraction: 0.0,
            failure: WriteFailure::InternalError,
            fail_resource: None,
            retry_after_seconds: 1,
            close_every: None,
            delay: None,
            write_delay: None,
            rng: Rng::seeded(1),
        }
    }
}

/// Fault injection for one [`ApiServer`](crate::ApiServer). Thread-safe; every setting takes
/// effect for the next request (or, for watch closing, for the next watch started, except
/// [`Faults::close_watches_now`], which ends the open ones).
///
/// ```no_run
/// # async fn f(server: &stowage_testkit::ApiServer) {
/// use stowage_testkit::WriteFailure;
/// server.faults().seed(42);
/// server.faults().fail_writes(0.3, WriteFailure::InternalError);
/// // … run the component, then assert on its converged state …
/// server.faults().reset();
/// # }
/// ```
#[derive(Debug)]
pub struct Faults {
    config: Mutex<Config>,
    close: watch::Sender<u64>,
    internal_errors: AtomicU64,
    committed_then_failed: AtomicU64,
    compactions: AtomicU64,
    too_many_requests: AtomicU64,
    closed_watches: AtomicU64,
    delayed_requests: AtomicU64,
}

/// What the request handler must do about faults for one request.
pub(crate) enum Verdict {
    Proceed,
    Fail(WriteFailure, u64),
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    pub(crate) fn new() -> Self {
        Self {
            config: Mutex::new(Config::default()),
            close: watch::Sender::new(0),
            internal_errors: AtomicU64::new(0),
            committed_then_failed: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            too_many_requests: AtomicU64::new(0),
            closed_watches: AtomicU64::new(0),
            delayed_requests: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Config) -> T) -> T {
        // A poisoned lock only means another test thread panicked mid-update; the
        // configuration itself is always consistent, so keep using it.
        let mut guard = self.config.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Fails `fraction` (0.0–1.0) of all writes (create, update, patch, delete) with
    /// `failure`, before they take effect.
    pub fn fail_writes(&self, fraction: f64, failure: WriteFailure) {
        self.with(|c| {
            c.fail_fraction = fraction.clamp(0.0, 1.0);
            c.failure = failure;
            c.fail_resource = None;
        });
    }

    /// Like [`Faults::fail_writes`], but only for one resource, written as in RBAC
    /// (`persistentvolumes`, `localvolumes/status`).
    pub fn fail_writes_to(&self, resource: &str, fraction: f64, failure: WriteFailure) {
        self.with(|c| {
            c.fail_fraction = fraction.clamp(0.0, 1.0);
            c.failure = failure;
            c.fail_resource = Some(resource.to_string());
        });
    }

    /// Stops failing writes.
    pub fn stop_failing_writes(&self) {
        self.with(|c| c.fail_fraction = 0.0);
    }

    /// The `Retry-After` seconds sent with injected 429s (default 1, like the real server).
    pub fn retry_after(&self, seconds: u64) {
        self.with(|c| c.retry_after_seconds = seconds);
    }

    /// Ends every watch stream this long after it started (`None`: never). Watches already
    /// open keep their old deadline.
    pub fn close_watches_every(&self, period: Option<Duration>) {
        self.with(|c| c.close_every = period);
    }

    /// Ends every open watch stream now, as an API server restart or a load balancer would.
    pub fn close_watches_now(&self) {
        self.close.send_modify(|g| *g += 1);
    }

    /// Delays every response by a duration drawn uniformly from `min..=max`.
    pub fn delay_responses(&self, min: Duration, max: Duration) {
        self.with(|c| c.delay = Some((min, max.max(min))));
    }

    /// Holds every write (create, update, patch, delete) to one resource, written as in
    /// RBAC (`persistentvolumes`, `localvolumes/status`), for `delay` before it takes
    /// effect; other requests are not delayed. A test can so keep a component's write in
    /// flight: [`FaultCounts::delayed_requests`] counts each held write as it starts
    /// waiting.
    pub fn delay_writes_to(&self, resource: &str, delay: Duration) {
        self.with(|c| c.write_delay = Some((resource.to_string(), delay)));
    }

    /// Stops delaying responses (both [`Faults::delay_responses`] and
    /// [`Faults::delay_writes_to`]).
    pub fn no_delay(&self) {
        self.with(|c| {
            c.delay = None;
            c.write_delay = None;
        });
    }

    /// Reseeds the generator behind every random choice.
    pub fn seed(&self, seed: u64) {
        self.with(|c| c.rng = Rng::seeded(seed));
    }

    /// Turns every fault off (counters are kept).
    pub fn reset(&self) {
        self.with(|c| {
            let rng = c.rng.clone();
            *c = Config {
                rng,
                ..Config::default()
            };
        });
    }

    /// How many faults have been injected so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            internal_errors: self.internal_errors.load(Ordering::Relaxed),
            committed_then_failed: self.committed_then_failed.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            too_many_requests: self.too_many_requests.load(Ordering::Relaxed),
            closed_watches: self.closed_watches.load(Ordering::Relaxed),
            delayed_requests: self.delayed_requests.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        let d = self.with(|c| {
            let (min, max) = c.delay?;
            let span = max.saturating_sub(min).as_secs_f64();
            Some(min + Duration::from_secs_f64(span * c.rng.next_f64()))
        })?;
        self.delayed_requests.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    /// The delay [`Faults::delay_writes_to`] asks for a write to `resource`.
    pub(crate) fn write_delay(&self, resource: &str) -> Option<Duration> {
        let d = self.with(|c| {
            c.write_delay
                .as_ref()
                .filter(|(r, _)| r == resource)
                .map(|(_, d)| *d)
        })?;
        self.delayed_requests.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    pub(crate) fn write_verdict(&self, resource: &str) -> Verdict {
        let decided = self.with(|c| {
            if c.fail_fraction <= 0.0 || c.fail_resource.as_deref().is_some_and(|r| r != resource) {
                return None;
            }
            (c.rng.next_f64() < c.fail_fraction).then_some((c.failure, c.retry_after_seconds))
        });
        match decided {
            None => Verdict::Proceed,
            Some((failure, retry_after)) => {
                let counter = match failure {
                    WriteFailure::InternalError => &self.internal_errors,
                    WriteFailure::TooManyRequests => &self.too_many_requests,
                    WriteFailure::InternalErrorAfterCommit => {
                        self.committed_then_failed.fetch_add(1, Ordering::Relaxed);
                        &self.internal_errors
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Verdict::Fail(failure, retry_after)
            }
        }
    }

    pub(crate) fn close_every(&self) -> Option<Duration> {
        self.with(|c| c.close_every)
    }

    pub(crate) fn close_signal(&self) -> watch::Receiver<u64> {
        self.close.subscribe()
    }

    pub(crate) fn note_compaction(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_closed_watch(&self) {
        self.closed_watches.fetch_add(1, Ordering::Relaxed);
    }
}
