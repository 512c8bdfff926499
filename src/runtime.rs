//! What every long-running role (agent, controller, extender, leader election) runs on, in
//! one place so the roles cannot drift apart: how a failed object is retried (one backoff
//! policy and one per-object failure count), how an error chain is written, and how a role
//! learns it is to stop (the process's signals, and a stop channel inside it).
//!
//! Events (`crate::events`), locks (`parking_lot`, which never poisons) and HTTP serving
//! (`crate::serve`) are shared the same way, in their own modules.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Exponential backoff: the first retry after `first`, doubling with each further failure,
/// never longer than `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    /// Retries from `first`, doubling, at most `cap`.
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    /// The same first retry with another cap (failures a person must fix wait longer).
    pub const fn capped(self, cap: Duration) -> Self {
        Self { cap, ..self }
    }

    /// The wait before the next try after `failures` failures in a row: `first × 2^(n−1)`,
    /// at most the cap (`0` counts as `1`).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << exp).min(self.cap)
    }
}

/// Failures in a row per object key, for [`Backoff::delay`]: counted by
/// [`Failures::failed`], forgotten by [`Failures::succeeded`].
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; returns how many in a row (1 for the first).
    pub fn failed(&self, key: &str) -> u32 {
        let mut failures = self.0.lock();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// `key` succeeded: its next failure is a first one again.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().remove(key);
    }
}

/// An error and its sources joined with ": ", as logs, status messages and Events show
/// it: the one way every role writes an error chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves on SIGTERM or ctrl-c, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Resolves once `stop` turns true; never if its sender is dropped first (a dropped
/// sender is an abort, not a request to stop cleanly).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_its_first_retry_doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(5), Duration::from_millis(1600));
        assert_eq!(b.delay(30), Duration::from_secs(60));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        let short = b.capped(Duration::from_millis(300));
        assert_eq!(short.delay(2), Duration::from_millis(200));
        assert_eq!(short.delay(3), Duration::from_millis(300));
    }

    #[test]
    fn failures_count_in_a_row_per_key_until_a_success() {
        let f = Failures::default();
        assert_eq!(f.failed("a"), 1);
        assert_eq!(f.failed("a"), 2);
        assert_eq!(f.failed("b"), 1);
        f.succeeded("a");
        assert_eq!(f.failed("a"), 1);
        assert_eq!(f.failed("b"), 2);
    }

    #[test]
    fn an_error_chain_joins_every_source() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "create",
            Some(Box::new(E("api", Some(Box::new(E("refused", None)))))),
        );
        assert_eq!(error_chain(&e), "create: api: refused");
    }

    #[tokio::test]
    async fn stopped_resolves_on_true_and_never_on_a_dropped_sender() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), stopped(rx))
            .await
            .expect("stop seen");
        let (tx, rx) = watch::channel(false);
        drop(tx);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stopped(rx))
                .await
                .is_err(),
            "a dropped sender is not a stop"
        );
    }
}
