//! The agent's pool config (a YAML file mounted from a ConfigMap) and the probe that turns a
//! configured pool into a ready/not-ready report with its capacity.
//!
//! ```yaml
//! pools:
//!   - name: default
//!     path: /var/lib/stowage/default
//!     driver: hostpath        # or btrfs; default hostpath
//!     reserve: 5%             # bytes (10Gi) or percent; default none
//!     capacity: 500Gi         # optional cap below the filesystem's size
//!     volumeMode: "0770"      # optional, quoted octal; default "0770"
//!     create: true            # make the path if it is missing; default false
//!     mode: "0755"            # with create: the new directories' mode; default "0755"
//! ```
//!
//! `create` is for a pool that is a plain directory on the node's own filesystem, such as
//! the shipped default under the agent's hostPath: a fresh node then needs no manual step.
//! It is allowed only under the agent's `--pool-root` (default `/var/lib/stowage/pools`,
//! the DaemonSet's hostPath): the root itself must exist (the hostPath makes it), and the
//! agent makes every missing directory between it and the pool, each with `mode`, through
//! plain directories only (a symlink on the way is refused, not followed). A `create` pool
//! outside the root is refused when the config is read. Leave `create` off for a pool that
//! is a disk's mount point: if the disk is not mounted, creating the directory would put
//! volumes on the root disk underneath it; the pool is then reported not ready instead,
//! until the disk is mounted.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::ledger::{Bytes, Driver, PoolName, PoolState, Reserve};

/// `statfs` `f_type` of a btrfs filesystem.
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;

pub use crate::fsutil::VolumeMode;

/// One configured pool, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name (a DNS label), as StorageClasses and the ledger name it.
    pub name: PoolName,
    /// The absolute directory holding the pool's volumes.
    pub path: PathBuf,
    /// How volumes are made.
    pub driver: Driver,
    /// Space kept back from volumes.
    pub reserve: Reserve,
    /// An optional cap on the capacity below the filesystem's size.
    pub capacity: Option<Bytes>,
    /// The mode of new volume directories.
    pub volume_mode: VolumeMode,
    /// Make the pool's directory when it is missing, and how (see the module docs).
    pub create: Option<Create>,
}

/// How the agent makes a missing pool directory (`create: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    /// The `--pool-root` the pool lies under: it must exist; everything below it is made.
    pub root: PathBuf,
    /// The mode of each directory made (`mode`, default `0755`).
    pub mode: VolumeMode,
}

/// Where the agent may make missing pool directories when `--pool-root` is not given: the
/// DaemonSet's hostPath.
pub const DEFAULT_POOL_ROOT: &str = "/var/lib/stowage/pools";

/// The mode of pool directories `create: true` makes when `mode` is not given: readable
/// and traversable by the node's users, writable by root only (the volumes below carry
/// their own, tighter `volumeMode`).
pub const DEFAULT_POOL_DIR_MODE: VolumeMode = VolumeMode(0o755);

/// The pool config file: its only job is [`PoolConfig::parse`].
#[derive(Debug)]
pub struct PoolConfig;

/// Why the pool config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML of the expected shape (unknown fields, wrong types); the message carries the
    /// location, e.g. `pools[0]: unknown field ...`.
    #[error("pool config is not valid: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// No pools at all.
    #[error("pool config lists no pools; add at least one under `pools:`")]
    Empty,
    /// One field of one pool is wrong.
    #[error("pool config: pool {pool:?}: {field}: {message}")]
    Field {
        /// The pool's name as written (or `#<index>` if the name itself is the problem).
        pool: String,
        /// The field, as written in YAML.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Two pools share a name or a path.
    #[error(
        "pool config: pools {first:?} and {second:?} both use {field} {value:?}; each must be unique"
    )]
    Duplicate {
        /// The earlier pool.
        first: String,
        /// The later pool.
        second: String,
        /// `name` or `path`.
        field: &'static str,
        /// The shared value.
        value: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pools: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    name: String,
    path: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    reserve: Option<Scalar>,
    #[serde(default)]
    capacity: Option<Scalar>,
    #[serde(default)]
    volume_mode: Option<Scalar>,
    #[serde(default)]
    create: bool,
    #[serde(default)]
    mode: Option<Scalar>,
}

/// A YAML scalar that may be written as a number or a string (`1073741824` or `10Gi`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Str(String),
}

impl PoolConfig {
    /// Parses and validates the config text; errors name the pool and the field. `root` is
    /// the agent's `--pool-root`: the only place `create: true` may make directories.
    pub fn parse(text: &str, root: &Path) -> Result<Vec<PoolSpec>, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text)?;
        if raw.pools.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut specs: Vec<PoolSpec> = Vec::with_capacity(raw.pools.len());
        for (i, pool) in raw.pools.into_iter().enumerate() {
            let spec = validate(i, pool, root)?;
            for earlier in &specs {
                let dup = |field, value: String| ConfigError::Duplicate {
                    first: earlier.name.to_string(),
                    second: spec.name.to_string(),
                    field,
                    value,
                };
                if earlier.name == spec.name {
                    return Err(dup("name", spec.name.to_string()));
                }
                if earlier.path == spec.path {
                    return Err(dup("path", spec.path.display().to_string()));
                }
                // One pool inside another would let each agent pass see the other's
                // volumes and count the same bytes twice.
                let (outer, inner) = if spec.path.starts_with(&earlier.path) {
                    (earlier, &spec)
                } else if earlier.path.starts_with(&spec.path) {
                    (&spec, earlier)
                } else {
                    continue;
                };
                return Err(ConfigError::Field {
                    pool: inner.name.to_string(),
                    field: "path",
                    message: format!(
                        "{} is inside the path {} of pool {:?}; pools must not nest, give each its own directory",
                        inner.path.display(),
                        outer.path.display(),
                        outer.name.to_string()
                    ),
                });
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

fn validate(index: usize, raw: RawPool, root: &Path) -> Result<PoolSpec, ConfigError> {
    if let Err(message) = check_dns_label(&raw.name) {
        return Err(ConfigError::Field {
            pool: format!("#{index}"),
            field: "name",
            message,
        });
    }
    let field = |field, message| ConfigError::Field {
        pool: raw.name.clone(),
        field,
        message,
    };
    if raw.path.contains('\0') {
        return Err(field(
            "path",
            format!(
                "{:?} contains a NUL byte; write a plain absolute path",
                raw.path
            ),
        ));
    }
    let path = PathBuf::from(&raw.path);
    if !path.is_absolute() {
        return Err(field(
            "path",
            format!(
                "{:?} is relative; write an absolute path such as /var/lib/stowage/{}",
                raw.path, raw.name
            ),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(field(
            "path",
            format!("{:?} contains \"..\"; write the path plainly", raw.path),
        ));
    }
    if path.parent().is_none() {
        return Err(field(
            "path",
            "a pool cannot be the filesystem root \"/\"".to_string(),
        ));
    }
    let driver = match &raw.driver {
        None => Driver::default(),
        Some(d) => d.parse().map_err(|e| field("driver", e))?,
    };
    let reserve = match &raw.reserve {
        None => Reserve::None,
        Some(Scalar::Int(0)) => Reserve::None,
        Some(Scalar::Int(n)) => Reserve::Bytes(Bytes(*n)),
        Some(Scalar::Str(s)) => s.parse().map_err(|e| field("reserve", format!("{e}")))?,
    };
    let capacity = match &raw.capacity {
        None => None,
        Some(Scalar::Int(n)) => Some(Bytes(*n)),
        Some(Scalar::Str(s)) => Some(
            s.parse::<Bytes>()
                .map_err(|e| field("capacity", format!("{e}")))?,
        ),
    };
    if capacity == Some(Bytes::ZERO) {
        return Err(field(
            "capacity",
            "must be more than zero; leave it out for no cap".to_string(),
        ));
    }
    let volume_mode = match &raw.volume_mode {
        None => VolumeMode::default(),
        Some(Scalar::Int(n)) => {
            return Err(field(
                "volumeMode",
                format!(
                    "{n} is a YAML number, which would not be read as octal; quote it, e.g. volumeMode: \"0770\""
                ),
            ));
        }
        Some(Scalar::Str(s)) => VolumeMode::parse_octal(s).map_err(|e| field("volumeMode", e))?,
    };
    let octal = |name: &'static str, value: &Scalar| match value {
        Scalar::Int(n) => Err(field(
            name,
            format!(
                "{n} is a YAML number, which would not be read as octal; quote it, e.g. {name}: \"0755\""
            ),
        )),
        Scalar::Str(s) => VolumeMode::parse_octal(s).map_err(|e| field(name, e)),
    };
    let create = match (raw.create, &raw.mode) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(field(
                "mode",
                "is the mode of the directories create: true makes; set create: true or drop mode"
                    .to_string(),
            ));
        }
        (true, mode) => {
            if !path.starts_with(root) {
                return Err(field(
                    "create",
                    format!(
                        "{} is outside the agent's --pool-root {}; create: true makes directories only under it (the DaemonSet's hostPath), so move the pool under {}, or make the directory on the node and drop create",
                        path.display(),
                        root.display(),
                        root.display()
                    ),
                ));
            }
            Some(Create {
                root: root.to_path_buf(),
                mode: mode
                    .as_ref()
                    .map(|m| octal("mode", m))
                    .transpose()?
                    .unwrap_or(DEFAULT_POOL_DIR_MODE),
            })
        }
    };
    Ok(PoolSpec {
        name: PoolName::from(raw.name.as_str()),
        path,
        driver,
        reserve,
        capacity,
        volume_mode,
        create,
    })
}

/// Pool names are DNS labels: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid pool name; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// What probing a pool found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolReport {
    /// The pool's name.
    pub name: PoolName,
    /// Its driver.
    pub driver: Driver,
    /// Its configured path.
    pub path: PathBuf,
    /// Whether volumes can be made in it.
    pub ready: bool,
    /// Why it is not ready (`None` when ready).
    pub reason: Option<String>,
    /// The filesystem's size, capped by the configured capacity; zero when not readable.
    pub capacity: Bytes,
    /// Space free to unprivileged users, capped by the capacity; `None` when not readable.
    pub available: Option<Bytes>,
    /// The reserve resolved against `capacity`.
    pub reserve: Bytes,
}

impl PoolReport {
    /// The report in ledger terms, with nothing allocated or reserved yet.
    pub fn pool_state(&self) -> PoolState {
        let mut state = PoolState::new(self.name.clone(), self.driver, self.capacity);
        state.reserve = self.reserve;
        state.available = self.available;
        state.ready = self.ready;
        state.message = self.reason.clone();
        state
    }
}

impl PoolSpec {
    /// Checks the pool's path on this node: it must be a directory (a btrfs one for the
    /// btrfs driver) whose filesystem size can be read.
    pub fn probe(&self) -> PoolReport {
        let mut report = PoolReport {
            name: self.name.clone(),
            driver: self.driver,
            path: self.path.clone(),
            ready: false,
            reason: None,
            capacity: Bytes::ZERO,
            available: None,
            reserve: Bytes::ZERO,
        };
        if let Err(reason) = self.check_path() {
            report.reason = Some(reason);
            return report;
        }
        match rustix::fs::statvfs(&self.path) {
            Ok(vfs) => {
                let size = Bytes(vfs.f_blocks.saturating_mul(vfs.f_frsize));
                let free = Bytes(vfs.f_bavail.saturating_mul(vfs.f_frsize));
                let capacity = self.capacity.map_or(size, |cap| cap.min(size));
                report.capacity = capacity;
                report.available = Some(free.min(capacity));
                report.reserve = self.reserve.resolve(capacity);
                report.ready = true;
            }
            Err(e) => {
                report.reason = Some(format!(
                    "cannot read the size of the filesystem at {}: {}",
                    self.path.display(),
                    io::Error::from(e)
                ));
            }
        }
        report
    }

    fn check_path(&self) -> Result<(), String> {
        let path = self.path.display();
        match fs::metadata(&self.path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{path} is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.create.is_some() => {
                self.make_path()?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "{path} does not exist; create it or mount the pool's disk there \
                     (or set create: true for a directory on the node's own filesystem)"
                ));
            }
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
        if self.driver == Driver::Btrfs {
            let fs_type = fs_type(&self.path)
                .map_err(|e| format!("cannot read the filesystem type of {path}: {e}"))?;
            if fs_type != BTRFS_SUPER_MAGIC {
                return Err(format!(
                    "driver btrfs needs a btrfs filesystem, but {path} is on filesystem type {fs_type:#x}; mount a btrfs filesystem there or use driver hostpath"
                ));
            }
        }
        Ok(())
    }
}

impl PoolSpec {
    /// Makes the missing pool directory (`create: true`): every missing directory from the
    /// `--pool-root` (which must exist) down to the pool, each with the configured mode.
    /// Each step is made or found as a plain directory; a symlink on the way is refused,
    /// never followed, so a path planted on the node cannot send the pool elsewhere.
    fn make_path(&self) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let Some(create) = &self.create else {
            return Ok(());
        };
        let root = &create.root;
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "the --pool-root {} is not a directory",
                    root.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "the --pool-root {} is not there ({e}); it is the agent's hostPath mount, check the DaemonSet's pools volume",
                    root.display()
                ));
            }
        }
        let below = self.path.strip_prefix(root).map_err(|_| {
            format!(
                "{} is outside the --pool-root {}",
                self.path.display(),
                root.display()
            )
        })?;
        let mut at = root.clone();
        for part in below.components() {
            at.push(part);
            let shown = at.display();
            match fs::DirBuilder::new().mode(create.mode.bits()).create(&at) {
                Ok(()) => {
                    // The umask may have taken bits off: set exactly what was configured.
                    fs::set_permissions(&at, fs::Permissions::from_mode(create.mode.bits()))
                        .map_err(|e| format!("cannot set mode {} on {shown}: {e}", create.mode))?;
                    tracing::info!(pool = %self.name, path = %shown, mode = %create.mode, "made a missing pool directory (create: true)");
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {shown} (create: true): {e}")),
            }
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(format!(
                        "{shown} is a symlink; create: true makes a pool only through plain directories under the --pool-root {}, so remove the link or make the pool directory yourself",
                        root.display()
                    ));
                }
                Ok(_) => return Err(format!("{shown} is not a directory")),
                Err(e) => return Err(format!("cannot read {shown}: {e}")),
            }
        }
        Ok(())
    }
}

/// The `statfs` `f_type` of the filesystem holding `path`.
fn fs_type(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statfs(path)?;
    // `f_type` is signed on some targets; the magic numbers are 32-bit.
    #[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
    let t = (st.f_type as u64) & 0xFFFF_FFFF;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' `--pool-root`: anywhere, unless a test is about the root.
    const ANYWHERE: &str = "/";

    fn one(text: &str) -> PoolSpec {
        let mut pools = PoolConfig::parse(text, Path::new(ANYWHERE)).unwrap();
        assert_eq!(pools.len(), 1);
        pools.remove(0)
    }

    fn err(text: &str) -> String {
        PoolConfig::parse(text, Path::new(ANYWHERE))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_full_pool_entry_parses() {
        let p = one(
            "pools:\n  - name: default\n    path: /var/lib/stowage/default\n    driver: btrfs\n    reserve: 5%\n    capacity: 500Gi\n    volumeMode: \"0750\"\n",
        );
        assert_eq!(p.name.as_str(), "default");
        assert_eq!(p.path, PathBuf::from("/var/lib/stowage/default"));
        assert_eq!(p.driver, Driver::Btrfs);
        assert_eq!(p.reserve, Reserve::BasisPoints(500));
        assert_eq!(p.capacity, Some(Bytes::gib(500)));
        assert_eq!(p.volume_mode, VolumeMode(0o750));
    }

    #[test]
    fn omitted_fields_take_their_defaults() {
        let p = one("pools:\n  - name: a\n    path: /a\n");
        assert_eq!(p.driver, Driver::Hostpath);
        assert_eq!(p.reserve, Reserve::None);
        assert_eq!(p.capacity, None);
        assert_eq!(p.volume_mode, VolumeMode(0o770));
        // serde_yaml keeps a leading-zero scalar as the string it looks like.
        let p = one("pools:\n  - name: a\n    path: /a\n    volumeMode: 0750\n");
        assert_eq!(p.volume_mode, VolumeMode(0o750));
        let p = one(
            "pools:\n  - name: a\n    path: /a\n    reserve: 1073741824\n    capacity: 2147483648\n",
        );
        assert_eq!(p.reserve, Reserve::Bytes(Bytes::gib(1)));
        assert_eq!(p.capacity, Some(Bytes::gib(2)));
    }

    #[test]
    fn config_errors_name_the_pool_and_the_field() {
        for (text, want) in [
            ("pools: []\n", vec!["no pools"]),
            (
                "pools:\n  - name: a\n    path: /a\n    colour: red\n",
                vec!["pools[0]", "unknown field `colour`"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\nextra: 1\n",
                vec!["unknown field `extra`"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n  - name: a\n    path: /b\n",
                vec!["\"a\"", "name", "unique"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n  - name: b\n    path: /a\n",
                vec!["\"a\"", "\"b\"", "path"],
            ),
            (
                "pools:\n  - name: Fast_SSD\n    path: /a\n",
                vec!["#0", "name", "Fast_SSD", "lowercase"],
            ),
            ("pools:\n  - name: -a\n    path: /a\n", vec!["#0", "name"]),
            (
                "pools:\n  - name: a\n    path: var/lib/a\n",
                vec!["\"a\"", "path", "relative"],
            ),
            (
                "pools:\n  - name: a\n    path: /var/../etc\n",
                vec!["path", "\"..\""],
            ),
            ("pools:\n  - name: a\n    path: /\n", vec!["path", "root"]),
            (
                "pools:\n  - name: a\n    path: \"/a\\0/b\"\n",
                vec!["\"a\"", "path", "NUL"],
            ),
            (
                "pools:\n  - name: a\n    path: ./a\n",
                vec!["\"a\"", "path", "relative"],
            ),
            (
                "pools:\n  - name: a\n    path: /var/lib/a/./../../../etc\n",
                vec!["path", "\"..\""],
            ),
            (
                "pools:\n  - name: a\n    path: /p\n  - name: b\n    path: /p/b\n",
                vec!["\"b\"", "path", "inside", "pool \"a\"", "nest"],
            ),
            (
                "pools:\n  - name: a\n    path: /p/a\n  - name: b\n    path: /p\n",
                vec!["\"a\"", "path", "inside", "pool \"b\"", "nest"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    driver: zfs\n",
                vec!["\"a\"", "driver", "zfs"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    reserve: 150%\n",
                vec!["\"a\"", "reserve"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    reserve: lots\n",
                vec!["\"a\"", "reserve", "lots"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    capacity: 5Zi\n",
                vec!["\"a\"", "capacity"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    capacity: 0\n",
                vec!["\"a\"", "capacity", "more than zero"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    volumeMode: 770\n",
                vec!["\"a\"", "volumeMode", "quote"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    volumeMode: \"0778\"\n",
                vec!["\"a\"", "volumeMode", "octal"],
            ),
            (
                "pools:\n  - name: a\n    path: /a\n    volumeMode: \"77\"\n",
                vec!["volumeMode", "octal"],
            ),
            ("pools:\n  - name: a\n", vec!["missing field `path`"]),
        ] {
            let e = err(text);
            for w in want {
                assert!(e.contains(w), "{text:?}: {e:?} lacks {w:?}");
            }
        }
    }

    fn spec(path: &Path, driver: Driver) -> PoolSpec {
        PoolSpec {
            name: PoolName::from("p"),
            path: path.to_path_buf(),
            driver,
            reserve: Reserve::BasisPoints(1000),
            capacity: None,
            volume_mode: VolumeMode::default(),
            create: None,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn create_makes_the_missing_directories_under_the_pool_root_with_the_configured_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pools");
        fs::create_dir(&root).unwrap();
        let text = |path: &Path, extra: &str| {
            format!(
                "pools:\n  - name: p\n    path: {}\n    create: true\n{extra}",
                path.display()
            )
        };
        let parse = |text: &str| PoolConfig::parse(text, &root).map(|mut p| p.remove(0));

        // The pool and the directory between it and the root are made, each with the mode
        // (0775 is wider than the usual umask allows: the mode is set, not masked).
        let deep = root.join("ssd/default");
        let s = parse(&text(&deep, "    mode: \"0775\"\n")).unwrap();
        let r = s.probe();
        assert!(r.ready, "{:?}", r.reason);
        assert_eq!(mode_of(&root.join("ssd")), 0o775);
        assert_eq!(mode_of(&deep), 0o775);
        // Again: it exists now, nothing changes.
        assert!(s.probe().ready);
        // Without mode, 0755.
        let plain = root.join("plain");
        assert!(parse(&text(&plain, "")).unwrap().probe().ready);
        assert_eq!(mode_of(&plain), 0o755);

        // Outside the root: refused when the config is read, naming the root and the fix;
        // nothing is made.
        let outside = dir.path().join("elsewhere/pool");
        let e = parse(&text(&outside, "")).unwrap_err().to_string();
        for want in [
            "pool \"p\": create:",
            "outside the agent's --pool-root",
            "move the pool under",
        ] {
            assert!(e.contains(want), "{e}");
        }
        assert!(!dir.path().join("elsewhere").exists());
        // A sibling whose name merely starts like the root is outside it too.
        let e = parse(&text(&dir.path().join("pools-other/x"), ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the agent's --pool-root"), "{e}");

        // A symlink on the way is refused, not followed: nothing is made where it points.
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        let r = parse(&text(&root.join("link/pool"), "")).unwrap().probe();
        assert!(!r.ready);
        assert!(
            r.reason.as_deref().unwrap().contains("is a symlink"),
            "{r:?}"
        );
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

        // A missing root (the hostPath not mounted): not ready, saying so; nothing is made.
        let gone = dir.path().join("gone");
        let spec = PoolConfig::parse(&text(&gone.join("pool"), ""), &gone)
            .unwrap()
            .remove(0);
        let r = spec.probe();
        assert!(!r.ready);
        assert!(
            r.reason.as_deref().unwrap().contains("--pool-root"),
            "{r:?}"
        );
        assert!(!gone.exists());

        // mode means nothing without create, and must be quoted octal.
        let e = err("pools:\n  - name: a\n    path: /a\n    mode: \"0755\"\n");
        assert!(e.contains("set create: true or drop mode"), "{e}");
        let e = err("pools:\n  - name: a\n    path: /a\n    create: true\n    mode: 755\n");
        assert!(e.contains("quote it"), "{e}");
        // Parsed from the config, off by default.
        assert!(one("pools:\n  - name: a\n    path: /a\n").create.is_none());
        assert!(
            one("pools:\n  - name: a\n    path: /a\n    create: true\n")
                .create
                .is_some()
        );
    }

    #[test]
    fn a_hostpath_pool_on_a_directory_is_ready_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let r = spec(dir.path(), Driver::Hostpath).probe();
        assert!(r.ready, "{:?}", r.reason);
        assert_eq!(r.reason, None);
        assert!(r.capacity > Bytes::ZERO);
        let avail = r.available.unwrap();
        assert!(avail <= r.capacity);
        assert_eq!(r.reserve, Reserve::BasisPoints(1000).resolve(r.capacity));
        let state = r.pool_state();
        assert!(state.ready);
        assert_eq!(state.capacity, r.capacity);
    }

    #[test]
    fn the_configured_capacity_caps_size_and_available() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), Driver::Hostpath);
        s.capacity = Some(Bytes(4096));
        let r = s.probe();
        assert!(r.ready);
        assert_eq!(r.capacity, Bytes(4096));
        assert!(r.available.unwrap() <= Bytes(4096));
    }

    #[test]
    fn a_missing_path_is_not_ready_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let r = spec(&dir.path().join("nope"), Driver::Hostpath).probe();
        assert!(!r.ready);
        assert!(r.reason.as_deref().unwrap().contains("does not exist"));
        assert_eq!(r.capacity, Bytes::ZERO);
        assert!(!r.pool_state().ready);
    }

    #[test]
    fn a_file_instead_of_a_directory_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        let r = spec(&file, Driver::Hostpath).probe();
        assert!(!r.ready);
        assert!(r.reason.unwrap().contains("not a directory"));
    }

    #[test]
    fn a_btrfs_pool_on_another_filesystem_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        if fs_type(dir.path()).unwrap() == BTRFS_SUPER_MAGIC {
            return; // The temp dir happens to be on btrfs; nothing to refuse.
        }
        let r = spec(dir.path(), Driver::Btrfs).probe();
        assert!(!r.ready);
        let reason = r.reason.unwrap();
        assert!(reason.contains("needs a btrfs filesystem"), "{reason}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The pools of `deploy/agent.yaml`'s ConfigMap parse under the agent's `--pool-root`,
    /// which is where the DaemonSet mounts its pools hostPath, at the same path as on the
    /// host (PVs name host paths); the default pool lies under it and is made on a fresh
    /// node (`create: true`): a first install binds claims without a manual step.
    #[test]
    fn the_shipped_pools_parse_under_the_pool_root_the_daemon_set_mounts() {
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(include_str!("../../deploy/agent.yaml"))
                .map(|d| serde_yaml::Value::deserialize(d).unwrap())
                .collect();
        let kind = |k: &str| {
            docs.iter()
                .find(|d| d["kind"].as_str() == Some(k))
                .unwrap_or_else(|| panic!("no {k} in deploy/agent.yaml"))
        };
        let pod = &kind("DaemonSet")["spec"]["template"]["spec"];
        let host_path = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("pools"))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap();
        let agent = &pod["containers"][0];
        let mount_path = agent["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some("pools"))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap();
        let flag = agent["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("--pool-root="))
            .next()
            .unwrap_or(DEFAULT_POOL_ROOT);
        assert_eq!(flag, host_path, "--pool-root is the pools hostPath");
        assert_eq!(mount_path, host_path, "mounted at the host's path");

        let text = kind("ConfigMap")["data"]["pools.yaml"].as_str().unwrap();
        let pools = PoolConfig::parse(text, Path::new(flag)).unwrap();
        for pool in &pools {
            assert!(
                pool.path.starts_with(host_path),
                "pool {} at {} is not under the agent's hostPath {host_path}",
                pool.name,
                pool.path.display()
            );
        }
        let default = pools.iter().find(|p| p.name.as_str() == "default").unwrap();
        assert!(
            default.create.is_some(),
            "the default pool is made on a fresh node"
        );
    }
}
