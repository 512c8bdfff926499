//! Directory operations relative to open directory descriptors that never follow a symlink,
//! shared by the agent's pool drivers and the controller's NFS claim directories.
//!
//! Checking a path and then using it by path leaves a window in which anyone who can write
//! a directory on the way can swap a symlink in, and the use then follows it out of the
//! pool or export. The functions here never look a path up again after a check: each
//! directory is opened `O_NOFOLLOW | O_DIRECTORY` relative to the descriptor of the
//! directory holding it, made with `mkdirat` under a staging name, given its mode with
//! `fchmod` on its own descriptor, renamed with `renameat` between descriptors and removed
//! with `unlinkat`. A symlink where a directory should be is refused; a symlink inside a
//! tree being deleted is removed as a link. Neither is followed.
//!
//! ```text
//!   make_dir_at     openat(parent, name)  exists: adopt it
//!                   mkdirat(parent, .staging) ─ openat NOFOLLOW ─ fchmod ─ renameat NOREPLACE
//!                   ─ the entry now at `name` is the inode given the mode, or refused
//!   remove_tree_at  openat NOFOLLOW ─ each level: unlinkat files and links,
//!                   openat NOFOLLOW subdirectories ─ unlinkat(REMOVEDIR) bottom-up;
//!                   at the 64th level open: renameat NOREPLACE the subdirectory up into
//!                   the top as .remove-tree-<n>, removed from there
//!   read_file_at    openat NOFOLLOW | NONBLOCK ─ fstat: a regular file ─ read at most N bytes
//!   write_file_at   openat CREAT | EXCL | NOFOLLOW under a staging name ─ write ─ fsync
//!                   ─ renameat NOREPLACE into place (never over an existing file or link)
//! ```
//!
//! Paths passed alongside descriptors are used for error messages only.

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::path::Arg;

/// Why a directory operation relative to descriptors failed. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The filesystem refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The entry operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Something other than a directory (and not a symlink) stands where a directory should be.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The entry.
        path: PathBuf,
    },
    /// A symlink stands where a directory should be.
    #[error("{path} is a symlink where a directory should be")]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// The entry was swapped for another one (a symlink or another directory) between two
    /// steps of an operation; what was swapped in was moved or left, never followed.
    #[error("{path} was replaced by something else while it was being set up or moved")]
    Replaced {
        /// The entry.
        path: PathBuf,
    },
}

impl FsError {
    fn io(path: PathBuf, errno: Errno) -> Self {
        FsError::Io {
            path,
            source: errno.into(),
        }
    }
}

/// Flags for opening a directory that must not be a symlink.
pub fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory at `path` for `*at` calls, refusing a symlink as its last component.
/// `path` should be canonical (no symlink on the way), as the pool and mount roots are.
pub fn open_dir(path: &Path) -> Result<OwnedFd, FsError> {
    rustix::fs::open(path, dir_flags(), Mode::empty()).map_err(|e| {
        let kind = match e {
            Errno::LOOP | Errno::NOTDIR => std::fs::symlink_metadata(path)
                .ok()
                .map(|m| FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&m))),
            _ => None,
        };
        refusal(path.to_path_buf(), e, kind)
    })
}

/// Opens the directory `name` inside the open directory `dir` (found at `dir_path`) without
/// following a symlink. `Ok(None)` if nothing is there; a symlink is [`FsError::Symlink`],
/// any other non-directory [`FsError::NotADirectory`].
pub fn open_dir_at(
    dir: impl AsFd,
    dir_path: &Path,
    name: &str,
) -> Result<Option<OwnedFd>, FsError> {
    let dir = dir.as_fd();
    match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(refusal(dir_path.join(name), e, kind_at(dir, name))),
    }
}

/// The type of the entry `name` of `dir`, not following a symlink; `None` if it cannot be
/// looked at (gone, or no permission).
fn kind_at(dir: impl AsFd, name: &str) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// The error for a failed `O_NOFOLLOW | O_DIRECTORY` open: such an open gives `ELOOP` or
/// `ENOTDIR` for a symlink, `ENOTDIR` for a file, so `kind` (the entry looked at, not
/// followed) says which.
fn refusal(path: PathBuf, errno: Errno, kind: Option<FileType>) -> FsError {
    match (errno, kind) {
        (Errno::LOOP | Errno::NOTDIR, Some(FileType::Symlink)) => FsError::Symlink { path },
        (Errno::LOOP | Errno::NOTDIR, _) => FsError::NotADirectory { path },
        (e, _) => FsError::io(path, e),
    }
}

/// Whether two descriptors or stats name the same inode.
fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// `renameat(from_dir, from, to_dir, to)` that never replaces an existing `to`:
/// `RENAME_NOREPLACE`, with `EEXIST` if something is there.
///
/// The NFS client (like CephFS and FUSE filesystems) rejects every `renameat2` flag with
/// `EINVAL`. There it checks that `to` is absent and does a plain `renameat`; in the window
/// between the two, only an empty directory that appeared at `to` could be replaced (a
/// directory renamed onto anything else fails), so no data is lost and nothing is followed.
pub fn rename_noreplace(
    from_dir: impl AsFd,
    from: impl Arg + Copy,
    to_dir: impl AsFd,
    to: impl Arg + Copy,
) -> Result<(), Errno> {
    let (from_dir, to_dir) = (from_dir.as_fd(), to_dir.as_fd());
    let flagged = if rename_flags_unsupported() {
        Err(Errno::INVAL)
    } else {
        rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE)
    };
    match flagged {
        Err(Errno::INVAL | Errno::NOSYS) => {
            match rustix::fs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => return Err(Errno::EXIST),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            match rustix::fs::renameat(from_dir, from, to_dir, to) {
                // A directory renamed onto a non-empty directory or onto a non-directory.
                Err(Errno::NOTEMPTY | Errno::NOTDIR | Errno::ISDIR) => Err(Errno::EXIST),
                other => other,
            }
        }
        other => other,
    }
}

/// What [`read_file_at`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileAt {
    /// Nothing by that name.
    Absent,
    /// A regular file holding these bytes.
    Contents(Vec<u8>),
    /// A symlink (not followed).
    Symlink,
    /// Something else that is not a regular file (a directory, a FIFO, a socket, a device).
    NotAFile,
    /// A regular file longer than the limit.
    TooLong,
}

/// Reads the regular file `name` of the open directory `dir` (found at `dir_path`), at most
/// `max` bytes, without following a symlink: the file is opened `O_NOFOLLOW | O_NONBLOCK`
/// (a FIFO planted there cannot block the read) and must be a regular file by `fstat` of
/// that descriptor.
pub fn read_file_at(
    dir: impl AsFd,
    dir_path: &Path,
    name: &str,
    max: usize,
) -> Result<FileAt, FsError> {
    use std::io::Read;
    let path = dir_path.join(name);
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(FileAt::Absent),
        Err(Errno::LOOP) => return Ok(FileAt::Symlink),
        Err(Errno::NXIO) => return Ok(FileAt::NotAFile),
        Err(e) => return Err(FsError::io(path, e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::io(path.clone(), e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(FileAt::NotAFile);
    }
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    std::fs::File::from(fd)
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|source| FsError::Io {
            path: path.clone(),
            source,
        })?;
    if bytes.len() > max {
        return Ok(FileAt::TooLong);
    }
    Ok(FileAt::Contents(bytes))
}

/// Writes a new regular file `name` (mode `0644`) holding `contents` into the open directory
/// `dir` (found at `dir_path`), all at once or not at all: the file is made under `staging`
/// with `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` (which never follows or opens an existing
/// entry; a leftover file or link of a crashed attempt is unlinked first, as a link), written
/// and `fsync`ed, then renamed into place without replacing anything. Returns `false`, and
/// removes the staging file, if something already is at `name` (the caller reads it).
/// `point` is a race point before the rename. Where `renameat2` flags are unsupported (NFS),
/// [`rename_noreplace`] checks and renames in two steps: a file that appears at `name` in
/// between is replaced (a file, never a directory, and nothing is followed).
pub fn write_file_at(
    dir: impl AsFd,
    dir_path: &Path,
    name: &str,
    staging: &str,
    contents: &[u8],
    point: &'static str,
) -> Result<bool, FsError> {
    let dir = dir.as_fd();
    write_staging(dir, dir_path, staging, contents)?;
    race_point(point);
    match rename_noreplace(dir, staging, dir, name) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => {
            let _ = rustix::fs::unlinkat(dir, staging, AtFlags::empty());
            Ok(false)
        }
        Err(e) => Err(FsError::io(dir_path.join(staging), e)),
    }
}

/// Replaces the regular file `name` of the open directory `dir` (found at `dir_path`) with
/// one holding `contents`, all at once: the new file is made under `staging` exactly as
/// [`write_file_at`] makes it, then renamed over `name` with a plain `renameat`, which
/// replaces the entry itself (a symlink there is replaced, never followed; a directory there
/// makes it fail and the staging file is removed). For a file the caller has just read and
/// means to update.
pub fn replace_file_at(
    dir: impl AsFd,
    dir_path: &Path,
    name: &str,
    staging: &str,
    contents: &[u8],
    point: &'static str,
) -> Result<(), FsError> {
    let dir = dir.as_fd();
    write_staging(dir, dir_path, staging, contents)?;
    race_point(point);
    rustix::fs::renameat(dir, staging, dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, staging, AtFlags::empty());
        FsError::io(dir_path.join(name), e)
    })
}

/// Makes the regular file `staging` (mode `0644`) holding `contents` in the open directory
/// `dir`, with `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` (a leftover file or link of a
/// crashed attempt is unlinked first, as a link), written and `fsync`ed.
fn write_staging(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    staging: &str,
    contents: &[u8],
) -> Result<(), FsError> {
    use std::io::Write;
    let staging_path = dir_path.join(staging);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o644);
    let fd = match rustix::fs::openat(dir, staging, flags, mode) {
        Ok(fd) => fd,
        Err(Errno::EXIST) => {
            // A leftover of a crashed attempt (or anything planted there): unlinked as an
            // entry, never followed. A directory there is an error, not ours to remove.
            rustix::fs::unlinkat(dir, staging, AtFlags::empty())
                .map_err(|e| FsError::io(staging_path.clone(), e))?;
            rustix::fs::openat(dir, staging, flags, mode)
                .map_err(|e| FsError::io(staging_path.clone(), e))?
        }
        Err(e) => return Err(FsError::io(staging_path, e)),
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| FsError::Io {
            path: staging_path,
            source,
        })
}

/// A directory for [`make_dir_at`] to make.
#[derive(Clone, Copy, Debug)]
pub struct NewDir<'a> {
    /// Its final name in the parent.
    pub name: &'a str,
    /// The name it is set up under first, in the same parent. Must be unique to this
    /// directory (a leftover of a crashed attempt is reused) and never a final name.
    pub staging: &'a str,
    /// Its mode, set exactly whatever the process umask.
    pub mode: u32,
    /// The race point between `mkdirat` and `fchmod`.
    pub chmod_point: &'static str,
    /// The race point between `fchmod` and the rename into place.
    pub rename_point: &'static str,
}

/// A directory [`make_dir_at`] made or found.
#[derive(Debug)]
pub struct Made {
    /// The directory, open (the inode now at its final name).
    pub fd: OwnedFd,
    /// Whether this call made it (false: it was already there and is adopted as it is).
    pub created: bool,
}

/// Makes the directory `new.name` inside the open directory `parent` (found at
/// `parent_path`) with exactly `new.mode`, or adopts the directory already there.
///
/// The directory is made under `new.staging` (a leftover of a crashed attempt is reused),
/// opened without following a symlink, given its mode with `fchmod`, and renamed into
/// place without replacing anything: the final name never holds a directory whose mode was
/// not set yet, which a crash between `mkdir` (narrowed by the umask) and `chmod` would
/// leave. `staged` runs between the `fchmod` and the rename (a crash point).
///
/// Idempotent: an existing directory (made by an earlier call, or by a concurrent one that
/// won the rename) keeps its mode and contents. A symlink or a file at the final name, or
/// at the staging name when it is opened, is refused. If the staging entry was swapped
/// after it was opened, the rename moves the swapped-in entry, not the directory given the
/// mode, and that is [`FsError::Replaced`]: it is left for a person to look at.
pub fn make_dir_at(
    parent: &OwnedFd,
    parent_path: &Path,
    new: &NewDir<'_>,
    staged: impl FnOnce(),
) -> Result<Made, FsError> {
    if let Some(fd) = open_dir_at(parent, parent_path, new.name)? {
        return Ok(Made { fd, created: false });
    }
    let staging_path = parent_path.join(new.staging);
    let mode = Mode::from_raw_mode(new.mode);
    match rustix::fs::mkdirat(parent, new.staging, mode) {
        // A leftover of a crashed attempt is reused: opening it refuses a symlink.
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(FsError::io(staging_path, e)),
    }
    race_point(new.chmod_point);
    let Some(fd) = open_dir_at(parent, parent_path, new.staging)? else {
        return Err(FsError::Replaced { path: staging_path });
    };
    rustix::fs::fchmod(&fd, mode).map_err(|e| FsError::io(staging_path.clone(), e))?;
    let made = rustix::fs::fstat(&fd).map_err(|e| FsError::io(staging_path.clone(), e))?;
    staged();
    race_point(new.rename_point);
    let path = parent_path.join(new.name);
    match rename_noreplace(parent, new.staging, parent, new.name) {
        Ok(()) => {}
        // Lost a race with another create: ours is surplus and empty.
        Err(Errno::EXIST) => {
            let _ = rustix::fs::unlinkat(parent, new.staging, AtFlags::REMOVEDIR);
            return match open_dir_at(parent, parent_path, new.name)? {
                Some(fd) => Ok(Made { fd, created: false }),
                None => Err(FsError::Replaced { path }),
            };
        }
        Err(Errno::NOENT) => return Err(FsError::Replaced { path: staging_path }),
        Err(e) => return Err(FsError::io(staging_path, e)),
    }
    match rustix::fs::statat(parent, new.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(now) if same_inode(&now, &made) => Ok(Made { fd, created: true }),
        Ok(_) | Err(Errno::NOENT) => Err(FsError::Replaced { path }),
        Err(e) => Err(FsError::io(path, e)),
    }
}

/// The most directories of one tree [`remove_tree_at`] holds open at once, its top
/// included. A subdirectory met below that many levels is moved up rather than entered
/// ([`move_up`]), so neither the descriptors held nor the stack of levels grows with the
/// depth of the tree.
const MAX_OPEN_LEVELS: usize = 64;

/// The prefix of the names [`move_up`] gives the deep subdirectories it moves into the top
/// of the tree being removed: `.remove-tree-<n>`, the first `n` that is free.
const MOVED_PREFIX: &str = ".remove-tree-";

/// Removes the directory `name` of the open directory `parent` (found at `parent_path`) and
/// everything in it. `Ok(false)` if nothing is there; a symlink or a file at `name` is
/// refused and left alone.
///
/// Nothing is followed: each directory of the tree is opened `O_NOFOLLOW` relative to the
/// descriptor of the one holding it, and every entry is removed with `unlinkat` relative to
/// that descriptor, so a symlink inside the tree (or swapped in for a directory of it
/// meanwhile) is removed as a link and its target is never entered. `point` is a race
/// point after `name` was opened: if it is swapped for a symlink there, the directory
/// opened is emptied, the final `unlinkat` finds the symlink and the call fails with
/// [`FsError::Replaced`], leaving the link and its target alone.
///
/// However deep the tree, the call holds at most `MAX_OPEN_LEVELS` (64) descriptors of
/// the tree's directories, and one more while it reads a directory's listing, and its call
/// depth is fixed: the tree is walked with a stack of at most 64 levels, not recursion. A
/// subdirectory met at the 64th level is not entered: it is renamed (relative to the two
/// descriptors, replacing nothing) to `.remove-tree-<n>` in the top directory, where it is
/// removed later like any other entry, 63 levels nearer the top. What is moved stays inside
/// the tree being removed, so a call that fails or is killed part-way leaves a smaller
/// tree at `name`, and a retry goes on from there. (The recursive `std::fs::remove_dir_all`
/// overflows a 2 MiB thread stack on a chain about 15,000 directories deep, and a remover
/// holding one descriptor per level fails with `EMFILE` at the same depth on every retry.)
pub fn remove_tree_at(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    point: &'static str,
) -> Result<bool, FsError> {
    let Some(top) = open_dir_at(parent, parent_path, name)? else {
        return Ok(false);
    };
    race_point(point);
    let path = parent_path.join(name);
    empty_dir(top, &path)?;
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(Errno::NOTDIR) => Err(FsError::Replaced { path }),
        Err(e) => Err(FsError::io(path, e)),
    }
}

/// One directory of the tree [`empty_dir`] is emptying.
struct Level {
    fd: OwnedFd,
    /// Its name in the level above; `None` for the top, which the caller removes.
    name: Option<CString>,
    /// Entries still to remove, from one listing (and, in the top, the subdirectories
    /// [`move_up`] moved there since).
    pending: Vec<(CString, bool)>,
}

/// Removes every entry of the open directory `top` (found at `path`), depth first, with a
/// stack of at most [`MAX_OPEN_LEVELS`] levels rather than recursion, so a deep tree can
/// neither overflow the call stack nor run out of descriptors.
fn empty_dir(top: OwnedFd, path: &Path) -> Result<(), FsError> {
    let first = list(&top).map_err(|e| FsError::io(path.to_path_buf(), e))?;
    let mut stack = Vec::with_capacity(MAX_OPEN_LEVELS);
    stack.push(Level {
        fd: top,
        name: None,
        pending: first,
    });
    let mut moved = 0;
    while let Some(level) = stack.last_mut() {
        let Some((name, is_dir)) = level.pending.pop() else {
            let Some(done) = stack.pop() else { break };
            if let (Some(name), Some(above)) = (done.name, stack.last()) {
                drop(done.fd);
                match rustix::fs::unlinkat(&above.fd, name.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(FsError::io(entry_path(path, &stack, &name), e)),
                }
            }
            continue;
        };
        let here = stack.len() - 1;
        if !is_dir {
            match rustix::fs::unlinkat(&stack[here].fd, name.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => continue,
                // Swapped for a directory since the listing: handled as one below.
                Err(Errno::ISDIR | Errno::PERM) => {}
                Err(e) => return Err(FsError::io(entry_path(path, &stack, &name), e)),
            }
        }
        if stack.len() == MAX_OPEN_LEVELS {
            move_up(&mut stack, &name, &mut moved, path)?;
            continue;
        }
        race_point("tree.enter");
        match rustix::fs::openat(&stack[here].fd, name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let pending =
                    list(&fd).map_err(|e| FsError::io(entry_path(path, &stack, &name), e))?;
                stack.push(Level {
                    fd,
                    name: Some(name),
                    pending,
                });
            }
            Err(Errno::NOENT) => {}
            // A symlink or a file (swapped in since the listing): removed, not followed.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                match rustix::fs::unlinkat(&stack[here].fd, name.as_c_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(FsError::io(entry_path(path, &stack, &name), e)),
                }
            }
            Err(e) => return Err(FsError::io(entry_path(path, &stack, &name), e)),
        }
    }
    Ok(())
}

/// Moves the subdirectory `name` of the deepest level of `stack` (which is full) up into
/// the top level under the first free `.remove-tree-<n>` name, counting from `*next`, and
/// adds it to the top's entries still to remove: it is entered again from there, with the
/// levels in between closed by then.
///
/// The rename is relative to the two descriptors and replaces nothing, so what is moved
/// stays inside the tree, and a symlink swapped in for `name` since the listing is moved
/// as a link (and removed as one from the top). If the top is on another filesystem than
/// `name` (a mount inside the tree: `EXDEV`), the levels below it are tried in turn, down
/// to the one above the deepest: any of them still brings `name` at least a level up.
fn move_up(stack: &mut [Level], name: &CStr, next: &mut u64, path: &Path) -> Result<(), FsError> {
    let deepest = stack.len() - 1;
    race_point("tree.move");
    for target in 0..deepest {
        loop {
            let to = format!("{MOVED_PREFIX}{next}");
            *next += 1;
            match rename_noreplace(&stack[deepest].fd, name, &stack[target].fd, to.as_str()) {
                Ok(()) => {
                    // Made of a prefix and digits: never holds a NUL byte.
                    if let Ok(to) = CString::new(to) {
                        stack[target].pending.push((to, true));
                    }
                    return Ok(());
                }
                Err(Errno::EXIST) => {}
                // Gone since the listing: nothing left to remove.
                Err(Errno::NOENT) => return Ok(()),
                Err(Errno::XDEV) => break,
                Err(e) => return Err(FsError::io(entry_path(path, stack, name), e)),
            }
        }
    }
    Err(FsError::io(entry_path(path, stack, name), Errno::XDEV))
}

/// Where the entry `name` of the deepest level of `stack` (whose top is at `top`) is now,
/// for error messages: below a `.remove-tree-<n>` if it was moved up.
fn entry_path(top: &Path, stack: &[Level], name: &CStr) -> PathBuf {
    let mut path = top.to_path_buf();
    for level in stack {
        if let Some(name) = &level.name {
            path.push(OsStr::from_bytes(name.to_bytes()));
        }
    }
    path.push(OsStr::from_bytes(name.to_bytes()));
    path
}

/// The entries of the open directory `dir` but `.` and `..`, each with whether it is a
/// directory (from `d_type`, or `fstatat` without following where the filesystem does not
/// fill it in).
fn list(dir: &OwnedFd) -> Result<Vec<(CString, bool)>, Errno> {
    let mut entries = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => matches!(
                rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory
            ),
            _ => false,
        };
        entries.push((name.to_owned(), is_dir));
    }
    Ok(entries)
}

/// The permission bits a new volume directory gets.
///
/// The default is `0770`: kubelet gives a pod's `fsGroup` group ownership of a local
/// volume, so owner and group are enough for pods, while other users and processes on the
/// node (which `0777` would let in) cannot read or write tenants' data. Pods that run as
/// a non-root user without an `fsGroup` need `volumeMode: "0777"` on their pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VolumeMode(pub u32);

impl VolumeMode {
    /// The mode bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Reads a quoted octal mode of three or four digits such as `"0770"` or `"2775"`.
    pub fn parse_octal(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !(3..=4).contains(&t.len()) || !t.chars().all(|c| ('0'..='7').contains(&c)) {
            return Err(format!(
                "{s:?} is not an octal mode; write three or four octal digits such as \"0770\""
            ));
        }
        u32::from_str_radix(t, 8)
            .map(VolumeMode)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

impl Default for VolumeMode {
    fn default() -> Self {
        VolumeMode(0o770)
    }
}

impl fmt::Display for VolumeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC, the stamp in archive names (the agent's and the NFS
/// mode's); times before 1970 print as 1970-01-01.
pub fn utc_stamp(at: std::time::SystemTime) -> String {
    let at = jiff::Timestamp::try_from(at)
        .ok()
        .filter(|t| *t >= jiff::Timestamp::UNIX_EPOCH)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// A named point between a check and the use it guards. Unit tests register a hook that
/// swaps the filesystem there (a directory for a symlink) to prove the use does not follow
/// what was swapped in. Outside tests it does nothing: the hooks exist only in this crate's
/// tests and with the `race-points` feature, and even then only on a thread that set one.
pub fn race_point(point: &'static str) {
    #[cfg(any(test, feature = "race-points"))]
    race::run(point);
    let _ = point;
}

/// Whether `renameat2` flags are to be treated as unsupported: never, except on a test
/// thread that asked for it with [`race::without_rename_flags`].
fn rename_flags_unsupported() -> bool {
    #[cfg(any(test, feature = "race-points"))]
    if race::rename_flags_off() {
        return true;
    }
    false
}

/// The test side of [`race_point`]: a per-thread hook, and a per-thread switch that makes
/// [`rename_noreplace`] behave as on a filesystem without `renameat2` flags (NFS).
#[cfg(any(test, feature = "race-points"))]
#[allow(clippy::unwrap_used)]
pub mod race {
    use std::cell::{Cell, RefCell};

    type Hook = Box<dyn FnMut(&str)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
        static NO_RENAME_FLAGS: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `hook` at every race point this thread passes until the guard is dropped.
    pub fn set(hook: impl FnMut(&str) + 'static) -> Guard {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
        Guard
    }

    /// Removes the hook when dropped.
    pub struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            HOOK.with(|h| *h.borrow_mut() = None);
        }
    }

    /// At `point`, moves `victim` aside to `<victim>.moved` and puts a symlink to `target`
    /// in its place: the swap an attacker with write access to `victim`'s parent makes.
    pub fn swap_at(
        point: &'static str,
        victim: std::path::PathBuf,
        target: std::path::PathBuf,
    ) -> Guard {
        set(move |at| {
            if at == point {
                std::fs::rename(&victim, victim.with_extension("moved")).unwrap();
                std::os::unix::fs::symlink(&target, &victim).unwrap();
            }
        })
    }

    pub(super) fn run(point: &str) {
        HOOK.with(|h| {
            if let Some(hook) = h.borrow_mut().as_mut() {
                hook(point);
            }
        });
    }

    /// Makes `renameat2` flags fail with `EINVAL` on this thread, as on NFS, until the
    /// guard is dropped.
    pub fn without_rename_flags() -> FlagsGuard {
        NO_RENAME_FLAGS.with(|f| f.set(true));
        FlagsGuard
    }

    /// Gives `renameat2` its flags back when dropped.
    pub struct FlagsGuard;

    impl Drop for FlagsGuard {
        fn drop(&mut self) {
            NO_RENAME_FLAGS.with(|f| f.set(false));
        }
    }

    pub(super) fn rename_flags_off() -> bool {
        NO_RENAME_FLAGS.with(Cell::get)
    }
}

/// Makes the directory `name` in `parent` holding a chain of `levels` directories named
/// `d`, one inside the other, with a file `f` and a symlink `out` to `outside` at four
/// depths (the top, a third and two thirds of the way down, the bottom). Made with
/// `mkdirat` relative to the previous level's descriptor, one descriptor at a time: the
/// chain's path is far longer than `PATH_MAX`.
#[cfg(any(test, feature = "race-points"))]
#[allow(clippy::unwrap_used)]
pub fn deep_chain(parent: &Path, name: &str, levels: usize, outside: &Path) {
    let mut dir = open_dir(parent).unwrap();
    let mut next = name;
    let marked = [0, levels / 3, 2 * levels / 3, levels];
    for depth in 0..=levels {
        rustix::fs::mkdirat(&dir, next, Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, next, dir_flags(), Mode::empty()).unwrap();
        next = "d";
        if marked.contains(&depth) {
            let file = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC;
            drop(rustix::fs::openat(&dir, "f", file, Mode::from_raw_mode(0o644)).unwrap());
            rustix::fs::symlinkat(outside, &dir, "out").unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn dir_fd(p: &Path) -> OwnedFd {
        open_dir(p).unwrap()
    }

    #[test]
    fn the_utc_stamp_is_compact_iso_8601() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2024-02-29T13:45:07Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
        assert_eq!(utc_stamp(t), "20240229T134507Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(utc_stamp(t), "20241231T235959Z");
        // Before 1970: the epoch.
        assert_eq!(
            utc_stamp(UNIX_EPOCH - Duration::from_secs(86_400)),
            "19700101T000000Z"
        );
    }

    #[test]
    fn rename_noreplace_never_replaces_with_or_without_renameat2_flags() {
        for flags in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let _nfs = (!flags).then(race::without_rename_flags);
            let fd = dir_fd(d.path());
            fs::create_dir(d.path().join("src")).unwrap();
            fs::create_dir(d.path().join("full")).unwrap();
            fs::write(d.path().join("full/f"), b"keep").unwrap();
            fs::write(d.path().join("file"), b"keep").unwrap();
            symlink("/", d.path().join("link")).unwrap();
            fs::create_dir(d.path().join("empty")).unwrap();
            for taken in ["full", "file", "link", "empty"] {
                assert_eq!(
                    rename_noreplace(&fd, "src", &fd, taken),
                    Err(Errno::EXIST),
                    "{taken} (flags: {flags})"
                );
            }
            assert_eq!(fs::read(d.path().join("full/f")).unwrap(), b"keep");
            assert_eq!(fs::read(d.path().join("file")).unwrap(), b"keep");
            rename_noreplace(&fd, "src", &fd, "free").unwrap();
            assert!(d.path().join("free").is_dir() && !d.path().join("src").exists());
            assert_eq!(
                rename_noreplace(&fd, "src", &fd, "again"),
                Err(Errno::NOENT)
            );
        }
    }

    #[test]
    fn remove_tree_at_removes_links_not_their_targets_and_refuses_a_linked_top() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(out.join("keep")).unwrap();
        fs::write(out.join("keep/f"), b"keep").unwrap();
        let vol = d.path().join("vol");
        fs::create_dir_all(vol.join("a/b/c")).unwrap();
        fs::write(vol.join("a/b/c/f"), b"x").unwrap();
        symlink(&out, vol.join("a/escape")).unwrap();
        symlink(out.join("keep/f"), vol.join("a/b/file-link")).unwrap();
        symlink(&out, d.path().join("top-link")).unwrap();
        let fd = dir_fd(d.path());
        let e = remove_tree_at(&fd, d.path(), "top-link", "test").unwrap_err();
        assert!(matches!(e, FsError::Symlink { .. }), "{e}");
        assert!(remove_tree_at(&fd, d.path(), "vol", "test").unwrap());
        assert!(!vol.exists());
        assert!(!remove_tree_at(&fd, d.path(), "vol", "test").unwrap());
        assert_eq!(fs::read(out.join("keep/f")).unwrap(), b"keep");
        assert!(
            fs::symlink_metadata(d.path().join("top-link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_deep_tree_is_removed_without_recursion() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().join("vol");
        for _ in 0..200 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("f"), b"x").unwrap();
        let fd = dir_fd(d.path());
        assert!(remove_tree_at(&fd, d.path(), "vol", "test").unwrap());
        assert!(!d.path().join("vol").exists());
    }

    /// The directories at and below `dir`, counted without recursion.
    fn dirs_in(dir: &Path) -> usize {
        let (mut count, mut todo) = (0, vec![dir.to_path_buf()]);
        while let Some(dir) = todo.pop() {
            count += 1;
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    todo.push(entry.path());
                }
            }
        }
        count
    }

    #[test]
    fn a_removal_stopped_part_way_leaves_a_smaller_tree_that_a_retry_removes() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep"), b"keep").unwrap();
        deep_chain(d.path(), "vol", 300, &out);
        let vol = d.path().join("vol");
        assert_eq!(dirs_in(&vol), 301);
        let fd = dir_fd(d.path());
        // Killed after a few moves up: what was moved is still inside the tree.
        let mut entered = 0;
        let race = race::set(move |at| {
            entered += usize::from(at == "tree.enter");
            assert!(entered < 200, "stopped");
        });
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            remove_tree_at(&fd, d.path(), "vol", "test")
        }));
        drop(race);
        assert!(stopped.is_err());
        let left = dirs_in(&vol);
        assert!(left < 301, "{left}");
        let names: Vec<_> = fs::read_dir(&vol)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with(MOVED_PREFIX)),
            "{names:?}"
        );
        assert!(remove_tree_at(&fd, d.path(), "vol", "test").unwrap());
        assert!(!vol.exists());
        assert_eq!(fs::read(out.join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn a_deep_subdirectory_swapped_for_a_symlink_is_moved_up_as_a_link_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep"), b"keep").unwrap();
        deep_chain(d.path(), "vol", 100, &out);
        let mut victim = d.path().join("vol");
        for _ in 0..MAX_OPEN_LEVELS {
            victim.push("d");
        }
        let fd = dir_fd(d.path());
        let race = race::swap_at("tree.move", victim.clone(), out.clone());
        // The real subdirectory was moved aside after its parent's listing, so that parent
        // is not empty at the end: refused, retried.
        let first = remove_tree_at(&fd, d.path(), "vol", "test").unwrap_err();
        drop(race);
        assert!(matches!(first, FsError::Io { .. }), "{first}");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1, "not entered");
        assert!(fs::symlink_metadata(&victim).is_err(), "moved up");
        assert!(remove_tree_at(&fd, d.path(), "vol", "test").unwrap());
        assert!(!d.path().join("vol").exists());
        assert_eq!(fs::read(out.join("keep")).unwrap(), b"keep");
    }

    /// The directory whose `vol` chain [`deep_tree_child`] removes, set by its parent test.
    const DEEP_TREE_DIR: &str = "STOWAGE_TEST_DEEP_TREE_DIR";

    #[test]
    fn a_20000_deep_tree_is_removed_with_256_descriptors_on_a_small_stack() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep"), b"keep").unwrap();
        deep_chain(d.path(), "vol", 20_000, &out);
        // The open-file limit is lowered for a child process running the test below, not
        // for this one, whose other tests may run on threads beside this one.
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 256 && exec "$0" "$@""#)
            .arg(std::env::current_exe().unwrap())
            .args(["fsutil::tests::deep_tree_child", "--exact", "--ignored"])
            .args(["--test-threads=1", "--nocapture"])
            .env(DEEP_TREE_DIR, d.path())
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(!d.path().join("vol").exists());
        assert_eq!(
            fs::read(out.join("keep")).unwrap(),
            b"keep",
            "a link's target"
        );
    }

    #[test]
    #[ignore = "run by a_20000_deep_tree_is_removed_with_256_descriptors_on_a_small_stack"]
    fn deep_tree_child() {
        let Some(dir) = std::env::var_os(DEEP_TREE_DIR).map(PathBuf::from) else {
            eprintln!("{DEEP_TREE_DIR} is not set: nothing to remove outside the parent test");
            return;
        };
        let limits = fs::read_to_string("/proc/self/limits").unwrap();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max open files")
                    && l.split_whitespace().nth(3) == Some("256")),
            "{limits}"
        );
        let removed = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || remove_tree_at(&dir_fd(&dir), &dir, "vol", "test"))
            .unwrap()
            .join()
            .unwrap();
        assert!(removed.unwrap());
    }
}
