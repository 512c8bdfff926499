//! Claim directories on a server's mount: create, look up, delete, archive, keep.
//!
//! ```text
//!   <mount>/<namespace>/<claim>                      a volume (nested layout)
//!   <mount>/<namespace>-<claim>                      a volume (flat layout, takeover only)
//!   <mount>/archived-<namespace>-<claim>-<YYYYMMDDTHHMMSSZ>[-<n>]   an archived volume
//! ```
//!
//! Only filesystem calls (no shell, no `cp -r`): an archive is one `rename` on the server,
//! atomic and instant, with no doubled space. Every step checks, like the agent's
//! `PoolRoot::check_inside`, that each directory on the way is a real directory whose
//! canonical parent is where it should be, and refuses symlinks, so nothing outside the
//! server's mount is ever created, renamed or removed. `remove_dir_all` does not follow
//! symlinks found inside a volume.
//!
//! Archive names can never collide with a live directory: live top-level names are DNS
//! names (lowercase), while the UTC stamp in an archive name holds the capitals `T` and `Z`;
//! an existing archive of the same name and second gets `-1`, `-2`, ….
//!
//! Only the controller (the Lease holder) writes the top two levels (tenants write inside
//! their claim's directory only), which is what makes the check-then-act steps here safe.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::place::RelDir;
use crate::agent::path::utc_stamp;
use crate::agent::pool::VolumeMode;
use crate::api::local_volume::OnDelete;

/// The prefix of archived volume directories.
pub const ARCHIVE_PREFIX: &str = "archived-";

/// The mode of intermediate (namespace) directories: the controller writes them, every NFS
/// client may traverse and list them.
pub const PARENT_MODE: VolumeMode = VolumeMode(0o755);

/// The default mode of claim directories: `0777`, as nfs-subdir-external-provisioner and the
/// source design use, because pods reach NFS as arbitrary uids (there is no `fsGroup`
/// ownership change on NFS volumes) and a narrower mode locks them out of their own volume.
/// Classes may narrow it with `directoryMode`.
pub const DEFAULT_DIR_MODE: VolumeMode = VolumeMode(0o777);

/// Longest readable part of an archive name, so the whole name stays under `NAME_MAX`
/// (255 bytes) with the prefix, stamp and counter.
const ARCHIVE_LABEL_MAX: usize = 200;

/// Why a directory operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The filesystem refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Something other than a directory stands where a directory should be.
    #[error("{path} is not a directory; move it out of the way by hand")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A symlink stands where a directory should be.
    #[error(
        "{path} is a symlink where a directory should be; refusing to follow it out of the NFS server's mount (remove it by hand after checking where it points)"
    )]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// A directory's canonical parent is not where it should be (swapped for a symlink).
    #[error("{path} does not resolve inside the NFS server's mount {root}")]
    Outside {
        /// The path.
        path: PathBuf,
        /// The mount.
        root: PathBuf,
    },
}

impl DirError {
    fn io(path: &Path, source: io::Error) -> Self {
        DirError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A stable PascalCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DirError::Io { .. } => "NfsDirectoryIo",
            DirError::NotADirectory { .. } => "NfsNotADirectory",
            DirError::Symlink { .. } => "NfsSymlinkRefused",
            DirError::Outside { .. } => "NfsPathOutsideMount",
        }
    }
}

/// What [`ServerRoot::remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// The directory and its contents were removed.
    Deleted(PathBuf),
    /// The directory was renamed aside.
    Archived {
        /// Where it was.
        from: PathBuf,
        /// Where it is now.
        to: PathBuf,
    },
    /// Left in place, as the class asks.
    Retained(PathBuf),
    /// Nothing was there (deleted or archived before, or never made).
    AlreadyGone(PathBuf),
}

/// The canonical mount of one NFS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRoot {
    root: PathBuf,
}

impl ServerRoot {
    /// Canonicalizes the mount (an operator may use a symlink for the mount itself) and
    /// checks that it is a directory.
    pub fn open(mount: impl AsRef<Path>) -> Result<Self, DirError> {
        let mount = mount.as_ref();
        let root = fs::canonicalize(mount).map_err(|e| DirError::io(mount, e))?;
        let meta = fs::metadata(&root).map_err(|e| DirError::io(&root, e))?;
        if !meta.is_dir() {
            return Err(DirError::NotADirectory { path: root });
        }
        Ok(ServerRoot { root })
    }

    /// The canonical mount.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<mount>/<rel>`. Does not touch the filesystem.
    pub fn dir_path(&self, rel: &RelDir) -> PathBuf {
        self.root.join(rel.to_path())
    }

    /// The entry `name` in the directory made of `parents` below the root: checks that the
    /// parent resolves to exactly that place, and returns the entry's own metadata (a
    /// symlink is refused, never followed), or `None` if nothing is there.
    fn entry(&self, parents: &[String], name: &str) -> Result<Option<fs::Metadata>, DirError> {
        let parent: PathBuf = parents.iter().fold(self.root.clone(), |p, c| p.join(c));
        let path = parent.join(name);
        let resolved = fs::canonicalize(&parent).map_err(|e| DirError::io(&parent, e))?;
        if resolved != parent {
            return Err(DirError::Outside {
                path,
                root: self.root.clone(),
            });
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(DirError::Symlink { path }),
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DirError::io(&path, e)),
        }
    }

    /// Walks `rel` level by level: `Ok(true)` if every level is a real directory,
    /// `Ok(false)` at the first missing one; a symlink or a file on the way is an error.
    fn walk(&self, rel: &RelDir) -> Result<bool, DirError> {
        let parts = rel.parts();
        let mut path = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            match self.entry(&parts[..i], part)? {
                None => return Ok(false),
                Some(meta) if !meta.is_dir() => return Err(DirError::NotADirectory { path }),
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// Whether the claim directory `rel` exists here as a real directory.
    pub fn holds(&self, rel: &RelDir) -> Result<bool, DirError> {
        self.walk(rel)
    }

    /// Makes the claim directory `rel` (and its namespace directory, mode [`PARENT_MODE`])
    /// with exactly `mode`, whatever the process umask, and returns its path.
    ///
    /// Idempotent: an existing directory is success and keeps its mode and contents (a
    /// re-created claim finds its data); a file or symlink in the way is an error.
    pub fn create(&self, rel: &RelDir, mode: VolumeMode) -> Result<PathBuf, DirError> {
        let parts = rel.parts();
        let mut path = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let want = if i + 1 == parts.len() {
                mode
            } else {
                PARENT_MODE
            };
            match self.entry(&parts[..i], part)? {
                Some(meta) if meta.is_dir() => continue,
                Some(_) => return Err(DirError::NotADirectory { path }),
                None => {}
            }
            match fs::DirBuilder::new().mode(want.bits()).create(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(want.bits()))
                        .map_err(|e| DirError::io(&path, e))?;
                }
                // Lost a race: judge what is there now.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match self.entry(&parts[..i], part)? {
                        Some(meta) if meta.is_dir() => {}
                        _ => return Err(DirError::NotADirectory { path }),
                    }
                }
                Err(e) => return Err(DirError::io(&path, e)),
            }
        }
        Ok(path)
    }

    /// Deals with the claim directory `rel` as `on_delete` says: remove it, rename it to a
    /// fresh archive name at the top of the mount, or leave it. Idempotent: a directory
    /// that is already gone is [`Removed::AlreadyGone`]. An empty namespace directory is
    /// left in place (a concurrent create in that namespace may need it).
    pub fn remove(
        &self,
        rel: &RelDir,
        on_delete: OnDelete,
        now: SystemTime,
    ) -> Result<Removed, DirError> {
        let path = self.dir_path(rel);
        if on_delete == OnDelete::Retain {
            return Ok(Removed::Retained(path));
        }
        if !self.walk(rel)? {
            return Ok(Removed::AlreadyGone(path));
        }
        match on_delete {
            OnDelete::Retain => Ok(Removed::Retained(path)),
            OnDelete::Delete => match fs::remove_dir_all(&path) {
                Ok(()) => Ok(Removed::Deleted(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removed::AlreadyGone(path)),
                Err(e) => Err(DirError::io(&path, e)),
            },
            OnDelete::Archive => {
                let to = self.archive_path(rel, now)?;
                fs::rename(&path, &to).map_err(|e| DirError::io(&path, e))?;
                Ok(Removed::Archived { from: path, to })
            }
        }
    }

    /// A free archive path for `rel` at `now`:
    /// `<mount>/archived-<label>-<YYYYMMDDTHHMMSSZ>` or with `-1`, `-2`, … appended when that
    /// entry exists (anything counts, even a dangling symlink). Creates nothing.
    pub fn archive_path(&self, rel: &RelDir, now: SystemTime) -> Result<PathBuf, DirError> {
        let mut label = rel.label();
        // The label is ASCII, so any byte index is a character boundary.
        label.truncate(ARCHIVE_LABEL_MAX);
        let base = format!("{ARCHIVE_PREFIX}{label}-{}", utc_stamp(now));
        for n in 0u64.. {
            let candidate = if n == 0 {
                self.root.join(&base)
            } else {
                self.root.join(format!("{base}-{n}"))
            };
            match fs::symlink_metadata(&candidate) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
                Err(e) => return Err(DirError::io(&candidate, e)),
                Ok(_) => {}
            }
        }
        Err(DirError::io(
            &self.root,
            io::Error::other("no free archive name"),
        ))
    }
}

#[cfg(test)]
mod tests;
