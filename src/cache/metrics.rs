//! Prometheus metrics of the scheduler extender: the extender crate's [`Observer`] over a
//! [`Registry`] owned by the role that serves the routes.
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `stowage_extender_request_duration_seconds` | `verb` | histogram of request latency, body read to response encoded |
//! | `stowage_extender_requests_total` | `verb`, `code` | requests by HTTP status |
//! | `stowage_extender_errors_total` | `verb` | refused requests (4xx), policy errors (200 with `Error`) and internal errors (5xx) |
//! | `stowage_extender_nodes_filtered_total` | `reason` | candidate nodes filtered out, by [`Unfit::kind`] |
//! | `stowage_extender_pods_passed_through_total` | | filter calls for pods stowage does not judge |
//!
//! Every label value comes from a closed set; the `reason` and `verb` series exist from the
//! start at 0, so dashboards and `rate()` see them before the first event.

use std::time::Duration;

use axum::http::StatusCode;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use stowage_extender::{Failure, Observer, Outcome, Verb};

use crate::ledger::Unfit;

/// Histogram buckets in seconds: a cache-capable answer takes well under a millisecond, and
/// kube-scheduler gives up after `httpTimeout` (5 s by default).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric name this module registers, for docs and drift checks.
pub const NAMES: [&str; 5] = [
    "stowage_extender_request_duration_seconds",
    "stowage_extender_requests_total",
    "stowage_extender_errors_total",
    "stowage_extender_nodes_filtered_total",
    "stowage_extender_pods_passed_through_total",
];

const VERBS: [Verb; 2] = [Verb::Filter, Verb::Prioritize];

/// The extender's metrics, registered in one [`Registry`]; hand it to the router as its
/// [`Observer`] (`RouterConfig::observer`).
#[derive(Clone, Debug)]
pub struct ExtenderMetrics {
    duration: HistogramVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    filtered: IntCounterVec,
    passed_through: IntCounter,
}

impl ExtenderMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// Fails when `registry` already holds metrics of these names, e.g. when two extender
    /// routers are built over one registry.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "stowage_extender_request_duration_seconds",
                "Time to answer a kube-scheduler extender request, from routing to the encoded \
                 response, by verb.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["verb"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "stowage_extender_requests_total",
                "kube-scheduler extender requests answered, by verb and HTTP status code.",
            ),
            &["verb", "code"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "stowage_extender_errors_total",
                "Extender requests that got no decision: malformed or oversized requests \
                 (4xx), policy errors (200 with Error set) and internal errors (5xx), by verb.",
            ),
            &["verb"],
        )?;
        let filtered = IntCounterVec::new(
            Opts::new(
                "stowage_extender_nodes_filtered_total",
                "Candidate nodes the extender's filter rejected, by reason.",
            ),
            &["reason"],
        )?;
        let passed_through = IntCounter::new(
            "stowage_extender_pods_passed_through_total",
            "Filter calls for pods stowage does not judge (no unbound claim of a \
             local.stowage.io class, or a claim or class not cached yet); every node passed.",
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(filtered.clone()))?;
        registry.register(Box::new(passed_through.clone()))?;

        for verb in VERBS {
            let verb = verb.as_str();
            duration.with_label_values(&[verb]);
            requests.with_label_values(&[verb, StatusCode::OK.as_str()]);
            errors.with_label_values(&[verb]);
        }
        for reason in Unfit::KINDS.iter().chain(&super::policy::POLICY_KINDS) {
            filtered.with_label_values(&[reason]);
        }
        Ok(Self {
            duration,
            requests,
            errors,
            filtered,
            passed_through,
        })
    }
}

impl Observer for ExtenderMetrics {
    fn request(&self, verb: Verb, outcome: Outcome, status: StatusCode, elapsed: Duration) {
        let verb = verb.as_str();
        self.duration
            .with_label_values(&[verb])
            .observe(elapsed.as_secs_f64());
        self.requests
            .with_label_values(&[verb, status.as_str()])
            .inc();
        if outcome != Outcome::Ok {
            self.errors.with_label_values(&[verb]).inc();
        }
    }

    fn rejected(&self, kind: &'static str, _failure: Failure, nodes: u64) {
        self.filtered.with_label_values(&[kind]).inc_by(nodes);
    }

    fn passed_through(&self) {
        self.passed_through.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::render;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_reason_and_verb_series_starts_at_zero() {
        let registry = Registry::new();
        ExtenderMetrics::register(&registry).unwrap();
        let text = render(&registry).unwrap();
        for reason in Unfit::KINDS
            .iter()
            .chain(&super::super::policy::POLICY_KINDS)
        {
            let series = format!("stowage_extender_nodes_filtered_total{{reason=\"{reason}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series}\n{text}");
        }
        for verb in ["filter", "prioritize"] {
            for series in [
                format!("stowage_extender_errors_total{{verb=\"{verb}\"}}"),
                format!("stowage_extender_requests_total{{code=\"200\",verb=\"{verb}\"}}"),
                format!("stowage_extender_request_duration_seconds_count{{verb=\"{verb}\"}}"),
            ] {
                assert_eq!(value(&text, &series), Some(0.0), "{series}\n{text}");
            }
        }
        assert_eq!(
            value(&text, "stowage_extender_pods_passed_through_total"),
            Some(0.0)
        );
        let families: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let mut want = NAMES.map(str::to_owned).to_vec();
        want.sort();
        assert_eq!(families, want);
    }

    #[test]
    fn observations_move_the_matching_series() {
        let registry = Registry::new();
        let metrics = ExtenderMetrics::register(&registry).unwrap();
        let ms = Duration::from_micros(300);
        metrics.request(Verb::Filter, Outcome::Ok, StatusCode::OK, ms);
        metrics.request(Verb::Filter, Outcome::Invalid, StatusCode::BAD_REQUEST, ms);
        metrics.request(
            Verb::Prioritize,
            Outcome::Invalid,
            StatusCode::PAYLOAD_TOO_LARGE,
            Duration::from_secs(2),
        );
        metrics.request(Verb::Filter, Outcome::PolicyError, StatusCode::OK, ms);
        metrics.rejected(
            "insufficient_capacity",
            Failure::UnschedulableAndUnresolvable,
            7,
        );
        metrics.rejected("stale", Failure::UnschedulableAndUnresolvable, 2);
        metrics.rejected("stale", Failure::Unschedulable, 1);
        metrics.passed_through();

        let text = render(&registry).unwrap();
        for (series, want) in [
            (
                r#"stowage_extender_requests_total{code="200",verb="filter"}"#,
                2.0,
            ),
            (
                r#"stowage_extender_requests_total{code="400",verb="filter"}"#,
                1.0,
            ),
            (
                r#"stowage_extender_requests_total{code="413",verb="prioritize"}"#,
                1.0,
            ),
            (r#"stowage_extender_errors_total{verb="filter"}"#, 2.0),
            (r#"stowage_extender_errors_total{verb="prioritize"}"#, 1.0),
            (
                r#"stowage_extender_nodes_filtered_total{reason="insufficient_capacity"}"#,
                7.0,
            ),
            (
                r#"stowage_extender_nodes_filtered_total{reason="stale"}"#,
                3.0,
            ),
            (
                r#"stowage_extender_nodes_filtered_total{reason="no_report"}"#,
                0.0,
            ),
            ("stowage_extender_pods_passed_through_total", 1.0),
            (
                r#"stowage_extender_request_duration_seconds_bucket{verb="filter",le="0.0005"}"#,
                3.0,
            ),
            (
                r#"stowage_extender_request_duration_seconds_bucket{verb="prioritize",le="1"}"#,
                0.0,
            ),
            (
                r#"stowage_extender_request_duration_seconds_bucket{verb="prioritize",le="2.5"}"#,
                1.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}\n{text}");
        }
    }

    #[test]
    fn a_second_registration_in_one_registry_is_an_error() {
        let registry = Registry::new();
        ExtenderMetrics::register(&registry).unwrap();
        assert!(ExtenderMetrics::register(&registry).is_err());
    }
}
