use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::api::local_volume::{LocalVolumeStatus, OnDelete};
use crate::controller::steps::names_provisioner;
use crate::ledger::{Driver, Placement, PoolState};

fn claim(uid: &str, annotations: &[(&str, &str)]) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            namespace: Some("apps".into()),
            uid: Some(uid.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity("10Gi".into()),
                )])),
                ..Default::default()
            }),
            storage_class_name: Some("local".into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn params() -> std::result::Result<ClassParams, String> {
    Ok(ClassParams {
        pool: PoolName::from("default"),
        placement: Placement::Spread,
        on_delete: OnDelete::Delete,
    })
}

fn view<'a>(
    claim: &'a PersistentVolumeClaim,
    lv: Option<LocalVolume>,
    pv: Option<PersistentVolume>,
) -> View<'a> {
    View {
        claim,
        params: params(),
        node: "n1",
        volume: lv,
        pv,
        pool_path: Some("/p".into()),
    }
}

fn lv_for(
    claim: &PersistentVolumeClaim,
    phase: LocalVolumePhase,
    path: Option<&str>,
) -> LocalVolume {
    let mut lv = volume::local_volume(claim, "n1", &params().unwrap(), Bytes::gib(10));
    lv.status = Some(LocalVolumeStatus {
        phase,
        path: path.map(str::to_string),
        message: Some("disk on fire".into()),
        ..Default::default()
    });
    lv
}

fn pv_for(uid: &str) -> PersistentVolume {
    PersistentVolume {
        spec: Some(PersistentVolumeSpec {
            claim_ref: Some(ObjectReference {
                uid: Some(uid.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn plan_walks_from_nothing_to_a_bound_pv() {
    let c = claim("u1", &[]);
    match plan(view(&c, None, None)) {
        Plan::Place { node, volume } => {
            assert_eq!(node, "n1");
            assert_eq!(volume.metadata.name.as_deref(), Some("pvc-u1"));
            assert_eq!(volume.spec.size(), Bytes::gib(10));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan(view(
            &c,
            Some(lv_for(&c, LocalVolumePhase::Pending, None)),
            None
        )),
        Plan::WaitForVolume
    );
    assert!(matches!(
        plan(view(&c, Some(lv_for(&c, LocalVolumePhase::Ready, Some("/p/pvc-u1"))), None)),
        Plan::CreatePv { path, .. } if path == "/p/pvc-u1"
    ));
    assert_eq!(
        plan(view(
            &c,
            Some(lv_for(&c, LocalVolumePhase::Ready, None)),
            None
        )),
        Plan::WaitForVolume,
        "Ready without a path is not usable yet"
    );
    assert_eq!(
        plan(view(
            &c,
            Some(lv_for(&c, LocalVolumePhase::Failed, None)),
            None
        )),
        Plan::VolumeFailed {
            message: "disk on fire".into()
        }
    );
    let mut deleting = lv_for(&c, LocalVolumePhase::Ready, Some("/p"));
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    assert_eq!(
        plan(view(&c, Some(deleting), None)),
        Plan::WaitForVolumeDeletion
    );
    assert_eq!(
        plan(view(&c, None, Some(pv_for("u1")))),
        Plan::WaitForBinding
    );
}

#[test]
fn objects_made_for_another_uid_are_conflicts_not_adopted() {
    let c = claim("u1", &[]);
    let other = claim("u0", &[]);
    assert_eq!(
        plan(view(&c, None, Some(pv_for("u0")))),
        Plan::Conflict("PersistentVolume")
    );
    let mut lv = lv_for(&other, LocalVolumePhase::Ready, Some("/p"));
    lv.metadata.name = Some("pvc-u1".into());
    assert_eq!(
        plan(view(&c, Some(lv), None)),
        Plan::Conflict("LocalVolume")
    );
}

#[test]
fn a_ready_volume_must_be_where_its_pool_puts_it_or_no_pv_is_made() {
    let c = claim("u1", &[]);
    let name = volume::volume_name("u1");
    let ready_at = |path: &str| Some(lv_for(&c, LocalVolumePhase::Ready, Some(path)));
    assert!(matches!(
        plan(view(&c, ready_at(&format!("/p/{name}")), None)),
        Plan::CreatePv { .. }
    ));
    // What another node's agent (or its stolen token) could write into the status.
    for hostile in [
        "/".to_string(),
        "/p".to_string(),
        "/p/pvc-someone-else".to_string(),
        format!("/p/../etc/{name}"),
        format!("/p/./{name}"),
        format!("/p//{name}"),
        format!("/q/{name}"),
        format!("p/{name}"),
        format!("/p/{name}/.."),
    ] {
        match plan(view(&c, ready_at(&hostile), None)) {
            Plan::BadPath { message } => {
                assert!(message.contains(&name), "{message}");
                assert!(message.contains("no PV is made"), "{message}");
            }
            other => panic!("{hostile}: {other:?}"),
        }
    }
    // The node's StorageNode does not report the pool: no PV either.
    let unknown = View {
        pool_path: None,
        ..view(&c, ready_at(&format!("/p/{name}")), None)
    };
    let verdict = plan(unknown);
    assert!(
        matches!(&verdict, Plan::BadPath { message } if message.contains("no such pool")),
        "{verdict:?}"
    );
    // A pool path that is not normalised gives no valid volume path at all.
    for pool in ["relative", "/a/../b", "/a/./b", "", "/a//b"] {
        let odd = View {
            pool_path: Some(pool.into()),
            ..view(&c, ready_at(&format!("{pool}/{name}")), None)
        };
        assert!(matches!(plan(odd), Plan::BadPath { .. }), "{pool:?}");
    }
    assert_eq!(
        volume::expected_path("/var/lib/stowage/pools/default/", &name),
        Some(format!("/var/lib/stowage/pools/default/{name}"))
    );
    assert_eq!(volume::expected_path("/", &name), Some(format!("/{name}")));
}

#[test]
fn unsupported_requests_and_bad_classes_are_refused() {
    let mut block = claim("u1", &[]);
    block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    assert!(matches!(plan(view(&block, None, None)), Plan::Refuse(m) if m.contains("Block")));
    let c = claim("u1", &[]);
    let bad = View {
        params: Err("StorageClass local: parameter \"onDelete\" is invalid".into()),
        ..view(&c, None, None)
    };
    assert!(matches!(plan(bad), Plan::Refuse(m) if m.contains("onDelete")));
}

#[test]
fn either_provisioner_annotation_names_us_and_the_ga_key_wins() {
    let ga = names::ANNOTATION_STORAGE_PROVISIONER;
    let beta = names::ANNOTATION_BETA_STORAGE_PROVISIONER;
    let us = "local.stowage.io";
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[(ga, us)], true),
        (&[(beta, us)], true),
        (&[(ga, us), (beta, us)], true),
        (&[(ga, "other.io"), (beta, us)], false),
        (&[(ga, "other.io")], false),
        (&[], false),
    ];
    for (annotations, want) in cases {
        assert_eq!(
            names_provisioner(&claim("u", annotations), us),
            *want,
            "{annotations:?}"
        );
    }
}

#[test]
fn a_selected_node_is_enough_to_start_until_an_annotation_names_another_provisioner() {
    let ga = names::ANNOTATION_STORAGE_PROVISIONER;
    let beta = names::ANNOTATION_BETA_STORAGE_PROVISIONER;
    let sel = names::ANNOTATION_SELECTED_NODE;
    let us = "local.stowage.io";
    let cases: &[(&[(&str, &str)], bool)] = &[
        // The scheduler chose; kube-controller-manager has not annotated yet.
        (&[(sel, "n1")], true),
        (&[(sel, "n1"), (ga, us)], true),
        (&[(sel, "n1"), (beta, us)], true),
        // Annotated for someone else: never ours, whatever the node.
        (&[(sel, "n1"), (ga, "other.io")], false),
        (&[(sel, "n1"), (ga, "other.io"), (beta, us)], false),
        (&[(sel, "n1"), (beta, "other.io")], false),
        // No node selected and nothing said.
        (&[], false),
        (&[(sel, "")], false),
        (&[(ga, us)], true),
    ];
    for (annotations, want) in cases {
        assert_eq!(
            may_provision(&claim("u", annotations), us),
            *want,
            "{annotations:?}"
        );
    }
}

fn node(allocatable: u64, allocated: u64, reserved: u64) -> NodeState {
    let mut pool = PoolState::new("default", Driver::Btrfs, Bytes::gib(allocatable));
    pool.allocated = Bytes::gib(allocated);
    pool.reserved = Bytes::gib(reserved);
    NodeState::new("n1", vec![pool])
}

fn reservation(uid: &str, name: &str, secs: i64, gib: u64) -> Reservation {
    Reservation {
        uid: uid.into(),
        claim: ClaimKey::new("apps", name),
        created: Some(Timestamp::from_second(secs).unwrap()),
        pool: PoolName::from("default"),
        bytes: Bytes::gib(gib),
    }
}

fn me(uid: &str, name: &str, secs: i64) -> Candidate<'static> {
    Candidate {
        uid: Box::leak(uid.to_string().into_boxed_str()),
        key: ClaimKey::new("apps", name),
        created: Some(Timestamp::from_second(secs).unwrap()),
    }
}

#[test]
fn own_reservation_is_not_counted_twice() {
    // 100Gi pool, 80Gi allocated, this claim's own 20Gi reserved: exactly fits.
    let reservations = [reservation("a", "a", 10, 20)];
    let opts = FitOptions::default();
    let pool = PoolName::from("default");
    assert_eq!(
        fits(
            Some(node(100, 80, 20)),
            &reservations,
            &me("a", "a", 10),
            &pool,
            Bytes::gib(20),
            &opts
        ),
        Ok(())
    );
    let too_big = fits(
        Some(node(100, 80, 20)),
        &reservations,
        &me("a", "a", 10),
        &pool,
        Bytes::gib(21),
        &opts,
    );
    let Err(unfit) = too_big else {
        panic!("21Gi cannot fit 20Gi")
    };
    let message = unfit_message("n1", &unfit);
    assert!(
        message.contains("has 20Gi free, the claim requests 21Gi"),
        "{message}"
    );
    assert!(message.contains("node n1"), "{message}");
}

#[test]
fn raced_claims_are_served_oldest_first_and_exactly_one_wins() {
    // 100Gi pool, 60Gi allocated; two 30Gi claims were both placed here by a racing
    // scheduler. Only one fits, and it must be the same one whichever is looked at first.
    let reservations = [
        reservation("old", "a", 10, 30),
        reservation("new", "b", 20, 30),
    ];
    let opts = FitOptions::default();
    let pool = PoolName::from("default");
    let n = || Some(node(100, 60, 60));
    assert_eq!(
        fits(
            n(),
            &reservations,
            &me("old", "a", 10),
            &pool,
            Bytes::gib(30),
            &opts
        ),
        Ok(())
    );
    assert!(
        fits(
            n(),
            &reservations,
            &me("new", "b", 20),
            &pool,
            Bytes::gib(30),
            &opts
        )
        .is_err()
    );
    // Same creation second: the name breaks the tie.
    let tied = [reservation("x", "a", 10, 30), reservation("y", "b", 10, 30)];
    assert_eq!(
        fits(n(), &tied, &me("x", "a", 10), &pool, Bytes::gib(30), &opts),
        Ok(())
    );
    assert!(fits(n(), &tied, &me("y", "b", 10), &pool, Bytes::gib(30), &opts).is_err());
}

#[test]
fn unknown_and_stale_nodes_do_not_fit() {
    let opts = FitOptions::default();
    let pool = PoolName::from("default");
    assert_eq!(
        fits(None, &[], &me("a", "a", 1), &pool, Bytes::gib(1), &opts),
        Err(Unfit::NoReport)
    );
    let mut stale = node(100, 0, 0);
    stale.heartbeat_age = Some(Duration::from_secs(600));
    assert!(matches!(
        fits(
            Some(stale),
            &[],
            &me("a", "a", 1),
            &pool,
            Bytes::gib(1),
            &opts
        ),
        Err(Unfit::Stale { .. })
    ));
    assert!(matches!(
        fits(
            Some(node(100, 0, 0)),
            &[],
            &me("a", "a", 1),
            &PoolName::from("fast"),
            Bytes::gib(1),
            &opts
        ),
        Err(Unfit::Pools(_))
    ));
}

#[test]
fn a_pods_claims_fit_as_a_sum_and_their_own_reservations_are_not_counted() {
    // 100Gi pool, 40Gi allocated; the pod's two claims (30Gi + 20Gi) are both reserved on
    // the node. Each fits alone; together they need 50 of the 60 free: they fit, because
    // their own reservations are what is being placed.
    let reservations = [reservation("a", "a", 10, 30), reservation("b", "b", 11, 20)];
    let opts = FitOptions::default();
    let pool = PoolName::from("default");
    let members = [me("a", "a", 10), me("b", "b", 11)];
    let both = [
        (pool.clone(), Bytes::gib(30)),
        (pool.clone(), Bytes::gib(20)),
    ];
    assert_eq!(
        fits_all(
            Some(node(100, 40, 50)),
            &reservations,
            &members,
            &both,
            &opts
        ),
        Ok(())
    );
    // 65Gi allocated: 35 free. Each claim fits alone (30, 20), the pod's sum (50) does not.
    assert_eq!(
        fits(
            Some(node(100, 65, 50)),
            &reservations,
            &me("a", "a", 10),
            &pool,
            Bytes::gib(30),
            &opts
        ),
        Ok(())
    );
    let Err(unfit) = fits_all(
        Some(node(100, 65, 50)),
        &reservations,
        &members,
        &both,
        &opts,
    ) else {
        panic!("50Gi cannot fit 35Gi")
    };
    assert_eq!(unfit.kind(), "insufficient_capacity");
    // An older claim of another pod reserved on the node counts against the pod; a newer
    // one does not (the pod takes the place of its oldest member).
    let with_older = [
        reservation("a", "a", 10, 30),
        reservation("b", "b", 11, 20),
        reservation("o", "other", 5, 20),
    ];
    assert!(fits_all(Some(node(100, 40, 70)), &with_older, &members, &both, &opts).is_err());
    let with_newer = [
        reservation("a", "a", 10, 30),
        reservation("b", "b", 11, 20),
        reservation("n", "other", 50, 20),
    ];
    assert_eq!(
        fits_all(Some(node(100, 40, 70)), &with_newer, &members, &both, &opts),
        Ok(())
    );
}

fn unfit() -> std::result::Result<(), Unfit> {
    Err(Unfit::Pools(vec![Shortfall::Insufficient {
        pool: PoolName::from("default"),
        needed: Bytes::gib(50),
        free: Bytes::gib(35),
    }]))
}

#[test]
fn group_steps_keep_a_pods_claims_together() {
    let alone = Siblings {
        pods: vec!["apps/web".into()],
        ..Siblings::default()
    };
    let pod = |s: Siblings| Siblings {
        pods: vec!["apps/db-0".into()],
        ..s
    };
    let members = pod(Siblings {
        members: vec!["apps/wal".into()],
        ..Siblings::default()
    });
    let anchored = pod(Siblings {
        here: vec!["apps/wal".into()],
        ..Siblings::default()
    });
    let elsewhere = pod(Siblings {
        elsewhere: vec![("apps/wal".into(), "n2".into())],
        ..Siblings::default()
    });
    let unselected = pod(Siblings {
        unselected: vec!["apps/wal".into()],
        ..Siblings::default()
    });
    let now = Duration::ZERO;
    let late = SIBLING_WAIT + Duration::from_secs(1);
    let step = |s: &Siblings, v, w| group_step("n1", "apps/data", s, v, w);

    // A claim alone: as before, created or sent back.
    assert_eq!(step(&alone, Ok(()), now), GroupStep::Create);
    let GroupStep::Reschedule { reason, message } = step(&alone, unfit(), now) else {
        panic!("an unfit lone claim goes back to the scheduler")
    };
    assert_eq!(reason, "insufficient_capacity");
    assert!(
        message.contains("has 35Gi free, the claim requests 50Gi"),
        "{message}"
    );

    // With members: all of them together, or all of them back.
    assert_eq!(step(&members, Ok(()), now), GroupStep::Create);
    let GroupStep::Reschedule { message, .. } = step(&members, unfit(), now) else {
        panic!("an unfit pod goes back to the scheduler as a whole")
    };
    assert!(
        message.contains("apps/data, apps/wal together") && message.contains("all of them"),
        "{message}"
    );

    // A sibling's volume is already here: never sent away, whatever the fit says.
    assert_eq!(step(&anchored, Ok(()), now), GroupStep::Create);
    let GroupStep::Stay { message } = step(&anchored, unfit(), late) else {
        panic!("a claim whose sibling is on the node stays")
    };
    assert!(
        message.contains("claim apps/wal of pod apps/db-0 has its volume there")
            && message.contains("has 35Gi free")
            && message.contains("Free space in the pool on n1"),
        "{message}"
    );

    // A sibling's volume is on another node: this claim goes back, whatever the fit says.
    for verdict in [Ok(()), unfit()] {
        let GroupStep::Elsewhere { message } = step(&elsewhere, verdict, now) else {
            panic!("a claim whose sibling is elsewhere is sent back")
        };
        assert!(message.contains("on node n2"), "{message}");
    }

    // The pod not seen yet: its siblings are unknown; wait for it a while, then go on.
    let unseen = Siblings::default();
    assert_eq!(step(&unseen, Ok(()), now), GroupStep::AwaitSiblings);
    assert_eq!(step(&unseen, Ok(()), late), GroupStep::Create);

    // A sibling without selected-node yet: made with the claim at once (the scheduler is
    // writing the same node to it), or sent back with it, never waited for.
    for waited in [now, late] {
        assert_eq!(step(&unselected, Ok(()), waited), GroupStep::Create);
        let GroupStep::Reschedule { message, .. } = step(&unselected, unfit(), waited) else {
            panic!("a pod whose claims do not fit together goes back at once")
        };
        assert!(
            message.contains("all of pod apps/db-0's claims (apps/data and apps/wal)")
                && message.contains("together they request"),
            "{message}"
        );
    }

    // A sibling not in stowage's view yet, or selected for another node while the
    // scheduler rewrites an older choice: wait for it a while, then go on without it.
    let unsettled = pod(Siblings {
        unselected: vec!["apps/wal".into()],
        unsettled: vec!["apps/wal".into()],
        ..Siblings::default()
    });
    assert_eq!(step(&unsettled, Ok(()), now), GroupStep::AwaitSiblings);
    assert_eq!(step(&unsettled, unfit(), now), GroupStep::AwaitSiblings);
    assert_eq!(step(&unsettled, Ok(()), late), GroupStep::Create);
    assert!(matches!(
        step(&unsettled, unfit(), late),
        GroupStep::Reschedule { .. }
    ));
}
