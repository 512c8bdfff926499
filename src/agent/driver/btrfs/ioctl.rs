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
//! | `BTRFS_IOC_INO_LOOKUP` | `_IOWR(0x94, 18)` | `btrfs_ioctl_ino_lookup_args` | 4096 |
//! | `BTRFS_IOC_QUOTA_CTL` | `_IOWR(0x94, 40)` | `btrfs_ioctl_quota_ctl_args` | 16 |
//! | `BTRFS_IOC_QGROUP_CREATE` | `_IOW(0x94, 42)` | `btrfs_ioctl_qgroup_create_args` | 16 |
//! | `BTRFS_IOC_QGROUP_LIMIT` | `_IOR(0x94, 43)` | `btrfs_ioctl_qgroup_limit_args` | 48 |
//!
//! (`QGROUP_LIMIT` is declared `_IOR` in the header although userspace writes it; the
//! request number must match the header, so it is kept.)
#![allow(unsafe_code)]

use std::mem::size_of;
use std::os::fd::AsFd;

use rustix::io::{Errno, Result};
use rustix::ioctl::{Opcode, Updater, ioctl, opcode};

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
const QGROUP_LIMIT_MAX_RFER: u64 = 1;

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

const _: () = assert!(size_of::<VolArgs>() == 4096);
const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(size_of::<QgroupLimit>() == 40);
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(size_of::<QgroupCreateArgs>() == 16);

const SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(MAGIC, 14);
const SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
const INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(MAGIC, 18);
const QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(MAGIC, 40);
const QGROUP_CREATE: Opcode = opcode::write::<QgroupCreateArgs>(MAGIC, 42);
const QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(MAGIC, 43);

// The request numbers `linux/btrfs.h` gives on Linux (x86, arm, riscv: the generic encoding).
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips"
)))]
const _: () = {
    assert!(SUBVOL_CREATE as u64 == 0x5000_940e);
    assert!(SNAP_DESTROY as u64 == 0x5000_940f);
    assert!(INO_LOOKUP as u64 == 0xd000_9412);
    assert!(QUOTA_CTL as u64 == 0xc010_9428);
    assert!(QGROUP_CREATE as u64 == 0x4010_942a);
    assert!(QGROUP_LIMIT as u64 == 0x8030_942b);
};

/// `vol_args` naming `name`, or `EINVAL` if it is too long for the struct or holds a NUL.
fn vol_args(name: &str) -> Result<VolArgs> {
    let bytes = name.as_bytes();
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
    let mut args = vol_args(name)?;
    // SAFETY: SUBVOL_CREATE takes a pointer to a `btrfs_ioctl_vol_args`, which `VolArgs`
    // mirrors field for field (size asserted above); `args` lives across the call and its
    // name is NUL-terminated inside the array.
    unsafe { ioctl(parent, Updater::<SUBVOL_CREATE, VolArgs>::new(&mut args)) }
}

/// Destroys the subvolume `name` in the directory `parent` with everything in it
/// (`BTRFS_IOC_SNAP_DESTROY`). The kernel refuses with `ENOTEMPTY` when other subvolumes
/// are nested inside it.
pub fn snap_destroy(parent: impl AsFd, name: &str) -> Result<()> {
    let mut args = vol_args(name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vol_args_hold_a_nul_terminated_name_and_refuse_bad_ones() {
        let args = vol_args("pvc-x").unwrap();
        assert_eq!(&args.name[..6], b"pvc-x\0");
        assert_eq!(args.fd, 0);
        assert_eq!(vol_args("").err(), Some(Errno::INVAL));
        assert_eq!(vol_args("a\0b").err(), Some(Errno::INVAL));
        assert!(vol_args(&"a".repeat(PATH_NAME_MAX)).is_ok());
        assert_eq!(
            vol_args(&"a".repeat(PATH_NAME_MAX + 1)).err(),
            Some(Errno::INVAL)
        );
    }
}
