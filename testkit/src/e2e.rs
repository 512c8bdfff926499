//! Running the real `stowage` binary in tests: a [`Cluster`] to talk to and [`Role`]
//! processes that can be killed and restarted.
//!
//! ```text
//!   Cluster::start()   STOWAGE_E2E unset: an in-memory ApiServer + its kubeconfig
//!                      STOWAGE_E2E=real: a real control plane of its own (crate::real)
//!   cluster.role(bin, "agent-n1").arg(..).env(..).spawn()
//!        │   stdout + stderr appended to <tempdir>/agent-n1.log, printed if the test panics
//!        ├── kill()      SIGKILL, as a node crash or OOM kill does
//!        ├── restart()   same args and env, same log file
//!        └── drop        SIGKILL and reap: no stray processes, even when the test fails
//! ```
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_stowage")` exists only in
//! the stowage package's integration tests and benches). On the real lane each test gets a
//! fresh etcd, kube-apiserver and kube-controller-manager, and kube-scheduler once the test
//! knows where its extender listens ([`Cluster::start_scheduler`]); Nodes go through
//! [`Cluster::add_node`], which does what a kubelet and the node lifecycle controller would.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

use crate::ApiServer;
use crate::real::{self, ControlPlane, UpOptions};

/// The API server the e2e tests run against, with a scratch directory for kubeconfig,
/// logs and test files. Dropping it stops the in-memory server or the real control plane,
/// and removes the directory.
pub struct Cluster {
    server: Option<ApiServer>,
    client: kube::Client,
    kubeconfig: PathBuf,
    plane: Option<ControlPlane>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// On the real lane ([`real::lane_is_real`]) a control plane of its own, else a fresh
    /// in-memory [`ApiServer`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&UpOptions::default()).await
    }

    /// [`Cluster::start`] with options for a real control plane (ignored in memory).
    pub async fn start_with(options: &UpOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("stowage-e2e-").tempdir()?;
        if real::lane_is_real() {
            let plane = ControlPlane::up(&dir.path().join("k8s"), options).await?;
            let kubeconfig = plane.kubeconfig();
            let config = kube::config::Kubeconfig::read_from(&kubeconfig)
                .with_context(|| format!("reading {}", kubeconfig.display()))?;
            let config = kube::Config::from_custom_kubeconfig(
                config,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("loading {}", kubeconfig.display()))?;
            let client = kube::Client::try_from(config)?;
            return Ok(Cluster {
                server: None,
                client,
                kubeconfig,
                plane: Some(plane),
                dir,
            });
        }
        let server = ApiServer::start().await?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        Ok(Cluster {
            client: server.client(),
            server: Some(server),
            kubeconfig,
            plane: None,
            dir,
        })
    }

    /// The real control plane, on the real lane.
    pub fn plane(&self) -> Option<&ControlPlane> {
        self.plane.as_ref()
    }

    /// Starts kube-scheduler (real lane only) with the shipped configuration, its extender
    /// at `extender_url`.
    pub async fn start_scheduler(&self, extender_url: &str) -> anyhow::Result<()> {
        let plane = self
            .plane
            .as_ref()
            .context("kube-scheduler runs on the real lane only")?;
        plane.scheduler(extender_url).await
    }

    /// Creates `node` as a kubelet registers it. On a real cluster the `not-ready` taint the
    /// TaintNodesByCondition admission plugin puts on a new Node is then taken off, as the
    /// node lifecycle controller does for a Ready node (it does not run here).
    pub async fn add_node(&self, node: &Node) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = node.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), node)
            .await
            .with_context(|| format!("creating Node {name}"))?;
        if self.is_real() {
            let taints = node.spec.as_ref().and_then(|s| s.taints.clone());
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
            )
            .await
            .with_context(|| format!("untainting Node {name}"))?;
        }
        Ok(())
    }

    /// The message of the latest `FailedScheduling` Event of pod `ns/name` (what a real
    /// kube-scheduler reports), if any.
    pub async fn scheduling_failure(&self, ns: &str, name: &str) -> Option<String> {
        let events = self.scheduling_failures(ns, name).await;
        events.into_iter().max_by_key(|(t, _)| *t).map(|(_, m)| m)
    }

    /// The messages of the Events with `reason` about the object named `object`, in
    /// namespace `ns` (`default` for a cluster-scoped object, as 1.19 records them); empty
    /// when the list fails, so a caller waits for them.
    pub async fn event_messages(&self, ns: &str, object: &str, reason: &str) -> Vec<String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let params =
            ListParams::default().fields(&format!("involvedObject.name={object},reason={reason}"));
        api.list(&params)
            .await
            .map(|l| l.items.into_iter().filter_map(|e| e.message).collect())
            .unwrap_or_default()
    }

    /// (time, message) of each `FailedScheduling` Event of pod `ns/name`. (Their counts
    /// are no measure of attempts: kube-scheduler's events client aggregates repeats into a
    /// series it writes back only every 30 minutes.)
    async fn scheduling_failures(&self, ns: &str, name: &str) -> Vec<(Option<Timestamp>, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={name},reason=FailedScheduling"
        ));
        let Ok(list) = api.list(&params).await else {
            return Vec::new();
        };
        list.items
            .into_iter()
            .map(|e| {
                let series = e.series.as_ref();
                let time = series
                    .and_then(|s| s.last_observed_time.as_ref())
                    .map(|t| t.0)
                    .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
                    .or_else(|| e.event_time.as_ref().map(|t| t.0));
                (time, e.message.unwrap_or_default())
            })
            .collect()
    }

    /// A client for the test itself.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The kubeconfig the processes get (`--kubeconfig`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The in-memory server, for fault injection and request counts; `None` on a real
    /// cluster, so tests that need it can skip with a reason.
    pub fn server(&self) -> Option<&ApiServer> {
        self.server.as_ref()
    }

    /// Whether this is a real cluster.
    pub fn is_real(&self) -> bool {
        self.server.is_none()
    }

    /// The scratch directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `prefix-<random>`: on a real cluster, names that cannot collide with earlier runs; on
    /// the in-memory one, harmless.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{:08x}", fastrand::u32(..))
    }

    /// Creates the CRDs that do not exist yet and waits until each is served.
    pub async fn install_crds(
        &self,
        crds: impl IntoIterator<Item = CustomResourceDefinition>,
    ) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            match api.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
            }
            let version = crd
                .spec
                .versions
                .iter()
                .find(|v| v.served)
                .map(|v| v.name.clone())
                .unwrap_or_default();
            let gvk = GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
            let dynamic: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            crate::wait_for(
                Duration::from_secs(30),
                &format!("CRD {name} is served"),
                || async { dynamic.list(&ListParams::default().limit(1)).await.is_ok() },
            )
            .await?;
        }
        Ok(())
    }

    /// A process of `binary` to configure and [`RoleBuilder::spawn`], logging into
    /// `<dir>/<name>.log`. `--kubeconfig` is not added: roles take it as a flag of their
    /// own subcommand, so pass [`Cluster::kubeconfig`] where it belongs.
    pub fn role(&self, binary: impl AsRef<Path>, name: &str) -> RoleBuilder {
        RoleBuilder {
            name: name.to_string(),
            binary: binary.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            log: self.dir.path().join(format!("{name}.log")),
        }
    }
}

/// A random version-4-shaped UUID in lowercase, e.g. for `pvc-<uuid>` volume names.
pub fn random_uuid() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// How to start a [`Role`].
#[derive(Clone, Debug)]
pub struct RoleBuilder {
    name: String,
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
}

impl RoleBuilder {
    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Starts the process.
    pub fn spawn(self) -> anyhow::Result<Role> {
        let mut role = Role {
            spec: self,
            child: None,
            starts: 0,
        };
        role.start()?;
        Ok(role)
    }
}

/// A running (or killed) stowage process. Dropping it kills it with SIGKILL and reaps it;
/// if the test is panicking, its log is printed first.
#[derive(Debug)]
pub struct Role {
    spec: RoleBuilder,
    child: Option<Child>,
    starts: u32,
}

impl Role {
    fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("opening {}", self.spec.log.display()))?;
        writeln!(
            log,
            "=== start {} of {}: {} {:?}",
            self.starts,
            self.spec.name,
            self.spec.binary.display(),
            self.spec.args
        )?;
        let stderr: File = log.try_clone()?;
        let mut cmd = Command::new(&self.spec.binary);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} ({})",
                self.spec.name,
                self.spec.binary.display()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// The process name given to [`Cluster::role`].
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL (no chance to clean up, as in a node crash) and reaps
    /// it. Killing a stopped process does nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (as the kubelet does when a pod is deleted), with the `kill` command,
    /// and leaves the process running to shut down by itself; see [`Role::wait_exit`].
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.spec.name))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed: {status}");
        Ok(())
    }

    /// Kills the process if it runs and starts it again with the same arguments,
    /// environment and log file.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next
    /// [`Role::restart`]; the running process is not touched.
    pub fn set_env(&mut self, key: impl AsRef<OsStr>, value: Option<&str>) {
        let key = key.as_ref().to_os_string();
        self.spec.env.retain(|(k, _)| *k != key);
        if let Some(value) = value {
            self.spec.env.push((key, value.into()));
        }
    }

    /// The exit status if the process has ended by itself; `None` while it runs.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the process to end by itself and returns its exit status.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let what = format!("{} exits", self.spec.name);
        crate::wait_until(timeout, &what, || {
            let status = self.try_exit();
            async move { status }
        })
        .await
    }

    /// Everything the process printed so far, over all its starts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}----- end of log of {} -----",
                self.spec.name,
                self.spec.log.display(),
                self.logs(),
                self.spec.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_role_logs_to_its_file_and_survives_kill_and_restart() {
        let cluster = Cluster::start().await.unwrap();
        if cluster.is_real() {
            return; // The self-test needs no cluster; skip the duplicate run.
        }
        let mut role = cluster
            .role("/bin/sh", "sleeper")
            .arg("-c")
            .arg("echo started $GREETING; exec sleep 60")
            .env("GREETING", "hello")
            .spawn()
            .unwrap();
        crate::wait_for(
            Duration::from_secs(5),
            "the first line is logged",
            || async { role.logs().contains("started hello") },
        )
        .await
        .unwrap();
        let first = role.pid().unwrap();
        assert!(role.try_exit().is_none());
        role.restart().unwrap();
        assert_ne!(role.pid().unwrap(), first);
        crate::wait_for(
            Duration::from_secs(5),
            "the second start is logged",
            || async { role.logs().matches("started hello").count() == 2 },
        )
        .await
        .unwrap();
        assert!(role.logs().contains("=== start 2 of sleeper"));
        role.kill();
        assert_eq!(role.pid(), None);
        // The process is really gone: /proc has no entry for it.
        assert!(!Path::new(&format!("/proc/{first}")).exists());
    }

    #[test]
    fn random_uuids_are_shaped_8_4_4_4_12_and_differ() {
        let a = random_uuid();
        let lens: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{a}");
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, random_uuid());
    }

    #[tokio::test]
    async fn wait_exit_reports_how_a_process_ended() {
        let cluster = Cluster::start().await.unwrap();
        let mut role = cluster
            .role("/bin/sh", "failing")
            .arg("-c")
            .arg("echo bad config >&2; exit 3")
            .spawn()
            .unwrap();
        let status = role.wait_exit(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(role.logs().contains("bad config"));
    }
}
