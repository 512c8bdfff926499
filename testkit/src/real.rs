//! A real Kubernetes control plane on loopback for the e2e lane: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, started per test by `scripts/real-cluster`
//! in the test's scratch directory and stopped when dropped.
//!
//! ```text
//!   STOWAGE_E2E=real            the lane is on: Cluster::start() starts a ControlPlane
//!   STOWAGE_K8S_BIN=DIR         where the binaries are (default /opt/stowage-k8s/bin)
//!
//!   ControlPlane::up(dir)       etcd + kube-apiserver + kube-controller-manager, admin kubeconfig
//!   .scheduler(url)             kube-scheduler with the shipped configuration → extender at url
//!   drop                        scripts/real-cluster down (and a watchdog does it if the test
//!                               process is killed); logs printed if the test panics
//! ```
//!
//! One control plane per test keeps tests apart (nodes, classes and the scheduler's extender
//! URL are per test) at the price of a few seconds of start-up each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// The environment variable that turns the real lane on: `STOWAGE_E2E=real`.
pub const LANE_ENV: &str = "STOWAGE_E2E";
/// The environment variable naming the directory of the control-plane binaries.
pub const BIN_ENV: &str = "STOWAGE_K8S_BIN";
/// Where the binaries are when [`BIN_ENV`] is unset.
pub const DEFAULT_BIN: &str = "/opt/stowage-k8s/bin";

/// Whether this test run is the real lane (`STOWAGE_E2E=real`).
pub fn lane_is_real() -> bool {
    std::env::var(LANE_ENV).is_ok_and(|v| v == "real")
}

/// `scripts/real-cluster` of this repository.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/real-cluster")
}

/// Whether the binaries are there (`scripts/real-cluster check`); the error says what is
/// missing.
pub fn check() -> anyhow::Result<()> {
    let out = Command::new("bash")
        .arg(script())
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .context("running scripts/real-cluster check")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Options of [`ControlPlane::up`].
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// `--feature-gates` of kube-apiserver, kube-controller-manager and kube-scheduler.
    pub feature_gates: Option<String>,
    /// `--runtime-config` of kube-apiserver.
    pub runtime_config: Option<String>,
}

/// A running control plane; dropping it stops every process of it.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with state in `dir`.
    pub async fn up(dir: &Path, options: &UpOptions) -> anyhow::Result<Self> {
        let mut args = vec![
            "up".to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--owner-pid".into(),
            std::process::id().to_string(),
        ];
        if let Some(g) = &options.feature_gates {
            args.extend(["--feature-gates".into(), g.clone()]);
        }
        if let Some(r) = &options.runtime_config {
            args.extend(["--runtime-config".into(), r.clone()]);
        }
        // From here on the directory holds processes: stop them even if `up` fails halfway.
        let plane = ControlPlane {
            dir: dir.to_path_buf(),
        };
        run(&args).await?;
        Ok(plane)
    }

    /// (Re)starts kube-scheduler with the configuration shipped for the server's version,
    /// its extender at `extender_url`.
    pub async fn scheduler(&self, extender_url: &str) -> anyhow::Result<()> {
        run(&[
            "scheduler".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--extender".into(),
            extender_url.into(),
        ])
        .await
    }

    /// How many scheduling attempts of kube-scheduler ended with `result` (`scheduled`,
    /// `unschedulable`, `error`), from its `scheduler_schedule_attempts_total` metric; `None`
    /// while no scheduler runs. kube-scheduler 1.19 counts `scheduled` only once the pod is
    /// bound, after its volumes are.
    pub async fn schedule_attempts(&self, result: &str) -> Option<u64> {
        let label = format!("result=\"{result}\"");
        self.scheduler_metric("scheduler_schedule_attempts_total", Some(&label))
            .await
    }

    /// The sum of kube-scheduler's samples of `metric` (a counter, or a histogram's
    /// `_count`) whose labels contain `label`; `None` while no scheduler runs.
    pub async fn scheduler_metric(&self, metric: &str, label: Option<&str>) -> Option<u64> {
        let port: u16 = std::fs::read_to_string(self.dir.join("scheduler-port"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let (status, body) = crate::net::get(port, "/metrics").await?;
        if status != 200 {
            return None;
        }
        let total: f64 = body
            .lines()
            .filter(|l| {
                l.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                    && label.is_none_or(|label| l.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total as u64)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The control plane's state directory (logs `*.log` of each process).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of each process's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["apiserver", "controller-manager", "scheduler"] {
            let path = self.dir.join(format!("{name}.log"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "----- last {} lines of {} -----\n{}\n",
                tail.len(),
                path.display(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running scripts/real-cluster")?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/real-cluster {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
