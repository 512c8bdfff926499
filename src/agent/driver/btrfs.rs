//! The `btrfs` driver: one btrfs subvolume per volume, directly under the pool root, with a
//! qgroup limit on its referenced bytes equal to the volume's size, so a volume cannot
//! write past its claim (writes fail with `EDQUOT`).
//!
//! ```text
//!   <root>/.staging-pvc-<uuid>   made here (SUBVOL_CREATE), given its mode and limit, then
//!   <root>/pvc-<uuid>            renamed into place (RENAME_NOREPLACE): a volume path never
//!                                exists without its mode and its limit
//!   <root>/.archive/pvc-<uuid>-<stamp>   an archived volume, still a subvolume with its limit
//! ```
//!
//! Everything goes through ioctls on file descriptors (the private `ioctl` module holds the
//! only `unsafe` code of the agent); nothing shells out. The agent needs `CAP_SYS_ADMIN` for them. Quotas are turned on for the filesystem the
//! first time a limit is set on it.

mod ioctl;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::VolumeError;
use crate::agent::path::{PathError, PoolRoot, VolumeName, race_point};
use crate::agent::pool::{BTRFS_SUPER_MAGIC, VolumeMode};
use crate::crash;
use crate::ledger::Bytes;

/// The prefix of a subvolume being set up, before it is renamed to its volume name.
const STAGING_PREFIX: &str = ".staging-";

/// Makes and removes btrfs subvolumes with size limits in one pool.
#[derive(Clone, Debug)]
pub struct Btrfs {
    root: PoolRoot,
    /// Qgroups of destroyed subvolumes that the kernel would not remove yet (`EBUSY` until
    /// its cleaner has dropped the subvolume); retried by later deletes and scans.
    stale: Arc<Mutex<BTreeSet<u64>>>,
}

impl Btrfs {
    /// A driver over the pool at `root`, which must be on a btrfs filesystem.
    pub fn open(root: PoolRoot) -> Result<Self, VolumeError> {
        let dir = open_dir(root.path())?;
        let fs_type = fs_type(&dir).map_err(|source| PathError::Io {
            path: root.path().to_path_buf(),
            source,
        })?;
        if fs_type != BTRFS_SUPER_MAGIC {
            return Err(VolumeError::NotBtrfs {
                path: root.path().to_path_buf(),
            });
        }
        Ok(Btrfs {
            root,
            stale: Arc::default(),
        })
    }

    /// The pool root.
    pub fn root(&self) -> &PoolRoot {
        &self.root
    }

    /// Makes the subvolume for `name` with `mode` (exactly, whatever the process umask) and
    /// a limit of `size` referenced bytes, and returns its path. Turns quotas on for the
    /// filesystem if they are off.
    ///
    /// Idempotent: an existing subvolume is success, keeps its mode and gets its limit set
    /// to `size` again. A plain directory, a file or a symlink in its place is an error.
    pub fn create(
        &self,
        name: &VolumeName,
        size: Bytes,
        mode: VolumeMode,
    ) -> Result<PathBuf, VolumeError> {
        let root = self.root.open_fd()?;
        let path = self.root.volume_path(name);
        if let Some(vol) = self.open_subvolume(&root, name.as_str())? {
            set_limit(&vol, &path, size)?;
            return Ok(path);
        }
        // Set the subvolume up under a staging name (a leftover of a crashed create is
        // reused), then rename it into place in one step.
        let staging = staging_name(name);
        let staging_path = self.root.path().join(&staging);
        let vol = match self.open_subvolume(&root, &staging)? {
            Some(vol) => vol,
            None => {
                match ioctl::subvol_create(&root, &staging) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(btrfs_err("create the subvolume", &staging_path, e)),
                }
                self.open_subvolume(&root, &staging)?
                    .ok_or_else(|| VolumeError::Missing {
                        path: staging_path.clone(),
                    })?
            }
        };
        rustix::fs::fchmod(&vol, Mode::from_raw_mode(mode.bits())).map_err(|e| PathError::Io {
            path: staging_path.clone(),
            source: e.into(),
        })?;
        set_limit(&vol, &staging_path, size)?;
        drop(vol);
        crash::hit(crash::AGENT_CREATE_STAGED);
        match rustix::fs::renameat_with(
            &root,
            &staging,
            &root,
            name.as_str(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(path),
            // Something appeared at the volume path meanwhile: accept only a subvolume.
            Err(Errno::EXIST) => match self.open_subvolume(&root, name.as_str())? {
                Some(vol) => {
                    // Ours is surplus now; a leftover would be reused or deleted later.
                    let _ = ioctl::snap_destroy(&root, &staging);
                    set_limit(&vol, &path, size)?;
                    Ok(path)
                }
                None => Err(VolumeError::Missing { path }),
            },
            Err(e) => Err(PathError::Io {
                path: staging_path,
                source: e.into(),
            }
            .into()),
        }
    }

    /// Destroys the subvolume of `name` with everything in it (and a staging leftover of a
    /// crashed create), then tries to remove its qgroup; a qgroup that cannot be removed yet
    /// does not fail the delete and is tried again by later deletes and scans. Absent is
    /// success.
    ///
    /// Refused, leaving everything in place: a plain directory, file or symlink in the
    /// subvolume's place, and a volume holding subvolumes that someone made inside it.
    pub fn delete(&self, name: &VolumeName) -> Result<(), VolumeError> {
        let root = self.root.open_fd()?;
        for entry in [name.as_str().to_string(), staging_name(name)] {
            self.destroy(&root, &entry)?;
        }
        self.remove_stale_qgroups(&root);
        Ok(())
    }

    /// Destroys the staging leftover of a create of `name` that never finished (it never
    /// held the claim's data: it was not renamed into place), and only that. Absent is
    /// success. Archive and retain call this, so such a leftover does not outlive its
    /// LocalVolume.
    pub fn discard_staging(&self, name: &VolumeName) -> Result<(), VolumeError> {
        let root = self.root.open_fd()?;
        self.destroy(&root, &staging_name(name))?;
        self.remove_stale_qgroups(&root);
        Ok(())
    }

    /// Destroys the subvolume `<root>/<entry>` if there is one and queues its qgroup for
    /// removal.
    fn destroy(&self, root: &OwnedFd, entry: &str) -> Result<(), VolumeError> {
        let path = self.root.path().join(entry);
        let Some(vol) = self.open_subvolume(root, entry)? else {
            return Ok(());
        };
        let id = ioctl::subvolume_id(&vol)
            .map_err(|e| btrfs_err("look up the subvolume id of", &path, e))?;
        drop(vol);
        // The ioctl looks the name up in the root without following a symlink, and
        // destroys only a subvolume root: something swapped in meanwhile is refused.
        race_point("btrfs.delete.destroy");
        match ioctl::snap_destroy(root, entry) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY) => return Err(VolumeError::NestedSubvolume { path }),
            Err(e) => return Err(btrfs_err("destroy the subvolume", &path, e)),
        }
        self.stale().insert(id);
        Ok(())
    }

    /// Moves the subvolume of `name` into `<root>/.archive/<name>-<UTC stamp>` (keeping its
    /// limit) and returns where it went, or `None` if the volume is already gone.
    pub fn archive(
        &self,
        name: &VolumeName,
        now: SystemTime,
    ) -> Result<Option<PathBuf>, VolumeError> {
        let root = self.root.open_fd()?;
        let path = self.root.volume_path(name);
        if self.open_subvolume(&root, name.as_str())?.is_none() {
            return Ok(None);
        }
        // Renamed between descriptors of the root and of `.archive`, both opened without
        // following symlinks, so a symlink swapped in for `.archive` is never followed.
        let archive = self.root.open_archive(&root)?;
        let target = self.root.archive_path(name, now)?;
        let Some(target_name) = target.file_name() else {
            return Err(PathError::Outside {
                path: target,
                root: self.root.path().to_path_buf(),
            }
            .into());
        };
        race_point("btrfs.archive.rename");
        rustix::fs::renameat_with(
            &root,
            name.as_str(),
            &archive,
            target_name,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| PathError::Io {
            path,
            source: e.into(),
        })?;
        Ok(Some(target))
    }

    /// Sets the limit of the subvolume of `name` to `size`, also when it is below what the
    /// volume holds already (the volume then cannot write more until it shrinks).
    pub fn grow(&self, name: &VolumeName, size: Bytes) -> Result<(), VolumeError> {
        let root = self.root.open_fd()?;
        let path = self.root.volume_path(name);
        match self.open_subvolume(&root, name.as_str())? {
            Some(vol) => set_limit(&vol, &path, size),
            None => Err(VolumeError::Missing { path }),
        }
    }

    /// The volumes in the pool: subvolumes directly under the root whose names parse as
    /// [`VolumeName`]s, sorted. Everything else (`.archive`, staging leftovers, other names,
    /// plain directories, files, symlinks) is ignored.
    ///
    /// Also retries removing the qgroups of volumes deleted earlier (see [`Btrfs::delete`]).
    pub fn scan(&self) -> Result<Vec<VolumeName>, VolumeError> {
        let root_path = self.root.path();
        let io_err = |source| PathError::Io {
            path: root_path.to_path_buf(),
            source,
        };
        let root = open_dir(root_path)?;
        let mut names = Vec::new();
        for entry in fs::read_dir(root_path).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(Ok(name)) = entry.file_name().to_str().map(VolumeName::parse) else {
                continue;
            };
            // `DirEntry::file_type` does not follow symlinks.
            if !entry.file_type().map_err(io_err)?.is_dir() {
                continue;
            }
            match open_entry(&root, name.as_str()) {
                Ok(fd) if is_subvolume(&fd).map_err(io_err)? => names.push(name),
                Ok(_) => {}
                // Removed or swapped for a symlink since it was listed.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => return Err(io_err(e.into()).into()),
            }
        }
        names.sort();
        self.remove_stale_qgroups(&root);
        Ok(names)
    }

    /// Tries to remove the qgroups of destroyed subvolumes. The kernel refuses (`EBUSY`)
    /// until its cleaner has dropped a subvolume's tree, and newer kernels then remove the
    /// qgroup by themselves (`ENOENT` here). A stale qgroup is harmless (subvolume ids are
    /// never reused), so this is best effort: `EBUSY` keeps the id for the next try, which
    /// this driver value (and its clones) makes; other failures are logged and dropped.
    fn remove_stale_qgroups(&self, root: &OwnedFd) {
        self.stale()
            .retain(|&id| match ioctl::qgroup_create(root, id, false) {
                // Gone, or quotas turned off (which removes all qgroups).
                Ok(()) | Err(Errno::NOENT | Errno::NOTCONN) => false,
                Err(Errno::BUSY) => true,
                Err(e) => {
                    tracing::debug!(
                        qgroup = %format_args!("0/{id}"),
                        error = %io::Error::from(e),
                        "qgroup of a destroyed subvolume not removed"
                    );
                    false
                }
            });
    }

    fn stale(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays valid even if a holder panicked: it is only a retry list.
        self.stale
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the subvolume at `<root>/<entry>` without following symlinks: `None` if nothing
    /// is there, an error if something other than a subvolume is.
    fn open_subvolume(&self, root: &OwnedFd, entry: &str) -> Result<Option<OwnedFd>, VolumeError> {
        let path = self.root.path().join(entry);
        match self.root.check_inside(&path)? {
            None => return Ok(None),
            Some(meta) if !meta.is_dir() => return Err(VolumeError::NotADirectory { path }),
            Some(_) => {}
        }
        let fd = match open_entry(root, entry) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(PathError::Symlink { path }.into()),
            Err(Errno::NOTDIR) => return Err(VolumeError::NotADirectory { path }),
            Err(e) => {
                return Err(PathError::Io {
                    path,
                    source: e.into(),
                }
                .into());
            }
        };
        let subvolume = is_subvolume(&fd).map_err(|source| PathError::Io {
            path: path.clone(),
            source,
        })?;
        if !subvolume {
            return Err(VolumeError::NotASubvolume { path });
        }
        Ok(Some(fd))
    }
}

/// `.staging-<name>`: where a subvolume is set up before it becomes `<name>`.
fn staging_name(name: &VolumeName) -> String {
    format!("{STAGING_PREFIX}{name}")
}

/// Sets the referenced-bytes limit of the subvolume `vol` (qgroup `0/<subvolume id>`),
/// turning quotas on first if they are off and creating the qgroup if it is missing.
fn set_limit(vol: &OwnedFd, path: &Path, size: Bytes) -> Result<(), VolumeError> {
    let id =
        ioctl::subvolume_id(vol).map_err(|e| btrfs_err("look up the subvolume id of", path, e))?;
    if id == ioctl::FS_TREE_OBJECTID {
        // The top-level subvolume of another btrfs mounted here, not a subvolume of the pool.
        return Err(VolumeError::NotASubvolume {
            path: path.to_path_buf(),
        });
    }
    // A level-0 qgroup's id is the subvolume id (`0/<id>` is `(0 << 48) | id`).
    let qgroup = id;
    for _ in 0..3 {
        match ioctl::qgroup_limit(vol, qgroup, size.0) {
            Ok(()) => return Ok(()),
            Err(Errno::NOTCONN) => ioctl::quota_enable(vol)
                .map_err(|e| btrfs_err("enable quotas on the filesystem of", path, e))?,
            // Quotas were on, but the qgroup was removed by hand.
            Err(Errno::NOENT) => match ioctl::qgroup_create(vol, qgroup, true) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(btrfs_err("create the qgroup of", path, e)),
            },
            Err(e) => return Err(btrfs_err("set the qgroup limit of", path, e)),
        }
    }
    Err(btrfs_err("set the qgroup limit of", path, Errno::AGAIN))
}

/// Opens a directory (the pool root, already canonical) for `*at` calls and ioctls.
fn open_dir(path: &Path) -> Result<OwnedFd, VolumeError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        PathError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
        .into()
    })
}

/// Opens the directory `name` inside `dir`, refusing a symlink (`ELOOP`).
fn open_entry(dir: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, crate::fsutil::dir_flags(), Mode::empty())
}

/// Whether the open directory `fd` is the root of a btrfs subvolume: on btrfs, and inode
/// 256, which in every subvolume's tree is its root directory and nothing else.
fn is_subvolume(fd: &OwnedFd) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(st.st_ino == ioctl::FIRST_FREE_OBJECTID && fs_type(fd)? == BTRFS_SUPER_MAGIC)
}

/// The `statfs` `f_type` of the filesystem holding `fd`.
fn fs_type(fd: &OwnedFd) -> io::Result<u64> {
    let st = rustix::fs::fstatfs(fd)?;
    // `f_type` is signed on some targets; the magic numbers are 32-bit.
    #[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
    let t = (st.f_type as u64) & 0xFFFF_FFFF;
    Ok(t)
}

/// A failed ioctl, with a hint when the cause is missing privileges.
fn btrfs_err(op: &'static str, path: &Path, errno: Errno) -> VolumeError {
    let hint = match errno {
        Errno::PERM | Errno::ACCESS => {
            "; the agent needs CAP_SYS_ADMIN for btrfs subvolumes and quotas: install with \
             variants/btrfs (kubectl apply -k variants/btrfs), which adds it"
        }
        _ => "",
    };
    VolumeError::Btrfs {
        op,
        path: path.to_path_buf(),
        hint,
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests;
