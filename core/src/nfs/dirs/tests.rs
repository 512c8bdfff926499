use super::*;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::time::{Duration, UNIX_EPOCH};

fn rel(s: &str) -> RelDir {
    RelDir::parse(s).unwrap()
}

/// The owner of a test claim directory: `ns/claim` is claim `claim` of namespace `ns` in
/// the nested layout, `ns-claim` the flat one (split at the first `-`).
fn own(s: &str) -> Owner {
    let (claim, layout) = match s.split_once('/') {
        Some((ns, name)) => (ClaimName::new(ns, name).unwrap(), Layout::Nested),
        None => {
            let (ns, name) = s.split_once('-').unwrap();
            (ClaimName::new(ns, name).unwrap(), Layout::Flat)
        }
    };
    Owner {
        claim,
        uid: crate::nfs::ClaimUid::parse("6f0c2d1e-0000-4000-8000-000000000001").unwrap(),
        layout,
        namespace: crate::nfs::NamespaceNow::default(),
    }
}

fn mount() -> (tempfile::TempDir, ServerRoot) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("mount")).unwrap();
    let root = ServerRoot::open(dir.path().join("mount")).unwrap();
    (dir, root)
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

const AT: u64 = 1_709_214_307; // 2024-02-29T13:45:07Z

#[test]
fn create_makes_nested_directories_with_exact_modes_and_is_idempotent() {
    let (_d, root) = mount();
    let p = root.create(&own("shop/data"), DEFAULT_DIR_MODE).unwrap();
    assert_eq!(p, root.path().join("shop/data"));
    assert_eq!(mode_of(&p), 0o777, "the umask does not narrow the mode");
    assert_eq!(mode_of(&root.path().join("shop")), 0o755);
    fs::write(p.join("f"), b"keep").unwrap();
    assert_eq!(
        root.create(&own("shop/data"), VolumeMode(0o700)).unwrap(),
        p
    );
    assert_eq!(
        fs::read(p.join("f")).unwrap(),
        b"keep",
        "re-create keeps data"
    );
    assert_eq!(mode_of(&p), 0o777, "an existing directory keeps its mode");
    assert!(root.holds(&own("shop/data")).unwrap());
    assert!(!root.holds(&own("shop/other")).unwrap());
    assert!(!root.holds(&own("nowhere/x")).unwrap());
    let flat = root.create(&own("shop-data"), VolumeMode(0o770)).unwrap();
    assert_eq!(mode_of(&flat), 0o770);
}

#[test]
fn delete_removes_only_the_claims_directory() {
    let (_d, root) = mount();
    let p = root.create(&own("ns/a"), DEFAULT_DIR_MODE).unwrap();
    root.create(&own("ns/b"), DEFAULT_DIR_MODE).unwrap();
    fs::create_dir(p.join("sub")).unwrap();
    fs::write(p.join("sub/f"), b"x").unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    assert_eq!(
        root.remove(&rel("ns/a"), None, OnDelete::Delete, now)
            .unwrap(),
        Removed::Deleted(p.clone())
    );
    assert!(!p.exists());
    assert!(root.path().join("ns/b").is_dir(), "siblings stay");
    assert!(
        root.path().join("ns").is_dir(),
        "the namespace directory stays"
    );
    assert_eq!(
        root.remove(&rel("ns/a"), None, OnDelete::Delete, now)
            .unwrap(),
        Removed::AlreadyGone(p)
    );
}

#[test]
fn archive_renames_to_names_that_never_collide() {
    let (_d, root) = mount();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    let mut archived = Vec::new();
    for round in 0..3 {
        let p = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap();
        fs::write(p.join("round"), format!("{round}")).unwrap();
        match root
            .remove(&rel("ns/data"), None, OnDelete::Archive, now)
            .unwrap()
        {
            Removed::Archived { from, to } => {
                assert_eq!(from, p);
                archived.push(to);
            }
            other => panic!("{other:?}"),
        }
        assert!(!p.exists());
    }
    let names: Vec<String> = archived
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "archived-ns-data-20240229T134507Z",
            "archived-ns-data-20240229T134507Z-1",
            "archived-ns-data-20240229T134507Z-2",
        ]
    );
    for (round, p) in archived.iter().enumerate() {
        assert_eq!(p.parent().unwrap(), root.path());
        assert_eq!(
            fs::read_to_string(p.join("round")).unwrap(),
            round.to_string()
        );
    }
    // An archive name is never a valid claim directory (capital T and Z).
    assert!(RelDir::parse(&names[0]).is_err());
    assert_eq!(
        root.remove(&rel("ns/data"), None, OnDelete::Archive, now)
            .unwrap(),
        Removed::AlreadyGone(root.path().join("ns/data"))
    );
}

#[test]
fn archive_names_of_long_claims_stay_under_the_name_limit() {
    let (_d, root) = mount();
    let long = format!("{}/{}", "n".repeat(63), "c".repeat(253));
    root.create(&own(&long), DEFAULT_DIR_MODE).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    let Removed::Archived { to, .. } = root
        .remove(&rel(&long), None, OnDelete::Archive, now)
        .unwrap()
    else {
        panic!("not archived");
    };
    assert!(to.file_name().unwrap().len() <= 255);
    assert!(to.is_dir());
}

#[test]
fn retain_touches_nothing() {
    let (_d, root) = mount();
    let p = root.create(&own("ns/keep"), DEFAULT_DIR_MODE).unwrap();
    assert_eq!(
        root.remove(&rel("ns/keep"), None, OnDelete::Retain, SystemTime::now())
            .unwrap(),
        Removed::Retained(p.clone())
    );
    assert!(p.is_dir());
}

/// A tree outside the mount that must survive every hostile layout untouched.
fn outside(dir: &Path) -> PathBuf {
    let out = dir.join("outside");
    fs::create_dir_all(out.join("data")).unwrap();
    fs::write(out.join("data/secret"), b"secret").unwrap();
    out
}

fn assert_untouched(out: &Path) {
    assert_eq!(fs::read(out.join("data/secret")).unwrap(), b"secret");
    let entries: Vec<_> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["data"], "nothing was created outside the mount");
}

#[test]
fn a_symlinked_namespace_directory_is_refused_and_nothing_outside_is_touched() {
    let (d, root) = mount();
    let out = outside(d.path());
    symlink(&out, root.path().join("ns")).unwrap();
    every_operation_is_refused_as_a_symlink(&root, "ns/data");
    every_operation_is_refused_as_a_symlink(&root, "ns/new");
    assert_untouched(&out);
}

/// Create, holds, delete and archive of `claim` all fail with [`DirError::Symlink`].
fn every_operation_is_refused_as_a_symlink(root: &ServerRoot, claim: &str) {
    let now = SystemTime::now();
    for result in [
        root.create(&own(claim), DEFAULT_DIR_MODE).map(|_| ()),
        root.holds(&own(claim)).map(|_| ()),
        root.remove(&rel(claim), None, OnDelete::Delete, now)
            .map(|_| ()),
        root.remove(&rel(claim), None, OnDelete::Archive, now)
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(DirError::Symlink { .. })),
            "{claim}: {result:?}"
        );
    }
}

#[test]
fn a_symlinked_claim_directory_is_refused_and_its_target_survives() {
    let (d, root) = mount();
    let out = outside(d.path());
    fs::create_dir(root.path().join("ns")).unwrap();
    symlink(out.join("data"), root.path().join("ns/data")).unwrap();
    symlink(out.join("data"), root.path().join("ns-data")).unwrap();
    let now = SystemTime::now();
    for r in ["ns/data", "ns-data"] {
        let e = root
            .remove(&rel(r), None, OnDelete::Delete, now)
            .unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(e.reason(), "NfsSymlinkRefused");
        assert!(root.remove(&rel(r), None, OnDelete::Archive, now).is_err());
        assert!(root.create(&own(r), DEFAULT_DIR_MODE).is_err());
        assert!(root.holds(&own(r)).is_err());
    }
    assert_untouched(&out);
}

#[test]
fn symlinks_inside_a_volume_are_removed_not_followed() {
    let (d, root) = mount();
    let out = outside(d.path());
    let p = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap();
    symlink(&out, p.join("escape")).unwrap();
    symlink(out.join("data/secret"), p.join("file-link")).unwrap();
    root.remove(&rel("ns/data"), None, OnDelete::Delete, SystemTime::now())
        .unwrap();
    assert!(!p.exists());
    assert_untouched(&out);
}

#[test]
fn a_file_where_a_directory_belongs_is_refused() {
    let (_d, root) = mount();
    fs::write(root.path().join("ns"), b"x").unwrap();
    let e = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap_err();
    assert!(matches!(e, DirError::NotADirectory { .. }), "{e}");
    assert!(root.holds(&own("ns/data")).is_err());
    assert_eq!(fs::read(root.path().join("ns")).unwrap(), b"x");
}

#[test]
fn a_mount_reached_through_a_symlink_is_canonical() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("real")).unwrap();
    symlink(d.path().join("real"), d.path().join("alias")).unwrap();
    let root = ServerRoot::open(d.path().join("alias")).unwrap();
    assert_eq!(
        root.path(),
        fs::canonicalize(d.path().join("real")).unwrap()
    );
    let p = root.create(&own("ns/x"), DEFAULT_DIR_MODE).unwrap();
    assert!(d.path().join("real/ns/x").is_dir());
    assert!(p.starts_with(root.path()));
}

// === symlinks swapped in between a check and its use ===

use crate::fsutil::race::{self, swap_at};

/// Whether this runs in CI: `$CI` set to anything but empty, `0` or `false` (the rule of
/// `stowage_testkit::in_ci`, which this pure crate does not depend on).
fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Where the race tests run: a temporary directory, and also the scratch btrfs when
/// `$STOWAGE_TEST_BTRFS` names one (another filesystem's rename and directory semantics).
fn bases(test: &str) -> Vec<tempfile::TempDir> {
    let mut bases = vec![tempfile::tempdir().unwrap()];
    match std::env::var_os("STOWAGE_TEST_BTRFS") {
        Some(mnt) => bases.push(
            tempfile::Builder::new()
                .prefix(&format!("{test}-"))
                .tempdir_in(mnt)
                .unwrap(),
        ),
        None => {
            assert!(
                !in_ci(),
                "STOWAGE_TEST_BTRFS is unset in CI; .ci/run must mount a scratch btrfs (scripts/btrfs-scratch) and export it"
            );
            eprintln!("{test}: STOWAGE_TEST_BTRFS is unset; running on the temp dir only")
        }
    }
    bases
}

/// A mount (with `ns/` made when `with_ns`) and a precious outside tree beside it:
/// `<base>/outside/data/secret`, mode 0755 everywhere.
fn setup(base: &Path) -> (ServerRoot, PathBuf) {
    fs::create_dir(base.join("mount")).unwrap();
    let root = ServerRoot::open(base.join("mount")).unwrap();
    let out = outside(base);
    for d in [&out, &out.join("data")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (root, out)
}

/// The outside tree is as [`setup`] made it: same entries, same contents, same modes.
fn intact(out: &Path) {
    assert_untouched(out);
    assert_eq!(mode_of(out), 0o755, "the outside directory's mode changed");
    assert_eq!(
        mode_of(&out.join("data")),
        0o755,
        "outside/data's mode changed"
    );
    let inside: Vec<_> = fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        inside,
        ["secret"],
        "nothing was made or removed in outside/data"
    );
}

/// [`setup`] with the claim `ns/data` made and holding a tenant's file `f`.
fn with_claim(base: &Path) -> (ServerRoot, PathBuf, PathBuf) {
    let (root, out) = setup(base);
    let p = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap();
    fs::write(p.join("f"), b"tenant").unwrap();
    (root, out, p)
}

fn is_symlink(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn create_refuses_a_staging_directory_swapped_for_a_symlink_before_its_chmod() {
    for base in bases("nfs-create-chmod") {
        let (root, out) = setup(base.path());
        for (point, victim, target) in [
            ("nfs.create.parent.chmod", ".parent-ns.data", out.clone()),
            ("nfs.create.chmod", "ns/.staging-data", out.join("data")),
        ] {
            let _race = swap_at(point, root.path().join(victim), target);
            let e = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap_err();
            assert!(matches!(e, DirError::Symlink { .. }), "{point}: {e}");
            assert!(e.to_string().contains(victim), "{point}: {e}");
            intact(&out);
            // The link is left; the next case starts from a clean staging name.
            let link = root.path().join(victim);
            assert!(is_symlink(&link));
            fs::remove_file(link).unwrap();
        }
        assert!(
            fs::symlink_metadata(root.path().join("ns/data")).is_err(),
            "no claim directory was made"
        );
    }
}

#[test]
fn create_refuses_what_was_renamed_into_place_when_it_is_not_the_directory_it_set_up() {
    for base in bases("nfs-create-rename") {
        let (root, out) = setup(base.path());
        let claim = root.path().join("ns/data");
        let _race = swap_at(
            "nfs.create.rename",
            root.path().join("ns/.staging-data"),
            out.join("data"),
        );
        let e = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap_err();
        assert!(matches!(e, DirError::Replaced { .. }), "{e}");
        assert_eq!(e.reason(), "NfsDirectoryReplaced");
        intact(&out);
        drop(_race);
        // The link was moved, not followed; a retry refuses it rather than adopting it.
        assert!(is_symlink(&claim));
        let e = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap_err();
        assert!(matches!(e, DirError::Symlink { .. }), "{e}");
        assert!(root.holds(&own("ns/data")).is_err());
        intact(&out);
    }
}

#[test]
fn create_under_a_namespace_swapped_for_a_symlink_stays_in_the_real_namespace_directory() {
    for base in bases("nfs-create-ns") {
        let (root, out) = setup(base.path());
        let ns = root.path().join("ns");
        let _race = swap_at("nfs.create.chmod", ns.clone(), out.clone());
        root.create(&own("ns/data"), VolumeMode(0o770)).unwrap();
        intact(&out);
        let real = ns.with_extension("moved").join("data");
        assert!(real.is_dir(), "made through the namespace's descriptor");
        assert_eq!(mode_of(&real), 0o770);
    }
}

#[test]
fn a_claim_swapped_for_a_symlink_after_it_was_opened_is_neither_deleted_nor_archived_through() {
    for base in bases("nfs-remove-claim") {
        for (on_delete, point) in [
            (OnDelete::Delete, "nfs.delete.remove"),
            (OnDelete::Archive, "nfs.archive.rename"),
        ] {
            let (root, out, p) = with_claim(base.path());
            let _race = swap_at(point, p.clone(), out.join("data"));
            let e = root
                .remove(&rel("ns/data"), None, on_delete, SystemTime::now())
                .unwrap_err();
            assert!(matches!(e, DirError::Replaced { .. }), "{point}: {e}");
            intact(&out);
            let moved = p.with_extension("moved");
            let mut left: Vec<_> = fs::read_dir(&moved)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            left.sort();
            if on_delete == OnDelete::Delete {
                // What was emptied through its descriptor is the claim's own directory;
                // the final unlinkat met the link and left it for a person to look at.
                assert!(left.is_empty(), "{left:?}");
                assert!(is_symlink(&p));
            } else {
                // The link was moved to the archive name, not followed.
                assert_eq!(left, [".stowage-owner", "f"]);
                assert!(!is_symlink(&p));
            }
            fs::remove_dir_all(base.path()).unwrap();
            fs::create_dir(base.path()).unwrap();
        }
    }
}

#[test]
fn delete_under_a_namespace_swapped_for_a_symlink_removes_only_the_real_claim_directory() {
    for base in bases("nfs-delete-ns") {
        let (root, out, p) = with_claim(base.path());
        // `outside/data` is what a by-path `remove_dir_all(<mount>/ns/data)` would delete.
        let ns = root.path().join("ns");
        let _race = swap_at("nfs.delete.remove", ns.clone(), out.clone());
        assert_eq!(
            root.remove(&rel("ns/data"), None, OnDelete::Delete, SystemTime::now())
                .unwrap(),
            Removed::Deleted(p)
        );
        intact(&out);
        assert!(!ns.with_extension("moved").join("data").exists());
    }
}

#[test]
fn delete_does_not_descend_into_a_subdirectory_swapped_for_a_symlink() {
    for base in bases("nfs-delete-tree") {
        let (root, out) = setup(base.path());
        let p = root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap();
        fs::create_dir_all(p.join("sub/deeper")).unwrap();
        fs::write(p.join("sub/deeper/f"), b"x").unwrap();
        fs::write(p.join("top"), b"x").unwrap();
        let sub = p.join("sub");
        let mut swapped = false;
        let target = out.join("data");
        let _race = race::set(move |at| {
            if at == "tree.enter" && !swapped {
                swapped = true;
                fs::rename(&sub, sub.with_extension("moved")).unwrap();
                symlink(&target, &sub).unwrap();
            }
        });
        // The link is removed, not entered; the moved-aside directory appeared after the
        // listing, so the claim directory is not empty at the end: refused, retried.
        let now = SystemTime::now();
        let first = root.remove(&rel("ns/data"), None, OnDelete::Delete, now);
        intact(&out);
        assert!(!is_symlink(&p.join("sub")), "the link itself is removed");
        let e = first.unwrap_err();
        assert!(matches!(e, DirError::Io { .. }), "{e}");
        assert_eq!(
            root.remove(&rel("ns/data"), None, OnDelete::Delete, now)
                .unwrap(),
            Removed::Deleted(p.clone())
        );
        assert!(!p.exists());
        intact(&out);
    }
}

#[test]
fn archive_under_a_namespace_swapped_for_a_symlink_moves_the_real_claim_directory() {
    for base in bases("nfs-archive-ns") {
        let (root, out, _) = with_claim(base.path());
        let _race = swap_at("nfs.archive.rename", root.path().join("ns"), out.clone());
        let now = UNIX_EPOCH + Duration::from_secs(AT);
        let Removed::Archived { to, .. } = root
            .remove(&rel("ns/data"), None, OnDelete::Archive, now)
            .unwrap()
        else {
            panic!("not archived");
        };
        assert_eq!(to.parent().unwrap(), root.path());
        assert_eq!(fs::read(to.join("f")).unwrap(), b"tenant");
        intact(&out);
    }
}

#[test]
fn a_mount_swapped_for_a_symlink_is_refused() {
    for base in bases("nfs-mount-swap") {
        let (root, out) = setup(base.path());
        root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap();
        fs::rename(root.path(), base.path().join("mount.moved")).unwrap();
        symlink(&out, root.path()).unwrap();
        fs::create_dir(out.join("ns")).unwrap();
        fs::set_permissions(out.join("ns"), fs::Permissions::from_mode(0o755)).unwrap();
        every_operation_is_refused_as_a_symlink(&root, "ns/data");
        fs::remove_dir(out.join("ns")).unwrap();
        intact(&out);
    }
}

#[test]
fn staging_leftovers_of_a_crashed_create_are_reused_and_discarded() {
    let (_d, root) = mount();
    // What creates killed between mkdir (narrowed by the umask) and chmod leave.
    let leftover = |p: PathBuf| {
        fs::DirBuilder::new().mode(0o700).create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    };
    leftover(root.path().join(".parent-ns.data"));
    let p = root.create(&own("ns/data"), VolumeMode(0o770)).unwrap();
    assert_eq!(
        mode_of(&root.path().join("ns")),
        0o755,
        "the retry sets the mode"
    );
    assert_eq!(mode_of(&p), 0o770);
    assert!(
        !root.path().join(".parent-ns.data").exists(),
        "renamed into place"
    );
    leftover(root.path().join("ns/.staging-other"));
    let q = root.create(&own("ns/other"), VolumeMode(0o777)).unwrap();
    assert_eq!(mode_of(&q), 0o777);
    assert!(!root.path().join("ns/.staging-other").exists());
    // Leftovers beside a claim being deleted or archived go with it; others stay.
    leftover(root.path().join("ns/.staging-data"));
    leftover(root.path().join(".parent-ns.data"));
    leftover(root.path().join("ns/.staging-keep"));
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    root.remove(&rel("ns/data"), None, OnDelete::Archive, now)
        .unwrap();
    assert!(!root.path().join("ns/.staging-data").exists());
    assert!(!root.path().join(".parent-ns.data").exists());
    assert!(root.path().join("ns/.staging-keep").is_dir());
    // A claim never made but with a leftover: gone, and the leftover with it.
    assert_eq!(
        root.remove(&rel("ns/keep"), None, OnDelete::Delete, now)
            .unwrap(),
        Removed::AlreadyGone(root.path().join("ns/keep"))
    );
    assert!(!root.path().join("ns/.staging-keep").exists());
    assert!(q.is_dir() && root.holds(&own("ns/other")).unwrap());
}

#[test]
fn staging_names_of_long_claims_fit_and_stay_distinct() {
    let (_d, root) = mount();
    let ns = "n".repeat(63);
    let a = format!("{ns}/{}a", "c".repeat(252));
    let b = format!("{ns}/{}b", "c".repeat(252));
    let pa = root.create(&own(&a), DEFAULT_DIR_MODE).unwrap();
    let pb = root.create(&own(&b), DEFAULT_DIR_MODE).unwrap();
    assert!(pa.is_dir() && pb.is_dir() && pa != pb);
    assert_ne!(
        staging_name(&"c".repeat(253)),
        staging_name(&format!("{}d", "c".repeat(252)))
    );
    assert!(staging_name(&"c".repeat(253)).len() <= 255);
    assert!(parent_staging_name(&ns, &"c".repeat(253)).len() <= 255);
}

#[test]
fn without_renameat2_flags_as_on_nfs_create_and_archive_still_never_replace_anything() {
    let (_d, root) = mount();
    let _nfs = race::without_rename_flags();
    let p = root.create(&own("ns/data"), VolumeMode(0o770)).unwrap();
    assert_eq!(mode_of(&p), 0o770);
    fs::write(p.join("f"), b"1").unwrap();
    assert_eq!(root.create(&own("ns/data"), DEFAULT_DIR_MODE).unwrap(), p);
    assert_eq!(
        fs::read(p.join("f")).unwrap(),
        b"1",
        "adopted, not replaced"
    );
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    // Taken archive names (a directory with data, a symlink) are skipped, not replaced.
    let taken = root.path().join("archived-ns-data-20240229T134507Z");
    fs::create_dir(&taken).unwrap();
    fs::write(taken.join("old"), b"old").unwrap();
    symlink(
        "/nonexistent",
        root.path().join("archived-ns-data-20240229T134507Z-1"),
    )
    .unwrap();
    let Removed::Archived { to, .. } = root
        .remove(&rel("ns/data"), None, OnDelete::Archive, now)
        .unwrap()
    else {
        panic!("not archived");
    };
    assert!(to.to_string_lossy().ends_with("Z-2"), "{to:?}");
    assert_eq!(fs::read(to.join("f")).unwrap(), b"1");
    assert_eq!(fs::read(taken.join("old")).unwrap(), b"old");
}

// === ownership markers (security finding "flat and nested layouts can collide") ===

#[test]
fn create_writes_an_owner_marker_into_the_claim_and_namespace_directories() {
    let (_d, root) = mount();
    let p = root.create(&own("team/db"), DEFAULT_DIR_MODE).unwrap();
    let marker = fs::read_to_string(p.join(".stowage-owner")).unwrap();
    assert!(marker.contains("kind=claim"), "{marker}");
    let ns = fs::read_to_string(root.path().join("team/.stowage-owner")).unwrap();
    assert!(ns.contains("kind=namespace"), "{ns}");
}

#[test]
fn a_nested_claim_refuses_a_namespace_directory_that_is_a_flat_claims_volume() {
    let (_d, root) = mount();
    // The flat claim team/db's volume, with its tenant's subdirectory x.
    let flat = root.create(&own("team-db"), DEFAULT_DIR_MODE).unwrap();
    fs::create_dir(flat.join("x")).unwrap();
    fs::write(flat.join("x/secret"), b"team's data").unwrap();
    assert!(
        root.holds(&own("team-db/x")).is_err(),
        "team/db's subdirectory x is not claim team-db/x's data"
    );
    assert!(root.create(&own("team-db/y"), DEFAULT_DIR_MODE).is_err());
    assert!(!flat.join("y").exists());
}

#[test]
fn deleting_a_flat_directory_that_holds_nested_claims_is_refused() {
    let (_d, root) = mount();
    let x = root.create(&own("team-db/x"), DEFAULT_DIR_MODE).unwrap();
    fs::write(x.join("orders"), b"team-db's data").unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    // Namespace team-db's directory seen as the flat claim team/db's volume.
    assert!(root.holds(&own("team-db")).is_err());
    for mode in [OnDelete::Delete, OnDelete::Archive] {
        assert!(
            root.remove(&rel("team-db"), None, mode, now).is_err(),
            "{mode:?}"
        );
    }
    assert_eq!(fs::read(x.join("orders")).unwrap(), b"team-db's data");
}

fn owner_of(ns: &str, name: &str, uid: &str, layout: Layout) -> Owner {
    Owner {
        claim: ClaimName::new(ns, name).unwrap(),
        uid: crate::nfs::ClaimUid::parse(uid).unwrap(),
        layout,
        namespace: crate::nfs::NamespaceNow::default(),
    }
}

fn marker_at(dir: &Path) -> Marker {
    Marker::parse(&fs::read_to_string(dir.join(".stowage-owner")).unwrap()).unwrap()
}

#[test]
fn a_recreated_claim_readopts_its_directory_and_a_colliding_flat_claim_is_refused() {
    let (_d, root) = mount();
    let first = owner_of("a-b", "c", "uid-1", Layout::Flat);
    let p = root.create(&first, DEFAULT_DIR_MODE).unwrap();
    fs::write(p.join("f"), b"a-b/c").unwrap();
    // Re-created under the same namespace and name: a new uid, the same data.
    let again = owner_of("a-b", "c", "uid-2", Layout::Flat);
    assert!(root.holds(&again).unwrap());
    assert_eq!(root.create(&again, DEFAULT_DIR_MODE).unwrap(), p);
    assert_eq!(
        marker_at(&p),
        Marker::for_claim(&first),
        "the marker is kept"
    );
    // a/b-c has the same flat directory a-b-c: refused by look-up, create and release.
    let other = owner_of("a", "b-c", "uid-3", Layout::Flat);
    assert_eq!(other.rel(), first.rel());
    for e in [
        root.holds(&other).unwrap_err(),
        root.create(&other, DEFAULT_DIR_MODE).unwrap_err(),
        root.remove(
            &other.rel(),
            Some(&other.claim),
            OnDelete::Delete,
            SystemTime::now(),
        )
        .unwrap_err(),
    ] {
        assert_eq!(e.reason(), "NfsDirectoryOfAnotherClaim", "{e}");
        let text = e.to_string();
        for part in [
            p.to_str().unwrap(),
            "belongs to claim a-b/c (uid uid-1, flat layout)",
            "claim a/b-c",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }
    assert_eq!(fs::read(p.join("f")).unwrap(), b"a-b/c");
    // The claim it belongs to releases it as before.
    assert_eq!(
        root.remove(
            &first.rel(),
            Some(&first.claim),
            OnDelete::Delete,
            SystemTime::now()
        )
        .unwrap(),
        Removed::Deleted(p)
    );
}

#[test]
fn unmarked_directories_of_older_versions_are_adopted_and_marked() {
    let (_d, root) = mount();
    // The source design's flat volume and an older version's nested claim, no markers.
    fs::create_dir(root.path().join("legacy-data")).unwrap();
    fs::write(root.path().join("legacy-data/f"), b"old").unwrap();
    fs::create_dir_all(root.path().join("shop/cart")).unwrap();
    fs::write(root.path().join("shop/cart/f"), b"old").unwrap();
    let flat = owner_of("legacy", "data", "u-1", Layout::Flat);
    let nested = owner_of("shop", "cart", "u-2", Layout::Nested);
    for owner in [&flat, &nested] {
        assert!(root.holds(owner).unwrap());
        let p = root.create(owner, DEFAULT_DIR_MODE).unwrap();
        assert_eq!(fs::read(p.join("f")).unwrap(), b"old");
        assert_eq!(marker_at(&p), Marker::for_claim(owner));
    }
    assert_eq!(
        marker_at(&root.path().join("shop")),
        Marker::for_namespace("shop", None)
    );
    // Another claim of the now marked namespace directory goes beside it.
    let x = owner_of("shop", "x", "u-3", Layout::Nested);
    let p = root.create(&x, DEFAULT_DIR_MODE).unwrap();
    assert_eq!(marker_at(&p), Marker::for_claim(&x));
}

#[test]
fn a_flat_claim_is_refused_a_namespace_directory_marked_or_evidently_one() {
    let (_d, root) = mount();
    let team_db = owner_of("team", "db", "u-1", Layout::Flat);
    // Marked by this version: team-db/.stowage-owner says namespace team-db.
    root.create(&own("team-db/x"), DEFAULT_DIR_MODE).unwrap();
    let e = root.create(&team_db, DEFAULT_DIR_MODE).unwrap_err();
    assert_eq!(e.reason(), "NfsNamespaceDirectoryRefused", "{e}");
    assert!(
        e.to_string()
            .contains("is the directory of namespace team-db in the nested layout"),
        "{e}"
    );
    // An older version's namespace directory has no marker, but a claim made since has one.
    fs::remove_file(root.path().join("team-db/.stowage-owner")).unwrap();
    let e = root.create(&team_db, DEFAULT_DIR_MODE).unwrap_err();
    assert!(e.to_string().contains("holds team-db/x"), "{e}");
    assert!(!root.path().join("team-db/.stowage-owner").exists());
    // A tenant's own copy of a marker elsewhere is no evidence: only <it>/<x> saying <it>/<x>.
    let (_d, root) = mount();
    let p = root.create(&own("ns/x"), DEFAULT_DIR_MODE).unwrap();
    fs::create_dir(root.path().join("team-db")).unwrap();
    fs::create_dir(root.path().join("team-db/backup")).unwrap();
    fs::copy(
        p.join(".stowage-owner"),
        root.path().join("team-db/backup/.stowage-owner"),
    )
    .unwrap();
    assert!(root.holds(&team_db).unwrap());
}

#[test]
fn a_marker_that_is_a_symlink_or_garbage_is_refused_and_nothing_is_followed() {
    let (d, root) = mount();
    let out = outside(d.path());
    for (name, plant) in [
        ("link", "symlink"),
        ("junk", "garbage"),
        ("dir", "directory"),
        ("newer", "version"),
    ] {
        let owner = owner_of("ns", name, "u-1", Layout::Nested);
        let p = root.create(&owner, DEFAULT_DIR_MODE).unwrap();
        let marker = p.join(".stowage-owner");
        fs::remove_file(&marker).unwrap();
        match plant {
            "symlink" => symlink(out.join("data/secret"), &marker).unwrap(),
            "garbage" => fs::write(&marker, b"\xff\xfe not a marker").unwrap(),
            "directory" => fs::create_dir(&marker).unwrap(),
            _ => fs::write(&marker, "version=9\nkind=namespace\nnamespace=ns\n").unwrap(),
        }
        for e in [
            root.holds(&owner).unwrap_err(),
            root.create(&owner, DEFAULT_DIR_MODE).unwrap_err(),
            root.remove(
                &owner.rel(),
                Some(&owner.claim),
                OnDelete::Delete,
                SystemTime::now(),
            )
            .unwrap_err(),
            root.remove(
                &owner.rel(),
                Some(&owner.claim),
                OnDelete::Archive,
                SystemTime::now(),
            )
            .unwrap_err(),
        ] {
            assert_eq!(e.reason(), "NfsOwnerMarkerInvalid", "{plant}: {e}");
            assert!(e.to_string().contains("remove it"), "{plant}: {e}");
        }
        assert!(p.is_dir(), "{plant}: kept");
    }
    assert_untouched(&out);
}

#[test]
fn a_marker_is_written_without_following_a_planted_staging_link() {
    let (d, root) = mount();
    let out = outside(d.path());
    // An unmarked legacy directory whose tenant planted links at the marker's staging name.
    let p = root.path().join("legacy-data");
    fs::create_dir(&p).unwrap();
    symlink(out.join("data/secret"), p.join(".stowage-owner.new")).unwrap();
    let owner = owner_of("legacy", "data", "u-1", Layout::Flat);
    root.create(&owner, DEFAULT_DIR_MODE).unwrap();
    assert_eq!(marker_at(&p), Marker::for_claim(&owner));
    assert!(!p.join(".stowage-owner.new").exists());
    assert_untouched(&out);
}

#[test]
fn a_marker_that_appears_before_ours_is_renamed_in_is_checked_not_replaced() {
    for flags in [true, false] {
        let (_d, root) = mount();
        let _nfs = (!flags).then(race::without_rename_flags);
        let p = root.path().join("a-b-c");
        fs::create_dir(&p).unwrap();
        let theirs = owner_of("a-b", "c", "u-1", Layout::Flat);
        let planted = p.join(".stowage-owner");
        let text = Marker::for_claim(&theirs).render();
        let _race = race::set(move |at| {
            if at == "nfs.marker.rename" && !planted.exists() {
                fs::write(&planted, &text).unwrap();
            }
        });
        let e = root
            .create(&owner_of("a", "b-c", "u-2", Layout::Flat), DEFAULT_DIR_MODE)
            .unwrap_err();
        assert_eq!(e.reason(), "NfsDirectoryOfAnotherClaim", "{e}");
        assert_eq!(marker_at(&p), Marker::for_claim(&theirs));
        assert!(!p.join(".stowage-owner.new").exists());
    }
}

#[test]
fn a_nested_namespace_directory_with_a_claims_marker_is_refused_before_anything_is_made() {
    let (_d, root) = mount();
    let flat = root.create(&own("team-db"), DEFAULT_DIR_MODE).unwrap();
    let e = root
        .create(&own("team-db/y"), DEFAULT_DIR_MODE)
        .unwrap_err();
    assert_eq!(e.reason(), "NfsDirectoryOfAnotherClaim", "{e}");
    assert!(
        e.to_string()
            .contains("refusing it as the namespace directory of claim team-db/y"),
        "{e}"
    );
    let mut inside: Vec<_> = fs::read_dir(&flat)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    inside.sort();
    assert_eq!(
        inside,
        [".stowage-owner"],
        "nothing was made in team/db's volume"
    );
}
