//! `stowage simulate`: a capacity-planning run on any machine, no cluster needed.
//!
//! It builds a cluster (generated, or from a file or `kubectl get storagenodes -o json`),
//! draws a stream of pods with one or more claims, and places the same stream under each
//! policy through exactly the ledger's filter and score code, as the extender and the
//! scheduler would. It reports what was placed and rejected and how evenly the nodes fill.

pub mod cluster;
pub mod dist;
pub mod place;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::ledger::{Bytes, Demand, Reserve};
use dist::{CountRange, Rng, SizeDist};
use place::{PodSpec, Policy};
use report::{ClusterSummary, PolicyReport, Report, StreamSummary};

/// Bad input to `stowage simulate`; the command exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is invalid.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The cluster file could not be read.
    #[error("cannot read cluster file {path}")]
    ReadCluster {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file is malformed.
    #[error("cluster file {path}: {message}")]
    ClusterFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table and a bar chart per policy.
    Text,
    /// One JSON object.
    Json,
}

/// Flags of `stowage simulate`.
#[derive(Debug, Args)]
#[command(after_help = "\
Sizes use the Kubernetes quantity notation (500Gi, 2Ti, 1e9). Distributions are written
SIZE, uniform:MIN..MAX, choice:A,B,C or lognormal:MEDIAN,SIGMA[,MAX].

Examples:
  stowage simulate
  stowage simulate --nodes 50 --fill 0.85 --policy spread,random --seed 7 --format json
  kubectl get storagenodes -o json > nodes.json && stowage simulate --cluster nodes.json --claims 100")]
pub struct SimulateArgs {
    /// Number of generated nodes (ignored with --cluster).
    #[arg(
        long,
        default_value_t = 20,
        conflicts_with = "cluster",
        allow_negative_numbers = true
    )]
    pub nodes: u32,

    /// Pool size distribution of generated nodes: one pool per node.
    #[arg(
        long,
        default_value = "choice:500Gi,1Ti,2Ti,4Ti",
        conflicts_with = "cluster"
    )]
    pub node_size: String,

    /// Space each generated pool keeps back from volumes: bytes (10Gi) or percent (5%).
    #[arg(long, default_value = "0", conflicts_with = "cluster")]
    pub reserve: String,

    /// Read the cluster from a file instead of generating it: stowage's cluster format (YAML
    /// or JSON with a top-level "nodes" list) or the output of `kubectl get storagenodes -o json`.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,

    /// Stop after this many claims (default 2000 when --fill is not given).
    #[arg(long, allow_negative_numbers = true)]
    pub claims: Option<u64>,

    /// Stop before total demand would exceed this fraction of the cluster's free allocatable
    /// space, above 0 and at most 1, e.g. 0.85. With --claims too, whichever comes first.
    #[arg(long, allow_negative_numbers = true)]
    pub fill: Option<f64>,

    /// Claim size distribution.
    #[arg(long, default_value = "lognormal:10Gi,1.0,500Gi")]
    pub claim_size: String,

    /// Claims per pod: a count (2) or an inclusive range (1..3). A pod's claims must all fit
    /// on one node.
    #[arg(long, default_value = "1..3")]
    pub claims_per_pod: String,

    /// The pool the claims ask for (default: "default", or the only pool name in the cluster).
    #[arg(long)]
    pub pool: Option<String>,

    /// Policies to compare, comma-separated: spread, binpack (stowage's placements),
    /// spread-absolute (the first extender's absolute scores, without in-flight guesses, to
    /// compare against), random (a capacity-blind scheduler), first-fit (first node by name
    /// that fits).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spread,binpack,spread-absolute,random,first-fit"
    )]
    pub policy: Vec<String>,

    /// How many of the latest placements the extender has not seen when it scores the next
    /// pod. kube-scheduler writes `selected-node` in its asynchronous binding cycle, so in a
    /// burst it scores pods before the extender sees where the previous ones went. 0 models
    /// pods arriving one at a time.
    #[arg(long, default_value_t = 10)]
    pub lag: usize,

    /// Seed of every random choice; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn flag(flag: &'static str) -> impl Fn(String) -> Error {
    move |message| Error::Flag { flag, message }
}

/// The validated plan of a simulation.
struct Plan {
    ledger: crate::ledger::Ledger,
    pods: Vec<PodSpec>,
    policies: Vec<Policy>,
    seed: u64,
    lag: usize,
}

impl SimulateArgs {
    /// Runs the simulation and prints the report to stdout.
    pub fn run(self) -> anyhow::Result<()> {
        let format = self.format;
        let plan = self.plan()?;
        let report = execute(&plan);
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&report.0)?),
            Format::Text => {
                let examples: Vec<_> = report.1.iter().map(|(p, o)| (*p, o)).collect();
                print!("{}", report::text(&report.0, &examples));
            }
        }
        Ok(())
    }

    fn plan(self) -> Result<Plan, Error> {
        let SimulateArgs {
            nodes,
            node_size,
            reserve,
            cluster,
            claims,
            fill,
            claim_size,
            claims_per_pod,
            pool,
            policy,
            lag,
            seed,
            format: _,
        } = self;
        if lag > 100_000 {
            return Err(flag("lag")(format!(
                "{lag} pods is not a scheduler's lag; use 0 to 100000"
            )));
        }
        let mut policies = Vec::new();
        for name in &policy {
            let p: Policy = name.trim().parse().map_err(flag("policy"))?;
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        if policies.is_empty() {
            return Err(flag("policy")("name at least one policy".into()));
        }
        if let Some(f) = fill
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(flag("fill")(format!(
                "{f} is not a fraction of the cluster's free space; use a number above 0 and at most 1, e.g. 0.85"
            )));
        }
        if claims == Some(0) {
            return Err(flag("claims")("must be at least 1".into()));
        }
        let claim_size: SizeDist = claim_size.parse().map_err(flag("claim-size"))?;
        let per_pod: CountRange = claims_per_pod.parse().map_err(flag("claims-per-pod"))?;
        let mut rng = Rng::new(seed);

        let ledger = match cluster {
            Some(path) => cluster::load(&path)?,
            None => {
                if nodes == 0 || nodes > 100_000 {
                    return Err(flag("nodes")("must be between 1 and 100000".into()));
                }
                let size: SizeDist = node_size.parse().map_err(flag("node-size"))?;
                let reserve: Reserve = reserve
                    .parse()
                    .map_err(|e: crate::ledger::QuantityError| flag("reserve")(e.to_string()))?;
                let pool = pool.as_deref().unwrap_or("default");
                cluster::generate(nodes, &size, reserve, pool, &mut rng)
            }
        };
        let pool = match pool {
            Some(p) => p,
            None => default_pool(&ledger).map_err(flag("pool"))?,
        };
        if !ledger.nodes().any(|n| n.pool(&pool).is_some()) {
            return Err(flag("pool")(format!("no node has a pool named {pool:?}")));
        }

        let free: Bytes = ledger
            .nodes()
            .flat_map(|n| n.pools.iter())
            .filter(|p| p.name.as_str() == pool)
            .fold(Bytes::ZERO, |a, p| a.saturating_add(p.free()));
        if free == Bytes::ZERO {
            // Nothing could be placed: balance figures of an empty run would read as perfect.
            return Err(flag("pool")(format!(
                "pool {pool:?} has no free allocatable space on any node; give the nodes capacity \
                 (or a smaller reserve, or less already allocated) before simulating"
            )));
        }
        let claim_limit = claims.unwrap_or(if fill.is_some() { u64::MAX } else { 2000 });
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let byte_limit = fill.map_or(u64::MAX, |f| (free.0 as f64 * f) as u64);
        let mut pods = Vec::new();
        let (mut n_claims, mut demanded) = (0u64, 0u64);
        // Enough pods for any sane fill, and a bound for a distribution of zero sizes.
        while n_claims < claim_limit && pods.len() < 10_000_000 {
            let count = per_pod.sample(&mut rng).min(claim_limit - n_claims);
            let mut demand = Demand::new();
            let mut bytes = 0u64;
            for _ in 0..count {
                let size = claim_size.sample(&mut rng);
                bytes = bytes.saturating_add(size.0);
                demand
                    .add(pool.as_str().into(), size)
                    .map_err(|e| flag("claim-size")(e.to_string()))?;
            }
            if demanded.saturating_add(bytes) > byte_limit {
                break;
            }
            demanded += bytes;
            n_claims += count;
            pods.push(PodSpec {
                claims: count,
                demand,
            });
        }
        Ok(Plan {
            ledger,
            pods,
            policies,
            seed,
            lag,
        })
    }
}

fn default_pool(ledger: &crate::ledger::Ledger) -> Result<String, String> {
    let mut names: Vec<&str> = ledger
        .nodes()
        .flat_map(|n| n.pools.iter().map(|p| p.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    match names.as_slice() {
        [only] => Ok((*only).to_string()),
        many if many.contains(&"default") => Ok("default".to_string()),
        many => Err(format!(
            "the cluster has pools {many:?} and none is called \"default\"; name one with --pool"
        )),
    }
}

fn execute(plan: &Plan) -> (Report, Vec<(Policy, place::Outcome)>) {
    let mut outcomes = Vec::new();
    let mut policies = BTreeMap::new();
    for &policy in &plan.policies {
        // Each policy gets its own generator from the seed, so adding a policy to the
        // comparison does not change another's result.
        let mut rng = Rng::new(plan.seed ^ (policy as u64 + 1).wrapping_mul(0x9E37_79B9));
        let outcome = place::run(policy, &plan.ledger, &plan.pods, plan.lag, &mut rng);
        policies.insert(policy.as_str(), PolicyReport::new(&outcome));
        outcomes.push((policy, outcome));
    }
    let cluster = ClusterSummary::new(&plan.ledger);
    let requested: u64 = plan
        .pods
        .iter()
        .fold(0u64, |a, p| a.saturating_add(p.demand.total().0));
    let free = cluster
        .allocatable_bytes
        .saturating_sub(cluster.allocated_bytes);
    let report = Report {
        seed: plan.seed,
        stream: StreamSummary {
            pods: plan.pods.len() as u64,
            claims: plan.pods.iter().map(|p| p.claims).sum(),
            requested_bytes: requested,
            fill: Bytes(requested).ratio(Bytes(free)),
        },
        cluster,
        policies,
        order: plan.policies.iter().map(|p| p.as_str()).collect(),
    };
    (report, outcomes)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn report(argv: &[&str]) -> Report {
        let mut full = vec!["simulate"];
        full.extend_from_slice(argv);
        let args = T::try_parse_from(full).unwrap().args;
        execute(&args.plan().unwrap()).0
    }

    fn plan_err(argv: &[&str]) -> String {
        let mut full = vec!["simulate"];
        full.extend_from_slice(argv);
        match T::try_parse_from(full).unwrap().args.plan() {
            Ok(_) => panic!("{argv:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn spread_places_everything_at_85_percent_and_balances_far_better_than_random() {
        let r = report(&[
            "--nodes",
            "50",
            "--fill",
            "0.85",
            "--policy",
            "spread,random",
            "--seed",
            "7",
        ]);
        let spread = &r.policies["spread"];
        let random = &r.policies["random"];
        assert_eq!(spread.rejected, 0);
        assert!(
            random.rejected > 0,
            "random is capacity-blind and must miss"
        );
        assert!(
            spread.utilization.cov * 3.0 <= random.utilization.cov,
            "spread {} random {}",
            spread.utilization.cov,
            random.utilization.cov
        );
        assert!(
            r.stream.fill <= 0.85 && r.stream.fill > 0.80,
            "{}",
            r.stream.fill
        );
    }

    #[test]
    fn binpack_concentrates_where_spread_evens_out() {
        let r = report(&["--nodes", "20", "--fill", "0.5", "--seed", "3"]);
        let spread = &r.policies["spread"];
        let binpack = &r.policies["binpack"];
        assert!(binpack.utilization.cov > spread.utilization.cov);
        assert!(binpack.jain < spread.jain);
        assert_eq!(
            r.order,
            [
                "spread",
                "binpack",
                "spread-absolute",
                "random",
                "first-fit"
            ]
        );
        for p in r.policies.values() {
            assert_eq!(p.placed + p.rejected, r.stream.claims);
            for n in &p.nodes {
                assert!(n.allocated_bytes <= n.allocatable_bytes, "no overcommit");
            }
        }
    }

    #[test]
    fn the_same_seed_reproduces_the_run() {
        let a = serde_json::to_string(&report(&["--seed", "11", "--claims", "300"])).unwrap();
        let b = serde_json::to_string(&report(&["--seed", "11", "--claims", "300"])).unwrap();
        let c = serde_json::to_string(&report(&["--seed", "12", "--claims", "300"])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_claim_count_bounds_the_stream() {
        let r = report(&["--claims", "101", "--claims-per-pod", "2"]);
        assert_eq!(r.stream.claims, 101, "the last pod is cut to the limit");
        assert_eq!(r.stream.pods, 51);
    }

    #[test]
    fn invalid_input_names_the_flag_and_the_fix() {
        let cases: [(&[&str], &str); 8] = [
            (
                &["--policy", "spread,best"],
                "--policy: unknown policy \"best\"",
            ),
            (
                &["--claim-size=-5Gi"],
                "--claim-size: in distribution \"-5Gi\": quantity \"-5Gi\" is negative",
            ),
            (&["--node-size", "uniform:2Ti..1Ti"], "--node-size:"),
            (&["--fill=-0.5"], "--fill: -0.5 is not a fraction"),
            (&["--claims", "0"], "--claims: must be at least 1"),
            (&["--nodes", "0"], "--nodes: must be between 1"),
            (&["--reserve", "120%"], "--reserve:"),
            (
                &["--claims-per-pod", "0"],
                "--claims-per-pod: \"0\": counts must satisfy",
            ),
        ];
        for (argv, want) in cases {
            let err = plan_err(argv);
            assert!(err.starts_with(want), "{argv:?}: {err}");
        }
        // A fill above the whole free space is refused, not clamped; a reserve over 100 %
        // is reported as such, not as a size.
        assert!(plan_err(&["--fill", "1.5"]).starts_with("--fill: 1.5 is not a fraction"));
        let reserve = plan_err(&["--reserve", "110%"]);
        assert!(reserve.contains("more than 100%"), "{reserve}");
        // A cluster with nowhere to place anything is an error, not a perfect balance.
        let zero = plan_err(&["--nodes", "3", "--reserve", "100%"]);
        assert!(
            zero.starts_with("--pool:") && zero.contains("no free allocatable space"),
            "{zero}"
        );
    }

    #[test]
    fn a_negative_count_is_refused_naming_its_flag() {
        for (flag, value) in [("--nodes", "-1"), ("--claims", "-3")] {
            let err = T::try_parse_from(["simulate", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"))
                .to_string();
            assert!(err.contains(flag) && err.contains(value), "{err}");
        }
    }
}
