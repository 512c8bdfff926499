use super::*;
use std::os::unix::fs::symlink;
use std::time::{Duration, UNIX_EPOCH};

fn rel(s: &str) -> RelDir {
    RelDir::parse(s).unwrap()
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
    let p = root.create(&rel("shop/data"), DEFAULT_DIR_MODE).unwrap();
    assert_eq!(p, root.path().join("shop/data"));
    assert_eq!(mode_of(&p), 0o777, "the umask does not narrow the mode");
    assert_eq!(mode_of(&root.path().join("shop")), 0o755);
    fs::write(p.join("f"), b"keep").unwrap();
    assert_eq!(
        root.create(&rel("shop/data"), VolumeMode(0o700)).unwrap(),
        p
    );
    assert_eq!(
        fs::read(p.join("f")).unwrap(),
        b"keep",
        "re-create keeps data"
    );
    assert_eq!(mode_of(&p), 0o777, "an existing directory keeps its mode");
    assert!(root.holds(&rel("shop/data")).unwrap());
    assert!(!root.holds(&rel("shop/other")).unwrap());
    assert!(!root.holds(&rel("nowhere/x")).unwrap());
    let flat = root.create(&rel("shop-data"), VolumeMode(0o770)).unwrap();
    assert_eq!(mode_of(&flat), 0o770);
}

#[test]
fn delete_removes_only_the_claims_directory() {
    let (_d, root) = mount();
    let p = root.create(&rel("ns/a"), DEFAULT_DIR_MODE).unwrap();
    root.create(&rel("ns/b"), DEFAULT_DIR_MODE).unwrap();
    fs::create_dir(p.join("sub")).unwrap();
    fs::write(p.join("sub/f"), b"x").unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    assert_eq!(
        root.remove(&rel("ns/a"), OnDelete::Delete, now).unwrap(),
        Removed::Deleted(p.clone())
    );
    assert!(!p.exists());
    assert!(root.path().join("ns/b").is_dir(), "siblings stay");
    assert!(
        root.path().join("ns").is_dir(),
        "the namespace directory stays"
    );
    assert_eq!(
        root.remove(&rel("ns/a"), OnDelete::Delete, now).unwrap(),
        Removed::AlreadyGone(p)
    );
}

#[test]
fn archive_renames_to_names_that_never_collide() {
    let (_d, root) = mount();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    let mut archived = Vec::new();
    for round in 0..3 {
        let p = root.create(&rel("ns/data"), DEFAULT_DIR_MODE).unwrap();
        fs::write(p.join("round"), format!("{round}")).unwrap();
        match root
            .remove(&rel("ns/data"), OnDelete::Archive, now)
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
        root.remove(&rel("ns/data"), OnDelete::Archive, now)
            .unwrap(),
        Removed::AlreadyGone(root.path().join("ns/data"))
    );
}

#[test]
fn archive_names_of_long_claims_stay_under_the_name_limit() {
    let (_d, root) = mount();
    let long = format!("{}/{}", "n".repeat(63), "c".repeat(253));
    root.create(&rel(&long), DEFAULT_DIR_MODE).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(AT);
    let Removed::Archived { to, .. } = root.remove(&rel(&long), OnDelete::Archive, now).unwrap()
    else {
        panic!("not archived");
    };
    assert!(to.file_name().unwrap().len() <= 255);
    assert!(to.is_dir());
}

#[test]
fn retain_touches_nothing() {
    let (_d, root) = mount();
    let p = root.create(&rel("ns/keep"), DEFAULT_DIR_MODE).unwrap();
    assert_eq!(
        root.remove(&rel("ns/keep"), OnDelete::Retain, SystemTime::now())
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
    let now = SystemTime::now();
    for result in [
        root.create(&rel("ns/data"), DEFAULT_DIR_MODE).map(|_| ()),
        root.create(&rel("ns/new"), DEFAULT_DIR_MODE).map(|_| ()),
        root.holds(&rel("ns/data")).map(|_| ()),
        root.remove(&rel("ns/data"), OnDelete::Delete, now)
            .map(|_| ()),
        root.remove(&rel("ns/data"), OnDelete::Archive, now)
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(DirError::Symlink { .. })),
            "{result:?}"
        );
    }
    assert_untouched(&out);
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
        let e = root.remove(&rel(r), OnDelete::Delete, now).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(e.reason(), "NfsSymlinkRefused");
        assert!(root.remove(&rel(r), OnDelete::Archive, now).is_err());
        assert!(root.create(&rel(r), DEFAULT_DIR_MODE).is_err());
        assert!(root.holds(&rel(r)).is_err());
    }
    assert_untouched(&out);
}

#[test]
fn symlinks_inside_a_volume_are_removed_not_followed() {
    let (d, root) = mount();
    let out = outside(d.path());
    let p = root.create(&rel("ns/data"), DEFAULT_DIR_MODE).unwrap();
    symlink(&out, p.join("escape")).unwrap();
    symlink(out.join("data/secret"), p.join("file-link")).unwrap();
    root.remove(&rel("ns/data"), OnDelete::Delete, SystemTime::now())
        .unwrap();
    assert!(!p.exists());
    assert_untouched(&out);
}

#[test]
fn a_file_where_a_directory_belongs_is_refused() {
    let (_d, root) = mount();
    fs::write(root.path().join("ns"), b"x").unwrap();
    let e = root.create(&rel("ns/data"), DEFAULT_DIR_MODE).unwrap_err();
    assert!(matches!(e, DirError::NotADirectory { .. }), "{e}");
    assert!(root.holds(&rel("ns/data")).is_err());
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
    let p = root.create(&rel("ns/x"), DEFAULT_DIR_MODE).unwrap();
    assert!(d.path().join("real/ns/x").is_dir());
    assert!(p.starts_with(root.path()));
}
