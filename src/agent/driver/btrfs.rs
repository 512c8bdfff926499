//! The `btrfs` driver: one btrfs subvolume per volume, directly under the pool root, with a
//! qgroup limit on its referenced bytes equal to the volume's size, so a volume cannot
//! write past its claim (writes fail with `EDQUOT`).
//!
//! ```text
//!   <root>/.staging-pvc-<uuid>   made here (SUBVOL_CREATE), given its mode and limits, then
//!   <root>/pvc-<uuid>            renamed into place (RENAME_NOREPLACE): a volume path never
//!                                exists without its mode and its limits
//!   <root>/.archive/pvc-<uuid>-<stamp>   an archived volume, still a subvolume with its limits
//! ```
//!
//! Each volume (subvolume id `<id>`) has two qgroups with the same limit:
//!
//! ```text
//!   1/<id>  the volume's level-1 qgroup: the limit a tenant cannot escape
//!    ├── 0/<id>   the volume's own subvolume (limited too, as before level-1 qgroups)
//!    └── 0/<nid>  each subvolume a tenant made inside the volume (any depth), put here
//!                 by the next scan; it has no limit of its own
//! ```
//!
//! Anyone with write access to a directory can make a subvolume there, and a subvolume
//! is accounted apart from the one it sits in: without `1/<id>`, a nested subvolume could
//! be written without limit, and it would keep the volume from being destroyed. Deleting a
//! volume destroys the subvolumes nested in it first, deepest first.
//!
//! Everything goes through ioctls on file descriptors (the private `ioctl` module holds the
//! only `unsafe` code of the agent); nothing shells out. The agent needs `CAP_SYS_ADMIN` for
//! them. Quotas are turned on for the filesystem the first time a limit is set on it.

mod ioctl;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::{Scan, VolumeError};
use crate::agent::path::{ARCHIVE_DIR, PathError, PoolRoot, VolumeName, race_point};
use crate::agent::pool::{BTRFS_SUPER_MAGIC, VolumeMode};
use crate::crash;
use crate::ledger::Bytes;
use crate::runtime::error_chain;

/// The prefix of a subvolume being set up, before it is renamed to its volume name.
const STAGING_PREFIX: &str = ".staging-";

/// How many times a delete destroys the subvolumes nested in a volume before it gives up
/// (each round finds the ones made meanwhile, by a workload still writing).
const NESTED_ROUNDS: usize = 3;

/// Makes and removes btrfs subvolumes with size limits in one pool.
#[derive(Clone, Debug)]
pub struct Btrfs {
    root: PoolRoot,
    /// Qgroups of destroyed subvolumes (`0/<id>`, and the volume's `1/<id>`) that the
    /// kernel would not remove yet (`EBUSY` until its cleaner has dropped the subvolumes);
    /// retried by later deletes and scans.
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
    /// a limit of `size` referenced bytes on its qgroups `0/<id>` and `1/<id>`, and returns
    /// its path. Turns quotas on for the filesystem if they are off.
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
            set_limit(&root, &vol, &path, size)?;
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
        set_limit(&root, &vol, &staging_path, size)?;
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
                    set_limit(&root, &vol, &path, size)?;
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

    /// Destroys the subvolume of `name` with everything in it, subvolumes made inside it
    /// included (and a staging leftover of a crashed create), then tries to remove its
    /// qgroups; a qgroup that cannot be removed yet does not fail the delete and is tried
    /// again by later deletes and scans. Absent is success.
    ///
    /// Refused, leaving everything in place: a plain directory, file or symlink in the
    /// subvolume's place. A volume in which subvolumes keep being made faster than they are
    /// destroyed fails with [`VolumeError::NestedSubvolume`] and is retried.
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

    /// Destroys the subvolume `<root>/<entry>` if there is one, with the subvolumes nested
    /// in it, and queues their qgroups for removal.
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
        let mut nested = Vec::new();
        let mut lifted = None;
        let result = self.destroy_all(root, entry, &path, id, &mut nested, &mut lifted);
        if let (Err(_), Some(limit)) = (&result, lifted) {
            // The volume stays: it keeps its limits.
            for q in [id, tree::qgroup(1, id)] {
                if let Err(e) = ioctl::qgroup_limit(root, q, limit) {
                    tracing::warn!(volume = %path.display(), qgroup = %tree::show(q), error = %io::Error::from(e), "cannot restore the limit of a volume whose delete failed");
                }
            }
        }
        let mut stale = self.stale();
        stale.extend(nested);
        if result.is_ok() {
            stale.insert(id);
            stale.insert(tree::qgroup(1, id));
        }
        result
    }

    /// Destroys the subvolume `<root>/<entry>` (found at `path`, id `id`). When btrfs
    /// refuses because subvolumes are linked inside it (`ENOTEMPTY`), destroys those first
    /// and tries again; `nested` collects the ids destroyed, `lifted` the limit taken off
    /// the volume if it was full (see [`Btrfs::destroy_nested`]).
    fn destroy_all(
        &self,
        root: &OwnedFd,
        entry: &str,
        path: &Path,
        id: u64,
        nested: &mut Vec<u64>,
        lifted: &mut Option<u64>,
    ) -> Result<(), VolumeError> {
        for _ in 0..NESTED_ROUNDS {
            match ioctl::snap_destroy(root, entry) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(Errno::NOTEMPTY) => {}
                Err(e) => return Err(btrfs_err("destroy the subvolume", path, e)),
            }
            let vol = self
                .open_subvolume(root, entry)?
                .ok_or_else(|| VolumeError::Missing {
                    path: path.to_path_buf(),
                })?;
            let now = ioctl::subvolume_id(&vol)
                .map_err(|e| btrfs_err("look up the subvolume id of", path, e))?;
            if now != id {
                return Err(PathError::Replaced {
                    path: path.to_path_buf(),
                }
                .into());
            }
            match self.destroy_nested(root, &vol, id, path, nested, lifted) {
                // One was made inside one being destroyed: the next round finds it.
                Err(VolumeError::NestedSubvolume { .. }) => {}
                other => other?,
            }
        }
        Err(VolumeError::NestedSubvolume {
            path: path.to_path_buf(),
        })
    }

    /// Destroys every subvolume nested in the volume `vol` (id `id`, at `path`), deepest
    /// first, so each is empty of subvolumes when its turn comes.
    ///
    /// Each is found by id in the root tree, and reached from the volume's descriptor one
    /// directory at a time ([`Btrfs::open_link_dir`]): opened `O_NOFOLLOW`, each step
    /// checked to be the inode the trees name, in the expected subvolume, so neither a
    /// symlink nor a rename by a workload still running can lead the walk out of the
    /// volume, and only a subvolume root with the expected id is destroyed.
    ///
    /// Destroying needs a little metadata room in the subvolume holding the link; in a full
    /// volume the limit refuses it (`EDQUOT`). The volume's limits are then lifted
    /// (`lifted` keeps the limit to restore if the delete fails): it is being deleted.
    fn destroy_nested(
        &self,
        root: &OwnedFd,
        vol: &OwnedFd,
        id: u64,
        path: &Path,
        destroyed: &mut Vec<u64>,
        lifted: &mut Option<u64>,
    ) -> Result<(), VolumeError> {
        let links = tree::nested(root, id)
            .map_err(|e| btrfs_err("list the subvolumes nested in", path, e))?;
        let by_id: BTreeMap<u64, &tree::Link> = links.iter().map(|l| (l.id, l)).collect();
        for link in links.iter().rev() {
            let Some((dir, dir_path)) = self.open_link_dir(vol, id, path, link, &by_id)? else {
                continue;
            };
            let name = link.name.as_slice();
            let sub_path = dir_path.join(OsStr::from_bytes(name));
            // Gone: destroyed by the workload meanwhile.
            if open_nested(&dir, name, &sub_path, link.id)?.is_none() {
                continue;
            }
            tracing::info!(volume = %path.display(), nested = %sub_path.display(), nested_id = link.id, "destroying a subvolume made inside the volume");
            loop {
                match ioctl::snap_destroy(&dir, name) {
                    Ok(()) | Err(Errno::NOENT) => break,
                    Err(Errno::DQUOT) if lifted.is_none() => {
                        *lifted = Some(lift_limits(root, id, path)?);
                    }
                    Err(Errno::NOTEMPTY) => {
                        return Err(VolumeError::NestedSubvolume { path: sub_path });
                    }
                    Err(e) => return Err(btrfs_err("destroy the subvolume", &sub_path, e)),
                }
            }
            destroyed.push(link.id);
        }
        Ok(())
    }

    /// Opens the directory holding `link` (nested in the volume `vol`, id `vol_id`, at
    /// `vol_path`), walking down from the volume through the subvolumes linking it
    /// (`by_id`), and returns it with its path; `None` if something on the way is gone.
    fn open_link_dir(
        &self,
        vol: &OwnedFd,
        vol_id: u64,
        vol_path: &Path,
        link: &tree::Link,
        by_id: &BTreeMap<u64, &tree::Link>,
    ) -> Result<Option<(OwnedFd, PathBuf)>, VolumeError> {
        let mut hops = Vec::new();
        let mut parent = link.parent;
        while parent != vol_id {
            let Some(up) = by_id.get(&parent) else {
                return Ok(None);
            };
            hops.push(*up);
            parent = up.parent;
        }
        let mut fd = vol.try_clone().map_err(|source| PathError::Io {
            path: vol_path.to_path_buf(),
            source,
        })?;
        let mut here = vol_path.to_path_buf();
        let mut subvol = vol_id;
        for hop in hops.iter().rev() {
            let Some((dir, dir_path)) = walk_to(fd, here, subvol, hop.dir)? else {
                return Ok(None);
            };
            let sub_path = dir_path.join(OsStr::from_bytes(&hop.name));
            let Some(sub) = open_nested(&dir, &hop.name, &sub_path, hop.id)? else {
                return Ok(None);
            };
            (fd, here, subvol) = (sub, sub_path, hop.id);
        }
        walk_to(fd, here, subvol, link.dir)
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

    /// Sets the limits of the subvolume of `name` (`0/<id>` and `1/<id>`) to `size`, also
    /// when it is below what the volume holds already (the volume then cannot write more
    /// until it shrinks).
    pub fn grow(&self, name: &VolumeName, size: Bytes) -> Result<(), VolumeError> {
        let root = self.root.open_fd()?;
        let path = self.root.volume_path(name);
        match self.open_subvolume(&root, name.as_str())? {
            Some(vol) => set_limit(&root, &vol, &path, size),
            None => Err(VolumeError::Missing { path }),
        }
    }

    /// The volumes in the pool: subvolumes directly under the root whose names parse as
    /// [`VolumeName`]s, sorted. Everything else (`.archive`, staging leftovers, other names,
    /// plain directories, files, symlinks) is ignored.
    ///
    /// Also puts subvolumes nested in the volumes under their limits and retries removing
    /// the qgroups of volumes deleted earlier: see [`Btrfs::survey`].
    pub fn scan(&self) -> Result<Vec<VolumeName>, VolumeError> {
        self.survey().map(|scan| scan.names)
    }

    /// The volumes in the pool (as [`Btrfs::scan`]), what each holds (the referenced bytes
    /// of its `1/<id>`, or of `0/<id>` for a volume without one), and what the pool's other
    /// subvolumes hold (archives, staging leftovers, other names), after bringing every
    /// volume's qgroups in line:
    ///
    /// - a volume without its `1/<id>` (made by a version before level-1 qgroups) gets one,
    ///   with the limit of its `0/<id>` and `0/<id>` as member;
    /// - every subvolume nested in a volume, at any depth, becomes a member of the volume's
    ///   `1/<id>`, logged at warn when it does (once: a tenant made it, and until this scan
    ///   nothing limited it);
    /// - if the kernel marked the accounting inconsistent, a quota rescan is started: until
    ///   one has run, newer kernels account nothing, so no limit holds.
    ///
    /// Failing at any of these is logged and does not fail the scan (the pool stays usable;
    /// the next scan tries again). Also retries removing the qgroups of volumes deleted
    /// earlier (see [`Btrfs::delete`]).
    pub fn survey(&self) -> Result<Scan, VolumeError> {
        let root_path = self.root.path();
        let io_err = |source| PathError::Io {
            path: root_path.to_path_buf(),
            source,
        };
        let root = open_dir(root_path)?;
        let mut volumes = Vec::new();
        let mut others = Vec::new();
        for entry in fs::read_dir(root_path).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let file_name = entry.file_name();
            // `DirEntry::file_type` does not follow symlinks.
            if file_name == ARCHIVE_DIR || !entry.file_type().map_err(io_err)?.is_dir() {
                continue;
            }
            let fd = match rustix::fs::openat(
                &root,
                file_name.as_os_str(),
                crate::fsutil::dir_flags(),
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Removed or swapped for a symlink since it was listed.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                Err(e) => return Err(io_err(e.into()).into()),
            };
            if !is_subvolume(&fd).map_err(io_err)? {
                continue;
            }
            let id = ioctl::subvolume_id(&fd).map_err(|e| io_err(e.into()))?;
            match file_name.to_str().map(VolumeName::parse) {
                Some(Ok(name)) => volumes.push((name, id)),
                _ => others.push(id),
            }
        }
        volumes.sort();
        others.extend(self.archived(&root));
        let mut scan = Scan {
            names: volumes.iter().map(|(name, _)| name.clone()).collect(),
            ..Scan::default()
        };
        match tree::qgroups(&root) {
            Ok(Some(mut qgroups)) => {
                if self.adopt(&root, &volumes, &qgroups) {
                    match tree::qgroups(&root) {
                        Ok(Some(now)) => qgroups = now,
                        Ok(None) => qgroups = tree::Qgroups::default(),
                        Err(_) => {}
                    }
                }
                for (name, id) in &volumes {
                    if let Some(held) = qgroups.held(*id) {
                        scan.held.insert(name.clone(), Bytes(held));
                    }
                }
                scan.other = others
                    .iter()
                    .filter_map(|id| qgroups.held(*id))
                    .fold(Bytes::ZERO, |sum, held| sum.saturating_add(Bytes(held)));
            }
            // Quotas off: no volume was made here yet (or they were turned off by hand).
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(pool = %root_path.display(), error = %io::Error::from(e), "cannot read the qgroups of the pool's filesystem");
            }
        }
        self.remove_stale_qgroups(&root);
        Ok(scan)
    }

    /// The subvolume ids of the archived volumes (subvolumes directly in `.archive`); none
    /// if there is no `.archive` (or it is not a directory: it is never followed).
    fn archived(&self, root: &OwnedFd) -> Vec<u64> {
        let Ok(archive) = open_entry(root, ARCHIVE_DIR) else {
            return Vec::new();
        };
        let Ok(mut dir) = rustix::fs::Dir::read_from(&archive) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        while let Some(Ok(entry)) = dir.read() {
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let Ok(fd) =
                rustix::fs::openat(&archive, name, crate::fsutil::dir_flags(), Mode::empty())
            else {
                continue;
            };
            if is_subvolume(&fd).unwrap_or(false)
                && let Ok(id) = ioctl::subvolume_id(&fd)
            {
                ids.push(id);
            }
        }
        ids
    }

    /// Brings the qgroups of `volumes` (name, subvolume id) in line (see
    /// [`Btrfs::survey`]), given the qgroups as they are; returns whether anything changed.
    fn adopt(
        &self,
        root: &OwnedFd,
        volumes: &[(VolumeName, u64)],
        qgroups: &tree::Qgroups,
    ) -> bool {
        let mut changed = false;
        for (name, id) in volumes {
            let path = self.root.volume_path(name);
            match adopt_volume(root, &path, *id, qgroups) {
                Ok(c) => changed |= c,
                Err(error) => {
                    tracing::warn!(volume = %path.display(), error = %error_chain(&error), "cannot put the subvolumes nested in a volume under its limit; tried again on the next scan");
                }
            }
        }
        if qgroups.needs_rescan() {
            rescan(root, self.root.path());
        }
        changed
    }

    /// Tries to remove the qgroups of destroyed subvolumes. The kernel refuses (`EBUSY`)
    /// until its cleaner has dropped a subvolume's tree, and newer kernels then remove the
    /// qgroup by themselves (`ENOENT` here); a volume's `1/<id>` is refused while it has
    /// members, which go with their subvolumes' qgroups (the set is ordered, so the
    /// level-0 qgroups come first in each try). A stale qgroup is harmless (subvolume ids
    /// are never reused), so this is best effort: `EBUSY` keeps the id for the next try,
    /// which this driver value (and its clones) makes; other failures are logged and
    /// dropped.
    fn remove_stale_qgroups(&self, root: &OwnedFd) {
        self.stale()
            .retain(|&id| match ioctl::qgroup_create(root, id, false) {
                // Gone, or quotas turned off (which removes all qgroups).
                Ok(()) | Err(Errno::NOENT | Errno::NOTCONN) => false,
                Err(Errno::BUSY) => true,
                Err(e) => {
                    tracing::debug!(
                        qgroup = %tree::show(id),
                        error = %io::Error::from(e),
                        "qgroup of a destroyed subvolume not removed"
                    );
                    false
                }
            });
    }

    fn stale(&self) -> parking_lot::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays valid even if a holder panicked: it is only a retry list.
        self.stale.lock()
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

/// Sets the referenced-bytes limit of the subvolume `vol` to `size` on its own qgroup
/// `0/<id>` and on its level-1 qgroup `1/<id>`, making `0/<id>` a member of `1/<id>`;
/// turns quotas on first if they are off and creates missing qgroups. `1/<id>` is what
/// holds when a tenant makes subvolumes inside the volume ([`Btrfs::survey`] makes them
/// members); `0/<id>` stays limited as volumes always were.
///
/// The qgroup ioctls go to the pool root `root`, not to `vol`: each one's transaction
/// needs a little metadata room in the subvolume of the descriptor it is given, which a
/// volume over its (lowered) limit no longer has (`EDQUOT`).
fn set_limit(root: &OwnedFd, vol: &OwnedFd, path: &Path, size: Bytes) -> Result<(), VolumeError> {
    let id =
        ioctl::subvolume_id(vol).map_err(|e| btrfs_err("look up the subvolume id of", path, e))?;
    if id == ioctl::FS_TREE_OBJECTID {
        // The top-level subvolume of another btrfs mounted here, not a subvolume of the pool.
        return Err(VolumeError::NotASubvolume {
            path: path.to_path_buf(),
        });
    }
    // A level-0 qgroup's id is the subvolume id (`0/<id>` is `(0 << 48) | id`).
    limit_qgroup(root, path, id, size.0)?;
    let group = tree::qgroup(1, id);
    limit_qgroup(root, path, group, size.0)?;
    assign(root, path, id, group)?;
    Ok(())
}

/// Sets the referenced-bytes limit of `qgroup` to `max_rfer`, turning quotas on first if
/// they are off and creating the qgroup if it is missing.
fn limit_qgroup(fd: &OwnedFd, path: &Path, qgroup: u64, max_rfer: u64) -> Result<(), VolumeError> {
    for _ in 0..3 {
        match ioctl::qgroup_limit(fd, qgroup, max_rfer) {
            Ok(()) => return Ok(()),
            Err(Errno::NOTCONN) => ioctl::quota_enable(fd)
                .map_err(|e| btrfs_err("enable quotas on the filesystem of", path, e))?,
            // Quotas were on, but the qgroup was removed by hand, or never made (`1/<id>`).
            Err(Errno::NOENT) => match ioctl::qgroup_create(fd, qgroup, true) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(btrfs_err("create the qgroup of", path, e)),
            },
            Err(e) => return Err(btrfs_err("set the qgroup limit of", path, e)),
        }
    }
    Err(btrfs_err("set the qgroup limit of", path, Errno::AGAIN))
}

/// Makes qgroup `member` (a subvolume's `0/<id>`) a member of `parent` (a volume's
/// `1/<id>`) and returns whether it was not one yet. A missing `member` is created first
/// (a subvolume whose qgroup was removed by hand). If the kernel says the numbers became
/// inconsistent (the member shares data with others, as a snapshot does), starts a rescan.
fn assign(fd: &OwnedFd, path: &Path, member: u64, parent: u64) -> Result<bool, VolumeError> {
    for _ in 0..2 {
        match ioctl::qgroup_assign(fd, member, parent, true) {
            Ok(inconsistent) => {
                if inconsistent {
                    rescan(fd, path);
                }
                return Ok(true);
            }
            Err(Errno::EXIST) => return Ok(false),
            Err(Errno::NOENT) => match ioctl::qgroup_create(fd, member, true) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(btrfs_err("create the qgroup of", path, e)),
            },
            Err(e) => {
                return Err(btrfs_err(
                    "assign a qgroup to the level-1 qgroup of",
                    path,
                    e,
                ));
            }
        }
    }
    Err(btrfs_err(
        "assign a qgroup to the level-1 qgroup of",
        path,
        Errno::NOENT,
    ))
}

/// Brings the qgroups of one volume (subvolume `id` at `path`) in line, given the qgroups
/// as they are (see [`Btrfs::survey`]); returns whether anything changed.
fn adopt_volume(
    root: &OwnedFd,
    path: &Path,
    id: u64,
    qgroups: &tree::Qgroups,
) -> Result<bool, VolumeError> {
    let group = tree::qgroup(1, id);
    let mut changed = false;
    if !qgroups.exists(group) {
        // Made before volumes had a level-1 qgroup: it gets one with its own limit. A
        // volume without a limit (quotas turned off and on by hand) is left as it is: its
        // size is not known here.
        let Some(&limit) = qgroups.limit.get(&id) else {
            return Ok(false);
        };
        limit_qgroup(root, path, group, limit)?;
        assign(root, path, id, group)?;
        tracing::info!(volume = %path.display(), qgroup = %tree::show(group), limit, "gave a volume made by an earlier version its level-1 qgroup");
        changed = true;
    } else if !qgroups.related(id, group) {
        changed |= assign(root, path, id, group)?;
    }
    let nested =
        tree::nested(root, id).map_err(|e| btrfs_err("list the subvolumes nested in", path, e))?;
    for link in nested {
        if qgroups.related(link.id, group) {
            continue;
        }
        if assign(root, path, link.id, group)? {
            tracing::warn!(
                volume = %path.display(),
                volume_id = id,
                nested_id = link.id,
                nested_name = %String::from_utf8_lossy(&link.name),
                qgroup = %tree::show(group),
                "a subvolume was made inside a volume, where its writes escaped the volume's limit; it now counts against the limit, and is destroyed with the volume"
            );
        }
        changed = true;
    }
    Ok(changed)
}

/// Starts a quota rescan of the filesystem of `fd` (the pool at `path`), which repairs
/// inconsistent qgroup numbers; one already running is fine. Logged at warn: until it
/// ends, newer kernels (seen on 6.18) account nothing, so no qgroup limit holds.
fn rescan(fd: &OwnedFd, path: &Path) {
    match ioctl::quota_rescan(fd) {
        Ok(()) => {
            tracing::warn!(pool = %path.display(), "qgroup accounting is inconsistent (a snapshot was made of a subvolume in a volume's level-1 qgroup, or a subvolume sharing data joined one); started a quota rescan, and no limit holds on this filesystem until it ends")
        }
        Err(Errno::INPROGRESS) => {}
        Err(e) => {
            tracing::warn!(pool = %path.display(), error = %io::Error::from(e), "qgroup accounting is inconsistent and a quota rescan cannot be started; run `btrfs quota rescan` on the pool")
        }
    }
}

/// Takes the limits off the volume `id` (`0/<id>` and `1/<id>`) so that what is inside it
/// can be destroyed although it is full, and returns the limit it had, to restore if the
/// delete fails.
fn lift_limits(root: &OwnedFd, id: u64, path: &Path) -> Result<u64, VolumeError> {
    let qgroups = tree::qgroups(root)
        .map_err(|e| btrfs_err("read the qgroups of", path, e))?
        .unwrap_or_default();
    let limit = qgroups
        .limit
        .get(&tree::qgroup(1, id))
        .or_else(|| qgroups.limit.get(&id))
        .copied()
        .unwrap_or(ioctl::NO_LIMIT);
    for q in [id, tree::qgroup(1, id)] {
        match ioctl::qgroup_limit(root, q, ioctl::NO_LIMIT) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(btrfs_err("lift the qgroup limit of", path, e)),
        }
    }
    Ok(limit)
}

/// Walks from `fd` (the root directory of subvolume `subvol`, at `path`) down to its
/// directory inode `dir`, one `O_NOFOLLOW` open at a time, each checked to be the inode
/// the tree names for that step and to be in the same subvolume (`st_dev`: each btrfs
/// subvolume has its own), so a symlink, a mount or a rename never leads elsewhere. Holds
/// two descriptors at most, however deep. `None` if the directory is gone.
fn walk_to(
    fd: OwnedFd,
    path: PathBuf,
    subvol: u64,
    dir: u64,
) -> Result<Option<(OwnedFd, PathBuf)>, VolumeError> {
    let steps = match tree::dir_path(&fd, subvol, dir) {
        Ok(steps) => steps,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(btrfs_err(
                "find the directories to a subvolume nested in",
                &path,
                e,
            ));
        }
    };
    let stat = |fd: &OwnedFd, path: &Path| {
        rustix::fs::fstat(fd).map_err(|e| PathError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })
    };
    let dev = stat(&fd, &path)?.st_dev;
    race_point("btrfs.delete.nested");
    let (mut fd, mut path) = (fd, path);
    for (ino, name) in steps {
        let next_path = path.join(OsStr::from_bytes(&name));
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(PathError::Outside {
                path: next_path,
                root: path,
            }
            .into());
        }
        let next = match rustix::fs::openat(
            &fd,
            name.as_slice(),
            crate::fsutil::dir_flags(),
            Mode::empty(),
        ) {
            Ok(next) => next,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(walk_err(&fd, &name, next_path, e)),
        };
        let st = stat(&next, &next_path)?;
        if st.st_ino != ino || st.st_dev != dev {
            return Err(PathError::Replaced { path: next_path }.into());
        }
        (fd, path) = (next, next_path);
    }
    Ok(Some((fd, path)))
}

/// The error for a failed `O_NOFOLLOW | O_DIRECTORY` open of the entry `name` of `dir`
/// (at `path`) inside a volume: such an open gives `ELOOP` or `ENOTDIR` for a symlink, so
/// the entry is looked at (not followed) to say which.
/// Opens `name` in `dir` (at `path`) without following a symlink and checks that it is the
/// root of the subvolume `id`: `None` if nothing is there, [`PathError::Replaced`] if
/// something else is.
fn open_nested(
    dir: &OwnedFd,
    name: &[u8],
    path: &Path,
    id: u64,
) -> Result<Option<OwnedFd>, VolumeError> {
    let fd = match rustix::fs::openat(dir, name, crate::fsutil::dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(walk_err(dir, name, path.to_path_buf(), e)),
    };
    let found = is_subvolume(&fd)
        .and_then(|sub| Ok(sub && ioctl::subvolume_id(&fd)? == id))
        .map_err(|source| PathError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if !found {
        return Err(PathError::Replaced {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(Some(fd))
}

fn walk_err(dir: &OwnedFd, name: &[u8], path: PathBuf, errno: Errno) -> VolumeError {
    match errno {
        Errno::LOOP | Errno::NOTDIR => {
            let symlink = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
                });
            if symlink {
                PathError::Symlink { path }.into()
            } else {
                PathError::Replaced { path }.into()
            }
        }
        e => PathError::Io {
            path,
            source: e.into(),
        }
        .into(),
    }
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
