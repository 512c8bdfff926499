//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! package does it, so that of the controller's replicas exactly one provisions.
//!
//! ```text
//!   candidate ──(Lease free, or unchanged for leaseDurationSeconds on OUR clock)──▶ leader
//!       ▲                                                                             │
//!       │ 409 / held by another: retry every retry_period        renew every retry_period
//!       │                                                                             │
//!   (start)            no successful renew within renew_deadline, or another holder ──┤
//!                                                                                     ▼
//!                                          lost (final: the controller stops or exits)
//!   shutdown(): leader ──▶ flag false ──▶ release (holderIdentity cleared, leaseDurationSeconds 1)
//! ```
//!
//! Rules, all from client-go (`tools/leaderelection/leaderelection.go`) and its
//! defaults:
//!
//! * A candidate takes the Lease over only when `holderIdentity` is empty or the Lease's spec
//!   has not **changed** for `leaseDurationSeconds` as measured on the candidate's own
//!   monotonic clock since it last saw it change. `renewTime` is never compared with the
//!   local wall clock, so clock skew between nodes cannot make two leaders.
//! * Every write is a `replace` carrying the `resourceVersion` that was read: a `409
//!   Conflict` means someone else wrote first, and the writer is not the leader.
//! * The leader steps down when no renewal *sent* within the last `renew_deadline`
//!   succeeded. Another candidate waits at least `lease_duration` after it saw that renewal
//!   land, which is later than when it was sent, so the old leader has stopped
//!   (`lease_duration - renew_deadline` earlier) before a new one starts.
//! * Losing leadership is final for an elector, as in client-go where `Run` returns: the
//!   controller exits (as a client-go controller does) and a fresh process campaigns again with a
//!   fresh identity. After an involuntary loss the Lease is *not* released, so the margin
//!   above is kept even if the controller takes a moment to stop.
//! * On graceful shutdown ([`LeaderHandle::shutdown`]) the leader clears `holderIdentity`
//!   and sets `leaseDurationSeconds: 1` (client-go's `ReleaseOnCancel`), so the other
//!   replica takes over within one retry period instead of a whole lease duration.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::runtime::{error_chain, stopped};
use clap::{ArgAction, Args};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default namespace of the Lease when `POD_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "stowage-system";
/// Default name of the Lease.
pub const DEFAULT_NAME: &str = "stowage-controller";
/// client-go's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

// === Config ===

/// Where the Lease lives, who we are, and the three durations of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process's `holderIdentity`; unique per process (see [`default_identity`]).
    pub identity: String,
    /// How long a non-leader waits, after it last saw the Lease change, before taking it
    /// over. Written as `leaseDurationSeconds`, rounded up to whole seconds.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often every replica tries to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The Lease `namespace/name` with client-go's durations and a fresh identity.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the relations the protocol's safety rests on: every duration is positive,
    /// `retry_period < renew_deadline < lease_duration`, and names are set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.namespace.is_empty() {
            return Err(ConfigError::EmptyNamespace);
        }
        if self.name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.identity.is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        if self.lease_duration < Duration::from_secs(1)
            || self.lease_duration > Duration::from_secs(i32::MAX as u64)
        {
            return Err(ConfigError::LeaseDurationOutOfRange {
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period.is_zero() {
            return Err(ConfigError::ZeroRetryPeriod);
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(ConfigError::RenewDeadlineNotShorterThanLease {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(ConfigError::RetryPeriodNotShorterThanRenewDeadline {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }

    /// `leaseDurationSeconds`: the lease duration rounded up to whole seconds.
    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }
}

/// An invalid leader-election configuration; each message names the flag that fixes it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No namespace.
    #[error("the Lease namespace is empty; set --leader-elect-namespace or POD_NAMESPACE")]
    EmptyNamespace,
    /// No Lease name.
    #[error("the Lease name is empty; set --leader-elect-name")]
    EmptyName,
    /// No identity.
    #[error("the leader-election identity is empty; set POD_NAME")]
    EmptyIdentity,
    /// The lease duration cannot be written as `leaseDurationSeconds`.
    #[error(
        "lease duration {lease_duration:?} is out of range; --leader-elect-lease-duration must be at least 1 second"
    )]
    LeaseDurationOutOfRange {
        /// The rejected value.
        lease_duration: Duration,
    },
    /// A zero retry period would renew in a hot loop.
    #[error("retry period is zero; --leader-elect-retry-period must be at least 1 second")]
    ZeroRetryPeriod,
    /// The leader could still believe it leads after another replica took over.
    #[error(
        "renew deadline {renew_deadline:?} must be shorter than the lease duration {lease_duration:?}; lower --leader-elect-renew-deadline or raise --leader-elect-lease-duration"
    )]
    RenewDeadlineNotShorterThanLease {
        /// `--leader-elect-renew-deadline`.
        renew_deadline: Duration,
        /// `--leader-elect-lease-duration`.
        lease_duration: Duration,
    },
    /// The leader would get at most one renewal attempt before stepping down.
    #[error(
        "retry period {retry_period:?} must be shorter than the renew deadline {renew_deadline:?}; lower --leader-elect-retry-period or raise --leader-elect-renew-deadline"
    )]
    RetryPeriodNotShorterThanRenewDeadline {
        /// `--leader-elect-retry-period`.
        retry_period: Duration,
        /// `--leader-elect-renew-deadline`.
        renew_deadline: Duration,
    },
}

/// A `holderIdentity` unique to this process: the pod name (`POD_NAME`, else the hostname,
/// which is the pod name in a pod), `_`, and 16 random hex digits, as client-go's
/// `<hostname>_<uuid>`. The suffix keeps two processes of one pod (a restarted container
/// whose predecessor's Lease has not expired) from sharing an identity and so from both
/// believing they lead.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "stowage".to_string());
    format!("{}_{:016x}", base.trim(), random_u64())
}

/// 64 random bits without a dependency: std seeds each `RandomState` from the OS's random
/// source; the time and pid are mixed in for good measure.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish()
}

// === CLI ===

/// Leader-election flags, to be flattened into the controller's flags.
#[derive(Clone, Debug, Args)]
pub struct LeaderArgs {
    /// Elect one active controller through a coordination.k8s.io/v1 Lease. Turn off
    /// (--leader-elect=false) only when exactly one replica runs.
    #[arg(
        long,
        env = "STOWAGE_LEADER_ELECT",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub leader_elect_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "STOWAGE_LEADER_ELECT_NAME", default_value = DEFAULT_NAME)]
    pub leader_elect_name: String,

    /// Seconds a non-leader waits, after it last saw the Lease change, before taking it
    /// over (leaseDurationSeconds).
    #[arg(long, env = "STOWAGE_LEADER_ELECT_LEASE_DURATION", default_value_t = DEFAULT_LEASE_DURATION.as_secs())]
    pub leader_elect_lease_duration: u64,

    /// Seconds the leader keeps retrying to renew before it stops acting as leader; must
    /// be shorter than the lease duration.
    #[arg(long, env = "STOWAGE_LEADER_ELECT_RENEW_DEADLINE", default_value_t = DEFAULT_RENEW_DEADLINE.as_secs())]
    pub leader_elect_renew_deadline: u64,

    /// Seconds between attempts to acquire or renew the Lease; must be shorter than the
    /// renew deadline.
    #[arg(long, env = "STOWAGE_LEADER_ELECT_RETRY_PERIOD", default_value_t = DEFAULT_RETRY_PERIOD.as_secs())]
    pub leader_elect_retry_period: u64,
}

impl LeaderArgs {
    /// The validated configuration with a fresh [`default_identity`], or `None` when
    /// leader election is turned off.
    pub fn config(&self) -> Result<Option<LeaseConfig>, ConfigError> {
        let Self {
            leader_elect,
            leader_elect_namespace,
            leader_elect_name,
            leader_elect_lease_duration,
            leader_elect_renew_deadline,
            leader_elect_retry_period,
        } = self;
        let config = LeaseConfig {
            lease_duration: Duration::from_secs(*leader_elect_lease_duration),
            renew_deadline: Duration::from_secs(*leader_elect_renew_deadline),
            retry_period: Duration::from_secs(*leader_elect_retry_period),
            ..LeaseConfig::new(leader_elect_namespace.clone(), leader_elect_name.clone())
        };
        config.validate()?;
        Ok(leader_elect.then_some(config))
    }

    /// Validates the flags and starts the elector, or, with `--leader-elect=false`, returns
    /// a handle that always leads (and sets `stowage_leader` to 1).
    pub fn start(
        &self,
        client: kube::Client,
        metrics: LeaderMetrics,
    ) -> Result<LeaderHandle, ConfigError> {
        match self.config()? {
            Some(config) => Ok(LeaderElector::new(client, config, metrics)?.start()),
            None => {
                metrics.leader.set(1);
                Ok(LeaderHandle::without_election())
            }
        }
    }
}

// === Metrics ===

/// `stowage_leader` and `stowage_leader_transitions_total`.
#[derive(Clone, Debug)]
pub struct LeaderMetrics {
    leader: IntGauge,
    transitions: IntCounter,
}

impl LeaderMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let leader = IntGauge::new(
            "stowage_leader",
            "1 while this replica holds the leader-election Lease and may provision, else 0.",
        )?;
        let transitions = IntCounter::new(
            "stowage_leader_transitions_total",
            "Times this replica became the leader.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        Ok(Self {
            leader,
            transitions,
        })
    }
}

/// A collector whose series only the leader exports: it yields nothing while `leader` is
/// false. The ledger's and NFS mode's scrape-time gauges describe the cluster, not the
/// replica, so every replica exporting them would show each series once per replica.
pub struct LeaderOnly<C> {
    inner: C,
    leader: watch::Receiver<bool>,
}

impl<C> LeaderOnly<C> {
    /// Wraps `inner`, exported while `leader` (a [`LeaderHandle::subscribe`]) is true.
    pub fn new(inner: C, leader: watch::Receiver<bool>) -> Self {
        Self { inner, leader }
    }
}

impl<C: prometheus::core::Collector> prometheus::core::Collector for LeaderOnly<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if *self.leader.borrow() {
            self.inner.collect()
        } else {
            Vec::new()
        }
    }
}

// === Errors ===

/// A failed call to the API server; always retried at the retry period.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the Lease failed.
    #[error("cannot read Lease {namespace}/{name}")]
    Get {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating the Lease failed.
    #[error("cannot create Lease {namespace}/{name}; check RBAC allows create on leases")]
    Create {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the Lease failed.
    #[error("cannot update Lease {namespace}/{name}")]
    Update {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("no answer about Lease {namespace}/{name} within {after:?}")]
    Timeout {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// How long was waited.
        after: Duration,
    },
}

/// The elector stopped before this replica became the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the leader elector stopped before this replica became the leader")]
pub struct Stopped;

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists() || s.code == 409)
}

// === Handle ===

/// The running elector: whether this replica leads, and how to stop it.
///
/// Dropping the handle aborts the elector without releasing the Lease, as a crash would;
/// call [`LeaderHandle::shutdown`] to step down gracefully.
#[derive(Debug)]
pub struct LeaderHandle {
    identity: String,
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// Keeps the flag's sender alive for [`LeaderHandle::without_election`].
    _always: Option<watch::Sender<bool>>,
}

impl LeaderHandle {
    /// A handle that is the leader from the start and never loses it, for
    /// `--leader-elect=false` (exactly one replica).
    pub fn without_election() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            identity: String::new(),
            leader: rx,
            stop: watch::Sender::new(false),
            task: None,
            _always: Some(tx),
        }
    }

    /// This replica's `holderIdentity` (empty without election).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica is the leader now. Work that must run on one replica only
    /// checks this (or [`LeaderHandle::subscribe`]) before every write it makes.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The leadership flag as a watch channel: `true` while leading. The sender is dropped
    /// when the elector ends, after the flag went back to `false`.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Resolves once this replica is the leader, or fails if the elector ended first.
    pub async fn acquired(&self) -> Result<(), Stopped> {
        let mut rx = self.leader.clone();
        rx.wait_for(|leading| *leading)
            .await
            .map(|_| ())
            .map_err(|_| Stopped)
    }

    /// A future that resolves when leadership, once acquired, is lost (renewal failed
    /// within the renew deadline, another holder appeared, shutdown) or the elector ended.
    /// It owns what it needs, so it can be spawned or kept in a `select!`.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.leader.clone();
        async move {
            if rx.wait_for(|leading| *leading).await.is_err() {
                return;
            }
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    /// Stops the elector; if this replica leads, first drops the flag to `false`, then
    /// releases the Lease so the other replica takes over within a retry period. Call it
    /// after the work that needed leadership has stopped. Waits until the elector ended.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(error = %error, "leader elector panicked");
        }
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === Elector ===

/// The last Lease seen, and when (on our monotonic clock) its spec last changed.
#[derive(Debug)]
struct Observed {
    lease: Lease,
    spec: LeaseSpec,
    changed_at: Instant,
}

/// What one acquire-or-renew attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// The write landed: we hold the Lease.
    Held,
    /// Another holder's Lease has not expired yet by our clock.
    HeldBy(String),
    /// Someone wrote between our read and our write (409).
    Conflict,
}

/// Campaigns for the Lease and, once leading, keeps it renewed. Start it with
/// [`LeaderElector::start`].
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    metrics: LeaderMetrics,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// Validates `config`; nothing is sent to the API server yet.
    pub fn new(
        client: kube::Client,
        config: LeaseConfig,
        metrics: LeaderMetrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            metrics,
            observed: None,
        })
    }

    /// Spawns the elector on the current tokio runtime.
    pub fn start(self) -> LeaderHandle {
        let identity = self.config.identity.clone();
        let (leader_tx, leader_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(leader_tx, stop_rx));
        LeaderHandle {
            identity,
            leader: leader_rx,
            stop: stop_tx,
            task: Some(task),
            _always: None,
        }
    }

    async fn run(mut self, leader: watch::Sender<bool>, stop: watch::Receiver<bool>) {
        let lease = format!("{}/{}", self.config.namespace, self.config.name);
        let identity = self.config.identity.clone();
        tracing::info!(lease = %lease, identity = %identity, "campaigning for leadership");

        // Candidate: try every retry period (with up to 20% jitter so replicas do not stay
        // in lockstep) until a write lands.
        let mut renewed_at = loop {
            let sent = Instant::now();
            let attempt = tokio::select! {
                () = stopped(stop.clone()) => {
                    tracing::info!(lease = %lease, "stopped before becoming the leader");
                    return;
                }
                a = self.attempt_within(false, sent + self.config.renew_deadline) => a,
            };
            match attempt {
                Ok(Attempt::Held) => break sent,
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(lease = %lease, holder = %holder, "lease is held by another replica");
                }
                Ok(Attempt::Conflict) => {
                    tracing::debug!(lease = %lease, "another replica wrote the lease first");
                }
                Err(error) => {
                    tracing::warn!(lease = %lease, error = %error_chain(&error), "cannot acquire the lease; retrying");
                }
            }
            let pause = jittered(self.config.retry_period);
            tokio::select! {
                () = stopped(stop.clone()) => {
                    tracing::info!(lease = %lease, "stopped before becoming the leader");
                    return;
                }
                () = tokio::time::sleep(pause) => {}
            }
        };

        leader.send_replace(true);
        self.metrics.leader.set(1);
        self.metrics.transitions.inc();
        tracing::info!(lease = %lease, identity = %identity, "became the leader");

        // Leader: renew every retry period; step down when no renewal sent within the last
        // renew deadline has landed.
        loop {
            let deadline = renewed_at + self.config.renew_deadline;
            let next = (Instant::now() + self.config.retry_period).min(deadline);
            tokio::select! {
                () = stopped(stop.clone()) => {
                    leader.send_replace(false);
                    self.metrics.leader.set(0);
                    self.release(&lease).await;
                    return;
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            if sent >= deadline {
                leader.send_replace(false);
                self.metrics.leader.set(0);
                tracing::error!(
                    lease = %lease,
                    renew_deadline = ?self.config.renew_deadline,
                    "could not renew the lease within the renew deadline; stopped leading"
                );
                return;
            }
            let attempt = tokio::select! {
                () = stopped(stop.clone()) => {
                    leader.send_replace(false);
                    self.metrics.leader.set(0);
                    self.release(&lease).await;
                    return;
                }
                a = self.attempt_within(true, deadline) => a,
            };
            match attempt {
                Ok(Attempt::Held) => renewed_at = sent,
                Ok(Attempt::HeldBy(holder)) => {
                    leader.send_replace(false);
                    self.metrics.leader.set(0);
                    tracing::error!(lease = %lease, holder = %holder, "another replica holds the lease; stopped leading");
                    return;
                }
                Ok(Attempt::Conflict) => {
                    tracing::warn!(lease = %lease, "conflict renewing the lease; retrying");
                }
                Err(error) => {
                    tracing::warn!(lease = %lease, error = %error_chain(&error), "cannot renew the lease; retrying");
                }
            }
        }
    }

    /// One attempt, abandoned at `deadline`.
    async fn attempt_within(&mut self, leading: bool, deadline: Instant) -> Result<Attempt, Error> {
        let after = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline, self.try_acquire_or_renew(leading)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                after,
            }),
        }
    }

    /// client-go's `tryAcquireOrRenew`: create the Lease if absent, take it if free or
    /// expired by our clock, renew it if ours; every write with optimistic concurrency.
    async fn try_acquire_or_renew(&mut self, leading: bool) -> Result<Attempt, Error> {
        let now = now_micro();

        // Fast path for the leader: write over the last Lease we wrote, skipping the read.
        let cached = self
            .observed
            .as_ref()
            .filter(|observed| leading && self.holds(&observed.spec))
            .map(|observed| self.desired(&observed.lease, now.clone()));
        if let Some(desired) = cached {
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &desired)
                .await
            {
                Ok(written) => {
                    self.observe(&written);
                    return Ok(Attempt::Held);
                }
                // Someone else wrote, or deleted the Lease: fall through and look.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(source) => return Err(self.update_error(source)),
            }
        }

        let current = match self.api.get_opt(&self.config.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                let fresh = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(self.config.lease_duration_seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now.clone()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &fresh).await {
                    Ok(created) => {
                        self.observe(&created);
                        return Ok(Attempt::Held);
                    }
                    // Another replica created it between our read and our create: read
                    // what it wrote and judge that.
                    Err(e) if is_already_exists(&e) => self
                        .api
                        .get(&self.config.name)
                        .await
                        .map_err(|source| Error::Get {
                            namespace: self.config.namespace.clone(),
                            name: self.config.name.clone(),
                            source,
                        })?,
                    Err(source) => {
                        return Err(Error::Create {
                            namespace: self.config.namespace.clone(),
                            name: self.config.name.clone(),
                            source,
                        });
                    }
                }
            }
            Err(source) => {
                return Err(Error::Get {
                    namespace: self.config.namespace.clone(),
                    name: self.config.name.clone(),
                    source,
                });
            }
        };

        let changed_at = self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let other = spec
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty() && *h != self.config.identity);
        if let Some(holder) = other {
            // The holder's own duration, as client-go uses the record's, so a replica with
            // other flags is still judged by what it promised.
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(self.config.lease_duration, Duration::from_secs);
            if Instant::now() < changed_at + duration {
                return Ok(Attempt::HeldBy(holder.to_string()));
            }
            tracing::info!(
                lease = %format!("{}/{}", self.config.namespace, self.config.name),
                holder = %holder,
                unchanged_for = ?changed_at.elapsed(),
                "the lease expired; taking it over"
            );
        }

        let desired = self.desired(&current, now);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &desired)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(source) => Err(self.update_error(source)),
        }
    }

    /// Gives the Lease up if we hold it: `holderIdentity` cleared, `leaseDurationSeconds:
    /// 1`, transitions kept (client-go's `release`). Best effort, bounded by the renew
    /// deadline; a failure only means the other replica waits for the lease to expire.
    async fn release(&mut self, lease: &str) {
        let deadline = Instant::now() + self.config.renew_deadline;
        match tokio::time::timeout_at(deadline, self.try_release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %lease, "released the lease"),
            Ok(Ok(false)) => {
                tracing::info!(lease = %lease, "stopped leading; the lease was no longer ours")
            }
            Ok(Err(error)) => tracing::warn!(
                lease = %lease,
                error = %error_chain(&error),
                "cannot release the lease; the other replica takes over when it expires"
            ),
            Err(_) => tracing::warn!(
                lease = %lease,
                "releasing the lease timed out; the other replica takes over when it expires"
            ),
        }
    }

    async fn try_release(&mut self) -> Result<bool, Error> {
        let mut current = match &self.observed {
            Some(observed) if self.holds(&observed.spec) => observed.lease.clone(),
            _ => return Ok(false),
        };
        // Two tries: over the Lease we last wrote, and once more over a fresh read if a
        // write of ours (a renewal cut short by the shutdown) landed in between.
        for _ in 0..2 {
            let now = now_micro();
            let mut released = current.clone();
            released.metadata.managed_fields = None;
            let spec = released.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &released)
                .await
            {
                Ok(written) => {
                    self.observe(&written);
                    return Ok(true);
                }
                Err(e) if is_conflict(&e) => {
                    current =
                        self.api
                            .get(&self.config.name)
                            .await
                            .map_err(|source| Error::Get {
                                namespace: self.config.namespace.clone(),
                                name: self.config.name.clone(),
                                source,
                            })?;
                    self.observe(&current);
                    if !self.holds(current.spec.as_ref().unwrap_or(&LeaseSpec::default())) {
                        return Ok(false);
                    }
                }
                Err(source) => return Err(self.update_error(source)),
            }
        }
        Ok(false)
    }

    fn holds(&self, spec: &LeaseSpec) -> bool {
        spec.holder_identity.as_deref() == Some(self.config.identity.as_str())
    }

    /// `current` with us as holder and `renewTime` now; on a takeover also a new
    /// `acquireTime` and one more `leaseTransitions`. Metadata (with the resourceVersion
    /// read) is kept, so the write is conditional on nobody having written since.
    fn desired(&self, current: &Lease, now: MicroTime) -> Lease {
        let old = current.spec.clone().unwrap_or_default();
        let ours = self.holds(&old);
        let transitions = old.lease_transitions.unwrap_or(0);
        let mut lease = current.clone();
        lease.metadata.managed_fields = None;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_seconds()),
            acquire_time: if ours {
                old.acquire_time.clone().or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..old
        });
        lease
    }

    /// Records `lease` as the latest seen; returns when its spec last changed.
    fn observe(&mut self, lease: &Lease) -> Instant {
        let spec = lease.spec.clone().unwrap_or_default();
        match &mut self.observed {
            Some(observed) if observed.spec == spec => {
                observed.lease = lease.clone();
                observed.changed_at
            }
            _ => {
                let now = Instant::now();
                self.observed = Some(Observed {
                    lease: lease.clone(),
                    spec,
                    changed_at: now,
                });
                now
            }
        }
    }

    fn update_error(&self, source: kube::Error) -> Error {
        Error::Update {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }
}

/// Now, truncated to the microseconds a MicroTime keeps, so what we write is what we read
/// back.
fn now_micro() -> MicroTime {
    let now = Timestamp::now();
    MicroTime(Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now))
}

fn jittered(period: Duration) -> Duration {
    // Up to +20%: random_u64() % 1001 is 0..=1000 per-mille of a fifth.
    let permille = u32::try_from(random_u64() % 1001).unwrap_or(0);
    period + period / 5 * permille / 1000
}

#[cfg(test)]
mod tests;
