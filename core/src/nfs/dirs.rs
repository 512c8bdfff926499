//! Claim directories on a server's mount: create, look up, delete, archive, keep.
//!
//! ```text
//!   <mount>/<namespace>/<claim>                      a volume (nested layout)
//!   <mount>/<namespace>-<claim>                      a volume (flat layout, takeover only)
//!   <mount>/archived-<namespace>-<claim>-<YYYYMMDDTHHMMSSZ>[-<n>]   an archived volume
//! ```
//!
//! Only filesystem calls (no shell, no `cp -r`): an archive is one `rename` on the server,
//! atomic and instant, with no doubled space.
//!
//! Nothing is done by path. Every operation opens the mount `O_NOFOLLOW` and then each
//! component of the claim's directory with `openat(O_NOFOLLOW | O_DIRECTORY)` relative to
//! the directory before it ([`crate::fsutil`], shared with the agent), so a symlink swapped
//! in between a check and its use (by a tenant, another NFS client, or the server's owner)
//! is refused or removed as a link, never followed out of the mount:
//!
//! ```text
//!   create   <ns> and then <claim>: mkdirat .staging name ─ openat NOFOLLOW ─ fchmod
//!            ─ renameat NOREPLACE into place (an existing directory is adopted as it is)
//!   delete   unlinkat every entry relative to its directory's descriptor, bottom-up;
//!            a subdirectory is entered only through openat NOFOLLOW
//!   archive  renameat from the namespace directory's descriptor to the mount's
//! ```
//!
//! Every claim directory, and every namespace directory of the nested layout, carries an
//! ownership marker `.stowage-owner` ([`super::owner`]: format, rules). It is written when
//! the directory is made or first adopted, as a file of its own descriptor's directory
//! ([`fsutil::write_file_at`]: `O_CREAT | O_EXCL | O_NOFOLLOW` under a staging name, then a
//! rename that replaces nothing) and read the same way ([`fsutil::read_file_at`]:
//! `O_NOFOLLOW`, a regular file, at most 4 KiB). Look-up, create and remove refuse a
//! directory whose marker names another claim or a namespace, or that has no marker but
//! holds a marked nested claim `<it>/<x>` (a namespace directory of an older version seen
//! through the flat layout):
//!
//! ```text
//!   holds    <ns>: namespace marker of <ns>, or none ─ <claim>: its claim's marker, or
//!            none (flat: and no marked nested claim inside); a claim marker recording
//!            another uid for the namespace only if the class lets a re-created namespace
//!            adopt it
//!   create   the same checks on the directories made or adopted, then a missing marker is
//!            written, and one that does not record the namespace's current uid rewritten
//!            (a plain renameat of a fresh staging file over it)
//!   remove   the claim directory's marker names the PV's claim, or none (flat: and no
//!            marked nested claim inside); otherwise nothing is removed or moved
//! ```
//!
//! Staging names start with a dot (`.staging-<claim>` beside the claim's directory,
//! `.parent-<namespace>.<claim>` beside the namespace's), which no claim directory, namespace
//! directory or archive name does. A leftover of a crashed create is reused by the retry,
//! and removed by a delete or archive of the claim.
//!
//! Archive names can never collide with a live directory: live top-level names are DNS
//! names (lowercase), while the UTC stamp in an archive name holds the capitals `T` and `Z`;
//! an existing archive of the same name and second gets `-1`, `-2`, ….
//!
//! The NFS client supports no `renameat2` flags; [`fsutil::rename_noreplace`] falls back to
//! a checked plain `renameat` there, whose only window can replace an empty directory, never
//! follow or overwrite data.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::owner::{
    self, Adopt, Marker, NamespaceNow, NotOurs, OWNER_FILE, Owner, Purpose, Refusal,
};
use super::place::{ClaimName, Layout, RelDir};
use super::ring::stable_hash;
use crate::fsutil::VolumeMode;
use crate::fsutil::utc_stamp;
use crate::fsutil::{self, FileAt, FsError, NewDir, race_point};
use crate::volume::OnDelete;

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

/// `NAME_MAX`: the longest file name.
const NAME_MAX: usize = 255;

/// The prefix of a claim directory being set up, beside where it goes.
const STAGING_PREFIX: &str = ".staging-";

/// The prefix of a namespace directory being set up for a claim, at the top of the mount.
const PARENT_STAGING_PREFIX: &str = ".parent-";

/// Where an ownership marker is written before it is renamed to [`OWNER_FILE`].
const OWNER_STAGING: &str = ".stowage-owner.new";

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
    /// The directory was swapped for something else (a symlink, another directory) between
    /// two steps of the operation. What was swapped in was not followed; a swapped-in entry
    /// may have been moved to the name the directory was going to.
    #[error(
        "{path} was replaced by something else while the controller was making or moving it; nothing was followed, but check who else writes the NFS server's top directories and fix the entry by hand"
    )]
    Replaced {
        /// The directory.
        path: PathBuf,
    },
    /// The directory is not the claim's: its ownership marker names another claim or a
    /// namespace, or it is a nested namespace's directory ([`super::owner`]).
    #[error(transparent)]
    NotOurs(Box<NotOurs>),
}

impl From<FsError> for DirError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io { path, source } => DirError::Io { path, source },
            FsError::NotADirectory { path } => DirError::NotADirectory { path },
            FsError::Symlink { path } => DirError::Symlink { path },
            FsError::Replaced { path } => DirError::Replaced { path },
        }
    }
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
            DirError::Replaced { .. } => "NfsDirectoryReplaced",
            DirError::NotOurs(n) => n.reason(),
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

/// An open directory of the mount and where it is (for messages).
struct Opened {
    fd: OwnedFd,
    path: PathBuf,
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

    /// Opens the mount, refusing it if it has become a symlink since [`ServerRoot::open`].
    fn open_root(&self) -> Result<Opened, DirError> {
        Ok(Opened {
            fd: fsutil::open_dir(&self.root)?,
            path: self.root.clone(),
        })
    }

    /// Opens the directory holding the claim directory of `rel` (the mount for the flat
    /// layout, the namespace directory for the nested one) from the open mount, one
    /// component at a time without following a symlink; `None` if a level is missing.
    fn open_parent(&self, root: &Opened, rel: &RelDir) -> Result<Option<Opened>, DirError> {
        let (_, parents) = split(rel)?;
        let mut dir = Opened {
            fd: root
                .fd
                .try_clone()
                .map_err(|e| DirError::io(&root.path, e))?,
            path: root.path.clone(),
        };
        for part in parents {
            let Some(fd) = fsutil::open_dir_at(&dir.fd, &dir.path, part)? else {
                return Ok(None);
            };
            dir = Opened {
                fd,
                path: dir.path.join(part),
            };
        }
        Ok(Some(dir))
    }

    /// Whether the directory of `owner`'s claim exists here as a real directory that is the
    /// claim's. A symlink or a file on the way is an error, not a "no"; so is a directory
    /// that is not the claim's ([`DirError::NotOurs`]): a namespace directory whose marker
    /// is not that namespace's, a claim directory whose marker names another claim or
    /// records another uid for the claim's namespace (unless `owner` may adopt that,
    /// [`owner::check_namespace_uid`]), or an unmarked flat directory holding a marked
    /// nested claim. Reads only; markers are written by [`ServerRoot::create`].
    pub fn holds(&self, owner: &Owner) -> Result<bool, DirError> {
        let rel = owner.rel();
        let (last, parents) = split(&rel)?;
        let root = self.open_root()?;
        let Some(parent) = self.open_parent(&root, &rel)? else {
            return Ok(false);
        };
        if let Some(ns) = parents.first() {
            namespace_marked(&parent, ns, &owner.claim, &owner.namespace)?;
        }
        let Some(fd) = fsutil::open_dir_at(&parent.fd, &parent.path, last)? else {
            return Ok(false);
        };
        let dir = Opened {
            fd,
            path: parent.path.join(last),
        };
        claim_marked(
            &dir,
            last,
            Some(&owner.claim),
            owner.layout,
            Purpose::Volume,
            Some(&owner.namespace),
        )?;
        Ok(true)
    }

    /// Makes the directory of `owner`'s claim (and, nested, its namespace directory, mode
    /// [`PARENT_MODE`]) with exactly `mode`, whatever the process umask, and returns its
    /// path. Each directory gets its ownership marker ([`super::owner`]).
    ///
    /// Each level is made under a staging name, given its mode on its own descriptor and
    /// renamed into place without replacing anything ([`fsutil::make_dir_at`]), all relative
    /// to the descriptor of the level above: a symlink swapped in anywhere is refused, and
    /// the claim's path never holds a directory without its mode.
    ///
    /// Idempotent: an existing directory is adopted and keeps its mode and contents (a
    /// re-created claim finds its data, whatever its new uid), a staging leftover of a
    /// crashed create is reused; a file or symlink in the way is an error, and so is a
    /// directory that is not the claim's ([`ServerRoot::holds`]), before anything is
    /// written into it. An adopted directory without a marker (made by an older version or
    /// the source design) gets one; an adopted marker that does not record the namespace's
    /// current uid is rewritten to record it, keeping the rest ([`owner::Adopt`]).
    pub fn create(&self, owner: &Owner, mode: VolumeMode) -> Result<PathBuf, DirError> {
        let rel = owner.rel();
        let (last, parents) = split(&rel)?;
        let mut dir = self.open_root()?;
        for part in parents {
            let staging = parent_staging_name(part, last);
            let new = NewDir {
                name: part,
                staging: &staging,
                mode: PARENT_MODE.bits(),
                chmod_point: "nfs.create.parent.chmod",
                rename_point: "nfs.create.parent.rename",
            };
            let made = fsutil::make_dir_at(&dir.fd, &dir.path, &new, || {})?;
            dir = Opened {
                fd: made.fd,
                path: dir.path.join(part),
            };
            let fresh = Marker::for_namespace(part, owner.namespace.uid.as_ref());
            settle_marker(&dir, &fresh, || {
                namespace_marked(&dir, part, &owner.claim, &owner.namespace)
            })?;
        }
        let staging = staging_name(last);
        let new = NewDir {
            name: last,
            staging: &staging,
            mode: mode.bits(),
            chmod_point: "nfs.create.chmod",
            rename_point: "nfs.create.rename",
        };
        let made = fsutil::make_dir_at(&dir.fd, &dir.path, &new, || {})?;
        let claim_dir = Opened {
            fd: made.fd,
            path: dir.path.join(last),
        };
        settle_marker(&claim_dir, &Marker::for_claim(owner), || {
            claim_marked(
                &claim_dir,
                last,
                Some(&owner.claim),
                owner.layout,
                Purpose::Volume,
                Some(&owner.namespace),
            )
        })?;
        Ok(claim_dir.path)
    }

    /// Deals with the claim directory `rel` as `on_delete` says: remove it, rename it to a
    /// fresh archive name at the top of the mount, or leave it. Delete and archive also
    /// remove staging leftovers of a crashed create of the claim. Idempotent: a directory
    /// that is already gone is [`Removed::AlreadyGone`]. An empty namespace directory is
    /// left in place (a concurrent create in that namespace may need it).
    ///
    /// Nothing is followed: the removal unlinks entries relative to their directory's
    /// descriptor and enters subdirectories only with `O_NOFOLLOW`
    /// ([`fsutil::remove_tree_at`]); the archive is a `renameat` between the descriptors
    /// of the claim's parent and of the mount.
    ///
    /// Nothing is removed or moved that is not `claim`'s (the claim the released PV was
    /// made for; `None` if it names none): a directory whose marker names another claim
    /// or a namespace, or an unmarked flat directory holding a marked nested claim, is
    /// [`DirError::NotOurs`] and left as it is. This catches what an older version
    /// provisioned across the flat/nested collision.
    pub fn remove(
        &self,
        rel: &RelDir,
        claim: Option<&ClaimName>,
        on_delete: OnDelete,
        now: SystemTime,
    ) -> Result<Removed, DirError> {
        let path = self.dir_path(rel);
        if on_delete == OnDelete::Retain {
            return Ok(Removed::Retained(path));
        }
        let (last, parents) = split(rel)?;
        let root = self.open_root()?;
        if let Some(ns) = parents.first() {
            let staging = parent_staging_name(ns, last);
            fsutil::remove_tree_at(&root.fd, &root.path, &staging, "nfs.delete.staging")?;
        }
        let Some(parent) = self.open_parent(&root, rel)? else {
            return Ok(Removed::AlreadyGone(path));
        };
        let staging = staging_name(last);
        fsutil::remove_tree_at(&parent.fd, &parent.path, &staging, "nfs.delete.staging")?;
        if let Some(fd) = fsutil::open_dir_at(&parent.fd, &parent.path, last)? {
            let dir = Opened {
                fd,
                path: parent.path.join(last),
            };
            claim_marked(&dir, last, claim, rel.layout(), Purpose::Release, None)?;
        }
        match on_delete {
            OnDelete::Retain => Ok(Removed::Retained(path)),
            OnDelete::Delete => {
                if fsutil::remove_tree_at(&parent.fd, &parent.path, last, "nfs.delete.remove")? {
                    Ok(Removed::Deleted(path))
                } else {
                    Ok(Removed::AlreadyGone(path))
                }
            }
            OnDelete::Archive => self.archive(&root, &parent, rel, now),
        }
    }

    /// Renames the claim directory of `rel` (in the open `parent`) to the first free
    /// archive name in the open mount `root`.
    fn archive(
        &self,
        root: &Opened,
        parent: &Opened,
        rel: &RelDir,
        now: SystemTime,
    ) -> Result<Removed, DirError> {
        let (last, _) = split(rel)?;
        let from = parent.path.join(last);
        let Some(dir) = fsutil::open_dir_at(&parent.fd, &parent.path, last)? else {
            return Ok(Removed::AlreadyGone(from));
        };
        let opened = rustix::fs::fstat(&dir).map_err(|e| DirError::io(&from, e.into()))?;
        race_point("nfs.archive.rename");
        for name in archive_names(rel, now) {
            match fsutil::rename_noreplace(&parent.fd, last, &root.fd, &name) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(Errno::NOENT) => return Ok(Removed::AlreadyGone(from)),
                Err(e) => return Err(DirError::io(&from, e.into())),
            }
            let to = root.path.join(&name);
            // What was renamed is the entry found under the claim's name at the moment of
            // the rename: if a symlink was swapped in after the open, the link was moved
            // (not followed) and the claim's directory is wherever the swap put it.
            let moved = rustix::fs::statat(&root.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| DirError::io(&to, e.into()))?;
            if (moved.st_dev, moved.st_ino) != (opened.st_dev, opened.st_ino) {
                return Err(DirError::Replaced { path: from });
            }
            return Ok(Removed::Archived { from, to });
        }
        Err(DirError::io(
            &self.root,
            io::Error::other("no free archive name"),
        ))
    }

    /// A free archive path for `rel` at `now`:
    /// `<mount>/archived-<label>-<YYYYMMDDTHHMMSSZ>` or with `-1`, `-2`, … appended when that
    /// entry exists (anything counts, even a dangling symlink). Creates nothing; the archive
    /// step itself renames without replacing, so a name taken meanwhile is skipped there.
    pub fn archive_path(&self, rel: &RelDir, now: SystemTime) -> Result<PathBuf, DirError> {
        for name in archive_names(rel, now) {
            let candidate = self.root.join(name);
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

/// What the ownership marker of the open directory `dir` says: `Ok(None)` if it has none,
/// a refusal (for `claim`, `purpose`) if it cannot be read.
fn read_marker(
    dir: &Opened,
    claim: Option<&ClaimName>,
    purpose: Purpose,
) -> Result<Option<Marker>, DirError> {
    let invalid = |why: String| refuse(dir, claim, purpose, Refusal::InvalidMarker { why });
    match fsutil::read_file_at(&dir.fd, &dir.path, OWNER_FILE, owner::MAX_MARKER_LEN)? {
        FileAt::Absent => Ok(None),
        FileAt::Contents(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid("it is not UTF-8 text".to_string()))?;
            Marker::parse(&text).map(Some).map_err(invalid)
        }
        FileAt::Symlink => Err(invalid("it is a symlink (not followed)".to_string())),
        FileAt::NotAFile => Err(invalid("it is not a regular file".to_string())),
        FileAt::TooLong => Err(invalid(format!(
            "it is longer than {} bytes",
            owner::MAX_MARKER_LEN
        ))),
    }
}

/// The refusal of the open directory `dir` to `claim` for `purpose`.
fn refuse(dir: &Opened, claim: Option<&ClaimName>, purpose: Purpose, refusal: Refusal) -> DirError {
    DirError::NotOurs(Box::new(NotOurs {
        path: dir.path.clone(),
        claim: claim.map_or_else(|| "an unknown claim".to_string(), ToString::to_string),
        purpose,
        refusal,
    }))
}

/// What the marker of a directory that may be used says.
enum Marked {
    /// There is none: the directory is adopted and gets one.
    Unmarked,
    /// It says the directory is the claim's (or the namespace's) as it stands.
    Ours(Adopt),
}

/// Checks the open claim directory `dir` (named `name` in its parent) for `claim` in
/// `layout`, of the namespace known as `namespace` (`None` for a release, where the
/// namespace's uid plays no part): [`Marked::Ours`] if its marker says it is the claim's,
/// [`Marked::Unmarked`] if it has no marker and may be adopted, [`DirError::NotOurs`]
/// otherwise. An unmarked flat directory is refused if it holds a marked nested claim
/// `<name>/<x>` ([`nested_claim_inside`]).
fn claim_marked(
    dir: &Opened,
    name: &str,
    claim: Option<&ClaimName>,
    layout: Layout,
    purpose: Purpose,
    namespace: Option<&NamespaceNow>,
) -> Result<Marked, DirError> {
    match read_marker(dir, claim, purpose)? {
        Some(marker) => owner::check_claim_dir(&marker, claim, layout)
            .and_then(|()| match namespace {
                Some(now) => owner::check_namespace_uid(&marker, now),
                None => Ok(Adopt::AsIs),
            })
            .map(Marked::Ours)
            .map_err(|r| refuse(dir, claim, purpose, r)),
        None if layout == Layout::Flat => match nested_claim_inside(dir, name)? {
            Some(inside) => Err(refuse(
                dir,
                claim,
                purpose,
                Refusal::HoldsNestedClaim { inside },
            )),
            None => Ok(Marked::Unmarked),
        },
        None => Ok(Marked::Unmarked),
    }
}

/// Checks the open namespace directory `dir` of `namespace` (known as `now`) for the
/// nested `claim`: [`Marked::Ours`] if its marker says it is that namespace's,
/// [`Marked::Unmarked`] if it has no marker (an older version's, adopted),
/// [`DirError::NotOurs`] if it is a claim's volume or another namespace's directory.
fn namespace_marked(
    dir: &Opened,
    namespace: &str,
    claim: &ClaimName,
    now: &NamespaceNow,
) -> Result<Marked, DirError> {
    let purpose = Purpose::NamespaceOf;
    match read_marker(dir, Some(claim), purpose)? {
        Some(marker) => owner::check_namespace_dir(&marker, namespace)
            .and_then(|()| owner::check_namespace_uid(&marker, now))
            .map(Marked::Ours)
            .map_err(|r| refuse(dir, Some(claim), purpose, r)),
        None => Ok(Marked::Unmarked),
    }
}

/// Leaves the open directory `dir`, which `check` finds usable, with the right marker:
/// `fresh` written if it has none, its own rewritten if `check` says so
/// ([`Adopt::Rewrite`]). A marker that appears while `fresh` is being written (someone
/// else's) is checked too, and rewritten if need be, never replaced unchecked.
fn settle_marker(
    dir: &Opened,
    fresh: &Marker,
    check: impl Fn() -> Result<Marked, DirError>,
) -> Result<(), DirError> {
    let found = match check()? {
        Marked::Unmarked if write_marker(dir, fresh)? => return Ok(()),
        // Someone else's marker appeared meanwhile: it has to pass too.
        Marked::Unmarked => check()?,
        ours => ours,
    };
    match found {
        Marked::Ours(Adopt::Rewrite(marker)) => rewrite_marker(dir, &marker),
        Marked::Ours(Adopt::AsIs) | Marked::Unmarked => Ok(()),
    }
}

/// Writes `marker` into the open directory `dir`; `false` if a marker appeared there
/// meanwhile (the caller checks that one instead).
fn write_marker(dir: &Opened, marker: &Marker) -> Result<bool, DirError> {
    Ok(fsutil::write_file_at(
        &dir.fd,
        &dir.path,
        OWNER_FILE,
        OWNER_STAGING,
        marker.render().as_bytes(),
        "nfs.marker.rename",
    )?)
}

/// Replaces the marker of the open directory `dir` (just read and checked) with `marker`.
fn rewrite_marker(dir: &Opened, marker: &Marker) -> Result<(), DirError> {
    Ok(fsutil::replace_file_at(
        &dir.fd,
        &dir.path,
        OWNER_FILE,
        OWNER_STAGING,
        marker.render().as_bytes(),
        "nfs.marker.rewrite",
    )?)
}

/// The first subdirectory `x` of the open, unmarked top-level directory `dir` (named `name`)
/// whose marker says it is the nested claim `<name>/<x>`: then `dir` is namespace
/// `<name>`'s directory of the nested layout, not a flat claim's volume. `None` when
/// `name` cannot be a namespace (not a DNS label) or nothing inside says so.
///
/// Reads one directory listing and, for each entry named like a claim that is a
/// directory, one marker, all relative to descriptors, without following a symlink;
/// entries that cannot be opened or read are passed over (this looks for evidence, and
/// finds none there). It runs only for unmarked flat directories, which get a marker when
/// adopted, so it stops costing anything once a legacy directory has been adopted.
fn nested_claim_inside(dir: &Opened, name: &str) -> Result<Option<String>, DirError> {
    if crate::nfs::place::check_label(name).is_err() {
        return Ok(None);
    }
    let err = |e: Errno| DirError::io(&dir.path, e.into());
    let mut reader = rustix::fs::Dir::read_from(&dir.fd).map_err(err)?;
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(err)?;
        let Ok(sub) = entry.file_name().to_str() else {
            continue;
        };
        if sub.starts_with('.') || ClaimName::new(name, sub).is_err() {
            continue;
        }
        if !matches!(
            entry.file_type(),
            rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown
        ) {
            continue;
        }
        let Ok(Some(fd)) = fsutil::open_dir_at(&dir.fd, &dir.path, sub) else {
            continue;
        };
        let inner = Opened {
            fd,
            path: dir.path.join(sub),
        };
        if let Ok(Some(marker)) = read_marker(&inner, None, Purpose::Release)
            && owner::marks_nested_claim(&marker, name, sub)
        {
            return Ok(Some(format!("{name}/{sub}")));
        }
    }
    Ok(None)
}

/// The claim's own component and the ones above it. A [`RelDir`] always has one or two.
fn split(rel: &RelDir) -> Result<(&str, &[String]), DirError> {
    match rel.parts().split_last() {
        Some((last, parents)) => Ok((last.as_str(), parents)),
        None => Err(DirError::io(
            Path::new(""),
            io::Error::other("empty claim directory"),
        )),
    }
}

/// The archive names for `rel` at `now`, in the order tried:
/// `archived-<label>-<YYYYMMDDTHHMMSSZ>`, then with `-1`, `-2`, … appended.
fn archive_names(rel: &RelDir, now: SystemTime) -> impl Iterator<Item = String> {
    let mut label = rel.label();
    // The label is ASCII, so any byte index is a character boundary.
    label.truncate(ARCHIVE_LABEL_MAX);
    let base = format!("{ARCHIVE_PREFIX}{label}-{}", utc_stamp(now));
    (0u64..).map(move |n| {
        if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        }
    })
}

/// `.staging-<claim>`: where a claim directory is set up beside its final place.
fn staging_name(name: &str) -> String {
    bounded_name(STAGING_PREFIX, name)
}

/// `.parent-<namespace>.<claim>`: where the namespace directory is set up for one claim
/// at the top of the mount. Unique per claim (a namespace holds no dot), so concurrent
/// creates in one namespace do not share it.
fn parent_staging_name(namespace: &str, claim: &str) -> String {
    bounded_name(PARENT_STAGING_PREFIX, &format!("{namespace}.{claim}"))
}

/// `<prefix><key>`, or, when that is longer than `NAME_MAX`, the key cut short and a hash
/// of the whole key (so the name stays unique and the same for every retry).
fn bounded_name(prefix: &str, key: &str) -> String {
    if prefix.len() + key.len() <= NAME_MAX {
        return format!("{prefix}{key}");
    }
    // Claim keys are ASCII, so any byte index is a character boundary.
    let cut = key.get(..ARCHIVE_LABEL_MAX).unwrap_or(key);
    format!("{prefix}{cut}-{:016x}", stable_hash(key.as_bytes()))
}

#[cfg(test)]
mod tests;
