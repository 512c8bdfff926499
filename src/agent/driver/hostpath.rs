//! The `hostpath` driver: one plain directory per volume, directly under the pool root.
//!
//! Sizes are not enforced: a volume may write past its claim. The ledger accounts for that
//! by capping a hostpath pool's free space with the filesystem's real free space.

use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::VolumeError;
use crate::agent::path::{PathError, PoolRoot, VolumeName, race_point};
use crate::agent::pool::VolumeMode;
use crate::crash;
use crate::fsutil::{self, FsError, NewDir};
use crate::ledger::Bytes;

/// The prefix of a volume directory being set up, before it is renamed to its volume name.
const STAGING_PREFIX: &str = ".staging-";

/// `.staging-<name>`: where a directory is set up before it becomes `<name>`.
fn staging_name(name: &VolumeName) -> String {
    format!("{STAGING_PREFIX}{name}")
}

/// Makes and removes plain volume directories in one pool.
#[derive(Clone, Debug)]
pub struct Hostpath {
    root: PoolRoot,
}

impl Hostpath {
    /// A driver over the pool at `root`.
    pub fn new(root: PoolRoot) -> Self {
        Hostpath { root }
    }

    /// The pool root.
    pub fn root(&self) -> &PoolRoot {
        &self.root
    }

    /// Makes the directory for `name` with `mode` (exactly, whatever the process umask) and
    /// returns its path. `size` is not enforced by this driver.
    ///
    /// The directory is made and given its mode under a staging name
    /// (`.staging-<name>`, a leftover of a crashed create is reused), then renamed into
    /// place in one step: a volume path never holds a directory whose mode was not set yet,
    /// which a create killed between mkdir (narrowed by the umask) and chmod would leave.
    ///
    /// Idempotent: an existing directory is success and keeps its current mode; a file or a
    /// symlink in its place is an error.
    pub fn create(
        &self,
        name: &VolumeName,
        size: Bytes,
        mode: VolumeMode,
    ) -> Result<PathBuf, VolumeError> {
        let _ = size;
        let path = self.root.volume_path(name);
        if let Some(meta) = self.root.check_inside(&path)? {
            return if meta.is_dir() {
                Ok(path)
            } else {
                Err(VolumeError::NotADirectory { path })
            };
        }
        // Made and given its mode through the pool root's descriptor, under the staging
        // name: the mode is set on the directory just made, opened without following a
        // symlink swapped in meanwhile, and the rename is relative to the same descriptor.
        let root = self.root.open_fd()?;
        let staging = staging_name(name);
        let new = NewDir {
            name: name.as_str(),
            staging: &staging,
            mode: mode.bits(),
            chmod_point: "hostpath.create.chmod",
            rename_point: "hostpath.create.rename",
        };
        fsutil::make_dir_at(&root, self.root.path(), &new, || {
            crash::hit(crash::AGENT_CREATE_STAGED);
        })
        .map_err(PathError::from)?;
        Ok(path)
    }

    /// Removes the directory of `name` and everything in it (and a staging leftover of a
    /// crashed create). Absent is success; a symlink or a file in its place is refused and
    /// left alone.
    pub fn delete(&self, name: &VolumeName) -> Result<(), VolumeError> {
        self.remove(name.as_str())?;
        self.discard_staging(name)
    }

    /// Removes the staging leftover of a create of `name` that never finished (it never
    /// held the claim's data: it was not renamed into place), and only that. Absent is
    /// success. Archive and retain call this, so such a leftover does not outlive its
    /// LocalVolume.
    pub fn discard_staging(&self, name: &VolumeName) -> Result<(), VolumeError> {
        self.remove(&staging_name(name))
    }

    /// Removes the entry `entry` of the root (a volume or a staging leftover) and everything
    /// in it. Absent is success; a symlink or a file is refused and left alone.
    ///
    /// The tree is removed by [`fsutil::remove_tree_at`] from the root's descriptor, which
    /// follows no symlink inside the volume and holds a bounded number of descriptors on a
    /// bounded stack however deep the tree: `std::fs::remove_dir_all` recurses once per
    /// level, and a tenant's chain of ~15,000 directories overflowed the blocking thread's
    /// stack and aborted the agent.
    fn remove(&self, entry: &str) -> Result<(), VolumeError> {
        let path = self.root.path().join(entry);
        match self.root.check_inside(&path)? {
            None => return Ok(()),
            Some(meta) if !meta.is_dir() => return Err(VolumeError::NotADirectory { path }),
            Some(_) => {}
        }
        let root = self.root.open_fd()?;
        // A symlink swapped in for the directory after the check is removed as a link and
        // its target left alone (as `remove_dir_all` did). One swapped in after the
        // directory was opened (`hostpath.delete.empty`) is left, once the directory opened
        // is emptied, and refused: `Replaced`.
        race_point("hostpath.delete.remove");
        match fsutil::remove_tree_at(&root, self.root.path(), entry, "hostpath.delete.empty") {
            Ok(_) => Ok(()),
            Err(FsError::Symlink { .. }) => {
                match rustix::fs::unlinkat(&root, entry, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(PathError::Io {
                        path,
                        source: e.into(),
                    }
                    .into()),
                }
            }
            Err(e) => Err(PathError::from(e).into()),
        }
    }

    /// Moves the directory of `name` into `<root>/.archive/<name>-<UTC stamp>` and returns
    /// where it went, or `None` if the volume is already gone (archived before, or never made).
    pub fn archive(
        &self,
        name: &VolumeName,
        now: SystemTime,
    ) -> Result<Option<PathBuf>, VolumeError> {
        let path = self.root.volume_path(name);
        match self.root.check_inside(&path)? {
            None => return Ok(None),
            Some(meta) if !meta.is_dir() => return Err(VolumeError::NotADirectory { path }),
            Some(_) => {}
        }
        // Renamed between descriptors of the root and of `.archive`, both opened without
        // following symlinks: a `.archive` swapped for a symlink is refused, and one swapped
        // after it was opened no longer matters.
        let root = self.root.open_fd()?;
        let archive = self.root.open_archive(&root)?;
        let target = self.root.archive_path(name, now)?;
        let Some(target_name) = target.file_name() else {
            return Err(PathError::Outside {
                path: target,
                root: self.root.path().to_path_buf(),
            }
            .into());
        };
        race_point("hostpath.archive.rename");
        rustix::fs::renameat(&root, name.as_str(), &archive, target_name).map_err(|e| {
            PathError::Io {
                path: path.clone(),
                source: e.into(),
            }
        })?;
        // A symlink swapped in for the volume after the check was moved, not followed; say so.
        let moved =
            rustix::fs::statat(&archive, target_name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                PathError::Io {
                    path: target.clone(),
                    source: e.into(),
                }
            })?;
        if FileType::from_raw_mode(moved.st_mode) != FileType::Directory {
            return Err(VolumeError::NotADirectory { path: target });
        }
        Ok(Some(target))
    }

    /// Grows the volume of `name` to `size`: nothing to do, since hostpath does not enforce
    /// sizes; only checks that the volume directory is there.
    pub fn grow(&self, name: &VolumeName, size: Bytes) -> Result<(), VolumeError> {
        let _ = size;
        let path = self.root.volume_path(name);
        match self.root.check_inside(&path)? {
            Some(meta) if meta.is_dir() => Ok(()),
            Some(_) => Err(VolumeError::NotADirectory { path }),
            None => Err(VolumeError::Missing { path }),
        }
    }

    /// The volumes in the pool: directories directly under the root whose names parse as
    /// [`VolumeName`]s, sorted. Everything else (`.archive`, other names, files, symlinks)
    /// is ignored.
    pub fn scan(&self) -> Result<Vec<VolumeName>, VolumeError> {
        let root = self.root.path();
        let io_err = |source| PathError::Io {
            path: root.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(Ok(name)) = entry.file_name().to_str().map(VolumeName::parse) else {
                continue;
            };
            // `DirEntry::file_type` does not follow symlinks.
            if entry.file_type().map_err(io_err)?.is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    const A: &str = "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b";
    const B: &str = "pvc-11111111-2222-4333-8444-555555555555";

    fn name(s: &str) -> VolumeName {
        VolumeName::parse(s).unwrap()
    }

    fn pool() -> (tempfile::TempDir, Hostpath) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pool")).unwrap();
        let driver = Hostpath::new(PoolRoot::open(dir.path().join("pool")).unwrap());
        (dir, driver)
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_staging_leftover_of_a_crashed_create_is_finished_or_discarded() {
        let (_dir, d) = pool();
        let root = d.root().path().to_path_buf();
        // What a create killed between mkdir (narrowed by the umask) and chmod leaves.
        let staging_a = root.join(format!(".staging-{A}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging_a)
            .unwrap();
        fs::set_permissions(&staging_a, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(d.scan().unwrap(), Vec::<VolumeName>::new(), "not a volume");
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode(0o777))
            .unwrap();
        assert_eq!(mode_of(&p), 0o777, "the retry sets the mode");
        assert!(!staging_a.exists(), "renamed into place");

        let staging_b = root.join(format!(".staging-{B}"));
        fs::create_dir(&staging_b).unwrap();
        d.discard_staging(&name(B)).unwrap();
        assert!(!staging_b.exists());
        d.discard_staging(&name(B)).unwrap();
        d.discard_staging(&name(A)).unwrap();
        assert!(p.is_dir(), "only the staging entry is discarded");

        fs::create_dir(&staging_a).unwrap();
        d.delete(&name(A)).unwrap();
        assert!(
            !p.exists() && !staging_a.exists(),
            "delete takes a leftover too"
        );
    }

    #[test]
    fn create_makes_the_directory_with_the_exact_mode_and_twice_is_success() {
        let (_dir, d) = pool();
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode(0o770))
            .unwrap();
        assert_eq!(p, d.root().path().join(A));
        assert!(p.is_dir());
        assert_eq!(mode_of(&p), 0o770);
        fs::write(p.join("data"), b"keep").unwrap();
        let again = d
            .create(&name(A), Bytes::gib(1), VolumeMode(0o770))
            .unwrap();
        assert_eq!(again, p);
        assert_eq!(fs::read(p.join("data")).unwrap(), b"keep");
        let open = d
            .create(&name(B), Bytes::gib(1), VolumeMode(0o777))
            .unwrap();
        assert_eq!(mode_of(&open), 0o777, "the umask does not narrow the mode");
    }

    #[test]
    fn create_refuses_a_file_or_a_symlink_where_the_directory_should_be() {
        let (dir, d) = pool();
        fs::write(d.root().volume_path(&name(A)), b"x").unwrap();
        assert!(matches!(
            d.create(&name(A), Bytes::gib(1), VolumeMode::default()),
            Err(VolumeError::NotADirectory { .. })
        ));
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink(&outside, d.root().volume_path(&name(B))).unwrap();
        let err = d
            .create(&name(B), Bytes::gib(1), VolumeMode::default())
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn delete_removes_the_volume_and_twice_is_success() {
        let (_dir, d) = pool();
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        fs::create_dir(p.join("sub")).unwrap();
        fs::write(p.join("sub/f"), b"x").unwrap();
        d.delete(&name(A)).unwrap();
        assert!(!p.exists());
        d.delete(&name(A)).unwrap();
    }

    #[test]
    fn delete_refuses_a_symlink_named_like_a_volume_and_leaves_its_target_alone() {
        let (dir, d) = pool();
        let outside = dir.path().join("precious");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("data"), b"do not delete").unwrap();
        let link = d.root().volume_path(&name(A));
        symlink(&outside, &link).unwrap();

        let err = d.delete(&name(A)).unwrap_err();
        assert!(
            matches!(err, VolumeError::Path(PathError::Symlink { .. })),
            "{err}"
        );
        assert_eq!(fs::read(outside.join("data")).unwrap(), b"do not delete");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(d.archive(&name(A), SystemTime::now()).is_err());
        assert!(d.grow(&name(A), Bytes::gib(2)).is_err());
    }

    #[test]
    fn delete_does_not_follow_symlinks_inside_the_volume() {
        let (dir, d) = pool();
        let outside = dir.path().join("precious");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("data"), b"keep").unwrap();
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        symlink(&outside, p.join("escape")).unwrap();
        d.delete(&name(A)).unwrap();
        assert!(!p.exists());
        assert_eq!(fs::read(outside.join("data")).unwrap(), b"keep");
    }

    #[test]
    fn delete_removes_a_20000_deep_tree_on_a_small_stack() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        fsutil::deep_chain(&p, "d", 20_000, &outside);
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || d.delete(&name(A)))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!p.exists());
        untouched(&outside, mode);
    }

    #[test]
    fn delete_refuses_a_file_where_the_directory_should_be() {
        let (_dir, d) = pool();
        let p = d.root().volume_path(&name(A));
        fs::write(&p, b"x").unwrap();
        assert!(matches!(
            d.delete(&name(A)),
            Err(VolumeError::NotADirectory { .. })
        ));
        assert!(p.is_file());
    }

    #[test]
    fn archive_moves_the_volume_and_twice_is_success() {
        let (_dir, d) = pool();
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        fs::write(p.join("data"), b"old").unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
        let moved = d.archive(&name(A), at).unwrap().unwrap();
        assert_eq!(
            moved,
            d.root().archive_dir().join(format!("{A}-20240229T134507Z"))
        );
        assert_eq!(fs::read(moved.join("data")).unwrap(), b"old");
        assert!(!p.exists());
        assert_eq!(d.archive(&name(A), at).unwrap(), None);
    }

    #[test]
    fn archiving_the_same_name_twice_in_one_second_keeps_both() {
        let (_dir, d) = pool();
        let at = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let first = d.archive(&name(A), at).unwrap().unwrap();
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let second = d.archive(&name(A), at).unwrap().unwrap();
        assert_ne!(first, second);
        assert!(first.is_dir() && second.is_dir());
        assert!(second.to_string_lossy().ends_with("Z-1"), "{second:?}");
    }

    #[test]
    fn archive_refuses_an_archive_folder_that_is_a_symlink() {
        let (dir, d) = pool();
        let outside = dir.path().join("elsewhere");
        fs::create_dir(&outside).unwrap();
        symlink(&outside, d.root().archive_dir()).unwrap();
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let err = d.archive(&name(A), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(d.root().volume_path(&name(A)).is_dir());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn grow_is_a_no_op_that_needs_the_volume_to_exist() {
        let (_dir, d) = pool();
        assert!(matches!(
            d.grow(&name(A), Bytes::gib(2)),
            Err(VolumeError::Missing { .. })
        ));
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        d.grow(&name(A), Bytes::gib(2)).unwrap();
    }

    #[test]
    fn scan_lists_volume_directories_and_ignores_everything_else() {
        let (dir, d) = pool();
        d.create(&name(B), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        d.archive(&name(A), SystemTime::now()).unwrap();
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let root = d.root().path();
        fs::create_dir(root.join("lost+found")).unwrap();
        fs::create_dir(root.join("PVC-0F8E4C1A-3B2D-4E5F-8A9B-0C1D2E3F4A5B")).unwrap();
        fs::write(root.join("pvc-22222222-2222-4333-8444-555555555555"), b"").unwrap();
        symlink(
            dir.path(),
            root.join("pvc-33333333-2222-4333-8444-555555555555"),
        )
        .unwrap();
        assert_eq!(d.scan().unwrap(), vec![name(A), name(B)]);
    }

    // === symlinks swapped in between a check and its use ===

    use crate::fsutil::race::swap_at;

    /// A directory outside the pool holding a file that must survive, and its mode.
    fn precious(dir: &Path) -> (PathBuf, u32) {
        let outside = dir.join("etc");
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
        (outside, 0o755)
    }

    fn untouched(outside: &Path, mode: u32) {
        assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
        assert_eq!(
            mode_of(outside),
            mode,
            "the outside directory's mode changed"
        );
    }

    #[test]
    fn create_does_not_chmod_a_symlink_swapped_in_after_mkdir() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        // The directory being set up is the staging one; the volume path appears only by
        // the final rename.
        let staging = d.root().path().join(staging_name(&name(A)));
        let _race = swap_at("hostpath.create.chmod", staging, outside.clone());
        let err = d
            .create(&name(A), Bytes::gib(1), VolumeMode(0o777))
            .unwrap_err();
        assert!(
            matches!(err, VolumeError::Path(PathError::Symlink { .. })),
            "{err}"
        );
        untouched(&outside, mode);
    }

    #[test]
    fn delete_removes_a_symlink_swapped_in_after_the_check_not_its_target() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let vol = d.root().volume_path(&name(A));
        let _race = swap_at("hostpath.delete.remove", vol.clone(), outside.clone());
        d.delete(&name(A)).unwrap();
        untouched(&outside, mode);
        assert!(
            fs::symlink_metadata(&vol).is_err(),
            "the link itself is gone"
        );
    }

    #[test]
    fn delete_refuses_a_symlink_swapped_in_after_the_volume_was_opened() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        fs::write(p.join("data"), b"tenant").unwrap();
        let _race = swap_at("hostpath.delete.empty", p.clone(), outside.clone());
        let err = d.delete(&name(A)).unwrap_err();
        assert!(
            matches!(err, VolumeError::Path(PathError::Replaced { .. })),
            "{err}"
        );
        untouched(&outside, mode);
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        let emptied = p.with_extension("moved");
        assert_eq!(
            fs::read_dir(&emptied).unwrap().count(),
            0,
            "the volume opened"
        );
    }

    #[test]
    fn archive_does_not_follow_an_archive_folder_swapped_for_a_symlink() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        let p = d
            .create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        fs::write(p.join("data"), b"tenant").unwrap();
        // Before the call: refused outright.
        symlink(&outside, d.root().archive_dir()).unwrap();
        let err = d.archive(&name(A), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        fs::remove_file(d.root().archive_dir()).unwrap();
        // After `.archive` was opened: the rename still lands in the real folder.
        let archive = d.root().archive_dir();
        let _race = swap_at("hostpath.archive.rename", archive.clone(), outside.clone());
        let moved = d.archive(&name(A), SystemTime::now()).unwrap().unwrap();
        let real = archive
            .with_extension("moved")
            .join(moved.file_name().unwrap());
        assert_eq!(fs::read(real.join("data")).unwrap(), b"tenant");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "only passwd");
        untouched(&outside, mode);
    }

    #[test]
    fn archive_moves_a_volume_swapped_for_a_symlink_without_following_it() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        d.create(&name(A), Bytes::gib(1), VolumeMode::default())
            .unwrap();
        let vol = d.root().volume_path(&name(A));
        let _race = swap_at("hostpath.archive.rename", vol.clone(), outside.clone());
        let err = d.archive(&name(A), SystemTime::now()).unwrap_err();
        assert!(matches!(err, VolumeError::NotADirectory { .. }), "{err}");
        untouched(&outside, mode);
        assert!(outside.is_dir(), "the target was not moved");
    }

    #[test]
    fn a_pool_root_swapped_for_a_symlink_is_refused() {
        let (dir, d) = pool();
        let (outside, mode) = precious(dir.path());
        let root = d.root().path().to_path_buf();
        fs::rename(&root, dir.path().join("pool.moved")).unwrap();
        symlink(&outside, &root).unwrap();
        let err = d
            .create(&name(A), Bytes::gib(1), VolumeMode(0o777))
            .unwrap_err();
        assert!(
            matches!(
                err,
                VolumeError::Path(PathError::Symlink { .. } | PathError::Outside { .. })
            ),
            "{err}"
        );
        assert!(d.archive(&name(A), SystemTime::now()).is_err());
        untouched(&outside, mode);
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing made there"
        );
    }
}
