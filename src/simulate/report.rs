//! Balance figures and the text and JSON reports of a simulation.

use std::fmt::Write as _;

use serde::Serialize;

use super::place::{Outcome, Policy};
use crate::ledger::{Bytes, Ledger};

/// Summary statistics of per-node utilization (fractions `0.0..=1.0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Utilization {
    /// Least utilized node.
    pub min: f64,
    /// Most utilized node.
    pub max: f64,
    /// Mean over nodes.
    pub mean: f64,
    /// Coefficient of variation: population standard deviation over mean (0 when the mean is 0).
    pub cov: f64,
    /// `max − min`.
    pub spread: f64,
}

/// Utilization statistics of `values`.
#[allow(clippy::cast_precision_loss)]
pub fn utilization(values: &[f64]) -> Utilization {
    if values.is_empty() {
        return Utilization::default();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Utilization {
        min,
        max,
        mean,
        cov: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        spread: max - min,
    }
}

/// Jain's fairness index `(Σx)² / (n·Σx²)`: 1 when all nodes are equally used, `1/n` when
/// one node carries everything. 1 for an all-zero input (nothing to be unfair about).
#[allow(clippy::cast_precision_loss)]
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let sq: f64 = values.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        1.0
    } else {
        sum * sum / (values.len() as f64 * sq)
    }
}

/// One policy's figures, as printed in JSON.
#[derive(Debug, Serialize)]
pub struct PolicyReport {
    /// Claims placed.
    pub placed: u64,
    /// Claims rejected.
    pub rejected: u64,
    /// Pods placed.
    pub pods_placed: u64,
    /// Pods rejected.
    pub pods_rejected: u64,
    /// Pods placed from a stale view where they no longer fitted, sent back by the
    /// provisioner and placed again.
    pub rescheduled: u64,
    /// Rejected claims by reason kind.
    pub rejected_reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Per-node utilization statistics.
    pub utilization: Utilization,
    /// Jain's fairness index of per-node utilization.
    pub jain: f64,
    /// Per-node figures, in name order.
    pub nodes: Vec<NodeReport>,
}

/// One node after placement.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Allocatable bytes.
    pub allocatable_bytes: u64,
    /// Allocated bytes.
    pub allocated_bytes: u64,
    /// `allocated / allocatable`.
    pub utilization: f64,
}

impl PolicyReport {
    /// The figures of one outcome.
    pub fn new(outcome: &Outcome) -> Self {
        let nodes: Vec<NodeReport> = outcome
            .ledger
            .nodes()
            .map(|n| NodeReport {
                name: n.name.to_string(),
                allocatable_bytes: n.allocatable().0,
                allocated_bytes: n.committed().0,
                utilization: n.utilization(),
            })
            .collect();
        let utils: Vec<f64> = nodes
            .iter()
            .filter(|n| n.allocatable_bytes > 0)
            .map(|n| n.utilization)
            .collect();
        Self {
            placed: outcome.placed,
            rejected: outcome.rejected,
            pods_placed: outcome.pods_placed,
            pods_rejected: outcome.pods_rejected,
            rescheduled: outcome.rescheduled,
            rejected_reasons: outcome.rejected_by_reason.clone(),
            utilization: utilization(&utils),
            jain: jain(&utils),
            nodes,
        }
    }
}

/// The whole simulation, as printed with `--format json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The seed that reproduces the run.
    pub seed: u64,
    /// The cluster before placement.
    pub cluster: ClusterSummary,
    /// The stream of pods.
    pub stream: StreamSummary,
    /// Figures per policy, by policy name.
    pub policies: std::collections::BTreeMap<&'static str, PolicyReport>,
    /// Policy names in the order they were asked for.
    pub order: Vec<&'static str>,
}

/// The cluster before placement.
#[derive(Debug, Serialize)]
pub struct ClusterSummary {
    /// Number of nodes.
    pub nodes: usize,
    /// Sum of allocatable bytes.
    pub allocatable_bytes: u64,
    /// Bytes already allocated before the stream.
    pub allocated_bytes: u64,
}

/// The stream of pods offered to every policy.
#[derive(Debug, Serialize)]
pub struct StreamSummary {
    /// Pods.
    pub pods: u64,
    /// Claims.
    pub claims: u64,
    /// Sum of the claims' sizes.
    pub requested_bytes: u64,
    /// `requested / allocatable free before the stream`.
    pub fill: f64,
}

impl ClusterSummary {
    /// Totals of `ledger`.
    pub fn new(ledger: &Ledger) -> Self {
        Self {
            nodes: ledger.len(),
            allocatable_bytes: ledger
                .nodes()
                .fold(Bytes::ZERO, |a, n| a.saturating_add(n.allocatable()))
                .0,
            allocated_bytes: ledger
                .nodes()
                .fold(Bytes::ZERO, |a, n| a.saturating_add(n.committed()))
                .0,
        }
    }
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

const BAR: usize = 40;

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn bar(fraction: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR as f64).round() as usize).min(BAR);
    format!("{}{}", "█".repeat(filled), "░".repeat(BAR - filled))
}

/// The human-readable report: a comparison table, then a bar chart per policy.
pub fn text(report: &Report, examples: &[(Policy, &Outcome)]) -> String {
    let mut out = String::new();
    let c = &report.cluster;
    let s = &report.stream;
    let _ = writeln!(
        out,
        "cluster: {} nodes, {} allocatable ({} already allocated)",
        c.nodes,
        Bytes(c.allocatable_bytes),
        Bytes(c.allocated_bytes)
    );
    let _ = writeln!(
        out,
        "stream:  {} pods with {} claims, {} requested ({} of the free space); seed {}\n",
        s.pods,
        s.claims,
        Bytes(s.requested_bytes),
        pct(s.fill),
        report.seed
    );
    let _ = writeln!(
        out,
        "{:<15} {:>7} {:>8}  {:>7} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "policy", "placed", "rejected", "min", "mean", "max", "CoV", "max-min", "Jain"
    );
    for name in &report.order {
        if let Some(p) = report.policies.get(name) {
            let u = &p.utilization;
            let _ = writeln!(
                out,
                "{:<15} {:>7} {:>8}  {:>7} {:>7} {:>7} {:>7.3} {:>8} {:>6.3}",
                name,
                p.placed,
                p.rejected,
                pct(u.min),
                pct(u.mean),
                pct(u.max),
                u.cov,
                pct(u.spread),
                p.jain
            );
        }
    }
    for (policy, outcome) in examples {
        let Some(p) = report.policies.get(policy.as_str()) else {
            continue;
        };
        let _ = writeln!(out, "\n{policy}: per-node utilization");
        let width = p.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4);
        for n in &p.nodes {
            let _ = writeln!(
                out,
                "  {:<width$} {:>8} {} {:>6}",
                n.name,
                Bytes(n.allocatable_bytes).to_string(),
                bar(n.utilization),
                pct(n.utilization)
            );
        }
        for (kind, count) in &outcome.rejected_by_reason {
            let example = outcome.example_reason.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "  rejected {count} claims ({kind}), e.g. {example}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_figures_match_their_definitions() {
        let even = [0.5, 0.5, 0.5, 0.5];
        let u = utilization(&even);
        assert!(u.cov.abs() < 1e-12 && u.spread.abs() < 1e-12);
        assert!((jain(&even) - 1.0).abs() < 1e-12);

        let skew = [1.0, 0.0, 0.0, 0.0];
        let u = utilization(&skew);
        assert!((u.mean - 0.25).abs() < 1e-12);
        assert!((u.cov - 3f64.sqrt()).abs() < 1e-12);
        assert!((u.spread - 1.0).abs() < 1e-12);
        assert!((jain(&skew) - 0.25).abs() < 1e-12);
        assert!((jain(&[0.0, 0.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bars_are_proportional_and_bounded() {
        assert_eq!(bar(0.5).chars().filter(|&c| c == '█').count(), 20);
        assert_eq!(bar(2.0).chars().count(), BAR);
        assert_eq!(bar(-1.0).chars().filter(|&c| c == '█').count(), 0);
    }
}
