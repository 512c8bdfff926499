use super::*;
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

/// A server's state for tests (the controller's NFS metrics tests have the same helper).
fn state(name: &str, capacity: Option<u64>, allocated: u64, status: Status) -> NfsServerState {
    NfsServerState {
        server: ServerName::parse(name).unwrap(),
        status,
        capacity: capacity.map(Bytes::gib),
        available: capacity.map(Bytes::gib),
        allocated: Bytes::gib(allocated),
        volumes: 1,
        weight_override: None,
    }
}

#[test]
fn tally_sums_pvs_per_server_and_returns_strays() {
    let servers = vec![
        spec("a", "10.0.0.1", "/e", Path::new("/m/a")),
        spec("b", "10.0.0.2", "/e", Path::new("/m/b")),
    ];
    let (alloc, strays) = tally(
        &servers,
        [
            ("10.0.0.1", "/e/ns/x", Bytes::gib(1)),
            ("10.0.0.1", "/e/ns/y", Bytes::gib(2)),
            ("10.0.0.2", "/e/ns-z", Bytes::gib(4)),
            ("10.0.0.3", "/e/ns/x", Bytes::gib(8)),
        ],
    );
    assert_eq!(
        alloc,
        vec![
            Allocation {
                bytes: Bytes::gib(3),
                volumes: 2
            },
            Allocation {
                bytes: Bytes::gib(4),
                volumes: 1
            },
        ]
    );
    assert_eq!(strays.len(), 1);
}

#[test]
fn probe_reads_the_mount_and_marks_drain_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = Allocation {
        bytes: Bytes::gib(5),
        volumes: 2,
    };
    let up = probe(&spec("a", "a", "/e", dir.path()), alloc);
    assert_eq!(up.status, Status::Ready);
    let cap = up.capacity.unwrap();
    assert!(cap.0 > 0);
    assert!(up.available.unwrap() <= cap);
    assert_eq!(up.allocated, Bytes::gib(5));
    assert_eq!(up.volumes, 2);

    let mut draining = spec("b", "b", "/e", dir.path());
    draining.drain = true;
    assert_eq!(probe(&draining, alloc).status, Status::Draining);

    let down = probe(&spec("c", "c", "/e", &dir.path().join("missing")), alloc);
    match &down.status {
        Status::Unreachable { reason } => {
            assert!(reason.contains("cannot read the size"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(down.capacity, None);
    assert_eq!(down.allocated, Bytes::gib(5), "its PVs still count");
}

#[test]
fn ring_weights_are_capacity_in_gib_with_overrides_and_a_fair_fallback() {
    let mut states = vec![
        state("a", Some(1000), 0, Status::Ready),
        state("b", Some(3000), 0, Status::Ready),
        state("c", None, 0, Status::Unreachable { reason: "x".into() }),
        state("d", Some(0), 0, Status::Ready),
    ];
    states[3].capacity = Some(Bytes(10));
    let w: Vec<u64> = ring_servers(&states).iter().map(|s| s.weight).collect();
    assert_eq!(
        w,
        vec![1000, 3000, 1333, 1],
        "unknown: mean of known; tiny: 1"
    );
    states[0].weight_override = Some(Bytes::tib(4));
    assert_eq!(ring_servers(&states)[0].weight, 4096);
}

#[test]
fn balance_is_zero_when_even_and_grows_with_skew() {
    let even = vec![
        state("a", Some(100), 50, Status::Ready),
        state("b", Some(200), 100, Status::Ready),
    ];
    let b = balance(&even);
    assert!(b.utilization_cov.abs() < 1e-12, "{b:?}");
    assert!((b.load_max_over_mean - 1.0).abs() < 1e-9, "{b:?}");
    let skewed = vec![
        state("a", Some(100), 90, Status::Ready),
        state("b", Some(100), 10, Status::Ready),
        state("c", None, 500, Status::Unreachable { reason: "x".into() }),
    ];
    let b = balance(&skewed);
    assert!((b.utilization_cov - 0.8).abs() < 1e-9, "{b:?}");
    assert!((b.load_max_over_mean - 1.8).abs() < 1e-9, "{b:?}");
    assert_eq!(balance(&[]), Balance::default());
}
