//! Tests on a real btrfs filesystem, found at `$STOWAGE_TEST_BTRFS` (a mount point, e.g. from
//! `scripts/btrfs-scratch`). Unset: skipped with a printed line locally, a failure in CI
//! (`$CI` set), so CI can never skip them silently. Each test makes its own pool directory
//! inside the mount. The `btrfs` CLI is used only to cross-check what the driver did.

use super::*;
use crate::agent::driver::PoolDriver;
use crate::agent::pool::PoolSpec;
use crate::ledger::{Driver, PoolName, Reserve};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

const A: &str = "pvc-0f8e4c1a-3b2d-4e5f-8a9b-0c1d2e3f4a5b";
const B: &str = "pvc-11111111-2222-4333-8444-555555555555";
const C: &str = "pvc-22222222-2222-4333-8444-555555555555";

fn name(s: &str) -> VolumeName {
    VolumeName::parse(s).unwrap()
}

/// A fresh pool directory on the test btrfs, or `None` (after saying so) when there is none
/// outside CI.
fn pool(test: &str) -> Option<(tempfile::TempDir, Btrfs)> {
    let Some(mount) = std::env::var_os("STOWAGE_TEST_BTRFS") else {
        assert!(
            !stowage_testkit::in_ci(),
            "STOWAGE_TEST_BTRFS is unset in CI; .ci/run must mount a scratch btrfs (scripts/btrfs-scratch) and export it"
        );
        eprintln!(
            "SKIP {test}: STOWAGE_TEST_BTRFS is unset; run `STOWAGE_TEST_BTRFS=$(scripts/btrfs-scratch) bash scripts/test` as root to run the btrfs tests"
        );
        return None;
    };
    let st = rustix::fs::statfs(Path::new(&mount)).unwrap();
    #[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
    let magic = (st.f_type as u64) & 0xFFFF_FFFF;
    assert_eq!(
        magic, BTRFS_SUPER_MAGIC,
        "STOWAGE_TEST_BTRFS={mount:?} is not on btrfs"
    );
    let dir = tempfile::Builder::new()
        .prefix(&format!("{test}-"))
        .tempdir_in(&mount)
        .unwrap();
    fs::create_dir(dir.path().join("pool")).unwrap();
    let driver = Btrfs::open(PoolRoot::open(dir.path().join("pool")).unwrap()).unwrap();
    Some((dir, driver))
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn is_subvolume_at(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

fn btrfs_cli(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().unwrap();
    assert!(out.status.success(), "btrfs {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The names of the subvolumes directly in the pool of `d`, as `btrfs subvolume list` sees
/// them (it prints paths from the filesystem's top level).
fn listed(d: &Btrfs) -> Vec<String> {
    let root = d.root().path();
    // `<tempdir>/pool`, unique on the filesystem.
    let tail = root
        .strip_prefix(root.parent().unwrap().parent().unwrap())
        .unwrap();
    let tail = format!("{}/", tail.to_str().unwrap());
    btrfs_cli(&["subvolume", "list", root.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.to_string()))
        .filter_map(|p| {
            let (_, rest) = p.split_once(&tail)?;
            (!rest.contains('/')).then(|| rest.to_string())
        })
        .collect()
}

/// The qgroup id (`0/<subvolume id>`) of the subvolume at `p`.
fn qgroup_of(p: &Path) -> String {
    let id = btrfs_cli(&["inspect-internal", "rootid", p.to_str().unwrap()]);
    format!("0/{}", id.trim())
}

/// Whether `btrfs qgroup show` on the filesystem of `p` lists `qgroup`.
fn qgroup_listed(p: &Path, qgroup: &str) -> bool {
    stowage_testkit::btrfs_qgroup_show(&["--raw", p.to_str().unwrap()])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(qgroup))
}

/// The `max_rfer` of the subvolume at `p`, as `btrfs qgroup show` reports it.
fn limit_of(p: &Path) -> Option<u64> {
    let qgroup = qgroup_of(p);
    let p = p.to_str().unwrap();
    let table = stowage_testkit::btrfs_qgroup_show(&["-r", "--raw", "-f", p]);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(qgroup.as_str()))
        .unwrap_or_else(|| panic!("no qgroup {qgroup} in\n{table}"));
    row.split_whitespace().nth(3).unwrap().parse().ok()
}

/// Appends 1 MiB chunks, each flushed with `sync_all`, until a write fails or `limit` bytes
/// are written; returns the bytes written and the error, if any.
fn fill(file: &Path, limit: u64) -> (u64, Option<io::Error>) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0;
    while written < limit {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            return (written, Some(e));
        }
        written += chunk.len() as u64;
    }
    (written, None)
}

#[test]
fn create_makes_a_subvolume_with_the_exact_mode_and_a_limit() {
    let Some((_dir, d)) = pool("create") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(64), VolumeMode(0o750))
        .unwrap();
    assert_eq!(p, d.root().path().join(A));
    assert!(is_subvolume_at(&p), "{p:?} is not a subvolume");
    assert_eq!(mode_of(&p), 0o750);
    assert_eq!(limit_of(&p), Some(Bytes::mib(64).0));
    let open = d
        .create(&name(B), Bytes::mib(8), VolumeMode(0o2777))
        .unwrap();
    assert_eq!(mode_of(&open), 0o2777, "the umask does not narrow the mode");
    let mut list = listed(&d);
    list.sort();
    assert_eq!(list, vec![A, B], "no staging leftovers");
}

#[test]
fn create_twice_is_success_keeps_the_data_and_sets_the_limit_again() {
    let Some((_dir, d)) = pool("create-twice") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(64), VolumeMode(0o770))
        .unwrap();
    fs::write(p.join("data"), b"keep").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o2770)).unwrap();
    let again = d
        .create(&name(A), Bytes::mib(96), VolumeMode(0o770))
        .unwrap();
    assert_eq!(again, p);
    assert_eq!(fs::read(p.join("data")).unwrap(), b"keep");
    assert_eq!(mode_of(&p), 0o2770, "an existing volume keeps its mode");
    assert_eq!(limit_of(&p), Some(Bytes::mib(96).0));
}

#[test]
fn a_staging_leftover_of_a_crashed_create_is_finished_or_deleted() {
    let Some((_dir, d)) = pool("staging") else {
        return;
    };
    let root = open_dir(d.root().path()).unwrap();
    for n in [A, B] {
        ioctl::subvol_create(&root, &staging_name(&name(n))).unwrap();
    }
    let p = d
        .create(&name(A), Bytes::mib(16), VolumeMode(0o700))
        .unwrap();
    assert!(is_subvolume_at(&p));
    assert_eq!(mode_of(&p), 0o700);
    assert_eq!(limit_of(&p), Some(Bytes::mib(16).0));
    assert!(!d.root().path().join(staging_name(&name(A))).exists());
    let leftover = d.root().path().join(staging_name(&name(B)));
    assert!(leftover.exists());
    d.delete(&name(B)).unwrap();
    assert!(!leftover.exists());
}

#[test]
fn writing_past_the_size_fails_with_edquot_and_grow_lets_more_in() {
    let Some((_dir, d)) = pool("quota") else {
        return;
    };
    let size = Bytes::mib(32);
    let p = d.create(&name(A), size, VolumeMode::default()).unwrap();
    let (written, err) = fill(&p.join("big"), 4 * size.0);
    let err = err.unwrap_or_else(|| panic!("wrote {written} bytes into a {size:?} volume"));
    assert_eq!(err.raw_os_error(), Some(edquot()), "{err}");
    assert!(written <= size.0, "wrote {written} into {size:?}");
    assert!(written >= size.0 / 2, "only {written} of {size:?} fit");

    d.grow(&name(A), Bytes::mib(96)).unwrap();
    assert_eq!(limit_of(&p), Some(Bytes::mib(96).0));
    let (more, err) = fill(&p.join("more"), Bytes::mib(32).0);
    assert!(err.is_none(), "after grow: {err:?} after {more} bytes");
    assert_eq!(more, Bytes::mib(32).0);
    let (_, err) = fill(&p.join("more"), Bytes::mib(128).0);
    let err = err.expect("the grown limit is enforced too");
    assert_eq!(err.raw_os_error(), Some(edquot()), "{err}");
}

/// `EDQUOT`, "Disk quota exceeded".
fn edquot() -> i32 {
    Errno::DQUOT.raw_os_error()
}

#[test]
fn grow_sets_the_limit_and_needs_the_volume() {
    let Some((_dir, d)) = pool("grow") else {
        return;
    };
    assert!(matches!(
        d.grow(&name(A), Bytes::gib(2)),
        Err(VolumeError::Missing { .. })
    ));
    let p = d
        .create(&name(A), Bytes::gib(1), VolumeMode::default())
        .unwrap();
    d.grow(&name(A), Bytes::gib(2)).unwrap();
    assert_eq!(limit_of(&p), Some(Bytes::gib(2).0));
    // Below what is used is still set: the reconciler decides policy, not the driver.
    fs::write(p.join("f"), vec![1u8; 1 << 20]).unwrap();
    rustix::fs::sync();
    d.grow(&name(A), Bytes(4096)).unwrap();
    assert_eq!(limit_of(&p), Some(4096));
}

#[test]
fn delete_destroys_the_subvolume_with_its_data_and_twice_is_success() {
    let Some((_dir, d)) = pool("delete") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(64), VolumeMode::default())
        .unwrap();
    fs::create_dir_all(p.join("sub/deeper")).unwrap();
    fs::write(p.join("sub/deeper/f"), b"x").unwrap();
    fs::write(p.join("top"), vec![7u8; 1 << 20]).unwrap();
    let qgroup = qgroup_of(&p);
    assert!(qgroup_listed(&p, &qgroup));
    d.delete(&name(A)).unwrap();
    assert!(!p.exists());
    assert_eq!(listed(&d), Vec::<String>::new());
    d.delete(&name(A)).unwrap();
    // Once the kernel has dropped the subvolume, its qgroup goes too (by the kernel or by
    // the driver's retry on the next scan): no stale qgroup is left behind.
    let id = qgroup.trim_start_matches("0/");
    let pool = d.root().path().to_str().unwrap();
    // A commit wakes the kernel's cleaner, which otherwise waits for its 30 s interval.
    btrfs_cli(&["filesystem", "sync", pool]);
    btrfs_cli(&["subvolume", "sync", pool, id]);
    d.scan().unwrap();
    assert!(
        !qgroup_listed(d.root().path(), &qgroup),
        "{qgroup} is stale"
    );
    // The same name can be made again, as a new subvolume with a new limit.
    let again = d
        .create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    assert_eq!(fs::read_dir(&again).unwrap().count(), 0);
    assert_eq!(limit_of(&again), Some(Bytes::mib(8).0));
}

#[test]
fn delete_destroys_a_nested_subvolume_no_scan_has_seen_yet() {
    let Some((_dir, d)) = pool("nested") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(64), VolumeMode::default())
        .unwrap();
    fs::write(p.join("data"), b"gone").unwrap();
    let vol = open_dir(&p).unwrap();
    ioctl::subvol_create(&vol, "inner").unwrap();
    fs::write(p.join("inner/data"), b"gone too").unwrap();
    drop(vol);
    d.delete(&name(A)).unwrap();
    assert!(!p.exists());
    assert_eq!(listed_below(&d), Vec::<String>::new());
}

#[test]
fn archive_moves_the_subvolume_with_its_data_and_limit_and_twice_is_success() {
    let Some((_dir, d)) = pool("archive") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(64), VolumeMode(0o750))
        .unwrap();
    fs::write(p.join("data"), b"old").unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
    let moved = d.archive(&name(A), at).unwrap().unwrap();
    assert_eq!(
        moved,
        d.root().archive_dir().join(format!("{A}-20240229T134507Z"))
    );
    assert!(!p.exists());
    assert!(is_subvolume_at(&moved));
    assert_eq!(fs::read(moved.join("data")).unwrap(), b"old");
    assert_eq!(mode_of(&moved), 0o750);
    assert_eq!(limit_of(&moved), Some(Bytes::mib(64).0));
    assert_eq!(d.archive(&name(A), at).unwrap(), None);
    assert_eq!(d.scan().unwrap(), Vec::<VolumeName>::new());
    // A new volume of the same name archives beside the first.
    d.create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    let second = d.archive(&name(A), at).unwrap().unwrap();
    assert!(second.to_string_lossy().ends_with("Z-1"), "{second:?}");
}

#[test]
fn a_plain_directory_where_a_subvolume_should_be_is_refused_and_left_alone() {
    let Some((_dir, d)) = pool("plain") else {
        return;
    };
    let p = d.root().volume_path(&name(A));
    fs::create_dir(&p).unwrap();
    fs::write(p.join("data"), b"foreign").unwrap();
    let err = d
        .create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap_err();
    assert!(matches!(err, VolumeError::NotASubvolume { .. }), "{err:?}");
    assert!(err.to_string().contains("not a btrfs subvolume"), "{err}");
    for err in [
        d.delete(&name(A)).unwrap_err(),
        d.grow(&name(A), Bytes::mib(16)).unwrap_err(),
        d.archive(&name(A), SystemTime::now()).unwrap_err(),
    ] {
        assert!(matches!(err, VolumeError::NotASubvolume { .. }), "{err:?}");
    }
    assert_eq!(fs::read(p.join("data")).unwrap(), b"foreign");
    assert!(!is_subvolume_at(&p));

    let file = d.root().volume_path(&name(B));
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        d.create(&name(B), Bytes::mib(8), VolumeMode::default()),
        Err(VolumeError::NotADirectory { .. })
    ));
    assert!(matches!(
        d.delete(&name(B)),
        Err(VolumeError::NotADirectory { .. })
    ));
    assert!(file.is_file());
}

#[test]
fn symlinks_and_escapes_are_refused_and_their_targets_left_alone() {
    let Some((dir, d)) = pool("hostile") else {
        return;
    };
    // A subvolume outside the pool, reachable through a symlink named like a volume.
    let outside = dir.path().join("precious");
    ioctl::subvol_create(open_dir(dir.path()).unwrap(), "precious").unwrap();
    fs::write(outside.join("data"), b"do not delete").unwrap();
    let link = d.root().volume_path(&name(A));
    symlink(&outside, &link).unwrap();
    for err in [
        d.create(&name(A), Bytes::mib(8), VolumeMode::default())
            .unwrap_err(),
        d.delete(&name(A)).unwrap_err(),
        d.grow(&name(A), Bytes::mib(8)).unwrap_err(),
        d.archive(&name(A), SystemTime::now()).unwrap_err(),
    ] {
        assert!(
            matches!(err, VolumeError::Path(PathError::Symlink { .. })),
            "{err:?}"
        );
    }
    assert_eq!(fs::read(outside.join("data")).unwrap(), b"do not delete");
    assert!(is_subvolume_at(&outside));
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // An `.archive` that is a symlink out of the pool is not archived into.
    d.create(&name(B), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, d.root().archive_dir()).unwrap();
    let err = d.archive(&name(B), SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(is_subvolume_at(&d.root().volume_path(&name(B))));
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);

    // Names that climb out never get this far, and paths outside the root are refused.
    assert!(VolumeName::parse("pvc-../../precious").is_err());
    assert!(VolumeName::parse("..").is_err());
    let root = open_dir(d.root().path()).unwrap();
    let err = d.open_subvolume(&root, "../precious").unwrap_err();
    assert!(
        matches!(err, VolumeError::Path(PathError::Outside { .. })),
        "{err:?}"
    );
    assert!(is_subvolume_at(&outside));
}

#[test]
fn scan_lists_subvolumes_and_ignores_plain_directories_and_everything_else() {
    let Some((dir, d)) = pool("scan") else {
        return;
    };
    d.create(&name(B), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    d.create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    d.create(&name(C), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    d.archive(&name(C), SystemTime::now()).unwrap();
    let root = d.root().path();
    fs::create_dir(root.join("pvc-33333333-2222-4333-8444-555555555555")).unwrap();
    fs::write(root.join("pvc-44444444-2222-4333-8444-555555555555"), b"").unwrap();
    symlink(
        dir.path(),
        root.join("pvc-55555555-2222-4333-8444-555555555555"),
    )
    .unwrap();
    let rootfd = open_dir(root).unwrap();
    ioctl::subvol_create(&rootfd, "not-a-volume").unwrap();
    ioctl::subvol_create(&rootfd, &staging_name(&name(C))).unwrap();
    assert_eq!(d.scan().unwrap(), vec![name(A), name(B)]);
}

#[test]
fn the_pool_driver_dispatches_to_btrfs_and_the_probe_is_ready() {
    let Some((dir, _)) = pool("dispatch") else {
        return;
    };
    let spec = PoolSpec {
        name: PoolName::from("fast"),
        path: dir.path().join("pool"),
        driver: Driver::Btrfs,
        reserve: Reserve::None,
        capacity: None,
        volume_mode: VolumeMode::default(),
        create: None,
    };
    let report = spec.probe();
    assert!(report.ready, "{:?}", report.reason);
    assert!(report.capacity > Bytes::ZERO);
    let driver = PoolDriver::open(&spec).unwrap();
    assert!(matches!(driver, PoolDriver::Btrfs(_)));
    let p = driver
        .create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    assert!(is_subvolume_at(&p));
    assert_eq!(driver.scan().unwrap().names, vec![name(A)]);
    driver.grow(&name(A), Bytes::mib(16)).unwrap();
    assert_eq!(limit_of(&p), Some(Bytes::mib(16).0));
    driver.delete(&name(A)).unwrap();
    assert!(!p.exists());
}

/// Needs no btrfs: a pool elsewhere is refused by the driver and reported not ready.
#[test]
fn a_btrfs_pool_on_another_filesystem_is_refused_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = PoolRoot::open(dir.path()).unwrap();
    if fs_type(&open_dir(root.path()).unwrap()).unwrap() == BTRFS_SUPER_MAGIC {
        eprintln!("SKIP: the temporary directory is on btrfs; nothing to refuse");
        return;
    }
    let err = Btrfs::open(root).unwrap_err();
    assert!(matches!(err, VolumeError::NotBtrfs { .. }), "{err:?}");
    assert!(err.to_string().contains("use driver hostpath"), "{err}");
    let spec = PoolSpec {
        name: PoolName::from("fast"),
        path: dir.path().to_path_buf(),
        driver: Driver::Btrfs,
        reserve: Reserve::None,
        capacity: None,
        volume_mode: VolumeMode::default(),
        create: None,
    };
    assert!(matches!(
        PoolDriver::open(&spec),
        Err(VolumeError::NotBtrfs { .. })
    ));
    let report = spec.probe();
    assert!(!report.ready);
    assert!(!report.pool_state().ready);
    let reason = report.reason.unwrap();
    assert!(reason.contains("needs a btrfs filesystem"), "{reason}");
}

#[test]
fn an_ioctl_error_names_the_operation_and_path_and_a_permission_error_says_what_is_missing() {
    let err = btrfs_err(
        "set the qgroup limit of",
        Path::new("/p/pvc-x"),
        Errno::PERM,
    );
    let msg = err.to_string();
    assert!(
        msg.contains("set the qgroup limit of /p/pvc-x") && msg.contains("CAP_SYS_ADMIN"),
        "{msg}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, io::Error::from(Errno::PERM).to_string());
    let other = btrfs_err("destroy the subvolume", Path::new("/p/pvc-x"), Errno::IO).to_string();
    assert!(!other.contains("CAP_SYS_ADMIN"), "{other}");
}

use crate::fsutil::race::swap_at;

#[test]
fn a_symlink_to_another_pool_swapped_in_before_destroy_is_not_destroyed() {
    let Some((dir, d)) = pool("race-delete") else {
        return;
    };
    // Another pool's volume on the same filesystem: what the swap tries to destroy.
    let other_root = dir.path().join("other");
    fs::create_dir(&other_root).unwrap();
    let other = Btrfs::open(PoolRoot::open(&other_root).unwrap()).unwrap();
    let victim = other
        .create(&name(B), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    fs::write(victim.join("data"), b"other tenant").unwrap();
    d.create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    let vol = d.root().volume_path(&name(A));
    let _race = swap_at("btrfs.delete.destroy", vol.clone(), victim.clone());
    let err = d.delete(&name(A)).unwrap_err();
    assert!(matches!(err, VolumeError::Btrfs { .. }), "{err:?}");
    assert!(is_subvolume_at(&victim), "the other pool's volume survives");
    assert_eq!(fs::read(victim.join("data")).unwrap(), b"other tenant");
    // Our own volume was moved aside by the swap, not destroyed either.
    assert!(is_subvolume_at(&vol.with_extension("moved")));
}

#[test]
fn archive_renames_into_the_real_archive_folder_even_if_it_is_swapped_meanwhile() {
    let Some((dir, d)) = pool("race-archive") else {
        return;
    };
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let p = d
        .create(&name(A), Bytes::mib(8), VolumeMode::default())
        .unwrap();
    fs::write(p.join("data"), b"tenant").unwrap();
    let archive = d.root().archive_dir();
    let _race = swap_at("btrfs.archive.rename", archive.clone(), elsewhere.clone());
    let moved = d.archive(&name(A), SystemTime::now()).unwrap().unwrap();
    let real = archive
        .with_extension("moved")
        .join(moved.file_name().unwrap());
    assert!(is_subvolume_at(&real));
    assert_eq!(fs::read(real.join("data")).unwrap(), b"tenant");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Room for the subvolumes' own tree blocks in the qgroup numbers.
const SLACK: u64 = 1 << 20;

#[test]
fn a_nested_subvolume_cannot_write_past_the_volume_size_once_scanned() {
    let Some((_dir, d)) = pool("nested-quota") else {
        return;
    };
    let size = Bytes::mib(32);
    let p = d.create(&name(A), size, VolumeMode::default()).unwrap();
    // The tenant: write access to a directory inside its volume is all it takes.
    fs::create_dir(p.join("dir")).unwrap();
    ioctl::subvol_create(open_dir(&p.join("dir")).unwrap(), "inner").unwrap();
    assert_eq!(d.scan().unwrap(), vec![name(A)]);
    let (written, err) = fill(&p.join("dir/inner/big"), 4 * size.0);
    let err = err.unwrap_or_else(|| {
        panic!("wrote {written} bytes through a nested subvolume into a {size:?} volume")
    });
    assert_eq!(err.raw_os_error(), Some(edquot()), "{err}");
    assert!(
        written <= size.0 + SLACK,
        "wrote {written} through a nested subvolume into {size:?}"
    );
}

/// Every subvolume `btrfs subvolume list` shows below the pool of `d`, at any depth.
fn listed_below(d: &Btrfs) -> Vec<String> {
    let root = d.root().path();
    let tail = root
        .strip_prefix(root.parent().unwrap().parent().unwrap())
        .unwrap();
    let tail = format!("{}/", tail.to_str().unwrap());
    btrfs_cli(&["subvolume", "list", root.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.to_string()))
        .filter_map(|p| p.split_once(&tail).map(|(_, rest)| rest.to_string()))
        .collect()
}

#[test]
fn delete_destroys_nested_subvolumes_two_levels_deep_and_leaves_no_qgroup_behind() {
    let Some((_dir, d)) = pool("nested-delete") else {
        return;
    };
    let size = Bytes::mib(16);
    let p = d.create(&name(A), size, VolumeMode::default()).unwrap();
    fs::write(p.join("data"), b"tenant").unwrap();
    fs::create_dir_all(p.join("x/y")).unwrap();
    ioctl::subvol_create(open_dir(&p.join("x/y")).unwrap(), "inner").unwrap();
    let inner = p.join("x/y/inner");
    fs::create_dir(inner.join("z")).unwrap();
    ioctl::subvol_create(open_dir(&inner.join("z")).unwrap(), "deeper").unwrap();
    let deeper = inner.join("z/deeper");
    fs::write(deeper.join("f"), b"deep").unwrap();
    ioctl::subvol_create(open_dir(&p).unwrap(), "sibling").unwrap();
    fs::write(p.join("sibling/f"), b"beside").unwrap();
    let vol = qgroup_of(&p);
    let qgroups = [
        vol.clone(),
        vol.replacen("0/", "1/", 1),
        qgroup_of(&inner),
        qgroup_of(&deeper),
        qgroup_of(&p.join("sibling")),
    ];
    d.scan().unwrap();
    // The volume is full: removing anything inside it needs room its limit no longer has.
    fill(&inner.join("big"), 4 * size.0);
    assert_eq!(
        ioctl::snap_destroy(open_dir(&inner.join("z")).unwrap(), "deeper"),
        Err(Errno::DQUOT),
        "a full volume's limit refuses destroying what is inside it"
    );
    d.delete(&name(A)).unwrap();
    assert!(!p.exists());
    assert_eq!(listed_below(&d), Vec::<String>::new());
    let pool = d.root().path().to_str().unwrap();
    btrfs_cli(&["filesystem", "sync", pool]);
    btrfs_cli(&["subvolume", "sync", pool]);
    d.scan().unwrap();
    for q in &qgroups {
        assert!(!qgroup_listed(d.root().path(), q), "{q} is left behind");
    }
}

#[test]
fn a_btrfs_pools_free_space_is_capped_by_the_filesystem_and_counts_kept_data_as_used() {
    use crate::agent::report::{OnDisk, pool_statuses};
    use crate::api::local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec, OnDelete};
    let Some((dir, d)) = pool("free-space") else {
        return;
    };
    let size = Bytes::mib(64);
    // A live volume holding a quarter of its size, an archived one and a retained one (no
    // LocalVolume: an orphan), each holding 24 MiB that no live volume owns.
    let live = d.create(&name(A), size, VolumeMode::default()).unwrap();
    assert_eq!(fill(&live.join("f"), Bytes::mib(16).0).0, Bytes::mib(16).0);
    let archived = d.create(&name(B), size, VolumeMode::default()).unwrap();
    assert_eq!(
        fill(&archived.join("f"), Bytes::mib(24).0).0,
        Bytes::mib(24).0
    );
    d.archive(&name(B), SystemTime::now()).unwrap().unwrap();
    let orphan = d.create(&name(C), size, VolumeMode::default()).unwrap();
    assert_eq!(
        fill(&orphan.join("f"), Bytes::mib(24).0).0,
        Bytes::mib(24).0
    );
    rustix::fs::sync();
    let lv = LocalVolume::new(
        A,
        LocalVolumeSpec {
            node_name: "n1".into(),
            pool: "fast".into(),
            size_bytes: size.0,
            claim: ClaimRef::default(),
            on_delete: OnDelete::Delete,
        },
    );
    let unwritten = size.0 - Bytes::mib(16).0;
    let kept = Bytes::mib(48).0;
    // Without a configured capacity the filesystem's free space is what binds; with one
    // well below it, the capacity less the kept data.
    let mut wrong = Vec::new();
    for capacity in [None, Some(Bytes::mib(256))] {
        let spec = PoolSpec {
            name: PoolName::from("fast"),
            path: dir.path().join("pool"),
            driver: Driver::Btrfs,
            reserve: Reserve::None,
            capacity,
            volume_mode: VolumeMode::default(),
            create: None,
        };
        let report = spec.probe();
        assert!(report.ready, "{:?}", report.reason);
        let mut on_disk = OnDisk::new();
        on_disk.insert("fast".into(), d.survey().unwrap());
        let status = pool_statuses(&[report], [&lv], "n1", &on_disk).remove(0);
        let free = status.to_pool_state().free().0;
        let room = status.available_bytes.saturating_sub(unwritten);
        if free > room + SLACK {
            wrong.push(format!(
                "capacity {capacity:?}: a new claim may take {free} bytes, but the filesystem has {} free of which the live volume may still write {unwritten}",
                status.available_bytes
            ));
        }
        if let Some(capacity) = capacity {
            let left = capacity.0 - kept - size.0;
            if free > left + SLACK {
                wrong.push(format!(
                    "capacity {capacity:?}: a new claim may take {free} bytes, but archived and orphaned data hold {kept} of it and the live volume {}",
                    size.0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_volume_made_before_level_one_qgroups_gets_one_on_the_next_scan() {
    let Some((_dir, d)) = pool("migrate") else {
        return;
    };
    let size = Bytes::mib(24);
    let p = d.create(&name(A), size, VolumeMode::default()).unwrap();
    let root = open_dir(d.root().path()).unwrap();
    let id = ioctl::subvolume_id(open_dir(&p).unwrap()).unwrap();
    let group = tree::qgroup(1, id);
    // As an earlier version left it: only `0/<id>`, limited.
    assert_eq!(ioctl::qgroup_assign(&root, id, group, false), Ok(false));
    ioctl::qgroup_create(&root, group, false).unwrap();
    ioctl::subvol_create(open_dir(&p).unwrap(), "inner").unwrap();
    let nested = ioctl::subvolume_id(open_dir(&p.join("inner")).unwrap()).unwrap();
    let before = tree::qgroups(&root).unwrap().unwrap();
    assert!(!before.exists(group));
    assert_eq!(before.limit.get(&id), Some(&size.0));

    assert_eq!(d.scan().unwrap(), vec![name(A)]);
    let after = tree::qgroups(&root).unwrap().unwrap();
    assert_eq!(
        after.limit.get(&group),
        Some(&size.0),
        "1/<id> carries the limit"
    );
    assert!(after.related(id, group), "the volume is a member of 1/<id>");
    assert!(after.related(nested, group), "so is the nested subvolume");
    assert!(!after.needs_rescan());
    let (written, err) = fill(&p.join("inner/big"), 4 * size.0);
    assert_eq!(err.map(|e| e.raw_os_error()), Some(Some(edquot())));
    assert!(written <= size.0 + SLACK, "wrote {written} into {size:?}");
    // What it holds is reported from 1/<id>: the nested subvolume's data included.
    rustix::fs::sync();
    let held = d.survey().unwrap().held[&name(A)];
    assert!(
        held.0 >= written && held.0 <= size.0 + SLACK,
        "holds {held:?} after {written} were written"
    );
}

/// Makes a chain of `levels` directories named `n` (20 bytes each) below `top`, one
/// descriptor at a time (its path is longer than `PATH_MAX`), and returns the bottom one.
fn deep_dirs(top: &Path, levels: usize) -> OwnedFd {
    let n = "d".repeat(20);
    let mut dir = open_dir(top).unwrap();
    for _ in 0..levels {
        rustix::fs::mkdirat(&dir, n.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = open_entry(&dir, &n).unwrap();
    }
    dir
}

#[test]
fn delete_finds_a_nested_subvolume_below_a_path_longer_than_path_max() {
    let Some((_dir, d)) = pool("nested-deep") else {
        return;
    };
    let p = d
        .create(&name(A), Bytes::mib(16), VolumeMode::default())
        .unwrap();
    // 300 levels of 21 bytes: more than INO_LOOKUP's 4080-byte path and PATH_MAX.
    let bottom = deep_dirs(&p, 300);
    ioctl::subvol_create(&bottom, "hidden").unwrap();
    let hidden = open_entry(&bottom, "hidden").unwrap();
    ioctl::subvol_create(&hidden, "deeper").unwrap();
    let file = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC;
    drop(rustix::fs::openat(&hidden, "f", file, Mode::from_raw_mode(0o644)).unwrap());
    drop((bottom, hidden));
    d.scan().unwrap();
    d.delete(&name(A)).unwrap();
    assert!(!p.exists());
    assert_eq!(listed_below(&d), Vec::<String>::new());
}

#[test]
fn a_symlink_swapped_in_on_the_way_to_a_nested_subvolume_is_not_followed() {
    let Some((dir, d)) = pool("race-nested") else {
        return;
    };
    // Outside the pool, a subvolume where the walk would land if it followed the link.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    ioctl::subvol_create(open_dir(&outside).unwrap(), "inner").unwrap();
    fs::write(outside.join("inner/data"), b"not the tenant's").unwrap();
    let p = d
        .create(&name(A), Bytes::mib(16), VolumeMode::default())
        .unwrap();
    fs::create_dir(p.join("x")).unwrap();
    ioctl::subvol_create(open_dir(&p.join("x")).unwrap(), "inner").unwrap();
    {
        let _race = swap_at("btrfs.delete.nested", p.join("x"), outside.clone());
        let err = d.delete(&name(A)).unwrap_err();
        assert!(
            matches!(err, VolumeError::Path(PathError::Symlink { .. })),
            "{err:?}"
        );
    }
    assert!(is_subvolume_at(&outside.join("inner")));
    assert_eq!(
        fs::read(outside.join("inner/data")).unwrap(),
        b"not the tenant's"
    );
    // The next try finds the nested subvolume where it was moved, and the link is only
    // an entry of the volume.
    d.delete(&name(A)).unwrap();
    assert!(!p.exists());
    assert!(is_subvolume_at(&outside.join("inner")));
}
