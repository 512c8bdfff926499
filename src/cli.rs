//! The command line: roles as subcommands, global logging flags.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::agent::AgentArgs;
use crate::controller::ControllerArgs;
use crate::extender_role::ExtenderRoleArgs;
use crate::simulate::SimulateArgs;

/// Exit status for bad input (unknown flags, invalid values, malformed files), as clap uses.
pub const EXIT_USAGE: u8 = 2;

/// stowage: node-local and multi-NFS persistent volumes for Kubernetes, placed by free
/// capacity.
#[derive(Debug, Parser)]
#[command(name = "stowage", version, propagate_version = true)]
pub struct Cli {
    /// Logging flags, valid for every subcommand.
    #[command(flatten)]
    pub log: LogArgs,

    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles and tools of the stowage binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision and delete volumes for stowage StorageClasses and serve the scheduler
    /// extender (Deployment, leader-elected).
    Controller(ControllerArgs),
    /// Own the storage pools of one node: make, grow and delete volumes, report capacity
    /// (DaemonSet).
    Agent(AgentArgs),
    /// Serve only the kube-scheduler extender, read-only, for scaling it out.
    Extender(ExtenderRoleArgs),
    /// Place a stream of claims on a simulated cluster and compare placement policies; no
    /// cluster needed.
    Simulate(Box<SimulateArgs>),
    /// Print the CustomResourceDefinitions of StorageNode and LocalVolume as YAML.
    Crds(CrdsArgs),
    /// Print the version.
    Version,
}

/// Flags of `stowage crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Print the CRDs with the transition rules Kubernetes 1.25 and later enforce
    /// (x-kubernetes-validations: a LocalVolume's node, pool and claim are fixed, its size
    /// only grows), as deploy/optional-crds-cel.yaml holds them. Without it, the CRDs every
    /// Kubernetes from 1.19 accepts (deploy/crds.yaml).
    #[arg(long)]
    pub cel: bool,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[value(alias = "plain")]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags that control logging; `RUST_LOG` sets levels (default `info`, or `info` with
/// stowage's own logs at `debug` when the NFS source design's `LOG=true` is set).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format: text (alias plain) or json. Logs go to stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "STOWAGE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber.
    pub fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let verbose = std::env::var(crate::nfs::config::ENV_LOG)
            .ok()
            .and_then(|v| crate::nfs::config::parse_go_bool(&v))
            .unwrap_or(false);
        let default = if verbose {
            "info,stowage=debug"
        } else {
            "info"
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(std::io::stderr);
        // A second init (in tests) fails harmlessly: keep the first subscriber.
        let _ = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
    }
}

/// Whether text logs get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>). Logs collected from a file or a pod's stderr
/// stay plain.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(!colour(false, None), "a file or pipe gets no ANSI codes");
        assert!(colour(true, None));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "NO_COLOR= (empty) is unset"
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn crds_takes_cel() {
        let cli = Cli::try_parse_from(["stowage", "crds", "--cel"]).unwrap();
        assert!(matches!(cli.command, Command::Crds(CrdsArgs { cel: true })));
        let cli = Cli::try_parse_from(["stowage", "crds"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Crds(CrdsArgs { cel: false })
        ));
    }

    #[test]
    fn help_lists_every_role() {
        let help = Cli::command().render_help().to_string();
        for role in [
            "controller",
            "agent",
            "extender",
            "simulate",
            "crds",
            "version",
        ] {
            assert!(help.contains(role), "{role} missing from:\n{help}");
        }
    }

    #[test]
    fn controller_flags_have_defaults_and_help() {
        let cli = Cli::try_parse_from(["stowage", "controller"]).unwrap();
        let Command::Controller(args) = cli.command else {
            panic!("not the controller")
        };
        assert_eq!(args.listen.to_string(), "0.0.0.0:8888");
        assert_eq!(args.provisioner_name, "local.stowage.io");
        assert_eq!(
            (args.stale_after, args.node_gone_grace, args.workers),
            (45, 300, 32)
        );
        assert!(Cli::try_parse_from(["stowage", "controller", "--workers", "0"]).is_err());
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("controller")
            .unwrap()
            .render_long_help()
            .to_string();
        for flag in [
            "--listen",
            "--kubeconfig",
            "--stale-after",
            "--provisioner-name",
            "--node-gone-grace",
            "--workers",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
    }

    /// docs/flags.md has a row for every flag of the three long-running roles, with its
    /// environment variable: a flag added without its documentation fails here.
    #[test]
    fn docs_flags_lists_every_flag_with_its_environment_variable() {
        let doc = include_str!("../docs/flags.md");
        let mut cmd = Cli::command();
        for role in ["agent", "controller", "extender"] {
            let section = doc
                .split(&format!("## `stowage {role}`"))
                .nth(1)
                .unwrap_or_else(|| panic!("docs/flags.md has no section for {role}"));
            let section = section.split("\n## ").next().unwrap();
            let sub = cmd.find_subcommand_mut(role).unwrap();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if ["help", "log-format"].contains(&long) {
                    continue;
                }
                let head = format!("| `--{long}");
                let row = section
                    .lines()
                    .find(|l| {
                        l.strip_prefix(&head)
                            .is_some_and(|rest| rest.starts_with('`') || rest.starts_with('['))
                    })
                    .unwrap_or_else(|| panic!("docs/flags.md: stowage {role} --{long} has no row"));
                if let Some(env) = arg.get_env() {
                    let env = env.to_string_lossy();
                    assert!(
                        row.contains(&format!("`{env}`")),
                        "docs/flags.md: stowage {role} --{long}: env {env} missing from {row}"
                    );
                }
            }
        }
    }

    #[test]
    fn log_format_is_global_and_accepts_plain() {
        let cli = Cli::try_parse_from(["stowage", "simulate", "--log-format", "plain"]).unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["stowage", "--log-format", "json", "version"]).unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
    }
}
