//! Safe paths inside a pool: volume names that cannot climb out, a canonical pool root, and
//! the check that a volume entry is a real directory of the pool and not a symlink swapped in.
//!
//! ```text
//!   <root>/pvc-<uuid>                          a volume
//!   <root>/.archive/pvc-<uuid>-<YYYYMMDDTHHMMSSZ>[-<n>]   an archived volume
//! ```
//!
//! Every path the agent removes or renames goes through [`PoolRoot::check_inside`] first.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use rustix::fs::Mode;
use rustix::io::Errno;

use crate::fsutil::{self, FsError};

/// The folder inside a pool root where archived volumes are kept.
pub const ARCHIVE_DIR: &str = ".archive";

/// The mode of the archive folder: only the agent (root) goes in; archived data is no
/// tenant's any more.
const ARCHIVE_MODE: u32 = 0o700;

/// The prefix of every volume name: Kubernetes names provisioned volumes `pvc-<claim uid>`.
const PREFIX: &str = "pvc-";

/// The name of a volume directory: `pvc-` and a lowercase UUID, nothing else.
///
/// Because the name is only ever hex digits and dashes after the prefix, it can never hold
/// `/`, `..` or a leading `.`, so joining it to a pool root stays one level inside the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

/// Why a string is not a volume name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "volume name {given:?} is not valid: {why}; a volume name is \"pvc-\" followed by a lowercase UUID such as pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b"
)]
pub struct NameError {
    /// The refused string.
    pub given: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl VolumeName {
    /// Accepts `pvc-` followed by a lowercase 8-4-4-4-12 hex UUID and refuses anything else.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let fail = |why| NameError {
            given: s.to_string(),
            why,
        };
        if s.contains('/') || s.contains('\0') {
            return Err(fail("it contains a path separator"));
        }
        if s.contains("..") {
            return Err(fail("it contains \"..\""));
        }
        let Some(uuid) = s.strip_prefix(PREFIX) else {
            return Err(fail("it does not start with \"pvc-\""));
        };
        let groups: Vec<&str> = uuid.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != lens.len() || groups.iter().zip(lens).any(|(g, n)| g.len() != n) {
            return Err(fail("the part after \"pvc-\" is not shaped 8-4-4-4-12"));
        }
        if !uuid
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(fail(
                "the UUID may hold only 0-9, a-f and dashes (lowercase)",
            ));
        }
        Ok(VolumeName(s.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VolumeName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VolumeName::parse(s)
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a path could not be used inside a pool.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The filesystem refused an operation on the path.
    #[error("{path}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A directory was expected.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// A symlink stands where a volume directory (or the archive folder) should be.
    #[error(
        "{path} is a symlink where a directory should be; refusing to follow it out of the pool (remove it by hand after checking where it points)"
    )]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// The entry was swapped for something else (a symlink, another directory) between two
    /// steps; what was swapped in was moved or left, not followed.
    #[error(
        "{path} was replaced by something else while the agent was setting it up; refusing to use it (check who writes the pool directory, then remove the entry by hand)"
    )]
    Replaced {
        /// The entry.
        path: PathBuf,
    },
    /// The path's parent does not resolve to the pool root.
    #[error("{path} is not directly inside the pool root {root}")]
    Outside {
        /// The offending path.
        path: PathBuf,
        /// The pool root.
        root: PathBuf,
    },
}

impl From<FsError> for PathError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io { path, source } => PathError::Io { path, source },
            FsError::NotADirectory { path } => PathError::NotADirectory { path },
            FsError::Symlink { path } => PathError::Symlink { path },
            FsError::Replaced { path } => PathError::Replaced { path },
        }
    }
}

impl PathError {
    fn io(path: &Path, source: io::Error) -> Self {
        PathError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The canonical root directory of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRoot {
    root: PathBuf,
}

impl PoolRoot {
    /// Canonicalizes `path` (resolving any symlinks in the configured pool path itself, which
    /// an operator may use on purpose) and checks that it is a directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PathError> {
        let path = path.as_ref();
        let root = fs::canonicalize(path).map_err(|e| PathError::io(path, e))?;
        let meta = fs::metadata(&root).map_err(|e| PathError::io(&root, e))?;
        if !meta.is_dir() {
            return Err(PathError::NotADirectory { path: root });
        }
        Ok(PoolRoot { root })
    }

    /// The canonical root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the volume `name` lives: `<root>/<name>`. Does not touch the filesystem.
    pub fn volume_path(&self, name: &VolumeName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// The archive folder, `<root>/.archive`. Does not touch the filesystem.
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join(ARCHIVE_DIR)
    }

    /// Checks that `path` is an entry directly inside the root (its canonicalized parent is
    /// the root) or inside the archive folder, and that the entry itself is not a symlink.
    ///
    /// Returns the entry's own metadata (not followed), or `None` if nothing is there.
    pub fn check_inside(&self, path: &Path) -> Result<Option<fs::Metadata>, PathError> {
        let outside = || PathError::Outside {
            path: path.to_path_buf(),
            root: self.root.clone(),
        };
        let parent = path.parent().ok_or_else(outside)?;
        let parent = fs::canonicalize(parent).map_err(|e| PathError::io(parent, e))?;
        if parent != self.root && parent != self.archive_dir() {
            return Err(outside());
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::io(path, e)),
        };
        if meta.file_type().is_symlink() {
            return Err(PathError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Ok(Some(meta))
    }

    /// Opens the root for `*at` calls. The canonical root has no symlink in it, so a root
    /// that has become a symlink since (swapped by someone with write access to its parent)
    /// is refused (`O_NOFOLLOW`) rather than followed elsewhere.
    pub fn open_fd(&self) -> Result<OwnedFd, PathError> {
        Ok(fsutil::open_dir(&self.root)?)
    }

    /// Opens the entry `name` of the open root `root` as a directory without following a
    /// symlink: a symlink swapped in after a check is `PathError::Symlink`, never followed.
    pub fn open_entry(&self, root: &OwnedFd, name: &str) -> Result<OwnedFd, PathError> {
        fsutil::open_dir_at(root, &self.root, name)?.ok_or_else(|| PathError::Io {
            path: self.root.join(name),
            source: Errno::NOENT.into(),
        })
    }

    /// Opens (making it if missing, mode `0700`) the archive folder of the open root
    /// `root`, refusing a symlink or anything but a directory in its place.
    pub fn open_archive(&self, root: &OwnedFd) -> Result<OwnedFd, PathError> {
        match rustix::fs::mkdirat(root, ARCHIVE_DIR, Mode::from_raw_mode(ARCHIVE_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(PathError::io(&self.archive_dir(), e.into())),
        }
        self.open_entry(root, ARCHIVE_DIR)
    }

    /// A free archive path for `name` at `at`: `<root>/.archive/<name>-<YYYYMMDDTHHMMSSZ>`,
    /// or with `-1`, `-2`, … appended if that entry already exists (anything, even a dangling
    /// symlink, counts as existing). Does not create anything.
    ///
    /// Only the pool's one agent writes into `.archive`, so a free name stays free until the
    /// agent renames into it.
    pub fn archive_path(&self, name: &VolumeName, at: SystemTime) -> Result<PathBuf, PathError> {
        let base = format!("{name}-{}", utc_stamp(at));
        let dir = self.archive_dir();
        for n in 0u64.. {
            let candidate = if n == 0 {
                dir.join(&base)
            } else {
                dir.join(format!("{base}-{n}"))
            };
            match fs::symlink_metadata(&candidate) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
                Err(e) => return Err(PathError::io(&candidate, e)),
                Ok(_) => {}
            }
        }
        // 2^64 archives of one volume in one second cannot exist.
        Err(PathError::io(
            &dir,
            io::Error::other("no free archive name"),
        ))
    }
}

pub(crate) use crate::fsutil::{race_point, utc_stamp};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const UUID_NAME: &str = "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn a_pvc_uuid_is_a_volume_name() {
        let name = VolumeName::parse(UUID_NAME).unwrap();
        assert_eq!(name.as_str(), UUID_NAME);
        assert_eq!(UUID_NAME.parse::<VolumeName>().unwrap(), name);
    }

    #[test]
    fn hostile_and_malformed_names_are_refused_with_a_reason() {
        for (bad, why) in [
            ("..", "\"..\""),
            ("pvc-../../etc", "path separator"),
            (
                "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b/..",
                "path separator",
            ),
            (
                "/pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b",
                "path separator",
            ),
            ("pvc-0F8E4C1A-3B2D-4E5F-8A9B-0C1D2E3F4A5B", "lowercase"),
            ("vol-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b", "does not start"),
            (".archive", "does not start"),
            ("pvc-0f8e4c1a-3b2d-4e5f-8a9b", "8-4-4-4-12"),
            ("pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5bb", "8-4-4-4-12"),
            ("pvc-0f8e4c1g-3b2d-4e5f-8a9b-0c1d2e3f4a5b", "0-9, a-f"),
            ("", "does not start"),
        ] {
            let err = VolumeName::parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
            assert!(err.to_string().contains("pvc-"), "{err}");
        }
    }

    #[test]
    fn the_pool_root_is_canonical_and_volume_paths_stay_one_level_inside() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a/../b");
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        let root = PoolRoot::open(&odd).unwrap();
        assert_eq!(root.path(), fs::canonicalize(dir.path().join("b")).unwrap());
        let name = VolumeName::parse(UUID_NAME).unwrap();
        assert_eq!(root.volume_path(&name), root.path().join(UUID_NAME));
    }

    #[test]
    fn a_file_is_not_a_pool_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            PoolRoot::open(&file),
            Err(PathError::NotADirectory { .. })
        ));
        assert!(matches!(
            PoolRoot::open(dir.path().join("missing")),
            Err(PathError::Io { .. })
        ));
    }

    #[test]
    fn check_inside_refuses_a_symlink_and_paths_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let outside = dir.path().join("outside");
        fs::create_dir(&pool).unwrap();
        fs::create_dir(&outside).unwrap();
        let root = PoolRoot::open(&pool).unwrap();
        let name = VolumeName::parse(UUID_NAME).unwrap();
        let vol = root.volume_path(&name);

        assert!(root.check_inside(&vol).unwrap().is_none());
        std::os::unix::fs::symlink(&outside, &vol).unwrap();
        assert!(matches!(
            root.check_inside(&vol),
            Err(PathError::Symlink { .. })
        ));
        assert!(matches!(
            root.check_inside(&outside.join("x")),
            Err(PathError::Outside { .. })
        ));
        // A path that climbs out through a symlinked directory resolves outside.
        assert!(matches!(
            root.check_inside(&vol.join("x")),
            Err(PathError::Outside { .. })
        ));
    }

    #[test]
    fn archive_paths_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let root = PoolRoot::open(dir.path()).unwrap();
        fs::create_dir(root.archive_dir()).unwrap();
        let name = VolumeName::parse(UUID_NAME).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
        let first = root.archive_path(&name, at).unwrap();
        assert_eq!(
            first,
            root.archive_dir()
                .join(format!("{UUID_NAME}-20240229T134507Z"))
        );
        fs::create_dir(&first).unwrap();
        let second = root.archive_path(&name, at).unwrap();
        assert_eq!(
            second,
            root.archive_dir()
                .join(format!("{UUID_NAME}-20240229T134507Z-1"))
        );
        std::os::unix::fs::symlink("/nonexistent", &second).unwrap();
        let third = root.archive_path(&name, at).unwrap();
        assert!(third.to_string_lossy().ends_with("Z-2"), "{third:?}");
    }
}
