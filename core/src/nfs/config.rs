//! The NFS servers the controller spreads volumes over: from a YAML file, or from the source
//! design's environment for drop-in use.
//!
//! The file (strict: unknown fields are refused, so a typo cannot silently drop a setting):
//!
//! ```yaml
//! provisionerName: nfs.stowage.io   # optional; the StorageClass `provisioner`
//! epsilon: 0.25                     # optional; bounded loads: no server above 1.25 x its mean share
//! mountBase: /persistent-volumes    # optional; default mount of a server: <mountBase>/<name>
//! servers:
//!   - name: nfs-a                   # unique; letters, digits, '.', '_', '-'; never change it
//!     address: 10.0.0.11            # what PVs mount (nfs.server)
//!     export: /exports/k8s          # the exported directory (PVs get <export>/<namespace>/<claim>)
//!     mount: /persistent-volumes/nfs-a  # where the controller pod has that export mounted
//!     weight: 4Ti                   # optional: ring weight as if it had this capacity
//!     drain: false                  # optional: true = no new volumes here
//! ```
//!
//! The environment of the source design (`shoogoome/nfs-cluster-provisioner`):
//!
//! | variable | meaning |
//! |---|---|
//! | `PROVISIONER_NAME` | the StorageClass `provisioner` (default `nfs.stowage.io`) |
//! | `NFS_SERVER` | server addresses, colon-separated: `10.0.0.11:10.0.0.12` |
//! | `NFS_PATH` | export paths in the same order, colon-separated: `/exports/a:/exports/b` |
//! | `LOG` | `true` for verbose logs |
//!
//! In environment mode each server is named after its address and its export must be
//! mounted at `<mount base>/<address>` (the source design's `/persistent-volumes/<server>`),
//! so an existing Deployment's volume mounts keep working. The colon separator cannot carry
//! IPv6 addresses and one address cannot serve two exports; use the file for those.
//!
//! Parsing is pure ([`NfsConfig::parse_yaml`], [`NfsConfig::from_env_map`]); the mounts are
//! checked apart ([`NfsConfig::check_mounts`]) so tests need neither real mounts nor the
//! process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::ring::Epsilon;
use crate::ledger::Bytes;
use crate::names;

/// Where the source design mounts the exports in the provisioner pod.
pub const DEFAULT_MOUNT_BASE: &str = "/persistent-volumes";

/// Environment variable: the provisioner name.
pub const ENV_PROVISIONER_NAME: &str = "PROVISIONER_NAME";
/// Environment variable: colon-separated server addresses.
pub const ENV_NFS_SERVER: &str = "NFS_SERVER";
/// Environment variable: colon-separated export paths, in the order of [`ENV_NFS_SERVER`].
pub const ENV_NFS_PATH: &str = "NFS_PATH";
/// Environment variable: `true` for verbose logs.
pub const ENV_LOG: &str = "LOG";

/// The name of an NFS server: 1–253 of letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit (so `.` and `..` are impossible). Ring positions derive from it, so
/// renaming a server re-places fresh keys (existing volumes stay where they are).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerName(String);

impl ServerName {
    /// Validates a server name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(ServerName(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid server name; use 1-253 letters, digits, '.', '_' and '-', starting with a letter or digit"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One NFS server (one export), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Its name: the metric label and the seed of its ring points.
    pub name: ServerName,
    /// The address PVs mount (`spec.nfs.server`).
    pub address: String,
    /// The exported directory, absolute and normalised (`spec.nfs.path` is below it).
    pub export: String,
    /// Where the controller sees the export.
    pub mount: PathBuf,
    /// A ring weight overriding the measured capacity, as a capacity in bytes.
    pub weight: Option<Bytes>,
    /// No new volumes on this server; existing ones stay and are deleted normally.
    pub drain: bool,
}

/// The validated NFS configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NfsConfig {
    /// The provisioner name StorageClasses use.
    pub provisioner_name: String,
    /// ε of bounded loads.
    pub epsilon: Epsilon,
    /// Verbose logging asked for (`LOG=true`).
    pub verbose: bool,
    /// Classes of the flat and of the nested layout may provision side by side on these
    /// servers. Off by default: a flat `<namespace>-<claim>` can be a nested namespace's
    /// directory. Not read from the file or the environment: set from the controller's
    /// `--nfs-allow-mixed-layouts`.
    pub allow_mixed_layouts: bool,
    /// The servers, in config order.
    pub servers: Vec<ServerSpec>,
}

/// Why the NFS configuration was refused. Every message names the entry and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML of the expected shape; the message carries the location.
    #[error("NFS config is not valid: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The config file could not be read.
    #[error("cannot read the NFS config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No servers at all.
    #[error("NFS config lists no servers; {hint}")]
    Empty {
        /// How to add one, for the mode in use.
        hint: &'static str,
    },
    /// A top-level setting is wrong.
    #[error("NFS config: {field}: {message}")]
    Setting {
        /// The setting (YAML key or environment variable).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// One field of one server is wrong.
    #[error("NFS config: server {server}: {field}: {message}")]
    Field {
        /// The server's name, or `#<n>` (1-based) when the name is unusable.
        server: String,
        /// The field (YAML key or environment variable).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `NFS_SERVER` and `NFS_PATH` list different numbers of entries.
    #[error(
        "NFS_SERVER lists {servers} servers but NFS_PATH lists {paths} export paths; give one export path per server, in the same order, both colon-separated"
    )]
    LengthMismatch {
        /// Entries in `NFS_SERVER`.
        servers: usize,
        /// Entries in `NFS_PATH`.
        paths: usize,
    },
    /// Two servers share something that must be unique.
    #[error("NFS config: servers {first} and {second} both use {field} {value:?}; {fix}")]
    Duplicate {
        /// The earlier server.
        first: String,
        /// The later server.
        second: String,
        /// What they share.
        field: &'static str,
        /// The shared value.
        value: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// A server's mount is missing or not a directory.
    #[error("NFS server {server}: mount {path}: {message}")]
    Mount {
        /// The server.
        server: String,
        /// The mount path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    provisioner_name: Option<String>,
    #[serde(default)]
    epsilon: Option<f64>,
    #[serde(default)]
    mount_base: Option<PathBuf>,
    #[serde(default)]
    servers: Vec<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServer {
    name: String,
    address: String,
    export: String,
    #[serde(default)]
    mount: Option<PathBuf>,
    #[serde(default)]
    weight: Option<RawQuantity>,
    #[serde(default)]
    drain: bool,
}

/// A quantity written as a number (bytes) or a string (`4Ti`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawQuantity {
    Number(u64),
    Text(String),
}

impl NfsConfig {
    /// Parses and validates the YAML config file's text. Does not touch the filesystem.
    pub fn parse_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text)?;
        let provisioner_name = provisioner_name(raw.provisioner_name, "provisionerName")?;
        let epsilon = match raw.epsilon {
            None => Epsilon::default(),
            Some(e) => Epsilon::new(e).map_err(|message| ConfigError::Setting {
                field: "epsilon",
                message,
            })?,
        };
        if let Some(base) = &raw.mount_base {
            check_abs_path(base).map_err(|message| ConfigError::Setting {
                field: "mountBase",
                message,
            })?;
        }
        if raw.servers.is_empty() {
            return Err(ConfigError::Empty {
                hint: "add at least one entry under `servers:` with name, address, export and mount",
            });
        }
        let mut servers = Vec::with_capacity(raw.servers.len());
        for (i, s) in raw.servers.into_iter().enumerate() {
            let at = format!("#{}", i + 1);
            let name = ServerName::parse(s.name.trim()).map_err(|message| ConfigError::Field {
                server: at.clone(),
                field: "name",
                message,
            })?;
            let field = |field, message| ConfigError::Field {
                server: name.to_string(),
                field,
                message,
            };
            let address = check_address(&s.address).map_err(|m| field("address", m))?;
            let export = normalise_export(&s.export).map_err(|m| field("export", m))?;
            let mount = match (s.mount, &raw.mount_base) {
                (Some(m), _) => m,
                (None, Some(base)) => base.join(name.as_str()),
                (None, None) => {
                    return Err(field(
                        "mount",
                        "missing; give the directory where the controller pod mounts this export, or set mountBase to use <mountBase>/<name>".to_string(),
                    ));
                }
            };
            check_abs_path(&mount).map_err(|m| field("mount", m))?;
            let weight = match s.weight {
                None => None,
                Some(RawQuantity::Number(n)) => Some(Bytes(n)),
                Some(RawQuantity::Text(t)) => Some(t.parse::<Bytes>().map_err(|e| {
                    field(
                        "weight",
                        format!("{e}; write a capacity such as 4Ti or leave it out to use the measured capacity"),
                    )
                })?),
            };
            if weight == Some(Bytes::ZERO) {
                return Err(field(
                    "weight",
                    "0 would give the server no share of the ring; use drain: true to stop new volumes on it".to_string(),
                ));
            }
            servers.push(ServerSpec {
                name,
                address,
                export,
                mount,
                weight,
                drain: s.drain,
            });
        }
        check_unique(&servers)?;
        Ok(NfsConfig {
            provisioner_name,
            epsilon,
            verbose: false,
            allow_mixed_layouts: false,
            servers,
        })
    }

    /// Builds the config from the source design's environment, given as a map (tests pass
    /// their own; [`NfsConfig::from_process_env`] passes the real one). Each export must be
    /// mounted at `<mount_base>/<address>`. Returns `Ok(None)` when neither `NFS_SERVER` nor
    /// `NFS_PATH` is set (NFS mode is then configured by file or not at all).
    pub fn from_env_map(
        env: &BTreeMap<String, String>,
        mount_base: &Path,
    ) -> Result<Option<Self>, ConfigError> {
        let servers_var = env.get(ENV_NFS_SERVER);
        let paths_var = env.get(ENV_NFS_PATH);
        let (servers_var, paths_var) = match (servers_var, paths_var) {
            (None, None) => return Ok(None),
            (Some(s), Some(p)) => (s, p),
            (Some(_), None) => {
                return Err(ConfigError::Setting {
                    field: ENV_NFS_PATH,
                    message: "is not set but NFS_SERVER is; set it to the export paths, colon-separated, in NFS_SERVER's order".to_string(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Setting {
                    field: ENV_NFS_SERVER,
                    message: "is not set but NFS_PATH is; set it to the server addresses, colon-separated, in NFS_PATH's order".to_string(),
                });
            }
        };
        let provisioner_name =
            provisioner_name(env.get(ENV_PROVISIONER_NAME).cloned(), ENV_PROVISIONER_NAME)?;
        let verbose = match env.get(ENV_LOG) {
            None => false,
            Some(v) => parse_go_bool(v).ok_or_else(|| ConfigError::Setting {
                field: ENV_LOG,
                message: format!("{v:?} is not a boolean; use \"true\" or \"false\""),
            })?,
        };
        check_abs_path(mount_base).map_err(|message| ConfigError::Setting {
            field: "mount base",
            message,
        })?;
        let addresses = split_list(servers_var, ENV_NFS_SERVER)?;
        let exports = split_list(paths_var, ENV_NFS_PATH)?;
        if addresses.is_empty() {
            return Err(ConfigError::Empty {
                hint: "set NFS_SERVER to the server addresses, colon-separated",
            });
        }
        if addresses.len() != exports.len() {
            return Err(ConfigError::LengthMismatch {
                servers: addresses.len(),
                paths: exports.len(),
            });
        }
        let mut servers = Vec::with_capacity(addresses.len());
        for (i, (addr, export)) in addresses.iter().zip(&exports).enumerate() {
            let at = format!("#{} ({addr})", i + 1);
            let address = check_address(addr).map_err(|message| ConfigError::Field {
                server: at.clone(),
                field: ENV_NFS_SERVER,
                message,
            })?;
            let name = ServerName::parse(&address).map_err(|message| ConfigError::Field {
                server: at.clone(),
                field: ENV_NFS_SERVER,
                message: format!(
                    "{message} (in NFS_SERVER mode a server is named after its address)"
                ),
            })?;
            let export = normalise_export(export).map_err(|message| ConfigError::Field {
                server: at.clone(),
                field: ENV_NFS_PATH,
                message,
            })?;
            servers.push(ServerSpec {
                mount: mount_base.join(name.as_str()),
                name,
                address,
                export,
                weight: None,
                drain: false,
            });
        }
        check_unique(&servers)?;
        Ok(Some(NfsConfig {
            provisioner_name,
            epsilon: Epsilon::default(),
            verbose,
            allow_mixed_layouts: false,
            servers,
        }))
    }

    /// [`NfsConfig::from_env_map`] over the process environment.
    pub fn from_process_env(mount_base: &Path) -> Result<Option<Self>, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_env_map(&env, mount_base)
    }

    /// Reads and parses the config file at `path`.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_yaml(&text)
    }

    /// Checks that every server's mount is an existing directory, and that no two mounts
    /// are the same directory. Call it once at start-up: a missing mount is a deployment
    /// mistake (the export is not mounted into the controller pod), not a server outage.
    pub fn check_mounts(&self) -> Result<(), ConfigError> {
        let mut seen: HashMap<PathBuf, &ServerName> = HashMap::new();
        for s in &self.servers {
            let err = |message: String| ConfigError::Mount {
                server: s.name.to_string(),
                path: s.mount.clone(),
                message,
            };
            let canonical = match fs::metadata(&s.mount) {
                Ok(meta) if meta.is_dir() => fs::canonicalize(&s.mount)
                    .map_err(|e| err(format!("cannot be resolved: {e}")))?,
                Ok(_) => {
                    return Err(err(
                        "is not a directory; mount the server's export there".to_string()
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(err(format!(
                        "does not exist; mount the export {}:{} there in the controller pod (a volume of type nfs with a volumeMount)",
                        s.address, s.export
                    )));
                }
                Err(e) => return Err(err(format!("cannot be read: {e}"))),
            };
            if let Some(first) = seen.insert(canonical.clone(), &s.name) {
                return Err(ConfigError::Duplicate {
                    first: first.to_string(),
                    second: s.name.to_string(),
                    field: "mount directory",
                    value: canonical.display().to_string(),
                    fix: "each server needs its own mount",
                });
            }
        }
        Ok(())
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&ServerSpec> {
        self.servers.iter().find(|s| s.name.as_str() == name)
    }
}

fn provisioner_name(value: Option<String>, field: &'static str) -> Result<String, ConfigError> {
    let Some(v) = value else {
        return Ok(names::PROVISIONER_NFS.to_string());
    };
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 316
        && v.matches('/').count() <= 1
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(ConfigError::Setting {
            field,
            message: format!(
                "{v:?} is not a valid provisioner name; use letters, digits, '.', '_', '-' and at most one '/', e.g. nfs.stowage.io"
            ),
        })
    }
}

/// Go's `strconv.ParseBool`, which the source design used.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Splits a colon-separated list; an empty entry is an error naming its position.
fn split_list(value: &str, var: &'static str) -> Result<Vec<String>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = value.split(':').map(|p| p.trim().to_string()).collect();
    if let Some(i) = parts.iter().position(String::is_empty) {
        return Err(ConfigError::Setting {
            field: var,
            message: format!(
                "entry {} of {} is empty in {value:?}; remove the doubled, leading or trailing colon",
                i + 1,
                parts.len()
            ),
        });
    }
    Ok(parts)
}

fn check_address(a: &str) -> Result<String, String> {
    let a = a.trim();
    if a.is_empty() {
        return Err("is empty; give the server's IP address or host name".to_string());
    }
    if a.chars().any(|c| c.is_whitespace() || c == '/' || c == ',') {
        return Err(format!(
            "{a:?} is not an address; give only the IP address or host name (the export path goes in export / NFS_PATH)"
        ));
    }
    Ok(a.to_string())
}

/// An export path: absolute, no `.`/`..` components, no doubled or trailing slashes.
fn normalise_export(p: &str) -> Result<String, String> {
    let p = p.trim();
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not an absolute path; write the export as the server exports it, e.g. /exports/k8s"
        ));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" => {}
            "." | ".." => {
                return Err(format!(
                    "{p:?} contains {c:?}; write the export path without . or .. components"
                ));
            }
            c if c.contains('\0') => return Err(format!("{p:?} contains a NUL byte")),
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn check_abs_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{} contains ..; write it without", p.display()));
    }
    Ok(())
}

fn check_unique(servers: &[ServerSpec]) -> Result<(), ConfigError> {
    for (j, b) in servers.iter().enumerate() {
        for a in &servers[..j] {
            let dup = |field, value: String, fix| ConfigError::Duplicate {
                first: a.name.to_string(),
                second: b.name.to_string(),
                field,
                value,
                fix,
            };
            if a.name == b.name {
                return Err(dup(
                    "name",
                    a.name.to_string(),
                    "give each server its own name (in NFS_SERVER mode: list each address once)",
                ));
            }
            if a.address == b.address && a.export == b.export {
                return Err(dup(
                    "export",
                    format!("{}:{}", a.address, a.export),
                    "list each export once",
                ));
            }
            if a.mount == b.mount {
                return Err(dup(
                    "mount",
                    a.mount.display().to_string(),
                    "each server needs its own mount",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env_err(pairs: &[(&str, &str)]) -> String {
        NfsConfig::from_env_map(&env(pairs), Path::new("/pv"))
            .unwrap_err()
            .to_string()
    }

    const FILE: &str = r#"
provisionerName: example.com/nfs
epsilon: 0.5
mountBase: /mnt/nfs
servers:
  - name: nfs-a
    address: 10.0.0.11
    export: /exports//k8s/
    mount: /srv/a
    weight: 4Ti
  - name: nfs-b
    address: nfs-b.example.com
    export: /k8s
    weight: 1099511627776
    drain: true
"#;

    #[test]
    fn the_config_file_is_parsed_with_defaults_and_normalised_exports() {
        let c = NfsConfig::parse_yaml(FILE).unwrap();
        assert_eq!(c.provisioner_name, "example.com/nfs");
        assert_eq!(c.epsilon.get(), 0.5);
        assert!(!c.verbose);
        let a = &c.servers[0];
        assert_eq!(a.name.as_str(), "nfs-a");
        assert_eq!(a.export, "/exports/k8s");
        assert_eq!(a.mount, PathBuf::from("/srv/a"));
        assert_eq!(a.weight, Some(Bytes::tib(4)));
        assert!(!a.drain);
        let b = &c.servers[1];
        assert_eq!(b.mount, PathBuf::from("/mnt/nfs/nfs-b"), "mountBase/name");
        assert_eq!(b.weight, Some(Bytes::tib(1)));
        assert!(b.drain);

        let minimal =
            NfsConfig::parse_yaml("servers: [{name: x, address: 1.2.3.4, export: /e, mount: /m}]")
                .unwrap();
        assert_eq!(minimal.provisioner_name, names::PROVISIONER_NFS);
        assert_eq!(minimal.epsilon, Epsilon::default());
        assert_eq!(minimal.servers[0].weight, None);
    }

    #[test]
    fn config_file_mistakes_are_refused_with_the_entry_and_the_fix() {
        for (text, want) in [
            ("servers: []", "lists no servers"),
            ("", "lists no servers"),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m, weigth: 1}]",
                "unknown field `weigth`",
            ),
            ("sever: []", "unknown field `sever`"),
            (
                "servers: [{name: a, address: x, export: /e}]",
                "server a: mount: missing; give the directory",
            ),
            (
                "servers: [{name: a, address: x, export: e, mount: /m}]",
                "server a: export: \"e\" is not an absolute path",
            ),
            (
                "servers: [{name: a, address: x, export: /e/../f, mount: /m}]",
                "contains \"..\"",
            ),
            (
                "servers: [{name: a, address: '10.0.0.1:/e', export: /e, mount: /m}]",
                "server a: address",
            ),
            (
                "servers: [{name: '', address: x, export: /e, mount: /m}]",
                "server #1: name",
            ),
            (
                "servers: [{name: '..', address: x, export: /e, mount: /m}]",
                "not a valid server name",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: m}]",
                "server a: mount: m is not an absolute path",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m, weight: 0}]",
                "use drain: true",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m, weight: lots}]",
                "server a: weight",
            ),
            (
                "epsilon: -1\nservers: [{name: a, address: x, export: /e, mount: /m}]",
                "epsilon",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m}, {name: a, address: y, export: /e, mount: /n}]",
                "servers a and a both use name \"a\"",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m}, {name: b, address: x, export: /e/, mount: /n}]",
                "servers a and b both use export \"x:/e\"",
            ),
            (
                "servers: [{name: a, address: x, export: /e, mount: /m}, {name: b, address: y, export: /e, mount: /m}]",
                "both use mount \"/m\"",
            ),
        ] {
            let err = NfsConfig::parse_yaml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_source_designs_environment_is_accepted() {
        let c = NfsConfig::from_env_map(
            &env(&[
                ("PROVISIONER_NAME", "fuseim.pri/ifs"),
                ("NFS_SERVER", "10.0.0.11:10.0.0.12: nfs-c.example.com"),
                ("NFS_PATH", "/data/a:/data/b/:/c"),
                ("LOG", "true"),
            ]),
            Path::new("/persistent-volumes"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.provisioner_name, "fuseim.pri/ifs");
        assert!(c.verbose);
        let got: Vec<(&str, &str, &str, PathBuf)> = c
            .servers
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.address.as_str(),
                    s.export.as_str(),
                    s.mount.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "10.0.0.11",
                    "10.0.0.11",
                    "/data/a",
                    PathBuf::from("/persistent-volumes/10.0.0.11")
                ),
                (
                    "10.0.0.12",
                    "10.0.0.12",
                    "/data/b",
                    PathBuf::from("/persistent-volumes/10.0.0.12")
                ),
                (
                    "nfs-c.example.com",
                    "nfs-c.example.com",
                    "/c",
                    PathBuf::from("/persistent-volumes/nfs-c.example.com")
                ),
            ]
        );

        let quiet = NfsConfig::from_env_map(
            &env(&[("NFS_SERVER", "h"), ("NFS_PATH", "/p"), ("LOG", "false")]),
            Path::new("/pv"),
        )
        .unwrap()
        .unwrap();
        assert!(!quiet.verbose);
        assert_eq!(quiet.provisioner_name, names::PROVISIONER_NFS);
        assert_eq!(
            NfsConfig::from_env_map(&env(&[("LOG", "true")]), Path::new("/pv")).unwrap(),
            None,
            "no NFS variables: no env config"
        );
    }

    #[test]
    fn bad_environment_lists_are_refused_with_the_entry_and_the_fix() {
        for (pairs, want) in [
            (
                &[("NFS_SERVER", "a:b:c"), ("NFS_PATH", "/x:/y")][..],
                "NFS_SERVER lists 3 servers but NFS_PATH lists 2",
            ),
            (
                &[("NFS_SERVER", "a"), ("NFS_PATH", "/x:/y")][..],
                "lists 1 servers but NFS_PATH lists 2",
            ),
            (
                &[("NFS_SERVER", "a::b"), ("NFS_PATH", "/x:/y:/z")][..],
                "NFS_SERVER: entry 2 of 3 is empty",
            ),
            (
                &[("NFS_SERVER", "a:b"), ("NFS_PATH", "/x:")][..],
                "NFS_PATH: entry 2 of 2 is empty",
            ),
            (
                &[("NFS_SERVER", "a:a"), ("NFS_PATH", "/x:/y")][..],
                "servers a and a both use name",
            ),
            (&[("NFS_SERVER", "a")][..], "NFS_PATH: is not set"),
            (&[("NFS_PATH", "/x")][..], "NFS_SERVER: is not set"),
            (
                &[("NFS_SERVER", ""), ("NFS_PATH", "")][..],
                "lists no servers",
            ),
            (
                &[("NFS_SERVER", "a"), ("NFS_PATH", "x")][..],
                "server #1 (a): NFS_PATH: \"x\" is not an absolute path",
            ),
            (
                &[("NFS_SERVER", "a b"), ("NFS_PATH", "/x")][..],
                "server #1 (a b): NFS_SERVER",
            ),
            (
                &[("NFS_SERVER", "a"), ("NFS_PATH", "/x"), ("LOG", "yes")][..],
                "LOG: \"yes\" is not a boolean",
            ),
            (
                &[
                    ("NFS_SERVER", "a"),
                    ("NFS_PATH", "/x"),
                    ("PROVISIONER_NAME", "a b"),
                ][..],
                "PROVISIONER_NAME",
            ),
        ] {
            let err = env_err(pairs);
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn missing_and_non_directory_mounts_are_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        let yaml = |b: &str| {
            format!(
                "mountBase: {}\nservers: [{{name: a, address: x, export: /a}}, {{name: {b}, address: y, export: /b}}]",
                dir.path().display()
            )
        };
        let missing = NfsConfig::parse_yaml(&yaml("b")).unwrap();
        let err = missing.check_mounts().unwrap_err().to_string();
        assert!(err.contains("NFS server b: mount"), "{err}");
        assert!(
            err.contains("does not exist; mount the export y:/b"),
            "{err}"
        );

        let file = NfsConfig::parse_yaml(&yaml("file")).unwrap();
        let err = file.check_mounts().unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");

        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("alias")).unwrap();
        let same = NfsConfig::parse_yaml(&yaml("alias")).unwrap();
        let err = same.check_mounts().unwrap_err().to_string();
        assert!(err.contains("both use mount directory"), "{err}");

        fs::create_dir(dir.path().join("b")).unwrap();
        NfsConfig::parse_yaml(&yaml("b"))
            .unwrap()
            .check_mounts()
            .unwrap();
    }

    #[test]
    fn go_booleans_are_the_source_designs_spellings() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_go_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_go_bool(f), Some(false), "{f}");
        }
        for bad in ["", "yes", "on", "tRue"] {
            assert_eq!(parse_go_bool(bad), None, "{bad}");
        }
    }
}
