use super::*;
use crate::nfs::ring::{RingServer, Status};
use std::fs;
use std::path::Path;

fn spec(name: &str, address: &str, export: &str, mount: &Path) -> ServerSpec {
    ServerSpec {
        name: ServerName::parse(name).unwrap(),
        address: address.to_string(),
        export: export.to_string(),
        mount: mount.to_path_buf(),
        weight: None,
        drain: false,
    }
}

fn ring_of(servers: &[ServerSpec]) -> Ring {
    Ring::new(
        servers
            .iter()
            .map(|s| RingServer::new(s.name.as_str(), 100))
            .collect(),
    )
    .unwrap()
}

fn claim(ns: &str, name: &str) -> ClaimName {
    ClaimName::new(ns, name).unwrap()
}

fn req(c: &ClaimName, layout: Layout) -> PlaceRequest<'_> {
    PlaceRequest {
        claim: c,
        size: Bytes::gib(1),
        layout,
        epsilon: Some(Epsilon::default()),
    }
}

#[test]
fn claim_names_are_dns_names_and_hostile_ones_are_refused() {
    let c = claim("shop", "data-db-0.v2");
    assert_eq!(c.key(), "shop/data-db-0.v2");
    for (ns, name, want) in [
        ("..", "x", "namespace \"..\""),
        ("", "x", "1-63"),
        ("a/b", "x", "namespace"),
        ("Shop", "x", "lowercase"),
        ("-a", "x", "start and end"),
        ("a", "..", "claim name \"..\""),
        ("a", ".", "claim name"),
        ("a", "", "claim name"),
        ("a", "../../etc", "path separator"),
        ("a", "x/y", "path separator"),
        ("a", "a..b", "no \"..\""),
        ("a", "a_b", "lowercase letters, digits"),
        ("a", "a\0b", "claim name"),
    ] {
        let e = ClaimName::new(ns, name).unwrap_err().to_string();
        assert!(e.contains(want), "{ns:?}/{name:?}: {e}");
    }
    assert!(ClaimName::new(&"a".repeat(64), "x").is_err());
    assert!(ClaimName::new("a", &"b".repeat(254)).is_err());
    assert!(ClaimName::new("a", &"b".repeat(253)).is_ok());
}

#[test]
fn layouts_give_nested_and_flat_directories() {
    let c = claim("a-b", "c");
    assert_eq!(Layout::Nested.rel_dir(&c).to_path(), Path::new("a-b/c"));
    assert_eq!(Layout::Flat.rel_dir(&c).to_path(), Path::new("a-b-c"));
    // The flat layout's collision, the reason it is for takeover only.
    assert_eq!(
        Layout::Flat.rel_dir(&claim("a", "b-c")),
        Layout::Flat.rel_dir(&c)
    );
    assert_ne!(
        Layout::Nested.rel_dir(&claim("a", "b-c")),
        Layout::Nested.rel_dir(&c)
    );
    assert_eq!(
        export_path("/exports", &Layout::Nested.rel_dir(&c)),
        "/exports/a-b/c"
    );
    assert_eq!(export_path("/", &Layout::Flat.rel_dir(&c)), "/a-b-c");
}

#[test]
fn rel_dirs_parse_only_what_stowage_makes() {
    assert_eq!(RelDir::parse("ns/c").unwrap().parts(), ["ns", "c"]);
    assert_eq!(RelDir::parse("ns-c").unwrap().parts(), ["ns-c"]);
    for bad in [
        "", "..", "ns/..", "../x", "a/b/c", "/a", "a/", "ns/C", ".hidden",
    ] {
        assert!(RelDir::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_fresh_claim_goes_where_the_ring_says_with_pv_fields() {
    let servers = vec![
        spec("a", "10.0.0.1", "/exports", Path::new("/m/a")),
        spec("b", "10.0.0.2", "/", Path::new("/m/b")),
    ];
    let ring = ring_of(&servers);
    let loads = vec![ServerLoad::ready(Bytes::ZERO); 2];
    let c = claim("shop", "data");
    let p = plan(
        &servers,
        &ring,
        &loads,
        req(&c, Layout::Nested),
        &Lookup::default(),
    )
    .unwrap();
    assert_eq!(p.server, ring.primary("shop/data"));
    assert!(!p.reused);
    let s = &servers[p.server];
    assert_eq!(p.address, s.address);
    assert_eq!(p.dir, s.mount.join("shop/data"));
    assert_eq!(p.export_path, export_path(&s.export, &p.rel));
    assert_eq!(
        locate(&servers, &p.address, &p.export_path).unwrap(),
        Located {
            server: p.server,
            rel: p.rel.clone()
        },
        "the PV leads back to the same server and directory"
    );
}

#[test]
fn existing_data_wins_even_on_a_draining_or_full_server() {
    let servers: Vec<ServerSpec> = ["a", "b", "c"]
        .iter()
        .map(|n| spec(n, n, "/e", &Path::new("/m").join(n)))
        .collect();
    let ring = ring_of(&servers);
    let c = claim("db", "data-db-0");
    let home = ring.primary(&c.key());
    let holder = (home + 1) % 3;
    let mut loads = vec![ServerLoad::ready(Bytes::ZERO); 3];
    loads[holder].status = Status::Draining;
    loads[holder].available = Some(Bytes::ZERO);
    let found = Lookup {
        holders: vec![holder],
        unchecked: vec![(home, "timed out".to_string())],
        ..Lookup::default()
    };
    let p = plan(&servers, &ring, &loads, req(&c, Layout::Nested), &found).unwrap();
    assert_eq!(p.server, holder);
    assert!(p.reused);
    assert!(p.skipped.is_empty());
    assert_eq!(
        p.unchecked,
        vec![(servers[home].name.clone(), "timed out".to_string())]
    );

    let two = Lookup {
        holders: vec![0, 2],
        ..Lookup::default()
    };
    let e = plan(&servers, &ring, &loads, req(&c, Layout::Nested), &two).unwrap_err();
    assert_eq!(e.reason(), "NfsDataOnSeveralServers");
    assert!(
        e.to_string()
            .contains("exists on several NFS servers (a, c)"),
        "{e}"
    );

    // A directory of the claim's name that is not the claim's refuses the claim, even
    // when another server holds one that is.
    let refused = Lookup {
        holders: vec![0],
        refused: vec![(
            2,
            crate::nfs::NotOurs {
                path: "/m/c/db".into(),
                claim: c.to_string(),
                purpose: crate::nfs::owner::Purpose::Volume,
                refusal: crate::nfs::owner::Refusal::NamespaceDirectory {
                    namespace: "db".into(),
                },
            },
        )],
        ..Lookup::default()
    };
    let e = plan(&servers, &ring, &loads, req(&c, Layout::Nested), &refused).unwrap_err();
    assert_eq!(e.reason(), "NfsNamespaceDirectoryRefused");
    assert!(
        e.to_string()
            .starts_with("NFS server c: /m/c/db is the directory of namespace db"),
        "{e}"
    );
}

#[test]
fn nothing_fits_lists_every_server_and_a_stale_ring_is_refused() {
    let servers: Vec<ServerSpec> = ["a", "b"]
        .iter()
        .map(|n| spec(n, n, "/e", &Path::new("/m").join(n)))
        .collect();
    let ring = ring_of(&servers);
    let loads = vec![
        ServerLoad {
            status: Status::Draining,
            allocated: Bytes::ZERO,
            available: None,
        },
        ServerLoad {
            status: Status::Ready,
            allocated: Bytes::ZERO,
            available: Some(Bytes::mib(10)),
        },
    ];
    let c = claim("x", "y");
    let e = plan(
        &servers,
        &ring,
        &loads,
        req(&c, Layout::Nested),
        &Lookup::default(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("no NFS server can take claim x/y of 1Gi"),
        "{text}"
    );
    assert!(text.contains("a: draining"), "{text}");
    assert!(text.contains("b: full"), "{text}");

    let stale = ring_of(&servers[..1]);
    let e = plan(
        &servers,
        &stale,
        &loads,
        req(&c, Layout::Nested),
        &Lookup::default(),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        PlaceError::RingOutOfDate { ring: 1, config: 2 }
    ));
}

#[test]
fn pvs_are_located_by_address_and_longest_export() {
    let servers = vec![
        spec("a", "10.0.0.1", "/exports", Path::new("/m/a")),
        spec("a2", "10.0.0.1", "/exports/fast", Path::new("/m/a2")),
        spec("b", "10.0.0.2", "/exports", Path::new("/m/b")),
    ];
    let at = |addr: &str, path: &str| {
        locate(&servers, addr, path).map(|l| (l.server, l.rel.to_string()))
    };
    assert_eq!(
        at("10.0.0.1", "/exports/ns/c").unwrap(),
        (0, "ns/c".to_string())
    );
    assert_eq!(
        at("10.0.0.1", "/exports/fast/ns/c").unwrap(),
        (1, "ns/c".to_string())
    );
    assert_eq!(
        at("10.0.0.2", "/exports/ns-c").unwrap(),
        (2, "ns-c".to_string())
    );
    // The source design's defect: the export path in nfs.server. It leads nowhere, loudly.
    let e = at("/exports", "/exports/ns-c").unwrap_err().to_string();
    assert!(
        e.contains("no configured NFS server has address \"/exports\""),
        "{e}"
    );
    assert!(e.contains("drain: true"), "{e}");
    let e = at("10.0.0.1", "/exportsx/ns/c").unwrap_err().to_string();
    assert!(e.contains("no configured NFS server"), "{e}");
    for hostile in [
        "/exports/ns/../../etc",
        "/exports/..",
        "/exports/",
        "/exports/a/b/c",
    ] {
        let e = at("10.0.0.2", hostile).unwrap_err().to_string();
        assert!(
            e.contains("is not a stowage volume directory"),
            "{hostile}: {e}"
        );
    }
}

#[test]
fn lookup_finds_real_directories_and_reports_unreadable_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir_all(a.join("ns/c")).unwrap();
    fs::create_dir_all(b.join("ns")).unwrap();
    let servers = vec![
        spec("a", "a", "/e", &a),
        spec("b", "b", "/e", &b),
        spec("gone", "g", "/e", &dir.path().join("missing")),
    ];
    let owner = Owner {
        claim: claim("ns", "c"),
        uid: crate::nfs::ClaimUid::parse("u-1").unwrap(),
        layout: Layout::Nested,
        namespace: crate::nfs::NamespaceNow::default(),
    };
    let found = lookup(&servers, &owner);
    assert_eq!(found.holders, vec![0]);
    assert_eq!(found.unchecked.len(), 1);
    assert_eq!(found.unchecked[0].0, 2);
    // A symlink named like the claim's directory is not the claim's data.
    std::os::unix::fs::symlink(a.join("ns/c"), b.join("ns/c")).unwrap();
    let found = lookup(&servers, &owner);
    assert_eq!(found.holders, vec![0]);
    assert_eq!(
        found.unchecked.iter().map(|u| u.0).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn export_paths_overlap_by_whole_components() {
    for (a, b, want) in [
        ("/x/team", "/x/team", Overlap::Same),
        ("/x/team/", "//x//team", Overlap::Same),
        ("/x/team-db/x", "/x/team-db", Overlap::Inside),
        ("/x/team-db", "/x/team-db/x", Overlap::Holds),
        ("/x/team", "/x/team-db", Overlap::Apart),
        ("/x/team-db", "/x/team", Overlap::Apart),
        ("/", "/x", Overlap::Holds),
    ] {
        assert_eq!(overlap(a, b), want, "{a} vs {b}");
    }
}

#[test]
fn a_directory_may_not_be_hold_or_lie_inside_another_pvs_unless_it_is_the_claims_own() {
    let dir = tempfile::tempdir().unwrap();
    let servers = vec![spec("a", "10.0.0.1", "/e", dir.path())];
    let ring = ring_of(&servers);
    let loads = vec![ServerLoad::ready(Bytes::ZERO)];
    let team_db = claim("team", "db");
    let p = plan(
        &servers,
        &ring,
        &loads,
        req(&team_db, Layout::Flat),
        &Lookup::default(),
    )
    .unwrap();
    assert_eq!(p.export_path, "/e/team-db");
    let used = |claim: &str, address: &str, path: &str| UsedDir {
        pv: format!("pv-{claim}"),
        claim: Some(claim.to_string()),
        address: address.to_string(),
        path: path.to_string(),
    };
    for (u, want) in [
        (
            used("team-db/x", "10.0.0.1", "/e/team-db/x"),
            Some(Overlap::Holds),
        ),
        (used("up/up", "10.0.0.1", "/e"), Some(Overlap::Inside)),
        (
            used("team-d/b", "10.0.0.1", "/e/team-db"),
            Some(Overlap::Same),
        ),
        // A re-created claim finds its own old directory.
        (used("team/db", "10.0.0.1", "/e/team-db"), None),
        (used("team/x", "10.0.0.1", "/e/team"), None),
        (used("team-db/x", "10.0.0.2", "/e/team-db/x"), None),
    ] {
        let got = clash(&p, &team_db, std::slice::from_ref(&u)).map(|(_, how)| how);
        assert_eq!(got, want, "{u:?}");
    }
}
