//! The btrfs ioctls the driver needs, as safe functions: the only `unsafe` in the agent.
//!
//! Each argument struct is laid out exactly as in the kernel's UAPI header `linux/btrfs.h`
//! (`#[repr(C)]`, the same field order and widths), and its size is asserted at compile time,
//! as are the request numbers (which encode that size), against the values the C header
//! yields on Linux.
//!
//! | ioctl | request | argument | size |
//! |---|---|---|---|
//! | `BTRFS_IOC_SUBVOL_CREATE` | `_IOW(0x94, 14)` | `btrfs_ioctl_vol_args` | 4096 |
//! | `BTRFS_IOC_SNAP_DESTROY` | `_IOW(0x94, 15)` | `btrfs_ioctl_vol_args` | 4096 |
//! | `BTRFS_IOC_TREE_SEARCH` | `_IOWR(0x94, 17)` | `btrfs_ioctl_search_args` | 4096 |
//! | `BTRFS_IOC_INO_LOOKUP` | `_IOWR(0x94, 18)` | `btrfs_ioctl_ino_lookup_args` | 4096 |
//! | `BTRFS_IOC_QUOTA_CTL` | `_IOWR(0x94, 40)` | `btrfs_ioctl_quota_ctl_args` | 16 |
//! | `BTRFS_IOC_QGROUP_ASSIGN` | `_IOW(0x94, 41)` | `btrfs_ioctl_qgroup_assign_args` | 24 |
//! | `BTRFS_IOC_QGROUP_CREATE` | `_IOW(0x94, 42)` | `btrfs_ioctl_qgroup_create_args` | 16 |
//! | `BTRFS_IOC_QGROUP_LIMIT` | `_IOR(0x94, 43)` | `btrfs_ioctl_qgroup_limit_args` | 48 |
//! | `BTRFS_IOC_QUOTA_RESCAN` | `_IOW(0x94, 44)` | `btrfs_ioctl_quota_rescan_args` | 64 |
//!
//! (`QGROUP_LIMIT` is declared `_IOR` in the header although userspace writes it; the
//! request number must match the header, so it is kept.)
//!
//! `TREE_SEARCH` copies b-tree items into a byte buffer: a `btrfs_ioctl_search_header`
//! (native endian) before each item's bytes (on-disk format, little endian). They are read
//! out of the buffer with bounds-checked slices, in safe code; items are never cast.
#![allow(unsafe_code)]

use std::mem::size_of;
use std::os::fd::AsFd;

use rustix::io::{Errno, Result};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, Updater, ioctl, opcode};

/// `BTRFS_IOCTL_MAGIC`.
const MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX`: the longest name `btrfs_ioctl_vol_args` carries (plus a NUL).
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_INO_LOOKUP_PATH_MAX`.
const INO_LOOKUP_PATH_MAX: usize = 4080;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
pub const FIRST_FREE_OBJECTID: u64 = 256;
/// `BTRFS_FS_TREE_OBJECTID`: the id of the top-level subvolume, which cannot be a volume.
pub const FS_TREE_OBJECTID: u64 = 5;
/// `BTRFS_QUOTA_CTL_ENABLE`: full qgroup accounting, as `btrfs quota enable` does.
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: the limit applies to referenced bytes.
pub const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// The `max_rfer` that clears a referenced-bytes limit (`CLEAR_VALUE` in the kernel).
pub const NO_LIMIT: u64 = u64::MAX;
/// `BTRFS_SEARCH_ARGS_BUFSIZE`: the item buffer of `btrfs_ioctl_search_args`.
const SEARCH_BUF: usize = 4096 - size_of::<SearchKey>();
/// `BTRFS_ROOT_TREE_OBJECTID`: the tree of tree roots, which holds the subvolume links.
pub const ROOT_TREE_OBJECTID: u64 = 1;
/// `BTRFS_QUOTA_TREE_OBJECTID`: the tree holding qgroups, their limits and relations.
pub const QUOTA_TREE_OBJECTID: u64 = 8;
/// `BTRFS_INODE_REF_KEY`: `(inode, INODE_REF, parent directory)` with the inode's name.
pub const INODE_REF_KEY: u8 = 12;
/// `BTRFS_ROOT_REF_KEY`: `(parent subvolume, ROOT_REF, child subvolume)` with where in
/// the parent the child is linked.
pub const ROOT_REF_KEY: u8 = 156;
/// `BTRFS_QGROUP_STATUS_KEY`: the quota tree's status item.
pub const QGROUP_STATUS_KEY: u8 = 240;
/// `BTRFS_QGROUP_INFO_KEY`: `(0, QGROUP_INFO, qgroup)` with its usage.
pub const QGROUP_INFO_KEY: u8 = 242;
/// `BTRFS_QGROUP_LIMIT_KEY`: `(0, QGROUP_LIMIT, qgroup)` with its limits.
pub const QGROUP_LIMIT_KEY: u8 = 244;
/// `BTRFS_QGROUP_RELATION_KEY`: `(member, QGROUP_RELATION, parent)` and the reverse.
pub const QGROUP_RELATION_KEY: u8 = 246;
/// `BTRFS_QGROUP_LEVEL_SHIFT`: a qgroup id is `level << 48 | id`.
pub const QGROUP_LEVEL_SHIFT: u32 = 48;
/// `BTRFS_QGROUP_STATUS_FLAG_RESCAN`: a rescan is running.
pub const QGROUP_STATUS_FLAG_RESCAN: u64 = 1 << 1;
/// `BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT`: the numbers are wrong until a rescan; newer
/// kernels (seen on 6.18) stop accounting altogether meanwhile, so no limit holds.
pub const QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;

/// `struct btrfs_ioctl_vol_args { __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1]; }`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_ino_lookup_args { __u64 treeid; __u64 objectid;
/// char name[BTRFS_INO_LOOKUP_PATH_MAX]; }`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_quota_ctl_args { __u64 cmd; __u64 status; }`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_qgroup_limit { __u64 flags, max_rfer, max_excl, rsv_rfer, rsv_excl; }`.
#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args { __u64 qgroupid; struct btrfs_qgroup_limit lim; }`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_qgroup_create_args { __u64 create; __u64 qgroupid; }`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_qgroup_assign_args { __u64 assign; __u64 src; __u64 dst; }`.
#[repr(C)]
struct QgroupAssignArgs {
    assign: u64,
    src: u64,
    dst: u64,
}

/// `struct btrfs_ioctl_quota_rescan_args { __u64 flags; __u64 progress;
/// __u64 reserved[6]; }`.
#[repr(C)]
struct QuotaRescanArgs {
    flags: u64,
    progress: u64,
    reserved: [u64; 6],
}

/// `struct btrfs_ioctl_search_key { __u64 tree_id, min_objectid, max_objectid, min_offset,
/// max_offset, min_transid, max_transid; __u32 min_type, max_type, nr_items, unused;
/// __u64 unused1, unused2, unused3, unused4; }`.
#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args { struct btrfs_ioctl_search_key key;
/// char buf[BTRFS_SEARCH_ARGS_BUFSIZE]; }`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF],
}

/// `struct btrfs_ioctl_search_header { __u64 transid, objectid, offset; __u32 type, len; }`:
/// only its size is needed here, the fields are read out of the buffer.
const SEARCH_HEADER: usize = 32;

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(size_of::<QgroupLimit>() == 40);
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(size_of::<QgroupCreateArgs>() == 16);
const _: () = assert!(size_of::<QgroupAssignArgs>() == 24);
const _: () = assert!(size_of::<QuotaRescanArgs>() == 64);
const _: () = assert!(size_of::<SearchKey>() == 104);
const _: () = assert!(size_of::<SearchArgs>() == 4096);

const SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(MAGIC, 14);
const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
const TREE_SEARCH: Opcode = opcode::read_write::<SearchArgs>(MAGIC, 17);
const INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(MAGIC, 18);
const QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(MAGIC, 40);
const QGROUP_ASSIGN: Opcode = opcode::write::<QgroupAssignArgs>(MAGIC, 41);
const QGROUP_CREATE: Opcode = opcode::write::<QgroupCreateArgs>(MAGIC, 42);
const QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(MAGIC, 43);
const QUOTA_RESCAN: Opcode = opcode::write::<QuotaRescanArgs>(MAGIC, 44);

// The request numbers `linux/btrfs.h` gives on Linux (x86, arm, riscv: the generic encoding).
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips"
)))]
const _: () = {
    assert!(SUBVOL_CREATE as u64 == 0x5000_940e);
    assert!(SNAP_DESTROY as u64 == 0x5000_940f);
    assert!(TREE_SEARCH as u64 == 0xd000_9411);
    assert!(INO_LOOKUP as u64 == 0xd000_9412);
    assert!(QUOTA_CTL as u64 == 0xc010_9428);
    assert!(QGROUP_ASSIGN as u64 == 0x4018_9429);
    assert!(QGROUP_CREATE as u64 == 0x4010_942a);
    assert!(QGROUP_LIMIT as u64 == 0x8030_942b);
    assert!(QUOTA_RESCAN as u64 == 0x4040_942c);
};

/// `vol_args` naming `bytes`, or `EINVAL` if it is too long for the struct or holds a NUL.
fn vol_args(bytes: &[u8]) -> Result<VolArgs> {
    if bytes.is_empty() || bytes.len() > PATH_NAME_MAX || bytes.contains(&0) {
        return Err(Errno::INVAL);
    }
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    // The rest stays zero, so the name is NUL-terminated.
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// Creates an empty subvolume `name` in the directory `parent`
/// (`BTRFS_IOC_SUBVOL_CREATE`). Its root directory gets mode `0777 & !umask`.
pub fn subvol_create(parent: impl AsFd, name: &str) -> Result<()> {
    let mut args = vol_args(name.as_bytes())?;
    // SAFETY: SUBVOL_CREATE takes a pointer to a `btrfs_ioctl_vol_args`, which `VolArgs`
    // mirrors field for field (size asserted above); `args` lives across the call and its
    // name is NUL-terminated inside the array.
    unsafe { ioctl(parent, Updater::<SUBVOL_CREATE, VolArgs>::new(&mut args)) }
}

/// Destroys the subvolume `name` in the directory `parent` with everything in it
/// (`BTRFS_IOC_SNAP_DESTROY`). The kernel refuses with `ENOTEMPTY` when other subvolumes
/// are nested inside it.
pub fn snap_destroy(parent: impl AsFd, name: impl AsRef<[u8]>) -> Result<()> {
    let mut args = vol_args(name.as_ref())?;
    // SAFETY: as for `subvol_create`: SNAP_DESTROY takes the same `btrfs_ioctl_vol_args`.
    unsafe { ioctl(parent, Updater::<SNAP_DESTROY, VolArgs>::new(&mut args)) }
}

/// The id of the subvolume that holds the open file `fd` (`BTRFS_IOC_INO_LOOKUP` with
/// tree id 0 and the root directory's object id, the unprivileged form of the query).
pub fn subvolume_id(fd: impl AsFd) -> Result<u64> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; INO_LOOKUP_PATH_MAX],
    };
    // SAFETY: INO_LOOKUP reads and writes a `btrfs_ioctl_ino_lookup_args`, which
    // `InoLookupArgs` mirrors (size asserted above); the kernel writes at most the array.
    unsafe { ioctl(fd, Updater::<INO_LOOKUP, InoLookupArgs>::new(&mut args))? };
    Ok(args.treeid)
}

/// Turns on qgroup accounting for the filesystem holding `fd` (`BTRFS_IOC_QUOTA_CTL`,
/// `BTRFS_QUOTA_CTL_ENABLE`). Succeeds without change when quotas are on already.
pub fn quota_enable(fd: impl AsFd) -> Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: QUOTA_CTL reads and writes a `btrfs_ioctl_quota_ctl_args`, which
    // `QuotaCtlArgs` mirrors (size asserted above).
    unsafe { ioctl(fd, Updater::<QUOTA_CTL, QuotaCtlArgs>::new(&mut args)) }
}

/// Sets the referenced-bytes limit of qgroup `qgroupid` to `max_rfer`
/// (`BTRFS_IOC_QGROUP_LIMIT`); the other limits stay as they are. `ENOTCONN` means quotas
/// are off, `ENOENT` that the qgroup does not exist.
pub fn qgroup_limit(fd: impl AsFd, qgroupid: u64, max_rfer: u64) -> Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer,
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: QGROUP_LIMIT takes a pointer to a `btrfs_ioctl_qgroup_limit_args`, which
    // `QgroupLimitArgs` mirrors (size asserted above); only the flagged field is applied.
    unsafe { ioctl(fd, Updater::<QGROUP_LIMIT, QgroupLimitArgs>::new(&mut args)) }
}

/// Creates (`create`) or removes qgroup `qgroupid` (`BTRFS_IOC_QGROUP_CREATE`).
pub fn qgroup_create(fd: impl AsFd, qgroupid: u64, create: bool) -> Result<()> {
    let mut args = QgroupCreateArgs {
        create: u64::from(create),
        qgroupid,
    };
    // SAFETY: QGROUP_CREATE takes a pointer to a `btrfs_ioctl_qgroup_create_args`, which
    // `QgroupCreateArgs` mirrors (size asserted above).
    unsafe {
        ioctl(
            fd,
            Updater::<QGROUP_CREATE, QgroupCreateArgs>::new(&mut args),
        )
    }
}

/// `ioctl` with a pointer argument that also returns the kernel's non-negative return value,
/// which `Updater` drops: `QGROUP_ASSIGN` answers 1 when the accounting became inconsistent.
struct Counted<'a, const OPCODE: Opcode, T> {
    value: &'a mut T,
}

// SAFETY: as `rustix::ioctl::Updater`, which this copies but for the output: the pointer is
// to a live `T` (the argument type of `OPCODE`, checked at each use) that the kernel may
// write, and the output is only the call's return value.
unsafe impl<const OPCODE: Opcode, T> Ioctl for Counted<'_, OPCODE, T> {
    type Output = IoctlOutput;

    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::from_mut(self.value).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut std::ffi::c_void) -> Result<IoctlOutput> {
        Ok(out)
    }
}

/// Makes qgroup `member` a member of qgroup `parent` (`assign`) or ends that membership
/// (`BTRFS_IOC_QGROUP_ASSIGN`). `Ok(true)` when the kernel could not update the parent's
/// numbers at once (the member shares data with others: a snapshot) and marked the
/// accounting inconsistent, which only a rescan ([`quota_rescan`]) repairs. `EEXIST`: the
/// relation is there already; `ENOENT`: when assigning, a qgroup is missing.
pub fn qgroup_assign(fd: impl AsFd, member: u64, parent: u64, assign: bool) -> Result<bool> {
    let mut args = QgroupAssignArgs {
        assign: u64::from(assign),
        src: member,
        dst: parent,
    };
    // SAFETY: QGROUP_ASSIGN takes a pointer to a `btrfs_ioctl_qgroup_assign_args`, which
    // `QgroupAssignArgs` mirrors (size and request number asserted above).
    let out = unsafe {
        ioctl(
            fd,
            Counted::<QGROUP_ASSIGN, QgroupAssignArgs> { value: &mut args },
        )
    }?;
    Ok(out > 0)
}

/// Starts a rescan of every qgroup's numbers on the filesystem holding `fd`
/// (`BTRFS_IOC_QUOTA_RESCAN`), which runs in the kernel after the call returns.
/// `EINPROGRESS`: one is running already.
pub fn quota_rescan(fd: impl AsFd) -> Result<()> {
    let mut args = QuotaRescanArgs {
        flags: 0,
        progress: 0,
        reserved: [0; 6],
    };
    // SAFETY: QUOTA_RESCAN takes a pointer to a `btrfs_ioctl_quota_rescan_args`, which
    // `QuotaRescanArgs` mirrors (size and request number asserted above).
    unsafe { ioctl(fd, Updater::<QUOTA_RESCAN, QuotaRescanArgs>::new(&mut args)) }
}

/// A b-tree key: `(objectid, type, offset)`, ordered in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The object the item is about (an inode, a subvolume, a qgroup).
    pub objectid: u64,
    /// The item type (`*_KEY`).
    pub kind: u8,
    /// Type-specific: a parent inode, a child subvolume, a qgroup.
    pub offset: u64,
}

impl Key {
    /// The smallest key after this one, or `None` after the largest.
    fn next(self) -> Option<Key> {
        if let Some(offset) = self.offset.checked_add(1) {
            return Some(Key { offset, ..self });
        }
        if let Some(kind) = self.kind.checked_add(1) {
            return Some(Key {
                kind,
                offset: 0,
                ..self
            });
        }
        Some(Key {
            objectid: self.objectid.checked_add(1)?,
            kind: 0,
            offset: 0,
        })
    }
}

/// One item found by [`tree_search`]: its key and its bytes as stored (little endian).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The item's key.
    pub key: Key,
    /// The item's bytes.
    pub data: Vec<u8>,
}

/// Every item of the tree `tree` (a subvolume id, or [`ROOT_TREE_OBJECTID`],
/// [`QUOTA_TREE_OBJECTID`]) whose key lies between `min` and `max` (keys compare as
/// `(objectid, type, offset)`, so the range holds every type between its ends: callers
/// filter), in key order (`BTRFS_IOC_TREE_SEARCH`, repeated from after the last item found
/// until none is left). Needs `CAP_SYS_ADMIN`. `ENOENT`: no such tree (the quota tree when
/// quotas are off).
pub fn tree_search(fd: impl AsFd, tree: u64, min: Key, max: Key) -> Result<Vec<Item>> {
    let fd = fd.as_fd();
    let mut from = min;
    let mut items = Vec::new();
    loop {
        let batch = search_once(fd, tree, from, max)?;
        let Some(last) = batch.last().map(|item| item.key) else {
            return Ok(items);
        };
        items.extend(batch);
        match last.next() {
            Some(next) if next <= max => from = next,
            _ => return Ok(items),
        }
    }
}

/// One `TREE_SEARCH` call: the items from `from` to `max` that fit in one buffer.
fn search_once(fd: impl AsFd, tree: u64, from: Key, max: Key) -> Result<Vec<Item>> {
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: tree,
            min_objectid: from.objectid,
            max_objectid: max.objectid,
            min_offset: from.offset,
            max_offset: max.offset,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: u32::from(from.kind),
            max_type: u32::from(max.kind),
            nr_items: u32::MAX,
            unused: 0,
            unused1: 0,
            unused2: 0,
            unused3: 0,
            unused4: 0,
        },
        buf: [0; SEARCH_BUF],
    };
    // SAFETY: TREE_SEARCH reads and writes a `btrfs_ioctl_search_args`, which `SearchArgs`
    // mirrors (size and request number asserted above); the kernel writes at most the
    // buffer and the key's `nr_items`.
    unsafe { ioctl(fd, Updater::<TREE_SEARCH, SearchArgs>::new(&mut args))? };
    parse_items(&args.buf, args.key.nr_items)
}

/// The `count` items the kernel wrote into `buf`, each a search header and its bytes;
/// `EIO` if they do not fit in the buffer (never from a sane kernel).
fn parse_items(buf: &[u8], count: u32) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let header = buf.get(at..at + SEARCH_HEADER).ok_or(Errno::IO)?;
        let (objectid, offset) = (ne_u64(header, 8)?, ne_u64(header, 16)?);
        let kind = u32::from_ne_bytes(header[24..28].try_into().map_err(|_| Errno::IO)?);
        let len = u32::from_ne_bytes(header[28..32].try_into().map_err(|_| Errno::IO)?);
        let start = at + SEARCH_HEADER;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| Errno::IO)?)
            .ok_or(Errno::IO)?;
        let data = buf.get(start..end).ok_or(Errno::IO)?.to_vec();
        items.push(Item {
            key: Key {
                objectid,
                kind: u8::try_from(kind).map_err(|_| Errno::IO)?,
                offset,
            },
            data,
        });
        at = end;
    }
    Ok(items)
}

/// The native-endian `u64` at `at` in `bytes`.
fn ne_u64(bytes: &[u8], at: usize) -> Result<u64> {
    let b = bytes.get(at..at + 8).ok_or(Errno::IO)?;
    Ok(u64::from_ne_bytes(b.try_into().map_err(|_| Errno::IO)?))
}

/// The little-endian `u64` at `at` in an item's bytes, or `EIO` if it is too short.
pub fn le_u64(bytes: &[u8], at: usize) -> Result<u64> {
    let b = bytes.get(at..at + 8).ok_or(Errno::IO)?;
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| Errno::IO)?))
}

/// The little-endian `u16` at `at` in an item's bytes, or `EIO` if it is too short.
pub fn le_u16(bytes: &[u8], at: usize) -> Result<u16> {
    let b = bytes.get(at..at + 2).ok_or(Errno::IO)?;
    Ok(u16::from_le_bytes(b.try_into().map_err(|_| Errno::IO)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search header and an item's bytes, as the kernel writes them into the buffer.
    fn raw_item(objectid: u64, kind: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&objectid.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&u32::try_from(data.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn search_results_are_read_item_by_item_and_never_past_the_buffer() {
        let mut buf = raw_item(256, 156, 257, b"abc");
        buf.extend(raw_item(256, 156, 258, b""));
        let items = parse_items(&buf, 2).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].key,
            Key {
                objectid: 256,
                kind: 156,
                offset: 257
            }
        );
        assert_eq!(items[0].data, b"abc");
        assert_eq!(items[1].key.offset, 258);
        assert!(items[1].data.is_empty());
        // More items than the buffer holds, or an item running past its end: refused.
        assert_eq!(parse_items(&buf, 3), Err(Errno::IO));
        assert_eq!(parse_items(&buf[..buf.len() - 33], 2), Err(Errno::IO));
        assert_eq!(parse_items(&raw_item(1, 300, 0, b""), 1), Err(Errno::IO));
        assert_eq!(le_u64(&[1, 0, 0, 0, 0, 0, 0, 0, 9], 0), Ok(1));
        assert_eq!(le_u16(&[0, 2, 1], 1), Ok(258));
        assert_eq!(le_u16(&[0, 2], 1), Err(Errno::IO));
    }

    #[test]
    fn the_next_key_carries_into_type_and_objectid() {
        let key = |objectid, kind, offset| Key {
            objectid,
            kind,
            offset,
        };
        assert_eq!(key(1, 2, 3).next(), Some(key(1, 2, 4)));
        assert_eq!(key(1, 2, u64::MAX).next(), Some(key(1, 3, 0)));
        assert_eq!(key(1, u8::MAX, u64::MAX).next(), Some(key(2, 0, 0)));
        assert_eq!(key(u64::MAX, u8::MAX, u64::MAX).next(), None);
    }

    #[test]
    fn vol_args_hold_a_nul_terminated_name_and_refuse_bad_ones() {
        let args = vol_args(b"pvc-x").unwrap();
        assert_eq!(&args.name[..6], b"pvc-x\0");
        assert_eq!(args.fd, 0);
        assert_eq!(vol_args(b"").err(), Some(Errno::INVAL));
        assert_eq!(vol_args(b"a\0b").err(), Some(Errno::INVAL));
        assert!(vol_args(&[b'a'; PATH_NAME_MAX]).is_ok());
        assert_eq!(
            vol_args(&[b'a'; PATH_NAME_MAX + 1]).err(),
            Some(Errno::INVAL)
        );
    }
}
