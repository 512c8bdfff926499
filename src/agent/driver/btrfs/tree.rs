//! What the driver reads out of btrfs's own trees (`TREE_SEARCH`, which needs
//! `CAP_SYS_ADMIN`, like the rest of the driver): the subvolumes nested inside a subvolume
//! and where each is linked, the directories leading to a link, and the qgroups with their
//! usage, limits and relations.
//!
//! Everything here is looked up by id, never by path: a tenant can rename what is inside
//! its volume at any time, so paths are only walked (by [`super::Btrfs`]) with each step
//! checked against the inode numbers found here.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;

use rustix::io::{Errno, Result};

use super::ioctl::{self, Key};

/// Where a subvolume is linked: as the entry `name` of directory inode `dir` in subvolume
/// `parent` (a `ROOT_REF` item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The subvolume's id.
    pub id: u64,
    /// The subvolume holding the link.
    pub parent: u64,
    /// The inode number of the directory holding the link, in `parent`'s tree.
    pub dir: u64,
    /// The entry's name in that directory.
    pub name: Vec<u8>,
}

/// The subvolumes linked directly inside subvolume `parent`.
pub fn children(fd: impl AsFd, parent: u64) -> Result<Vec<Link>> {
    let items = ioctl::tree_search(
        fd,
        ioctl::ROOT_TREE_OBJECTID,
        Key {
            objectid: parent,
            kind: ioctl::ROOT_REF_KEY,
            offset: 0,
        },
        Key {
            objectid: parent,
            kind: ioctl::ROOT_REF_KEY,
            offset: u64::MAX,
        },
    )?;
    items
        .into_iter()
        .filter(|item| item.key.objectid == parent && item.key.kind == ioctl::ROOT_REF_KEY)
        .map(|item| {
            // `struct btrfs_root_ref { __le64 dirid; __le64 sequence; __le16 name_len; }`,
            // packed, then the name.
            let dir = ioctl::le_u64(&item.data, 0)?;
            let len = usize::from(ioctl::le_u16(&item.data, 16)?);
            let name = item.data.get(18..18 + len).ok_or(Errno::IO)?.to_vec();
            Ok(Link {
                id: item.key.offset,
                parent,
                dir,
                name,
            })
        })
        .collect()
}

/// Every subvolume nested inside subvolume `top`, at any depth, each after the one it is
/// linked in (breadth first): reversed, the deepest come first. Walked with a queue, not
/// recursion, so a tenant's deep nesting costs memory for its ids only.
pub fn nested(fd: impl AsFd, top: u64) -> Result<Vec<Link>> {
    let fd = fd.as_fd();
    let mut found: Vec<Link> = Vec::new();
    let mut seen = BTreeSet::from([top]);
    let mut next = 0;
    let mut parent = top;
    loop {
        for link in children(fd, parent)? {
            // A subvolume is linked once; the check only guards against a corrupt tree.
            if seen.insert(link.id) {
                found.push(link);
            }
        }
        let Some(link) = found.get(next) else {
            return Ok(found);
        };
        parent = link.id;
        next += 1;
    }
}

/// The directories from the root of subvolume `tree` down to its directory inode `dir`,
/// each as `(inode number, name)`, from the top; empty for the root directory itself.
/// Read from the `INODE_REF` items (a directory has exactly one), so it has no length
/// limit, unlike `INO_LOOKUP`'s 4080-byte path. `ENOENT`: the directory is gone.
pub fn dir_path(fd: impl AsFd, tree: u64, dir: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let fd = fd.as_fd();
    let mut path = Vec::new();
    let mut ino = dir;
    while ino != ioctl::FIRST_FREE_OBJECTID {
        let key = |offset| Key {
            objectid: ino,
            kind: ioctl::INODE_REF_KEY,
            offset,
        };
        let items = ioctl::tree_search(fd, tree, key(0), key(u64::MAX))?;
        let Some(item) = items
            .into_iter()
            .find(|item| item.key.objectid == ino && item.key.kind == ioctl::INODE_REF_KEY)
        else {
            return Err(Errno::NOENT);
        };
        // `struct btrfs_inode_ref { __le64 index; __le16 name_len; }`, packed, then the
        // name; the key's offset is the parent directory's inode.
        let len = usize::from(ioctl::le_u16(&item.data, 8)?);
        let name = item.data.get(10..10 + len).ok_or(Errno::IO)?.to_vec();
        path.push((ino, name));
        if item.key.offset == ino || path.len() > MAX_DEPTH {
            // A loop: only a corrupt tree has one.
            return Err(Errno::IO);
        }
        ino = item.key.offset;
    }
    path.reverse();
    Ok(path)
}

/// More directories than any path can hold (each level is at least two bytes of path,
/// and the kernel limits nothing else): a bound against a corrupt tree only.
const MAX_DEPTH: usize = 1 << 24;

/// The qgroup id `level/id`.
pub const fn qgroup(level: u64, id: u64) -> u64 {
    (level << ioctl::QGROUP_LEVEL_SHIFT) | id
}

/// A qgroup's level (0 for a subvolume's own qgroup).
pub const fn level(qgroup: u64) -> u64 {
    qgroup >> ioctl::QGROUP_LEVEL_SHIFT
}

/// `level/id`, as `btrfs qgroup show` writes it.
pub fn show(qgroup: u64) -> String {
    format!(
        "{}/{}",
        level(qgroup),
        qgroup & ((1 << ioctl::QGROUP_LEVEL_SHIFT) - 1)
    )
}

/// The filesystem's qgroups as the quota tree holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qgroups {
    /// The status flags (`BTRFS_QGROUP_STATUS_FLAG_*`).
    pub flags: u64,
    /// Each qgroup's referenced bytes.
    pub referenced: BTreeMap<u64, u64>,
    /// Each limited qgroup's referenced-bytes limit.
    pub limit: BTreeMap<u64, u64>,
    /// `(member, parent)` for each relation.
    pub relations: BTreeSet<(u64, u64)>,
}

impl Qgroups {
    /// Whether qgroup `q` exists.
    pub fn exists(&self, q: u64) -> bool {
        self.referenced.contains_key(&q)
    }

    /// Whether `member` is a member of `parent`.
    pub fn related(&self, member: u64, parent: u64) -> bool {
        self.relations.contains(&(member, parent))
    }

    /// What subvolume `id` holds: its level-1 qgroup's referenced bytes (nested
    /// subvolumes included) if it has one, else its own qgroup's.
    pub fn held(&self, id: u64) -> Option<u64> {
        let own = qgroup(1, id);
        self.referenced
            .get(&own)
            .or_else(|| self.referenced.get(&id))
            .copied()
    }

    /// Whether the numbers are marked wrong and no rescan is running to fix them.
    pub fn needs_rescan(&self) -> bool {
        self.flags & ioctl::QGROUP_STATUS_FLAG_INCONSISTENT != 0
            && self.flags & ioctl::QGROUP_STATUS_FLAG_RESCAN == 0
    }
}

/// The qgroups of the filesystem holding `fd` (one pass over the quota tree), or `None`
/// when quotas are off.
pub fn qgroups(fd: impl AsFd) -> Result<Option<Qgroups>> {
    let all = ioctl::tree_search(
        fd,
        ioctl::QUOTA_TREE_OBJECTID,
        Key {
            objectid: 0,
            kind: 0,
            offset: 0,
        },
        Key {
            objectid: u64::MAX,
            kind: u8::MAX,
            offset: u64::MAX,
        },
    );
    let items = match all {
        Ok(items) => items,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut q = Qgroups::default();
    for item in items {
        match item.key.kind {
            // `struct btrfs_qgroup_status_item { __le64 version, generation, flags,
            // rescan; }`.
            ioctl::QGROUP_STATUS_KEY => q.flags = ioctl::le_u64(&item.data, 16)?,
            // `struct btrfs_qgroup_info_item { __le64 generation, rfer, rfer_cmpr, excl,
            // excl_cmpr; }`.
            ioctl::QGROUP_INFO_KEY => {
                q.referenced
                    .insert(item.key.offset, ioctl::le_u64(&item.data, 8)?);
            }
            // `struct btrfs_qgroup_limit_item { __le64 flags, max_rfer, max_excl, rsv_rfer,
            // rsv_excl; }`.
            ioctl::QGROUP_LIMIT_KEY => {
                let flags = ioctl::le_u64(&item.data, 0)?;
                if flags & ioctl::QGROUP_LIMIT_MAX_RFER != 0 {
                    q.limit
                        .insert(item.key.offset, ioctl::le_u64(&item.data, 8)?);
                }
            }
            // Stored both ways; the member is the one of the lower level.
            ioctl::QGROUP_RELATION_KEY => {
                let (a, b) = (item.key.objectid, item.key.offset);
                if level(a) < level(b) {
                    q.relations.insert((a, b));
                }
            }
            _ => {}
        }
    }
    Ok(Some(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_ids_carry_their_level_in_the_top_bits() {
        assert_eq!(qgroup(0, 257), 257);
        assert_eq!(qgroup(1, 257), (1 << 48) | 257);
        assert_eq!(level(qgroup(1, 257)), 1);
        assert_eq!(show(qgroup(1, 257)), "1/257");
        assert_eq!(show(257), "0/257");
    }

    #[test]
    fn a_volume_holds_what_its_level_one_qgroup_references() {
        let mut q = Qgroups::default();
        q.referenced.insert(257, 10);
        assert_eq!(q.held(257), Some(10));
        q.referenced.insert(qgroup(1, 257), 30);
        assert_eq!(q.held(257), Some(30));
        assert_eq!(q.held(258), None);
        q.flags = ioctl::QGROUP_STATUS_FLAG_INCONSISTENT;
        assert!(q.needs_rescan());
        q.flags |= ioctl::QGROUP_STATUS_FLAG_RESCAN;
        assert!(!q.needs_rescan());
    }
}
