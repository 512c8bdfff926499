//! The pieces together, on temporary directories standing in for the NFS mounts.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::nfs::owner::OWNER_FILE;
use crate::nfs::ring::Status;

fn config_for(base: &Path, names: &[&str]) -> NfsConfig {
    for n in names {
        fs::create_dir_all(base.join(n)).unwrap();
    }
    let servers: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{{name: {n}, address: 10.0.0.{i}, export: /exports/{n}}}"))
        .collect();
    let cfg = NfsConfig::parse_yaml(&format!(
        "mountBase: {}\nservers: [{}]",
        base.display(),
        servers.join(", ")
    ))
    .unwrap();
    cfg.check_mounts().unwrap();
    cfg
}

fn cluster(cfg: NfsConfig) -> NfsCluster {
    let mut c = NfsCluster::new(cfg).unwrap();
    let states = c.probe(&[]);
    c.refresh(states).unwrap();
    c
}

/// A claim uid; tests re-provisioning a claim use the same one unless they say otherwise.
fn uid() -> ClaimUid {
    ClaimUid::parse("6f0c2d1e-0000-4000-8000-000000000001").unwrap()
}

fn params(pairs: &[(&str, &str)]) -> NfsClassParams {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NfsClassParams::parse("nfs", Some(&map)).unwrap()
}

#[test]
fn before_the_first_probe_nothing_is_placed() {
    let dir = tempfile::tempdir().unwrap();
    let c = NfsCluster::new(config_for(dir.path(), &["a", "b"])).unwrap();
    let e = c
        .provision(
            &ClaimName::new("ns", "x").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[]),
            &[],
        )
        .unwrap_err();
    assert!(e.to_string().contains("cannot place claim ns/x"), "{e}");
    assert!(format!("{:?}", e).contains("not probed yet"), "{e:?}");
    assert!(e.is_transient());
}

#[test]
fn provision_makes_the_directory_and_the_pv_leads_back_for_delete() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a", "b", "c"]));
    let claim = ClaimName::new("shop", "data").unwrap();
    let p = c
        .provision(
            &claim,
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[("deleteFile", "true")]),
            &[],
        )
        .unwrap();
    assert!(p.dir.is_dir());
    assert_eq!(
        p.dir,
        dir.path().join(p.server_name.as_str()).join("shop/data")
    );
    assert_eq!(
        p.export_path,
        format!("/exports/{}/shop/data", p.server_name)
    );
    assert_eq!(p.address, format!("10.0.0.{}", p.server));
    assert!(!p.reused);
    // Idempotent: again, the same server, now as a reuse.
    let again = c
        .provision(&claim, &uid(), None, Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    assert_eq!(again.server, p.server);
    assert!(again.reused);

    let now = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
    let gone = c
        .delete(&p.address, &p.export_path, None, OnDelete::Delete, now)
        .unwrap();
    assert_eq!(
        gone,
        Removed::Deleted(
            fs::canonicalize(dir.path())
                .unwrap()
                .join(p.server_name.as_str())
                .join("shop/data")
        )
    );
    assert!(!p.dir.exists());
    let e = c
        .delete("10.9.9.9", &p.export_path, None, OnDelete::Delete, now)
        .unwrap_err();
    assert_eq!(e.reason(), "NfsUnknownVolume");
    assert!(!e.is_transient());
}

#[test]
fn a_recreated_claim_finds_its_data_after_servers_were_added() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["s0", "s1", "s2"];
    let small = cluster(config_for(dir.path(), &names));
    let claims: Vec<ClaimName> = (0..40)
        .map(|i| ClaimName::new("db", &format!("data-db-{i}")).unwrap())
        .collect();
    let mut first = Vec::new();
    for c in &claims {
        let p = small
            .provision(c, &uid(), None, Bytes::gib(1), &params(&[]), &[])
            .unwrap();
        fs::write(p.dir.join("marker"), c.name()).unwrap();
        first.push(p.server_name);
    }
    // Three more servers; the claims are deleted (data kept) and re-created.
    let big = cluster(config_for(
        dir.path(),
        &["s0", "s1", "s2", "s3", "s4", "s5"],
    ));
    let mut fresh_home_moved = 0;
    for (c, was) in claims.iter().zip(&first) {
        let p = big
            .provision(c, &uid(), None, Bytes::gib(1), &params(&[]), &[])
            .unwrap();
        assert_eq!(&p.server_name, was, "{c} moved");
        assert!(p.reused);
        assert_eq!(fs::read_to_string(p.dir.join("marker")).unwrap(), c.name());
        let home = &big.ring().servers()[big.ring().primary(&c.key())].name;
        if home != was.as_str() {
            fresh_home_moved += 1;
        }
    }
    assert!(
        fresh_home_moved > 0,
        "the ring alone would have moved some claims; the directory lookup kept them"
    );
}

#[test]
fn a_draining_server_gets_no_new_volumes_but_keeps_its_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), &["a", "b"]);
    let c = cluster(cfg.clone());
    let claims: Vec<ClaimName> = (0..30)
        .map(|i| ClaimName::new("ns", &format!("c{i}")).unwrap())
        .collect();
    let before: Vec<usize> = claims
        .iter()
        .map(|cl| {
            c.provision(cl, &uid(), None, Bytes::gib(1), &params(&[]), &[])
                .unwrap()
                .server
        })
        .collect();
    assert!(before.contains(&0), "the test needs volumes on a");
    let mut drained = cfg;
    drained.servers[0].drain = true;
    let d = cluster(drained);
    assert_eq!(d.states()[0].status, Status::Draining);
    for (cl, was) in claims.iter().zip(&before) {
        assert_eq!(
            d.provision(cl, &uid(), None, Bytes::gib(1), &params(&[]), &[])
                .unwrap()
                .server,
            *was
        );
    }
    for i in 0..30 {
        let fresh = ClaimName::new("new", &format!("c{i}")).unwrap();
        let p = d
            .provision(&fresh, &uid(), None, Bytes::gib(1), &params(&[]), &[])
            .unwrap();
        assert_eq!(p.server, 1, "{fresh}");
    }
}

#[test]
fn flat_layout_takes_over_the_source_designs_directories() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a", "b"]));
    // Data written by the source design on b, at <mount>/<ns>-<claim>.
    fs::create_dir(dir.path().join("b/legacy-data")).unwrap();
    fs::write(dir.path().join("b/legacy-data/f"), b"old").unwrap();
    let claim = ClaimName::new("legacy", "data").unwrap();
    let p = c
        .provision(
            &claim,
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[("layout", "flat")]),
            &[],
        )
        .unwrap();
    assert_eq!(p.server_name.as_str(), "b");
    assert!(p.reused);
    assert_eq!(p.export_path, "/exports/b/legacy-data");
    let now = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
    let Removed::Archived { to, .. } = c
        .delete(&p.address, &p.export_path, None, OnDelete::Archive, now)
        .unwrap()
    else {
        panic!("not archived");
    };
    assert_eq!(
        to.file_name().unwrap(),
        "archived-legacy-data-20240229T134507Z"
    );
    assert_eq!(fs::read(to.join("f")).unwrap(), b"old");
}

#[test]
fn allocations_feed_bounded_loads_and_refresh_rebuilds_only_on_weight_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(config_for(dir.path(), &["a", "b"]));
    let states = c.probe(&[]);
    assert!(!c.refresh(states).unwrap(), "same weights: same ring");
    // b already holds far more than a: fresh claims go to a until the bound allows b.
    let states = c.probe(&[
        Allocation::default(),
        Allocation {
            bytes: Bytes::gib(100),
            volumes: 10,
        },
    ]);
    c.refresh(states).unwrap();
    // MiB claims: the temp dir's real free space (statvfs of the test machine's disk) must
    // not decide this test.
    for i in 0..20 {
        let cl = ClaimName::new("ns", &format!("c{i}")).unwrap();
        let p = c
            .provision(&cl, &uid(), None, Bytes::mib(1), &params(&[]), &[])
            .unwrap();
        assert_eq!(p.server_name.as_str(), "a", "{cl}");
        c.note_provisioned(p.server, Bytes::mib(1));
    }
    assert_eq!(c.states()[0].allocated, Bytes::mib(20));
    assert_eq!(c.states()[0].volumes, 20);
}

#[test]
fn a_grown_volume_counts_its_extra_bytes_without_counting_a_new_volume() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(config_for(dir.path(), &["a", "b"]));
    let states = c.probe(&[Allocation {
        bytes: Bytes::gib(1),
        volumes: 1,
    }]);
    c.refresh(states).unwrap();
    let free = c.states()[0].available.unwrap();
    c.note_grown(0, Bytes::gib(2));
    c.note_grown(7, Bytes::gib(2)); // no such server: ignored
    let a = &c.states()[0];
    assert_eq!(a.allocated, Bytes::gib(3));
    assert_eq!(a.volumes, 1);
    assert_eq!(a.available, Some(free.saturating_sub(Bytes::gib(2))));
    assert_eq!(c.states()[1].allocated, Bytes::ZERO);
}

/// The error and every source, joined: what the Event on the claim says.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// === flat and nested layouts on one server (security finding "layouts can collide") ===

#[test]
fn a_flat_claim_never_adopts_a_nested_namespace_directory() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let nested = c
        .provision(
            &ClaimName::new("team-db", "x").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[("deleteFile", "true")]),
            &[],
        )
        .unwrap();
    fs::write(nested.dir.join("orders"), b"team-db's data").unwrap();
    // Claim db of namespace team, flat layout: <mount>/team-db, namespace team-db's directory.
    let flat = c.provision(
        &ClaimName::new("team", "db").unwrap(),
        &uid(),
        None,
        Bytes::gib(1),
        &params(&[("layout", "flat"), ("deleteFile", "true")]),
        &[],
    );
    let e = flat.expect_err("the flat claim team/db must not get namespace team-db's directory");
    let text = chain(&e);
    assert!(text.contains("team-db"), "{text}");
    assert!(text.contains("team/db"), "{text}");
    assert!(!e.is_transient());
    assert_eq!(
        fs::read(nested.dir.join("orders")).unwrap(),
        b"team-db's data"
    );
}

#[test]
fn a_flat_pv_of_an_older_version_never_deletes_a_nested_namespace_directory() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let nested = c
        .provision(
            &ClaimName::new("team-db", "x").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[]),
            &[],
        )
        .unwrap();
    fs::write(nested.dir.join("orders"), b"team-db's data").unwrap();
    // A PV an older version made for the flat claim team/db points at <export>/team-db.
    let team_db = ClaimName::new("team", "db").unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
    for mode in [OnDelete::Delete, OnDelete::Archive] {
        let e = c
            .delete(
                &nested.address,
                "/exports/a/team-db",
                Some(&team_db),
                mode,
                now,
            )
            .expect_err("namespace team-db's directory must not be deleted or archived");
        assert!(!e.is_transient(), "{e}");
    }
    assert_eq!(
        fs::read(nested.dir.join("orders")).unwrap(),
        b"team-db's data"
    );
}

#[test]
fn a_flat_claim_refuses_the_directory_of_another_flat_claim() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let flat = params(&[("layout", "flat")]);
    // a-b/c and a/b-c both map to <mount>/a-b-c.
    let first = c
        .provision(
            &ClaimName::new("a-b", "c").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &flat,
            &[],
        )
        .unwrap();
    fs::write(first.dir.join("f"), b"a-b/c").unwrap();
    let e = c
        .provision(
            &ClaimName::new("a", "b-c").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &flat,
            &[],
        )
        .expect_err("a/b-c must not get a-b/c's directory");
    let text = chain(&e);
    assert!(text.contains("a-b/c") && text.contains("a/b-c"), "{text}");
}

#[test]
fn pvs_still_using_a_directory_refuse_it_even_without_markers_or_with_forged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let flat = params(&[("layout", "flat")]);
    // An older version's nested claim team-db/x: no markers anywhere, its PV still there.
    fs::create_dir_all(dir.path().join("a/team-db/x")).unwrap();
    fs::write(dir.path().join("a/team-db/x/orders"), b"team-db's data").unwrap();
    let used = |claim: &str, path: &str| UsedDir {
        pv: format!("pvc-{}", claim.replace('/', "-")),
        claim: Some(claim.to_string()),
        address: "10.0.0.0".to_string(),
        path: path.to_string(),
    };
    let x = [used("team-db/x", "/exports/a/team-db/x")];
    let team_db = ClaimName::new("team", "db").unwrap();
    let e = c
        .provision(&team_db, &uid(), None, Bytes::gib(1), &flat, &x)
        .unwrap_err();
    assert_eq!(e.reason(), "NfsDirectoryOfAnotherVolume");
    let text = chain(&e);
    for part in [
        "10.0.0.0:/exports/a/team-db of claim team/db",
        "holds the directory /exports/a/team-db/x of PersistentVolume pvc-team-db-x (claim team-db/x)",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(
        !dir.path().join("a/team-db/.stowage-owner").exists(),
        "nothing written"
    );

    // The flat volume team-db of claim team/db, whose tenant rewrote its marker to lure
    // namespace team-db's new claims into it.
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let p = c
        .provision(&team_db, &uid(), None, Bytes::gib(1), &flat, &[])
        .unwrap();
    fs::write(
        p.dir.join(".stowage-owner"),
        Marker::for_namespace("team-db", None).render(),
    )
    .unwrap();
    let e = c
        .provision(
            &ClaimName::new("team-db", "y").unwrap(),
            &uid(),
            None,
            Bytes::gib(1),
            &params(&[]),
            &[used("team/db", "/exports/a/team-db")],
        )
        .unwrap_err();
    assert!(
        chain(&e).contains("lies inside the directory /exports/a/team-db"),
        "{e}"
    );
    assert!(!p.dir.join("y").exists());
}

// === a namespace deleted and re-created (security finding "namespace uid") ===

/// A namespace uid for the tests below.
fn ns_uid(s: &str) -> NamespaceUid {
    NamespaceUid::parse(s).unwrap()
}

#[test]
fn a_recreated_namespace_adopts_the_old_namespaces_directory_only_when_the_class_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let claim = ClaimName::new("team", "db").unwrap();
    let (old, new) = (ns_uid("ns-uid-old"), ns_uid("ns-uid-new"));
    let first = c
        .provision(&claim, &uid(), Some(&old), Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    fs::write(first.dir.join("orders"), b"the old team's data").unwrap();
    let marker_of = |p: &Path| Marker::parse(&fs::read_to_string(p.join(OWNER_FILE)).unwrap());
    assert_eq!(marker_of(&first.dir).unwrap().namespace_uid(), Some(&old));
    let ns_dir = dir.path().join("a/team");
    assert_eq!(marker_of(&ns_dir).unwrap().namespace_uid(), Some(&old));
    // The same namespace, a re-created claim: its data, as before.
    let again = c
        .provision(&claim, &uid(), Some(&old), Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    assert!(again.reused);

    // The namespace was deleted and created again: refused, nothing written.
    let recreated = ClaimUid::parse("6f0c2d1e-0000-4000-8000-000000000002").unwrap();
    let e = c
        .provision(
            &claim,
            &recreated,
            Some(&new),
            Bytes::gib(1),
            &params(&[]),
            &[],
        )
        .unwrap_err();
    assert_eq!(e.reason(), "NfsDirectoryOfDeletedNamespace");
    assert!(!e.is_transient());
    let text = chain(&e);
    for part in [
        "was made for namespace team with uid ns-uid-old",
        "now has uid ns-uid-new",
        "adoptFromRecreatedNamespace",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert_eq!(marker_of(&first.dir).unwrap().namespace_uid(), Some(&old));

    // The class adopts it: the data, and the marker records the new uid (claim uid kept).
    let adopt = params(&[("adoptFromRecreatedNamespace", "true")]);
    let p = c
        .provision(&claim, &recreated, Some(&new), Bytes::gib(1), &adopt, &[])
        .unwrap();
    assert!(p.reused);
    assert_eq!(
        fs::read(p.dir.join("orders")).unwrap(),
        b"the old team's data"
    );
    let marker = marker_of(&p.dir).unwrap();
    assert_eq!(marker.namespace_uid(), Some(&new));
    assert!(
        matches!(&marker, Marker::Claim { uid: u, .. } if *u == uid()),
        "{marker:?}"
    );
    assert_eq!(marker_of(&ns_dir).unwrap().namespace_uid(), Some(&new));
    // From then on the claim is the new namespace's, without the parameter too.
    c.provision(
        &claim,
        &recreated,
        Some(&new),
        Bytes::gib(1),
        &params(&[]),
        &[],
    )
    .unwrap();
    assert!(!dir.path().join("a/team/db/.stowage-owner.new").exists());
}

#[test]
fn a_fresh_claim_of_a_recreated_namespace_is_not_held_up_by_its_namespace_directory() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let old = ns_uid("ns-uid-old");
    c.provision(
        &ClaimName::new("team", "db").unwrap(),
        &uid(),
        Some(&old),
        Bytes::gib(1),
        &params(&[]),
        &[],
    )
    .unwrap();
    let new = ns_uid("ns-uid-new");
    let p = c
        .provision(
            &ClaimName::new("team", "web").unwrap(),
            &uid(),
            Some(&new),
            Bytes::gib(1),
            &params(&[]),
            &[],
        )
        .unwrap();
    assert!(!p.reused);
    let read = |rel: &str| {
        Marker::parse(&fs::read_to_string(dir.path().join(rel).join(OWNER_FILE)).unwrap()).unwrap()
    };
    assert_eq!(read("a/team").namespace_uid(), Some(&new));
    assert_eq!(read("a/team/web").namespace_uid(), Some(&new));
    // The old claim's directory still records the old namespace.
    assert_eq!(read("a/team/db").namespace_uid(), Some(&old));
}

#[test]
fn a_marker_without_a_namespace_uid_or_a_namespace_not_known_adopts_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(config_for(dir.path(), &["a"]));
    let claim = ClaimName::new("team", "db").unwrap();
    // Made while the uid was not known (or by an older version): no uid recorded.
    let p = c
        .provision(&claim, &uid(), None, Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    let read = || Marker::parse(&fs::read_to_string(p.dir.join(OWNER_FILE)).unwrap()).unwrap();
    assert_eq!(read().namespace_uid(), None);
    assert!(
        !fs::read_to_string(p.dir.join(OWNER_FILE))
            .unwrap()
            .contains("namespace-uid")
    );
    // Adopted with the uid known: it is added.
    let now = ns_uid("ns-uid-now");
    c.provision(&claim, &uid(), Some(&now), Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    assert_eq!(read().namespace_uid(), Some(&now));
    // The uid not known (the watch behind): adopted, the marker left as it is.
    c.provision(&claim, &uid(), None, Bytes::gib(1), &params(&[]), &[])
        .unwrap();
    assert_eq!(read().namespace_uid(), Some(&now));
}
